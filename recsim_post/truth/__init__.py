"""The truth: exact ground-truth values of policies at the end of logging, and closed-loop
rollouts on a copy of the world. With ``ope`` and ``experiments``, the only readers of ``sealed/``.

Imports point down: ``truth`` may import the world, the logs, models and posttrain, never ``ope``,
``metrics`` or ``experiments``.
"""
