r"""Theorems 4.3 and 4.4 of arXiv:2603.10279 checked on simulated worlds, context by context.

For each catalogue size the scenario is simulated with ``catalog.n_items`` set; its sealed truth
gives, for every evaluation user u at the end of logging T, the logger's exact logits and
r*(u, ·, T) over the whole catalogue. Noise ξ = σ Z is drawn once per (user, item) from the named
stream ``SeedTree(seed).child("theory").child("n_items=<I>").generator("noise")``: the same Z for
every λ (common random numbers) and scaled across σ, so differences between cells are the
parameters', not the draws'. Users go in chunks (:func:`~recsim_post.truth.ground_truth.chunk_users`),
so memory is O(chunk x items) however many users; Z is drawn chunk after chunk in user order, so the
table does not depend on the chunk size.

One row per (n_items, sigma, lambda, delta)::

    gap_mean, gap_min     V(π_λ) - V(π_β): mean and worst context
    exact_gap_mean        V(π*_λ) - V(π_β) (the noiseless tilt, >= 0)
    eps                   σ √(2 log(2|A|/δ))
    bound1                -2ε                          (Theorem 4.3)
    bound2_mean           mean of -R_max (e^{2ε/λ}-1)  (Theorem 4.4)
    viol1, viol2          share of contexts below each bound (the theorems say <= δ)
    viol2_centred         the same for the tighter R_half variant (see tilt.py)
    noise_exceed          share with max|ξ| > ε (<= δ in expectation; every violation lies here)
    loose1, loose2        mean of gap - bound (how much room each bound leaves)
    noise_cost            mean V(π*_λ) - V(π_λ)
    noise_cost_per_sqrtlog   noise_cost / √log|A|  (flat in |A| if the cost grows like √log|A|)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..config import override
from ..logs.simulate import simulate
from ..seeding import SeedTree
from ..truth.ground_truth import GroundTruth, chunk_users
from ..world.config import ScenarioConfig
from .tilt import bound_eps, tilt, tilt_bounds, values

COLUMNS = (
    "n_items", "sigma", "lambda", "delta", "n_contexts", "eps", "gap_mean", "gap_min", "exact_gap_mean",
    "bound1", "bound2_mean", "viol1", "viol2", "viol2_centred", "noise_exceed", "loose1", "loose2",
    "noise_cost", "noise_cost_per_sqrtlog",
)


def load_preset(name_or_path: str) -> ScenarioConfig:
    """A scenario preset by name (``quickstart``) or TOML path, as the CLI loads it."""
    from ..presets import resolve
    from ..world.config import load_scenario

    return load_scenario(resolve("envs", name_or_path))


def _users(truth: GroundTruth, users: int | Sequence[int] | np.ndarray | None) -> np.ndarray:
    """The evaluation users: all (None), the first ``users`` (an int: users are i.i.d. draws of the
    world, so the first n are as good a sample as any), or the given ids."""
    if users is None:
        return np.arange(truth.n_users)
    if isinstance(users, (int, np.integer)):
        if users < 1:
            raise ValueError(f"users must be a positive count, got {users}")
        return np.arange(min(int(users), truth.n_users))
    return np.asarray(users, np.int64)


def truth_for(scenario: ScenarioConfig, n_items: int, seed: int | None = None) -> GroundTruth:
    """The sealed truth at T of ``scenario`` with ``catalog.n_items = n_items`` (and ``seed``)."""
    cfg = override(scenario, [("catalog.n_items", int(n_items))])
    cfg = dataclasses.replace(cfg, name=f"{scenario.name}[catalog.n_items={n_items}]")
    if seed is not None:
        cfg = dataclasses.replace(cfg, seed=int(seed))
    return GroundTruth.from_simulation(simulate(cfg))


def bound_rows(
    truth: GroundTruth, sigmas: Sequence[float], lambdas: Sequence[float], delta: float, seed: int,
    users: int | Sequence[int] | np.ndarray | None = None, chunk: int | None = None,
) -> pd.DataFrame:
    """The study's rows for one world (one catalogue size); see the module docstring."""
    users = _users(truth, users)
    n, n_items = len(users), truth.n_items
    if n == 0:
        raise ValueError("no evaluation users")
    chunk = chunk_users(n_items) if chunk is None else int(chunk)
    rng = SeedTree(seed).child("theory").child(f"n_items={n_items}").generator("noise")
    keys = [(s, lam) for s in sigmas for lam in lambdas]
    eps = {s: bound_eps(s, n_items, delta) for s in sigmas}
    stats = ("gap", "exact_gap", "bound2", "viol1", "viol2", "viol2_centred", "noise_exceed", "loose1", "loose2", "noise_cost")
    acc = {k: dict.fromkeys(stats, 0.0) for k in keys}
    gap_min = dict.fromkeys(keys, math.inf)
    for lo in range(0, n, chunk):
        u = users[lo : lo + chunk]
        logits = truth.logger_logits(u)
        r = truth.true_reward(u)
        z = rng.standard_normal(r.shape)  # one draw per (user, item), shared by every σ and λ
        v_beta = values(tilt(logits, r, math.inf), r)
        for lam in lambdas:
            v_exact = values(tilt(logits, r, lam), r)  # the noiseless tilt: the same for every σ
            for s in sigmas:
                b = tilt_bounds(logits, r, s * z, lam, eps[s], v_beta=v_beta, exact_value=v_exact)
                a = acc[(s, lam)]
                a["gap"] += b.gap.sum()
                a["exact_gap"] += b.exact_gap.sum()
                a["bound2"] += b.bound2.sum()
                a["viol1"] += b.violates1.sum()
                a["viol2"] += b.violates2.sum()
                a["viol2_centred"] += b.violates2_centred.sum()
                a["noise_exceed"] += b.noise_exceeds.sum()
                a["loose1"] += (b.gap - b.bound1).sum()
                a["loose2"] += (b.gap - b.bound2).sum()
                a["noise_cost"] += b.noise_cost.sum()
                gap_min[(s, lam)] = min(gap_min[(s, lam)], float(b.gap.min()))
        del logits, r, z
    rows = []
    sqrt_log = math.sqrt(math.log(n_items)) if n_items > 1 else math.nan
    for s, lam in keys:
        a = {k: v / n for k, v in acc[(s, lam)].items()}
        rows.append({
            "n_items": n_items, "sigma": float(s), "lambda": float(lam), "delta": float(delta), "n_contexts": n,
            "eps": eps[s], "gap_mean": a["gap"], "gap_min": gap_min[(s, lam)], "exact_gap_mean": a["exact_gap"],
            "bound1": -2.0 * eps[s], "bound2_mean": a["bound2"], "viol1": a["viol1"], "viol2": a["viol2"],
            "viol2_centred": a["viol2_centred"], "noise_exceed": a["noise_exceed"], "loose1": a["loose1"],
            "loose2": a["loose2"], "noise_cost": a["noise_cost"], "noise_cost_per_sqrtlog": a["noise_cost"] / sqrt_log,
        })
    return pd.DataFrame(rows, columns=list(COLUMNS))


def tilt_bound_study(
    scenario: ScenarioConfig | str,
    n_items_grid: Sequence[int],
    sigmas: Sequence[float],
    lambdas: Sequence[float],
    delta: float = 0.1,
    seed: int | None = None,
    users: int | Sequence[int] | np.ndarray | None = None,
    chunk: int | None = None,
) -> pd.DataFrame:
    """Theorems 4.3 and 4.4 on ``scenario`` (a config, or a preset name) for each catalogue size.

    ``seed`` (default: the scenario's) seeds the world and, through its own ``theory`` branch of the
    seed tree, the reward noise. ``users``: how many evaluation users (the first ones) or which;
    keep it small for very large catalogues (each context costs O(|A|) per (σ, λ)). Returns one row
    per (n_items, sigma, lambda, delta) with the columns of :data:`COLUMNS`.
    """
    base = load_preset(scenario) if isinstance(scenario, str) else scenario
    seed = base.seed if seed is None else int(seed)
    if not sigmas or not lambdas or not n_items_grid:
        raise ValueError("the study needs at least one catalogue size, one sigma and one lambda")
    frames = [
        bound_rows(truth_for(base, n, seed), sigmas, lambdas, delta, seed, users, chunk) for n in n_items_grid
    ]
    return pd.concat(frames, ignore_index=True)
