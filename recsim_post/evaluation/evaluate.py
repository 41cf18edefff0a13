"""Score policies: exact ground truth next to offline metrics on held-out logs.

The evaluator is the one place where public logs and the sealed truth meet:

* ground truth: every evaluation user's public click history at the end of logging (time T) is
  fed to the policy, and its softmax is scored exactly against r*(u, ., T) (see ground_truth.py);
* offline metrics: leave-last-out -- the policy sees a user's clicks before the last one and is
  ranked on the last (NDCG@k, HR@k, MRR over the full catalogue, history excluded);
* closed loop (when :attr:`Evaluator.closed_loop` is set): the policy is deployed for H more rounds
  on a copy of the world at T and earns the summed r* of what users click (see rollout.py).

Reference rows anchor the table: the uniform policy, a popularity baseline (click counts in the
training split), the logging policy at T and the oracle (ranks by the true reward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from ..logs.public import PublicLogs, histories, split_leave_last_out
from ..seeding import SeedTree
from .ground_truth import GroundTruth, References, policy_value, references
from .offline import ranking_metrics
from .report import ResultRow
from .reward_report import reward_model_report
from .rollout import ClosedLoop, logger_policy, oracle_policy, uniform_policy


HISTORY_LEN = 200
"""Clicks of history handed to a policy (each policy truncates to its own max_len)."""


class Policy(Protocol):
    """What the evaluator needs of a policy: next-item logits for left-padded histories."""

    max_len: int

    def logits(self, hist: np.ndarray) -> np.ndarray: ...


def popularity_scores(train: pd.DataFrame, n_items: int):  # noqa: ANN201 - (users, hist) -> logits
    """The popularity baseline: logits log(1 + clicks of the item in ``train``), the same for everyone."""
    log_pop = np.log1p(np.bincount(train["item_id"].to_numpy(), minlength=n_items)).astype(np.float32)
    return lambda u, h: np.tile(log_pop, (len(u), 1))


def reference_policies(n_items: int, train: pd.DataFrame, logger: Any) -> dict[str, Any]:
    """The reference rows as a closed-loop rollout deploys them, each as it is defined: uniform
    (k random items), popularity (:func:`popularity_scores`; slates by the rollout's rule), the
    logging policy at T (samples its slates by Plackett-Luce, as in the logs, reading the moving
    trend) and the oracle (the k best items by the current r*; greedy and myopic, not an upper bound)."""
    return {
        "uniform": uniform_policy(n_items),
        "popularity": popularity_scores(train, n_items),
        "logging policy": logger_policy(logger, slate="sample"),
        "oracle": oracle_policy(),
    }


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
    reward_model: Any = None
    """Optional reward model (posttrain.reward_model.RewardModel): adds its believed value per row."""
    closed_loop: ClosedLoop | None = None
    """Optional closed-loop rollouts from the world at T: adds the ``closed_loop`` value per row."""

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
        hist = histories(self.before_test, self.test_users, HISTORY_LEN)
        logits = score(self.test_users, hist)
        return ranking_metrics(logits, self.test_targets, exclude=hist, k=self.k)

    def _row(self, method: str, kind: str, score, offline: bool, deployed: Any = None) -> ResultRow:  # noqa: ANN001
        """``score(users, hist) -> logits``; hist are public histories at the relevant time.
        ``deployed``: the policy as a rollout runs it (for the closed-loop column)."""

        def at_t(users: np.ndarray) -> np.ndarray:
            return score(users, histories(self.clicks, users, HISTORY_LEN))

        v = policy_value(self.truth, at_t, self.users, self.refs)
        m = self._offline(score) if offline else {}
        return ResultRow(
            method, kind, float(v.value), float(v.value_norm), float(v.topk_value), float(v.topk_norm),  # type: ignore[arg-type]
            m.get(f"ndcg@{self.k}"), m.get(f"hr@{self.k}"), m.get("mrr"),
            self._believed(score) if self.reward_model is not None else None,
            self._closed(deployed),
        )

    def _closed(self, deployed: Any) -> float | None:
        if self.closed_loop is None or deployed is None:
            return None
        return self.closed_loop.run(deployed).mean

    def _believed(self, score, chunk: int = 1024) -> float:  # noqa: ANN001
        """mean_u sum_y pi(y | h_u) R̂(h_u, y): the reward model's opinion of the policy at T."""
        rm = self.reward_model
        max_len = int(getattr(rm, "max_len", HISTORY_LEN))
        total = 0.0
        for lo in range(0, len(self.users), chunk):
            users = self.users[lo : lo + chunk]
            hist = histories(self.clicks, users, HISTORY_LEN)
            logits = score(users, hist).astype(np.float64)
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            with torch.no_grad():
                r_hat = rm.member_scores(torch.from_numpy(hist[:, -max_len:]))[:, :, -1].mean(dim=0)
            total += float((p * r_hat.double().cpu().numpy()).sum())
        return total / len(self.users)

    def reference_rows(self) -> list[ResultRow]:
        """uniform, popularity (train-split click counts), the logging policy at T, the oracle."""
        n = self.truth.n_items
        deployed = reference_policies(n, self.train, self.truth.logger)
        rows = [
            # uniform's top-k is a random k items (every score ties): its value is the mean
            ResultRow("uniform", "reference", self.refs.uniform, 0.0, self.refs.uniform, 0.0,
                      rm_value=None if self.reward_model is None else self._believed(
                          lambda u, h: np.zeros((len(u), n), np.float32)),
                      closed_loop=self._closed(deployed["uniform"])),
            self._row("popularity", "reference", deployed["popularity"], True, deployed["popularity"]),
            self._row("logging policy", "reference", lambda u, h: self.truth.logger_logits(u), True,
                      deployed["logging policy"]),
        ]
        # The oracle samples argmax r* (a point mass) and shows the k best items; offline, it ranks
        # held-out clicks by their true reward -- which is not what users clicked on.
        m = self._offline(lambda u, h: self.truth.true_reward(u))
        believed = None
        if self.reward_model is not None:  # the oracle's point mass, as the reward model sees it
            def point_mass(u: np.ndarray, h: np.ndarray) -> np.ndarray:
                r = self.truth.true_reward(u)
                return np.where(r >= r.max(axis=1, keepdims=True), 0.0, -np.inf)

            believed = self._believed(point_mass)
        rows.append(
            ResultRow("oracle", "reference", self.refs.oracle, 1.0, self.refs.oracle_topk, 1.0,
                      m[f"ndcg@{self.k}"], m[f"hr@{self.k}"], m["mrr"], believed, self._closed(deployed["oracle"]))
        )
        return rows

    def reward_report(self, reward_model: Any, max_len: int) -> pd.DataFrame:
        """The reward model against simple baselines on the held-out clicks (validation + test),
        on observed ratings and on the true reward (see reward_report.py)."""
        key = ["user_id", "timestamp", "position"]
        train_keys = pd.MultiIndex.from_frame(self.train[key])
        heldout = self.clicks[~pd.MultiIndex.from_frame(self.clicks[key]).isin(train_keys)]
        heldout = heldout.reset_index(drop=True)
        return reward_model_report(
            self.clicks, self.train, heldout, self.truth.impression_rewards(heldout), reward_model, max_len,
            reward=getattr(reward_model, "reward", "rating"),
        )

    def policy_row(self, method: str, policy: Policy) -> ResultRow:
        """Ground truth, offline metrics (and the closed-loop value) of a trained policy."""
        return self._row(method, "trained", lambda u, h: policy.logits(h), True, policy)
