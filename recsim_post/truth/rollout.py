"""Closed-loop rollouts: deploy a policy for H rounds in (a copy of) the world and watch it react.

Each round is the world engine's (``world/engine.py``), the one ``simulate`` and the envs run, with
the policy (any ``recsim_post.policy.Policy``) serving the slates.

The exact ground truth of ground_truth.py scores a policy against r*(u, ., T) frozen at the end of
logging. A rollout complements it: the policy serves slates for ``n_rounds`` more rounds, users
choose and rate through the same choice model and noise as the logs, and the world moves on --
satiation builds up on what users click, popularity and trends feed on what is shown, shocks
arrive, preferences drift and sessions end (when those dynamics are on). Each round:

1. who asks for a slate: ``world.active_users`` on uniforms from the ``activity`` stream (the
   rule of logs/simulate.py; sessions and arrivals included), restricted to ``users`` if given;
2. the policy scores every item from each active user's public click history so far (the logged
   clicks plus the clicks made during the rollout) and a Context (the round, the rolled world),
   and a slate of k items is built: its top k (exact ties broken at random), or k items drawn
   without replacement from softmax(logits) (Gumbel-top-k, i.e. Plackett-Luce, on the ``slates``
   stream);
3. users choose (``choice`` stream) with the trend at the start of the round, and every feedback
   signal is recorded (``feedback``, ``feedback-extra``), so missing ratings are NaN as in the logs;
4. the world moves on (``shocks`` and ``dynamics`` streams) and the clicks join the histories.

All randomness comes from ``seed.child("rollout")``; the same seed gives identical results, and
two policies rolled with the same seed share their activity draws (common random numbers). The
rollout runs on a deep copy: the caller's world is never modified.

Closed-loop value = mean over the cohort of each user's summed r* of her clicks over the H rounds
(r* at the time of the click, satiation included); an inactive or non-clicking user adds 0.

The oracle here is greedy and myopic (the k best items by the current r*, round after round); it
ignores the satiation it builds up and the trends it feeds, so it is a strong reference, not an
upper bound: a policy may beat it closed-loop.

:class:`ClosedLoop` rolls many policies under one :class:`ClosedLoopConfig` (same cohort, same
seeds) and averages over the seeds: the ``closed_loop`` column of the results table.
:func:`world_at_end_of_logging` rebuilds the world at T of a log folder written to disk (see its
doc for why that is a verified re-simulation rather than a read of ``sealed/``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from .. import __version__
from ..config import Config, from_dict, knob
from ..errors import ConfigError, LogError
from ..logs.check import check_log_folder
from ..logs.public import PublicLogs, histories
from ..behavior.logging_policy import TrendLogger
from ..logs.simulate import LogRun, replay_public_hashes
from ..seeding import SeedTree
from ..world.config import MAX_ENTITIES, SEED_MAX, ScenarioConfig
from ..world.engine import Round, Streams, step_round
from ..signals import SIGNALS
from ..world.world import World
from ..policy import HISTORY_LEN, Context, Policy, check_policy, slate_rule
from .ground_truth import GroundTruth

CHUNK_USERS = 2048
"""Users scored per policy call (bounds memory at CHUNK_USERS * n_items floats)."""

ROUND_COLUMNS = [
    "round", "world_round", "n_active", "n_clicks", "ctr",
    "reward_clicked", "reward_shown", "rating", "reward_per_user",
]


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


def plackett_luce_slates(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k items per row drawn without replacement from softmax(logits) (Gumbel-top-k = Plackett-Luce)."""
    g = logits.astype(np.float64) - np.log(-np.log(rng.random(logits.shape)))
    return topk_slates(g, k, rng)


def rollout(
    world: World,
    policy: Policy,
    clicks: pd.DataFrame,
    n_rounds: int,
    seed: SeedTree,
    slate: Literal["topk", "sample"] = "topk",
    k: int | None = None,
    users: np.ndarray | None = None,
) -> RolloutResult:
    """Deploy ``policy`` for ``n_rounds`` rounds on a deep copy of ``world`` (see the module doc).

    ``policy``: any ``recsim_post.policy.Policy``; every round it scores its users with their
    histories and a Context holding the round and the rolled world (so the oracle and the logging
    policy of ``truth/references.py`` read the current r* and trend). Its own ``slate`` rule, when
    set, overrides ``slate``.
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
    check_policy(policy, n_items)
    slate = slate_rule(policy, slate)
    make = topk_slates if slate == "topk" else plackett_luce_slates
    cohort = np.arange(n_users) if users is None else np.unique(np.asarray(users, dtype=np.int64))
    in_cohort = np.zeros(n_users, dtype=bool)
    in_cohort[cohort] = True

    if "click" in clicks.columns:
        clicks = clicks[clicks["click"] == 1]
    clicks = clicks.sort_values(["user_id", "timestamp", "position"], kind="stable")
    max_len = min(HISTORY_LEN, int(getattr(policy, "max_len", HISTORY_LEN)))
    hist = histories(clicks, np.arange(n_users), max_len)  # (N, L), grows as users click

    tree = seed.child("rollout")
    streams, rng_slate = Streams.flat(tree), tree.generator("slates")

    def serve(world: World, rnd: Round) -> tuple[np.ndarray, dict]:
        slates = np.empty((rnd.n, k), dtype=np.int32)
        for lo in range(0, rnd.n, CHUNK_USERS):
            sl = slice(lo, min(lo + CHUNK_USERS, rnd.n))
            users = rnd.users[sl]
            context = Context(users, np.full(len(users), rnd.t, dtype=np.int64), world)
            logits = np.asarray(policy.logits(hist[users], context), dtype=np.float64)
            if logits.shape != (sl.stop - lo, n_items):
                raise ValueError(f"policy returned logits of shape {logits.shape}, expected {(sl.stop - lo, n_items)}")
            slates[sl] = make(logits, k, rng_slate)
        return slates, {}

    cum = np.zeros(n_users)
    rows, parts = [], []
    for h in range(n_rounds):
        rec = step_round(w, streams, serve, cohort=in_cohort)
        resp, n = rec.responses, len(rec.users)
        clicked, r_click, rating = resp.clicked, resp.rstar_chosen, resp.signals["rating"]
        cu, ci = rec.clicked_users, rec.clicked_items
        if len(cu):  # a user clicks at most once per round: shift her history left by one
            hist[cu, :-1] = hist[cu, 1:]
            hist[cu, -1] = ci
        np.add.at(cum, cu, r_click[clicked])
        nc = int(clicked.sum())
        rows.append(
            dict(
                round=h, world_round=rec.t, n_active=n, n_clicks=nc,
                ctr=nc / n if n else np.nan,
                reward_clicked=float(r_click[clicked].mean()) if nc else np.nan,
                reward_shown=float(resp.rstar.mean()) if n else np.nan,
                rating=float(np.nanmean(rating[clicked])) if np.isfinite(rating[clicked]).any() else np.nan,
                reward_per_user=float(r_click[clicked].sum() / len(cohort)),
            )
        )
        parts.append(
            pd.DataFrame(
                {
                    "user_id": cu.astype(np.int32),
                    "timestamp": np.full(nc, rec.t, dtype=np.int32),
                    "position": resp.choice[clicked].astype(np.int16),
                    "item_id": ci.astype(np.int32),
                    **{name: values[clicked] for name, values in resp.signals.items()},
                    "true_reward": r_click[clicked],
                }
            )
        )
    frame = pd.DataFrame(rows, columns=ROUND_COLUMNS)
    new_clicks = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["user_id", "timestamp", "position", "item_id", *SIGNALS, "true_reward"]
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


@dataclass(frozen=True)
class ClosedLoopConfig(Config):
    """How the ``closed_loop`` column is computed.

    closed_loop(pi) = (1/|seeds|) sum_s V_H(pi; s), V_H(pi; s) = mean over the cohort of each
    user's summed r* of her clicks when pi serves the cohort for ``rounds`` rounds after T
    (:func:`rollout` with ``SeedTree(s)``). Every policy of a table is rolled on the same cohort
    with the same seeds, so differences between rows are not drawn from independent noise.
    """

    rounds: int = knob(5, "rounds each policy is deployed for after logging ends (0: no closed-loop column)", ge=0,
                       le=100_000)
    seeds: tuple[int, ...] = knob((0, 1), "rollout seeds; the column is the mean over them", ge=0, le=SEED_MAX)
    users: int | None = knob(250, "cohort: at most this many users drawn at random (the same for every policy); "
                             "the others ask for no slates (None: every user)", ge=1, le=MAX_ENTITIES)
    slate: Literal["topk", "sample"] = knob("topk", "how a policy builds its slate: its top k, or k items drawn "
                                             "without replacement from its softmax (the logger always samples, as "
                                             "in the logs; the oracle always shows its top k)")
    k: int | None = knob(None, "slate size (None: the logging slate size)", ge=1, le=1000)

    def check(self) -> None:
        if not self.seeds:
            raise ConfigError("seeds = () must hold at least one rollout seed")


@dataclass(frozen=True)
class ClosedLoopValue:
    """One policy's closed-loop value: the mean and sample std (ddof 1; NaN with one seed) over
    the rollout seeds of V_H, and each seed's :attr:`RolloutResult.summary` (plus ``seed``)."""

    mean: float
    std: float
    runs: tuple[dict[str, float], ...]


class ClosedLoop:
    """Rolls policies from one world at T under one :class:`ClosedLoopConfig`: same cohort, same
    seeds (common random numbers), the world itself never modified.

    The cohort is drawn once from ``SeedTree(world.cfg.seed).child("evaluation")``, so the demo
    and ``recsim-post rollout`` on the logs it wrote pick the same users.
    """

    def __init__(self, world: World, clicks: pd.DataFrame, cfg: ClosedLoopConfig = ClosedLoopConfig()) -> None:
        k = int(world.cfg.logging.slate_size if cfg.k is None else cfg.k)
        if k > world.n_items:
            raise ConfigError(f"k = {k} is out of range: must be <= the catalogue size {world.n_items}")
        self.world, self.clicks, self.cfg, self.k = world, clicks, cfg, k
        self.seconds = 0.0
        """Wall time spent in :meth:`run` so far (the demo reports what the column cost)."""
        n = world.n_users
        self.cohort: np.ndarray | None = None  # None: everyone
        if cfg.users is not None and cfg.users < n:
            rng = SeedTree(world.cfg.seed).child("evaluation").generator("closed-loop-cohort")
            self.cohort = np.sort(rng.choice(n, cfg.users, replace=False))

    @property
    def n_users(self) -> int:
        return self.world.n_users if self.cohort is None else len(self.cohort)

    def describe(self) -> str:
        """One line for table legends, e.g. "5 rounds, top-10 slates, 250 of 1,000 users, seeds 0 1"."""
        c = self.cfg
        rule = f"top-{self.k}" if c.slate == "topk" else f"sampled {self.k}-item"
        who = f"all {self.world.n_users:,} users" if self.cohort is None else \
            f"{self.n_users:,} of {self.world.n_users:,} users drawn at random"
        return (f"{c.rounds} round{'s' if c.rounds != 1 else ''}, {rule} slates, {who}, "
                f"seed{'s' if len(c.seeds) > 1 else ''} {' '.join(map(str, c.seeds))}")

    def run(self, policy: Policy) -> ClosedLoopValue:
        """Roll ``policy`` once per seed."""
        start = time.perf_counter()
        runs = []
        for s in self.cfg.seeds:
            r = rollout(self.world, policy, self.clicks, self.cfg.rounds, SeedTree(s), slate=self.cfg.slate,
                        k=self.k, users=self.cohort)
            runs.append({"seed": float(s), **r.summary})
        values = np.array([r["value"] for r in runs])
        std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        self.seconds += time.perf_counter() - start
        return ClosedLoopValue(float(values.mean()), std, tuple(runs))


@dataclass(frozen=True)
class WorldAtT:
    """The world and the logging policy at the end of logging (T), rebuilt from a log folder."""

    world: World
    logger: TrendLogger


def world_at_end_of_logging(folder: str | Path, logs: PublicLogs, truth: GroundTruth | None = None) -> WorldAtT:
    """The world and the logging policy at the end of logging (T) of a log folder, exactly.

    ``sealed/`` holds the latents and most of the state at T (popularity, shocks, satiation,
    preferences, hype, activity), but not all of what a rollout moves on: the users' session
    and arrival state (who is away, slates seen in the current session, arrival rounds; used with
    ``dynamics.session_budget`` / ``dynamics.arrival``). Rather than rebuild an approximate world,
    this re-simulates the manifest's scenario with its seed -- simulation is seed-reproducible --
    and checks, raising LogError on any mismatch, that

    1. ``interactions.parquet`` and ``items.parquet`` match the SHA-256 in ``manifest.json``
       (unchanged since they were written);
    2. the re-simulated public files have those SHA-256 too (the bytes ``simulate`` would write,
       hashed round by round and dropped: memory stays the world plus one piece of a round, flat in
       the logs' length; ``logs`` may be a clicks-only read);
    3. the re-simulated world at T equals ``sealed/`` (``truth``, a GroundTruth, when given):
       preferences, satiation, item vectors, quality and trend.

    Logs written by a version whose simulation differed, or edited by hand, are refused; nothing
    approximate is ever rolled. Costs one simulation of the scenario.
    """
    folder = Path(folder)
    manifest = check_log_folder(folder, "public")  # the files as they are on disk now, whatever ``logs`` holds
    if "scenario" not in logs.manifest:
        raise LogError(f"{folder}/manifest.json is corrupt: key 'scenario' is missing")
    scenario = truth.scenario if truth is not None else from_dict(ScenarioConfig, logs.manifest["scenario"])
    run = LogRun(scenario, streamed=True)
    try:
        replayed = replay_public_hashes(run)
    finally:
        run.close()
    written = logs.manifest.get("package_version", "an unknown version")
    why = (f"re-simulating scenario '{scenario.name}' with seed {scenario.seed} does not reproduce {folder}"
           f" (written by recsim-post {written}, this is {__version__})")
    differ = [name for name, sha in replayed.items() if manifest["sha256"].get(name) != sha]
    if differ:
        raise LogError(f"{why}: its public logs differ ({' and '.join(differ)}), so the world at T cannot be "
                       "rebuilt exactly")
    if truth is not None:
        w = run.world
        pairs = {
            "theta": (w.users.theta, truth.theta), "satiation": (w.state.satiation, truth.satiation),
            "vectors": (w.catalog.vectors, truth.vectors), "quality": (w.catalog.quality, truth.quality),
            "trend": (w.trend(), truth.trend),
        }
        for name, (a, b) in pairs.items():
            if not np.array_equal(a, b):
                raise LogError(f"{why}: the sealed {name} at T differs from the re-simulated world")
    return WorldAtT(run.world, run.logger)


__all__ = [
    "RolloutResult", "rollout", "topk_slates", "plackett_luce_slates", "ClosedLoopConfig", "ClosedLoopValue",
    "ClosedLoop",
    "WorldAtT", "world_at_end_of_logging",
]
