r"""Studies: a claim of the literature as one command that runs, resumes and reports.

A study is a TOML file (``studies/*.toml``, or any path)::

    name = "lambda"
    description = "exp-RSFT's ground truth against λ at several noise levels"
    scenarios = ["quickstart"]          # presets or TOML paths; each is a grid axis of its own
    seeds = [0, 1, 2]
    agents = ["bc"]                     # recipes run as they are
    reference = "bc"                    # paired differences are taken to this recipe
    columns = ["true_value_norm", "matched_norm", "ndcg@10"]

    [set]                               # fixed scenario settings
    "feedback.quantize" = false
    [grid]                              # scenario knobs: every combination is a grid point
    "feedback.noise_std" = [0.0, 0.5, 1.0]
    [[variants]]                        # recipe knobs: one recipe per value, named agent[key=value]
    agent = "exp-rsft"
    "method.lam" = [0.1, 0.3, 1.0, 3.0]
    [small]                             # what `--small` replaces: the size CI and the notebooks run
    seeds = [0]
    set = { "users.n_users" = 60 }

A cell is one (scenario, grid point, seed): one simulated world, one log, one π_ref shared by every
recipe and variant of the cell (common random numbers: the same world, logs, π_ref and training
seed), so the differences between recipes within a cell are paired. Cells run through
:func:`sweep.run_cells` (one after another, a process pool or Ray) into a resumable
:class:`outputs.Workspace`: a finished cell is a folder written atomically, so killing a study at any
point loses no finished cell, and the same command resumes it.

The report (``report.md`` with PNG figures, and ``results.parquet``) gives, per grid point and
column, the mean ± a 95 % t-interval over seeds, the paired difference to the reference with its
interval, the KL-reward frontier of every recipe family (true value and the reward model's belief
against KL(π ‖ π_ref), along the family's own knob), and the selection regret of each offline
criterion: picking a family's knob by NDCG, MRR or the reward model's belief, instead of by the
ground truth, costs ``max_v V(v) − V(argmax_v criterion(v))``.

Other kinds run a computation that is not a story per cell: ``kind = "tilt-bounds"``
(:func:`theory.study.tilt_bound_study`, one cell per catalogue size).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import override, read_toml
from ..errors import ConfigError
from ..signals import REWARDS
from .sweep import SweepCell, _label

KINDS = ("story", "tilt-bounds")
TOP_KEYS = {"name", "description", "kind", "scenarios", "seeds", "agents", "reference", "columns", "eval_users",
            "set", "agent_set", "grid", "variants", "small", "params", "criteria", "ope_reward", "ideal_tilt"}
SMALL_KEYS = {"seeds", "set", "agent_set", "grid", "eval_users", "params", "scenarios", "variants", "agents"}
DEFAULT_COLUMNS = ("true_value_norm", "matched_norm", "top1_norm", "ndcg@10", "entropy", "kl_ref")
TILT_COLUMNS = ("true_value_norm", "tilt_norm", "tilt_noisy_norm", "coverage_cost", "noise_cost", "fit_gap")
"""Study 2's split of an exp-RSFT row (``ideal_tilt = true``; theory/ideal.py)."""
DEFAULT_CRITERIA = ("ndcg@10", "mrr", "rm_value", "nll_tuned_norm")
"""Offline criteria a team could pick a knob by. ``nll_tuned_norm`` is NOT one (it reads the truth):
it is filtered out; ``rm_value`` counts where a reward model was fitted."""


@dataclass(frozen=True)
class Variant:
    """A recipe and a grid over its knobs: one recipe per combination, named ``agent[key=value,...]``."""

    agent: str
    grid: tuple[tuple[str, tuple[Any, ...]], ...]


@dataclass(frozen=True)
class StudyConfig:
    """A parsed study file (module docstring); ``root`` is the folder relative paths are read from."""

    name: str
    description: str = ""
    kind: str = "story"
    scenarios: tuple[str, ...] = ("quickstart",)
    seeds: tuple[int, ...] = (0, 1, 2)
    agents: tuple[str, ...] = ()
    reference: str | None = None
    columns: tuple[str, ...] = DEFAULT_COLUMNS
    criteria: tuple[str, ...] = ("ndcg@10", "mrr", "rm_value")
    """Offline columns a knob is selected by; ``ope_ips``, ``ope_snips``, ``ope_dr`` make every cell
    also estimate each policy off-policy (``ope_reward`` with estimated propensities)."""
    ope_reward: str = "rating"
    """The logged signal the ``ope_*`` criteria estimate (never r*: a team does not have it)."""
    ideal_tilt: bool = False
    """Study 2's split: score every exp-RSFT recipe's ideal tilt (clean and once-noisy rating) and
    add ``coverage_cost``, ``noise_cost`` and ``fit_gap`` (theory/ideal.py)."""
    eval_users: int | None = 5000
    set: tuple[tuple[str, Any], ...] = ()
    agent_set: tuple[tuple[str, Any], ...] = ()
    """Settings applied to every recipe (e.g. ``"pretrain.epochs" = 2`` in a small study)."""
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    variants: tuple[Variant, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    root: Path = Path(".")

    @property
    def cell_ope_reward(self) -> str | None:
        """The signal each cell estimates off-policy, or None when no criterion needs it."""
        return self.ope_reward if any(c.startswith("ope_") for c in self.criteria) else None

    @property
    def grid_keys(self) -> list[str]:
        return [k for k, _ in self.grid]


def _where(path: Path, key: str) -> str:
    return f"study {path}: {key}"


def _grid(data: Any, path: Path, what: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_where(path, what)} must be a table of key = [values]")
    out = []
    for key, values in data.items():
        values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        if not values:
            raise ConfigError(f"{_where(path, what)}.{key} has no values")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{_where(path, what)}.{key} repeats a value: {list(values)}")
        out.append((str(key), values))
    return tuple(out)


def _seeds(values: Any, path: Path) -> tuple[int, ...]:
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(f"{_where(path, 'seeds')} must be a non-empty list of integers")
    for s in values:
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= 2**32 - 1:
            raise ConfigError(f"{_where(path, 'seeds')}: {s!r} is not a seed (an integer >= 0 and <= 4294967295)")
    if len(set(values)) != len(values):
        raise ConfigError(f"{_where(path, 'seeds')} repeats a seed: {list(values)}")
    return tuple(int(s) for s in values)


def _variants(items: Any, path: Path) -> tuple[Variant, ...]:
    if not isinstance(items, list):
        raise ConfigError(f"{_where(path, 'variants')} must be an array of tables ([[variants]])")
    out = []
    for item in items:
        if not isinstance(item, Mapping) or "agent" not in item:
            raise ConfigError(f"{_where(path, 'variants')}: each [[variants]] needs agent = \"<recipe>\"")
        knobs = {k: v for k, v in item.items() if k != "agent"}
        if not knobs:
            raise ConfigError(f"{_where(path, 'variants')}: variant of {item['agent']!r} sets no knob")
        out.append(Variant(str(item["agent"]), _grid(knobs, path, f"variants.{item['agent']}")))
    return tuple(out)


def _flag(value: Any, path: Path, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{_where(path, key)} = {value!r} must be true or false")
    return value


def load_study(path: str | Path, small: bool = False) -> StudyConfig:
    """Read and check a study file (``small``: with its ``[small]`` table applied)."""
    from ..presets import resolve_study

    path = resolve_study(path)
    data = dict(read_toml(path))
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"study {path}: unknown key '{unknown[0]}'; allowed keys: {', '.join(sorted(TOP_KEYS))}")
    small_data = data.pop("small", {}) or {}
    if not isinstance(small_data, Mapping):
        raise ConfigError(f"{_where(path, 'small')} must be a table")
    bad = sorted(set(small_data) - SMALL_KEYS)
    if bad:
        raise ConfigError(f"study {path}: unknown key 'small.{bad[0]}'; allowed keys: {', '.join(sorted(SMALL_KEYS))}")
    if small:
        for key, value in small_data.items():
            if key in ("set", "agent_set", "params") and isinstance(value, Mapping):
                data[key] = {**(data.get(key) or {}), **value}  # small sizes refine, they do not replace
            else:
                data[key] = value
    if "name" not in data:
        raise ConfigError(f"study {path}: name = \"...\" is missing")
    kind = data.get("kind", "story")
    if kind not in KINDS:
        raise ConfigError(f"study {path}: kind = {kind!r} is not allowed: must be one of {', '.join(KINDS)}")
    scenarios = data.get("scenarios", ["quickstart"])
    scenarios = tuple(scenarios) if isinstance(scenarios, list) else (scenarios,)
    eval_users = data.get("eval_users", 5000)
    if eval_users is not None and (not isinstance(eval_users, int) or eval_users < 1):
        raise ConfigError(f"{_where(path, 'eval_users')} = {eval_users!r} must be an integer >= 1")
    criteria = tuple(c for c in data.get("criteria", ("ndcg@10", "mrr", "rm_value")) if c != "nll_tuned_norm")
    from ..ope.report import SELECTION_ESTIMATORS  # here: torch only when a study is read

    ope_names = {f"ope_{e}" for e in SELECTION_ESTIMATORS}
    bad_ope = [c for c in criteria if c.startswith("ope_") and c not in ope_names]
    if bad_ope:
        raise ConfigError(f"{_where(path, 'criteria')}: {bad_ope[0]!r} is not an OPE criterion; allowed: "
                          f"{', '.join(sorted(ope_names))}")
    ope_reward = data.get("ope_reward", "rating")
    if ope_reward not in REWARDS:  # r* ('true') is what the criteria must NOT read
        raise ConfigError(f"{_where(path, 'ope_reward')} = {ope_reward!r} is not allowed: must be a logged signal, "
                          f"one of {', '.join(REWARDS)}")
    cfg = StudyConfig(
        name=str(data["name"]), description=str(data.get("description", "")), kind=kind,
        scenarios=tuple(map(str, scenarios)), seeds=_seeds(data.get("seeds", [0, 1, 2]), path),
        agents=tuple(map(str, data.get("agents", []))), reference=data.get("reference"),
        columns=tuple(data.get("columns", DEFAULT_COLUMNS)),
        criteria=criteria, ope_reward=str(ope_reward), ideal_tilt=_flag(data.get("ideal_tilt", False), path, "ideal_tilt"),
        eval_users=eval_users, set=tuple((data.get("set") or {}).items()),
        agent_set=tuple((data.get("agent_set") or {}).items()), grid=_grid(data.get("grid") or {}, path, "grid"),
        variants=_variants(data.get("variants", []), path), params=dict(data.get("params") or {}), root=path.parent,
    )
    if cfg.kind == "story" and not (cfg.agents or cfg.variants):
        raise ConfigError(f"study {path}: a story study needs agents = [...] or [[variants]]")
    return cfg


# ---------------------------------------------------------------- cells


@dataclass(frozen=True)
class StudyCell(SweepCell):
    """A (scenario, grid point, seed) cell: ``labels`` are its grid coordinates as text."""

    labels: tuple[tuple[str, str], ...] = ()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", text)


def _local_path(cfg: StudyConfig, name: str) -> str:
    """A preset name as given, or a ``.toml`` path relative to the study file (scenarios and recipes)."""
    from ..presets import preset_dir

    if name.endswith(".toml") and not Path(name).is_absolute() and not (preset_dir("envs") / name).exists():
        candidate = cfg.root / name
        if candidate.is_file():
            return str(candidate)
    return name


def study_cells(cfg: StudyConfig) -> list[StudyCell]:
    """Every (scenario, grid point, seed), scenarios built and checked up front."""
    from ..world.config import load_scenario
    from ..presets import resolve

    cells = []
    keys = cfg.grid_keys
    for sc_name in cfg.scenarios:
        base = load_scenario(resolve("envs", _local_path(cfg, sc_name)))
        base = override(base, list(cfg.set)) if cfg.set else base
        for point in itertools.product(*[values for _, values in cfg.grid]):
            scenario = override(base, list(zip(keys, point))) if keys else base
            labels = (("scenario", sc_name),) + tuple((k, _label(v)) for k, v in zip(keys, point))
            scenario = dataclasses.replace(scenario, name=f"{base.name}" + "".join(f"[{k}={v}]" for k, v in labels[1:]))
            folder = "/".join(_slug(f"{k}={v}") if k != "scenario" else _slug(Path(v).stem) for k, v in labels)
            for s in cfg.seeds:
                cells.append(StudyCell(f"cells/{folder}/seed-{s}", point, scenario, s, labels))
    return cells


def study_agents(cfg: StudyConfig) -> list[Any]:
    """The recipes of every cell: ``agents`` as they are, then each variant's combinations, named
    ``agent[key=value,...]`` (a variant's key is checked against the recipe up front)."""
    from ..posttrain.recipe import load_agent
    from ..presets import resolve

    out, names = [], set()
    def load(name: str) -> Any:
        agent = load_agent(resolve("agents", _local_path(cfg, name)))
        return override(agent, list(cfg.agent_set)) if cfg.agent_set else agent

    for name in cfg.agents:
        out.append(load(name))
    for v in cfg.variants:
        base = load(v.agent)
        keys = [k for k, _ in v.grid]
        for point in itertools.product(*[values for _, values in v.grid]):
            agent = override(base, list(zip(keys, point)))
            tag = ",".join(f"{k.split('.')[-1]}={_short(x)}" for k, x in zip(keys, point))
            out.append(dataclasses.replace(agent, name=f"{base.name}[{tag}]"))
    for a in out:
        if a.name in names:
            raise ConfigError(f"recipe name {a.name!r} appears twice in the study; give each recipe once")
        names.add(a.name)
    if cfg.reference is not None and cfg.reference not in names:
        raise ConfigError(f"reference = {cfg.reference!r} is not among the study's recipes: {', '.join(sorted(names))}")
    return out


def _short(v: Any) -> str:
    """A knob value in a recipe's name: floats as %g (1e+12, 0.3, 100), the rest as text."""
    return f"{v:g}" if isinstance(v, float) else _label(v)


def family(method: str) -> str:
    """A recipe and its variants along their first knob form one family: ``exp-rsft[lam=0.3]`` ->
    ``exp-rsft``; with more knobs the others split families, ``exp-rsft[lam=0.3,normalize=user]`` ->
    ``exp-rsft[normalize=user]``, so a variant's first knob is what selection picks and what the
    frontier runs along, and two normalisations are compared at equal KL, not merged into one curve."""
    base, _, knobs = method.partition("[")
    rest = knobs.rstrip("]").split(",")[1:]
    return f"{base}[{','.join(rest)}]" if rest else base


# ---------------------------------------------------------------- statistics

_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
         2.042]
"""Student's t 97.5 % quantiles for 1 … 30 degrees of freedom (beyond: 1.96)."""


def t_interval(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, half-width of the 95 % t-interval, n) of the finite values; half-width NaN for n < 2."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    n = len(x)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(x[0]), float("nan"), 1
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(n)), n


def summarise(long: pd.DataFrame, columns: Sequence[str], by: Sequence[str], reference: str | None) -> pd.DataFrame:
    """Per grid point (``by``) and method: mean and 95 % half-width over seeds of each column, and of
    its paired difference to ``reference`` on the same cell (``d_<column>``)."""
    cols = [c for c in columns if c in long.columns]
    rows = []
    base = None
    if reference is not None:
        base = long[long["method"] == reference].set_index([*by, "seed"])
    for key, g in long.groupby([*by, "method"], sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip([*by, "method"], key))
        row["kind"] = g["kind"].iloc[0]
        row["family"] = family(str(row["method"]))
        row["n_seeds"] = g["seed"].nunique()
        for c in cols:
            m, h, _ = t_interval(g[c].tolist())
            row[c], row[f"{c}_ci"] = m, h
            if base is not None and row["method"] != reference:
                idx = pd.MultiIndex.from_frame(g[[*by, "seed"]])
                ref = base[c].reindex(idx).to_numpy() if c in base.columns else np.full(len(g), np.nan)
                m, h, _ = t_interval((g[c].to_numpy() - ref).tolist())
                row[f"d_{c}"], row[f"d_{c}_ci"] = m, h
        rows.append(row)
    return pd.DataFrame(rows)


def selection_regret(long: pd.DataFrame, by: Sequence[str], criteria: Sequence[str],
                     truth: str = "true_value_norm") -> pd.DataFrame:
    """Per grid point, recipe family with ≥ 2 variants, and criterion: the ground truth lost by
    picking the family's variant with the best ``criterion`` instead of the best ground truth,
    per seed, as mean and 95 % half-width (0 = the criterion picks the truly best variant)."""
    trained = long[long["kind"] == "trained"].assign(family=lambda d: d["method"].map(family))
    rows = []
    for key, g in trained.groupby([*by, "family"], sort=False, dropna=False):
        if g["method"].nunique() < 2:
            continue
        key = key if isinstance(key, tuple) else (key,)
        for crit in criteria:
            if crit not in g.columns or not np.isfinite(g[crit]).any():
                continue
            regrets, picks = [], []
            for _, s in g.groupby("seed"):
                s = s[np.isfinite(s[crit])]
                if s.empty:
                    continue
                chosen = s.loc[s[crit].idxmax()]
                regrets.append(float(s[truth].max() - chosen[truth]))
                picks.append(str(chosen["method"]))
            m, h, n = t_interval(regrets)
            rows.append({**dict(zip([*by, "family"], key)), "criterion": crit, "regret": m, "regret_ci": h,
                         "n_seeds": n, "picked": ", ".join(sorted(set(picks)))})
    return pd.DataFrame(rows)


KL_TARGETS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
"""Nats of KL(π ‖ π_ref) at which families are compared along their frontiers."""


def equal_kl(summary: pd.DataFrame, by: Sequence[str], column: str = "true_value_norm",
             targets: Sequence[float] = KL_TARGETS) -> pd.DataFrame:
    """Each family's ``column`` at equal KL(π ‖ π_ref): linear interpolation in log KL along the
    family's variants (mean over seeds), only inside the KL range the family covers (no extrapolation)."""
    rows = []
    trained = summary[(summary["kind"] == "trained") & np.isfinite(summary.get("kl_ref", pd.Series(dtype=float)))]
    for key, g in trained.groupby([*by, "family"], sort=False, dropna=False):
        g = g[g["kl_ref"] > 0].sort_values("kl_ref")
        if len(g) < 2 or column not in g.columns:
            continue
        key = key if isinstance(key, tuple) else (key,)
        x, y = np.log(g["kl_ref"].to_numpy()), g[column].to_numpy()
        row = dict(zip([*by, "family"], key))
        for t in targets:
            inside = x[0] <= math.log(t) <= x[-1]
            row[f"KL={t:g}"] = float(np.interp(math.log(t), x, y)) if inside else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- running


def run_study(
    cfg: StudyConfig, out: str | Path, *, overwrite: bool = False, backend: str = "local", workers: int = 1,
    say: Callable[[str], None] = lambda _: None, progress: bool = False, report_only: bool = False,
) -> pd.DataFrame:
    """Run (or resume) the study into ``out``, write results.parquet, results.csv and the report; the
    long results frame (one row per cell and recipe).

    ``report_only``: compute nothing; gather the finished cells of ``out`` -- also those another code
    version computed, when their settings are this grid's -- and write the tables and the report again
    (a report step fixed after an hour of cells then costs seconds, not the hour). Every cell must be
    finished."""
    from ..outputs import Workspace, cell_key, code_fingerprint
    from .report import write_csv

    if report_only and overwrite:
        raise ConfigError("--report-only reads the finished cells; --overwrite would delete them: pass one of the two")
    if report_only and not (Path(out).is_dir() and (Path(out) / "cells").is_dir()):
        raise ConfigError(f"--report-only: {out} holds no finished cells of a study; run it without --report-only first")
    if cfg.kind == "tilt-bounds":
        if report_only:
            raise ConfigError(f"--report-only: study '{cfg.name}' runs in seconds; run it without --report-only")
        return _run_tilt_bounds(cfg, out, overwrite=overwrite, say=say)
    cells = study_cells(cfg)
    agents = study_agents(cfg)
    from ..config import to_dict
    from .sweep import run_cells

    ope = cfg.cell_ope_reward
    spec = lambda c: {"scenario": to_dict(c.scenario), "agents": [to_dict(a) for a in agents],  # noqa: E731
                      "seed": c.seed, "eval_users": cfg.eval_users, **({"ope_reward": ope} if ope else {}),
                      **({"ideal_tilt": True} if cfg.ideal_tilt else {})}
    keys = {c.name: cell_key(spec(c)) for c in cells}
    specs = {c.name: spec(c) for c in cells} if report_only else None
    by = ["scenario", *cfg.grid_keys]
    say(f"study '{cfg.name}': {len(cells)} cells ({len(cfg.scenarios)} scenario(s) × "
        f"{len(cells) // max(1, len(cfg.scenarios) * len(cfg.seeds))} grid point(s) × {len(cfg.seeds)} seed(s)), "
        f"{len(agents)} recipes per cell")
    with Workspace(out, "study", keys, overwrite=overwrite, say=say, specs=specs) as ws:
        note = ""
        if report_only:
            missing = [c.name for c in cells if not ws.done(c.name)]
            if missing:
                raise ConfigError(f"--report-only: {len(missing)} of {len(cells)} cells are not finished in {out} "
                                  f"(e.g. {missing[0]}); run without --report-only to compute them")
            other = sum(n for code, n in ws.code_versions().items() if code != code_fingerprint())
            if other:
                note = (f"Report written again from finished cells (`--report-only`): {other} of {len(cells)} cells "
                        f"were computed by another code version than this report's.")
                say(note)
        frames = run_cells(cells, agents, backend=backend, eval_users=cfg.eval_users, say=say, store=ws,
                           describe=lambda c: ", ".join(f"{k} = {v}" for k, v in c.labels) + f", seed {c.seed}",
                           info=lambda c: {**dict(c.labels), "seed": c.seed}, workers=workers, progress=progress,
                           ope_reward=ope, ideal_tilt=cfg.ideal_tilt)
        long = pd.concat([frames[c.name].assign(**dict(c.labels), seed=c.seed) for c in cells], ignore_index=True)
        front = [*by, "seed"]
        long = long[front + [c for c in long.columns if c not in front]]
        if "tilt_norm" in long.columns:  # study 2's split of each exp-RSFT row (theory/ideal.py)
            long = long.assign(coverage_cost=1.0 - long["tilt_norm"],
                               noise_cost=long["tilt_norm"] - long["tilt_noisy_norm"],
                               fit_gap=long["tilt_noisy_norm"] - long["true_value_norm"])
        rm_paths = [(c, ws.path(c.name) / "reward_models.parquet") for c in cells]
        rm_long = pd.concat([pd.read_parquet(p).assign(**dict(c.labels), seed=c.seed) for c, p in rm_paths if p.is_file()],
                            ignore_index=True) if any(p.is_file() for _, p in rm_paths) else None
        if rm_long is not None:
            rm_long = rm_long[front + [c for c in rm_long.columns if c not in front]]
            ws.write("reward_models.csv", lambda p: write_csv(rm_long, p))
        ws.write("results.parquet", lambda p: long.to_parquet(p, index=False))
        ws.write("results.csv", lambda p: write_csv(long, p))
        extra = [c for c in TILT_COLUMNS if cfg.ideal_tilt and c not in cfg.columns]
        summary = summarise(long, [*cfg.columns, *extra], by, cfg.reference)
        regret = selection_regret(long, by, cfg.criteria)
        if not regret.empty and "matched_norm" in long.columns and long["matched_norm"].notna().any():
            # the same picks scored at π_ref's entropy: a criterion that rewards sharpening shows here
            keys = [*by, "family", "criterion"]
            matched = selection_regret(long, by, cfg.criteria, truth="matched_norm")
            matched = matched.rename(columns={"regret": "regret_matched", "regret_ci": "regret_matched_ci"})
            regret = regret.merge(matched[[*keys, "regret_matched", "regret_matched_ci"]], on=keys, how="left")
        ws.write("summary.csv", lambda p: write_csv(summary, p))
        if not regret.empty:
            ws.write("selection_regret.csv", lambda p: write_csv(regret, p))
        figures = {
            "values.png": lambda p: plot_values(summary, by, cfg.columns[0], p),
        }
        if "kl_ref" in summary.columns and summary["kl_ref"].notna().any():  # a study that lists kl_ref
            figures["frontier.png"] = lambda p: plot_frontier(summary, by, p)
        for name, fn in figures.items():
            ws.write(name, fn)
        at_kl = equal_kl(summary, by)
        if not at_kl.empty:
            ws.write("equal_kl.csv", lambda p: write_csv(at_kl, p))
        rm_summary = summarise_reward_models(rm_long, by) if rm_long is not None else None
        ws.write("report.md", lambda p: Path(p).write_text(
            report_markdown(cfg, summary, regret, by, list(figures), at_kl, rm_summary, note), encoding="utf-8"))
        ws.finish()
    return long


def _run_tilt_bounds(cfg: StudyConfig, out: str | Path, *, overwrite: bool, say: Callable[[str], None]) -> pd.DataFrame:
    """Study 1: one cell per catalogue size (theory/study.py); report = the table and its verdicts."""
    from ..outputs import Workspace, cell_key
    from ..theory.study import tilt_bound_study
    from .report import write_csv

    p = dict(cfg.params)
    allowed = {"n_items", "sigmas", "lambdas", "delta", "users"}
    bad = sorted(set(p) - allowed)
    if bad:
        raise ConfigError(f"study {cfg.name}: unknown params key '{bad[0]}'; allowed: {', '.join(sorted(allowed))}")
    sizes = [int(n) for n in p.get("n_items", [100, 1000])]
    from ..presets import resolve
    from ..world.config import load_scenario

    scenario = load_scenario(resolve("envs", _local_path(cfg, cfg.scenarios[0])))
    scenario = override(scenario, list(cfg.set)) if cfg.set else scenario
    from ..config import to_dict

    cells = {f"cells/n_items={n}": cell_key({"n": n, "p": p, "scenario": to_dict(scenario), "seeds": cfg.seeds})
             for n in sizes}
    with Workspace(out, "study", cells, overwrite=overwrite, say=say) as ws:
        for n, name in zip(sizes, cells):
            if ws.done(name):
                continue
            say(f"catalogue of {n:,} items")
            frames = [
                tilt_bound_study(scenario, [n], p.get("sigmas", [0.1, 0.5, 1.0]), p.get("lambdas", [0.05, 0.2, 1.0, 5.0]),
                                 delta=float(p.get("delta", 0.1)), seed=s, users=p.get("users")).assign(seed=s)
                for s in cfg.seeds
            ]
            ws.save_frame(name, pd.concat(frames, ignore_index=True), {"n_items": n})
        long = pd.concat([ws.load_frame(name) for name in cells], ignore_index=True)
        ws.write("results.parquet", lambda q: long.to_parquet(q, index=False))
        ws.write("results.csv", lambda q: write_csv(long, q))
        ws.write("report.md", lambda q: Path(q).write_text(tilt_report(cfg, long), encoding="utf-8"))
        ws.finish()
    return long


# ---------------------------------------------------------------- report


def _fmt(m: Any, h: Any = float("nan"), signed: bool = False) -> str:
    if m is None or not np.isfinite(m):
        return "—"
    body = f"{m:+.3f}" if signed else f"{m:.3f}"
    return body if h is None or not np.isfinite(h) else f"{body} ± {h:.3f}"


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


RM_COLUMNS = ("spearman_true", "pearson_true", "rmse_observed", "spearman_observed")
"""The reward-model report's columns a study summarises (metrics/reward_report.py)."""


def summarise_reward_models(rm_long: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Per grid point and model (the ensemble, user / item / user + item / global mean, the oracle
    ceiling): mean and 95 % half-width over seeds of :data:`RM_COLUMNS`, and the ensemble's paired
    margin over the best mean baseline (``margin_spearman_true``: its Spearman with r* minus the
    best of user, item and user + item mean, per cell)."""
    rows = []
    cols = [c for c in RM_COLUMNS if c in rm_long.columns]
    for key, g in rm_long.groupby([*by, "model"], sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip([*by, "model"], key))
        for c in cols:
            row[c], row[f"{c}_ci"] = t_interval(g[c].tolist())[:2]
        rows.append(row)
    out = pd.DataFrame(rows)
    if "spearman_true" in rm_long.columns:
        means = rm_long[rm_long["model"].isin(["user mean", "item mean", "user + item mean"])]
        best = means.groupby([*by, "seed"])["spearman_true"].max().rename("_best")
        ens = rm_long[rm_long["model"] == "reward-model ensemble"].join(best, on=[*by, "seed"])
        for key, g in ens.groupby(list(by), sort=False, dropna=False):
            key = key if isinstance(key, tuple) else (key,)
            m, h, _ = t_interval((g["spearman_true"] - g["_best"]).tolist())
            mask = (out[list(by)] == pd.Series(dict(zip(by, key)))).all(axis=1) & (out["model"] == "reward-model ensemble")
            out.loc[mask, "margin_spearman_true"], out.loc[mask, "margin_spearman_true_ci"] = m, h
    return out


def report_markdown(cfg: StudyConfig, summary: pd.DataFrame, regret: pd.DataFrame, by: Sequence[str],
                    figures: Sequence[str], at_kl: pd.DataFrame | None = None,
                    rm_summary: pd.DataFrame | None = None, note: str = "") -> str:
    """The study's report: per grid point, each column's mean ± 95 % CI over seeds and the paired
    difference to the reference, then the selection regret of each offline criterion."""
    parts = [f"# Study: {cfg.name}", "", cfg.description, "",
             f"Scenarios {', '.join(cfg.scenarios)}; seeds {', '.join(map(str, cfg.seeds))}; "
             f"each cell (scenario × grid point × seed) shares one world, one log and one π_ref between its recipes, "
             f"so differences are paired. ± is the 95 % t-interval over seeds.", ""]
    if note:
        parts += [note, ""]
    cols = [c for c in cfg.columns if c in summary.columns]
    for key, g in summary.groupby(list(by), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        parts.append("## " + ", ".join(f"{k} = {v}" for k, v in zip(by, key)))
        parts.append("")
        head = ["method", *cols]
        rows = [[r["method"], *[_fmt(r[c], r[f"{c}_ci"]) for c in cols]] for _, r in g.iterrows()]
        parts.append(_md_table(head, rows))
        if cfg.reference is not None:
            parts += ["", f"Paired difference to **{cfg.reference}** (same cell):", ""]
            rows = [[r["method"], *[_fmt(r.get(f"d_{c}"), r.get(f"d_{c}_ci"), True) for c in cols]]
                    for _, r in g.iterrows() if r["kind"] == "trained" and r["method"] != cfg.reference]
            parts.append(_md_table(head, rows))
        parts.append("")
    if not regret.empty:
        parts += ["## Honest model selection", "",
                  "Ground truth lost (normalised) by choosing each family's knob with an offline criterion instead of "
                  "the truth; 0 = it picks the truly best variant. The regret at matched entropy scores the same picks "
                  "at π_ref's entropy (matched_norm), so a criterion that merely rewards sharpening is not flattered." + (
                      f" `ope_ips`, `ope_snips`, `ope_dr`: off-policy estimates of the logged `{cfg.ope_reward}` at the "
                      "top slot of every logged slate, with propensities estimated from the public impressions (a "
                      "behaviour-cloning model of the logger) and an item-mean q^ for DR; in-sample (the same logs the "
                      "policies were trained on), as a team without a second log would run them."
                      if cfg.cell_ope_reward else ""), ""]
        matched = "regret_matched" in regret.columns
        head = [*by, "family", "criterion", "regret", *(["regret at matched entropy"] if matched else []), "picked"]
        rows = [[*[r[k] for k in by], r["family"], r["criterion"], _fmt(r["regret"], r["regret_ci"]),
                 *([_fmt(r["regret_matched"], r["regret_matched_ci"])] if matched else []), r["picked"]]
                for _, r in regret.iterrows()]
        parts += [_md_table(head, rows), ""]
    if cfg.ideal_tilt and "tilt_norm" in summary.columns:
        parts += ["## Coverage and noise: each exp-RSFT policy against its ideal tilt", "",
                  "tilt_norm: π_ref tilted by exp(g/λ) with the clean rating g = clip(c + s·r*, 1, 5); tilt_noisy_norm: "
                  "the same with one noisy rating per (user, item), σ as in the world. coverage_cost = 1 − tilt_norm "
                  "(what the clean tilt cannot reach at this λ), noise_cost = tilt − noisy tilt, fit_gap = noisy tilt − "
                  "the trained policy (negative: the network pools noisy ratings and beats one draw per pair). "
                  "Normalised ground truth (0 = uniform, 1 = oracle); see recsim_post/theory/ideal.py.", ""]
        tilt = summary[summary["tilt_norm"].notna()]
        head = [*by, "method", *TILT_COLUMNS]
        rows = [[*[r[k] for k in by], r["method"], *[_fmt(r[c], r[f"{c}_ci"]) for c in TILT_COLUMNS]]
                for _, r in tilt.iterrows()]
        parts += [_md_table(head, rows), ""]
    if at_kl is not None and not at_kl.empty:
        parts += ["## At equal KL", "",
                  "Each family's true_value_norm interpolated along its own knob at equal KL(π ‖ π_ref) (nats); "
                  "— = outside the KL range the family covers.", ""]
        kl_cols = [c for c in at_kl.columns if c.startswith("KL=")]
        rows = [[*[r[k] for k in by], r["family"], *[_fmt(r[c]) for c in kl_cols]] for _, r in at_kl.iterrows()]
        parts += [_md_table([*by, "family", *kl_cols], rows), ""]
    if rm_summary is not None and not rm_summary.empty:
        parts += ["## Reward models against user and item means", "",
                  "On each cell's held-out clicks: Spearman / Pearson with the true reward r*, RMSE and Spearman on the "
                  "observed ratings; margin: the ensemble's Spearman with r* minus the best of the user, item and "
                  "user + item means, paired per cell.", ""]
        cols = [c for c in (*RM_COLUMNS, "margin_spearman_true") if c in rm_summary.columns]
        rows = [[*[r[k] for k in by], r["model"], *[_fmt(r.get(c), r.get(f"{c}_ci"), c.startswith("margin")) for c in cols]]
                for _, r in rm_summary.iterrows()]
        parts += [_md_table([*by, "model", *cols], rows), ""]
    for f in figures:
        parts += [f"![{f}]({f})", ""]
    return "\n".join(parts)


def tilt_report(cfg: StudyConfig, long: pd.DataFrame) -> str:
    """Study 1's report: the bounds' violation shares against δ, their looseness, and the noise cost
    per √log|A| (flat in |A| if it grows like √log|A|)."""
    keys = [c for c in ("n_items", "sigma", "lambda") if c in long.columns]
    num = [c for c in long.columns if c not in (*keys, "seed") and pd.api.types.is_numeric_dtype(long[c])]
    mean = long.groupby(keys, sort=True)[num].mean().reset_index()
    shown = [c for c in ("delta", "eps", "gap_mean", "gap_min", "exact_gap_mean", "bound1", "bound2_mean", "viol1",
                         "viol2", "noise_exceed", "loose1", "noise_cost", "noise_cost_per_sqrtlog") if c in mean.columns]
    rows = [[*[f"{r[k]:g}" for k in keys], *[f"{r[c]:.4g}" for c in shown]] for _, r in mean.iterrows()]
    text = [f"# Study: {cfg.name}", "", cfg.description, "", _md_table([*keys, *shown], rows), ""]
    for col in ("viol1", "viol2"):
        if col in mean.columns and "delta" in mean.columns:
            worst = float((mean[col] - mean["delta"]).max())
            text.append(f"- {col}: the largest share of violating contexts minus δ is {worst:+.4f} "
                        f"({'within δ everywhere' if worst <= 0 else 'ABOVE δ somewhere'}).")
    return "\n".join(text) + "\n"


def plot_values(summary: pd.DataFrame, by: Sequence[str], column: str, path: Any) -> Any:
    """``column`` (mean ± CI) per method against the last grid axis (or per scenario), one line per method."""
    from matplotlib.figure import Figure

    from ..outputs import atomic_write

    x_key = list(by)[-1]
    values = list(dict.fromkeys(summary[x_key]))
    x = np.arange(len(values))
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    others = [k for k in by if k != x_key]
    for i, (key, g) in enumerate(summary.groupby([*others, "method"] if others else ["method"], sort=False)):
        key = key if isinstance(key, tuple) else (key,)
        g = g.set_index(x_key).reindex(values)
        ref = g["kind"].eq("reference").any()
        ax.errorbar(x, g[column], yerr=g[f"{column}_ci"].fillna(0), marker="o", capsize=3, color=f"C{i % 10}",
                    linestyle=":" if ref else "-", alpha=0.6 if ref else 1.0, label=" ".join(map(str, key)))
    ax.set_xticks(x, [str(v) for v in values])
    ax.set_xlabel(x_key)
    ax.set_ylabel(f"{column} (mean ± 95 % CI over seeds)")
    ax.legend(fontsize=7, ncols=2)
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))


def plot_frontier(summary: pd.DataFrame, by: Sequence[str], path: Any) -> Any:
    """The KL-reward frontier: true value (and the reward model's belief, when fitted) against
    KL(π ‖ π_ref), one line per recipe family along its own knob, one panel per grid point."""
    from matplotlib.figure import Figure

    from ..outputs import atomic_write

    trained = summary[(summary["kind"] == "trained") & summary["kl_ref"].notna()]
    groups = list(trained.groupby(list(by), sort=False, dropna=False))
    n = max(1, len(groups))
    fig = Figure(figsize=(4.5 * min(n, 4), 4 * math.ceil(n / 4)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(math.ceil(n / 4), min(n, 4), squeeze=False)).ravel()
    for ax, (key, g) in zip(axes, groups):
        key = key if isinstance(key, tuple) else (key,)
        for i, (fam, f) in enumerate(g.groupby("family", sort=False)):
            f = f.sort_values("kl_ref")
            ax.plot(f["kl_ref"], f["true_value_norm"], marker="o", color=f"C{i % 10}", label=f"{fam}: truth")
            if "rm_value" in f.columns and f["rm_value"].notna().any():
                ax.plot(f["kl_ref"], f["rm_value"], marker="x", linestyle="--", color=f"C{i % 10}", alpha=0.6,
                        label=f"{fam}: reward model (rating scale)")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel("KL(π ‖ π_ref), nats")
        ax.set_ylabel("true_value_norm")
        ax.set_title(", ".join(f"{k}={v}" for k, v in zip(by, key)), fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle("KL-reward frontier: compare methods at equal KL")
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))


__all__ = ["KINDS", "KL_TARGETS", "RM_COLUMNS", "equal_kl", "summarise_reward_models", "StudyCell", "StudyConfig", "Variant", "family", "load_study", "plot_frontier", "plot_values",
           "report_markdown", "run_study", "selection_regret", "study_agents", "study_cells", "summarise",
           "t_interval"]
