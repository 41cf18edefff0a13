"""OPE report: IPS, SNIPS, DM, DR and Switch-DR of any policy, next to the exact truth of the same estimand.

For the position-0 impression rows of the logs (x_i = (u_i, t_i, h_i) with h_i the user's public
click history strictly before round t_i, a_i the item shown on top), every estimator of ope.py is
run twice per target policy pi:

* ``pscore = "true"``: the sealed single-draw propensities pi_0(a_i | u_i, t_i);
* ``pscore = "estimated"``: propensities estimated from the PUBLIC impressions alone, clipped from
  below at ``floor`` (so no weight exceeds pi / floor; the clip biases IPS/DR downward where the
  model under-estimates, and says so by being a knob). Two estimators of the logger:

  - ``"bc"`` (default): a behaviour-cloning SequencePolicy (SASRec) trained by cross-entropy to
    predict the position-0 item shown, given the user's click history at that time (the targets
    are what the logger SHOWED, not what users clicked). p^(a | x) = softmax at the logged action.
    What it sees: item ids of the last ``max_len`` clicks. What it cannot see: the logger's stale
    per-user relevance estimate (it can only infer it from the clicks), the trend / shocks at round
    t (the logger follows them; the history model has no clock), and the exact eps-mixing. So its
    propensities are misspecified, and IPS/DR with them are biased; that bias is what the report
    measures. Fitted on all logged rows (no cross-fitting).
  - ``"frequency"``: p^(a) = the share of position-0 impressions that showed a (context-free).

The reward model q^ used by DM, DR and Switch-DR is an item mean of the chosen reward over the
position-0 rows, shrunk to the global mean with ``q_shrinkage`` pseudo-rows,
q^(a) = (sum_{i: a_i = a} r_i + k * rbar) / (n_a + k); it ignores the user. How it is fitted (``q_fit``):
``"past"`` (default) -- rows of round t get the item means of rounds < t only, so the DR correction
is a martingale difference and DR stays unbiased with exact propensities although the logger adapts
to earlier rounds (trends feed on exposure); ``"crossfit"`` -- two random halves, each scored with
the other half's means; ``"all"`` -- in-sample (biases DR; for comparison only). The bootstrap intervals treat q^ and p^ as fixed (they do not refit
them per resample), so they understate the uncertainty of the estimated-propensity rows.

Ground truth of the same estimand (``reward="true"``)::

    V_exact(pi) = (1/n) sum_i sum_a pi(a | x_i) r*(u_i, a, t_i)

computed exactly: r*(u, a, t) = theta_u . v_a + q_a - strength * S_u,genre(a)(t) changes over time
only through satiation, and S(t) is rebuilt from the public clicks (S(0) = 0, S(t+1) = decay * S(t)
+ clicks of genre g in round t). The rebuild is checked against the sealed satiation at T and the
sealed r* of every logged row; a mismatch raises. For ``reward = "click" | "rating"`` the estimand
involves the choice model and no exact value is computed (``truth`` is NaN).

Target policies: anything with ``logits(hist) -> (B, n_items)`` (a SequencePolicy,
:class:`UniformPolicy`), or a callable ``f(users, timestamps, hist) -> logits`` (may use the round,
e.g. the logger itself when it ignores trends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch

from ..errors import ConfigError, LogError
from ..logs.public import PAD, PublicLogs
from ..models.policy import SequencePolicy, build_model
from ..models.sasrec import SASRecConfig
from ..seeding import SeedTree
from .ground_truth import GroundTruth
from .ope import DM, DR, IPS, SNIPS, BanditData, SwitchDR, bandit_data_from_logs

ESTIMATOR_ORDER = ("ips", "snips", "dm", "dr", "switch-dr")
PSCORE_SOURCES = ("true", "estimated")
CHUNK_ROWS = 4096


# --------------------------------------------------------------------------------------------
# logged contexts


@dataclass(frozen=True)
class LoggedContexts:
    """The position-0 rows, in log order: who, when, what was shown, and the public history then."""

    user: np.ndarray  # (n,) int64
    timestamp: np.ndarray  # (n,) int64, the round
    action: np.ndarray  # (n,) int64, the item shown at position 0
    slate_id: np.ndarray  # (n,) int64
    hist: np.ndarray  # (n, max_len) int64, clicks strictly before the round, left-padded with PAD

    def __len__(self) -> int:
        return len(self.user)


def click_histories_at(clicks: pd.DataFrame, users: np.ndarray, timestamps: np.ndarray, max_len: int) -> np.ndarray:
    """For each (user, round): the user's last ``max_len`` clicked items with timestamp < round.

    ``clicks`` needs user_id, timestamp, position, item_id. Vectorised: one sort, two searchsorted.
    """
    users = np.asarray(users, np.int64)
    timestamps = np.asarray(timestamps, np.int64)
    out = np.full((len(users), max_len), PAD, dtype=np.int64)
    if len(clicks) == 0 or len(users) == 0:
        return out
    c = clicks.sort_values(["user_id", "timestamp", "position"], kind="stable")
    cu = c["user_id"].to_numpy(np.int64)
    ct = c["timestamp"].to_numpy(np.int64)
    items = c["item_id"].to_numpy(np.int64)
    span = int(max(ct.max(), timestamps.max())) + 2
    keys = cu * span + ct  # non-decreasing
    start = np.searchsorted(keys, users * span, side="left")
    end = np.searchsorted(keys, users * span + timestamps, side="left")  # first click at >= round
    idx = end[:, None] - max_len + np.arange(max_len)[None, :]
    valid = idx >= start[:, None]
    out[valid] = items[idx[valid]]
    return out


def logged_contexts(interactions: pd.DataFrame, max_len: int = 50, position: int = 0) -> LoggedContexts:
    """The ``position`` rows of the public interactions and each row's click history at that time."""
    top = interactions[interactions["position"].to_numpy() == position]
    clicks = interactions[interactions["click"].to_numpy() == 1]
    users = top["user_id"].to_numpy(np.int64)
    ts = top["timestamp"].to_numpy(np.int64)
    return LoggedContexts(
        users, ts, top["item_id"].to_numpy(np.int64), top["slate_id"].to_numpy(np.int64),
        click_histories_at(clicks, users, ts, max_len),
    )


# --------------------------------------------------------------------------------------------
# target policies


class UniformPolicy:
    """pi(a | x) = 1 / n_items."""

    def __init__(self, n_items: int, max_len: int = 1) -> None:
        self.n_items, self.max_len = n_items, max_len

    def logits(self, hist: np.ndarray) -> np.ndarray:
        return np.zeros((len(hist), self.n_items), np.float32)


PolicyLike = Any  # object with logits(hist), or callable(users, timestamps, hist) -> logits


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def policy_probabilities(policy: PolicyLike, ctx: LoggedContexts, chunk: int = CHUNK_ROWS) -> np.ndarray:
    """pi(. | x_i) on every logged context: (n, n_items) float64, batched."""
    parts = []
    for lo in range(0, len(ctx), chunk):
        sl = slice(lo, lo + chunk)
        if hasattr(policy, "logits"):
            lg = policy.logits(ctx.hist[sl])
        else:
            lg = policy(ctx.user[sl], ctx.timestamp[sl], ctx.hist[sl])
        parts.append(_softmax(lg))
    return np.concatenate(parts)


# --------------------------------------------------------------------------------------------
# estimated propensities


@dataclass(frozen=True)
class PropensityModelConfig:
    """The behaviour-cloning model of the logger (small SASRec, a few epochs of Adam)."""

    dim: int = 32
    n_layers: int = 1
    n_heads: int = 1
    max_len: int = 50
    dropout: float = 0.1
    epochs: int = 5
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.0


def fit_logger_model(
    ctx: LoggedContexts, n_items: int, cfg: PropensityModelConfig = PropensityModelConfig(), seed: int = 0
) -> SequencePolicy:
    """A SequencePolicy trained to predict the shown position-0 item from the click history."""
    tree = SeedTree(seed).child("ope-propensity")
    mcfg = SASRecConfig(dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, max_len=cfg.max_len, dropout=cfg.dropout)
    init = torch.Generator().manual_seed(tree.integer("init"))
    model = build_model(mcfg, n_items, init)
    policy = SequencePolicy(model, n_items, cfg.max_len)
    hist = torch.from_numpy(policy.pad(ctx.hist).copy())
    target = torch.from_numpy(ctx.action.astype(np.int64))
    gen = torch.Generator().manual_seed(tree.integer("dropout"))
    rng = tree.generator("batches")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    for epoch in range(cfg.epochs):
        total = 0.0
        for b in np.array_split(rng.permutation(len(target)), max(1, math.ceil(len(target) / cfg.batch_size))):
            bi = torch.from_numpy(b)
            h = model.encode(hist[bi], gen)[:, -1]
            loss = torch.nn.functional.cross_entropy(model.score(h), target[bi])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        policy.history.append({"stage": "ope-propensity", "epoch": epoch, "loss": total / len(target)})
    model.eval()
    return policy


def estimated_propensities(
    ctx: LoggedContexts,
    n_items: int,
    method: str = "bc",
    floor: float = 1e-4,
    model_cfg: PropensityModelConfig = PropensityModelConfig(),
    seed: int = 0,
    model: SequencePolicy | None = None,
) -> np.ndarray:
    """p^(a_i | x_i) from the public logs, clipped to [floor, 1]: (n,).

    ``"bc"``: the softmax of :func:`fit_logger_model` (or ``model``) at the logged action.
    ``"frequency"``: the share of rows that showed a_i (ignores the context).
    """
    if not 0 < floor <= 1:
        raise ValueError(f"floor must lie in (0, 1], got {floor!r}")
    if method == "frequency":
        p = np.bincount(ctx.action, minlength=n_items)[ctx.action] / len(ctx)
    elif method == "bc":
        model = model if model is not None else fit_logger_model(ctx, n_items, model_cfg, seed)
        p = np.empty(len(ctx))
        for lo in range(0, len(ctx), CHUNK_ROWS):
            sl = slice(lo, lo + CHUNK_ROWS)
            probs = _softmax(model.logits(ctx.hist[sl]))
            p[sl] = probs[np.arange(len(probs)), ctx.action[sl]]
    else:
        raise ValueError(f"propensity method must be 'bc' or 'frequency', got {method!r}")
    return np.clip(p, floor, 1.0)


# --------------------------------------------------------------------------------------------
# reward model and exact truth


def item_mean_q(action: np.ndarray, reward: np.ndarray, n_items: int, shrinkage: float = 1.0) -> np.ndarray:
    """q^(a) = (sum_{a_i = a} r_i + k * rbar) / (n_a + k): (n_items,)."""
    rbar = float(reward.mean())
    s = np.bincount(action, weights=reward, minlength=n_items)
    n = np.bincount(action, minlength=n_items)
    return (s + shrinkage * rbar) / (n + shrinkage)


def crossfit_q(
    ctx: LoggedContexts, reward: np.ndarray, n_items: int, shrinkage: float, crossfit: bool, rng: np.random.Generator
) -> np.ndarray:
    """q^ on every row: (n, n_items); with cross-fitting each half gets the other half's item means."""
    if not crossfit:
        return np.broadcast_to(item_mean_q(ctx.action, reward, n_items, shrinkage), (len(ctx), n_items))
    fold = rng.integers(0, 2, size=len(ctx))
    q = np.stack([item_mean_q(ctx.action[fold != k], reward[fold != k], n_items, shrinkage) for k in (0, 1)])
    return q[fold]


def past_q(ctx: LoggedContexts, reward: np.ndarray, n_items: int, shrinkage: float) -> np.ndarray:
    """q^ on every row from the rows of EARLIER rounds only: (n, n_items).

    q^_t(a) = (sum_{i: t_i < t, a_i = a} r_i + k * rbar_t) / (n_{<t}(a) + k), rbar_t the mean reward
    before round t (0 in the first round). Because q^ for round t is fixed before round t's actions
    are drawn, the DR correction is a martingale difference: DR stays unbiased with exact
    propensities even though the logger adapts to earlier rounds (trends feed on exposure), which
    cross-fitting on a random half (that includes later rounds) does not guarantee.
    """
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
    Q = (S_past + shrinkage * rbar) / (N_past + shrinkage)
    return Q[inv]


def satiation_at_rows(
    ctx: LoggedContexts, clicks: pd.DataFrame, genre: np.ndarray, n_users: int, n_genres: int, decay: float, n_rounds: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-genre satiation of each row's user at the start of its round, (n, G), and the state at the end."""
    S = np.zeros((n_users, n_genres))
    out = np.empty((len(ctx), n_genres))
    cu = clicks["user_id"].to_numpy(np.int64)
    ct = clicks["timestamp"].to_numpy(np.int64)
    cg = genre[clicks["item_id"].to_numpy(np.int64)]
    order_rows = np.argsort(ctx.timestamp, kind="stable")
    row_bounds = np.searchsorted(ctx.timestamp[order_rows], np.arange(n_rounds + 1))
    corder = np.argsort(ct, kind="stable")
    click_bounds = np.searchsorted(ct[corder], np.arange(n_rounds + 1))
    for t in range(n_rounds):
        rows = order_rows[row_bounds[t] : row_bounds[t + 1]]
        out[rows] = S[ctx.user[rows]]
        c = corder[click_bounds[t] : click_bounds[t + 1]]
        S *= decay
        np.add.at(S, (cu[c], cg[c]), 1.0)
    return out, S


@dataclass(frozen=True)
class ExactReward:
    """r*(u_i, a, t_i) for the logged rows, rebuilt exactly (see the module docstring)."""

    truth: GroundTruth
    ctx: LoggedContexts
    sat_rows: np.ndarray  # (n, G)

    def rows(self, sl: slice) -> np.ndarray:
        tr, s = self.truth, self.truth.scenario.satiation.strength
        u = self.ctx.user[sl]
        base = tr.theta[u] @ tr.vectors.T + tr.quality[None, :]
        return base - s * self.sat_rows[sl][:, tr.genre]


def exact_reward(truth: GroundTruth, logs: PublicLogs, ctx: LoggedContexts, sealed_r: np.ndarray, tol: float = 1e-6) -> ExactReward:
    """Rebuild r* at every logged (u, t) and check it against the sealed satiation and rewards."""
    sc = truth.scenario
    if sc.dynamics.drift_rate > 0:
        # θ_u moves after every click and only its final value is sealed, so r*(u, a, t) for the
        # actions the logger did not take cannot be rebuilt exactly
        raise ConfigError(
            f"exact OPE truth needs fixed preferences: dynamics.drift_rate = {sc.dynamics.drift_rate:g} "
            "in this log's scenario; simulate with drift_rate = 0"
        )
    n_rounds = sc.simulation.n_rounds
    clicks = logs.interactions[logs.interactions["click"].to_numpy() == 1]
    sat_rows, S_T = satiation_at_rows(
        ctx, clicks, truth.genre, truth.n_users, truth.satiation.shape[1], sc.satiation.decay, n_rounds
    )
    if sc.satiation.strength != 0 and not np.allclose(S_T, truth.satiation, atol=tol):
        raise LogError("satiation rebuilt from the public clicks does not match the sealed satiation at T")
    ex = ExactReward(truth, ctx, sat_rows)
    worst = 0.0
    for lo in range(0, len(ctx), CHUNK_ROWS):
        sl = slice(lo, lo + CHUNK_ROWS)
        r = ex.rows(sl)[np.arange(len(ctx.user[sl])), ctx.action[sl]]
        worst = max(worst, float(np.abs(r - sealed_r[sl]).max()))
    if worst > 1e-4:
        raise LogError(f"exact r* rebuilt for the logged rows differs from the sealed r* by up to {worst:.3g}")
    return ex


# --------------------------------------------------------------------------------------------
# the report


def _estimators(tau: float) -> dict[str, Any]:
    return {"ips": IPS(), "snips": SNIPS(), "dm": DM(), "dr": DR(), "switch-dr": SwitchDR(tau=tau)}


def ope_report(
    logs: PublicLogs,
    truth: GroundTruth,
    policies: Mapping[str, PolicyLike],
    reward: str = "true",
    n_bootstrap: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    propensity: str = "bc",
    floor: float = 1e-4,
    tau: float = 10.0,
    q_fit: str = "past",
    q_shrinkage: float = 1.0,
    max_len: int = 50,
    model_cfg: PropensityModelConfig | None = None,
    propensity_model: SequencePolicy | None = None,
) -> pd.DataFrame:
    """One row per policy x estimator x pscore source: estimate, CI, exact truth, error, covered.

    Columns: policy, estimator, pscore, estimate, ci_low, ci_high, truth, error, covered, plus
    n_rows, max_weight (largest importance weight) and propensity (the estimated-pscore method).
    """
    if truth.impressions is None:
        raise ValueError("the ground truth has no sealed impressions (needed for the true propensities)")
    tree = SeedTree(seed).child("ope-report")
    inter = logs.interactions
    ctx = logged_contexts(inter, max_len=max_len)
    base = bandit_data_from_logs(inter, truth.impressions, reward=reward, n_actions=truth.n_items)
    if not (np.array_equal(base.action, ctx.action) and np.array_equal(base.context, ctx.user)):
        raise ValueError("bandit rows and logged contexts are not aligned")
    sealed_r = bandit_data_from_logs(inter, truth.impressions, reward="true").reward
    exact = exact_reward(truth, logs, ctx, sealed_r) if reward == "true" else None

    mcfg = model_cfg or PropensityModelConfig(max_len=max_len)
    p_hat = estimated_propensities(ctx, truth.n_items, propensity, floor, mcfg, seed, propensity_model)
    if q_fit == "past":
        q_hat = past_q(ctx, base.reward, truth.n_items, q_shrinkage)
    elif q_fit in ("crossfit", "all"):
        q_hat = crossfit_q(ctx, base.reward, truth.n_items, q_shrinkage, q_fit == "crossfit", tree.generator("crossfit"))
    else:
        raise ValueError(f"q_fit must be 'past', 'crossfit' or 'all', got {q_fit!r}")
    sources = {"true": base.pscore, "estimated": p_hat}
    ests = _estimators(tau)

    rows = []
    for pi_name, policy in policies.items():
        pi_all = policy_probabilities(policy, ctx)
        v_true = float("nan")
        if exact is not None:
            tot = 0.0
            for lo in range(0, len(ctx), CHUNK_ROWS):
                sl = slice(lo, lo + CHUNK_ROWS)
                tot += float((pi_all[sl] * exact.rows(sl)).sum())
            v_true = tot / len(ctx)
        for src, ps in sources.items():
            data = BanditData(
                base.context, base.action, base.reward, ps, None, pi_all, q_hat, truth.n_items, base.timestamp
            )
            for name in ESTIMATOR_ORDER:
                est = ests[name]
                v = est.estimate(data)
                lo_, hi_ = est.interval(data, n_bootstrap, alpha, tree.child(pi_name).child(src).generator(name))
                rows.append(dict(
                    policy=pi_name, estimator=name, pscore=src, estimate=v, ci_low=lo_, ci_high=hi_,
                    truth=v_true, error=v - v_true, covered=bool(lo_ <= v_true <= hi_) if exact is not None else np.nan,
                    n_rows=len(data), max_weight=float(data.weight.max()),
                    propensity="sealed" if src == "true" else propensity,
                ))
    return pd.DataFrame(rows)


def ope_report_from_simulation(sim, policies: Mapping[str, PolicyLike], **kw) -> pd.DataFrame:  # noqa: ANN001
    """:func:`ope_report` for an in-memory ``logs.simulate.Simulation``."""
    return ope_report(sim.public, GroundTruth.from_simulation(sim), policies, **kw)


def summarise(report: pd.DataFrame) -> pd.DataFrame:
    """Bias (mean error), RMSE, coverage (share of CIs covering the truth) and mean CI width,
    per estimator x pscore source, over every policy / seed row of ``report``."""
    df = report.dropna(subset=["truth"]).copy()
    df["sq"] = df["error"] ** 2
    df["width"] = df["ci_high"] - df["ci_low"]
    df["covered"] = df["covered"].astype(float)
    g = df.groupby(["estimator", "pscore"], sort=False)
    out = pd.DataFrame({
        "bias": g["error"].mean(),
        "rmse": np.sqrt(g["sq"].mean()),
        "coverage": g["covered"].mean(),
        "ci_width": g["width"].mean(),
        "n": g["error"].size(),
    }).reset_index()
    order = {e: i for i, e in enumerate(ESTIMATOR_ORDER)}
    out["_o"] = out["estimator"].map(order).fillna(len(order)) * 10 + out["pscore"].map({"true": 0, "estimated": 1}).fillna(2)
    return out.sort_values("_o").drop(columns="_o").reset_index(drop=True)


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as a terminal table: one row per estimator, true vs estimated propensities side by side."""
    wide = summary.pivot(index="estimator", columns="pscore", values=["bias", "rmse", "coverage"])
    ests = [e for e in ESTIMATOR_ORDER if e in wide.index] + [e for e in wide.index if e not in ESTIMATOR_ORDER]
    srcs = [s for s in PSCORE_SOURCES if s in summary["pscore"].unique()]
    head = f"{'estimator':<10}" + "".join(f"{m + ' (' + s[:4] + ')':>16}" for m in ("bias", "rmse", "coverage") for s in srcs)
    lines = [head, "-" * len(head)]
    for e in ests:
        cells = "".join(
            f"{wide.loc[e, (m, s)]:>16.4f}" if m != "coverage" else f"{wide.loc[e, (m, s)]:>16.2f}"
            for m in ("bias", "rmse", "coverage") for s in srcs
        )
        lines.append(f"{e:<10}" + cells)
    return "\n".join(lines)


def format_report(report: pd.DataFrame) -> str:
    """The per-policy report as a terminal table."""
    cols = ["policy", "estimator", "pscore", "estimate", "ci_low", "ci_high", "truth", "error", "covered"]
    return report[cols].to_string(index=False, float_format=lambda x: f"{x:.4f}")


__all__ = [
    "LoggedContexts", "PropensityModelConfig", "UniformPolicy", "click_histories_at", "crossfit_q",
    "estimated_propensities", "exact_reward", "past_q", "fit_logger_model", "format_report", "format_summary",
    "item_mean_q", "logged_contexts", "ope_report", "ope_report_from_simulation", "policy_probabilities",
    "summarise",
]
