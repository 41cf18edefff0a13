r"""GFlowNet objectives over a prefix tree of semantic IDs (GFlowGR's flow-balance terms).

An item y is generated token by token, c_1 … c_{L'} (L' = L + 1 with the disambiguation token),
through the states s_0 = (x) → s_1 = (x, c_1) → … → s_{L'} = (x, c_1 … c_{L'}), the last of which is
terminal. The states form a tree (each prefix has one parent), so the backward policy is P_B = 1 and
every item has exactly one trajectory. A forward policy P_F(c_l | x, c_<l) with invalid tokens
masked then gives the item probability π(y|x) = Π_l P_F(c_l | x, c_<l).

Trajectory balance (Malkin et al. 2022, "Trajectory balance: Improved credit assignment in
GFlowNets", §2.3, with P_B = 1 and a context-conditioned partition function as in conditional
GFlowNets)::

    δ_TB(x, y) = log Z(x) + Σ_{l=1..L'} log P_F(c_l | x, c_<l) − β log R(x, y)
    L_TB       = δ_TB²

Detailed balance (Bengio et al. 2023, "GFlowNet Foundations", §3.2) with a state-flow head
log F(s), for each edge s_{l-1} → s_l (l = 1..L')::

    δ_DB(l)  = log F(s_{l-1}) + log P_F(c_l | x, c_<l) − log F(s_l),   log F(s_{L'}) := β log R(x, y)
    L_DB     = δ_DB(l)²

The reward exponent β turns R into R^β (β log R in log space): large β concentrates π on the best
items. Both losses reach 0 exactly when π(y|x) = R(x,y)^β / Z(x) with Z(x) = Σ_y R(x,y)^β; for DB the
flows are then F(s) = Σ_{leaves y under s} R(x,y)^β (:func:`prefix_log_flows`), so F(s_0) = Z(x).

GFlowGR (arXiv:2506.16114) adds these to token-level SFT: L = L_SFT + λ · L_GFN
(:func:`combined_loss`; the knobs are :class:`GFlowGRConfig`).

Every function here is a pure tensor function ``(inputs…) -> (loss, metrics)``; trajectories are
rows of ``(B, L')`` tensors whose padding positions (``mask`` False) follow the real steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..config import Config, knob
from ..errors import ConfigError

Reduction = Literal["mean", "sum", "none"]
Objective = Literal["tb", "db"]


# ---------------------------------------------------------------- config


@dataclass(frozen=True)
class GFlowGRConfig(Config):
    r"""GFlowGR: L = L_SFT + λ · L_GFN (TB or DB) on augmented semantic-ID trajectories.

    Each logged click gets ``n_augment`` trajectories, each drawn from the sampler mixture
    (weights ``sample_*``, normalised); each trajectory's reward is the composite
    log R = w_outcome · outcome + w_collab · collab + w_prefix · prefix
    (posttrain/gflowgr_data.py), raised to the power β inside the loss.
    """

    name: Literal["gflowgr"] = knob("gflowgr", "method name")
    objective: Objective = knob("tb", "flow-balance objective: 'tb' (trajectory balance, log Z(x) head) or 'db' "
                                      "(detailed balance, state-flow head log F(s))")
    gfn_weight: float = knob(1.0, "λ: weight of the GFlowNet loss beside the SFT loss (0 = token SFT)", ge=0.0, le=1e6)
    reward_exponent: float = knob(1.0, "β: the loss matches π to R^β (β · log R); larger β is greedier", gt=0.0, le=100.0)
    n_augment: int = knob(4, "N: trajectories drawn from the sampler mixture per logged click", ge=1, le=1024)
    sample_clicked: float = knob(1.0, "mixture weight of the clicked item itself", ge=0.0, le=1e6)
    sample_shown: float = knob(1.0, "mixture weight of items shown in the click's slate and not clicked "
                                     "(falls back to a random item when the slate has none)", ge=0.0, le=1e6)
    sample_random: float = knob(1.0, "mixture weight of items drawn uniformly from the catalogue", ge=0.0, le=1e6)
    sample_curriculum: float = knob(1.0, "mixture weight of π_ref-ranked negatives, from easy (π_ref's least likely "
                                          "items) to hard (its most likely, the click left out) over training", ge=0.0, le=1e6)
    sample_on_policy: float = knob(1.0, "mixture weight of samples from the current policy (its constrained "
                                        "sampler, handed in by the method)", ge=0.0, le=1e6)
    curriculum_band: float = knob(0.1, "width of the curriculum's rank window, as a share of the catalogue",
                                  gt=0.0, le=1.0)
    w_outcome: float = knob(1.0, "weight of the logged-outcome term in log R", ge=-100.0, le=100.0)
    w_collab: float = knob(0.5, "weight of the standardised π_ref logit of y in log R", ge=-100.0, le=100.0)
    w_prefix: float = knob(1.0, "weight of the shared-prefix similarity to the clicked item's ID in log R",
                           ge=-100.0, le=100.0)
    outcome_clicked: float = knob(2.0, "outcome term of the clicked item (before its signal bonus)",
                                  ge=-100.0, le=100.0)
    outcome_shown: float = knob(-1.0, "outcome term of an item shown in the slate and not clicked",
                                ge=-100.0, le=100.0)
    outcome_unshown: float = knob(0.0, "outcome term of an item not in the click's slate", ge=-100.0, le=100.0)
    contexts_per_window: int = knob(8, "logged clicks per training window that get the GFN term (drawn at random "
                                       "among its targets; 0 = all): bounds the cost of π_ref's enumeration and of "
                                       "the N trajectories", ge=0, le=100_000)
    head_lr: float = knob(1e-2, "learning rate of the log Z(x) head (TB) or the state-flow head log F(s) (DB): "
                                "faster than the policy's, as usual for TB's partition function", gt=0.0, le=1.0)
    signal_weight: float = knob(0.5, "added to the clicked item's outcome per unit of its signal, scaled to [-1, 1] "
                                      "over the signal's range (a 5-star rating +1, 1 star -1; missing 0)",
                                ge=-100.0, le=100.0)

    def check(self) -> None:
        if self.sampler_weights().sum() <= 0:
            raise ConfigError("sample_clicked, sample_shown, sample_random, sample_curriculum, sample_on_policy "
                              "are all 0: at least one sampler needs a positive weight")

    def sampler_weights(self) -> np.ndarray:
        """The mixture weights in the order of ``gflowgr_data.SAMPLERS`` (not normalised)."""
        return np.array([self.sample_clicked, self.sample_shown, self.sample_random, self.sample_curriculum,
                         self.sample_on_policy])


# ---------------------------------------------------------------- checks and reductions


def _check(log_pf: torch.Tensor, mask: torch.Tensor, log_reward: torch.Tensor, beta: float, reduction: str) -> None:
    if log_pf.ndim != 2 or mask.shape != log_pf.shape:
        raise ConfigError(f"log_pf and mask must both be (B, L'), got {tuple(log_pf.shape)} and {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ConfigError(f"mask must be a bool tensor, got {mask.dtype}")
    if log_reward.shape != log_pf.shape[:1]:
        raise ConfigError(f"log_reward must be (B,) = ({log_pf.shape[0]},), got {tuple(log_reward.shape)}")
    if not (beta > 0 and np.isfinite(beta)):
        raise ConfigError(f"beta = {beta!r} is out of range: must be > 0 and finite")
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(f"reduction = {reduction!r} is not allowed: must be one of 'mean', 'sum', 'none'")


def _reduce(per: torch.Tensor, keep: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """``per`` with entries outside ``keep`` zeroed, then summed or averaged over ``keep``."""
    per = torch.where(keep, per, torch.zeros((), dtype=per.dtype, device=per.device))
    if reduction == "none":
        return per
    total = per.sum()
    return total if reduction == "sum" else total / keep.sum().clamp(min=1)


# ---------------------------------------------------------------- trajectory balance


def tb_loss(
    log_pf: torch.Tensor,
    mask: torch.Tensor,
    log_reward: torch.Tensor,
    log_z: torch.Tensor,
    beta: float = 1.0,
    reduction: Reduction = "mean",
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Trajectory balance (module docstring): δ = log Z(x) + Σ_l log P_F − β log R, loss δ².

    ``log_pf`` ``(B, L')`` per-step log P_F(c_l | x, c_<l) (padding entries may hold anything,
    even −inf: they are never read); ``mask`` ``(B, L')`` bool, True on real steps;
    ``log_reward`` ``(B,)`` log R(x, y); ``log_z`` ``(B,)`` log Z(x) of each row's context (or a
    0-dim tensor shared by all rows). ``weight`` ``(B,)`` optionally scales each trajectory's loss
    (0 drops a row: padding rows of a ragged batch of contexts).

    Reduction over trajectories: ``"mean"`` (Σ_b w_b δ_b² / Σ_b w_b), ``"sum"`` (Σ_b w_b δ_b²) or
    ``"none"`` (``(B,)`` w_b δ_b²).

    Metrics (0-dim, detached, means over rows with weight > 0): ``tb_residual`` (δ),
    ``tb_abs_residual`` (|δ|), ``log_z``, ``log_pf`` (log π(y|x) of the trajectories), ``log_r``
    (β log R).
    """
    _check(log_pf, mask, log_reward, beta, reduction)
    log_z = torch.as_tensor(log_z, dtype=log_pf.dtype, device=log_pf.device)
    if log_z.ndim and log_z.shape != log_reward.shape:
        raise ConfigError(f"log_z must be (B,) = ({log_pf.shape[0]},) or a scalar, got {tuple(log_z.shape)}")
    # where(), not mask * log_pf: a padded −inf times 0 is NaN.
    traj_log_pf = torch.where(mask, log_pf, torch.zeros((), dtype=log_pf.dtype, device=log_pf.device)).sum(dim=1)
    target = beta * log_reward.to(log_pf.dtype)
    delta = log_z + traj_log_pf - target
    w = torch.ones_like(delta) if weight is None else weight.to(delta.dtype)
    keep = w > 0
    per = torch.where(keep, w * delta**2, torch.zeros((), dtype=delta.dtype, device=delta.device))
    if reduction == "none":
        loss = per
    elif reduction == "sum":
        loss = per.sum()
    else:  # a weighted mean: Σ w δ² / Σ w
        loss = per.sum() / torch.where(keep, w, 0.0).sum().clamp(min=1e-30)
    with torch.no_grad():
        n = keep.sum().clamp(min=1)

        def mean(v: torch.Tensor) -> torch.Tensor:
            return torch.where(keep, v.expand_as(delta), 0.0).sum() / n

        metrics = {
            "tb_residual": mean(delta), "tb_abs_residual": mean(delta.abs()), "log_z": mean(log_z),
            "log_pf": mean(traj_log_pf), "log_r": mean(target),
        }
    return loss, metrics


# ---------------------------------------------------------------- detailed balance


def terminal_index(mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` the index n_b of each row's terminal state s_{n_b} (its number of real steps); the
    real steps must come first in each row (a prefix mask), else ConfigError."""
    n = mask.sum(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask, positions[None, :] < n[:, None]):
        raise ConfigError("mask must be True on each row's leading steps and False after them (padding at the end)")
    return n


def db_loss(
    log_pf: torch.Tensor,
    mask: torch.Tensor,
    log_reward: torch.Tensor,
    log_flow: torch.Tensor,
    beta: float = 1.0,
    reduction: Reduction = "mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Detailed balance (module docstring): for each real edge s_{l-1} → s_l,
    δ_l = log F(s_{l-1}) + log P_F(c_l | x, c_<l) − log F(s_l), with log F(s_{n_b}) := β log R.

    ``log_pf``, ``mask`` as in :func:`tb_loss` (``mask`` must be a prefix mask: row b has n_b
    real steps, then padding); ``log_reward`` ``(B,)``; ``log_flow`` ``(B, L'+1)`` the state-flow
    head's log F(s_0 … s_{L'}). The head's value at each row's terminal state s_{n_b} (and after
    it) is not read: the terminal flow is the reward (P_B = 1, no exit action).

    Reduction over the real edges: ``"mean"`` (Σ δ² / number of edges), ``"sum"`` or ``"none"``
    (``(B, L')``, 0 on padding).

    Metrics (0-dim, detached): ``db_residual`` and ``db_abs_residual`` (mean over real edges),
    ``log_f0`` (mean log F(s_0), the flow estimate of log Z(x)), ``log_r`` (mean β log R),
    ``db_terminal_abs_residual`` (mean |δ| of the last edge, the one that reads the reward).
    """
    _check(log_pf, mask, log_reward, beta, reduction)
    b, steps = log_pf.shape
    if log_flow.shape != (b, steps + 1):
        raise ConfigError(f"log_flow must be (B, L'+1) = ({b}, {steps + 1}), got {tuple(log_flow.shape)}")
    n = terminal_index(mask)
    target = (beta * log_reward).to(log_pf.dtype)
    rows = torch.arange(b, device=log_pf.device)
    # log F(s_l) for l = 0..L', the terminal state's flow replaced by β log R (a new tensor: the
    # head's output is not modified in place, so autograd stays intact).
    is_terminal = torch.arange(steps + 1, device=log_pf.device)[None, :] == n[:, None]
    flow = torch.where(is_terminal, target[:, None], log_flow.to(log_pf.dtype))
    zero = torch.zeros((), dtype=log_pf.dtype, device=log_pf.device)
    delta = flow[:, :-1] + torch.where(mask, log_pf, zero) - flow[:, 1:]
    delta = torch.where(mask, delta, zero)  # past the terminal state nothing is an edge
    loss = _reduce(delta**2, mask, reduction)
    with torch.no_grad():
        edges = mask.sum().clamp(min=1)
        last = delta[rows, (n - 1).clamp(min=0)].abs()
        has_edge = n > 0
        metrics = {
            "db_residual": delta.sum() / edges,
            "db_abs_residual": delta.abs().sum() / edges,
            "db_terminal_abs_residual": torch.where(has_edge, last, zero).sum() / has_edge.sum().clamp(min=1),
            "log_f0": log_flow[:, 0].float().mean(),
            "log_r": target.float().mean(),
        }
    return loss, metrics


# ---------------------------------------------------------------- GFlowGR's combined loss


def combined_loss(
    sft_loss: torch.Tensor,
    gfn_loss: torch.Tensor,
    gfn_weight: float,
    metrics: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""L = L_SFT + λ · L_GFN (λ = ``gfn_weight``); the metrics gain ``sft`` and ``gfn`` (both
    detached) beside ``metrics``. λ = 0 is token SFT (and the GFN term then carries no gradient)."""
    if not (gfn_weight >= 0 and np.isfinite(gfn_weight)):
        raise ConfigError(f"gfn_weight = {gfn_weight!r} is out of range: must be >= 0 and finite")
    loss = sft_loss + gfn_weight * gfn_loss if gfn_weight else sft_loss
    return loss, {**(metrics or {}), "sft": sft_loss.detach(), "gfn": gfn_loss.detach()}


# ---------------------------------------------------------------- the analytic optimum on a trie


def prefix_log_flows(codes: np.ndarray, log_reward: np.ndarray, beta: float = 1.0) -> np.ndarray:
    r"""The optimal log-flows of each item's path: ``(n_items, L'+1)`` with entry [y, l] =
    log F(s_l) = log Σ_{y' sharing y's first l tokens} R(y')^β (entry [y, 0] = log Z, entry
    [y, L'] = β log R(y)). ``codes`` ``(n_items, L')`` are the items' unique semantic IDs,
    ``log_reward`` ``(n_items,)`` log R for one context.

    The optimal policy's steps are then log P_F(c_l | c_<l) = log F(s_l) − log F(s_{l-1})."""
    codes = np.asarray(codes)
    log_r = beta * np.asarray(log_reward, dtype=np.float64)
    n, steps = codes.shape
    out = np.empty((n, steps + 1))
    for level in range(steps + 1):  # L'+1 levels, each one vectorised over the items
        _, group = np.unique(codes[:, :level], axis=0, return_inverse=True) if level else (None, np.zeros(n, int))
        group = group.reshape(-1)
        top = np.full(group.max() + 1, -np.inf)
        np.maximum.at(top, group, log_r)
        sums = np.zeros_like(top)
        np.add.at(sums, group, np.exp(log_r - top[group]))
        out[:, level] = (top + np.log(sums))[group]
    return out


__all__ = [
    "GFlowGRConfig", "Objective", "Reduction", "combined_loss", "db_loss", "prefix_log_flows", "tb_loss",
    "terminal_index",
]
