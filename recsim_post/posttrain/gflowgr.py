r"""GFlowGR: fine-tune a token-level generative recommender as a GFlowNet over its semantic-ID paths
(arXiv:2506.16114), beside token-level SFT.

The token policy emits an item y as its semantic ID c(y) = (c_1 … c_{L'}) (L' = L + 1 with the
disambiguation token) through the states s_0 = (x) → s_1 = (x, c_1) → … → s_{L'}. The states form the
prefix tree of the valid IDs: each has one parent, so the backward policy is P_B = 1 and each item has
exactly one trajectory, whose forward probability is the policy's item probability::

    π(y|x) = Π_l P_F(c_l | x, c_<l)          (invalid tokens masked: models/token.py)

Objective, per batch of logged clicks (context x, clicked item y⁺)::

    L = L_SFT + λ · L_GFN

    L_SFT = −mean_t log π(y⁺_t | x_t)                                          (token SFT, = sft-token)

    TB:  L_GFN = mean_{x, y ~ mixture} δ_TB²,  δ_TB = log Z(x) + Σ_l log P_F(c_l(y) | x, c_<l) − β log R(x, y)
    DB:  L_GFN = mean_{x, y, l} δ_l²,          δ_l  = log F(s_{l−1}) + log P_F(c_l | x, c_<l) − log F(s_l),
                                               log F(s_{L'}) := β log R(x, y)

log Z(x) is a small head on the backbone's state of the history (TB); log F(s_l) a linear head per
depth on the token head's state before token l (DB, :meth:`TokenModel.step_states`). Both losses
vanish exactly when π(y|x) = R(x,y)^β / Σ_y' R(x,y')^β (posttrain/gflownet.py), so λ trades imitation
against matching the reward, and β sharpens it.

The trajectories y are N = ``n_augment`` items per click drawn from a mixture of samplers, and R is a
composite reward built from public data only (posttrain/gflowgr_data.py)::

    samplers   clicked y⁺ | shown in its slate, not clicked | uniform random | π_ref-ranked curriculum
               (easy → hard negatives over training) | on-policy (the current policy's constrained sampler)
    log R      = w_outcome · outcome(y)                    clicked (+ its rating) / shown / never shown
               + w_collab  · standardised π_ref logit of y  the collaborative score
               + w_prefix  · shared-prefix(c(y), c(y⁺)) / L'

π_ref (the token SFT policy the recipe starts from) stays frozen: it ranks the curriculum and gives
the collaborative term, from its exact enumerated item distribution. To bound the cost, the GFN term
reads ``contexts_per_window`` random clicks of each training window (the SFT term reads them all).

Training logs per epoch (the policy's history): ``sft``, ``gfn``, the objective's residuals
(``tb_residual``, ``tb_abs_residual``, ``log_z`` | ``db_residual``, ``db_abs_residual``, ``log_f0``),
each reward term (``reward_outcome``, ``reward_collab``, ``reward_prefix``, ``log_reward``) and each
sampler's share (``share_clicked`` …). The log Z / log F heads are training scaffolding: the saved
policy is the token policy alone, and its item distribution is the enumerated π(i|x), scored by
ground truth, offline metrics and OPE like any other policy.

The clicks' slates come from the public impressions (``PostTrainData.interactions``); without them
(a bare clicks frame) each click's slate holds the click alone: the shown sampler falls back to random
items and no item gets the shown outcome.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, LogError
from ..models.device import autocast
from ..models.load import TrainedPolicy
from ..models.token import TokenModel, is_token_model
from ..seeding import SeedTree
from ..signals import reward_range
from .bc import bc_nll_loss
from .data import Batch, PostTrainData
from .gflownet import GFlowGRConfig, combined_loss, db_loss, tb_loss
from .gflowgr_data import ClickContexts, SlateIndex, composite_reward, sample_items
from .loop import Metrics, Run, TrainConfig, decay_groups, fit, param_group, window_batches

CONFIG = GFlowGRConfig

TOKEN_LEVEL = True
"""GFlowGR balances flows over semantic-ID paths: it trains token policies."""

TOKEN_ONLY = True
"""... and only those (an item-level recipe with method gflowgr is refused)."""


def needs_reward_model(cfg: GFlowGRConfig) -> bool:
    """The composite reward reads the logs and π_ref, not a fitted reward model."""
    return False


def needs_impressions(cfg: GFlowGRConfig) -> bool:
    """The shown sampler and the shown outcome read each click's slate: the whole public impressions."""
    return True


# ---------------------------------------------------------------- the flow heads


class LogZHead(nn.Module):
    """log Z(x) from the backbone's state of the history: a one-hidden-layer MLP ``(..., dim) -> (...)``."""

    def __init__(self, dim: int, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        _init(self, generator)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h.float()).squeeze(-1)


class LogFlowHead(nn.Module):
    """log F(s_0 … s_{L'−1}) from the token head's state before each token: a Linear(H, 1) per
    depth, ``(..., L', H) -> (..., L')`` (the terminal flow is the reward, not a head output)."""

    def __init__(self, depth: int, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(depth))
        _init(self, generator)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(states[..., d, :].float()) for d, head in enumerate(self.heads)], dim=-1)


@torch.no_grad()
def _init(module: nn.Module, generator: torch.Generator) -> None:
    """N(0, 0.02) weights and zero biases from ``generator`` (no global RNG)."""
    for p in module.parameters():
        if p.ndim >= 2:
            p.copy_(torch.empty(p.shape).normal_(0.0, 0.02, generator=generator))
        else:
            p.zero_()


# ---------------------------------------------------------------- which clicks get the GFN term


def pick_contexts(mask: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of up to ``k`` random real positions per window (``mask`` ``(B, L)``); k = 0 picks all."""
    if k == 0:
        return np.nonzero(mask)
    keys = np.where(mask, rng.random(mask.shape), np.inf)  # a random order of each row's real positions
    order = np.argsort(keys, axis=1, kind="stable")[:, :k]
    rows = np.repeat(np.arange(len(mask)), order.shape[1])
    cols = order.reshape(-1)
    keep = mask[rows, cols]
    rows, cols = rows[keep], cols[keep]
    by = np.lexsort((cols, rows))  # row-major, as np.nonzero gives them
    return rows[by], cols[by]


# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class _Setup:
    """What every batch reads: the frozen π_ref, the codes, the slates, the signal's range."""

    ref: TokenModel
    slates: SlateIndex | None
    signal_range: tuple[float, float]
    total_steps: int


def train(
    policy_ref: TrainedPolicy,
    data: PostTrainData,
    cfg: GFlowGRConfig,
    train_cfg: TrainConfig,
    seed: SeedTree,
    progress: bool = True,
) -> TrainedPolicy:
    """A copy of the token policy ``policy_ref`` fine-tuned by GFlowGR (module docstring); ``policy_ref``
    is untouched and is π_ref of the curriculum and the collaborative reward term."""
    if not is_token_model(policy_ref.model):
        raise ConfigError("method 'gflowgr' balances flows over semantic-ID tokens: use it with generate = 'token'")
    if data.n_items != policy_ref.n_items:
        raise ConfigError(f"n_items = {data.n_items} does not match the policy's catalogue of {policy_ref.n_items}")
    policy = policy_ref.clone()
    windows = data.windows(policy.max_len)
    if train_cfg.epochs and len(windows) == 0:
        raise LogError("no training windows: every user in the clicks has fewer than two clicks")
    slates = None
    if data.interactions is not None and windows.slate_ids is not None:
        slates = SlateIndex.from_interactions(data.interactions)
    steps_per_epoch = -(-len(windows) // train_cfg.batch_size)
    setup = _Setup(
        ref=policy_ref.clone().model.eval().requires_grad_(False),  # frozen π_ref, never trained
        slates=slates, signal_range=reward_range(data.reward), total_steps=max(1, train_cfg.epochs * steps_per_epoch),
    )

    model: TokenModel = policy.model
    heads = seed.child("heads")
    init = torch.Generator().manual_seed(heads.integer("init"))
    if cfg.objective == "tb":
        head: nn.Module = LogZHead(model.cfg.dim, model.head_cfg.hidden, init)
    else:
        head = LogFlowHead(model.depth, model.head_cfg.hidden, init)
    module = nn.ModuleDict({"policy": model, "head": head})
    groups = [*decay_groups(module["policy"], train_cfg.weight_decay),
              param_group(head.parameters(), lr=cfg.head_lr)]

    rng = seed.generator("augment")  # contexts, sampler mixture and off-policy draws
    sampler = {"torch": None}  # the on-policy sampler's generator, made on the training device
    step = {"n": 0}

    def prepare(module: nn.Module, batch: Batch) -> Batch:
        """Without gradients: pick the GFN clicks, draw their N trajectories, score them."""
        policy_model: TokenModel = module["policy"]
        mask = batch.mask.cpu().numpy()
        rows, cols = pick_contexts(mask, cfg.contexts_per_window, rng)
        r_t, c_t = torch.from_numpy(rows).to(batch.inputs.device), torch.from_numpy(cols).to(batch.inputs.device)
        clicked = batch.targets[r_t, c_t].cpu().numpy()
        if setup.slates is not None:
            slate = setup.slates.lookup(batch.slate_ids[r_t, c_t])
        else:
            slate = clicked[:, None]
        ctx = ClickContexts(clicked, slate, batch.rewards[r_t, c_t].double().cpu().numpy())

        setup.ref.to(batch.inputs.device)
        with autocast(batch.inputs.device):
            h_ref = setup.ref.encode(batch.inputs)
        ref_logits = setup.ref.item_log_probs(h_ref.float()[r_t, c_t])  # (B, n_items) exact log π_ref

        # The on-policy draws come from the current policy without dropout (eval mode): dropout
        # would read torch's global RNG.
        was_training = policy_model.training
        policy_model.eval()
        with autocast(batch.inputs.device):
            h_now = policy_model.encode(batch.inputs).float()[r_t, c_t]
        policy_model.train(was_training)
        if sampler["torch"] is None:
            sampler["torch"] = torch.Generator(device=batch.inputs.device).manual_seed(seed.integer("on_policy"))

        def on_policy(need: np.ndarray, n: int) -> np.ndarray:
            idx = torch.from_numpy(need).to(h_now.device)
            return policy_model.sample(h_now[idx], n, sampler["torch"]).cpu().numpy()

        progress_ = min(1.0, step["n"] / setup.total_steps)
        step["n"] += 1
        aug = sample_items(ctx, cfg, data.n_items, rng, ref_logits=ref_logits, progress=progress_, on_policy=on_policy)
        terms = composite_reward(aug.items, ctx, policy_model.codes, cfg, ref_logits=ref_logits,
                                 signal_range=setup.signal_range)
        batch.extra.update(
            gfn_rows=r_t, gfn_cols=c_t, gfn_items=torch.from_numpy(aug.items).to(batch.inputs.device),
            gfn_log_reward=terms.log_reward.float().to(batch.inputs.device),
            **{k: v.float() for k, v in terms.metrics().items()},
            **{k: torch.tensor(v) for k, v in aug.shares().items()},
        )
        return batch

    def loss_fn(module: nn.Module, batch: Batch, run: Run) -> tuple[torch.Tensor, Metrics]:
        policy_model: TokenModel = module["policy"]
        with run.autocast():
            h = policy_model.encode(batch.inputs, run.dropout)
        h = h.float()
        # L_SFT: teacher-forced token NLL of every logged click
        sft, _ = bc_nll_loss(-policy_model.target_log_probs(h, batch.targets.clamp(min=0)), batch.mask)

        # L_GFN on the N trajectories of each picked click: one path each (P_B = 1), fixed length L'
        items = batch.extra["gfn_items"]  # (B, N)
        b, n = items.shape
        hc = h[batch.extra["gfn_rows"], batch.extra["gfn_cols"]]  # (B, dim): the click's context state
        hn = hc[:, None, :].expand(b, n, hc.shape[-1])
        log_pf = policy_model.target_log_probs(hn, items, per_step=True).reshape(b * n, -1)
        mask = torch.ones_like(log_pf, dtype=torch.bool)
        log_r = batch.extra["gfn_log_reward"].reshape(b * n)
        if cfg.objective == "tb":
            log_z = module["head"](hc).repeat_interleave(n)
            gfn, metrics = tb_loss(log_pf, mask, log_r, log_z, cfg.reward_exponent)
        else:
            log_f = module["head"](policy_model.step_states(hn, items)).reshape(b * n, -1)
            log_f = torch.cat([log_f, torch.zeros_like(log_f[:, :1])], dim=1)  # the terminal flow is read from R
            gfn, metrics = db_loss(log_pf, mask, log_r, log_f, cfg.reward_exponent)
        logged = {k: v for k, v in batch.extra.items() if k.startswith(("reward_", "share_")) or k == "log_reward"}
        return combined_loss(sft, gfn, cfg.gfn_weight, {**metrics, **logged})

    history = fit(
        module, window_batches(windows, train_cfg.batch_size, train_cfg.bucket_by_length), loss_fn,
        epochs=train_cfg.epochs, lr=train_cfg.lr, groups=groups, grad_clip=train_cfg.grad_clip,
        device=train_cfg.device, seed=seed, prepare=prepare, progress=progress, desc=cfg.name,
    )
    policy.history.extend({"stage": cfg.name, **row} for row in history)
    return policy  # the token policy alone: the flow head stays behind


__all__ = ["CONFIG", "LogFlowHead", "LogZHead", "TOKEN_LEVEL", "TOKEN_ONLY", "needs_reward_model", "pick_contexts",
           "train"]
