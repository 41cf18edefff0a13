r"""Exponential reward-weighted SFT: imitate the logged clicks, weighted by exp(reward / λ).

Objective over the N positions t that hold a target with an observed reward r_t (padding and
unrated targets are left out; r_t is clipped at r_max, the top of the rating scale)::

    normalize = "raw":      L = −(1/N) Σ_t exp(r_t/λ) log π(y_t | x_t)
    normalize = "shifted":  L = −(1/N) Σ_t exp((r_t − r_max)/λ) log π(y_t | x_t)
    normalize = "batch":    L = −Σ_t w_t log π(y_t | x_t) / Σ_t w_t,          w_t = exp(r_t/λ)
    normalize = "context":  L = −(1/N) Σ_t [exp(r_t/λ) / Z(x_t)] log π(y_t | x_t),
                            Z(x) = Σ_y π_ref(y|x) exp(R̂(x, y)/λ)
    normalize = "user":     L = −(1/N) Σ_t [exp(r_t/λ) / Ẑ_u(t)] log π(y_t | x_t),
                            Ẑ_u = (1/n_u) Σ_{s ∈ clicks of u} exp(r_s/λ)

Where it comes from: the KL-regularised policy improvement max_π E_π[r] − λ KL(π ‖ π_ref) is solved
per context by π*(y|x) = π_ref(y|x) exp(r(x,y)/λ) / Z(x) (Peters, Mülling & Altün 2010, REPS;
Peng et al. 2019, "Advantage-Weighted Regression", Sec. 3). Projecting π* onto the model by
weighted maximum likelihood on logged clicks (drawn from π_β ≈ π_ref) gives the weights above:
reward-weighted regression (Peters & Schaal 2007, ICML) and AWR without a baseline. λ is the
temperature: λ → ∞ gives every rated target weight 1, i.e. BC on the rated targets; small λ
concentrates the fit on the best-rated clicks.

The five variants (``normalize``):

* ``"raw"`` — the textbook exp(r/λ). It overflows float32 once r/λ > 88.72 (for r = 5: λ < 0.0564).
  The config refuses such a (lam, r_max) up front, and the loss raises ConfigError if any weight or
  the loss is not finite, rather than training on inf.
* ``"shifted"`` — every weight times the constant exp(−r_max/λ): the same optimum and gradient
  direction, weights in (0, 1] so nothing overflows (at tiny λ low ratings underflow to weight 0,
  which is the λ → 0 limit anyway). Raw and shifted differ in practice only through the optimiser:
  AdamW is nearly scale-invariant, but gradient-norm clipping is not (raw's gradients are
  exp(r_max/λ) times larger, so with clipping on they are always clipped).
* ``"batch"`` — self-normalised per batch: divide by Σ_t w_t, a softmax over the batch's rated
  targets (any shift cancels, and it cannot underflow to 0/0). Biased but consistent; a batch of
  only poorly rated clicks gets the same total weight as a batch of well rated ones. The default.
* ``"context"`` — per-context normalised: log w = r/λ − log Z(x), with log Z(x) =
  logsumexp_y(log π_ref(y|x) + R̂(x,y)/λ) computed in log space from the frozen π_ref and the reward
  model's ensemble mean R̂ (clipped at r_max like r). Needs a reward model.
* ``"user"`` — per-context normalised with Z estimated from the public clicks alone, self-normalised
  per user: Ẑ_u is the mean of exp(r/λ) over the user's n_u rated training clicks (rewards clipped
  at r_max like the targets'). Why this estimates Z(x): Z(x) = E[exp(r/λ) | x] under the logged
  click distribution given x, and every click of u is one draw of it for one of u's histories; the
  user's mean pools her histories, i.e. it assumes Z varies between users far more than along one
  user's history. That is exactly so for what it is meant to remove: a per-user rating offset b_u
  (a generous or a harsh rater, ``feedback.user_bias_std``) multiplies every weight of u by
  e^{b_u/λ}, and the ratio exp(r/λ)/Ẑ_u cancels it exactly (when no rating is clipped), whatever λ.
  Each user's weights then average 1 over her clicks, so users count by their data, as in BC, and
  only the distribution within a user is tilted. It needs no model (no π_ref, no R̂), it cannot
  overflow (a log-weight is at most log n_u), and it is in-sample: a target's own rating is in its
  Ẑ_u, which pulls the weights of a user with few clicks toward 1 (a user with one rated click has
  weight 1 whatever λ: there is no contrast to learn from inside her data). Computed in float64 as
  (r − r_max)/λ − log mean_u exp((r − r_max)/λ), so a tiny λ loses no precision. Its optimum is
  π*(y|x) ∝ π_β(y|x) exp(r/λ) within each user, the population tilt, as far as Ẑ_u ≈ Z(x).

Why Z(x) matters. With a tabular model (a separate π(·|x) per context) a per-context factor is
harmless: each context's minimiser of Σ_y q(y|x) w(x,y)(−log π(y|x)) is π ∝ q·w whatever the
factor. SASRec shares every parameter across histories, so the fit trades errors between contexts
in proportion to each context's total weight Σ_y π_β(y|x) exp(r/λ) ≈ Z(x). Dropping Z(x) (raw,
shifted, and batch, which divides every context in a batch by the same number) therefore reweights
contexts: histories whose typical reward is high (generous raters, well-liked genres) get
exponentially more say — at λ = 1 a user who rates everything 5 outweighs one who rates
everything 3 by e² ≈ 7.4 — and the capacity goes to them. Dividing by Z(x) makes every context's
total weight ≈ 1 (when π_ref ≈ π_β and R̂ ≈ E[r | x, y]), so contexts keep their data frequency as
in BC and only the distribution within a context is tilted: this is the form whose optimum is
π*(y|x) ∝ π_ref(y|x) exp(r/λ) per context. (Equivalently, it is AWR with the soft value
V(x) = λ log Z(x) as the baseline: exp(r/λ)/Z(x) = exp((r − V(x))/λ).)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, knob
from ..errors import ConfigError
from ..models.device import autocast
from ..models.load import TrainedPolicy
from ..seeding import SeedTree
from ..signals import reward_range
from .bc import token_nll
from .data import Batch, PostTrainData, reward_column
from .loop import TrainConfig, train_copy
from .reward_model import RewardModel, check_reward_model, ensemble_mean_scores

Normalize = Literal["raw", "shifted", "batch", "context", "user"]
NORMALIZE = ("raw", "shifted", "batch", "context", "user")

LOG_FLOAT32_MAX = math.log(torch.finfo(torch.float32).max)  # 88.72: exp() of more is inf in float32


@dataclass(frozen=True)
class ExpRSFTConfig(Config):
    """Exponential reward-weighted SFT: weights w = exp(r/λ), in one of five normalisations."""

    name: Literal["exp-rsft"] = knob("exp-rsft", "method name")
    lam: float = knob(
        1.0, "temperature λ of the weights exp(r/λ); large λ approaches BC (1e12: BC to float precision)", gt=0.0, le=1e12
    )
    r_max: float | None = knob(
        None, "top of the reward scale: rewards are clipped to it; 'shifted' divides by exp(r_max/λ) (None: the top "
        "of the recipe's reward signal, 5 for the rating, 1 for watch and click)", ge=-100.0, le=100.0
    )
    normalize: Normalize = knob(
        "batch",
        "'raw': mean of exp(r/λ)·nll; 'shifted': mean of exp((r − r_max)/λ)·nll; 'batch': divide by "
        "the batch's sum of weights; 'context': exp(r/λ)/Z(x) with Z from π_ref and the reward model; "
        "'user': exp(r/λ)/Ẑ_u, Ẑ_u the mean of exp(r/λ) over the user's training clicks (no model needed)",
    )

    def check(self) -> None:
        if self.r_max is not None:
            check_for_reward(self, "rating")

    def top(self, reward: str) -> float:
        """r_max for rewards of signal ``reward``: the knob, or the top of the signal's range."""
        return self.r_max if self.r_max is not None else reward_range(reward)[1]


CONFIG = ExpRSFTConfig


def check_for_reward(cfg: ExpRSFTConfig, reward: str) -> None:
    """Refuse a (lam, r_max) whose 'raw' weights exp(r_max/lam) overflow float32 for ``reward``."""
    r_max = cfg.top(reward)
    if cfg.normalize == "raw" and r_max / cfg.lam > LOG_FLOAT32_MAX:
        raise ConfigError(
            f"lam = {cfg.lam!r} overflows normalize = 'raw': exp(r_max/lam) = exp({r_max / cfg.lam:.4g}) "
            f"exceeds float32 (needs lam >= {r_max / LOG_FLOAT32_MAX:.4g}); use normalize = 'shifted' "
            "(same optimum) or a larger lam"
        )


def needs_reward_model(cfg: ExpRSFTConfig) -> bool:
    """Only the per-context normalisation needs R̂, for Z(x)."""
    return cfg.normalize == "context"


def context_log_normalizer(
    ref_logits: torch.Tensor, reward_hat: torch.Tensor, lam: float, r_max: float = math.inf
) -> torch.Tensor:
    """log Z(x) = logsumexp_y(log π_ref(y|x) + min(R̂(x, y), r_max)/λ), computed in log space.

    ``ref_logits`` and ``reward_hat`` ``(..., V)`` (π_ref's logits and the predicted reward of every
    item) -> ``(...)``. Exact sum over the catalogue; no gradient flows to π_ref's logits in training
    because they come from a frozen copy.
    """
    log_ref = F.log_softmax(ref_logits.float(), dim=-1)
    return torch.logsumexp(log_ref + reward_hat.float().clamp(max=r_max) / lam, dim=-1)


def exp_rsft_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    lam: float,
    r_max: float = 5.0,
    normalize: Normalize = "batch",
    log_z: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reward-weighted NLL (see the module docstring) over positions with ``mask`` and a finite reward.

    ``logits`` ``(..., V)``; ``targets``, ``rewards``, ``mask`` ``(...)``; ``log_z`` ``(...)`` is
    log Z(x) from :func:`context_log_normalizer`, required by (and only used by) ``"context"``.
    A batch without rated targets gives a zero loss with zero gradient.

    Metrics (0-dim detached tensors): ``nll`` (unweighted mean NLL, comparable with BC), ``ess``
    (effective sample size (Σw)²/Σw²), ``ess_frac`` (ess / rated targets), ``mean_w`` and ``max_w``
    (of the variant's weights before any batch normalisation: exp(r/λ) for raw, exp((r − r_max)/λ)
    for shifted and batch, exp(r/λ)/Z(x) for context), ``n`` (rated targets); context adds
    ``log_z`` (mean log Z(x) over rated targets).
    """
    return exp_rsft_nll_loss(token_nll(logits, targets), rewards, mask, lam, r_max, normalize, log_z)


def exp_rsft_nll_loss(
    nll: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    lam: float,
    r_max: float = 5.0,
    normalize: Normalize = "batch",
    log_z: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`exp_rsft_loss` from the targets' ``nll`` = −log π(y_t|x_t) ``(...)`` (any policy:
    a token policy's is the sum of its token NLLs)."""
    if not lam > 0:
        raise ConfigError(f"lam = {lam!r} is out of range: must be > 0")
    if normalize not in NORMALIZE:
        raise ConfigError(f"normalize = {normalize!r} is not allowed: must be one of {', '.join(map(repr, NORMALIZE))}")
    if normalize == "context" and log_z is None:
        raise ConfigError("normalize = 'context' needs log_z = log Z(x) (see context_log_normalizer)")
    if normalize == "user" and log_z is None:
        raise ConfigError("normalize = 'user' needs log_z = log mean_u exp((r − r_max)/λ) (see user_log_normalizer)")
    r = rewards.float()
    valid = mask & torch.isfinite(r)
    n = valid.float().sum()
    r = torch.clamp(torch.nan_to_num(r), max=r_max)  # NaN replaced before any arithmetic reaches the graph
    # Log-weights, −inf where the position does not count.
    if normalize == "raw":
        a = r / lam
    elif normalize == "context":
        a = r / lam - log_z.float()
    elif normalize == "user":  # float64: both terms can be large at small λ, their difference is not
        a = ((r.double() - r_max) / lam - log_z.double()).float()
    else:  # shifted, batch
        a = (r - r_max) / lam
    a = torch.where(valid, a, -torch.inf)
    w = torch.exp(a)  # 0 where invalid
    a_top = a.max()
    a_top = torch.where(torch.isfinite(a_top), a_top, torch.zeros_like(a_top))  # no rated target: -inf
    w_rel = torch.exp(a - a_top)  # weights divided by the largest one: in [0, 1]
    if normalize == "batch":
        loss = (w_rel * nll).sum() / w_rel.sum().clamp(min=1e-30)
    else:
        loss = (w * nll).sum() / n.clamp(min=1.0)
        if normalize in ("raw", "context", "user"):  # unbounded weights: refuse to train on inf
            if not bool(torch.isfinite(w).all() & torch.isfinite(loss)):
                raise ConfigError(
                    f"lam = {lam!r}: the weights of normalize = {normalize!r} overflowed float32 "
                    f"(largest log-weight {a_top.item():.4g} > {LOG_FLOAT32_MAX:.4g}); use a larger lam"
                    + (" or normalize = 'shifted' (same optimum)" if normalize == "raw" else "")
                )
    with torch.no_grad():
        ess = w_rel.sum() ** 2 / (w_rel**2).sum().clamp(min=1e-30)
        metrics = {
            "nll": (nll * valid).sum() / n.clamp(min=1.0),
            "ess": ess,
            "ess_frac": ess / n.clamp(min=1.0),
            "mean_w": w.sum() / n.clamp(min=1.0),
            "max_w": w.max(),
            "n": n,
        }
        if normalize in ("context", "user"):
            metrics["log_z"] = torch.where(valid, log_z.float(), 0.0).sum() / n.clamp(min=1.0)
    return loss, metrics


def user_log_normalizer(
    users: np.ndarray, rewards: np.ndarray, lam: float, r_max: float
) -> tuple[np.ndarray, float]:
    """log Ẑ_u − r_max/λ = log mean_{s ∈ u} exp((min(r_s, r_max) − r_max)/λ) per user, in float64.

    ``users`` (n,) int user ids and ``rewards`` (n,) of the training clicks (NaN: not rated, left
    out). Returns (a table indexed by user id, length max id + 1; the global value for the whole
    table as fallback) — users without a rated click get the fallback (they hold no rated target,
    so it only keeps the table finite). Computed per user around her largest log-weight, so nothing
    overflows or underflows to log 0 whatever λ.
    """
    users = np.asarray(users, dtype=np.int64)
    r = np.asarray(rewards, dtype=np.float64)
    rated = np.isfinite(r)
    u, a = users[rated], (np.minimum(r[rated], r_max) - r_max) / lam  # log-weights, <= 0
    if len(a) == 0:
        return np.zeros(int(users.max()) + 1 if len(users) else 0), 0.0
    top_all = a.max()
    fallback = float(top_all + np.log(np.mean(np.exp(a - top_all))))
    size = int(users.max()) + 1
    top = np.full(size, -np.inf)
    np.maximum.at(top, u, a)
    total, count = np.zeros(size), np.zeros(size)
    np.add.at(total, u, np.exp(a - top[u]))  # each term in (0, 1], the user's largest is 1
    np.add.at(count, u, 1.0)
    table = np.full(size, fallback)
    seen = count > 0
    table[seen] = top[seen] + np.log(total[seen] / count[seen])
    return table, fallback


def reference_and_reward(
    ref: nn.Module, reward_model: RewardModel, inputs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """π_ref's logits and the ensemble-mean R̂ of every next item after every position of ``inputs``.

    ``ref`` is a frozen eval-mode model (moved to ``inputs.device`` here); both outputs are
    ``(B, L, n_items)`` float32 without gradients.
    """
    with torch.no_grad():
        ref.to(inputs.device)
        with autocast(inputs.device):
            ref_logits = ref(inputs)
        r_hat = ensemble_mean_scores(reward_model, inputs)  # ensemble mean (the spread is not needed)
    return ref_logits.float(), r_hat.float()


def train(
    policy_ref: TrainedPolicy,
    data: PostTrainData,
    cfg: ExpRSFTConfig,
    train_cfg: TrainConfig,
    seed: SeedTree,
    progress: bool = True,
) -> TrainedPolicy:
    """A copy of ``policy_ref`` fine-tuned by exponential reward-weighted SFT on the training clicks."""
    check_for_reward(cfg, data.reward)
    r_max = cfg.top(data.reward)
    prepare = None
    if cfg.normalize == "user":
        clicks = data.clicks
        table_np, fallback = user_log_normalizer(
            clicks["user_id"].to_numpy(np.int64), reward_column(clicks, data.reward), cfg.lam, r_max
        )
        table = torch.from_numpy(table_np)

        def prepare(model: nn.Module, batch: Batch) -> Batch:
            nonlocal table
            table = table.to(batch.users.device)  # once: a no-op from the second batch on
            known = (batch.users >= 0) & (batch.users < len(table))
            idx = batch.users.clamp(0, max(len(table) - 1, 0))
            log_z = torch.where(known, table[idx], torch.tensor(fallback, dtype=torch.float64, device=idx.device))
            batch.extra["log_z"] = log_z[:, None]  # (B, 1): one value per window, every window is one user's
            return batch

    elif cfg.normalize == "context":
        reward_model = check_reward_model("exp-rsft with normalize = 'context'", data)
        ref = policy_ref.clone().model.eval().requires_grad_(False)  # frozen π_ref, never trained

        def prepare(model: nn.Module, batch: Batch) -> Batch:
            ref_logits, r_hat = reference_and_reward(ref, reward_model, batch.inputs)
            batch.extra["log_z"] = context_log_normalizer(ref_logits, r_hat, cfg.lam, r_max)
            return batch

    def loss_fn(nll, batch):  # noqa: ANN001, ANN202 - nll = −log π(y_t | x_t), exact or sampled
        return exp_rsft_nll_loss(nll, batch.rewards, batch.mask, cfg.lam, r_max, cfg.normalize, batch.extra.get("log_z"))

    if train_cfg.loss == "sampled":
        check_sampled(cfg)
    return train_copy(policy_ref, data, loss_fn, train_cfg, seed, progress, cfg.name, prepare=prepare, on="nll")


TOKEN_LEVEL = True
"""exp-RSFT reads only log π(y|x) (and, for 'context', π_ref's exact item distribution): it trains
token policies too (``exp-rsft-token``)."""

SAMPLED_SOFTMAX = True
"""exp-RSFT's loss reads only −log π(y|x): ``[finetune] loss = "sampled"`` may estimate it (not with 'context')."""


def check_sampled(cfg: ExpRSFTConfig) -> None:
    """Refuse ``loss = "sampled"`` for 'context': its Z(x) sums π_ref over the whole catalogue at every position."""
    if cfg.normalize == "context":
        raise ConfigError("finetune.loss = 'sampled' does not fit method.normalize = 'context': Z(x) needs π_ref's "
                          "logits over the whole catalogue; use normalize = 'user' (Z per user, no model) or loss = 'full'")


__all__ = [
    "CONFIG",
    "ExpRSFTConfig",
    "SAMPLED_SOFTMAX",
    "check_sampled",
    "Normalize",
    "check_for_reward",
    "check_reward_model",
    "context_log_normalizer",
    "exp_rsft_loss",
    "exp_rsft_nll_loss",
    "TOKEN_LEVEL",
    "needs_reward_model",
    "reference_and_reward",
    "train",
    "user_log_normalizer",
]
