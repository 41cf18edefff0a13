"""The item-mean reward model q^(a) of DM, DR and Switch-DR, fitted three ways.

q^(a) = (sum_{i: a_i = a} r_i + k * rbar) / (n_a + k): the item's mean reward over the position-0
rows, shrunk to the global mean rbar with k pseudo-rows. It ignores the user. Fits:

* ``past`` (default): rows of round t get the means of rounds < t only, so the DR correction is a
  martingale difference and DR stays unbiased with exact propensities although the logger adapts to
  earlier rounds (trends feed on exposure);
* ``crossfit``: two random halves, each scored with the other half's means;
* ``all``: in-sample (biases DR; for comparison only).

Because the logger shows an item mostly to users who like it, its mean where shown over-states its
value to a random user: DM inherits that selection bias. The personalised alternative is
``qmodel.py``'s sequence q^. Rows are served chunk by chunk (:class:`TableQ`), never as (n, A).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import LoggedContexts


def item_mean_q(action: np.ndarray, reward: np.ndarray, n_items: int, shrinkage: float = 1.0) -> np.ndarray:
    """q^(a) = (sum_{a_i = a} r_i + k * rbar) / (n_a + k): (n_items,)."""
    rbar = float(reward.mean())
    s = np.bincount(action, weights=reward, minlength=n_items)
    n = np.bincount(action, minlength=n_items)
    return (s + shrinkage * rbar) / (n + shrinkage)


@dataclass(frozen=True)
class TableQ:
    """q^(x_i, .) = table[key[i]]: item means that depend on the row only through a small key (its
    round for ``past``, its fold for ``crossfit``, nothing for ``all``). Rows come chunk by chunk
    (:meth:`rows`): the (n, n_items) matrix is never built."""

    table: np.ndarray  # (K, n_items)
    key: np.ndarray  # (n,) int64 in [0, K)

    def __len__(self) -> int:
        return len(self.key)

    def rows(self, sl: slice) -> np.ndarray:
        """q^ of the rows ``sl`` for every item: (rows, n_items) float64."""
        return self.table[self.key[sl]]


def crossfit_q_table(
    ctx: LoggedContexts, reward: np.ndarray, n_items: int, shrinkage: float, crossfit: bool, rng: np.random.Generator
) -> TableQ:
    """Item means, with cross-fitting each half scored by the other half's means (see :func:`crossfit_q`)."""
    if not crossfit:
        return TableQ(item_mean_q(ctx.action, reward, n_items, shrinkage)[None, :], np.zeros(len(ctx), np.int64))
    fold = rng.integers(0, 2, size=len(ctx))
    q = np.stack([item_mean_q(ctx.action[fold != k], reward[fold != k], n_items, shrinkage) for k in (0, 1)])
    return TableQ(q, fold)


def crossfit_q(
    ctx: LoggedContexts, reward: np.ndarray, n_items: int, shrinkage: float, crossfit: bool, rng: np.random.Generator
) -> np.ndarray:
    """q^ on every row: (n, n_items); with cross-fitting each half gets the other half's item means."""
    return crossfit_q_table(ctx, reward, n_items, shrinkage, crossfit, rng).rows(slice(None))


def past_q_table(ctx: LoggedContexts, reward: np.ndarray, n_items: int, shrinkage: float) -> TableQ:
    """:func:`past_q` as one row of item means per round (a :class:`TableQ` keyed by round)."""
    ts = ctx.timestamp
    rounds, inv = np.unique(ts, return_inverse=True)
    R = len(rounds)
    S = np.zeros((R, n_items))
    N = np.zeros((R, n_items))
    np.add.at(S, (inv, ctx.action), reward)
    np.add.at(N, (inv, ctx.action), 1.0)
    S_past = np.vstack([np.zeros((1, n_items)), np.cumsum(S, axis=0)[:-1]])
    N_past = np.vstack([np.zeros((1, n_items)), np.cumsum(N, axis=0)[:-1]])
    tot, cnt = S_past.sum(axis=1, keepdims=True), N_past.sum(axis=1, keepdims=True)
    rbar = np.divide(tot, cnt, out=np.zeros_like(tot), where=cnt > 0)
    return TableQ((S_past + shrinkage * rbar) / (N_past + shrinkage), inv.astype(np.int64))


def past_q(ctx: LoggedContexts, reward: np.ndarray, n_items: int, shrinkage: float) -> np.ndarray:
    """q^ on every row from the rows of EARLIER rounds only: (n, n_items).

    q^_t(a) = (sum_{i: t_i < t, a_i = a} r_i + k * rbar_t) / (n_{<t}(a) + k), rbar_t the mean reward
    before round t (0 in the first round). Because q^ for round t is fixed before round t's actions
    are drawn, the DR correction is a martingale difference: DR stays unbiased with exact
    propensities even though the logger adapts to earlier rounds (trends feed on exposure), which
    cross-fitting on a random half (that includes later rounds) does not guarantee.
    """
    return past_q_table(ctx, reward, n_items, shrinkage).rows(slice(None))


__all__ = ["TableQ", "crossfit_q", "crossfit_q_table", "item_mean_q", "past_q", "past_q_table"]
