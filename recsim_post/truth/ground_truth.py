"""Exact ground-truth value of a policy: no Monte-Carlo noise, sums over the whole catalogue.

For evaluation users u with public histories h_u at the end of logging (time T)::

    V(pi)      = mean_u sum_i pi(i | h_u) r*(u, i, T)          (the policy samples one item)
    V_k(pi)    = mean_u (1/k) sum_{i in top-k of pi(. | h_u)} r*(u, i, T)   (it shows its top k)
    normalised = (V(pi) - V(uniform)) / (V(oracle) - V(uniform))   0 = random, 1 = best possible

The oracle puts all its mass on argmax_i r* (for V) or shows the k best items (for V_k).

The sums stream: users go in chunks sized by a byte budget (:data:`BUDGET_BYTES`), r* is computed
once per chunk and shared by the references and by every policy scored in the same pass
(:func:`exact_sums`), and each policy's logits are reduced row by row by the kernels of
truth/kernels.py. Memory is O(chunk x items) however many users and policies there are.
:func:`reference_sums` keeps the plain dense implementation the tests compare against.

Earlier rounds: with preference drift theta_u moves after every click; :meth:`GroundTruth.theta_at`
and :meth:`GroundTruth.user_theta` give theta_u(t) at the start of any round t from the sealed
history (exact float64 values). With switching loggers the active logger of every round is sealed
too (:attr:`GroundTruth.logger_rounds`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..behavior.logging_policy import TrendLogger
from ..config import from_dict
from ..errors import ConfigError, LogError
from ..logs.check import check_log_folder, check_sealed_tables
from ..logs.public import read_parquet
from ..policy import Context, Policy, empty_histories
from ..world.config import ScenarioConfig
from ..world.kernels import true_reward_product, true_reward_rows_ref
from ..world.world import true_reward_matrix
from .kernels import policy_sums, softmax_dot, softmax_dot_ref, topk_mean, topk_mean_ref, true_reward_stats

Histories = Callable[[np.ndarray], np.ndarray]
"""Maps user ids (B,) to their public click histories at T (B, L), left-padded with PAD."""


@dataclass(frozen=True)
class ThetaHistory:
    """theta_u(t) at the start of every round, from the sealed theta_updates table.

    Rows (round r, user u, theta) mean "theta_u at the start of round r"; round 0 has every user and
    round r >= 1 the users whose theta moved in round r - 1. theta_u(t) is u's last row with r <= t.
    """

    round: np.ndarray  # (M,) int64, sorted by (user, round)
    user: np.ndarray  # (M,) int64
    theta: np.ndarray  # (M, d) float64
    n_rounds: int
    n_users: int

    @cached_property  # computed once: exact_reward looks rows up chunk by chunk
    def keys(self) -> np.ndarray:
        """user * (n_rounds + 1) + round: increasing, since rows are sorted by (user, round)."""
        return self.user * (self.n_rounds + 1) + self.round

    @classmethod
    def from_frame(cls, df: pd.DataFrame, n_users: int, n_rounds: int) -> "ThetaHistory":
        cols = sorted((c for c in df.columns if c.startswith("theta") and c[5:].isdigit()), key=lambda c: int(c[5:]))
        r = df["round"].to_numpy(np.int64)
        u = df["user_id"].to_numpy(np.int64)
        first = np.sort(u[r == 0])
        if len(first) != n_users or not np.array_equal(first, np.arange(n_users)):
            raise LogError("sealed theta_updates is corrupt: round 0 must hold every user exactly once")
        if r.min() < 0 or r.max() > n_rounds:
            raise LogError(f"sealed theta_updates is corrupt: rounds must lie in 0 .. {n_rounds}")
        order = np.lexsort((r, u))
        return cls(r[order], u[order], df[cols].to_numpy(np.float64)[order], n_rounds, n_users)

    def rows(self, users: np.ndarray, rounds: np.ndarray) -> np.ndarray:
        """theta_{users[b]}(rounds[b]): (B, d), by one searchsorted over (user, round) keys."""
        users = np.asarray(users, np.int64)
        rounds = np.asarray(rounds, np.int64)
        if len(rounds) and (rounds.min() < 0 or rounds.max() > self.n_rounds):
            raise ValueError(f"rounds must lie in 0 .. {self.n_rounds}, got {rounds.min()} .. {rounds.max()}")
        if len(users) and (users.min() < 0 or users.max() >= self.n_users):
            raise ValueError(f"user ids must lie in 0 .. {self.n_users - 1}, got {users.min()} .. {users.max()}")
        # every user has a round-0 row, so the last key <= (u, t) is always one of u's own rows
        idx = np.searchsorted(self.keys, users * (self.n_rounds + 1) + rounds, side="right") - 1
        return self.theta[idx]


@dataclass(frozen=True)
class GroundTruth:
    """The sealed truth at the end of logging: evaluation's only window on the world."""

    scenario: ScenarioConfig
    theta: np.ndarray  # (N, d)
    satiation: np.ndarray  # (N, G)
    vectors: np.ndarray  # (I, d)
    quality: np.ndarray  # (I,)
    genre: np.ndarray  # (I,)
    trend: np.ndarray  # (I,) trend at time T
    logger: TrendLogger
    impressions: pd.DataFrame | None = None  # slate_id, position, true_reward, propensities
    logger_rounds: np.ndarray | None = None  # (n_rounds + 1,) active logger per round (switching on)
    theta_history: ThetaHistory | None = None  # theta_u(t) over the rounds (drift on)

    @property
    def n_users(self) -> int:
        return len(self.theta)

    @property
    def n_items(self) -> int:
        return len(self.quality)

    @property
    def has_propensities(self) -> bool:
        """Whether the sealed impressions hold the logger's propensities (not with propensity_mode "none")."""
        return self.impressions is not None and "propensity_item" in self.impressions.columns

    def require_propensities(self, what: str = "this") -> None:
        """Raise a one-line LogError when the sealed propensities are absent."""
        if self.impressions is None:
            raise LogError(f"{what} needs the sealed impressions, and this ground truth has none")
        if not self.has_propensities:
            raise LogError(
                f"{what} needs the logger's true propensities, but this log was simulated with "
                "logging.propensity_mode = 'none' (never recorded): use estimated propensities, "
                "or simulate with propensity_mode 'hidden' or 'logged'"
            )

    def theta_at(self, t: int) -> np.ndarray:
        """theta at the start of round t (0 <= t <= n_rounds; t = n_rounds is the end): (N, d)."""
        n_rounds = self.scenario.simulation.n_rounds
        if not 0 <= t <= n_rounds:
            raise ValueError(f"round {t} is out of range: must be 0 .. {n_rounds}")
        if self.scenario.dynamics.drift_rate == 0:
            return self.theta  # preferences never move
        return self._history().rows(np.arange(self.n_users), np.full(self.n_users, t))

    def user_theta(self, users: np.ndarray, rounds: np.ndarray) -> np.ndarray:
        """theta_{users[b]} at the start of round rounds[b]: (B, d)."""
        if self.scenario.dynamics.drift_rate == 0:
            return self.theta[np.asarray(users, np.int64)]
        return self._history().rows(users, rounds)

    def _history(self) -> ThetaHistory:
        if self.theta_history is None:
            raise LogError(
                f"preferences drift (dynamics.drift_rate = {self.scenario.dynamics.drift_rate:g}) but this "
                "ground truth has no sealed theta history (sealed/theta_updates.parquet, written by "
                "newer versions): simulate the logs again"
            )
        return self.theta_history

    @classmethod
    def from_simulation(cls, sim) -> "GroundTruth":  # noqa: ANN001 - logs.simulate.Simulation
        w = sim.world
        rounds, updates = sim.logger_rounds, sim.theta_updates
        return cls(
            w.cfg, w.users.theta, w.state.satiation.copy(), w.catalog.vectors, w.catalog.quality,
            w.catalog.genre, w.trend(), sim.logger, sim.sealed_impressions,
            None if rounds is None else rounds["logger_id"].to_numpy(np.int64),
            None if updates is None else ThetaHistory.from_frame(updates, w.n_users, w.cfg.simulation.n_rounds),
        )

    @classmethod
    def load(cls, folder: str | Path, impressions: bool = True) -> "GroundTruth":
        """Read ``sealed/`` and the manifest of a log folder (``impressions=False``: all but the sealed
        impressions -- one row per logged impression, which only off-policy evaluation reads; the exact
        ground truth of policies never does, and at 10^8 impressions they are 3.4 GB).

        The folder is checked first (:func:`~recsim_post.logs.check.check_log_folder`: manifest,
        ``sealed/`` present, every sealed file matching its SHA-256), then each table is read once
        and its values checked (:func:`~recsim_post.logs.check.check_sealed_tables`). Raises a
        one-line LogError naming what is missing or corrupt.
        """
        folder = Path(folder)
        manifest = check_log_folder(folder, "sealed")
        try:
            scenario = from_dict(ScenarioConfig, manifest["scenario"])
        except ConfigError as err:
            raise LogError(f"{folder / 'manifest.json'} is corrupt: its scenario is not valid: {err}") from None
        sealed = folder / "sealed"
        items = read_parquet(sealed / "items.parquet")
        users = read_parquet(sealed / "users.parquet")
        sealed_rows = read_parquet(sealed / "impressions.parquet") if impressions else None
        optional = {}
        for name in ("logger_rounds", "theta_updates"):  # written (and hashed) only when the scenario needs them
            listed = f"sealed/{name}.parquet" in manifest["sha256"]
            optional[name] = read_parquet(sealed / f"{name}.parquet") if listed else None
        check_sealed_tables(
            folder, manifest, items, users, sealed_rows, scenario.logging.n_loggers, optional["theta_updates"]
        )

        def block(df, prefix: str) -> np.ndarray:  # noqa: ANN001
            cols = [c for c in df.columns if c.startswith(prefix) and c[len(prefix):].isdigit()]
            cols.sort(key=lambda c: int(c[len(prefix):]))
            return df[cols].to_numpy(np.float64)

        vectors = block(items, "v")
        support_idx = None
        if "logger_supported" in items.columns:
            support_idx = np.flatnonzero(items["logger_supported"].to_numpy(bool))
        n_rounds = scenario.simulation.n_rounds
        rounds = None
        if optional["logger_rounds"] is not None:
            rounds = optional["logger_rounds"].sort_values("round")["logger_id"].to_numpy(np.int64)
            K = scenario.logging.n_loggers
            if len(rounds) != n_rounds + 1 or rounds.min() < 0 or rounds.max() >= K:
                raise LogError(
                    f"{folder}: sealed logger_rounds is corrupt: expected {n_rounds + 1} rounds with logger ids "
                    f"0 .. {K - 1}, got {len(rounds)} rounds with ids {rounds.min(initial=0)} .. {rounds.max(initial=0)}"
                )
        elif scenario.logging.switching == "random":
            raise LogError(f"{folder} has no sealed/logger_rounds.parquet: which logger was active at T is unknown")
        logger = TrendLogger(
            scenario.logging, block(users, "theta_hat"), items["quality_hat"].to_numpy(),
            vectors.astype(np.float32), support_idx, sequence=rounds,
        )
        # the logger's state at T: the active parameterisation and the suggestion boost of round T
        boost = items["logger_boost"].to_numpy(np.float64) if "logger_boost" in items.columns else None
        logger.set_round(n_rounds, boost)
        theta = block(users, "theta")
        history = None
        if optional["theta_updates"] is not None:
            history = ThetaHistory.from_frame(optional["theta_updates"], len(theta), n_rounds)
        return cls(
            scenario, theta, block(users, "satiation"), vectors,
            items["quality"].to_numpy(), items["genre"].to_numpy(np.int64), items["trend"].to_numpy(),
            logger, sealed_rows, rounds, history,
        )

    def impression_rewards(self, rows: pd.DataFrame) -> np.ndarray:
        """r* of logged impressions (rows with ``slate_id`` and ``position``), in their order."""
        if self.impressions is None:
            raise LogError("this ground truth has no sealed impressions table")
        key = self.impressions.set_index(["slate_id", "position"])["true_reward"]
        return key.reindex(pd.MultiIndex.from_frame(rows[["slate_id", "position"]])).to_numpy(np.float64)

    def true_reward(self, users: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """r*(u, i, T) for users (B,) over all items: (B, I) float64, C order (into ``out`` if given)."""
        return true_reward_matrix(
            self.theta[users], self.satiation[users], self.vectors, self.quality, self.genre,
            self.scenario.satiation.strength, out,
        )

    def logger_logits(self, users: np.ndarray) -> np.ndarray:
        """Logits whose softmax is the logging policy at T (eps-mixing included, exactly).

        The logger is in its state at T (active parameterisation, suggestion boost of round T);
        items outside a deficient support get probability 0, hence logit -inf.
        """
        with np.errstate(divide="ignore"):
            return np.log(self.logger.probabilities(users, self.trend))


@dataclass(frozen=True)
class PolicyValue:
    """Ground-truth value of a policy, raw and normalised."""

    value: float
    value_norm: float
    topk_value: float
    topk_norm: float


@dataclass(frozen=True)
class References:
    """Values of the uniform policy and the oracle, the two ends of the normalised scale."""

    uniform: float
    oracle: float
    oracle_topk: float
    k: int

    def normalise(self, value: float, topk_value: float) -> PolicyValue:
        return PolicyValue(
            value,
            (value - self.uniform) / (self.oracle - self.uniform),
            topk_value,
            (topk_value - self.uniform) / (self.oracle_topk - self.uniform),
        )


BUDGET_BYTES = 256 * 2**20
"""Bytes of (users x items) arrays one chunk of the exact sums may hold: r*, a reward model's
belief, one policy's logits and their temporaries (:data:`CELL_BYTES` per user and item)."""

CELL_BYTES = 32
"""Bytes per (user, item) cell of a chunk: r* (8), a belief (8), logits (up to 8) and slack (8)."""


def chunk_users(n_items: int, budget_bytes: int = BUDGET_BYTES) -> int:
    """Users per chunk so that a chunk's (users x items) arrays stay within ``budget_bytes``."""
    return max(1, int(budget_bytes) // (CELL_BYTES * max(int(n_items), 1)))


def _chunks(users: np.ndarray, size: int):
    for lo in range(0, len(users), size):
        yield slice(lo, lo + size), users[lo : lo + size]


def softmax_value(logits: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """Per row: sum_i softmax(logits)_i * rewards_i (stable, float64; see truth/kernels.py)."""
    return softmax_dot(logits, rewards)


def topk_value(logits: np.ndarray, rewards: np.ndarray, k: int) -> np.ndarray:
    """Per row: the mean reward of the k highest-scoring items (argpartition's choice among ties)."""
    return topk_mean(logits, rewards, k)


BeliefFn = Callable[[np.ndarray], np.ndarray]
"""Maps user ids (B,) to a reward model's R̂(h_u, i) over all items (B, n_items)."""


@dataclass(frozen=True)
class ExactSums:
    """Per-user sums of one pass over r*(u, ., T): the reference values and every policy of the pass.

    Arrays are (n_users,) float64 in the order of the users passed. ``value[name]`` is
    sum_i pi(i|h_u) r*(u, i), ``topk[name]`` the mean r* of pi's top k; with a belief R̂,
    ``belief[name]`` is sum_i pi(i|h_u) R̂(h_u, i), ``uniform_belief`` the mean of R̂ over items and
    ``oracle_belief`` its mean over the items of highest r* (the oracle's point mass, ties shared).
    """

    uniform: np.ndarray
    oracle: np.ndarray
    oracle_topk: np.ndarray
    k: int
    value: dict[Hashable, np.ndarray]
    topk: dict[Hashable, np.ndarray]
    belief: dict[Hashable, np.ndarray]
    uniform_belief: np.ndarray | None = None
    oracle_belief: np.ndarray | None = None
    entropy: dict[Hashable, np.ndarray] = field(default_factory=dict)
    """With ``sharpness``: per user H(π(.|h_u)) in nats (truth/sharpness.py)."""
    top1: dict[Hashable, np.ndarray] = field(default_factory=dict)
    """With ``sharpness``: per user r* of the policy's top item (its greedy value)."""
    kl: dict[Hashable, np.ndarray] = field(default_factory=dict)
    """With ``ref_of``: per user KL(π ‖ π_ref) in nats."""
    entropy_profile: dict[Hashable, np.ndarray] = field(default_factory=dict)
    """With ``sharpness``, for each policy with a π_ref (``ref_of``): the mean entropy at each
    temperature of ``sharpness.TAU_GRID`` (what its matched temperature is read from)."""
    profile_chunks: dict[Hashable, np.ndarray] = field(default_factory=dict)
    """Those policies' (n_chunks, len(TAU_GRID)) chunk-summed entropies, the terms that
    ``entropy_profile`` adds up in chunk order (so shards of whole chunks combine exactly:
    :func:`combine_sums`)."""

    def references(self) -> References:
        n = len(self.uniform)
        return References(self.uniform.sum() / n, self.oracle.sum() / n, self.oracle_topk.sum() / n, self.k)

    def policy(self, name: Hashable, refs: References) -> PolicyValue:
        """``name``'s value and top-k value, normalised by ``refs``."""
        n = len(self.value[name])
        return refs.normalise(self.value[name].sum() / n, self.topk[name].sum() / n)

    def believed(self, name: Hashable) -> float:
        """The belief's mean over users of sum_i pi(i|h_u) R̂(h_u, i) for policy ``name``."""
        return float(self.belief[name].sum() / len(self.belief[name]))


def exact_sums(
    truth: GroundTruth,
    users: np.ndarray,
    policies: Mapping[Hashable, Policy] | None = None,
    k: int = 10,
    belief: BeliefFn | None = None,
    chunk: int | None = None,
    histories: Histories | None = None,
    sharpness: bool = False,
    ref_of: Mapping[Hashable, Hashable] | None = None,
) -> ExactSums:
    """One pass over r*(u, ., T) for ``users``, shared by the references and every policy in ``policies``.

    Each policy scores ``policy.logits(histories(u), Context(u))``: the users' public histories at
    T (``histories``, e.g. ``logs.public.HistoryIndex.gather``; none given: empty histories).

    Users go in chunks of ``chunk`` (default :func:`chunk_users`: a fixed byte budget, whatever the
    number of policies, so a policy gets the same numbers alone or with others); for each chunk r*
    is computed once (and the belief R̂ once, when given), then each policy's logits are reduced
    row by row (softmax-weighted sum, top-k mean) without (users x items) temporaries. Memory is
    O(chunk x items), flat in the number of users and policies.

    ``sharpness`` adds each policy's entropy, greedy (top-1) value and entropy-vs-temperature profile;
    ``ref_of`` maps a policy to the name of its π_ref among ``policies`` and adds KL(π ‖ π_ref)
    (truth/sharpness.py). A reference's logits are kept for its chunk only.
    """
    from .sharpness import TAU_GRID, TAU_ONE, Tempered, entropy_profile, kl

    policies = dict(policies or {})
    ref_of = {a: b for a, b in (ref_of or {}).items() if a in policies}
    for a, b in ref_of.items():
        if b not in policies:
            raise ValueError(f"ref_of: the reference {b!r} of {a!r} is not among the policies scored")
    refs_needed = set(ref_of.values())
    # references first, so their logits are at hand when a dependent policy is reduced
    policies = {**{n: p for n, p in policies.items() if n in refs_needed},
                **{n: p for n, p in policies.items() if n not in refs_needed}}
    users = np.asarray(users, np.int64)
    n, n_items = len(users), truth.n_items
    kk = min(k, n_items)
    chunk = chunk_users(n_items) if chunk is None else chunk
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of users, got {chunk}")
    uniform, oracle, oracle_topk = np.empty(n), np.empty(n), np.empty(n)
    value = {name: np.empty(n) for name in policies}
    topk = {name: np.empty(n) for name in policies}
    believed = {name: np.empty(n) for name in policies} if belief is not None else {}
    ent = {name: np.empty(n) for name in policies} if sharpness else {}
    top1 = {name: np.empty(n) for name in policies} if sharpness else {}
    # the whole profile only where a matched temperature will be looked up (a policy with a π_ref):
    # 49 temperatures cost 49 passes over the row, the entropy alone one
    prof = {name: np.zeros(len(TAU_GRID)) for name in ref_of} if sharpness else {}
    prof_chunks: dict[Hashable, list] = {name: [] for name in prof}
    kls = {name: np.empty(n) for name in ref_of}
    uni_b = ora_b = None
    if belief is not None:
        uni_b, ora_b = np.empty(n), np.empty(n)
    buf = np.empty((min(chunk, n), n_items))
    strength = truth.scenario.satiation.strength
    for sl, u in _chunks(users, chunk):
        # r* exactly as GroundTruth.true_reward computes it, the references' statistics on the way
        product = true_reward_product(
            truth.theta[u], truth.satiation[u], truth.vectors, truth.quality, truth.genre, out=buf[: len(u)]
        )
        uniform[sl], oracle[sl], oracle_topk[sl] = true_reward_stats(product, strength, kk)
        r = product[0]
        rb = None
        if belief is not None:
            rb = np.asarray(belief(u), np.float64)
            if rb.shape != r.shape:
                raise ValueError(f"belief returned shape {rb.shape}, expected {r.shape}")
            uni_b[sl] = rb.mean(axis=1)
            best = r >= oracle[sl][:, None]
            ora_b[sl] = np.where(best, rb, 0.0).sum(axis=1) / best.sum(axis=1)
        hist = (histories(u) if histories is not None else empty_histories(len(u))) if policies else None
        context = Context(u)
        kept: dict[Hashable, np.ndarray] = {}
        base: tuple[object, np.ndarray] | None = None  # the last tempered policy's own logits
        for name, policy in policies.items():
            if isinstance(policy, Tempered):
                # one forward pass for the consecutive temperatures of one policy: logits / τ, the
                # very numbers Tempered.logits computes
                if base is None or base[0] is not policy.policy:
                    base = (policy.policy, np.asarray(policy.policy.logits(hist, context), np.float64))
                logits = base[1] / policy.tau
            else:
                logits = policy.logits(hist, context)
            if logits.shape != r.shape:
                raise ValueError(f"policy {name!r} returned logits of shape {logits.shape}, expected {r.shape}")
            value[name][sl], topk[name][sl], b = policy_sums(logits, r, k, rb)
            if rb is not None:
                believed[name][sl] = b
            if sharpness:
                if name in prof:
                    rows = entropy_profile(logits)  # (users, temperatures); τ = 1 is the policy's own entropy
                    part = rows.sum(axis=0)
                    prof_chunks[name].append(part)
                    prof[name] += part
                    ent[name][sl] = rows[:, TAU_ONE]
                else:  # the τ = 1 column alone: the same numbers as the profile's (each τ is its own pass)
                    ent[name][sl] = entropy_profile(logits, TAU_GRID[TAU_ONE : TAU_ONE + 1])[:, 0]
                top1[name][sl] = topk_mean(logits, r, 1)
            if name in ref_of:
                kls[name][sl] = kl(logits, kept[ref_of[name]])
            if name in refs_needed:
                kept[name] = logits
            del logits
    profile = {name: p / max(n, 1) for name, p in prof.items()}
    chunks = {name: np.asarray(parts, np.float64).reshape(len(parts), len(TAU_GRID)) for name, parts in prof_chunks.items()}
    return ExactSums(uniform, oracle, oracle_topk, k, value, topk, believed, uni_b, ora_b, ent, top1, kls, profile,
                     chunks)


def combine_sums(parts: Sequence[ExactSums]) -> ExactSums:
    """The sums of consecutive runs of users, joined in order: per-user arrays concatenated, each
    entropy profile re-added chunk by chunk in the order :func:`exact_sums` adds it. Bit-identical to
    one pass over all the users when every part but the last holds whole chunks (shard boundaries on
    multiples of the chunk size: ``truth/sharded.py``), since each chunk then sees the same users."""
    if not parts:
        raise ValueError("combine_sums needs at least one part")
    first = parts[0]
    if len(parts) == 1:
        return first
    cat = lambda get: np.concatenate([get(p) for p in parts])  # noqa: E731
    per_name = lambda attr: {name: cat(lambda p: getattr(p, attr)[name]) for name in getattr(first, attr)}  # noqa: E731
    n = sum(len(p.uniform) for p in parts)
    chunks = per_name("profile_chunks")
    profile = {}
    for name, rows in chunks.items():
        acc = np.zeros(rows.shape[1])
        for row in rows:  # the very additions of exact_sums' loop, in its order
            acc += row
        profile[name] = acc / max(n, 1)
    optional = lambda attr: None if getattr(first, attr) is None else cat(lambda p: getattr(p, attr))  # noqa: E731
    return ExactSums(
        cat(lambda p: p.uniform), cat(lambda p: p.oracle), cat(lambda p: p.oracle_topk), first.k,
        per_name("value"), per_name("topk"), per_name("belief"), optional("uniform_belief"),
        optional("oracle_belief"), per_name("entropy"), per_name("top1"), per_name("kl"), profile, chunks,
    )


def references(truth: GroundTruth, users: np.ndarray, k: int = 10, chunk: int | None = None) -> References:
    """Uniform and oracle values over ``users`` (chunked; see :func:`exact_sums`)."""
    return exact_sums(truth, users, k=k, chunk=chunk).references()


def policy_value(
    truth: GroundTruth, policy: Policy, users: np.ndarray, refs: References, chunk: int | None = None,
    histories: Histories | None = None,
) -> PolicyValue:
    """The exact ground-truth value of ``policy`` (sampling one item, and its top k) over ``users``
    given their ``histories`` at T."""
    return exact_sums(truth, users, {"policy": policy}, refs.k, chunk=chunk, histories=histories).policy("policy", refs)


def reference_sums(
    truth: GroundTruth, policies: Mapping[str, Policy], users: np.ndarray, k: int = 10, chunk: int = 2048,
    histories: Histories | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The plain implementation the exact sums replaced (dense r* per chunk, numpy reductions), kept as
    the reference the tests hold :func:`exact_sums` to: (uniform, oracle, oracle_topk, value, topk)
    per user."""
    users = np.asarray(users, np.int64)
    uni, ora, ora_k = [], [], []
    value: dict[str, list] = {name: [] for name in policies}
    top: dict[str, list] = {name: [] for name in policies}
    kk = min(k, truth.n_items)
    for _, u in _chunks(users, chunk):
        r = true_reward_rows_ref(
            truth.theta[u], truth.satiation[u], truth.vectors, truth.quality, truth.genre,
            truth.scenario.satiation.strength,
        )
        uni.append(r.mean(axis=1))
        ora.append(r.max(axis=1))
        ora_k.append(-np.partition(-r, kk - 1, axis=1)[:, :kk].mean(axis=1))
        hist = histories(u) if histories is not None else empty_histories(len(u))
        for name, policy in policies.items():
            logits = policy.logits(hist, Context(u))
            value[name].append(softmax_dot_ref(logits, r))
            top[name].append(topk_mean_ref(logits, r, k))
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)  # noqa: E731
    return (cat(uni), cat(ora), cat(ora_k), {n: cat(v) for n, v in value.items()}, {n: cat(v) for n, v in top.items()})
