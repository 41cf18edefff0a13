"""OPE report: IPS, SNIPS, DM, DR and Switch-DR of any policy, next to the exact truth of the same estimand.

For the position-0 impression rows of the logs (``data.py``: x_i = (u_i, t_i, h_i) with h_i the
user's public click history strictly before round t_i, a_i the item shown on top), every estimator
of ``estimators.py`` is run twice per target policy pi:

* ``pscore = "true"``: the sealed single-draw propensities pi_0(a_i | u_i, t_i);
* ``pscore = "estimated"``: propensities estimated from the PUBLIC impressions alone
  (``propensity.py``: a behaviour-cloning model of the logger, or item frequencies), clipped from
  below at ``floor``.

DM, DR and Switch-DR use one or more reward models q^ (``q_model``): item means (``qtable.py``,
fitted on past rounds by default) and a personalised sequence model (``qmodel.py``, cross-fitted by
user folds). The report's ``q_mse`` is the mean squared error of q^ at the logged actions against
r_i, on the rows each q^ was NOT fitted on, so the two models compare fairly. The bootstrap
intervals treat q^ and p^ as fixed (they do not refit them per resample), so they understate the
uncertainty of the estimated-propensity rows.

The reward (``reward``): ``"true"`` (the sealed r*; its estimand has an exact value, ``exact.py``)
or any feedback signal of ``recsim_post.signals.REWARDS`` (click, rating, watch: what a company
logs). For a signal the estimand involves the choice model and the logger's slate continuation, so
no exact value is computed (``truth`` is NaN) and the report compares estimators to each other.

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

from ..errors import ConfigError
from ..logs.public import PublicLogs
from ..models.policy import SequencePolicy
from ..policy import Policy, softmax
from ..seeding import SeedTree
from ..signals import REWARDS
from ..truth.ground_truth import GroundTruth
from .data import LoggedContexts, chunk_rows, logged_contexts, policy_logits
from .estimators import DM, DR, IPS, INTERVAL_METHODS, SNIPS, BanditData, SwitchDR, bandit_data_from_logs, intervals
from .exact import ExactReward, exact_reward
from .propensity import PropensityModelConfig, estimated_propensities
from .qmodel import SequenceQConfig, SequenceQRows, item_features, sequence_q_rows
from .qtable import TableQ, crossfit_q_table, past_q_table

ESTIMATOR_ORDER = ("ips", "snips", "dm", "dr", "switch-dr")
PSCORE_SOURCES = ("true", "estimated")
OPE_REWARDS = ("true", *REWARDS)
"""What an OPE report may estimate: the true reward r* (with its exact value) or a logged signal."""

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


@dataclass
class _RowPart:
    """:func:`_stream_part` over logged rows [lo, hi): per-row arrays, and the sums over rows as one
    term per chunk (re-added in chunk order by :func:`_join_parts`, so a sharded pass is bit-identical)."""

    pi_on_action: dict[str, np.ndarray]
    q_hat_pi: dict[str, dict[str, np.ndarray]]
    off_mass: dict[str, np.ndarray]
    q_fact: dict[str, np.ndarray]
    tot: dict[str, list[float]]
    off_tot: dict[str, list[float]]
    scale: list[float]


def _stream_part(
    ctx: LoggedContexts,
    policies: Mapping[str, Policy],
    q_hats: Mapping[str, TableQ | SequenceQRows],
    exact: ExactReward | None,
    off: np.ndarray | None,
    step: int,
    lo: int,
    hi: int,
) -> _RowPart:
    """The rows [lo, hi) of :func:`_stream_rows`, chunk by chunk (``lo`` on a multiple of ``step``):
    the body of a shard."""
    n = hi - lo
    part = _RowPart({p: np.empty(n) for p in policies}, {p: {m: np.empty(n) for m in q_hats} for p in policies},
                    {p: np.zeros(n) for p in policies}, {m: np.empty(n) for m in q_hats},
                    {p: [] for p in policies}, {p: [] for p in policies}, [])
    for start in range(lo, hi, step):
        sl, out = slice(start, min(start + step, hi)), slice(start - lo, min(start + step, hi) - lo)
        rows = np.arange(sl.stop - sl.start)
        act = ctx.action[sl]
        qs = {m: q.rows(sl) for m, q in q_hats.items()}
        for m, q in qs.items():
            part.q_fact[m][out] = q[rows, act]
        r = exact.rows(sl) if exact is not None else None
        if r is not None:
            part.scale.append(float((r.max(axis=1) - r.mean(axis=1)).sum()))
        for name, policy in policies.items():
            pi = softmax(policy_logits(policy, ctx, sl))
            part.pi_on_action[name][out] = pi[rows, act]
            for m, q in qs.items():
                part.q_hat_pi[name][m][out] = (pi * q).sum(axis=1)
            if off is not None:
                part.off_mass[name][out] = pi[:, off].sum(axis=1)
            if r is not None:
                pr = pi * r
                part.tot[name].append(float(pr.sum()))
                part.off_tot[name].append(float(pr[:, off].sum()) if off is not None else 0.0)
    return part


def _join_parts(parts: Sequence[_RowPart], policies: Sequence[str], q_models: Sequence[str], n: int,
                exact: bool) -> tuple[dict[str, _PolicyTerms], dict[str, np.ndarray], float]:
    """The parts of consecutive row ranges as one pass: arrays concatenated, sums re-added chunk by chunk."""
    cat = np.concatenate
    terms = {p: _PolicyTerms(cat([x.pi_on_action[p] for x in parts]),
                             {m: cat([x.q_hat_pi[p][m] for x in parts]) for m in q_models},
                             cat([x.off_mass[p] for x in parts])) for p in policies}
    q_fact = {m: cat([x.q_fact[m] for x in parts]) for m in q_models}
    if not exact:
        return terms, q_fact, math.nan
    for p, t in terms.items():
        tot = off_tot = 0.0
        for x in parts:
            for a, b in zip(x.tot[p], x.off_tot[p]):
                tot += a
                off_tot += b
        t.truth, t.support_bias = tot / n, -off_tot / n
    scale = 0.0
    for x in parts:
        for v in x.scale:
            scale += v
    return terms, q_fact, scale / n


def _stream_rows(
    ctx: LoggedContexts,
    policies: Mapping[str, Policy],
    q_hats: Mapping[str, TableQ | SequenceQRows],
    exact: ExactReward | None,
    off: np.ndarray | None,
    n_items: int,
    shards: int | None = None,
    backend: str = "local",
) -> tuple[dict[str, _PolicyTerms], dict[str, np.ndarray], float]:
    """One pass over chunks of logged rows for every policy: (terms per policy, q^(x_i, a_i) per q^
    model, the normalising scale). Each chunk's q^ rows and exact r* rows are computed once and
    shared by the policies; memory is O(chunk x items).

    ``shards``: the rows in contiguous shards of whole chunks, one after the other (``backend``
    "local") or as Ray tasks ("ray"; None: one per CPU Ray sees): every chunk holds the same rows as
    in one pass, so the numbers are bit-identical whatever the shards."""
    from ..truth.sharded import map_row_shards

    n, step = len(ctx), chunk_rows(n_items, 3 + len(q_hats))
    if backend == "ray" and exact is not None:  # r* never reads the sealed impressions: leave them home
        import dataclasses

        exact = dataclasses.replace(exact, truth=dataclasses.replace(exact.truth, impressions=None))
    parts = map_row_shards(_stream_part, n, step, (ctx, dict(policies), dict(q_hats), exact, off, step), shards, backend)
    return _join_parts(parts, list(policies), list(q_hats), n, exact is not None)


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
    shards: int | None = None,
    backend: str = "local",
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

    ``backend`` / ``shards``: the pass over the logged rows that scores every policy (and r*, q^) in
    contiguous shards of whole chunks, in this process ("local") or as Ray tasks ("ray"): the report
    is bit-identical whatever the shards (``tests/test_sharded_ope.py``).
    """
    q_models = _q_models(q_model, q_fit)
    if reward not in OPE_REWARDS:
        raise ConfigError(f"reward = {reward!r} is not allowed: must be one of {', '.join(OPE_REWARDS)}")
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
    p_hat = estimated_propensities(ctx, truth.n_items, propensity, floor, mcfg, seed, propensity_model,
                                   shards=shards, backend=backend)
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
    terms, q_fact, scale = _stream_rows(ctx, policies, q_hats, exact, off, truth.n_items, shards, backend)
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


SELECTION_ESTIMATORS = ("ips", "snips", "dr")
"""The estimators a team can choose a knob by (the ``ope_<name>`` columns of :func:`selection_estimates`)."""


def selection_estimates(
    logs: PublicLogs,
    truth: GroundTruth,
    policies: Mapping[str, Policy],
    reward: str = "rating",
    seed: int = 0,
    propensity: str = "bc",
    max_len: int = 50,
    model_cfg: PropensityModelConfig | None = None,
) -> pd.DataFrame:
    """What a team without the truth can score each policy by: IPS, SNIPS and DR of a LOGGED signal
    (``reward``, never r*) with propensities ESTIMATED from the public impressions (``propensity``)
    and the item-mean q^ fitted on past rounds. One row per policy: ``method``, ``ope_ips``,
    ``ope_snips``, ``ope_dr``.

    ``truth`` only aligns the bandit rows with the sealed impressions (slate ids and positions); no
    sealed value enters an estimate, so the columns are honest model-selection criteria (study 6).
    Normal intervals: the estimates are what a selection reads, and a bootstrap would only cost time.
    """
    if reward == "true":
        raise ConfigError("selection_estimates: reward = 'true' reads the sealed r*; use a logged signal "
                          f"({', '.join(REWARDS)})")
    report = ope_report(logs, truth, policies, reward=reward, seed=seed, propensity=propensity, max_len=max_len,
                        model_cfg=model_cfg, q_model="item", interval="normal")
    est = report[(report["pscore"] == "estimated") & report["estimator"].isin(SELECTION_ESTIMATORS)]
    wide = est.pivot_table(index="policy", columns="estimator", values="estimate", aggfunc="first", dropna=False)
    wide = wide.reindex(index=list(policies), columns=list(SELECTION_ESTIMATORS))
    wide.columns = [f"ope_{c}" for c in wide.columns]
    return wide.rename_axis("method").reset_index()


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
    "ESTIMATOR_ORDER", "OPE_REWARDS", "PSCORE_SOURCES", "Q_FITS", "Q_MODELS", "estimator_label", "format_report",
    "format_summary", "ope_report", "ope_report_from_simulation", "summarise",
]
