"""Feedback signals: what the logs show of a user's response, each a named signal.

The choice model decides what (if anything) a user clicks; the signals are what a company records
about it. Each signal is computed, for the users of a round, from the true reward r*_c of the item
they chose, whether they clicked, the scenario's feedback knobs and the signal's own random numbers::

    click   1 for the item the user chose, 0 for the rest of the slate           (every impression)
    rating  clip(round(center + scale r*_c + sigma z), 1, 5), flipped to 6 - rating with
            probability flip_rate, then missing (NaN) with probability missing_rate  (clicks only)
    watch   clip(sigmoid(a + b r*_c) + sigma_w z', 0, 1), >= watch_censor recorded as watch_censor
                                                                                   (clicks only)

(:class:`~.config.FeedbackConfig` documents the knobs.) Everything that takes a reward from the
logs -- a recipe, the reward model, an off-policy estimator -- names one of :data:`REWARDS`
(``reward = "watch"``), and reads its range (:func:`reward_range`) from here.

Adding a signal: append its random numbers to :data:`DRAWS` (on a stream of its own, so no
existing stream moves and every existing log stays byte-identical), write its function next to the
others, and register it in :data:`SIGNALS`. The round (``world/engine.py``), the logs, the
Gymnasium envs and closed-loop rollouts then carry it as a column.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import ConfigError
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


def draw(streams: Mapping[str, np.random.Generator], n: int) -> dict[str, np.ndarray]:
    """This round's random numbers of every signal for ``n`` users, in :data:`DRAWS` order."""
    out = {}
    for d in DRAWS:
        rng = streams[d.stream]
        out[d.name] = rng.standard_normal(n) if d.kind == "normal" else rng.random(n)
    return out


def rating(fb: FeedbackConfig, rstar: np.ndarray, clicked: np.ndarray, u: Mapping[str, np.ndarray]) -> np.ndarray:
    """Observed 1-5 rating of each click (float32; NaN without a click, or when it went missing).

    x = center + scale * r* + sigma * z (float64), rounded half up to whole stars unless
    ``quantize`` is off, clipped to [1, 5], flipped to 6 - x with probability ``flip_rate``.
    """
    x = fb.rating_center + fb.rating_scale * rstar + fb.noise_std * u["z_rating"]
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


@dataclass(frozen=True)
class Signal:
    """A recorded response to a click: its column, range and how the round computes it."""

    name: str
    doc: str
    low: float
    high: float
    compute: Callable[[FeedbackConfig, np.ndarray, np.ndarray, Mapping[str, np.ndarray]], np.ndarray]


SIGNALS: dict[str, Signal] = {
    "rating": Signal("rating", "1-5 stars (noisy, maybe flipped or missing)", 1.0, 5.0, rating),
    "watch": Signal("watch", "watch fraction in [0, 1] (noisy, censored)", 0.0, 1.0, watch),
}
"""The signals of a click, in column order. ``click`` itself is the choice (see :data:`REWARDS`)."""

REWARDS: tuple[str, ...] = ("click", *SIGNALS)
"""What may serve as a reward: the click (0/1 per impression) or any signal of a click."""


def reward_range(name: str) -> tuple[float, float]:
    """(lowest, highest) value of reward ``name``: r_max for the methods that need it."""
    check_reward(name)
    return (0.0, 1.0) if name == "click" else (SIGNALS[name].low, SIGNALS[name].high)


def check_reward(name: str, allowed: tuple[str, ...] = REWARDS) -> str:
    """``name`` if it is a known reward signal, else a one-line ConfigError naming the allowed ones."""
    if name not in allowed:
        raise ConfigError(f"reward = {name!r} is not a feedback signal: must be one of {', '.join(allowed)}")
    return name


def observe(fb: FeedbackConfig, rstar_chosen: np.ndarray, clicked: np.ndarray,
            draws: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every signal of the round's responses: {name: (n,) float32}."""
    clicked = np.asarray(clicked, dtype=bool)
    return {name: s.compute(fb, rstar_chosen, clicked, draws) for name, s in SIGNALS.items()}


__all__ = [
    "DRAWS", "Draw", "REWARDS", "SIGNALS", "SIGNAL_STREAMS", "Signal", "check_reward", "draw", "observe",
    "rating", "reward_range", "watch",
]
