"""The reference policies that read the truth: the logging policy and the oracle (both implement
``recsim_post.policy.Policy``), and the four reference rows of every table.

Each reads the world of its context when one is given (a closed-loop rollout hands it its moving
copy of the world every round) and the world at the end of logging otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..policy import Context, Policy, PopularityPolicy, Slate, UniformPolicy


class LoggerPolicy:
    """The logging policy pi_0 as it stands at the end of logging (its active parameterisation and
    suggestion boost of round T): log pi_0(i | u) with the trend of the context's world, or
    ``trend`` (the trend at T) without one; -inf outside a deficient support. Deployed, it samples
    its slates by Plackett-Luce, as in the logs (``slate = "sample"``)."""

    max_len = 1

    def __init__(self, logger: Any, trend: np.ndarray, slate: Slate | None = "sample") -> None:
        self.logger, self.trend, self.slate = logger, np.asarray(trend), slate
        self.n_items = int(logger.n_items)

    def logits(self, hist: np.ndarray, context: Context | None = None) -> np.ndarray:
        if context is None:
            raise ValueError("the logging policy needs to know who asks: pass a Context with the users")
        trend = context.world.trend() if context.world is not None else self.trend
        with np.errstate(divide="ignore"):
            return np.log(self.logger.probabilities(context.users, trend))


class OraclePolicy:
    """Ranks by the true reward r*(u, ., t): of the context's world (a rollout's current round,
    satiation included), else of the world at the end of logging (``truth``). Deployed, it always
    shows its top k (softmax(r*) would be an arbitrary temperature, not an oracle): greedy and
    myopic, a strong reference but not an upper bound closed-loop."""

    max_len = 1
    slate: Slate = "topk"

    def __init__(self, truth: Any = None, n_items: int | None = None) -> None:
        if truth is None and n_items is None:
            raise ValueError("OraclePolicy needs the ground truth at T or the catalogue size")
        self.truth = truth
        self.n_items = int(truth.n_items if truth is not None else n_items)

    def logits(self, hist: np.ndarray, context: Context | None = None) -> np.ndarray:
        if context is None:
            raise ValueError("the oracle needs to know who asks: pass a Context with the users")
        if context.world is not None:
            return context.world.true_reward(context.users)
        if self.truth is None:
            raise ValueError("this oracle has no world at T: give it the ground truth, or a Context with a world")
        return self.truth.true_reward(context.users)


def reference_policies(n_items: int, train: pd.DataFrame, logger: Any, trend: np.ndarray,
                       truth: Any = None) -> dict[str, Policy]:
    """The four reference rows, each as it is defined: uniform (k random items deployed),
    popularity (click counts of ``train``), the logging policy at T (Plackett-Luce slates, reading
    the moving trend when deployed) and the oracle (the k best items by the current r*)."""
    return {
        "uniform": UniformPolicy(n_items),
        "popularity": PopularityPolicy(train, n_items),
        "logging policy": LoggerPolicy(logger, trend, slate="sample"),
        "oracle": OraclePolicy(truth, n_items),
    }


__all__ = ["LoggerPolicy", "OraclePolicy", "reference_policies"]
