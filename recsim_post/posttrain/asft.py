r"""A-SFT: advantage-weighted SFT — imitate the logged clicks, weighted by how much better than
expected their reward was.

Objective over the N positions t that hold a target with an observed reward r_t (padding and
unrated targets are left out)::

    A_t = r_t − V̂(x_t)                                  advantage over a baseline V̂
    w_t = min(exp(A_t / β), w_max)                       clipped exponential advantage weight
    normalize = "none":   L = −(1/N) Σ_t w_t log π(y_t | x_t)
    normalize = "batch":  L = −Σ_t w_t log π(y_t | x_t) / Σ_t w_t

This is the supervised policy step of Advantage-Weighted Regression (Peng et al. 2019, AWR,
Algorithm 1; weights clipped at ω_max = 20 there) and of AWAC (Nair et al. 2020), fitted offline on
logged data as in MARWIL (Wang et al. 2018, "Exponentially weighted imitation learning for batched
historical data"). Its target is π*(y|x) ∝ π_β(y|x) exp(A(x,y)/β). The baseline only rescales each
context, so within a context it changes nothing; what it changes is how contexts are weighted
against each other in a model that shares parameters across them (see exp_rsft.py on Z(x)):
without a baseline, users who rate everything high get exponentially more say. With β = λ and the
soft value V̂ = λ log Z(x) this is exactly exp-RSFT's "context" variant; the baselines here use the
plain expectation instead (which is ≤ λ log Z(x) by Jensen).

Baselines V̂ (``baseline``):

* ``"user-mean"`` — the user's mean observed rating over the training clicks, shrunk toward the
  global mean μ with a pseudo-count k: V̂_u = (Σ_{u's ratings} r + k μ) / (n_u + k); a user with no
  rating gets μ (reward_model.UserMeanReward fits it). Looked up by ``batch.users``. (It includes the target's own rating: an in-sample
  estimate, which pulls advantages toward 0 for users with few ratings; k > 0 softens that.)
* ``"reward-model"`` — V̂(x) = Σ_y π_ref(y|x) R̂(x, y), the exact expectation over the catalogue
  of the reward model's ensemble mean under the frozen π_ref. Needs a reward model.
* ``"batch-mean"`` — the mean reward of the batch's rated targets (one number per batch: it does
  not reweight contexts, it only centres the weights).

Limits: β → ∞ gives w = 1 for every rated target (when w_max ≥ 1), i.e. BC on the rated targets;
β → 0 keeps only targets with A > 0, each at weight w_max.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..config import Config, knob
from ..errors import ConfigError
from ..models.load import TrainedPolicy
from ..seeding import SeedTree
from .bc import token_nll
from .data import Batch, PostTrainData
from .exp_rsft import reference_and_reward
from .loop import TrainConfig, train_copy
from .reward_model import UserMeanReward, check_reward_model

Baseline = Literal["user-mean", "reward-model", "batch-mean"]


@dataclass(frozen=True)
class ASFTConfig(Config):
    """Advantage-weighted SFT: weights min(exp((r − V̂(x))/β), w_max)."""

    name: Literal["asft"] = knob("asft", "method name")
    beta: float = knob(
        1.0, "temperature β of the weights exp(A/β); large β approaches BC (1e12: BC to float precision)", gt=0.0, le=1e12
    )
    w_max: float = knob(20.0, "clip every weight to at most this (AWR's ω_max)", gt=0.0, le=1e6)
    baseline: Baseline = knob(
        "user-mean",
        "V̂(x): 'user-mean' (the user's mean training rating), 'reward-model' (Σ_y π_ref(y|x) R̂(x,y)), "
        "'batch-mean' (mean rating of the batch's targets)",
    )
    shrinkage: float = knob(0.0, "user-mean only: pseudo-count k pulling each user's mean toward the global mean", ge=0.0, le=1e6)
    normalize: Literal["none", "batch"] = knob(
        "none", "'none': mean of w·nll over rated targets (AWR); 'batch': divide by the batch's sum of weights"
    )


CONFIG = ASFTConfig


def needs_reward_model(cfg: ASFTConfig) -> bool:
    """Only the reward-model baseline needs R̂."""
    return cfg.baseline == "reward-model"


# ---------------------------------------------------------------- baselines V̂(x)


def user_mean_baseline(users: torch.Tensor, table: torch.Tensor, fallback: float) -> torch.Tensor:
    """``table[users]`` ``(B,)``, with ``fallback`` for ids outside the table (users never seen).

    ``table`` is indexed by user id: :class:`~recsim_post.posttrain.reward_model.UserMeanReward`'s
    ``means`` (shrunk per-user means, μ for users without a rating) and ``fallback`` its ``global_mean``.
    """
    if len(table) == 0:
        return torch.full(users.shape, fallback, dtype=torch.float32, device=users.device)
    table = table.to(users.device)
    known = (users >= 0) & (users < len(table))
    return torch.where(known, table[users.clamp(0, len(table) - 1)], torch.tensor(fallback, device=users.device))


def reward_model_baseline(ref_logits: torch.Tensor, reward_hat: torch.Tensor) -> torch.Tensor:
    """V̂(x) = Σ_y π_ref(y|x) R̂(x, y): ``(..., V)`` and ``(..., V)`` -> ``(...)``, exact over the catalogue."""
    return (torch.softmax(ref_logits.float(), dim=-1) * reward_hat.float()).sum(dim=-1)


def batch_mean_baseline(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the finite rewards at ``mask`` positions (0-dim; 0 when none is rated)."""
    r = rewards.float()
    valid = mask & torch.isfinite(r)
    return torch.where(valid, torch.nan_to_num(r), 0.0).sum() / valid.float().sum().clamp(min=1.0)


# ---------------------------------------------------------------- the loss


def asft_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    value: torch.Tensor | float,
    beta: float,
    w_max: float = 20.0,
    normalize: Literal["none", "batch"] = "none",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Advantage-weighted NLL (module docstring) over positions with ``mask`` and a finite reward.

    ``logits`` ``(..., V)``; ``targets``, ``rewards``, ``mask`` ``(...)``; ``value`` V̂(x),
    broadcastable to ``rewards`` (``(B, L)``, ``(B, 1)`` or a scalar). The weights carry no gradient
    (neither r nor V̂ depends on the policy). A batch without rated targets gives a zero loss.

    Metrics (0-dim detached tensors): ``nll`` (unweighted mean NLL over rated targets), ``mean_w``,
    ``max_w``, ``clip_frac`` (share of weights clipped at w_max), ``ess`` ((Σw)²/Σw²), ``ess_frac``,
    ``adv_mean``, ``adv_std``, ``value_mean`` (over rated targets), ``n`` (rated targets).
    """
    return asft_nll_loss(token_nll(logits, targets), rewards, mask, value, beta, w_max, normalize)


def asft_nll_loss(
    nll: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    value: torch.Tensor | float,
    beta: float,
    w_max: float = 20.0,
    normalize: Literal["none", "batch"] = "none",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`asft_loss` from the targets' ``nll`` = −log π(y_t|x_t) ``(...)`` (any policy)."""
    if not beta > 0:
        raise ConfigError(f"beta = {beta!r} is out of range: must be > 0")
    if not w_max > 0:
        raise ConfigError(f"w_max = {w_max!r} is out of range: must be > 0")
    if normalize not in ("none", "batch"):
        raise ConfigError(f"normalize = {normalize!r} is not allowed: must be one of 'none', 'batch'")
    r = rewards.float()
    valid = mask & torch.isfinite(r)
    n = valid.float().sum()
    v = torch.as_tensor(value, dtype=torch.float32, device=r.device).expand_as(r)
    adv = torch.where(valid, torch.nan_to_num(r) - v, 0.0)
    log_w_max = math.log(w_max)
    # Clip in log space so exp() never overflows, whatever β.
    w = torch.where(valid, torch.exp(torch.clamp(adv / beta, max=log_w_max)), 0.0)
    if normalize == "batch":
        loss = (w * nll).sum() / w.sum().clamp(min=1e-30)
    else:
        loss = (w * nll).sum() / n.clamp(min=1.0)
    with torch.no_grad():
        n1 = n.clamp(min=1.0)
        adv_mean = adv.sum() / n1
        ess = w.sum() ** 2 / (w**2).sum().clamp(min=1e-30)
        metrics = {
            "nll": (nll * valid).sum() / n1,
            "mean_w": w.sum() / n1,
            "max_w": w.max(),
            "clip_frac": (valid & (adv / beta >= log_w_max)).float().sum() / n1,
            "ess": ess,
            "ess_frac": ess / n1,
            "adv_mean": adv_mean,
            "adv_std": torch.sqrt((torch.where(valid, adv - adv_mean, 0.0) ** 2).sum() / n1),
            "value_mean": torch.where(valid, v, 0.0).sum() / n1,
            "n": n,
        }
    return loss, metrics


def train(
    policy_ref: TrainedPolicy,
    data: PostTrainData,
    cfg: ASFTConfig,
    train_cfg: TrainConfig,
    seed: SeedTree,
    progress: bool = True,
) -> TrainedPolicy:
    """A copy of ``policy_ref`` fine-tuned by advantage-weighted SFT on the training clicks."""
    if cfg.baseline == "user-mean":
        user_means = UserMeanReward.fit(data.clicks, pseudo_count=cfg.shrinkage, reward=data.reward)
        table, mu = torch.from_numpy(user_means.means).float(), user_means.global_mean

        def baseline(batch: Batch) -> torch.Tensor:
            nonlocal table
            table = table.to(batch.users.device)  # once: a no-op from the second batch on
            return user_mean_baseline(batch.users, table, mu)[:, None]  # (B, 1): one value per window

    elif cfg.baseline == "reward-model":
        reward_model = check_reward_model("asft with baseline = 'reward-model'", data)
        ref = policy_ref.clone().model.eval().requires_grad_(False)  # frozen π_ref, never trained

        def baseline(batch: Batch) -> torch.Tensor:
            return reward_model_baseline(*reference_and_reward(ref, reward_model, batch.inputs))

    else:

        def baseline(batch: Batch) -> torch.Tensor:
            return batch_mean_baseline(batch.rewards, batch.mask)

    def prepare(model: nn.Module, batch: Batch) -> Batch:
        batch.extra["value"] = baseline(batch)
        return batch

    def loss_fn(nll, batch):  # noqa: ANN001, ANN202 - nll = −log π(y_t | x_t), exact or sampled
        return asft_nll_loss(nll, batch.rewards, batch.mask, batch.extra["value"], cfg.beta, cfg.w_max, cfg.normalize)

    if train_cfg.loss == "sampled":
        check_sampled(cfg)
    return train_copy(policy_ref, data, loss_fn, train_cfg, seed, progress, cfg.name, prepare=prepare, on="nll")


SAMPLED_SOFTMAX = True
"""A-SFT's loss reads only −log π(y|x): ``[finetune] loss = "sampled"`` may estimate it (not with the
reward-model baseline)."""


def check_sampled(cfg: ASFTConfig) -> None:
    """Refuse ``loss = "sampled"`` with the reward-model baseline: V̂(x) sums π_ref·R̂ over the whole catalogue."""
    if cfg.baseline == "reward-model":
        raise ConfigError("finetune.loss = 'sampled' does not fit method.baseline = 'reward-model': V̂(x) needs "
                          "π_ref's logits over the whole catalogue; use baseline = 'user-mean' or loss = 'full'")


TOKEN_LEVEL = True
"""A-SFT reads only log π(y|x) (and, for the reward-model baseline, π_ref's exact item
distribution): it trains token policies too (``asft-token``)."""


__all__ = [
    "ASFTConfig",
    "Baseline",
    "CONFIG",
    "SAMPLED_SOFTMAX",
    "check_sampled",
    "asft_loss",
    "asft_nll_loss",
    "TOKEN_LEVEL",
    "batch_mean_baseline",
    "needs_reward_model",
    "reward_model_baseline",
    "train",
    "user_mean_baseline",
]
