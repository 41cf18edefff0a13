"""Score policies: exact ground truth next to offline metrics on held-out logs.

The evaluator is the one place where public logs and the sealed truth meet:

* ground truth: every evaluation user's public click history at the end of logging (time T) is
  fed to the policy, and its softmax is scored exactly against r*(u, ., T) (see ground_truth.py);
* offline metrics: leave-last-out -- the policy sees a user's clicks before the last one and is
  ranked on the last (NDCG@k, HR@k, MRR over the full catalogue, history excluded).

Reference rows anchor the table: the uniform policy, a popularity baseline (click counts in the
training split), the logging policy at T and the oracle (ranks by the true reward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from ..logs.public import PublicLogs, histories, split_leave_last_out
from ..seeding import SeedTree
from .ground_truth import GroundTruth, References, policy_value, references
from .offline import ranking_metrics
from .report import ResultRow


class Policy(Protocol):
    """What the evaluator needs of a policy: next-item logits for left-padded histories."""

    max_len: int

    def logits(self, hist: np.ndarray) -> np.ndarray: ...


@dataclass
class Evaluator:
    """Ground truth and held-out data for one log folder, prepared once for many policies."""

    truth: GroundTruth
    clicks: pd.DataFrame  # all public clicks, in history order
    users: np.ndarray  # users scored by ground truth
    refs: References
    test_users: np.ndarray
    test_targets: np.ndarray
    before_test: pd.DataFrame  # clicks with each user's held-out last click removed
    train: pd.DataFrame
    k: int = 10

    @classmethod
    def prepare(
        cls,
        logs: PublicLogs,
        truth: GroundTruth,
        k: int = 10,
        max_users: int | None = 5000,
        seed: SeedTree | None = None,
    ) -> "Evaluator":
        """Split the clicks and compute the reference values (sampling at most ``max_users``)."""
        clicks = logs.clicks()
        split = split_leave_last_out(clicks)
        users = np.arange(truth.n_users)
        if max_users is not None and len(users) > max_users:
            rng = (seed or SeedTree(0)).generator("evaluation-users")
            users = np.sort(rng.choice(users, max_users, replace=False))
        key = ["user_id", "timestamp", "position"]
        keep = ~clicks.set_index(key).index.isin(split.test.set_index(key).index)
        return cls(
            truth=truth,
            clicks=clicks,
            users=users,
            refs=references(truth, users, k),
            test_users=split.test["user_id"].to_numpy(np.int64),
            test_targets=split.test["item_id"].to_numpy(np.int64),
            before_test=clicks[keep].reset_index(drop=True),
            train=split.train,
            k=k,
        )

    def _offline(self, score) -> dict[str, float]:  # noqa: ANN001 - (users, hist) -> logits
        if len(self.test_users) == 0:
            return {f"ndcg@{self.k}": float("nan"), f"hr@{self.k}": float("nan"), "mrr": float("nan")}
        hist = histories(self.before_test, self.test_users, 200)
        logits = score(self.test_users, hist)
        return ranking_metrics(logits, self.test_targets, exclude=hist, k=self.k)

    def _row(self, method: str, kind: str, score, offline: bool) -> ResultRow:  # noqa: ANN001
        """``score(users, hist) -> logits``; hist are public histories at the relevant time."""

        def at_t(users: np.ndarray) -> np.ndarray:
            return score(users, histories(self.clicks, users, 200))

        v = policy_value(self.truth, at_t, self.users, self.refs)
        m = self._offline(score) if offline else {}
        return ResultRow(
            method, kind, float(v.value), float(v.value_norm), float(v.topk_value), float(v.topk_norm),  # type: ignore[arg-type]
            m.get(f"ndcg@{self.k}"), m.get(f"hr@{self.k}"), m.get("mrr"),
        )

    def reference_rows(self) -> list[ResultRow]:
        """uniform, popularity (train-split click counts), the logging policy at T, the oracle."""
        n = self.truth.n_items
        counts = np.bincount(self.train["item_id"].to_numpy(), minlength=n)
        log_pop = np.log1p(counts).astype(np.float32)
        rows = [
            # uniform's top-k is a random k items (every score ties): its value is the mean
            ResultRow("uniform", "reference", self.refs.uniform, 0.0, self.refs.uniform, 0.0),
            self._row("popularity", "reference", lambda u, h: np.tile(log_pop, (len(u), 1)), True),
            self._row("logging policy", "reference", lambda u, h: self.truth.logger_logits(u), True),
        ]
        # The oracle samples argmax r* (a point mass) and shows the k best items; offline, it ranks
        # held-out clicks by their true reward -- which is not what users clicked on.
        m = self._offline(lambda u, h: self.truth.true_reward(u))
        rows.append(
            ResultRow("oracle", "reference", self.refs.oracle, 1.0, self.refs.oracle_topk, 1.0,
                      m[f"ndcg@{self.k}"], m[f"hr@{self.k}"], m["mrr"])
        )
        return rows

    def policy_row(self, method: str, policy: Policy) -> ResultRow:
        """Ground truth and offline metrics of a trained policy."""
        return self._row(method, "trained", lambda u, h: policy.logits(h), True)
