"""Theory checked against the sealed truth: guarantees of published theorems evaluated exactly,
context by context, on simulated worlds.

``tilt``: the exponential tilt of the logger by a noisy reward and the two value guarantees of
arXiv:2603.10279 (Theorems 4.3, 4.4); ``study``: the table of those guarantees over catalogue
sizes, noise levels and temperatures (``python -m recsim_post.theory``).

Imports point down: ``theory`` may import the world, the logs and ``truth``.
"""

from .study import COLUMNS, bound_rows, load_preset, tilt_bound_study, truth_for
from .tilt import ATOL, TiltBounds, bound_eps, log_tilt, tilt, tilt_bounds, values

__all__ = [
    "ATOL", "COLUMNS", "TiltBounds", "bound_eps", "bound_rows", "load_preset", "log_tilt", "tilt",
    "tilt_bound_study", "tilt_bounds", "truth_for", "values",
]
