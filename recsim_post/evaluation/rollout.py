"""Closed-loop rollouts: deploy a policy for H rounds in (a copy of) the world and watch it react.

The exact ground truth of ground_truth.py scores a policy against r*(u, ., T) frozen at the end of
logging. A rollout complements it: the policy serves slates for ``n_rounds`` more rounds, users
choose and rate through the same choice model and noise as the logs, and the world moves on --
satiation builds up on what users click, popularity and trends feed on what is shown, shocks
arrive, preferences drift and sessions end (when those dynamics are on). Each round:

1. who asks for a slate: ``world.active_users`` on uniforms from the ``activity`` stream (the
   rule of logs/simulate.py; sessions and arrivals included), restricted to ``users`` if given;
2. the policy scores every item from each active user's public click history so far (the logged
   clicks plus the clicks made during the rollout) and a slate of k items is built: its top k
   (exact ties broken at random), or k items drawn without replacement from softmax(logits)
   (Gumbel-top-k, i.e. Plackett-Luce, on the ``slates`` stream);
3. users respond through ``world.respond`` (``choice`` and ``feedback`` streams) with the trend
   at the start of the round, and observed ratings go through ``world.observe``
   (``feedback-extra``), so missing ratings are NaN as in the logs;
4. ``world.advance`` (``shocks`` and ``dynamics`` streams) and the clicks join the histories.

All randomness comes from ``seed.child("rollout")``; the same seed gives identical results, and
two policies rolled with the same seed share their activity draws (common random numbers). The
rollout runs on a deep copy: the caller's world is never modified.

Closed-loop value = mean over the cohort of each user's summed r* of her clicks over the H rounds
(r* at the time of the click, satiation included); an inactive or non-clicking user adds 0.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..logs.public import histories
from ..seeding import SeedTree
from ..world.world import World

HISTORY_LEN = 200
"""Clicks of history kept per user (a policy with a shorter ``max_len`` reads fewer)."""

CHUNK_USERS = 2048
"""Users scored per policy call (bounds memory at CHUNK_USERS * n_items floats)."""

ROUND_COLUMNS = [
    "round", "world_round", "n_active", "n_clicks", "ctr",
    "reward_clicked", "reward_shown", "rating", "reward_per_user",
]


@dataclass(frozen=True)
class WorldPolicy:
    """A policy that reads the rolled world: ``fn(world, users, hist) -> logits (B, n_items)``.

    The rollout hands it its own (copied, moving) world each round, so e.g. the oracle ranks by
    the *current* r*, satiation included.
    """

    fn: Callable[[World, np.ndarray, np.ndarray], np.ndarray]
    name: str = "world-policy"

    def __call__(self, world: World, users: np.ndarray, hist: np.ndarray) -> np.ndarray:
        return self.fn(world, users, hist)


def uniform_policy(n_items: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """All-zero logits: random slates (top-k ties are broken at random)."""

    def score(users: np.ndarray, hist: np.ndarray) -> np.ndarray:
        return np.zeros((len(users), n_items), dtype=np.float32)

    return score


def oracle_policy(world: World | None = None) -> WorldPolicy:
    """Ranks by r*(u, ., t) of the rolled world at the current round (it reacts to satiation).

    ``world`` is accepted for symmetry with the other helpers and ignored: the oracle always reads
    the world the rollout is moving, never the caller's (which stays at T).
    """
    return WorldPolicy(lambda w, users, hist: w.true_reward(users), "oracle")


def logger_policy(logger: Any) -> WorldPolicy:
    """The logging policy (behavior.logging_policy.TrendLogger) as it stands at T, reading the
    rolled world's current trend; its log-probabilities (-inf outside a deficient support).
    Use ``slate="sample"`` to draw its slates by Plackett-Luce, as in the logs."""

    def score(w: World, users: np.ndarray, hist: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(logger.probabilities(users, w.trend()))

    return WorldPolicy(score, "logging policy")


@dataclass
class RolloutResult:
    """Per-round metrics (one row per round, columns :data:`ROUND_COLUMNS`) and totals."""

    rounds: pd.DataFrame
    summary: dict[str, float]
    clicks: pd.DataFrame = field(repr=False)
    """The clicks made during the rollout: user_id, timestamp (world round), position, item_id,
    rating (observed, NaN if missing), true_reward."""
    world: World = field(repr=False)
    """The rolled copy of the world, at the end of the rollout."""


def _score_fn(policy: Any) -> Callable[[World, np.ndarray, np.ndarray], np.ndarray]:
    if isinstance(policy, WorldPolicy):
        return policy
    if hasattr(policy, "logits"):
        return lambda w, users, hist: policy.logits(hist)
    if callable(policy):
        return lambda w, users, hist: policy(users, hist)
    raise TypeError(f"policy must have .logits(hist), be a callable (users, hist) or a WorldPolicy, got {type(policy)!r}")


def topk_slates(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The k highest logits per row, best first; exact ties (at the cut and in order) broken at random."""
    B, n = logits.shape
    tie = rng.random((B, n))
    if k >= n:
        return np.lexsort((tie, -logits), axis=1)[:, :k]
    thr = -np.partition(-logits, k - 1, axis=1)[:, k - 1 : k]
    key = np.where(logits > thr, 2.0, np.where(logits == thr, tie, -1.0))
    sel = np.argpartition(-key, k - 1, axis=1)[:, :k]
    order = np.lexsort((np.take_along_axis(tie, sel, 1), -np.take_along_axis(logits, sel, 1)), axis=1)
    return np.take_along_axis(sel, order, axis=1)


def sample_slates(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k items per row drawn without replacement from softmax(logits) (Gumbel-top-k = Plackett-Luce)."""
    g = logits.astype(np.float64) - np.log(-np.log(rng.random(logits.shape)))
    return topk_slates(g, k, rng)


def rollout(
    world: World,
    policy: Any,
    clicks: pd.DataFrame,
    n_rounds: int,
    seed: SeedTree,
    slate: Literal["topk", "sample"] = "topk",
    k: int | None = None,
    users: np.ndarray | None = None,
) -> RolloutResult:
    """Deploy ``policy`` for ``n_rounds`` rounds on a deep copy of ``world`` (see the module doc).

    ``policy``: an object with ``.logits(hist) -> (B, n_items)`` (a trained SequencePolicy), a
    callable ``(users, hist) -> logits`` (as the evaluator's score functions), or a
    :class:`WorldPolicy` (:func:`oracle_policy`, :func:`logger_policy`).
    ``clicks``: the public clicks up to T in history order (``PublicLogs.clicks()``; a frame with a
    ``click`` column is filtered to its clicks). ``k`` defaults to the logging slate size.
    ``users``: the cohort served and scored (default: everyone); the others ask for no slates.
    """
    if slate not in ("topk", "sample"):
        raise ValueError(f"slate = {slate!r}: must be 'topk' or 'sample'")
    if n_rounds < 0:
        raise ValueError(f"n_rounds = {n_rounds}: must be >= 0")
    w = copy.deepcopy(world)
    n_items, n_users = w.n_items, w.n_users
    k = int(w.cfg.logging.slate_size if k is None else k)
    if not 1 <= k <= n_items:
        raise ValueError(f"k = {k}: must be between 1 and the catalogue size {n_items}")
    if k > len(w.position_penalty):  # the world's position penalty covers the logging slate size
        ch = w.cfg.choice
        w.position_penalty = ch.position_bias * np.log2(1.0 + np.arange(k, dtype=np.float64))
    score = _score_fn(policy)
    cohort = np.arange(n_users) if users is None else np.unique(np.asarray(users, dtype=np.int64))
    in_cohort = np.zeros(n_users, dtype=bool)
    in_cohort[cohort] = True

    if "click" in clicks.columns:
        clicks = clicks[clicks["click"] == 1]
    clicks = clicks.sort_values(["user_id", "timestamp", "position"], kind="stable")
    max_len = min(HISTORY_LEN, int(getattr(policy, "max_len", HISTORY_LEN)))
    hist = histories(clicks, np.arange(n_users), max_len)  # (N, L), grows as users click

    tree = seed.child("rollout")
    rng_active, rng_slate = tree.generator("activity"), tree.generator("slates")
    rng_choice, rng_feedback = tree.generator("choice"), tree.generator("feedback")
    rng_extra, rng_shock = tree.generator("feedback-extra"), tree.generator("shocks")
    rng_dynamics = tree.generator("dynamics")

    cum = np.zeros(n_users)
    rows, parts = [], []
    for h in range(n_rounds):
        active = w.active_users(rng_active.random(n_users))
        active = active[in_cohort[active]]
        n = len(active)
        u_choice = rng_choice.random(n)
        z_noise, u_flip = rng_feedback.standard_normal(n), rng_feedback.random(n)
        z_watch, u_missing = rng_extra.standard_normal(n), rng_extra.random(n)
        trend = w.trend()
        slates = np.empty((n, k), dtype=np.int32)
        for lo in range(0, n, CHUNK_USERS):
            sl = slice(lo, min(lo + CHUNK_USERS, n))
            logits = np.asarray(score(w, active[sl], hist[active[sl]]), dtype=np.float64)
            if logits.shape != (sl.stop - lo, n_items):
                raise ValueError(f"policy returned logits of shape {logits.shape}, expected {(sl.stop - lo, n_items)}")
            make = topk_slates if slate == "topk" else sample_slates
            slates[sl] = make(logits, k, rng_slate)
        choice, rating, rstar, _ = w.respond(active, slates, u_choice, z_noise, u_flip, trend=trend)
        clicked = choice >= 0
        r_click = rstar[np.arange(n), np.maximum(choice, 0)]
        _, rating = w.observe(r_click, clicked, rating, z_watch, u_missing)
        cu, ci = active[clicked], slates[clicked, choice[clicked]].astype(np.int64)
        world_round = w.state.round
        w.advance(slates, cu, ci, rng_shock, active, rng_dynamics)
        if len(cu):  # a user clicks at most once per round: shift her history left by one
            hist[cu, :-1] = hist[cu, 1:]
            hist[cu, -1] = ci
        np.add.at(cum, cu, r_click[clicked])
        nc = int(clicked.sum())
        rows.append(
            dict(
                round=h, world_round=world_round, n_active=n, n_clicks=nc,
                ctr=nc / n if n else np.nan,
                reward_clicked=float(r_click[clicked].mean()) if nc else np.nan,
                reward_shown=float(rstar.mean()) if n else np.nan,
                rating=float(np.nanmean(rating[clicked])) if np.isfinite(rating[clicked]).any() else np.nan,
                reward_per_user=float(r_click[clicked].sum() / len(cohort)),
            )
        )
        parts.append(
            pd.DataFrame(
                {
                    "user_id": cu.astype(np.int32),
                    "timestamp": np.full(nc, world_round, dtype=np.int32),
                    "position": choice[clicked].astype(np.int16),
                    "item_id": ci.astype(np.int32),
                    "rating": rating[clicked].astype(np.float32),
                    "true_reward": r_click[clicked],
                }
            )
        )
    frame = pd.DataFrame(rows, columns=ROUND_COLUMNS)
    new_clicks = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["user_id", "timestamp", "position", "item_id", "rating", "true_reward"]
    )
    shown = (frame["n_active"] * k).sum()
    n_clicks = frame["n_clicks"].sum()
    summary = dict(
        n_rounds=float(n_rounds),
        k=float(k),
        n_users=float(len(cohort)),
        value=float(cum[cohort].mean()) if len(cohort) else float("nan"),
        value_per_round=float(cum[cohort].mean() / n_rounds) if n_rounds and len(cohort) else float("nan"),
        ctr=float(n_clicks / frame["n_active"].sum()) if frame["n_active"].sum() else float("nan"),
        reward_clicked=float(new_clicks["true_reward"].mean()) if n_clicks else float("nan"),
        reward_shown=float((frame["reward_shown"] * frame["n_active"] * k).sum() / shown) if shown else float("nan"),
        rating=float(new_clicks["rating"].mean()) if n_clicks else float("nan"),
    )
    return RolloutResult(frame, summary, new_clicks, w)


__all__ = [
    "RolloutResult", "WorldPolicy", "rollout", "uniform_policy", "oracle_policy", "logger_policy",
    "topk_slates", "sample_slates",
]
