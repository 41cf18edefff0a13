r"""Behaviour cloning (BC / SFT): imitate the logged clicks.

Objective, over the N non-padding positions t of a batch of windows (x_t = clicks before t,
y_t = the click at t)::

    L_BC = −(1/N) Σ_t log π(y_t | x_t)

This is next-item cross-entropy: it fits whatever the logging policy and the users did together,
trend-following and noise included. It also pre-trains π_ref for every other method.

On a token policy (``sft-token``) the same objective reads log π(y|x) = Σ_l log π(c_l(y) | x, c_<l(y)),
the sum of the item's semantic-ID token log-probabilities (teacher-forced, invalid prefixes masked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..config import Config, knob
from ..models.load import TrainedPolicy
from ..models.token import is_token_model
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


def bc_nll_loss(nll: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean of ``nll`` = −log π(y_t|x_t) ``(...)`` over the positions where ``mask`` is True.
    Metrics: ``nll`` (= the loss) and ``n`` (positions counted)."""
    m = mask.float()
    n = m.sum()
    loss = torch.where(mask, nll, torch.zeros_like(nll)).sum() / n.clamp(min=1.0)
    return loss, {"nll": loss.detach(), "n": n}


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
    policy_ref: TrainedPolicy,
    data: PostTrainData,
    cfg: BCConfig,
    train_cfg: TrainConfig,
    seed: SeedTree,
    progress: bool = True,
) -> TrainedPolicy:
    """A copy of ``policy_ref`` trained by BC on the training clicks (``policy_ref`` itself is untouched).
    With ``train_cfg.loss = "sampled"`` log π(y_t|x_t) is the sampled softmax's estimate
    (:mod:`~recsim_post.posttrain.sampled`); its history reports ``sampled_nll`` instead of ``nll`` and ``acc``
    (both would need the logits of the whole catalogue)."""
    if train_cfg.loss == "sampled":

        def sampled_loss(nll, batch):  # noqa: ANN001, ANN202
            loss, metrics = bc_nll_loss(nll, batch.mask)
            return loss, {"sampled_nll": metrics["nll"], "n": metrics["n"]}

        return train_copy(policy_ref, data, sampled_loss, train_cfg, seed, progress, cfg.name, on="sampled")
    if is_token_model(policy_ref.model):  # log π(y|x) from the token head: no softmax over the catalogue

        def logp_loss(logp, batch):  # noqa: ANN001, ANN202
            return bc_nll_loss(-logp(batch.targets), batch.mask)

        return train_copy(policy_ref, data, logp_loss, train_cfg, seed, progress, cfg.name, on="logp")

    def loss_fn(logits, batch):  # noqa: ANN001, ANN202
        return bc_loss(logits, batch.targets, batch.mask)

    return train_copy(policy_ref, data, loss_fn, train_cfg, seed, progress, cfg.name)


TOKEN_LEVEL = True
"""BC reads only log π(y|x): it trains token policies too (``sft-token``)."""

SAMPLED_SOFTMAX = True
"""BC's loss is the next-item cross-entropy: ``[finetune] loss = "sampled"`` may replace it."""


__all__ = ["BCConfig", "CONFIG", "SAMPLED_SOFTMAX", "TOKEN_LEVEL", "bc_loss", "bc_nll_loss", "needs_reward_model", "token_nll", "train"]
