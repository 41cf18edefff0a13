"""How good is the learned reward model? The ensemble against simple baselines, on held-out clicks.

Every held-out click (the leave-last-out validation and test rows) is a (history, item) pair with an
observed rating (maybe missing) and, sealed, its true reward r*. Each model predicts the rating of
the pair from what it was fitted on (the training split):

* ``reward-model ensemble``: R̂(x, y), the member mean of a
  :class:`~recsim_post.posttrain.reward_model.RewardEnsemble`, from the user's clicks strictly
  before the held-out one (history order);
* ``user mean``: the user's (shrunk) mean training rating;
* ``item mean``: the item's (shrunk) mean training rating;
* ``user + item mean``: user mean + item mean − global mean, the additive baseline predictor
  μ + b_u + b_i (Koren 2010, "Factor in the neighbors", eq. 1, with the biases estimated separately);
* ``global mean``: the mean training rating (a constant: no correlation is defined for it);
* ``oracle r* (linear)``: the true reward itself, mapped to the rating scale by a least-squares line
  fitted on the held-out rows -- the ceiling: what knowing r* exactly would achieve against the
  noisy observed ratings. It is not a model anyone could fit from logs.

Columns: ``rmse_observed`` / ``mae_observed`` and Pearson / Spearman correlations against the
observed rating (rows with a rating only), and Pearson / Spearman against the true reward (every
row). Ratings live on another scale than r*, so against the truth only correlations are fair. For
the ensemble, ``mean_std`` is the average member spread and ``std_err_spearman`` the rank
correlation between that spread and the absolute error on the observed rating: positive when the
uncertainty is informative. NaN where a quantity is undefined.

This module reads the truth (``true_reward``); it is evaluation code, never imported by training.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import pandas as pd

from ..errors import LogError
from ..logs.public import PAD
from ..posttrain.data import reward_column
from ..posttrain.reward_model import GlobalMeanReward, ItemMeanReward, UserMeanReward
from ..experiments.report import format_table

KEY = ["user_id", "timestamp", "position"]
"""Columns that identify a click and give history order."""

COLUMNS = [
    "model",
    "rmse_observed",
    "mae_observed",
    "pearson_observed",
    "spearman_observed",
    "pearson_true",
    "spearman_true",
    "mean_std",
    "std_err_spearman",
]

ENSEMBLE = "reward-model ensemble"
ORACLE = "oracle r* (linear)"


class PairPredictor(Protocol):
    """What the report needs of a reward model: (history, item) pairs -> (mean, std)."""

    def predict(self, hist: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the pairs where both are finite; NaN with < 2 pairs or a constant side."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        return math.nan
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    # A spread below rounding noise is a constant (a float mean of equal values need not be exact).
    if denom <= 1e-12 * len(a):
        return math.nan
    return float((a * b).sum() / denom)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (Pearson of average ranks, ties shared) over the finite pairs."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    ra = pd.Series(a[ok]).rank(method="average").to_numpy()
    rb = pd.Series(b[ok]).rank(method="average").to_numpy()
    return pearson(ra, rb)


def heldout_histories(clicks_all: pd.DataFrame, heldout: pd.DataFrame, max_len: int) -> np.ndarray:
    """For each held-out row, the user's last ``max_len`` clicked items strictly before it in history
    order (``user_id``, ``timestamp``, ``position``), left-padded with PAD: ``(len(heldout), max_len)``.

    Every held-out row must be one of the clicks in ``clicks_all``.
    """
    missing = set(KEY + ["item_id"]) - set(clicks_all.columns) | set(KEY) - set(heldout.columns)
    if missing:
        raise LogError(f"clicks frames lack columns: {', '.join(sorted(missing))}")
    clicks = clicks_all.sort_values(KEY, kind="stable").reset_index(drop=True)
    where = clicks[KEY].assign(_row=np.arange(len(clicks)))
    found = heldout[KEY].merge(where, on=KEY, how="left", validate="many_to_one")["_row"]
    if found.isna().any():
        raise LogError(f"{int(found.isna().sum())} held-out rows are not among the clicks")
    g = found.to_numpy(np.int64)  # row of each held-out click in ``clicks``
    j = clicks.groupby("user_id").cumcount().to_numpy(np.int64)[g]  # clicks the user made before it
    offsets = np.arange(max_len) - max_len  # -max_len … -1: the max_len rows just before
    valid = offsets[None, :] + j[:, None] >= 0  # …that belong to the same user
    rows = np.where(valid, g[:, None] + offsets[None, :], 0)
    items = clicks["item_id"].to_numpy(np.int64)
    return np.where(valid, items[rows], PAD)


def _linear_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x mapped by the least-squares line α + βx that best predicts y (over pairs where both are finite)."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0:
        return np.full(len(x), np.mean(y[ok]) if ok.any() else math.nan)
    beta, alpha = np.polyfit(x[ok], y[ok], 1)
    return alpha + beta * x


def _row(name: str, pred: np.ndarray, rating: np.ndarray, truth: np.ndarray, std: np.ndarray | None = None) -> dict:
    obs = np.isfinite(rating)
    err = pred[obs] - rating[obs]
    return {
        "model": name,
        "rmse_observed": float(np.sqrt(np.mean(err**2))) if obs.any() else math.nan,
        "mae_observed": float(np.mean(np.abs(err))) if obs.any() else math.nan,
        "pearson_observed": pearson(pred[obs], rating[obs]),
        "spearman_observed": spearman(pred[obs], rating[obs]),
        "pearson_true": pearson(pred, truth),
        "spearman_true": spearman(pred, truth),
        "mean_std": float(np.mean(std)) if std is not None and len(std) else math.nan,
        "std_err_spearman": spearman(std[obs], np.abs(err)) if std is not None else math.nan,
    }


def reward_model_report(
    clicks_all: pd.DataFrame,
    train: pd.DataFrame,
    heldout: pd.DataFrame,
    true_reward: np.ndarray,
    ensemble: PairPredictor | None,
    max_len: int,
    pseudo_count: float = 0.0,
    reward: str = "rating",
) -> pd.DataFrame:
    """One row per model (ensemble, user mean, item mean, user + item mean, global mean, and the
    oracle ceiling), the columns of :data:`COLUMNS`, on the observed ``reward`` signal (the one the
    ensemble was fitted on) and on the true reward.

    Args:
        clicks_all: every public click (any order; sorted here into history order).
        train: the clicks the models were fitted on (the baselines are fitted on it here).
        heldout: the held-out clicks (``user_id``, ``timestamp``, ``position``, ``item_id``,
            ``rating``), each one of ``clicks_all``; its history is the user's clicks before it.
        true_reward: r* of each held-out click, aligned with ``heldout``'s rows.
        ensemble: anything with ``predict(hist, items) -> (mean, std)``; None leaves its row out.
        max_len: clicks of history given to the ensemble.
        pseudo_count: shrinkage k of the user- and item-mean baselines toward the global mean.

    ``df.attrs`` records ``n_heldout`` and ``n_observed`` (held-out rows with a rating).
    """
    true_reward = np.asarray(true_reward, np.float64)
    if true_reward.shape != (len(heldout),):
        raise ValueError(f"true_reward has shape {true_reward.shape}, expected ({len(heldout)},) to match heldout")
    users = heldout["user_id"].to_numpy(np.int64)
    items = heldout["item_id"].to_numpy(np.int64)
    rating = reward_column(heldout, reward).astype(np.float64)
    rows = []
    if ensemble is not None:
        hist = heldout_histories(clicks_all, heldout, max_len)
        mean, std = ensemble.predict(hist, items)
        rows.append(_row(ENSEMBLE, np.asarray(mean, np.float64), rating, true_reward, np.asarray(std, np.float64)))
    user = UserMeanReward.fit(train, pseudo_count, reward).predict(users, items)
    item = ItemMeanReward.fit(train, pseudo_count, reward).predict(users, items)
    mu = GlobalMeanReward.fit(train, reward).predict(users, items)
    rows.append(_row("user mean", user, rating, true_reward))
    rows.append(_row("item mean", item, rating, true_reward))
    rows.append(_row("user + item mean", user + item - mu, rating, true_reward))
    rows.append(_row("global mean", mu, rating, true_reward))
    rows.append(_row(ORACLE, _linear_fit(true_reward, rating), rating, true_reward))
    df = pd.DataFrame(rows, columns=COLUMNS)
    df = df.astype({c: np.float64 for c in COLUMNS[1:]})
    df.attrs.update(n_heldout=len(heldout), n_observed=int(np.isfinite(rating).sum()), pseudo_count=pseudo_count)
    return df


def format_reward_report(df: pd.DataFrame, digits: int = 3) -> str:
    """The table as fixed-width text, with a header line and a verdict: does the ensemble beat the
    best baseline on RMSE (observed) and on rank correlation with the true reward?"""
    lines = []
    if "n_heldout" in df.attrs:
        lines.append(
            f"Reward models on {df.attrs['n_heldout']} held-out clicks "
            f"({df.attrs.get('n_observed', '?')} with a rating; "
            f"baselines shrunk with k = {df.attrs.get('pseudo_count', 0):g})"
        )
    lines.append(format_table(df, digits))
    ens = df[df["model"] == ENSEMBLE]
    base = df[~df["model"].isin([ENSEMBLE, ORACLE])]
    if len(ens) and len(base):
        e = ens.iloc[0]
        verdict = []
        rmse = base["rmse_observed"].dropna()
        if len(rmse) and np.isfinite(e["rmse_observed"]):
            best = base.loc[rmse.idxmin()]
            verdict.append(
                f"RMSE {e['rmse_observed']:.{digits}f} vs {best['rmse_observed']:.{digits}f} ({best['model']}): "
                f"{e['rmse_observed'] - best['rmse_observed']:+.{digits}f}"
            )
        rho = base["spearman_true"].dropna()
        if len(rho) and np.isfinite(e["spearman_true"]):
            best = base.loc[rho.idxmax()]
            verdict.append(
                f"Spearman with r* {e['spearman_true']:.{digits}f} vs {best['spearman_true']:.{digits}f} ({best['model']}): "
                f"{e['spearman_true'] - best['spearman_true']:+.{digits}f}"
            )
        if verdict:
            lines.append("ensemble vs best baseline -- " + "; ".join(verdict))
    return "\n".join(lines)


__all__ = [
    "COLUMNS",
    "ENSEMBLE",
    "ORACLE",
    "format_reward_report",
    "heldout_histories",
    "pearson",
    "reward_model_report",
    "spearman",
]
