r"""Linear reward-weighted SFT: imitate the logged clicks, each weighted by its observed reward.

Objective over the positions t that hold a target with an observed reward r_t (padding and
unrated targets are left out), with w_t = r_t::

    normalize = "batch":   L = −Σ_t w_t log π(y_t | x_t) / Σ_t w_t      (self-normalised per batch)
    normalize = "none":    L = −(1/N) Σ_t w_t log π(y_t | x_t)          (N = rated targets)

The minimiser per context is the reward-reweighted click distribution
π*(y|x) ∝ π_β(y|x) · E[r | x, y] (π_β: the logging policy and the users together). This is the
EM view of policy search with the reward treated as an improper probability of "success" (Dayan &
Hinton 1997, "Using expectation-maximization for reinforcement learning", Neural Computation 9(2)):
the M-step is a weighted maximum-likelihood fit with weights r, i.e. reward-weighted regression
(Peters & Schaal 2007, ICML) with the identity utility transform instead of the exponential one
(see exp_rsft.py). There is no temperature: a rating-1 click keeps 1/5 of a rating-5 click's
weight, so linear weighting moves π much less than exp-RSFT with a small λ does. (As with every
unnormalised weighting, a model that shares parameters across contexts also gives contexts whose
clicks are rated high overall more say in the fit; exp_rsft.py's "context" variant discusses this.)

Weights must be non-negative: with w < 0 the term +|w| log π(y|x) is unbounded below (the model
would drive π(y|x) → 0 without limit), so a negative observed reward is an error, not a weight.
The observed rewards here are 1-5 ratings, always positive.
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
class LinearRSFTConfig(Config):
    """Linear reward-weighted SFT: weights w = r (the observed rating)."""

    name: Literal["linear-rsft"] = knob("linear-rsft", "method name")
    normalize: Literal["batch", "none"] = knob(
        "batch", "'batch': divide by the batch's sum of weights Σr; 'none': mean of r·nll over rated targets"
    )


CONFIG = LinearRSFTConfig


def needs_reward_model(cfg: LinearRSFTConfig) -> bool:
    """Linear RSFT weights the logged clicks by their own observed rewards: no reward model."""
    return False


def linear_rsft_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    normalize: Literal["batch", "none"] = "batch",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reward-weighted NLL with w = r (module docstring) over positions with ``mask`` and a finite reward.

    ``logits`` ``(..., V)``; ``targets``, ``rewards``, ``mask`` ``(...)``. A negative reward at a
    counted position raises ConfigError (it would make the loss unbounded below). A batch whose
    weights sum to zero gives a zero loss with zero gradient.

    Metrics (0-dim detached tensors): ``nll`` (unweighted mean NLL over rated targets, comparable
    with BC), ``weighted_nll`` (Σw·nll/Σw, whatever ``normalize``), ``mean_w`` (mean reward),
    ``ess`` ((Σw)²/Σw²), ``ess_frac`` (ess / rated targets), ``n`` (rated targets).
    """
    return linear_rsft_nll_loss(token_nll(logits, targets), rewards, mask, normalize)


def linear_rsft_nll_loss(
    nll: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    normalize: Literal["batch", "none"] = "batch",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`linear_rsft_loss` from the targets' ``nll`` = −log π(y_t|x_t) ``(...)`` (exact or sampled)."""
    if normalize not in ("batch", "none"):
        raise ConfigError(f"normalize = {normalize!r} is not allowed: must be one of 'batch', 'none'")
    r = rewards.float()
    valid = mask & torch.isfinite(r)
    w = torch.where(valid, torch.nan_to_num(r), torch.zeros_like(r))  # NaN never reaches the graph
    if bool((w < 0).any()):
        raise ConfigError(
            f"linear-rsft needs rewards >= 0 (weights w = r), got a reward of {w.min().item():g}; "
            "shift the rewards or use exp-rsft"
        )
    n = valid.float().sum()
    w_sum = w.sum()
    weighted = (w * nll).sum()
    if normalize == "batch":
        loss = weighted / w_sum.clamp(min=1e-30)
    else:
        loss = weighted / n.clamp(min=1.0)
    with torch.no_grad():
        ess = w_sum**2 / (w**2).sum().clamp(min=1e-30)
        metrics = {
            "nll": (nll * valid).sum() / n.clamp(min=1.0),
            "weighted_nll": weighted / w_sum.clamp(min=1e-30),
            "mean_w": w_sum / n.clamp(min=1.0),
            "ess": ess,
            "ess_frac": ess / n.clamp(min=1.0),
            "n": n,
        }
    return loss, metrics


def train(
    policy_ref: SequencePolicy,
    data: PostTrainData,
    cfg: LinearRSFTConfig,
    train_cfg: TrainConfig,
    seed: SeedTree,
    progress: bool = True,
) -> SequencePolicy:
    """A copy of ``policy_ref`` fine-tuned by linear reward-weighted SFT on the training clicks."""

    def loss_fn(nll, batch):  # noqa: ANN001, ANN202 - nll = −log π(y_t | x_t), exact or sampled
        return linear_rsft_nll_loss(nll, batch.rewards, batch.mask, cfg.normalize)

    return train_copy(policy_ref, data, loss_fn, train_cfg, seed, progress, cfg.name, on="nll")


SAMPLED_SOFTMAX = True
"""Linear RSFT's loss reads only −log π(y|x): ``[finetune] loss = "sampled"`` may estimate it."""


__all__ = ["LinearRSFTConfig", "CONFIG", "SAMPLED_SOFTMAX", "linear_rsft_loss", "linear_rsft_nll_loss",
           "needs_reward_model", "train"]
