"""Theory checked against the sealed truth: guarantees of published theorems evaluated exactly,
context by context, on simulated worlds, and the closed forms the studies check.

``tilt``: the exponential tilt of the logger by a noisy reward and the two value guarantees of
arXiv:2603.10279 (Theorems 4.3, 4.4); ``study``: the table of those guarantees over catalogue
sizes, noise levels and temperatures (``python -m recsim_post.theory``); ``dropz``: the two-context
counter-example of dropping the tilt's normaliser Z(x).

Imports point down: ``theory`` may import the world, the logs and ``truth``.
"""

from .dropz import TwoContext, numeric_fit, shared_fit, tabular_fit
from .study import COLUMNS, bound_rows, load_preset, tilt_bound_study, truth_for
from .tilt import ATOL, TiltBounds, bound_eps, log_tilt, tilt, tilt_bounds, values

__all__ = [
    "ATOL", "COLUMNS", "TiltBounds", "TwoContext", "bound_eps", "bound_rows", "load_preset", "log_tilt",
    "numeric_fit", "shared_fit", "tabular_fit", "tilt", "tilt_bound_study", "tilt_bounds", "truth_for", "values",
]
