r"""DPO: direct preference optimisation on pairs mined by a reward-model ensemble.

Objective (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model", eq. 7), averaged over the mined pairs (x, y_w, y_l)::

    L_DPO = −E[ log σ(β · h) ]

    h = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) − log π_ref(y_l|x)]

It is the Bradley-Terry likelihood of the preference y_w ≻ y_l under the implicit reward
β log π(y|x)/π_ref(y|x), whose maximiser is the KL(β)-regularised optimum π ∝ π_ref exp(r/β). β
sets how far π may move from the frozen reference π_ref (small β: far). At h = 0 (π = π_ref) the
loss is log 2, and it keeps pushing h up for ever on pairs it already ranks right (IPO's objection).

Pairs come from pairs.py: offline (the logged click plus samples from π_ref, the best and worst by
the ensemble mean, kept when the ensemble's confidence rule holds) or online (two samples from the
current π each batch, "online DPO").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..config import knob
from ..errors import ConfigError
from ..models.load import TrainedPolicy
from ..seeding import SeedTree
from .data import PostTrainData
from .loop import TrainConfig
from .pairs import PairMiningConfig, log_ratio_margin, masked_mean, preference_metrics, preference_train


@dataclass(frozen=True)
class DPOConfig(PairMiningConfig):
    """DPO: −log σ(β h) on pairs mined with a reward-model ensemble."""

    name: Literal["dpo"] = knob("dpo", "method name")
    beta: float = knob(0.1, "β: weight of the KL pull towards π_ref (larger stays closer; 0.1 as in TRL)", gt=0.0, le=1000.0)


CONFIG = DPOConfig


def needs_reward_model(cfg: DPOConfig) -> bool:
    """DPO mines its pairs with the reward-model ensemble."""
    return True


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean of −log σ(β h) over the pairs where ``mask`` is True.

    Inputs are log π(y_w|x), log π(y_l|x), log π_ref(y_w|x), log π_ref(y_l|x), all ``(...)``.
    Metrics: see :func:`~recsim_post.posttrain.pairs.preference_metrics`.
    """
    if not beta > 0:
        raise ConfigError(f"beta = {beta!r} is out of range: must be > 0")
    h, chosen, rejected = log_ratio_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    per_pair = -F.logsigmoid(beta * h)  # = softplus(−βh), stable for any h
    loss = masked_mean(per_pair, mask)
    return loss, preference_metrics(h, chosen, rejected, policy_chosen, policy_rejected, mask)


def train(
    policy_ref: TrainedPolicy,
    data: PostTrainData,
    cfg: DPOConfig,
    train_cfg: TrainConfig,
    seed: SeedTree,
    progress: bool = True,
) -> TrainedPolicy:
    """A copy of ``policy_ref`` fine-tuned by DPO on pairs mined with ``data.reward_model``."""

    def pair_loss(pc, pr, rc, rr, mask):  # noqa: ANN001, ANN202
        return dpo_loss(pc, pr, rc, rr, mask, cfg.beta)

    return preference_train(policy_ref, data, cfg, train_cfg, seed, progress, pair_loss)


TOKEN_LEVEL = True
"""Pairs need only log π(y|x): it trains token policies too."""


__all__ = ["CONFIG", "TOKEN_LEVEL", "DPOConfig", "dpo_loss", "needs_reward_model", "train"]
