r"""PPO with a KL penalty to π_ref, on one-step recommendation decisions (a contextual bandit).

Contexts x are every non-padding position of the training windows (the clicks before it). Once per
batch, with π_old = the current policy (no gradient)::

    y ~ π_old(· | x)                          one sampled item per context (seeded generator)
    R̂(x, y) = mean over the reward-model ensemble of its predicted rating
    V(x)    = Σ_y π_old(y | x) R̂(x, y)        exact over the catalogue
    A       = R̂(x, y) − V(x)                  (optionally standardised over the batch)

then ``ppo_epochs`` gradient steps on (Schulman et al. 2017, eq. 7; the KL penalty to π_ref as in
RLHF, Ouyang et al. 2022, eq. 2)::

    L = −E_x[ min(ρ A, clip(ρ, 1 − ε, 1 + ε) A) ] + β_KL · E_x[ KL(π_θ(·|x) ‖ π_ref(·|x)) ]
    with ρ = π_θ(y|x) / π_old(y|x) and the KL an exact sum over the catalogue.

The KL enters the loss as an exact sum (its gradient is exact), not as the per-sample reward
penalty −β log(π/π_ref)(y|x) of Ouyang et al.; the two have the same expectation under π.

Because every episode is one step, the return is the immediate reward and the value of a context is
an expectation over a finite catalogue, so V(x) is computed exactly from π_old and R̂: no learned
critic, no GAE, no value loss. ``baseline = "none"`` uses A = R̂ (REINFORCE without a baseline,
for comparison). Actions are sampled without dropout and, with ``disable_dropout`` (the default),
the updates run without it too, so the first of the ``ppo_epochs`` steps has ρ = 1 exactly and is a
plain policy-gradient step.

The reward model is fitted on the public logs; the truth is never seen here. What PPO maximises is
R̂, so its ground-truth score measures how far R̂ can be trusted off the logged support.
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
    masked_mean,
    on_policy_samples,
)


@dataclass(frozen=True)
class PPOConfig(Config):
    """PPO-clip with an exact KL penalty to π_ref and the exact expected reward as baseline."""

    name: Literal["ppo"] = knob("ppo", "method name")
    clip_eps: float = knob(0.2, "clip range ε of the ratio π_θ/π_old", gt=0.0, lt=1.0)
    kl_coef: float = knob(0.05, "β_KL: weight of KL(π_θ ‖ π_ref) per context, in reward units", ge=0.0, le=100.0)
    ppo_epochs: int = knob(4, "gradient steps on each batch of samples (PPO's K epochs)", ge=1, le=100)
    disable_dropout: bool = knob(True, "run the updates without dropout, so the first one has ρ = 1 exactly (as TRL)")
    baseline: Literal["exact", "none"] = knob(
        "exact", "'exact': A = R̂ − Σ_y π_old(y|x) R̂(x,y); 'none': A = R̂ (no baseline)"
    )
    advantage_norm: Literal["none", "batch"] = knob(
        "none", "'batch': standardise A over the batch's contexts (then β_KL is no longer in reward units)"
    )


CONFIG = PPOConfig


def needs_reward_model(cfg: PPOConfig) -> bool:
    return True


def ppo_loss(
    logits: torch.Tensor,
    actions: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    ref_logits: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    kl_coef: float = 0.05,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO objective of the module docstring over the contexts where ``mask`` is True.

    ``logits``, ``ref_logits`` ``(..., V)``; ``actions`` (int64), ``old_logp``, ``advantages``,
    ``mask`` ``(...)``. Metrics (0-dim, detached): ``pg_loss``, ``kl_ref`` (mean exact
    KL(π_θ ‖ π_ref)), ``entropy`` (of π_θ), ``clip_frac``, ``approx_kl`` (to π_old), ``ratio``, ``n``.
    """
    if kl_coef < 0:
        raise ConfigError(f"kl_coef = {kl_coef!r} is out of range: must be >= 0")
    logp_all = F.log_softmax(logits.float(), dim=-1)
    logp = logp_all.gather(-1, actions.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    pg, metrics = clipped_surrogate(logp, old_logp, advantages, mask, clip_eps)
    kl = masked_mean(exact_kl(logp_all, ref_logits), mask)
    loss = pg + kl_coef * kl
    with torch.no_grad():
        metrics.update(
            pg_loss=pg.detach(),
            kl_ref=kl.detach(),
            entropy=masked_mean(entropy(logp_all), mask),
            n=mask.float().sum(),
        )
    return loss, metrics


def advantages(
    rewards_all: torch.Tensor,
    old_logits_: torch.Tensor,
    actions: torch.Tensor,
    mask: torch.Tensor,
    baseline: Literal["exact", "none"] = "exact",
    norm: Literal["none", "batch"] = "none",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R̂(x, y), V(x), A) per context from the reward table ``(..., V)`` and π_old's logits ``(..., V)``.

    V(x) = Σ_y π_old(y|x) R̂(x, y) exactly; A = R̂ − V (or R̂ when ``baseline = "none"``), and with
    ``norm = "batch"`` standardised over the masked contexts ((A − mean)/(std + 1e-8)).
    """
    reward = rewards_all.gather(-1, actions.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    value = (torch.softmax(old_logits_.float(), dim=-1) * rewards_all).sum(dim=-1)
    adv = reward - value if baseline == "exact" else reward.clone()
    if norm == "batch":
        mean = masked_mean(adv, mask)
        std = masked_mean((adv - mean) ** 2, mask).sqrt()
        adv = (adv - mean) / (std + 1e-8)
    return reward, value, torch.where(mask, adv, torch.zeros_like(adv))


def train(
    policy_ref: SequencePolicy,
    data: PostTrainData,
    cfg: PPOConfig,
    train_cfg: TrainConfig,
    seed: SeedTree,
    progress: bool = True,
) -> SequencePolicy:
    """A copy of ``policy_ref`` fine-tuned by PPO against ``data.reward_model`` (required)."""
    reward_model = check_reward_model("method 'ppo'", data)
    ref = FrozenReference(policy_ref)
    sampler = Sampler(seed.integer("actions"))

    def prepare(model, batch: Batch) -> Batch:  # noqa: ANN001
        logits, actions, old_logp, rewards_all = on_policy_samples(
            model, batch.inputs, 1, sampler, reward_model, cfg.disable_dropout
        )
        actions, old_logp = actions.squeeze(-1), old_logp.squeeze(-1)
        reward, value, adv = advantages(rewards_all, logits, actions, batch.mask, cfg.baseline, cfg.advantage_norm)
        extra = dict(
            actions=actions, old_logp=old_logp, advantages=adv, ref_logits=ref.logits(batch.inputs),
            reward=reward, value=value,
        )
        return dataclasses.replace(batch, extra=extra)

    def loss_fn(logits, batch: Batch):  # noqa: ANN001, ANN202
        e = batch.extra
        loss, metrics = ppo_loss(
            logits, e["actions"], e["old_logp"], e["advantages"], e["ref_logits"], batch.mask, cfg.clip_eps, cfg.kl_coef
        )
        metrics.update(
            reward=masked_mean(e["reward"], batch.mask),
            value=masked_mean(e["value"], batch.mask),
            advantage=masked_mean(e["advantages"], batch.mask),
        )
        return loss, metrics

    return train_copy(
        policy_ref, data, loss_fn, train_cfg, seed, progress, cfg.name, prepare=prepare, inner_steps=cfg.ppo_epochs
    )


__all__ = ["PPOConfig", "CONFIG", "advantages", "needs_reward_model", "ppo_loss", "train"]
