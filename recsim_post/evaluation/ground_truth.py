"""Exact ground-truth value of a policy: no Monte-Carlo noise, sums over the whole catalogue.

For evaluation users u with public histories h_u at the end of logging (time T)::

    V(pi)      = mean_u sum_i pi(i | h_u) r*(u, i, T)          (the policy samples one item)
    V_k(pi)    = mean_u (1/k) sum_{i in top-k of pi(. | h_u)} r*(u, i, T)   (it shows its top k)
    normalised = (V(pi) - V(uniform)) / (V(oracle) - V(uniform))   0 = random, 1 = best possible

The oracle puts all its mass on argmax_i r* (for V) or shows the k best items (for V_k). The sums
run in chunks of users so memory stays bounded for large catalogues.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..behavior.logging_policy import TrendLogger
from ..config import from_dict
from ..errors import LogError
from ..world.config import ScenarioConfig
from ..world.world import true_reward_matrix

ScoreFn = Callable[[np.ndarray], np.ndarray]
"""Maps user ids (B,) to policy logits (B, n_items); a softmax of them is the policy."""


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

    @property
    def n_users(self) -> int:
        return len(self.theta)

    @property
    def n_items(self) -> int:
        return len(self.quality)

    @classmethod
    def from_simulation(cls, sim) -> "GroundTruth":  # noqa: ANN001 - logs.simulate.Simulation
        w = sim.world
        return cls(
            w.cfg, w.users.theta, w.state.satiation.copy(), w.catalog.vectors, w.catalog.quality,
            w.catalog.genre, w.trend(), sim.logger, sim.sealed_impressions,
        )

    @classmethod
    def load(cls, folder: str | Path) -> "GroundTruth":
        """Read ``sealed/`` and the manifest of a log folder."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            scenario = from_dict(ScenarioConfig, manifest["scenario"])
            items = pq.read_table(folder / "sealed" / "items.parquet").to_pandas()
            users = pq.read_table(folder / "sealed" / "users.parquet").to_pandas()
            impressions = pq.read_table(folder / "sealed" / "impressions.parquet").to_pandas()
        except FileNotFoundError as err:
            raise LogError(f"{folder} has no sealed ground truth: {Path(err.filename).name} is missing") from None
        except (pa.ArrowException, OSError, KeyError, json.JSONDecodeError) as err:
            raise LogError(f"{folder}: sealed ground truth is corrupt: {str(err).splitlines()[0]}") from None

        def block(df, prefix: str) -> np.ndarray:  # noqa: ANN001
            cols = [c for c in df.columns if c.startswith(prefix) and c[len(prefix):].isdigit()]
            cols.sort(key=lambda c: int(c[len(prefix):]))
            return df[cols].to_numpy(np.float64)

        vectors = block(items, "v")
        support_idx = None
        if "logger_supported" in items.columns:
            support_idx = np.flatnonzero(items["logger_supported"].to_numpy(bool))
        logger = TrendLogger(
            scenario.logging, block(users, "theta_hat"), items["quality_hat"].to_numpy(),
            vectors.astype(np.float32), support_idx,
        )
        # the logger's state at T: the active parameterisation and the suggestion boost of round T
        boost = items["logger_boost"].to_numpy(np.float64) if "logger_boost" in items.columns else None
        logger.set_round(scenario.simulation.n_rounds, boost)
        return cls(
            scenario, block(users, "theta"), block(users, "satiation"), vectors,
            items["quality"].to_numpy(), items["genre"].to_numpy(np.int64), items["trend"].to_numpy(),
            logger, impressions,
        )

    def impression_rewards(self, rows: pd.DataFrame) -> np.ndarray:
        """r* of logged impressions (rows with ``slate_id`` and ``position``), in their order."""
        if self.impressions is None:
            raise LogError("this ground truth has no sealed impressions table")
        key = self.impressions.set_index(["slate_id", "position"])["true_reward"]
        return key.reindex(pd.MultiIndex.from_frame(rows[["slate_id", "position"]])).to_numpy(np.float64)

    def true_reward(self, users: np.ndarray) -> np.ndarray:
        """r*(u, i, T) for users (B,) over all items: (B, I)."""
        return true_reward_matrix(
            self.theta[users], self.satiation[users], self.vectors, self.quality, self.genre,
            self.scenario.satiation.strength,
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


def _chunks(users: np.ndarray, size: int):
    for lo in range(0, len(users), size):
        yield users[lo : lo + size]


def softmax_value(logits: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """Per row: sum_i softmax(logits)_i * rewards_i (computed stably in float64)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return (p * rewards).sum(axis=1)


def topk_value(logits: np.ndarray, rewards: np.ndarray, k: int) -> np.ndarray:
    """Per row: the mean reward of the k highest-scoring items."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return np.take_along_axis(rewards, top, axis=1).mean(axis=1)


def references(truth: GroundTruth, users: np.ndarray, k: int = 10, chunk: int = 2048) -> References:
    """Uniform and oracle values over ``users``."""
    uni = ora = ora_k = 0.0
    kk = min(k, truth.n_items)
    for u in _chunks(users, chunk):
        r = truth.true_reward(u)
        uni += r.mean(axis=1).sum()
        ora += r.max(axis=1).sum()
        ora_k += -np.partition(-r, kk - 1, axis=1)[:, :kk].mean(axis=1).sum()
    n = len(users)
    return References(uni / n, ora / n, ora_k / n, k)


def policy_value(
    truth: GroundTruth, score: ScoreFn, users: np.ndarray, refs: References, chunk: int = 2048
) -> PolicyValue:
    """The exact ground-truth value of the policy softmax(score(users)) over ``users``."""
    v = vk = 0.0
    for u in _chunks(users, chunk):
        logits = score(u)
        if logits.shape != (len(u), truth.n_items):
            raise ValueError(f"score returned shape {logits.shape}, expected {(len(u), truth.n_items)}")
        r = truth.true_reward(u)
        v += softmax_value(logits, r).sum()
        vk += topk_value(logits, r, refs.k).sum()
    n = len(users)
    return refs.normalise(v / n, vk / n)
