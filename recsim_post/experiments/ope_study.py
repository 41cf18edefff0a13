"""A multi-seed OPE study: how far is each estimator from the exact truth, for policies worth evaluating?

For every seed s of the study::

    sim, {pi_k}   = run_story(scenario with seed s, recipes)      (simulate -> pre-train -> post-train)
    report_s      = ope_report(sim, {uniform} + {pi_k})           (IPS, SNIPS, DM, DR, Switch-DR x
                                                                    true / estimated propensities x
                                                                    item-mean / sequence q^)

and over all seeds and policies, per estimator x pscore source x q^ (ope_report.summarise)::

    bias     = mean(estimate - V_exact)            bias_norm = the same / scale (0 = uniform, 1 = oracle)
    rmse     = sqrt(mean((estimate - V_exact)^2))  rmse_norm likewise
    coverage = share of bootstrap intervals that contain V_exact

V_exact is the exact value of the OPE estimand on the logged contexts (ope/report.py, ope/exact.py), not V(pi)
at T; the story's values at T are kept beside it (``values``). Training reuses story.run_story, so
the policies are exactly those ``recsim-post demo`` would train for the same scenario and seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..policy import UniformPolicy
from ..world.config import ScenarioConfig
from ..ope.propensity import PropensityModelConfig
from ..ope.qmodel import SequenceQConfig
from ..ope.report import PSCORE_SOURCES, Q_MODELS, estimator_label, format_summary, ope_report, summarise
from .report import write_csv

UNIFORM = "uniform"
"""The reference target every study evaluates besides the trained policies."""


@dataclass
class OPEStudy:
    """Every report row (column ``seed``), its summaries, the story's values at T, and notes."""

    report: pd.DataFrame
    summary: pd.DataFrame  # summarise(report): per estimator x pscore x q_model
    by_policy: pd.DataFrame  # summarise(report, by=("policy",))
    values: pd.DataFrame  # run_story's results frame per seed (exact value at T, offline metrics)
    seeds: list[int]
    seconds: float
    notes: list[str] = field(default_factory=list)


@dataclass
class SeedResult:
    """One seed of a study: its report rows, the story's values at T, and notes."""

    report: pd.DataFrame
    values: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def check_study(agents: Sequence, seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds = {seeds} must be a non-empty list of distinct integers")
    names = [a.name for a in agents]
    if len(set(names)) != len(names) or UNIFORM in names:
        raise ConfigError(f"recipe names {names} must be distinct and not {UNIFORM!r} (the reference target)")
    return seeds


def ope_study_seed(
    scenario: ScenarioConfig,
    agents: Sequence,  # posttrain.recipe.AgentConfig
    seed: int,
    n_bootstrap: int = 200,
    propensity: str = "bc",
    q_models: Sequence[str] = Q_MODELS,
    q_cfg: SequenceQConfig | None = None,
    model_cfg: PropensityModelConfig | None = None,
    tau: float = 10.0,
    progress: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> SeedResult:
    """One seed of the study (see the module docstring): simulate, train, score every estimator."""
    from .story import run_story  # the layer above evaluation: imported where it is used

    story = run_story(scenario, agents, seed=seed, progress=progress, say=say)
    sim = story.simulation
    policies = {UNIFORM: UniformPolicy(sim.public.n_items), **story.policies}
    say(f"seed {seed}: OPE of {', '.join(policies)} ({propensity} propensities, q^ {' + '.join(q_models)}, "
        f"{n_bootstrap} bootstrap resamples)")
    rep = ope_report(
        sim.public, story.evaluator.truth, policies, n_bootstrap=n_bootstrap, seed=seed,
        propensity=propensity, tau=tau, q_model=tuple(q_models), q_cfg=q_cfg, model_cfg=model_cfg, say=say,
    )
    notes = [f"seed {seed}: {n}" for n in rep.attrs.get("notes", [])]
    return SeedResult(rep.assign(seed=seed), story.frame.assign(seed=seed), notes)


def combine_study(parts: Sequence[SeedResult], seeds: Sequence[int], seconds: float) -> OPEStudy:
    """The study over seeds from its per-seed results (in seed order)."""
    report = pd.concat([p.report for p in parts], ignore_index=True)
    return OPEStudy(
        report, summarise(report), summarise(report, by=("policy",)),
        pd.concat([p.values for p in parts], ignore_index=True), [int(s) for s in seeds], seconds,
        [n for p in parts for n in p.notes],
    )


def ope_study(
    scenario: ScenarioConfig,
    agents: Sequence,  # posttrain.recipe.AgentConfig
    seeds: Sequence[int],
    n_bootstrap: int = 200,
    propensity: str = "bc",
    q_models: Sequence[str] = Q_MODELS,
    q_cfg: SequenceQConfig | None = None,
    model_cfg: PropensityModelConfig | None = None,
    tau: float = 10.0,
    progress: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> OPEStudy:
    """Run the study (see the module docstring) seed after seed; ``say`` gets one line per step.
    (``recsim-post ope --scenario`` runs the same seeds as resumable cells.)"""
    seeds = check_study(agents, seeds)
    start = time.perf_counter()
    parts = [
        ope_study_seed(scenario, agents, s, n_bootstrap, propensity, q_models, q_cfg, model_cfg, tau, progress, say)
        for s in seeds
    ]
    return combine_study(parts, seeds, time.perf_counter() - start)


def write_study(study: OPEStudy, folder: str | Path) -> list[Path]:
    """report.csv, summary.csv, summary_by_policy.csv and values.csv in ``folder`` (each atomically)."""
    folder = Path(folder)
    return [
        write_csv(study.report, folder / "report.csv"),
        write_csv(study.summary, folder / "summary.csv"),
        write_csv(study.by_policy, folder / "summary_by_policy.csv"),
        write_csv(study.values, folder / "values.csv"),
    ]


def format_by_policy(by_policy: pd.DataFrame, metric: str = "bias_norm") -> str:
    """One row per estimator (and q^), one column per policy x pscore source: ``metric``."""
    df = by_policy.assign(label=by_policy.apply(estimator_label, axis=1))
    policies = list(dict.fromkeys(df["policy"]))
    srcs = [s for s in PSCORE_SOURCES if s in set(df["pscore"])]
    labels = list(dict.fromkeys(df.sort_values("policy", key=lambda c: c.map(policies.index), kind="stable")["label"]))
    cols = [(p, s) for p in policies for s in srcs]
    width = max(10, max(len(x) for x in labels) + 1)
    cw = max(14, max(len(f"{p} ({s[:4]})") for p, s in cols) + 2)
    head = f"{'estimator':<{width}}" + "".join(f"{p + ' (' + s[:4] + ')':>{cw}}" for p, s in cols)
    wide = df.set_index(["label", "policy", "pscore"])[metric]
    lines = [head, "-" * len(head)]
    for lab in labels:
        cells = "".join(
            f"{wide.get((lab, p, s), np.nan):>{cw}.3f}" for p, s in cols
        )
        lines.append(f"{lab:<{width}}" + cells)
    return "\n".join(lines)


def format_study(study: OPEStudy) -> str:
    """The summaries as terminal tables: raw units, normalised units, and bias per policy."""
    seeds = ", ".join(map(str, study.seeds))
    n_pol = study.report["policy"].nunique()
    parts = [
        f"over seeds {seeds} and {n_pol} target policies (bias, RMSE in true-reward units; coverage of 95% CIs)",
        format_summary(study.summary),
        "",
        "normalised (error / (V_oracle - V_uniform) of the same estimand)",
        format_summary(study.summary, normalised=True),
        "",
        "bias_norm per target policy (mean over seeds)",
        format_by_policy(study.by_policy),
    ]
    return "\n".join(parts)


__all__ = [
    "OPEStudy", "SeedResult", "combine_study", "format_by_policy", "format_study", "ope_study", "ope_study_seed",
    "write_study",
]
