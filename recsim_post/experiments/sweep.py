"""Dial sweeps: the story over a grid of values of one scenario knob, several seeds and recipes.

This is the experiment the framework exists for: turn a dial (rating noise, label flips, how
trend-driven the logger is, ...) and watch what it does to each post-training method's *true*
value and to the offline metric that would have been used to pick it::

    recsim-post sweep --dial feedback.noise_std=0,0.5,1,2 --agents bc exp-rsft dpo --seeds 0 1 2

Every (value, seed) cell is one :func:`recsim_post.experiments.story.run_story` on the scenario with the dial
set: the world, the logs and the training seed depend only on the seed, so within a seed the
methods are compared on the same logs, and across values a seed keeps its world except for what
the dial changes (every random stream is keyed by name, not by order, so e.g. a noise dial scales
the same Gaussian draws rather than drawing new ones). The headline number is the *paired* difference to a baseline recipe (BC by default)::

    delta_m(value) = mean_s [ V(m, value, s) - V(baseline, value, s) ]

with its sample std over seeds and the number of seeds on which m beats the baseline, because the
across-seed spread of V itself is mostly the worlds differing, not the methods.

Cells run one after another, or as Ray tasks (``backend="ray"``, ``pip install ray``) spread over
the cores of one machine or a cluster; the results are the same either way (each cell is
deterministic given its seed).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from ..config import from_dict, override, parse_value, split_assignment, to_dict
from ..errors import ConfigError
from ..world.config import ScenarioConfig

if TYPE_CHECKING:  # the recipes import torch: only a sweep's cells need it, not its checks
    from ..posttrain.recipe import AgentConfig

BACKENDS = ("local", "ray")
VALUE_COLUMN = "true_value_norm"
MATCHED_COLUMN = "matched_norm"  # the same policy at π_ref's entropy (truth/sharpness.py)


@dataclass(frozen=True)
class Dial:
    """One scenario knob (a dotted key, e.g. ``feedback.noise_std``) and the values to sweep."""

    key: str
    values: tuple[Any, ...]

    @classmethod
    def parse(cls, text: str) -> "Dial":
        """``"feedback.noise_std=0,0.5,1"`` -> Dial("feedback.noise_std", (0, 0.5, 1))."""
        key, raw = split_assignment(text)
        values = tuple(parse_value(v.strip()) for v in raw.split(",") if v.strip())
        if not values:
            raise ConfigError(f"dial '{text}' has no values; give them as {key}=v1,v2,...")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"dial '{text}' repeats a value")
        return cls(key, values)

    def scenarios(self, base: ScenarioConfig) -> list[ScenarioConfig]:
        """``base`` with the dial set to each value, validated up front (a bad value fails before
        any work starts). The scenario name records the setting."""
        out = []
        for v in self.values:
            cfg = override(base, [(self.key, v)])
            out.append(dataclasses.replace(cfg, name=f"{base.name}[{self.key}={v}]"))
        return out


class CellStore(Protocol):
    """Where finished cells live (``recsim_post.outputs.Workspace``): a sweep skips a done cell,
    saves each cell the moment it finishes, and reads every cell back at the end."""

    def done(self, name: str) -> bool: ...

    def save_frame(self, name: str, frame: pd.DataFrame, info: dict[str, Any] | None = None) -> None: ...

    def save_frames(self, name: str, frames: dict[str, pd.DataFrame], info: dict[str, Any] | None = None) -> None: ...

    def load_frame(self, name: str) -> pd.DataFrame: ...


@dataclass(frozen=True)
class SweepCell:
    """One (value, seed) cell of a sweep: its folder name, scenario and seed."""

    name: str
    value: Any
    scenario: ScenarioConfig
    seed: int


def sweep_cells(base: ScenarioConfig, dial: Dial, seeds: Sequence[int]) -> list[SweepCell]:
    """Every (value, seed) cell, with the dial set (values checked up front) and a stable folder
    name ``cells/<value>-seed-<s>`` per cell."""
    if not seeds:
        raise ConfigError("a sweep needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {' '.join(map(str, seeds))} repeat a seed")
    slugs = [re.sub(r"[^A-Za-z0-9._+-]", "_", _label(v)) for v in dial.values]
    slugs = [s if slugs.count(s) == 1 else f"{s}-{i}" for i, s in enumerate(slugs)]
    return [
        SweepCell(f"cells/{slug}-seed-{s}", v, sc, int(s))
        for v, sc, slug in zip(dial.values, dial.scenarios(base), slugs) for s in seeds
    ]


def cell_spec(cell: SweepCell, agents: Sequence[AgentConfig], eval_users: int | None) -> dict[str, Any]:
    """Everything a cell's result depends on, as plain data (its key is a hash of this and the code)."""
    return {"scenario": to_dict(cell.scenario), "agents": [to_dict(a) for a in agents], "seed": cell.seed,
            "eval_users": eval_users}


def run_cell(scenario: dict[str, Any], agents: list[dict[str, Any]], seed: int, eval_users: int | None,
             ope_reward: str | None = None, ideal_tilt: bool = False) -> dict[str, pd.DataFrame]:
    """One story (plain-data arguments, so a cell can be shipped to another process): its tables,
    ``results`` (the results frame) and, when a recipe fitted a reward model, ``reward_models``
    (the ensemble against user / item means on held-out clicks, observed and true reward).

    ``ope_reward`` (a logged signal): the trained rows gain ``ope_ips``, ``ope_snips``, ``ope_dr``,
    off-policy estimates of that signal with propensities estimated from the public logs
    (``ope.report.selection_estimates``): the criteria a team without the truth could select by.
    ``ideal_tilt``: every exp-RSFT row gains ``tilt_norm`` and ``tilt_noisy_norm``, the ground truth
    of its π_ref tilted by the clean and by a once-noisy rating (``theory/ideal.py``)."""
    from ..posttrain.recipe import AgentConfig
    from .story import run_story  # imported here so a Ray worker pays for torch only when it runs

    result = run_story(
        from_dict(ScenarioConfig, scenario), [from_dict(AgentConfig, a) for a in agents],
        seed=seed, progress=False, eval_users=eval_users,
    )
    out = {"results": result.frame}
    if ope_reward is not None:
        from ..ope.report import selection_estimates

        sim = result.simulation
        est = selection_estimates(sim.public, result.evaluator.truth, result.policies, reward=ope_reward, seed=seed)
        out["results"] = result.frame.merge(est, on="method", how="left")
    if ideal_tilt:
        out["results"] = out["results"].merge(_ideal_tilts(result, seed), on="method", how="left")
    rm = result.evaluator.reward_model
    if rm is not None:
        report = result.evaluator.reward_report(rm, rm.max_len)
        report.attrs = {}  # parquet keeps the table, not its attrs
        out["reward_models"] = report
    return out


def _ideal_tilts(result: Any, seed: int) -> pd.DataFrame:
    """``tilt_norm`` and ``tilt_noisy_norm`` of every exp-RSFT recipe of a story (theory/ideal.py)."""
    from ..seeding import SeedTree
    from ..theory.ideal import IdealTilt

    ev, fb = result.evaluator, result.simulation.world.cfg.feedback
    ideals, names = {}, []
    for name, agent in result.agents.items():
        if agent.method.name != "exp-rsft" or agent.reward != "rating":  # the tilt is by the rating it is weighted with
            continue
        names.append(name)
        ref = result.pi_refs[name]
        ideals[(name, "tilt_norm")] = IdealTilt(ref, ev.truth, fb, agent.method.lam)
        ideals[(name, "tilt_noisy_norm")] = IdealTilt(ref, ev.truth, fb, agent.method.lam, noise=SeedTree(seed))
    values = ev.values(ideals)
    return pd.DataFrame([{"method": n, "tilt_norm": values[(n, "tilt_norm")],
                          "tilt_noisy_norm": values[(n, "tilt_noisy_norm")]} for n in names],
                        columns=["method", "tilt_norm", "tilt_noisy_norm"])


def run_sweep(
    base: ScenarioConfig,
    dial: Dial,
    agents: Sequence[AgentConfig],
    seeds: Sequence[int],
    backend: str = "local",
    eval_users: int | None = 5000,
    say: Callable[[str], None] = lambda _: None,
    store: CellStore | None = None,
    workers: int = 1,
) -> pd.DataFrame:
    """Every (value, seed) cell; one long frame: ``dial``, ``value``, ``seed`` + the results columns.

    With a ``store`` each cell is saved as soon as it finishes and cells the store already holds
    are not run again, so an interrupted sweep resumes where it stopped. ``workers > 1`` runs local
    cells in a process pool.
    """
    cells = sweep_cells(base, dial, seeds)
    frames = run_cells(
        cells, agents, backend=backend, eval_users=eval_users, say=say, store=store, workers=workers,
        describe=lambda c: f"{dial.key} = {c.value}, seed {c.seed}",
        info=lambda c: {"value": _label(c.value), "seed": c.seed},
    )
    long = [frames[c.name].assign(dial=dial.key, value=_label(c.value), seed=c.seed) for c in cells]
    df = pd.concat(long, ignore_index=True)
    front = ["dial", "value", "seed"]
    return df[front + [c for c in df.columns if c not in front]]


def run_cells(
    cells: Sequence[SweepCell],
    agents: Sequence[AgentConfig],
    backend: str = "local",
    eval_users: int | None = 5000,
    say: Callable[[str], None] = lambda _: None,
    store: CellStore | None = None,
    describe: Callable[[SweepCell], str] = lambda c: c.name,
    info: Callable[[SweepCell], dict[str, Any]] = lambda c: {"seed": c.seed},
    workers: int = 1,
    progress: bool = False,
    ope_reward: str | None = None,
    ideal_tilt: bool = False,
) -> dict[str, pd.DataFrame]:
    """Run every cell not yet in ``store`` (one story each, all ``agents`` on the cell's scenario and
    seed) and return every cell's results frame by name. Each cell is saved the moment it finishes.

    ``backend = "local"`` runs the cells in this process (``workers = 1``) or in a pool of
    ``workers`` processes; ``"ray"`` ships them to Ray tasks. A cell's frame does not depend on where it ran.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend = {backend!r} is not allowed: must be one of {', '.join(BACKENDS)}")
    if workers < 1:
        raise ConfigError(f"workers = {workers} is out of range: must be >= 1")
    agent_data = [to_dict(a) for a in agents]
    todo = [c for c in cells if store is None or not store.done(c.name)]
    frames: dict[str, pd.DataFrame] = {}
    from tqdm.auto import tqdm

    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="cells", unit="cell", disable=not progress)

    def finished(cell: SweepCell, tables: dict[str, pd.DataFrame]) -> None:
        if store is not None:
            store.save_frames(cell.name, tables, info(cell))
        else:
            frames[cell.name] = tables["results"]
        bar.update(1)

    start = time.perf_counter()
    try:
        if backend == "ray" and todo:
            _run_ray(todo, agent_data, eval_users, say, finished, ope_reward, ideal_tilt)
        elif workers > 1 and len(todo) > 1:
            _run_pool(todo, agent_data, eval_users, say, finished, workers, ope_reward, ideal_tilt)
        else:
            for i, c in enumerate(todo):
                say(f"cell {i + 1}/{len(todo)}: {describe(c)}")
                finished(c, run_cell(to_dict(c.scenario), agent_data, c.seed, eval_users, ope_reward, ideal_tilt))
    finally:
        bar.close()
    say(f"{len(todo)} cells in {time.perf_counter() - start:.0f} s" + (
        f" ({len(cells) - len(todo)} finished earlier)" if len(todo) < len(cells) else ""))
    return {c.name: (store.load_frame(c.name) if store is not None else frames[c.name]) for c in cells}


def _run_pool(
    cells: list[SweepCell], agent_data: list[dict], eval_users: int | None, say: Callable[[str], None],
    finished: Callable[[SweepCell, dict[str, pd.DataFrame]], None], workers: int, ope_reward: str | None = None,
    ideal_tilt: bool = False,
) -> None:
    """Cells in a pool of fresh processes ("spawn": no torch or Numba thread state is inherited)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(run_cell, to_dict(c.scenario), agent_data, c.seed, eval_users, ope_reward, ideal_tilt): c for c in cells}
        say(f"{len(pending)} cells in a pool of {workers} processes")
        while pending:  # save each cell as it finishes, so a killed run keeps what finished
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done:
                cell = pending.pop(fut)
                finished(cell, fut.result())
                say(f"cell done: {cell.name} ({len(cells) - len(pending)}/{len(cells)})")


def _run_ray(
    cells: list[SweepCell], agent_data: list[dict], eval_users: int | None, say: Callable[[str], None],
    finished: Callable[[SweepCell, dict[str, pd.DataFrame]], None], ope_reward: str | None = None,
    ideal_tilt: bool = False,
) -> None:
    from ..truth.sharded import ray_session  # Ray as it is, or started (and shut down) here

    with ray_session() as (ray, _):
        task = ray.remote(run_cell)
        pending = {task.remote(to_dict(c.scenario), agent_data, c.seed, eval_users, ope_reward, ideal_tilt): c for c in cells}
        say(f"{len(pending)} cells submitted to Ray")
        while pending:  # save each cell as it finishes, so a killed sweep keeps what Ray finished
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                cell = pending.pop(ref)
                finished(cell, ray.get(ref))
                say(f"cell done: {cell.name} ({len(cells) - len(pending)}/{len(cells)})")


def _label(v: Any) -> str:
    """Values as text, so a column mixing ints and floats (0, 0.5) sorts and prints as given."""
    return v if isinstance(v, str) else repr(v).lower() if isinstance(v, bool) else str(v)


def paired_differences(
    long: pd.DataFrame, baseline: str = "bc", column: str = VALUE_COLUMN, by: Sequence[str] = ("value",)
) -> pd.DataFrame:
    """Per group of ``by`` and method: mean and std over seeds of ``column``, and of its paired
    difference to ``baseline`` on the same seed; ``wins`` = seeds where the method beats the baseline.

    Args:
        long: rows with ``method``, ``seed``, ``column`` and the ``by`` columns.
    Returns:
        ``[*by, method, kind, n_seeds, <column>_mean, <column>_std, delta_mean, delta_std, wins]``;
        the delta columns are NaN for the baseline itself and for groups without it.
    """
    by = list(by)
    if baseline not in set(long["method"]):
        raise ConfigError(f"baseline '{baseline}' is not among the methods: {', '.join(dict.fromkeys(long['method']))}")
    base = long[long["method"] == baseline].set_index(by + ["seed"])[column].rename("_base")
    df = long.join(base, on=by + ["seed"])
    df["_delta"] = df[column] - df["_base"]
    df.loc[df["method"] == baseline, "_delta"] = np.nan
    g = df.groupby(by + ["method", "kind"], sort=False, dropna=False)
    out = pd.DataFrame({
        "n_seeds": g["seed"].nunique(),
        f"{column}_mean": g[column].mean(),
        f"{column}_std": g[column].std(ddof=1),
        "delta_mean": g["_delta"].mean(),
        "delta_std": g["_delta"].std(ddof=1),
        "wins": g["_delta"].apply(lambda d: int((d > 0).sum()) if d.notna().any() else np.nan),
    })
    return out.reset_index()


def sweep_summary(long: pd.DataFrame, baseline: str = "bc") -> pd.DataFrame:
    """:func:`paired_differences` of the raw ground truth, with the same paired difference at π_ref's
    entropy beside it (``matched_delta_mean``, ``matched_delta_std``, ``matched_wins``) when the rows
    carry ``matched_norm``: a method that only sharpens π gains raw and not matched."""
    summary = paired_differences(long, baseline=baseline)
    if MATCHED_COLUMN not in long.columns or long.loc[long["method"] == baseline, MATCHED_COLUMN].isna().all():
        return summary
    matched = paired_differences(long, baseline=baseline, column=MATCHED_COLUMN)
    keep = {"delta_mean": "matched_delta_mean", "delta_std": "matched_delta_std", "wins": "matched_wins"}
    matched = matched[["value", "method", *keep]].rename(columns=keep)
    return summary.merge(matched, on=["value", "method"], how="left")


def format_sweep(summary: pd.DataFrame, dial: str, baseline: str = "bc", column: str = VALUE_COLUMN) -> str:
    """Terminal tables, methods x dial values: the value itself, then the paired delta to the
    baseline with its seed std and wins ("+0.060 ± 0.033 (3/3)"), and the same delta at π_ref's
    entropy when the summary has it (:func:`sweep_summary`)."""

    def cell(m: float, s: float, signed: bool = False) -> str:
        if m is None or math.isnan(m):
            return "—"
        body = f"{m:+.3f}" if signed else f"{m:.3f}"
        return body if s is None or math.isnan(s) else f"{body} ± {s:.3f}"

    values = list(dict.fromkeys(summary["value"]))
    methods = list(dict.fromkeys(summary["method"]))
    idx = summary.set_index(["method", "value"])
    blocks = []
    def delta(prefix: str) -> Callable[[pd.Series], str]:
        return lambda r: ("—" if math.isnan(r[f"{prefix}delta_mean"]) else
                          f"{cell(r[f'{prefix}delta_mean'], r[f'{prefix}delta_std'], True)} "
                          f"({int(r[f'{prefix}wins'])}/{int(r['n_seeds'])})")

    views = [
        (f"{column} (mean ± std over seeds)", lambda r: cell(r[f"{column}_mean"], r[f"{column}_std"])),
        (f"paired difference to {baseline} (mean ± std over seeds, seeds won)", delta("")),
    ]
    if "matched_delta_mean" in summary.columns:
        views.append((f"paired difference to {baseline} at π_ref's entropy ({MATCHED_COLUMN}: "
                      "what is left once sharpening is taken out)", delta("matched_")))
    for title, fmt in views:
        rows = [[m] + [fmt(idx.loc[(m, v)]) if (m, v) in idx.index else "—" for v in values] for m in methods]
        if title.startswith("paired"):
            rows = [r for r in rows if r[0] != baseline]
        head = ["method"] + [f"{dial}={v}" for v in values]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
        blocks.append("\n".join([title, line(head), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]))
    return "\n\n".join(blocks)


def plot_sweep(summary: pd.DataFrame, dial: str, path: Any, column: str = VALUE_COLUMN) -> Any:
    """Two panels against the dial: the ground-truth value (mean ± std over seeds, references
    dotted) and each trained method's paired difference to the baseline (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..outputs import atomic_write

    values = list(dict.fromkeys(summary["value"]))
    x = np.arange(len(values))
    fig, (ax, ad) = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    for i, (method, g) in enumerate(summary.groupby("method", sort=False)):
        g = g.set_index("value").reindex(values)
        ref = g["kind"].eq("reference").any()
        style = dict(capsize=3, marker="o", color=f"C{i % 10}", label=method)
        ax.errorbar(x, g[f"{column}_mean"], yerr=g[f"{column}_std"].fillna(0),
                    linestyle=":" if ref else "-", alpha=0.6 if ref else 1.0, **style)
        if not ref and g["delta_mean"].notna().any():
            ad.errorbar(x, g["delta_mean"], yerr=g["delta_std"].fillna(0), **style)
            if "matched_delta_mean" in g.columns:  # dashed: the same method at π_ref's entropy
                ad.plot(x, g["matched_delta_mean"], linestyle="--", color=style["color"], alpha=0.8)
    ad.axhline(0.0, color="0.5", linewidth=0.8)
    for a in (ax, ad):
        a.set_xticks(x, values)
        a.set_xlabel(dial)
    ax.set_ylabel(f"{column} (0 = uniform, 1 = oracle)")
    ax.set_title("ground-truth value")
    baseline = summary.loc[summary["delta_mean"].isna() & summary["kind"].eq("trained"), "method"]
    ad.set_title(f"paired difference to {baseline.iloc[0] if len(baseline) else 'the baseline'}"
                 + (" (dashed: at π_ref's entropy)" if "matched_delta_mean" in summary.columns else ""))
    ad.set_ylabel(f"Δ {column}")
    ax.legend(fontsize=8, ncols=2)
    fig.suptitle("What turning the dial does to each method")

    def save(handle: Any) -> None:
        fig.savefig(handle, format="png", dpi=120)

    try:
        return atomic_write(path, save)
    finally:
        plt.close(fig)


__all__ = [
    "BACKENDS", "CellStore", "Dial", "SweepCell", "cell_spec", "format_sweep", "paired_differences", "plot_sweep",
    "run_cell", "run_cells", "run_sweep", "sweep_cells", "sweep_summary",
]
