r"""IPO: identity preference optimisation on pairs mined by a reward-model ensemble.

Objective (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
Preferences", eq. 17, the sampled IPO loss), averaged over the mined pairs (x, y_w, y_l)::

    L_IPO = E[ (h − 1/(2τ))² ]

    h = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) − log π_ref(y_l|x)]

A regression of the log-ratio margin onto the fixed target 1/(2τ): unlike DPO, whose −log σ(βh)
keeps pushing h up on pairs it already ranks right (and so drifts arbitrarily far from π_ref when
preferences are deterministic), IPO stops at h = 1/(2τ). τ is the regularisation strength: large
τ keeps π close to π_ref. At h = 0 the loss is 1/(4τ²).

Pairs come from pairs.py, exactly as for DPO (offline or online, same confidence rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..config import knob
from ..errors import ConfigError
from ..models.load import TrainedPolicy
from ..seeding import SeedTree
from .data import PostTrainData
from .loop import TrainConfig
from .pairs import PairMiningConfig, log_ratio_margin, masked_mean, preference_metrics, preference_train


@dataclass(frozen=True)
class IPOConfig(PairMiningConfig):
    """IPO: (h − 1/(2τ))² on pairs mined with a reward-model ensemble."""

    name: Literal["ipo"] = knob("ipo", "method name")
    tau: float = knob(0.1, "τ: regularisation strength; the target log-ratio margin is 1/(2τ) (TRL default 0.1)", ge=1e-3, le=1000.0)


CONFIG = IPOConfig


def needs_reward_model(cfg: IPOConfig) -> bool:
    """IPO mines its pairs with the reward-model ensemble."""
    return True


def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    mask: torch.Tensor,
    tau: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean of (h − 1/(2τ))² over the pairs where ``mask`` is True.

    Inputs are log π(y_w|x), log π(y_l|x), log π_ref(y_w|x), log π_ref(y_l|x), all ``(...)``.
    Metrics: see :func:`~recsim_post.posttrain.pairs.preference_metrics`.
    """
    if not tau > 0:
        raise ConfigError(f"tau = {tau!r} is out of range: must be > 0")
    h, chosen, rejected = log_ratio_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    per_pair = (h - 1.0 / (2.0 * tau)) ** 2
    loss = masked_mean(per_pair, mask)
    return loss, preference_metrics(h, chosen, rejected, policy_chosen, policy_rejected, mask)


def train(
    policy_ref: TrainedPolicy,
    data: PostTrainData,
    cfg: IPOConfig,
    train_cfg: TrainConfig,
    seed: SeedTree,
    progress: bool = True,
) -> TrainedPolicy:
    """A copy of ``policy_ref`` fine-tuned by IPO on pairs mined with ``data.reward_model``."""

    def pair_loss(pc, pr, rc, rr, mask):  # noqa: ANN001, ANN202
        return ipo_loss(pc, pr, rc, rr, mask, cfg.tau)

    return preference_train(policy_ref, data, cfg, train_cfg, seed, progress, pair_loss)


TOKEN_LEVEL = True
"""Pairs need only log π(y|x): it trains token policies too."""


__all__ = ["CONFIG", "TOKEN_LEVEL", "IPOConfig", "ipo_loss", "needs_reward_model", "train"]
