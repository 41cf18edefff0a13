r"""Study 2's split: where an exp-RSFT policy loses ground truth, measured against its ideal tilt.

exp-RSFT's population optimum is the tilt of its π_ref by the rating it is weighted with::

    π*_λ(y | x) ∝ π_ref(y | x) · exp(g(x, y) / λ)

with g the rating the world would give: g(x, y) = clip(c + s·r*(x, y), 1, 5) (rounded to whole stars
when ``feedback.quantize``), c, s = ``feedback.rating_center``, ``rating_scale``. Three policies on
the same evaluation users at T split a trained policy's value V(π̂) into three losses::

    coverage cost   V(oracle) − V(π*_λ)            what the clean tilt of π_ref cannot reach at this λ
    noise cost      V(π*_λ) − V(π̃_λ)               π̃_λ: the same tilt with ONE noisy rating per
                                                   (user, item), g = clip(c + s·r* + σz, 1, 5): the
                                                   fixed-ξ noise of Theorems 4.3/4.4 (arXiv:2603.10279)
    fitting gap     V(π̃_λ) − V(π̂)                  what fitting a network on finite logs adds
                                                   (negative: the network pools ratings across
                                                   contexts and beats one noisy draw per pair)

all on the normalised scale (0 = uniform, 1 = oracle). Large λ keeps π*_λ near π_ref (coverage cost
high, noise cost ~0); small λ makes the clean tilt nearly greedy on π_ref's support and the noisy one
greedy on the noise. The ideal policies read r* (they are references, like the oracle), so they are
never selection criteria. Left out of g: flipped and missing ratings and per-user offsets
(``flip_rate``, ``missing_rate``, ``user_bias_std``), which the lambda study keeps at 0.

z is drawn per user from ``SeedTree(seed).child("ideal-tilt").generator(str(user))``: the same
numbers for every λ (common random numbers) and whatever the chunking.
"""

from __future__ import annotations

import numpy as np

from ..policy import Context, Policy
from ..seeding import SeedTree
from ..world.config import FeedbackConfig


def rating_map(fb: FeedbackConfig, r_star: np.ndarray, z: np.ndarray | None = None) -> np.ndarray:
    """g: the rating of every (user, item) from r* (and one standard normal z each, scaled by σ)."""
    x = fb.rating_center + fb.rating_scale * np.asarray(r_star, np.float64)
    if z is not None:
        x = x + fb.noise_std * z
    if fb.quantize:
        x = np.floor(x + 0.5)
    return np.clip(x, 1.0, 5.0)


class IdealTilt:
    """π_ref tilted by exp(g / λ) over the whole catalogue (module docstring); a :class:`Policy`
    that reads the truth at T, like the oracle. ``noise``: the seed tree of the per-user rating
    noise (None: the clean rating)."""

    def __init__(self, base: Policy, truth, feedback: FeedbackConfig, lam: float,  # noqa: ANN001 - a GroundTruth
                 noise: SeedTree | None = None) -> None:
        if not lam > 0:
            raise ValueError(f"lam = {lam!r} must be > 0")
        self.base, self.truth, self.feedback, self.lam = base, truth, feedback, float(lam)
        self.noise = noise.child("ideal-tilt") if noise is not None else None
        self.n_items = truth.n_items
        self.max_len = base.max_len

    def logits(self, hist: np.ndarray, context: Context | None = None) -> np.ndarray:
        if context is None:
            raise ValueError("the ideal tilt needs to know who asks: pass a Context with the users")
        r = self.truth.true_reward(context.users)
        z = None
        if self.noise is not None:
            z = np.stack([self.noise.generator(str(int(u))).standard_normal(self.n_items) for u in context.users]) \
                if len(context.users) else np.zeros((0, self.n_items))
        return np.asarray(self.base.logits(hist, context), np.float64) + rating_map(self.feedback, r, z) / self.lam


__all__ = ["IdealTilt", "rating_map"]
