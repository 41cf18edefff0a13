"""The results table and the plot: ground-truth value beside the offline metrics, per method.

One row per policy. Reference rows (uniform, logging policy, oracle) anchor the scale: the
normalised value is ``(V(pi) - V(uniform)) / (V(oracle) - V(uniform))``, 0 = uniform, 1 = oracle.
Offline metrics are undefined for them and shown as "—". The optional ``closed_loop`` column is the
value of the policy deployed for H more rounds (rollout.py); it is not normalised, because the
(greedy, myopic) oracle is not an upper bound there.

Files are written atomically (a temporary file in the same folder, then ``os.replace``) so that
an interrupted run never leaves a half-written table or picture behind a valid name.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np
import pandas as pd

from ..outputs import atomic_write

__all__ = [
    "SHARPNESS_COLUMNS",
    "SMALL_K",
    "ResultRow",
    "aggregate_seeds",
    "column_names",
    "format_aggregate",
    "format_mean_std",
    "format_table",
    "plot_results",
    "split_for_print",
    "results_frame",
    "write_csv",
]

MISSING = "—"
"""How a missing value (NaN / None) is shown in tables."""

_KINDS = ("reference", "trained")

SMALL_K = 5
"""The second, smaller ranking cut-off of every table (NDCG@5 and HR@5 beside NDCG@k)."""

SHARPNESS_COLUMNS = ("entropy", "kl_ref", "top1_true_value", "top1_norm", "tau_matched", "matched_norm",
                     "tau_nll", "nll_tuned_norm")
"""The "sharpness is not skill" columns (truth/sharpness.py), present when any row has them."""
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+|inf|nan)( ± .*)?$")


@dataclass(frozen=True)
class ResultRow:
    """One evaluated policy.

    Attributes:
        method: name shown in the table ("uniform", "logging", "oracle", "bc", "dpo", ...).
        kind: "reference" for the anchors (uniform / logging policy / oracle), "trained" otherwise.
        value: ground-truth expected true reward when sampling from the policy.
        value_norm: ``value`` normalised, 0 = uniform, 1 = oracle.
        topk_value: ground-truth mean true reward of the policy's top-k.
        topk_norm: ``topk_value`` normalised the same way.
        ndcg, hr, mrr: offline metrics on held-out logs; None where undefined (reference rows).
    """

    method: str
    kind: Literal["reference", "trained"]
    value: float
    value_norm: float
    topk_value: float
    topk_norm: float
    ndcg: float | None = None
    hr: float | None = None
    mrr: float | None = None
    rm_value: float | None = None
    """What the reward model believes the policy earns: mean_u sum_y pi(y|h_u) R̂(h_u, y), on the
    observed-rating scale. Shown beside the ground truth so a policy that fools its reward model
    (believed value up, true value flat or down) is visible."""
    closed_loop: float | None = None
    """Closed-loop value: mean over a cohort of each user's summed r* of her clicks while the
    policy serves slates for H rounds after T, averaged over rollout seeds (rollout.ClosedLoop)."""
    ndcg_small: float | None = None
    """NDCG at the small cut-off ``small_k`` (5), beside the main k."""
    hr_small: float | None = None
    small_k: int = 5
    # sharpness is not skill (truth/sharpness.py): None where not computed
    entropy: float | None = None
    """Mean entropy of π(.|h_u) in nats."""
    kl_ref: float | None = None
    """Mean KL(π ‖ π_ref) to the policy it was post-trained from."""
    top1_value: float | None = None
    """Greedy value: mean r* of the policy's top item."""
    top1_norm: float | None = None
    tau_matched: float | None = None
    """The temperature at which the policy's mean entropy equals π_ref's."""
    matched_norm: float | None = None
    """Normalised ground truth at ``tau_matched``: the policy compared at π_ref's spread."""
    tau_nll: float | None = None
    """The temperature that maximises the held-out clicks' likelihood (no truth needed)."""
    nll_tuned_norm: float | None = None
    """Normalised ground truth at ``tau_nll``."""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"ResultRow.kind must be one of {_KINDS}, got {self.kind!r}")


def column_names(k: int = 10) -> list[str]:
    """The columns of :func:`results_frame`, in order, for cut-off ``k``."""
    return [
        "method",
        "kind",
        "true_value",
        "true_value_norm",
        f"top{k}_true_value",
        f"top{k}_norm",
        f"ndcg@{k}",
        f"hr@{k}",
        "mrr",
    ]


def results_frame(rows: Iterable[ResultRow], k: int = 10) -> pd.DataFrame:
    """A tidy frame, one row per policy, with the columns of :func:`column_names` (None -> NaN),
    plus ``closed_loop`` when any row carries a closed-loop value, ``rm_value`` when any row
    carries a reward model's belief, ``ndcg@5`` / ``hr@5`` when computed, and the
    :data:`SHARPNESS_COLUMNS` when any row has them (in that order)."""
    rows = list(rows)
    cols = column_names(k)
    with_closed = any(r.closed_loop is not None for r in rows)
    with_rm = any(r.rm_value is not None for r in rows)
    small = [r for r in rows if r.ndcg_small is not None]
    small_k = small[0].small_k if small else SMALL_K
    with_small = bool(small) and small_k != k
    with_sharp = any(r.entropy is not None or r.top1_value is not None for r in rows)
    cols = (cols + (["closed_loop"] if with_closed else []) + (["rm_value"] if with_rm else [])
            + ([f"ndcg@{small_k}", f"hr@{small_k}"] if with_small else []) + (list(SHARPNESS_COLUMNS) if with_sharp else []))
    records = [
        (r.method, r.kind, r.value, r.value_norm, r.topk_value, r.topk_norm, r.ndcg, r.hr, r.mrr)
        + ((r.closed_loop,) if with_closed else ())
        + ((r.rm_value,) if with_rm else ())
        + ((r.ndcg_small, r.hr_small) if with_small else ())
        + ((r.entropy, r.kl_ref, r.top1_value, r.top1_norm, r.tau_matched, r.matched_norm, r.tau_nll,
            r.nll_tuned_norm) if with_sharp else ())
        for r in rows
    ]
    df = pd.DataFrame.from_records(records, columns=cols)
    # float64 even when a column is all None, so NaN (not object None) marks "missing" everywhere.
    return df.astype({c: np.float64 for c in cols[2:]})


def split_for_print(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The printed views of a results table (per seed or :func:`format_aggregate`'d): the main table
    (values, top-k, NDCG@5 beside NDCG@k, HR, MRR, closed loop, reward-model belief) and the
    "sharpness is not skill" table (method and :data:`SHARPNESS_COLUMNS`; None without them).
    Every column stays in the CSV files."""
    cols = [str(c) for c in df.columns]
    sharp = [c for c in SHARPNESS_COLUMNS if c in cols and c not in ("top1_true_value",)]
    small = [c for c in cols if c.startswith(f"ndcg@{SMALL_K}")]
    hidden = set(SHARPNESS_COLUMNS) | {c for c in cols if c.startswith((f"ndcg@{SMALL_K}", f"hr@{SMALL_K}"))}
    main = [c for c in cols if c not in hidden]
    if small and any(c.startswith("ndcg@") for c in main):  # NDCG@5 right before NDCG@k
        at = next(i for i, c in enumerate(main) if c.startswith("ndcg@"))
        main[at:at] = small
    return df[main], (df[["method", *sharp]] if sharp else None)


SHARPNESS_LEGEND = (
    "entropy: mean nats of π(.|h); kl_ref: KL(π ‖ π_ref) to the policy it was tuned from;"
    "\ntop1_norm: greedy value (its top item); matched_norm: ground truth at tau_matched, the temperature"
    "\nwhere its entropy equals π_ref's; nll_tuned_norm: at tau_nll, the temperature that maximises the"
    "\nheld-out clicks' likelihood. A method that only sharpens π gains true_value_norm, not these."
)


def format_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A fixed-width text table: text left-aligned, numbers right-aligned to ``digits`` decimals,
    missing values as "—". Integer columns (e.g. ``n_seeds``) are printed as integers."""

    def cell(value: object, is_int: bool) -> str:
        if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
            return MISSING
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return str(int(value))
        if isinstance(value, (float, np.floating)):
            return str(int(value)) if is_int else f"{value:.{digits}f}"
        return str(value)

    columns = [str(c) for c in df.columns]
    body: list[list[str]] = []
    right: list[bool] = []
    for c in df.columns:
        series = df[c]
        numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        is_int = pd.api.types.is_integer_dtype(series)
        cells = [cell(v, is_int) for v in series.tolist()]
        # Pre-formatted numbers ("0.512 ± 0.031" from format_aggregate) align like numbers.
        looks_numeric = bool(cells) and all(c == MISSING or _NUMBER.match(c) for c in cells)
        body.append(cells)
        right.append(numeric or looks_numeric)
    widths = [max([len(h)] + [len(v) for v in vals]) for h, vals in zip(columns, body)]

    def line(cells: Sequence[str]) -> str:
        parts = [s.rjust(w) if r else s.ljust(w) for s, w, r in zip(cells, widths, right)]
        return "  ".join(parts).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out += [line([vals[i] for vals in body]) for i in range(len(df))]
    return "\n".join(out)


def aggregate_seeds(frames: pd.DataFrame | Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Mean and standard deviation over seeds, per method, of every numeric column.

    Args:
        frames: either a list of per-seed frames (seed = position in the list) or one long frame
            with a ``seed`` column. Each holds one row per method (as :func:`results_frame`).

    Returns:
        One row per method, in order of first appearance: ``method``, ``kind`` (when present),
        ``n_seeds``, then ``<col>_mean`` and ``<col>_std`` for each numeric column. The std is
        the sample standard deviation (ddof = 1), NaN with a single seed; NaN values (metrics
        undefined for a row) are skipped, so a column that is missing everywhere stays NaN.
    """
    if isinstance(frames, pd.DataFrame):
        if "seed" not in frames.columns:
            raise ValueError("aggregate_seeds: a single frame needs a 'seed' column")
        long = frames
    else:
        frames = list(frames)
        if not frames:
            raise ValueError("aggregate_seeds: got no frames")
        long = pd.concat(
            [f.assign(seed=i) if "seed" not in f.columns else f for i, f in enumerate(frames)],
            ignore_index=True,
        )
    if "method" not in long.columns:
        raise ValueError("aggregate_seeds: frames need a 'method' column")
    keys = ["method", "kind"] if "kind" in long.columns else ["method"]
    numeric = [
        c for c in long.columns
        if c not in keys and c != "seed" and pd.api.types.is_numeric_dtype(long[c])
    ]
    grouped = long.groupby(keys, sort=False, dropna=False)
    mean = grouped[numeric].mean()
    std = grouped[numeric].std(ddof=1)
    out = grouped["seed"].nunique().rename("n_seeds").to_frame()
    for c in numeric:
        out[f"{c}_mean"] = mean[c]
        out[f"{c}_std"] = std[c]
    return out.reset_index()


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    """``"0.512 ± 0.031"``; ``"0.512"`` when the std is undefined (one seed); "—" when the mean is."""
    if mean is None or math.isnan(mean):
        return MISSING
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_aggregate(agg: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Turn :func:`aggregate_seeds` output into a frame of "mean ± std" strings under the original
    column names, ready for :func:`format_table`."""
    out = agg[[c for c in agg.columns if not (c.endswith("_mean") or c.endswith("_std"))]].copy()
    for c in agg.columns:
        if c.endswith("_mean"):
            base = c[: -len("_mean")]
            stds = agg[f"{base}_std"] if f"{base}_std" in agg.columns else [math.nan] * len(agg)
            out[base] = [format_mean_std(m, s, digits) for m, s in zip(agg[c], stds)]
    return out


def plot_results(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """One PNG telling "offline metric vs ground truth": per method, the normalised ground-truth
    value (left panel) beside NDCG@k (middle panel), methods sorted by ground truth so that a
    disagreement shows as NDCG bars out of order; a third panel shows the closed-loop value when
    the frame has a ``closed_loop`` column. Reference rows are grey and hatched.

    Accepts :func:`results_frame` output, or :func:`aggregate_seeds` output (then std error bars).
    Uses ``matplotlib.figure.Figure`` directly, so no global pyplot state or backend is touched.
    Returns the path written (atomically).
    """
    from matplotlib.figure import Figure  # lazy: importing the package must not load matplotlib

    def column(name: str) -> tuple[np.ndarray, np.ndarray | None]:
        if name in df.columns:
            return df[name].to_numpy(np.float64), None
        if f"{name}_mean" in df.columns:
            std = df.get(f"{name}_std")
            return df[f"{name}_mean"].to_numpy(np.float64), (
                None if std is None else std.to_numpy(np.float64)
            )
        raise ValueError(f"plot_results: the frame has no column '{name}' (nor '{name}_mean')")

    ndcg_names = sorted(
        {
            str(c).removesuffix("_mean")
            for c in df.columns
            if str(c).startswith("ndcg@") and not str(c).endswith("_std")
        }
    )
    if not ndcg_names:
        raise ValueError("plot_results: the frame has no 'ndcg@k' column")
    ndcg_name = ndcg_names[0]
    truth, truth_err = column("true_value_norm")
    ndcg, ndcg_err = column(ndcg_name)
    with_closed = "closed_loop" in df.columns or "closed_loop_mean" in df.columns
    closed, closed_err = column("closed_loop") if with_closed else (None, None)
    methods = df["method"].astype(str).to_numpy()
    reference = (
        (df["kind"] == "reference").to_numpy() if "kind" in df.columns else np.isnan(ndcg)
    )

    # barh puts y = 0 at the bottom, so an ascending sort leaves the best ground truth on top;
    # NaN truth (should not happen) sinks to the bottom.
    order = np.argsort(np.where(np.isnan(truth), -np.inf, truth), kind="stable")
    y = np.arange(len(order))

    def take(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[order]

    n_panels = 3 if with_closed else 2
    fig = Figure(figsize=(5 * n_panels, 1.2 + 0.45 * max(len(order), 3)), layout="constrained")
    axes = fig.subplots(1, n_panels, sharey=True)
    ax_truth, ax_ndcg = axes[0], axes[1]
    trained_colour, reference_colour = "tab:blue", "0.65"
    panels = [
        (ax_truth, take(truth), take(truth_err), trained_colour),
        (ax_ndcg, take(ndcg), take(ndcg_err), "tab:orange"),
    ]
    if with_closed:
        panels.append((axes[2], take(closed), take(closed_err), "tab:green"))
    for ax, values, err, colour in panels:
        ref = reference[order]
        shown = np.nan_to_num(values, nan=0.0)
        xerr = None if err is None else np.nan_to_num(err, nan=0.0)
        ax.barh(y, shown, xerr=xerr, color=np.where(ref, reference_colour, colour),
                edgecolor="black", linewidth=0.5, capsize=3)
        # Hatching per bar needs a second pass: barh's hatch is one value for all bars.
        for yi, v, r in zip(y, shown, ref):
            if r:
                ax.barh(yi, v, color="none", hatch="//", edgecolor="0.35", linewidth=0)
        for yi, v in zip(y, values):
            label = MISSING if np.isnan(v) else f"{v:.3f}"
            neg = bool(v < 0)  # label outside the bar, on whichever side it grows
            ax.annotate(label, (0 if np.isnan(v) else v, yi), xytext=(-3 if neg else 3, 0),
                        textcoords="offset points", va="center", ha="right" if neg else "left",
                        fontsize=8)
        ax.axvline(0.0, color="black", linewidth=0.8)
        finite = shown + (0.0 if xerr is None else xerr)
        lo, hi = min(0.0, float(np.min(shown, initial=0.0))), max(float(np.max(finite, initial=0.0)), 1e-9)
        # Room for the value labels on whichever side the bars grow.
        ax.set_xlim(lo - (0.15 if lo < 0 else 0.02) * (hi - lo), hi + 0.15 * (hi - lo))
        ax.grid(axis="x", alpha=0.3)
    ax_truth.axvline(1.0, color="0.4", linestyle="--", linewidth=0.8, label="oracle = 1")
    ax_truth.legend(loc="lower right", fontsize=8)
    ax_truth.set_yticks(y, methods[order])
    ax_truth.set_xlabel("normalised ground-truth value (0 = uniform, 1 = oracle)")
    ax_truth.set_ylabel("method (grey, hatched: reference)")
    ax_truth.set_title("ground truth (what users really value)")
    ax_ndcg.set_xlabel(f"{ndcg_name} on held-out logs (full catalogue, history excluded)")
    ax_ndcg.set_title(f"offline metric ({ndcg_name}; — = undefined)")
    if with_closed:
        axes[2].set_xlabel("summed true reward of clicks per user over the rollout")
        axes[2].set_title("closed loop (deployed after the logs)")

    rho = _spearman(truth[~reference], ndcg[~reference])
    subtitle = "" if rho is None else f"\nSpearman rank correlation over trained methods: ρ = {rho:.2f}"
    fig.suptitle(f"Offline metric vs ground truth{subtitle}")

    def save(handle: IO[bytes]) -> None:
        fig.savefig(handle, format="png", dpi=120)

    return atomic_write(path, save)


def write_csv(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``df`` as CSV (no index, NaN as an empty field) atomically; returns the path."""

    def save(handle: IO[bytes]) -> None:
        handle.write(df.to_csv(index=False).encode("utf-8"))

    return atomic_write(path, save)


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 3:
        return None
    ra = pd.Series(a[ok]).rank().to_numpy()
    rb = pd.Series(b[ok]).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])
