"""Feedback signals: the named responses the logs record, and which of them may be a reward.

The choice model decides what (if anything) a user clicks; the signals are what a company records
about it. This registry is public knowledge -- a column of the logs, its meaning and its range --
so training code may read it; how the world produces each signal is ``world/feedback.py``'s::

    click   1 for the item the user chose, 0 for the rest of the slate           (every impression)
    rating  1-5 stars: noisy, maybe flipped, maybe missing (NaN)                   (clicks only)
    watch   watch fraction in [0, 1]: noisy, censored                              (clicks only)

Everything that takes a reward from the logs -- a recipe (``reward = "watch"``), the reward model,
an off-policy estimator, the Gymnasium envs -- names one of :data:`REWARDS` and reads its range
(:func:`reward_range`: r_max for the methods that need it) from here.

Adding a signal: register it in :data:`SIGNALS` and give it its kernel and random draws in
``world/feedback.py`` (a test holds the two registries equal). The round, the logs, the envs,
rollouts, the recipes and OPE then carry it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Signal:
    """A recorded response to a click: its column in the logs, meaning and range."""

    name: str
    doc: str
    low: float
    high: float


SIGNALS: dict[str, Signal] = {
    "rating": Signal("rating", "1-5 stars (noisy, maybe flipped or missing)", 1.0, 5.0),
    "watch": Signal("watch", "watch fraction in [0, 1] (noisy, censored)", 0.0, 1.0),
}
"""The signals of a click, in column order (NaN in the logs where there was no click)."""

REWARDS: tuple[str, ...] = ("click", *SIGNALS)
"""What may serve as a reward: the click (0/1 per impression) or any signal of a click."""


def check_reward(name: object, allowed: tuple[str, ...] = REWARDS) -> str:
    """``name`` if it is a known reward signal, else a one-line ConfigError naming the allowed ones."""
    if not isinstance(name, str) or name not in allowed:
        raise ConfigError(f"reward = {name!r} is not a feedback signal: must be one of {', '.join(allowed)}")
    return name


def reward_range(name: str) -> tuple[float, float]:
    """(lowest, highest) value of reward ``name``."""
    check_reward(name)
    return (0.0, 1.0) if name == "click" else (SIGNALS[name].low, SIGNALS[name].high)


__all__ = ["REWARDS", "SIGNALS", "Signal", "check_reward", "reward_range"]
