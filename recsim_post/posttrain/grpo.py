r"""GRPO: group-relative policy optimisation on one-step recommendation decisions.

DeepSeekMath (Shao et al. 2024), §4.1, eq. 3, with one-token "outputs" (each recommendation is a
single decision, so the 1/|o_i| Σ_t of the paper is a single term). Once per batch, for every
context x (each non-padding position of the training windows), with π_old = the current policy::

    y_1 … y_G ~ π_old(· | x)                          a group of G items, drawn with replacement
    r_i = R̂(x, y_i)                                   reward-model ensemble mean
    Â_i = (r_i − mean(r)) / (std(r) + eps)            standardised within the group (std with
                                                      Bessel's correction, as TRL's GrpoTrainer);
                                                      Â_i = 0 when all r_i are equal

then ``grpo_epochs`` (the paper's μ) gradient steps on::

    L = −E_x (1/G) Σ_i [ min(ρ_i Â_i, clip(ρ_i, 1 − ε, 1 + ε) Â_i) − β · D_KL ]
    with ρ_i = π_θ(y_i|x) / π_old(y_i|x)

``kl_estimator = "k3"`` takes D_KL per sample as in the paper (eq. 4):
π_ref(y_i|x)/π_θ(y_i|x) − log(π_ref(y_i|x)/π_θ(y_i|x)) − 1; ``"exact"`` (the default) uses the
exact KL(π_θ(·|x) ‖ π_ref(·|x)) summed over the catalogue, which the small catalogue makes cheap
and which has no sampling noise. ``scale_rewards = "none"`` drops the division by the group std
(the "Dr. GRPO" variant of Liu et al. 2025, "Understanding R1-Zero-Like Training", §3.1).

GRPO needs no value model: the group mean is the baseline. If every reward in a group is equal the
group carries no signal: its advantages are 0 and its policy-gradient contribution is exactly 0.
Actions are sampled without dropout; with ``disable_dropout`` (the default) the updates run without
it too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..config import Config, knob
from ..errors import ConfigError
from ..models.policy import SequencePolicy
from ..seeding import SeedTree
from .data import Batch, PostTrainData
from .reward_model import check_reward_model
from .loop import TrainConfig, train_copy
from .policy_gradient import (
    FrozenReference,
    Sampler,
    clipped_surrogate,
    entropy,
    exact_kl,
    k3_kl,
    masked_mean,
    on_policy_samples,
)


@dataclass(frozen=True)
class GRPOConfig(Config):
    """GRPO with group-standardised advantages, a clipped ratio and a KL penalty to π_ref."""

    name: Literal["grpo"] = knob("grpo", "method name")
    group_size: int = knob(8, "G: items sampled per context from π_old", ge=2, le=4096)
    clip_eps: float = knob(0.2, "clip range ε of the ratio π_θ/π_old", gt=0.0, lt=1.0)
    kl_coef: float = knob(0.04, "β: weight of the KL to π_ref (the paper uses 0.04)", ge=0.0, le=100.0)
    kl_estimator: Literal["exact", "k3"] = knob(
        "exact", "'exact': KL summed over the catalogue; 'k3': the paper's per-sample estimator"
    )
    scale_rewards: Literal["group", "none"] = knob(
        "group", "'group': Â = (r − mean)/(std + eps); 'none': Â = r − mean (Dr. GRPO)"
    )
    std_eps: float = knob(1e-4, "eps added to the group std", gt=0.0, le=1.0)
    grpo_epochs: int = knob(1, "gradient steps on each batch of groups (the paper's μ)", ge=1, le=100)
    disable_dropout: bool = knob(True, "run the updates without dropout, so the first one has ρ = 1 exactly (as TRL)")


CONFIG = GRPOConfig


def needs_reward_model(cfg: GRPOConfig) -> bool:
    return True


def group_advantages(
    rewards: torch.Tensor, scale: Literal["group", "none"] = "group", eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantages over the last axis: ``(..., G) -> (..., G)``.

    Â = (r − mean) / (std + eps), std with Bessel's correction (G − 1); ``scale = "none"`` gives
    r − mean. Groups whose rewards are all equal get exactly 0 (not a rounding residue / eps).
    """
    if rewards.shape[-1] < 2:
        raise ConfigError(f"group_size = {rewards.shape[-1]} is out of range: must be >= 2")
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    adv = centred / (rewards.std(dim=-1, keepdim=True) + eps) if scale == "group" else centred
    flat = (rewards.amax(dim=-1, keepdim=True) == rewards.amin(dim=-1, keepdim=True))
    return torch.where(flat, torch.zeros_like(adv), adv)


def grpo_loss(
    logits: torch.Tensor,
    actions: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    ref_logits: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    kl_coef: float = 0.04,
    kl_estimator: Literal["exact", "k3"] = "exact",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO objective of the module docstring over the contexts where ``mask`` is True.

    ``logits``, ``ref_logits`` ``(..., V)``; ``actions`` (int64), ``old_logp``, ``advantages``
    ``(..., G)``; ``mask`` ``(...)``. Metrics (0-dim, detached): ``pg_loss``, ``kl_ref`` (the KL
    term as estimated), ``kl_exact`` (exact KL(π_θ ‖ π_ref)), ``entropy``, ``clip_frac``,
    ``approx_kl`` (to π_old), ``ratio``, ``n`` (contexts).
    """
    if kl_coef < 0:
        raise ConfigError(f"kl_coef = {kl_coef!r} is out of range: must be >= 0")
    if kl_estimator not in ("exact", "k3"):
        raise ConfigError(f"kl_estimator = {kl_estimator!r} is not allowed: must be one of 'exact', 'k3'")
    logp_all = F.log_softmax(logits.float(), dim=-1)
    logp = logp_all.gather(-1, actions)  # (..., G)
    sample_mask = mask.unsqueeze(-1).expand_as(logp)
    pg, metrics = clipped_surrogate(logp, old_logp, advantages, sample_mask, clip_eps)
    kl_full = exact_kl(logp_all, ref_logits)
    if kl_estimator == "exact":
        kl = masked_mean(kl_full, mask)
    else:
        ref_logp = F.log_softmax(ref_logits.float(), dim=-1).gather(-1, actions)
        kl = masked_mean(k3_kl(logp, ref_logp), sample_mask)
    loss = pg + kl_coef * kl
    with torch.no_grad():
        metrics.update(
            pg_loss=pg.detach(),
            kl_ref=kl.detach(),
            kl_exact=masked_mean(kl_full, mask),
            entropy=masked_mean(entropy(logp_all), mask),
            n=mask.float().sum(),
        )
    return loss, metrics


def train(
    policy_ref: SequencePolicy,
    data: PostTrainData,
    cfg: GRPOConfig,
    train_cfg: TrainConfig,
    seed: SeedTree,
    progress: bool = True,
) -> SequencePolicy:
    """A copy of ``policy_ref`` fine-tuned by GRPO against ``data.reward_model`` (required)."""
    reward_model = check_reward_model("method 'grpo'", data)
    ref = FrozenReference(policy_ref)
    sampler = Sampler(seed.integer("actions"))

    def prepare(model, batch: Batch) -> Batch:  # noqa: ANN001
        _, actions, old_logp, rewards_all = on_policy_samples(  # actions, old_logp: (B, L, G)
            model, batch.inputs, cfg.group_size, sampler, reward_model, cfg.disable_dropout
        )
        rewards = rewards_all.gather(-1, actions)
        adv = group_advantages(rewards, cfg.scale_rewards, cfg.std_eps)
        extra = dict(
            actions=actions, old_logp=old_logp, advantages=adv, ref_logits=ref.logits(batch.inputs),
            reward=rewards.mean(dim=-1), reward_std=rewards.std(dim=-1),
            flat=(rewards.amax(dim=-1) == rewards.amin(dim=-1)),
        )
        return dataclasses.replace(batch, extra=extra)

    def loss_fn(logits, batch: Batch):  # noqa: ANN001, ANN202
        e = batch.extra
        loss, metrics = grpo_loss(
            logits, e["actions"], e["old_logp"], e["advantages"], e["ref_logits"], batch.mask,
            cfg.clip_eps, cfg.kl_coef, cfg.kl_estimator,
        )
        with torch.no_grad():
            metrics.update(
                reward=masked_mean(e["reward"], batch.mask),
                reward_std=masked_mean(e["reward_std"], batch.mask),
                flat_groups=masked_mean(e["flat"].float(), batch.mask),
            )
        return loss, metrics

    return train_copy(
        policy_ref, data, loss_fn, train_cfg, seed, progress, cfg.name, prepare=prepare, inner_steps=cfg.grpo_epochs
    )


__all__ = ["GRPOConfig", "CONFIG", "group_advantages", "grpo_loss", "needs_reward_model", "train"]
