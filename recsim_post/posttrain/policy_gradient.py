r"""Plumbing shared by the on-policy methods (PPO, GRPO): the clipped surrogate, KL terms, sampling.

Each recommendation is a one-step decision (a contextual bandit): the context x is the history
before a position, the action y is one item of the catalogue, the reward R̂(x, y) comes from a
reward model fitted on the public logs. The catalogue is small enough to sum over, so the KL
divergences and entropies here are exact sums over all items, not sampled estimates.

Clipped surrogate (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7), per
sampled action with ρ = π_θ(y|x) / π_old(y|x) and advantage A::

    L_CLIP = −E[ min(ρ A, clip(ρ, 1 − ε, 1 + ε) A) ]

Exact KL to the reference policy (the penalty of RLHF, Ouyang et al. 2022 eq. 2)::

    KL(π ‖ π_ref)(x) = Σ_y π(y|x) (log π(y|x) − log π_ref(y|x))

and the "k3" single-sample estimator that DeepSeekMath's GRPO uses (Shao et al. 2024, eq. 4;
Schulman 2020, "Approximating KL divergence"), unbiased for KL(π ‖ π_ref) when y ~ π::

    k3(y) = π_ref(y|x)/π(y|x) − log(π_ref(y|x)/π(y|x)) − 1   (≥ 0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.device import autocast
from ..models.policy import SequencePolicy
from .data import masked_mean  # noqa: F401 - re-exported for the methods
from .reward_model import RewardModel, ensemble_mean_scores


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate loss −mean[min(ρA, clip(ρ, 1−ε, 1+ε)A)] over ``mask`` (eq. 7).

    All inputs have one shape (``logp`` carries the gradient; the others are constants).
    Metrics (0-dim, detached): ``clip_frac`` -- share of entries where the clipped term is the
    smaller one, i.e. whose gradient the clip cuts to 0; ``approx_kl`` -- mean of
    (ρ − 1) − log ρ, an estimate of KL(π_old ‖ π_θ) from the samples; ``ratio`` -- mean ρ.
    """
    if not 0.0 < clip_eps < 1.0:
        raise ConfigError(f"clip_eps = {clip_eps!r} is out of range: must be > 0 and < 1")
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = -masked_mean(torch.minimum(unclipped, clipped), mask)
    with torch.no_grad():
        metrics = {
            "clip_frac": masked_mean((clipped < unclipped).float(), mask),
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, metrics


def exact_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(π ‖ π_ref) per context, summed over the last (item) axis: ``(..., V), (..., V) -> (...)``.

    Either argument may be logits or log-probabilities (both are normalised here).
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    ref_logp = F.log_softmax(ref_logits.float(), dim=-1)
    return (logp.exp() * (logp - ref_logp)).sum(dim=-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The k3 estimator π_ref/π − log(π_ref/π) − 1 of KL(π ‖ π_ref), per sampled action (elementwise)."""
    log_r = ref_logp - logp
    return torch.exp(log_r) - log_r - 1.0


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis: ``(..., V) -> (...)``."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def sample(logits: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` actions per context drawn with replacement from softmax(logits): ``(..., V) -> (..., n)``."""
    probs = torch.softmax(logits.float(), dim=-1)
    flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), n, replacement=True, generator=generator)
    return flat.reshape(*probs.shape[:-1], n)


class Sampler:
    """A seeded generator for drawing actions, created lazily on the device the batches live on."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._gen: torch.Generator | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device).manual_seed(self.seed)
        return self._gen


class FrozenReference:
    """π_ref: a frozen eval-mode copy of the reference policy's model, never trained; moved lazily to
    the device of the inputs."""

    def __init__(self, policy_ref: SequencePolicy) -> None:
        self.model: nn.Module = policy_ref.clone().model.eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` windows -> ``(B, L, n_items)`` float32 next-item logits of π_ref."""
        if next(self.model.parameters()).device != inputs.device:
            self.model.to(inputs.device)
        with autocast(inputs.device):
            return self.model(inputs).float()


@torch.no_grad()
def old_logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """π_old's logits ``(B, L, n_items)`` for sampling, from ``model`` in eval mode (no dropout).

    The model is left in eval mode; a ``prepare`` then sets the mode of the updates that follow
    (the training loop sets train mode only once per epoch): eval mode (``disable_dropout``) makes
    the first update's ratio π_θ/π_old exactly 1, as in RLHF fine-tuning without dropout.
    """
    model.eval()
    with autocast(inputs.device):
        return model(inputs).float()


@torch.no_grad()
def on_policy_samples(
    model: nn.Module, inputs: torch.Tensor, n: int, sampler: Sampler, reward_model: RewardModel,
    disable_dropout: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What PPO and GRPO draw once per batch: π_old's logits ``(B, L, V)``, ``n`` sampled actions
    ``(B, L, n)``, their log-probabilities under π_old ``(B, L, n)`` and the reward model's mean
    R̂(x, ·) over the whole catalogue ``(B, L, V)``. Leaves the model in the mode of the updates."""
    logits = old_logits(model, inputs)  # π_old: sampled from without dropout
    model.train(not disable_dropout)
    actions = sample(logits, n, sampler.generator(inputs.device))
    old_logp = F.log_softmax(logits, dim=-1).gather(-1, actions)
    rewards_all = ensemble_mean_scores(reward_model, inputs).float()
    return logits, actions, old_logp, rewards_all


__all__ = [
    "FrozenReference",
    "on_policy_samples",
    "Sampler",
    "clipped_surrogate",
    "entropy",
    "exact_kl",
    "k3_kl",
    "masked_mean",
    "old_logits",
    "sample",
]
