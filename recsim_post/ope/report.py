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

The reward model q^ used by DM, DR and Switch-DR (``q_model``; give several to report each):

* ``"item"`` (default): an item mean of the chosen reward over the position-0 rows, shrunk to the
  global mean with ``q_shrinkage`` pseudo-rows, q^(a) = (sum_{i: a_i = a} r_i + k * rbar) / (n_a + k);
  it ignores the user. How it is fitted (``q_fit``): ``"past"`` (its default) -- rows of round t get
  the item means of rounds < t only, so the DR correction is a martingale difference and DR stays
  unbiased with exact propensities although the logger adapts to earlier rounds (trends feed on
  exposure); ``"crossfit"`` -- two random halves, each scored with the other half's means; ``"all"``
  -- in-sample (biases DR; for comparison only). Because the logger shows an item mostly to users
  who like it, its mean where shown over-states its value to a random user: DM inherits that
  selection bias (and Switch-DR, where it switches to DM).
* ``"sequence"``: a personalised q^(h, a) -- a small SASRec over the click history with a bilinear
  item head and a content term from the public item features -- cross-fitted by user folds
  (``q_fit = "crossfit"``, its default; ``"all"`` in-sample for comparison); why user folds and not
  past rounds, see ope_qmodel.py. Fitted on public histories, actions and item features and the
  rows' reward r_i only.

The report's ``q_mse`` is the mean squared error of q^ at the logged actions against r_i, on the
rows each q^ was NOT fitted on (out of fold / past rounds), so the two models compare fairly.
The bootstrap intervals treat q^ and p^ as fixed (they do not refit them per resample), so they
understate the uncertainty of the estimated-propensity rows.

Deficient support (``logging.support < 1``): pi_0(a | x) = 0 for the items S^c the logger never
shows (their logits are -inf). Logged rows only ever hold actions with pi_0 > 0, so no pscore is
zero and no weight infinite on any path (true propensities; estimated ones are floored; bootstrap
resamples); SNIPS is undefined only when a target puts no mass on any logged action (NaN, not an
error). But the mass a target puts on S^c is invisible to importance weighting. With exact
propensities::

    E[IPS] = V - E_x sum_{a in S^c} pi(a | x) r(x, a)
    E[DR]  = V - E_x sum_{a in S^c} pi(a | x) (r(x, a) - q^(x, a))    (Switch-DR: the same, plus its own switching bias)

so IPS misses the off-support reward altogether, DR keeps whatever q^ gets right there, and SNIPS
rescales the on-support part to the full mass. The report shows ``off_support`` (the target's mean
mass on S^c, from the sealed support) and ``support_bias`` (the first line's exact bias term,
-(1/n) sum_i sum_{a in S^c} pi(a | x_i) r*(u_i, a, t_i)): an IPS interval that misses the truth by
about that much is deficient support, not noise.

Propensity modes: with ``logging.propensity_mode = "none"`` the sealed impressions hold no
propensity column; the report then runs with estimated propensities only and says so (``say`` and
``report.attrs["notes"]``). The column is checked by presence.

Errors are also given on the normalised scale of the same estimand: ``scale`` = (1/n) sum_i
(max_a r*(u_i, a, t_i) - mean_a r*(u_i, a, t_i)) (the oracle minus the uniform policy on the logged
contexts) and ``error_norm`` = error / scale.

Ground truth of the same estimand (``reward="true"``)::

    V_exact(pi) = (1/n) sum_i sum_a pi(a | x_i) r*(u_i, a, t_i)

computed exactly: r*(u, a, t) = theta_u . v_a + q_a - strength * S_u,genre(a)(t) changes over time
only through satiation, and S(t) is rebuilt from the public clicks (S(0) = 0, S(t+1) = decay * S(t)
+ clicks of genre g in round t). The rebuild is checked against the sealed satiation at T and the
sealed r* of every logged row; a mismatch raises. For ``reward = "click" | "rating"`` the estimand
involves the choice model and no exact value is computed (``truth`` is NaN).

Target policies: any ``recsim_post.policy.Policy``; on a logged row it is scored with the user's
history then and a Context holding her and the round (so a target may read the round, e.g. the
logger itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import ConfigError, LogError
from ..logs.public import PAD, PublicLogs
from ..models.policy import SequencePolicy, build_model
from ..models.sasrec import SASRecConfig
from ..policy import Context, Policy, softmax
from ..seeding import SeedTree
from ..truth.ground_truth import BUDGET_BYTES, GroundTruth
from .estimators import DM, DR, IPS, INTERVAL_METHODS, SNIPS, BanditData, SwitchDR, bandit_data_from_logs, intervals
from .qmodel import SequenceQConfig, SequenceQRows, item_features, sequence_q_rows

ESTIMATOR_ORDER = ("ips", "snips", "dm", "dr", "switch-dr")
PSCORE_SOURCES = ("true", "estimated")
CHUNK_ROWS = 4096
"""Logged rows per chunk of (rows x items) work, fewer where a chunk would exceed the byte budget."""


def chunk_rows(n_items: int, arrays: int) -> int:
    """Rows per chunk: :data:`CHUNK_ROWS`, or fewer so that ``arrays`` float64 (rows x items) arrays
    stay within the ground truth's byte budget (so memory is flat in the catalogue size)."""
    return max(1, min(CHUNK_ROWS, BUDGET_BYTES // (8 * arrays * max(int(n_items), 1))))


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


def _logits(policy: Policy, ctx: LoggedContexts, sl: slice) -> np.ndarray:
    """The policy on logged contexts ``sl``: each user's history then, and her round."""
    return policy.logits(ctx.hist[sl], Context(ctx.user[sl], ctx.timestamp[sl]))


def policy_probabilities(policy: Policy, ctx: LoggedContexts, chunk: int = CHUNK_ROWS) -> np.ndarray:
    """pi(. | x_i) on every logged context: (n, n_items) float64, batched."""
    return np.concatenate([softmax(_logits(policy, ctx, slice(lo, lo + chunk))) for lo in range(0, len(ctx), chunk)])


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
        step = chunk_rows(n_items, 3)
        for lo in range(0, len(ctx), step):
            sl = slice(lo, lo + step)
            probs = softmax(model.logits(ctx.hist[sl]))
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
        """r*(u_i, a, t_i) = theta_u(t_i) . v_a + q_a - strength * S_u,genre(a)(t_i) for rows ``sl``, all a.

        theta_u(t_i) is the preference at the start of round t_i (sealed history; constant without drift).
        """
        tr, s = self.truth, self.truth.scenario.satiation.strength
        theta = tr.user_theta(self.ctx.user[sl], self.ctx.timestamp[sl])
        base = theta @ tr.vectors.T + tr.quality[None, :]
        return base - s * self.sat_rows[sl][:, tr.genre]

    def at(self, sl: slice, items: np.ndarray) -> np.ndarray:
        """r*(u_i, items[i], t_i) for the rows ``sl``: (rows,), one item per row (no catalogue-wide rows)."""
        tr, s = self.truth, self.truth.scenario.satiation.strength
        theta = tr.user_theta(self.ctx.user[sl], self.ctx.timestamp[sl])
        rows = np.arange(len(theta))
        return (np.einsum("bd,bd->b", theta, tr.vectors[items]) + tr.quality[items]) - s * self.sat_rows[sl][rows, tr.genre[items]]


def exact_reward(truth: GroundTruth, logs: PublicLogs, ctx: LoggedContexts, sealed_r: np.ndarray, tol: float = 1e-6) -> ExactReward:
    """Rebuild r* at every logged (u, t) and check it against the sealed satiation and rewards.

    Satiation S(t) is rebuilt from the public clicks; with preference drift (dynamics.drift_rate > 0)
    theta_u(t) comes from the sealed theta history (GroundTruth.user_theta), whose last state must be
    the sealed theta at T. A log without that history (older versions) raises LogError.
    """
    sc = truth.scenario
    n_rounds = sc.simulation.n_rounds
    if sc.dynamics.drift_rate > 0 and not np.array_equal(truth.theta_at(n_rounds), truth.theta):
        raise LogError("the sealed theta history does not end at the sealed preferences at T")
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
        worst = max(worst, float(np.abs(ex.at(sl, ctx.action[sl]) - sealed_r[sl]).max()))
    if worst > 1e-4:
        raise LogError(f"exact r* rebuilt for the logged rows differs from the sealed r* by up to {worst:.3g}")
    return ex


# --------------------------------------------------------------------------------------------
# the report


def _estimators(tau: float) -> dict[str, Any]:
    return {"ips": IPS(), "snips": SNIPS(), "dm": DM(), "dr": DR(), "switch-dr": SwitchDR(tau=tau)}


Q_MODELS = ("item", "sequence")
"""The reward models q^ of DM, DR and Switch-DR (see the module docstring)."""

Q_FITS = {"item": ("past", "crossfit", "all"), "sequence": ("crossfit", "all")}
"""How each q^ may be fitted; the first is its default."""

Q_FREE = ("ips", "snips")
"""Estimators that use no q^: reported once per pscore source, with q_model = "none"."""

PSCORE_COLUMN = "propensity_item"
"""The sealed single-draw propensity; absent when the logs were simulated with propensity_mode = "none"."""


def _q_models(q_model: str | Sequence[str], q_fit: str | None) -> tuple[str, ...]:
    models = (q_model,) if isinstance(q_model, str) else tuple(q_model)
    if not models or len(set(models)) != len(models) or any(m not in Q_MODELS for m in models):
        raise ConfigError(f"q_model = {q_model!r} is not allowed: must be one or more of {', '.join(map(repr, Q_MODELS))}, each once")
    for m in models:
        if q_fit is not None and q_fit not in Q_FITS[m]:
            raise ConfigError(f"q_fit = {q_fit!r} is not allowed for q_model = {m!r}: must be one of {', '.join(map(repr, Q_FITS[m]))}")
    return models


def _fit_q(
    model: str, fit: str, ctx: LoggedContexts, reward: np.ndarray, logs: PublicLogs, n_items: int,
    shrinkage: float, q_cfg: SequenceQConfig, tree: SeedTree,
) -> TableQ | SequenceQRows:
    """q^(x_i, a) of every logged row for one reward model and fitting scheme, served chunk by chunk."""
    if model == "sequence":
        phi = item_features(logs.items, n_items) if q_cfg.features else None
        return sequence_q_rows(ctx.hist, ctx.user, ctx.action, reward, n_items, phi, q_cfg, tree.child("q-sequence"), fit)
    if fit == "past":
        return past_q_table(ctx, reward, n_items, shrinkage)
    return crossfit_q_table(ctx, reward, n_items, shrinkage, fit == "crossfit", tree.generator("crossfit"))


@dataclass
class _PolicyTerms:
    """What the estimators and the truth need of one target policy, per logged row (never (n, A))."""

    pi_on_action: np.ndarray  # (n,) pi(a_i | x_i)
    q_hat_pi: dict[str, np.ndarray]  # q^ model -> (n,) sum_a pi(a | x_i) q^(x_i, a)
    off_mass: np.ndarray  # (n,) the mass pi puts outside the logger's support
    truth: float = math.nan  # (1/n) sum_i sum_a pi(a | x_i) r*(u_i, a, t_i)
    support_bias: float = math.nan  # -(1/n) sum_i sum_{a off support} pi(a | x_i) r*(u_i, a, t_i)


def _stream_rows(
    ctx: LoggedContexts,
    policies: Mapping[str, Policy],
    q_hats: Mapping[str, TableQ | SequenceQRows],
    exact: ExactReward | None,
    off: np.ndarray | None,
    n_items: int,
) -> tuple[dict[str, _PolicyTerms], dict[str, np.ndarray], float]:
    """One pass over chunks of logged rows for every policy: (terms per policy, q^(x_i, a_i) per q^
    model, the normalising scale). Each chunk's q^ rows and exact r* rows are computed once and
    shared by the policies; memory is O(chunk x items)."""
    n = len(ctx)
    terms = {name: _PolicyTerms(np.empty(n), {m: np.empty(n) for m in q_hats}, np.zeros(n)) for name in policies}
    tot = {name: 0.0 for name in policies}
    off_tot = {name: 0.0 for name in policies}
    q_fact = {m: np.empty(n) for m in q_hats}
    scale_tot = 0.0
    step = chunk_rows(n_items, 3 + len(q_hats))
    for lo in range(0, n, step):
        sl = slice(lo, lo + step)
        rows = np.arange(len(ctx.user[sl]))
        act = ctx.action[sl]
        qs = {m: q.rows(sl) for m, q in q_hats.items()}
        for m, q in qs.items():
            q_fact[m][sl] = q[rows, act]
        r = exact.rows(sl) if exact is not None else None
        if r is not None:
            scale_tot += float((r.max(axis=1) - r.mean(axis=1)).sum())
        for name, policy in policies.items():
            pi = softmax(_logits(policy, ctx, sl))
            t = terms[name]
            t.pi_on_action[sl] = pi[rows, act]
            for m, q in qs.items():
                t.q_hat_pi[m][sl] = (pi * q).sum(axis=1)
            if off is not None:
                t.off_mass[sl] = pi[:, off].sum(axis=1)
            if r is not None:
                pr = pi * r
                tot[name] += float(pr.sum())
                off_tot[name] += float(pr[:, off].sum()) if off is not None else 0.0
    for name, t in terms.items():
        if exact is not None:
            t.truth, t.support_bias = tot[name] / n, -off_tot[name] / n
    return terms, q_fact, (scale_tot / n if exact is not None else math.nan)


def ope_report(
    logs: PublicLogs,
    truth: GroundTruth,
    policies: Mapping[str, Policy],
    reward: str = "true",
    n_bootstrap: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    propensity: str = "bc",
    floor: float = 1e-4,
    tau: float = 10.0,
    q_fit: str | None = None,
    q_shrinkage: float = 1.0,
    max_len: int = 50,
    model_cfg: PropensityModelConfig | None = None,
    propensity_model: SequencePolicy | None = None,
    q_model: str | Sequence[str] = "item",
    q_cfg: SequenceQConfig | None = None,
    say: Callable[[str], None] | None = None,
    interval: str = "bootstrap",
) -> pd.DataFrame:
    """One row per policy x estimator x pscore source x q^ model: estimate, CI, exact truth, error, covered.

    Columns: policy, estimator, pscore, q_model ("none" for IPS and SNIPS), estimate, ci_low,
    ci_high, truth, error, covered, plus n_rows, max_weight (largest importance weight),
    propensity (the estimated-pscore method), q_mse (out-of-sample squared error of q^ at the
    logged actions), off_support and support_bias (deficient support, see the module docstring),
    scale and error_norm (the error on the 0 = uniform, 1 = oracle scale).

    ``q_fit`` None fits each q^ its default way (item: "past", sequence: "crossfit"). Notes (e.g.
    that the logs hold no propensities) go to ``say`` and to ``report.attrs["notes"]``.

    ``interval``: ``"bootstrap"`` (a Poisson bootstrap with ``n_bootstrap`` resamples, one set per
    policy shared by all its rows, from the stream ``ope-report/<policy>/bootstrap``) or
    ``"normal"`` (delta-method normal intervals, no resampling); see ope.py. Everything per policy
    is streamed over chunks of logged rows: pi(a_i | x_i) and sum_a pi(a | x_i) q^(x_i, a) are kept
    per row, never the (n x n_items) matrices.
    """
    q_models = _q_models(q_model, q_fit)
    if interval not in INTERVAL_METHODS:
        raise ConfigError(f"interval = {interval!r} is not allowed: must be one of {', '.join(map(repr, INTERVAL_METHODS))}")
    if truth.impressions is None:
        raise ValueError("the ground truth has no sealed impressions (needed for the true propensities)")
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        if say is not None:
            say(msg)

    tree = SeedTree(seed).child("ope-report")
    inter = logs.interactions
    ctx = logged_contexts(inter, max_len=max_len)
    mcfg = model_cfg or PropensityModelConfig(max_len=max_len)
    p_hat = estimated_propensities(ctx, truth.n_items, propensity, floor, mcfg, seed, propensity_model)
    has_pscore = PSCORE_COLUMN in truth.impressions.columns
    if not has_pscore:
        note(f"the sealed impressions hold no propensities (propensity_mode = 'none'): "
             f"estimated propensities ({propensity}) only")
    base = bandit_data_from_logs(
        inter, truth.impressions, reward=reward, n_actions=truth.n_items, pscore=None if has_pscore else p_hat
    )
    if not (np.array_equal(base.action, ctx.action) and np.array_equal(base.context, ctx.user)):
        raise ValueError("bandit rows and logged contexts are not aligned")
    sealed_r = bandit_data_from_logs(inter, truth.impressions, reward="true", pscore=base.pscore).reward
    exact = exact_reward(truth, logs, ctx, sealed_r) if reward == "true" else None

    q_cfg = q_cfg or SequenceQConfig()
    q_hats = {
        m: _fit_q(m, q_fit or Q_FITS[m][0], ctx, base.reward, logs, truth.n_items, q_shrinkage, q_cfg, tree)
        for m in q_models
    }
    sources = {"true": base.pscore, "estimated": p_hat} if has_pscore else {"estimated": p_hat}
    ests = _estimators(tau)

    # deficient support: the sealed support of the logger (None = every item)
    support_idx = getattr(truth.logger, "support_idx", None)
    off = None
    if support_idx is not None:
        off = np.ones(truth.n_items, bool)
        off[support_idx] = False
    terms, q_fact, scale = _stream_rows(ctx, policies, q_hats, exact, off, truth.n_items)
    q_mse = {m: float(np.mean((q_fact[m] - base.reward) ** 2)) for m in q_models}

    rows = []
    for pi_name in policies:
        t = terms[pi_name]
        off_mass = float(t.off_mass.mean()) if off is not None else 0.0
        cells = []  # (src, q_col, name, estimator, data), in the report's row order
        for src, ps in sources.items():
            for qm in q_models:
                data = BanditData(
                    base.context, base.action, base.reward, ps, t.pi_on_action, None, None, truth.n_items,
                    base.timestamp, q_hat_pi=t.q_hat_pi[qm], q_hat_on_action=q_fact[qm],
                )
                for name in ESTIMATOR_ORDER:
                    if name in Q_FREE and qm != q_models[0]:
                        continue  # no q^: one row per source is enough
                    cells.append((src, "none" if name in Q_FREE else qm, name, ests[name], data))
        # SNIPS is undefined when the target puts no mass on any logged action (e.g. a target that
        # lives entirely off the logger's support): NaN, not a crash
        defined = [not (isinstance(c[3], SNIPS) and not (c[4].weight > 0).any()) for c in cells]
        live = [c for c, ok in zip(cells, defined) if ok]
        cis = iter(intervals([c[3] for c in live], [c[4] for c in live], n_bootstrap, alpha,
                             tree.child(pi_name).generator("bootstrap"), interval))
        for (src, q_col, name, est, data), ok in zip(cells, defined):
            v, lo_, hi_ = (est.estimate(data), *next(cis)) if ok else (math.nan, math.nan, math.nan)
            covered = bool(lo_ <= t.truth <= hi_) if exact is not None and not math.isnan(lo_) else np.nan
            rows.append(dict(
                policy=pi_name, estimator=name, pscore=src, q_model=q_col, estimate=v, ci_low=lo_,
                ci_high=hi_, truth=t.truth, error=v - t.truth, covered=covered,
                n_rows=len(data), max_weight=float(data.weight.max()),
                propensity="sealed" if src == "true" else propensity,
                q_mse=math.nan if name in Q_FREE else q_mse[q_col],
                off_support=off_mass, support_bias=t.support_bias, scale=scale,
                error_norm=(v - t.truth) / scale,
            ))
    report = pd.DataFrame(rows)
    report.attrs["notes"] = notes
    return report


def ope_report_from_simulation(sim, policies: Mapping[str, Policy], **kw) -> pd.DataFrame:  # noqa: ANN001
    """:func:`ope_report` for an in-memory ``logs.simulate.Simulation``."""
    return ope_report(sim.public, GroundTruth.from_simulation(sim), policies, **kw)


def summarise(report: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Bias (mean error), RMSE, coverage (share of CIs covering the truth) and mean CI width,
    per estimator x pscore source (x q_model when the report has one, x ``by``, e.g. ("policy",)),
    over every other row of ``report`` (policies, seeds).

    With ``error_norm`` in the report, bias_norm and rmse_norm give the same on the normalised
    scale (0 = uniform, 1 = oracle of each row's estimand). Rows whose estimate is undefined (NaN)
    are left out of the means; ``n`` counts the rows used.
    """
    df = report.dropna(subset=["truth", "estimate"]).copy()
    df["sq"] = df["error"] ** 2
    df["width"] = df["ci_high"] - df["ci_low"]
    df["covered"] = df["covered"].astype(float)
    keys = list(by) + ["estimator", "pscore"] + (["q_model"] if "q_model" in df.columns else [])
    g = df.groupby(keys, sort=False)
    cols = {
        "bias": g["error"].mean(),
        "rmse": np.sqrt(g["sq"].mean()),
        "coverage": g["covered"].mean(),
        "ci_width": g["width"].mean(),
    }
    if "error_norm" in df.columns:
        df["sq_norm"] = df["error_norm"] ** 2
        cols.update(bias_norm=g["error_norm"].mean(), rmse_norm=np.sqrt(g["sq_norm"].mean()))
    cols["n"] = g["error"].size()
    out = pd.DataFrame(cols).reset_index()
    order = {e: i for i, e in enumerate(ESTIMATOR_ORDER)}
    qorder = {q: i for i, q in enumerate(("none",) + Q_MODELS)}
    rank = out["estimator"].map(order).fillna(len(order)) * 100 + out["pscore"].map({"true": 0, "estimated": 1}).fillna(2)
    if "q_model" in out.columns:
        rank = rank + 10 * out["q_model"].map(qorder).fillna(len(qorder))
    out["_o"] = rank
    return out.sort_values(list(by) + ["_o"], kind="stable").drop(columns="_o").reset_index(drop=True)


def estimator_label(row: pd.Series) -> str:
    """"dr [sequence]" for a row with a q^ model, "ips" for one without."""
    q = row.get("q_model", "none")
    return row["estimator"] if q in ("none", None) or (isinstance(q, float) and math.isnan(q)) else f"{row['estimator']} [{q}]"


def format_summary(summary: pd.DataFrame, normalised: bool = False) -> str:
    """The summary as a terminal table: one row per estimator (and q^ model), true vs estimated
    propensities side by side; ``normalised`` shows bias_norm / rmse_norm instead of raw units."""
    summary = summary.assign(label=summary.apply(estimator_label, axis=1))
    metrics = ("bias_norm", "rmse_norm", "coverage") if normalised else ("bias", "rmse", "coverage")
    wide = summary.pivot(index="label", columns="pscore", values=list(metrics))
    labels = list(dict.fromkeys(summary["label"]))
    srcs = [s for s in PSCORE_SOURCES if s in summary["pscore"].unique()]
    width = max(10, max(len(x) for x in labels) + 1)
    head = f"{'estimator':<{width}}" + "".join(f"{m.replace('_norm', '') + ' (' + s[:4] + ')':>16}" for m in metrics for s in srcs)
    lines = [head, "-" * len(head)]
    for lab in labels:
        cells = "".join(
            f"{wide.loc[lab, (m, s)]:>16.4f}" if m != "coverage" else f"{wide.loc[lab, (m, s)]:>16.2f}"
            for m in metrics for s in srcs
        )
        lines.append(f"{lab:<{width}}" + cells)
    return "\n".join(lines)


def format_report(report: pd.DataFrame) -> str:
    """The per-policy report as a terminal table."""
    cols = ["policy", "estimator", "pscore", "q_model", "estimate", "ci_low", "ci_high", "truth", "error", "covered"]
    text = report[[c for c in cols if c in report.columns]].to_string(index=False, float_format=lambda x: f"{x:.4f}")
    if "off_support" in report.columns and (report["off_support"] > 0).any():
        per = report.groupby("policy", sort=False)[["off_support", "support_bias"]].first()
        text += "\n\ndeficient support (the logger never shows some items): " + "; ".join(
            f"{p} puts {r.off_support:.1%} of its mass there (exact IPS bias from it {r.support_bias:+.4f})"
            for p, r in per.iterrows()
        )
    return text


__all__ = [
    "LoggedContexts", "PropensityModelConfig", "TableQ", "chunk_rows", "click_histories_at",
    "crossfit_q", "crossfit_q_table", "estimated_propensities", "exact_reward", "past_q", "past_q_table", "fit_logger_model", "format_report", "format_summary",
    "item_mean_q", "logged_contexts", "ope_report", "ope_report_from_simulation", "policy_probabilities",
    "summarise", "Q_MODELS", "estimator_label",
]
