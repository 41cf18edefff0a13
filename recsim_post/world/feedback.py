"""How the world produces each feedback signal (``recsim_post/signals.py`` registers them).

Each signal is computed, for the users of a round, from the true reward r*_c of the item they
chose, whether they clicked, the scenario's feedback knobs and the signal's own random numbers::

    rating  clip(round(center + scale r*_c + sigma z + b_u), 1, 5), flipped to 6 - rating with
            probability flip_rate, then missing (NaN) with probability missing_rate; b_u is the
            user's fixed offset (feedback.user_bias_std > 0 only), handed in as ``RATING_BIAS``
    watch   clip(sigmoid(a + b r*_c) + sigma_w z', 0, 1), >= watch_censor recorded as watch_censor

(:class:`~.config.FeedbackConfig` documents the knobs.) A new signal appends its random numbers to
:data:`DRAWS` on a stream of its own, so no existing stream moves and every existing log stays
byte-identical, and registers its kernel in :data:`KERNELS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..signals import SIGNALS
from .config import FeedbackConfig


@dataclass(frozen=True)
class Draw:
    """One random number per active user and round, from a named stream of the run."""

    name: str
    stream: str
    kind: Literal["normal", "uniform"]


DRAWS: tuple[Draw, ...] = (
    Draw("z_rating", "feedback", "normal"),
    Draw("u_flip", "feedback", "uniform"),
    Draw("z_watch", "feedback-extra", "normal"),
    Draw("u_missing", "feedback-extra", "uniform"),
)
"""Every signal's random numbers, in the order they are drawn each round (within a stream the
order matters: the draws of ``feedback-extra`` are the watch noise, then the missing-rating coin)."""

SIGNAL_STREAMS: tuple[str, ...] = tuple(dict.fromkeys(d.stream for d in DRAWS))

RATING_BIAS = "rating_bias"
"""Key of the per-row user offset b_u in the mapping the kernels read (beside the round's draws).
Present only when ``feedback.user_bias_std > 0``: b_u is drawn once per user by the world
(``World.create``, stream ``world/rating-bias``), so with the knob off no number changes at all."""


def draw(streams: Mapping[str, np.random.Generator], n: int) -> dict[str, np.ndarray]:
    """This round's random numbers of every signal for ``n`` users, in :data:`DRAWS` order."""
    out = {}
    for d in DRAWS:
        rng = streams[d.stream]
        out[d.name] = rng.standard_normal(n) if d.kind == "normal" else rng.random(n)
    return out


def rating(fb: FeedbackConfig, rstar: np.ndarray, clicked: np.ndarray, u: Mapping[str, np.ndarray]) -> np.ndarray:
    """Observed 1-5 rating of each click (float32; NaN without a click, or when it went missing).

    x = center + scale * r* + sigma * z (+ b_u, the user's offset, when ``u`` holds
    :data:`RATING_BIAS`) (float64), rounded half up to whole stars unless
    ``quantize`` is off, clipped to [1, 5], flipped to 6 - x with probability ``flip_rate``.
    """
    x = fb.rating_center + fb.rating_scale * rstar + fb.noise_std * u["z_rating"]
    if RATING_BIAS in u:  # only then: adding 0.0 would be harmless, but off must mean untouched
        x = x + u[RATING_BIAS]
    if fb.quantize:
        x = np.floor(x + 0.5)
    x = np.clip(x, 1.0, 5.0)
    x = np.where(u["u_flip"] < fb.flip_rate, 6.0 - x, x)
    return np.where(clicked & ~(u["u_missing"] < fb.missing_rate), x, np.nan).astype(np.float32)


def watch(fb: FeedbackConfig, rstar: np.ndarray, clicked: np.ndarray, u: Mapping[str, np.ndarray]) -> np.ndarray:
    """Observed watch fraction of each click in [0, 1] (float32; NaN without a click)."""
    r = np.where(clicked, rstar, 0.0)
    w = 1.0 / (1.0 + np.exp(-(fb.watch_offset + fb.watch_scale * r))) + fb.watch_noise_std * u["z_watch"]
    w = np.clip(w, 0.0, 1.0)
    w = np.where(w >= fb.watch_censor, fb.watch_censor, w)
    return np.where(clicked, w, np.nan).astype(np.float32)


KERNELS: dict[str, Callable[[FeedbackConfig, np.ndarray, np.ndarray, Mapping[str, np.ndarray]], np.ndarray]] = {
    "rating": rating,
    "watch": watch,
}
"""The kernel of every signal of ``recsim_post.signals.SIGNALS``: (knobs, r*_c, clicked, draws) ->
(n,) float32, NaN where unobserved."""

if set(KERNELS) != set(SIGNALS):  # pragma: no cover - a signal registered without its kernel, or the reverse
    raise RuntimeError(f"signals {sorted(SIGNALS)} and their kernels {sorted(KERNELS)} differ")


def observe(fb: FeedbackConfig, rstar_chosen: np.ndarray, clicked: np.ndarray,
            draws: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every signal of the round's responses: {name: (n,) float32}."""
    clicked = np.asarray(clicked, dtype=bool)
    return {name: KERNELS[name](fb, rstar_chosen, clicked, draws) for name in SIGNALS}


__all__ = ["DRAWS", "Draw", "KERNELS", "RATING_BIAS", "SIGNAL_STREAMS", "draw", "observe", "rating", "watch"]
