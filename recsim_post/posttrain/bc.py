r"""Behaviour cloning (BC / SFT): imitate the logged clicks.

Objective, over the N non-padding positions t of a batch of windows (x_t = clicks before t,
y_t = the click at t)::

    L_BC = −(1/N) Σ_t log π(y_t | x_t)

This is next-item cross-entropy: it fits whatever the logging policy and the users did together,
trend-following and noise included. It also pre-trains π_ref for every other method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..config import Config, knob
from ..models.policy import SequencePolicy
from ..seeding import SeedTree
from .data import PostTrainData
from .loop import TrainConfig, train_copy


@dataclass(frozen=True)
class BCConfig(Config):
    """Behaviour cloning has no knobs of its own; its optimisation lives in the TrainConfig."""

    name: Literal["bc"] = knob("bc", "method name")


CONFIG = BCConfig


def needs_reward_model(cfg: BCConfig) -> bool:
    """BC learns from the logged clicks alone."""
    return False


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−log softmax(logits)[target] per position: logits ``(..., V)``, targets ``(...)`` -> ``(...)``.

    Padding targets (PAD = −1) give a finite dummy value; callers mask them out.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    return -logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)


def bc_loss(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-item NLL over the positions where ``mask`` is True.

    ``logits`` ``(..., V)``; ``targets``, ``mask`` ``(...)``. Metrics: ``nll`` (= the loss),
    ``acc`` (top-1 accuracy) and ``n`` (positions counted); 0-dim detached tensors.
    """
    nll = token_nll(logits, targets)
    m = mask.float()
    n = m.sum()
    loss = (nll * m).sum() / n.clamp(min=1.0)
    with torch.no_grad():
        acc = ((logits.argmax(-1) == targets).float() * m).sum() / n.clamp(min=1.0)
    return loss, {"nll": loss.detach(), "acc": acc, "n": n}


def train(
    policy_ref: SequencePolicy,
    data: PostTrainData,
    cfg: BCConfig,
    train_cfg: TrainConfig,
    seed: SeedTree,
    progress: bool = True,
) -> SequencePolicy:
    """A copy of ``policy_ref`` trained by BC on the training clicks (``policy_ref`` itself is untouched)."""

    def loss_fn(logits, batch):  # noqa: ANN001, ANN202
        return bc_loss(logits, batch.targets, batch.mask)

    return train_copy(policy_ref, data, loss_fn, train_cfg, seed, progress, cfg.name)


__all__ = ["BCConfig", "CONFIG", "bc_loss", "needs_reward_model", "token_nll", "train"]
