r"""Discrete conservative Q-learning (CQL(H), Kumar et al. 2020, eq. 4) on the logged recommendations.

The network's next-item outputs are read as Q-values: Q(x, ·) = model(x) ``(B, L, n_items)``. Over
the logged (history x_t, clicked item y_t, observed rating r_t) with a rating (padding and unrated
targets are left out), with N of them in the batch::

    L_CQL = (1/N) Σ_t [ α (logsumexp_a Q(x_t, a) − Q(x_t, y_t))  +  ½ (Q(x_t, y_t) − r_t)² ]

The first term pushes Q down on every item and up on the logged one, so items off the logged
support cannot look better than the data warrant (the conservative part); it is ≥ 0, log(n_items)
when Q is flat, and → 0 when Q(x, y) dominates all other items. It is α times the cross-entropy
of softmax(Q) on the logged click, so CQL here is "TD regression + α · BC on softmax(Q)".

The second term is the Bellman error with target r_t: each recommendation is treated as a one-step
decision (a contextual bandit, γ = 0), so there is no bootstrapped target Q(x', ·) and no target
network. α = 0 gives plain regression of the observed ratings.

The deployed policy is π(a | x) = softmax(Q(x, a) / T): after training, the policy's
``logit_scale`` is set to 1/T (T → 0 is greedy in Q, large T approaches uniform).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..config import Config, knob
from ..errors import ConfigError
from ..models.policy import SequencePolicy
from ..seeding import SeedTree
from .data import PostTrainData
from .loop import TrainConfig, train_copy


@dataclass(frozen=True)
class CQLConfig(Config):
    """Discrete CQL(H) with a one-step (reward-only) TD target; the policy is softmax(Q/T)."""

    name: Literal["cql"] = knob("cql", "method name")
    alpha: float = knob(1.0, "α: weight of the conservative term logsumexp Q − Q(logged); 0 = plain TD regression", ge=0.0, le=1000.0)
    temperature: float = knob(
        1.0, "T of the deployed policy softmax(Q/T), in rating units (1/T scales float32 logits)", ge=1e-3, le=1000.0
    )


CONFIG = CQLConfig


def needs_reward_model(cfg: CQLConfig) -> bool:
    return False


def cql_loss(
    q: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    alpha: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CQL(H) loss of the module docstring over positions with ``mask`` and a finite reward.

    ``q`` ``(..., V)`` Q-values; ``actions`` (int64), ``rewards``, ``mask`` ``(...)``. Metrics
    (0-dim, detached): ``td`` (mean ½(Q(x,y) − r)²), ``penalty`` (mean logsumexp Q − Q(x,y)),
    ``q_data`` (mean Q(x,y)), ``q_all`` (mean Q over the catalogue), ``reward`` (mean r),
    ``n`` (rated positions).
    """
    if not alpha >= 0:
        raise ConfigError(f"alpha = {alpha!r} is out of range: must be >= 0")
    q = q.float()
    r = rewards.float()
    valid = mask & torch.isfinite(r)
    w = valid.float()
    n = w.sum()
    q_y = q.gather(-1, actions.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    penalty = torch.logsumexp(q, dim=-1) - q_y
    td = 0.5 * (q_y - torch.nan_to_num(r)) ** 2  # NaN rewards replaced before they reach the graph
    loss = ((alpha * penalty + td) * w).sum() / n.clamp(min=1.0)
    with torch.no_grad():
        denom = n.clamp(min=1.0)
        metrics = {
            "td": (td * w).sum() / denom,
            "penalty": (penalty * w).sum() / denom,
            "q_data": (q_y * w).sum() / denom,
            "q_all": (q.mean(dim=-1) * w).sum() / denom,
            "reward": (torch.nan_to_num(r) * w).sum() / denom,
            "n": n,
        }
    return loss, metrics


def train(
    policy_ref: SequencePolicy,
    data: PostTrainData,
    cfg: CQLConfig,
    train_cfg: TrainConfig,
    seed: SeedTree,
    progress: bool = True,
) -> SequencePolicy:
    """A copy of ``policy_ref`` whose outputs are fitted as Q-values by CQL on the logged ratings,
    deployed as softmax(Q/T) (``logit_scale = 1/T``). ``policy_ref`` itself is untouched."""

    def loss_fn(logits, batch):  # noqa: ANN001, ANN202
        return cql_loss(logits, batch.targets, batch.rewards, batch.mask, cfg.alpha)

    policy = train_copy(policy_ref, data, loss_fn, train_cfg, seed, progress, cfg.name)
    policy.logit_scale = 1.0 / cfg.temperature
    return policy


__all__ = ["CQLConfig", "CONFIG", "cql_loss", "needs_reward_model", "train"]
