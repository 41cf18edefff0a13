r"""Preference pairs mined with a reward-model ensemble, and the plumbing DPO and IPO share.

A preference method learns from pairs (x, y_w, y_l): after history x, item y_w is preferred to y_l.
Logs hold no such pairs, so they are mined with the reward model R̂ (an ensemble of E members; the
member mean μ(x, y) is the estimate and the member spread s(x, y) its uncertainty).

**Offline pairs** (``pairs = "offline"``): at every training position t (x_t = the clicks before t,
y_t = the logged click) the candidates are

    C_t = {y_t} ∪ {ỹ_1 … ỹ_K},   ỹ_k ~ π_ref(· | x_t)   (K = n_candidates, with replacement)

**Online pairs** (``pairs = "online"``): two samples from the *current* policy,
C_t = {ỹ_1, ỹ_2}, ỹ_k ~ π(· | x_t), drawn afresh for every batch.

In both cases ``y_w = argmax_{y ∈ C_t} μ(x_t, y)`` and ``y_l = argmin_{y ∈ C_t} μ(x_t, y)``, and the
pair is kept only if the ensemble is confident about the order::

    rule = "strict":  μ(y_w) − z·s(y_w)  >  μ(y_l) + z·s(y_l)     (LCB(y_w) > UCB(y_l): disjoint intervals)
    rule = "loose":   μ(y_w)  >  μ(y_l)                             (the means alone; z is not used)

Both inequalities are strict, so a tie in μ or a repeated item (y_w = y_l) never gives a pair, and
every strict pair is also a loose pair. Positions without a kept pair are masked out of the loss.

Given a pair, both methods read the margin of log-ratios against the frozen reference::

    h = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) − log π_ref(y_l|x)]

and differ only in the per-pair loss of h (see dpo.py and ipo.py). On a token policy the
candidates are sampled token by token and log π(y|x) is the sum of the item's token log-probabilities. :func:`preference_train` is the
loop both use: it mines the pairs once per batch in the ``prepare`` hook (no gradients) and fits the
method's pair loss.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, knob
from ..errors import ConfigError
from ..models.device import autocast
from ..models.load import TrainedPolicy
from ..models.token import Scorer, is_token_model, sample_next, target_scorer
from ..seeding import SeedTree
from .data import Batch, PostTrainData, masked_mean
from .loop import TrainConfig, train_copy
from .reward_model import RewardModel, candidate_member_scores, check_reward_model, gather_candidates, mean_std

Rule = Literal["strict", "loose"]
PairSource = Literal["offline", "online"]


@dataclass(frozen=True)
class PairMiningConfig(Config):
    """How DPO and IPO mine their pairs (the knobs the two methods share)."""

    pairs: PairSource = knob(
        "offline", "'offline': logged click + samples from π_ref; 'online': two samples from the current π per batch"
    )
    n_candidates: int = knob(
        8, "offline: items sampled from π_ref beside the logged click (online always draws 2)", ge=1, le=100_000
    )
    z: float = knob(1.0, "width of the ensemble confidence intervals μ ± z·s (strict rule)", ge=0.0, le=100.0)
    rule: Rule = knob("strict", "'strict': keep a pair if LCB(y_w) > UCB(y_l); 'loose': if μ(y_w) > μ(y_l)")
    disable_dropout: bool = knob(True, "run the policy without dropout during updates (as TRL does)")

PairLoss = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    tuple[torch.Tensor, dict[str, torch.Tensor]],
]
"""``pair_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, mask) -> (loss, metrics)``:
log-probabilities of y_w and y_l under π and π_ref, all ``(...)``; ``mask`` True where a pair exists."""


# ---------------------------------------------------------------- mining (pure tensor functions)


@dataclass(frozen=True, eq=False)
class Pairs:
    """Mined pairs, one slot per position, all ``(B, L)``."""

    chosen: torch.Tensor
    """int64 y_w (meaningless where ``keep`` is False)."""
    rejected: torch.Tensor
    """int64 y_l."""
    keep: torch.Tensor
    """bool, True where the position has a pair that passed the confidence rule."""
    gap: torch.Tensor
    """float32 μ(y_w) − μ(y_l), the reward model's estimated preference strength."""


def confident(
    mu_w: torch.Tensor, sd_w: torch.Tensor, mu_l: torch.Tensor, sd_l: torch.Tensor, z: float, rule: Rule
) -> torch.Tensor:
    """Whether the ensemble is sure that w beats l (elementwise): "strict" LCB_w > UCB_l, "loose" μ_w > μ_l."""
    if rule == "strict":
        return mu_w - z * sd_w > mu_l + z * sd_l
    if rule == "loose":
        return mu_w > mu_l
    raise ConfigError(f"rule = {rule!r} is not allowed: must be one of 'strict', 'loose'")


def pick_pairs(
    candidates: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor, mask: torch.Tensor, z: float, rule: Rule
) -> Pairs:
    """The best and the worst candidate by ensemble mean, kept where the rule holds.

    ``candidates`` ``(B, L, K)`` item ids; ``mu``, ``sd`` ``(B, L, K)`` the ensemble mean and spread
    of each candidate; ``mask`` ``(B, L)`` the real positions.
    """
    iw, il = mu.argmax(-1, keepdim=True), mu.argmin(-1, keepdim=True)
    chosen, rejected = candidates.gather(-1, iw).squeeze(-1), candidates.gather(-1, il).squeeze(-1)
    mu_w, sd_w = mu.gather(-1, iw).squeeze(-1), sd.gather(-1, iw).squeeze(-1)
    mu_l, sd_l = mu.gather(-1, il).squeeze(-1), sd.gather(-1, il).squeeze(-1)
    keep = mask & (chosen != rejected) & confident(mu_w, sd_w, mu_l, sd_l, z, rule)
    return Pairs(chosen, rejected, keep, (mu_w - mu_l).float())


def candidate_stats(scores: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ensemble mean and spread of the candidates only: member scores ``(E, B, L, V)`` and
    candidates ``(B, L, K)`` -> ``(B, L, K)`` each (gathering first spares a std over all V items)."""
    return mean_std(gather_candidates(scores, candidates).float())


def sample_items(logp: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` items per position drawn with replacement from ``exp(logp)``: ``(B, L, V)`` -> ``(B, L, n)``."""
    B, L, V = logp.shape
    probs = logp.float().exp().reshape(B * L, V)
    return torch.multinomial(probs, n, replacement=True, generator=generator).view(B, L, n)


def offline_candidates(
    ref_logp: torch.Tensor, targets: torch.Tensor, n_candidates: int, generator: torch.Generator | None
) -> torch.Tensor:
    """The logged click and ``n_candidates`` samples from π_ref: ``(B, L, V)``, ``(B, L)`` -> ``(B, L, 1 + n)``
    (column 0 is the click; PAD targets become item 0, to be masked out by the caller)."""
    if n_candidates < 1:
        raise ConfigError(f"n_candidates = {n_candidates!r} is out of range: must be >= 1")
    samples = sample_items(ref_logp, n_candidates, generator)
    return torch.cat([targets.clamp(min=0).unsqueeze(-1), samples], dim=-1)


def online_candidates(policy_logp: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Two samples from the current policy: ``(B, L, V)`` -> ``(B, L, 2)``."""
    return sample_items(policy_logp, 2, generator)


def mine_pairs(
    candidates: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, z: float, rule: Rule
) -> Pairs:
    """Candidates ``(B, L, K)`` scored by the ensemble's member scores ``(E, B, L, V)`` -> pairs."""
    mu, sd = candidate_stats(scores, candidates)
    return pick_pairs(candidates, mu, sd, mask, z, rule)


# ---------------------------------------------------------------- margins and metrics


def gather_logp(logp: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``logp[..., items]``: ``(..., V)`` and ``(...)`` -> ``(...)``."""
    return logp.gather(-1, items.unsqueeze(-1)).squeeze(-1)


def log_ratio_margin(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(h, chosen log-ratio, rejected log-ratio)`` with h = chosen log-ratio − rejected log-ratio."""
    chosen = policy_chosen - ref_chosen
    rejected = policy_rejected - ref_rejected
    return chosen - rejected, chosen, rejected


def preference_metrics(
    h: torch.Tensor,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """TRL-style diagnostics over the pairs (0-dim, detached): ``margin`` (mean h), ``accuracy``
    (fraction with h > 0), ``chosen_logratio``, ``rejected_logratio``, ``logp_chosen``,
    ``logp_rejected`` (policy log-probs: if both fall, DPO is pushing mass onto third items) and
    ``n_pairs``."""
    with torch.no_grad():
        return {
            "margin": masked_mean(h, mask).detach(),
            "accuracy": masked_mean((h > 0).float(), mask),
            "chosen_logratio": masked_mean(chosen, mask).detach(),
            "rejected_logratio": masked_mean(rejected, mask).detach(),
            "logp_chosen": masked_mean(policy_chosen, mask).detach(),
            "logp_rejected": masked_mean(policy_rejected, mask).detach(),
            "n_pairs": mask.float().sum(),
        }


# ---------------------------------------------------------------- training plumbing


def make_prepare(
    policy_ref: TrainedPolicy, reward_model: RewardModel, cfg: Any, seed: SeedTree
) -> Callable[[nn.Module, Batch], Batch]:
    """The ``prepare`` hook: mine one pair per position and record π_ref's log-probs of it.

    ``cfg`` has ``pairs``, ``n_candidates``, ``z``, ``rule`` and ``disable_dropout``. Fills
    ``batch.extra`` with ``chosen``, ``rejected``, ``pair_mask`` (``(B, L)``), ``ref_chosen``,
    ``ref_rejected`` (log π_ref), and the 0-dim ``pair_yield`` (pairs / real positions) and
    ``rm_gap`` (mean μ(y_w) − μ(y_l) over the pairs).
    """
    ref = policy_ref.clone().model.eval()  # frozen π_ref: never trained, never in train mode
    ref.requires_grad_(False)
    generators: dict[torch.device, torch.Generator] = {}

    def prepare(model: nn.Module, batch: Batch) -> Batch:
        device = batch.inputs.device
        ref.to(device)
        if device not in generators:
            generators[device] = torch.Generator(device=device).manual_seed(seed.integer("pairs"))
        gen = generators[device]
        if is_token_model(ref):  # token level: sample token by token, score only the pair's two items
            ref_of = target_scorer(ref, batch.inputs)
            if cfg.pairs == "offline":
                samples = sample_next(ref, batch.inputs, cfg.n_candidates, gen)
                candidates = torch.cat([batch.targets.clamp(min=0).unsqueeze(-1), samples], dim=-1)
            else:
                model.eval()  # sample from π itself, not from a dropout-perturbed π
                candidates = sample_next(model, batch.inputs, 2, gen)
        else:
            with autocast(device):
                ref_logp = F.log_softmax(ref(batch.inputs).float(), dim=-1)
            ref_of = lambda items: gather_logp(ref_logp, items)  # noqa: E731
            if cfg.pairs == "offline":
                candidates = offline_candidates(ref_logp, batch.targets, cfg.n_candidates, gen)
            else:
                model.eval()  # sample from π itself, not from a dropout-perturbed π
                with autocast(device):
                    policy_logp = F.log_softmax(model(batch.inputs).float(), dim=-1)
                candidates = online_candidates(policy_logp, gen)
        mu, sd = mean_std(candidate_member_scores(reward_model, batch.inputs, candidates).float())  # K items, not V
        pairs = pick_pairs(candidates, mu, sd, batch.mask, cfg.z, cfg.rule)
        # The loop runs the update right after prepare, in the mode left here: eval mode is TRL's
        # disable_dropout (h is exactly 0 at π = π_ref and not noised by dropout masks).
        model.train(not cfg.disable_dropout)
        n_real = batch.mask.float().sum()
        extra = {
            "chosen": pairs.chosen,
            "rejected": pairs.rejected,
            "pair_mask": pairs.keep,
            "ref_chosen": ref_of(pairs.chosen),
            "ref_rejected": ref_of(pairs.rejected),
            "pair_yield": pairs.keep.float().sum() / n_real.clamp(min=1.0),
            "rm_gap": masked_mean(pairs.gap, pairs.keep),
        }
        return dataclasses.replace(batch, extra={**batch.extra, **extra})

    return prepare


def preference_train(
    policy_ref: TrainedPolicy,
    data: PostTrainData,
    cfg: Any,
    train_cfg: TrainConfig,
    seed: SeedTree,
    progress: bool,
    pair_loss: PairLoss,
) -> TrainedPolicy:
    """A copy of ``policy_ref`` trained on mined pairs with ``pair_loss`` (DPO's or IPO's).

    ``cfg`` is the method's config (``name``, ``pairs``, ``n_candidates``, ``z``, ``rule``,
    ``disable_dropout``). Metrics per epoch: the pair loss's own plus ``pair_yield`` and ``rm_gap``.
    """
    reward_model = check_reward_model(f"method {cfg.name!r} (it mines preference pairs)", data)
    prepare = make_prepare(policy_ref, reward_model, cfg, seed)

    def loss_fn(logp: Scorer, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = batch.extra  # logp(items) = log π(items | x_t): gathered from the softmax, or summed over tokens
        loss, metrics = pair_loss(
            logp(x["chosen"]), logp(x["rejected"]), x["ref_chosen"], x["ref_rejected"], x["pair_mask"],
        )
        return loss, {**metrics, "pair_yield": x["pair_yield"], "rm_gap": x["rm_gap"]}

    return train_copy(policy_ref, data, loss_fn, train_cfg, seed, progress, cfg.name, prepare=prepare, on="logp")


__all__ = [
    "PairLoss",
    "Pairs",
    "confident",
    "gather_logp",
    "log_ratio_margin",
    "make_prepare",
    "masked_mean",
    "candidate_stats",
    "mine_pairs",
    "offline_candidates",
    "online_candidates",
    "pick_pairs",
    "preference_metrics",
    "preference_train",
    "sample_items",
]
