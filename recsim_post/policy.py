"""The one policy protocol. Everything that scores a policy takes a :class:`Policy`: the exact
ground truth (``truth/``), offline metrics, off-policy estimators (``ope/``), closed-loop rollouts,
the evaluator and the command line.

A policy scores the whole catalogue for a batch of requests::

    policy.logits(hist, context) -> (B, n_items)    log pi(i | request), up to a constant per row

* ``hist`` ``(B, L)`` int64: each requesting user's public click history, most recent last,
  left-padded with ``PAD = -1``; a policy reads its last ``policy.max_len`` columns.
* ``context`` (:class:`Context`, or None): who asks, in which round, and -- in a closed-loop rollout
  -- the world as it is now. Trained models ignore it; the logging policy reads the round's trend;
  the oracle reads the true reward. None means: the users are unknown (rows 0 .. B-1 for the
  policies that do not care) and the time is the end of logging.
* ``policy.slate`` (optional attribute): how it builds a slate when deployed, ``"topk"`` or
  ``"sample"`` (Plackett-Luce from its softmax); None or absent leaves the choice to the deployer.

Implementations: :class:`UniformPolicy` and :class:`PopularityPolicy` (public data only, here); a
trained ``models.SequencePolicy``; the logging policy and the oracle, which read the truth, in
``truth/references.py``; the token-level ``models.TokenPolicy`` over semantic IDs, whose logits
are its exact item log-probabilities enumerated over the prefix trie.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from .logs.public import PAD

HISTORY_LEN = 200
"""Clicks of history the framework hands a policy (each policy reads its own ``max_len`` of them)."""

Slate = Literal["topk", "sample"]


@dataclass(frozen=True)
class Context:
    """What a policy may condition on beyond the history, per request."""

    users: np.ndarray
    """(B,) int64: who asks."""
    rounds: np.ndarray | None = None
    """(B,) int64: the round of each request (None: the end of logging, T)."""
    world: Any = None
    """The world as it is now (a rollout's moving copy, ``world.World``); only the reference
    policies that read the truth use it. None: the world at the end of logging."""

    @classmethod
    def of(cls, users: Any, rounds: Any = None, world: Any = None) -> "Context":
        users = np.asarray(users, dtype=np.int64)
        if rounds is not None:
            rounds = np.broadcast_to(np.asarray(rounds, dtype=np.int64), users.shape)
        return cls(users, rounds, world)


@runtime_checkable
class Policy(Protocol):
    """pi(. | history, context) over a catalogue of ``n_items`` items (see the module docstring)."""

    n_items: int
    max_len: int

    def logits(self, hist: np.ndarray, context: Context | None = None) -> np.ndarray: ...


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (-inf logits get probability 0)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    with np.errstate(under="ignore"):
        p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def slate_rule(policy: Any, default: Slate) -> Slate:
    """How ``policy`` builds its slate when deployed: its own ``slate`` attribute, else ``default``."""
    rule = getattr(policy, "slate", None)
    return default if rule is None else rule


def check_policy(policy: Any, n_items: int, name: str = "policy") -> Policy:
    """``policy`` if it implements the protocol over ``n_items`` items; else a one-line TypeError or
    ValueError naming what is missing."""
    if not isinstance(policy, Policy):
        raise TypeError(f"{name} must implement recsim_post.policy.Policy (n_items, max_len, logits(hist, context)), "
                        f"got {type(policy).__name__}")
    if int(policy.n_items) != n_items:
        raise ValueError(f"{name} scores {policy.n_items} items, but the catalogue has {n_items}")
    return policy


class UniformPolicy:
    """Every item equally likely: all-zero logits (a deployed top k is k random items)."""

    max_len = 1
    slate: Slate | None = None

    def __init__(self, n_items: int) -> None:
        self.n_items = int(n_items)

    def logits(self, hist: np.ndarray, context: Context | None = None) -> np.ndarray:
        return np.zeros((len(hist), self.n_items), dtype=np.float32)


class PopularityPolicy:
    """The same ranking for everyone: log(1 + clicks of the item) in a clicks frame (the training
    split, in the evaluator)."""

    max_len = 1
    slate: Slate | None = None

    def __init__(self, clicks: pd.DataFrame, n_items: int) -> None:
        self.n_items = int(n_items)
        counts = np.bincount(clicks["item_id"].to_numpy(np.int64), minlength=n_items)[:n_items]
        self.log_pop = np.log1p(counts).astype(np.float32)

    def logits(self, hist: np.ndarray, context: Context | None = None) -> np.ndarray:
        return np.tile(self.log_pop, (len(hist), 1))


class FunctionPolicy:
    """A policy from a function ``fn(hist, context) -> logits (B, n_items)``: a quick way to score an
    idea (a hand-made ranking, a heuristic) with every tool that takes a Policy."""

    def __init__(self, n_items: int, fn: Callable[[np.ndarray, Context | None], np.ndarray],
                 max_len: int = HISTORY_LEN, slate: Slate | None = None) -> None:
        self.n_items, self.fn, self.max_len, self.slate = int(n_items), fn, int(max_len), slate

    def logits(self, hist: np.ndarray, context: Context | None = None) -> np.ndarray:
        return self.fn(hist, context)


def empty_histories(n: int) -> np.ndarray:
    """(n, 1) histories with no click, for policies that read none."""
    return np.full((n, 1), PAD, dtype=np.int64)


__all__ = [
    "Context", "FunctionPolicy", "HISTORY_LEN", "Policy", "PopularityPolicy", "Slate", "UniformPolicy", "check_policy", "empty_histories",
    "slate_rule", "softmax",
]
