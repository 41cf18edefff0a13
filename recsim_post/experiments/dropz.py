r"""Issue 11, study 3: does dropping Z(x) in exp-RSFT hurt in ground truth, and in which worlds?

In the closed-form counter-example (``recsim_post.theory.dropz``) a constant reward offset in one
context moves the unnormalised fit and leaves the per-context normalised one alone. Here the same
effect in a simulated world: each user rates on her own offset b_u ~ N(0, s²)
(``feedback.user_bias_std = s``), so a generous rater's clicks all carry e^{b_u/λ} times the
weight under w = exp(r/λ) and the shared SASRec gives her histories that much more say.

Design, per (seed, s): one world per seed (same seed: the same world, users, logger, clicks and r*
for every s — the offset touches the ratings only, and with the same z_u for every s), one π_ref
per seed (BC on the clicks, which carry no rating), then for each λ exp-RSFT with each
normalisation from that π_ref with the same training seed, so rows differ by the normalisation
and the ratings only. ``normalizations`` defaults to ("batch", "user"): today's default, which
drops Z(x) (one divisor per batch), against the per-user Ẑ_u estimated from the public clicks
(exp_rsft.py). Every row is scored by the exact ground truth (true_value, and normalised: 0 =
uniform, 1 = oracle), with its entropy and KL(π ‖ π_ref) averaged over the evaluation users'
histories at T, so a gain that is mere sharpening is visible.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..policy import Policy
from ..posttrain.exp_rsft import NORMALIZE, ExpRSFTConfig
from ..posttrain.recipe import AgentConfig, load_agent
from ..presets import resolve
from ..world.config import SCALE_MAX, ScenarioConfig, load_scenario
from .evaluate import Evaluator
from .story import run_story

REF_NAME = "pi_ref"
"""The row of π_ref itself (BC fine-tuned for 0 epochs: a copy of the shared pre-trained model)."""


def agent_name(lam: float, normalize: str) -> str:
    return f"exp-rsft lam={lam:g} {normalize}"


def _scenario(scenario: ScenarioConfig | str) -> ScenarioConfig:
    return scenario if isinstance(scenario, ScenarioConfig) else load_scenario(resolve("envs", scenario))


def _agent(agent: AgentConfig | str) -> AgentConfig:
    a = agent if isinstance(agent, AgentConfig) else load_agent(resolve("agents", agent))
    if a.method.name != "exp-rsft":
        raise ConfigError(f"agent method.name = {a.method.name!r} is not allowed: must be 'exp-rsft'")
    return a


def entropy_and_kl(evaluator: Evaluator, policy: Policy, ref: Policy, chunk: int = 512) -> tuple[float, float]:
    """Mean over the evaluation users of H(π(·|h_u)) and KL(π(·|h_u) ‖ π_ref(·|h_u)), histories at T (nats)."""
    ent, kl = 0.0, 0.0
    users = evaluator.users
    for lo in range(0, len(users), chunk):
        hist = evaluator._hist_at_t(users[lo:lo + chunk])  # the histories the ground truth scores
        lp = _log_softmax(policy.logits(hist))
        lq = _log_softmax(ref.logits(hist))
        p = np.exp(lp)
        ent -= float((p * lp).sum())
        kl += float((p * (lp - lq)).sum())
    return ent / len(users), kl / len(users)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def dropz_world_study(
    scenario: ScenarioConfig | str = "quickstart",
    biases: Sequence[float] = (0.0, 0.5, 1.0),
    lambdas: Sequence[float] = (0.3, 1.0),
    seeds: Sequence[int] = (0, 1),
    normalizations: Sequence[str] = ("batch", "user"),
    agent: AgentConfig | str = "exp-rsft",
    eval_users: int | None = 5000,
    progress: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> pd.DataFrame:
    """One row per (seed, user_bias_std, λ, normalize), plus one π_ref row per (seed, user_bias_std)
    (``lam`` and ``normalize`` NaN / "pi_ref"), with the exact ground-truth value of each policy.

    Columns: seed, user_bias_std, lam, normalize, true_value, true_value_norm, top10_norm, ndcg@10,
    entropy, kl_ref, logger_norm (the logging policy's normalised value in that world), seconds (of
    the whole cell, shared by its rows). ``agent`` supplies the model and the budgets (its method's
    λ and normalize are replaced).
    """
    base = _scenario(scenario)
    recipe = _agent(agent)
    for s in biases:
        if not 0.0 <= s <= SCALE_MAX:
            raise ConfigError(f"user_bias_std = {s!r} is out of range: must be >= 0 and <= {SCALE_MAX:g}")
    for n in normalizations:
        if n not in NORMALIZE:
            raise ConfigError(f"normalize = {n!r} is not allowed: must be one of {', '.join(map(repr, NORMALIZE))}")
    if not (biases and lambdas and seeds and normalizations):
        raise ConfigError("biases, lambdas, seeds and normalizations must each hold at least one value")
    # π_ref as a row: the same [model] and [pretrain], so run_story shares the pre-trained model,
    # fine-tuned for 0 epochs (a copy). BC's method needs no rating, so it is the same in every world.
    ref_agent = dataclasses.replace(load_agent(resolve("agents", "bc")), name=REF_NAME, model=recipe.model,
                                    pretrain=recipe.pretrain, finetune=dataclasses.replace(recipe.finetune, epochs=0))
    agents = [ref_agent] + [
        dataclasses.replace(recipe, name=agent_name(lam, norm),
                            method=ExpRSFTConfig(**{**dataclasses.asdict(recipe.method), "lam": lam, "normalize": norm}))
        for lam in lambdas for norm in normalizations
    ]
    rows = []
    for seed in seeds:
        for s in biases:
            sc = dataclasses.replace(base, seed=int(seed), feedback=dataclasses.replace(base.feedback, user_bias_std=float(s)))
            start = time.perf_counter()
            res = run_story(sc, agents, progress=progress, eval_users=eval_users)
            seconds = time.perf_counter() - start
            f = res.frame.set_index("method")
            ref = res.policies[REF_NAME]
            k = res.evaluator.k
            for a in agents:
                ent, kl = entropy_and_kl(res.evaluator, res.policies[a.name], ref)
                is_ref = a.name == REF_NAME
                rows.append({
                    "seed": int(seed), "user_bias_std": float(s),
                    "lam": np.nan if is_ref else float(a.method.lam),
                    "normalize": REF_NAME if is_ref else a.method.normalize,
                    "true_value": f.loc[a.name, "true_value"], "true_value_norm": f.loc[a.name, "true_value_norm"],
                    f"top{k}_norm": f.loc[a.name, f"top{k}_norm"], f"ndcg@{k}": f.loc[a.name, f"ndcg@{k}"],
                    "entropy": ent, "kl_ref": kl,
                    "logger_norm": f.loc["logging policy", "true_value_norm"], "seconds": seconds,
                })
            say(f"seed {seed}, user_bias_std {s:g}: {seconds:.0f} s")
    return pd.DataFrame(rows)


def dropz_summary(frame: pd.DataFrame, value: str = "true_value_norm") -> pd.DataFrame:
    """Mean over seeds of ``value`` per (user_bias_std, λ) and normalisation, with each
    normalisation's paired gain over the first non-reference one ("batch" by default)."""
    trained = frame[frame["normalize"] != REF_NAME]
    wide = trained.pivot_table(index=["user_bias_std", "lam", "seed"], columns="normalize", values=value)
    norms = list(dict.fromkeys(trained["normalize"]))
    first = norms[0]
    for n in norms[1:]:
        wide[f"{n}-{first}"] = wide[n] - wide[first]
    return wide.groupby(level=["user_bias_std", "lam"]).agg(["mean", "min", "max"]) if len(norms) else wide


__all__ = ["REF_NAME", "agent_name", "dropz_summary", "dropz_world_study", "entropy_and_kl"]
