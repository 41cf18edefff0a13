r"""Exponential reward-weighted SFT: imitate the logged clicks, weighted by exp(reward / λ).

Objective over the positions t that hold a target with an observed reward r_t (padding and
unrated targets are left out)::

    normalize = "batch":   L = −Σ_t w_t log π(y_t | x_t) / Σ_t w_t
    normalize = "none":    L = −(1/N) Σ_t w_t log π(y_t | x_t)

    with  w_t = exp((min(r_t, r_max) − r_max) / λ)

This is the weighted-regression form of the KL-regularised policy improvement
π*(y|x) ∝ π_β(y|x) exp(r/λ) (Peters & Schaal 2007, RWR; Peng et al. 2019, AWR without a baseline).
λ sets the temperature: λ → ∞ gives every rated target weight 1, i.e. BC on the rated targets;
small λ concentrates the fit on the best-rated clicks.

The shift by r_max (the top of the rating scale; rewards above it are clipped to it) keeps exp()
from overflowing for small λ. In the self-normalised "batch" form any shift cancels, so there the
weights are computed as a softmax over the batch's rated targets (shift by the batch's largest
reward), which also cannot underflow to 0/0. The "none" form is the raw weighted objective up to the
constant factor exp(−r_max/λ).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..config import Config, knob
from ..errors import ConfigError
from ..models.policy import SequencePolicy
from ..seeding import SeedTree
from .bc import token_nll
from .data import PostTrainData
from .loop import TrainConfig, train_copy


@dataclass(frozen=True)
class ExpRSFTConfig(Config):
    """Exponential reward-weighted SFT: weights w = exp((r − r_max)/λ)."""

    name: Literal["exp-rsft"] = knob("exp-rsft", "method name")
    lam: float = knob(1.0, "temperature λ of the weights exp(r/λ); large λ approaches BC", gt=0.0)
    r_max: float = knob(5.0, "top of the reward scale: the shift that keeps exp(r/λ) finite")
    normalize: Literal["batch", "none"] = knob(
        "batch", "'batch': divide by the sum of weights; 'none': mean of w·nll over rated targets"
    )


CONFIG = ExpRSFTConfig


def exp_rsft_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    lam: float,
    r_max: float = 5.0,
    normalize: Literal["batch", "none"] = "batch",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reward-weighted NLL (see the module docstring) over positions with ``mask`` and a finite reward.

    ``logits`` ``(..., V)``; ``targets``, ``rewards``, ``mask`` ``(...)``. Metrics (0-dim detached
    tensors): ``nll`` (unweighted mean NLL, comparable with BC), ``ess`` (effective sample size
    (Σw)²/Σw² of the weights), ``ess_frac`` (ess / rated targets), ``mean_w`` (mean of
    w = exp((r − r_max)/λ)), ``n`` (rated targets).
    """
    if not lam > 0:
        raise ConfigError(f"lam = {lam!r} is out of range: must be > 0")
    if normalize not in ("batch", "none"):
        raise ConfigError(f"normalize = {normalize!r} is not allowed: must be one of 'batch', 'none'")
    nll = token_nll(logits, targets)
    r = rewards.float()
    valid = mask & torch.isfinite(r)
    n = valid.float().sum()
    # Log-weights; NaN rewards are replaced before any arithmetic so no NaN reaches the graph.
    a = torch.where(valid, (torch.clamp(torch.nan_to_num(r), max=r_max) - r_max) / lam, -torch.inf)
    a_top = a.max()
    a_top = torch.where(torch.isfinite(a_top), a_top, torch.zeros_like(a_top))  # no rated target: -inf
    w_rel = torch.exp(a - a_top)  # weights divided by the largest one: in (0, 1], 0 where invalid
    if normalize == "batch":
        loss = (w_rel * nll).sum() / w_rel.sum().clamp(min=1e-30)
    else:
        loss = (torch.exp(a) * nll).sum() / n.clamp(min=1.0)
    with torch.no_grad():
        ess = w_rel.sum() ** 2 / (w_rel**2).sum().clamp(min=1e-30)
        nll_mean = (nll * valid).sum() / n.clamp(min=1.0)
        metrics = {
            "nll": nll_mean,
            "ess": ess,
            "ess_frac": ess / n.clamp(min=1.0),
            "mean_w": torch.exp(a).sum() / n.clamp(min=1.0),
            "n": n,
        }
    return loss, metrics


def train(
    policy_ref: SequencePolicy,
    data: PostTrainData,
    cfg: ExpRSFTConfig,
    train_cfg: TrainConfig,
    seed: SeedTree,
    progress: bool = True,
) -> SequencePolicy:
    """A copy of ``policy_ref`` fine-tuned by exponential reward-weighted SFT on the training clicks."""

    def loss_fn(logits, batch):  # noqa: ANN001, ANN202
        return exp_rsft_loss(logits, batch.targets, batch.rewards, batch.mask, cfg.lam, cfg.r_max, cfg.normalize)

    return train_copy(policy_ref, data, loss_fn, train_cfg, seed, progress, cfg.name)


__all__ = ["ExpRSFTConfig", "CONFIG", "exp_rsft_loss", "train"]
