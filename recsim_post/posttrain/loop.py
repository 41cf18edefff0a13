"""The training loop every method shares: AdamW over shuffled windows, one loss function per method.

A run is a pure function of (model, windows, loss, config, seed): batch order and dropout masks come
from generators seeded by the SeedTree, parameters are initialised by the caller, and nothing reads
or writes torch's global RNG. On CUDA the forward pass runs under bf16 autocast; the loss is always
computed in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import Config, knob
from ..errors import ConfigError, LogError
from ..models.device import DevicePref, autocast, pick_device
from ..seeding import SeedTree
from ..models.policy import SequencePolicy
from .data import Batch, PostTrainData, Windows

LossFn = Callable[[torch.Tensor, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``loss_fn(logits (B, L, n_items), batch) -> (scalar loss, {name: 0-dim detached tensor})``."""

Prepare = Callable[[nn.Module, Batch], Batch]
"""``prepare(model, batch) -> batch`` with ``batch.extra`` filled, run once per batch (no gradients)."""


@dataclass(frozen=True)
class TrainConfig(Config):
    """Optimisation settings for one training stage (pre-training or fine-tuning)."""

    epochs: int = knob(10, "passes over the training windows", ge=0, le=100_000)
    batch_size: int = knob(128, "windows per optimiser step", ge=1, le=1_000_000)
    lr: float = knob(1e-3, "AdamW learning rate", gt=0.0, le=1.0)
    weight_decay: float = knob(0.0, "AdamW decoupled weight decay (matrices and embeddings only)", ge=0.0, le=1.0)
    grad_clip: float = knob(1.0, "clip the global gradient norm to this (0 = no clipping)", ge=0.0, le=1e6)
    device: DevicePref = knob("auto", "where to train: 'auto' (CUDA if present), 'cpu' or 'cuda'")


def fit(
    model: nn.Module,
    windows: Windows,
    loss_fn: LossFn,
    cfg: TrainConfig,
    seed: SeedTree,
    progress: bool = True,
    desc: str = "train",
    prepare: Prepare | None = None,
    inner_steps: int = 1,
) -> list[dict[str, float]]:
    """Train ``model`` in place on ``windows`` with ``loss_fn``; return one metrics dict per epoch
    (``epoch`` and the batch-mean of every metric the loss reports). The model ends in eval mode.

    ``prepare(model, batch) -> batch`` runs once per batch without gradients, before the updates
    (on-policy methods sample actions and record old log-probabilities there, in ``batch.extra``);
    ``inner_steps`` optimiser steps are then taken on that batch (PPO's several epochs per sample).
    """
    if cfg.epochs == 0:
        model.eval()
        return []
    if len(windows) == 0:
        raise LogError("no training windows: every user in the clicks has fewer than two clicks")
    device = pick_device(cfg.device)
    model.to(device)
    # Decay only matrices and embeddings; decaying LayerNorm gains and biases just fights the fit.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    order_rng = torch.Generator().manual_seed(seed.integer("batch_order"))
    dropout_rng = torch.Generator(device=device).manual_seed(seed.integer("dropout"))

    n_batches = windows.n_batches(cfg.batch_size)
    history: list[dict[str, float]] = []
    with tqdm(total=cfg.epochs * n_batches, desc=desc, disable=not progress, leave=False) as bar:
        for epoch in range(cfg.epochs):
            model.train()
            sums: dict[str, torch.Tensor] = {}
            for batch in windows.batches(cfg.batch_size, order_rng):
                batch = batch.trim().to(device)
                if prepare is not None:
                    with torch.no_grad():
                        batch = prepare(model, batch)
                for _ in range(inner_steps):
                    with autocast(device):
                        logits = model(batch.inputs, generator=dropout_rng)
                    loss, metrics = loss_fn(logits.float(), batch)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                    for name, value in {"loss": loss.detach(), **metrics}.items():
                        sums[name] = sums.get(name, 0.0) + value.detach().float()
                bar.update(1)
            # One host sync per epoch, not per step.
            steps = n_batches * inner_steps
            row = {"epoch": epoch + 1, **{k: float(v) / steps for k, v in sums.items()}}
            history.append(row)
            bar.set_postfix(epoch=epoch + 1, loss=f"{row['loss']:.4f}")
    model.eval()
    return history


def train_copy(
    policy_ref: SequencePolicy,
    data: PostTrainData,
    loss_fn: LossFn,
    cfg: TrainConfig,
    seed: SeedTree,
    progress: bool,
    stage: str,
    prepare: Prepare | None = None,
    inner_steps: int = 1,
) -> SequencePolicy:
    """The plumbing every method shares: copy π_ref, cut the clicks into windows, fit ``loss_fn``
    and record the per-epoch metrics in the copy's history. ``policy_ref`` is left untouched."""
    if data.n_items != policy_ref.n_items:
        raise ConfigError(f"n_items = {data.n_items} does not match the policy's catalogue of {policy_ref.n_items}")
    policy = policy_ref.clone()
    history = fit(
        policy.model, data.windows(policy.max_len), loss_fn, cfg, seed, progress, stage, prepare, inner_steps
    )
    policy.history.extend({"stage": stage, **row} for row in history)
    return policy


__all__ = ["TrainConfig", "fit", "LossFn", "train_copy"]
