"""Propensities estimated from the public logs: what a real team has instead of the sealed pi_0.

Two estimators of the logger's single-draw probability p^(a_i | x_i) of the logged top item:

* ``"bc"`` (default): a behaviour-cloning SequencePolicy (SASRec) trained by cross-entropy to
  predict the position-0 item SHOWN (not clicked) from the user's click history at that time::

      L = -(1/n) sum_i log softmax(f(h_i))[a_i]

  It sees the item ids of the last ``max_len`` clicks. It cannot see the logger's stale per-user
  relevance estimate (only infer it from clicks), the trend and shocks at round t (the logger
  follows them; the history model has no clock), or the exact eps-mixing: its propensities are
  misspecified, and the OPE report measures the bias that follows. Fitted on all logged rows.
* ``"frequency"``: p^(a) = the share of position-0 impressions that showed a (context-free).

Both are clipped from below at ``floor``, so no importance weight exceeds pi / floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..models.policy import SequencePolicy, build_model
from ..models.sasrec import SASRecConfig
from ..policy import softmax
from ..posttrain.loop import Run, fit, param_group
from ..seeding import SeedTree
from .data import LoggedContexts, chunk_rows

PROPENSITY_METHODS = ("bc", "frequency")


@dataclass(frozen=True)
class PropensityModelConfig:
    """The behaviour-cloning model of the logger (small SASRec, a few epochs of Adam)."""

    dim: int = 32
    n_layers: int = 1
    n_heads: int = 1
    max_len: int = 50
    dropout: float = 0.1
    epochs: int = 5
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.0


def fit_logger_model(
    ctx: LoggedContexts, n_items: int, cfg: PropensityModelConfig = PropensityModelConfig(), seed: int = 0
) -> SequencePolicy:
    """A SequencePolicy trained (by the one training loop) to predict the shown position-0 item from
    the click history. Streams of ``SeedTree(seed).child("ope-propensity")``: ``init``, ``dropout``,
    ``batches`` (the order)."""
    tree = SeedTree(seed).child("ope-propensity")
    mcfg = SASRecConfig(dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, max_len=cfg.max_len, dropout=cfg.dropout)
    model = build_model(mcfg, n_items, torch.Generator().manual_seed(tree.integer("init")))
    policy = SequencePolicy(model, n_items, cfg.max_len)
    hist = torch.from_numpy(policy.pad(ctx.hist).copy())
    target = torch.from_numpy(ctx.action.astype(np.int64))
    order = tree.generator("batches")
    n_batches = max(1, math.ceil(len(target) / cfg.batch_size))

    def batches(run: Run):  # noqa: ANN202
        for b in np.array_split(order.permutation(len(target)), n_batches):
            bi = torch.from_numpy(b)
            yield hist[bi].to(run.device), target[bi].to(run.device)

    def loss(module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], run: Run):  # noqa: ANN202
        h, a = batch
        with run.autocast():
            logits = module.score(module.encode(h, run.dropout)[:, -1])
        return nn.functional.cross_entropy(logits.float(), a), {}

    # Adam with plain L2 on every parameter, as this model has always been trained
    history = fit(model, batches, loss, epochs=cfg.epochs, lr=cfg.lr, seed=tree,
                  groups=[param_group(model.parameters(), weight_decay=cfg.weight_decay)],
                  device="auto", optimizer=torch.optim.Adam, progress=False, desc="ope-propensity")
    policy.history.extend({"stage": "ope-propensity", **row} for row in history)
    return policy


def _propensity_part(model: SequencePolicy, hist: np.ndarray, action: np.ndarray, step: int, lo: int,
                     hi: int) -> np.ndarray:
    """p^(a_i | x_i) for the rows [lo, hi), ``step`` rows at a time (a shard of :func:`estimated_propensities`)."""
    out = np.empty(hi - lo)
    for start in range(lo, hi, step):
        sl = slice(start, min(start + step, hi))
        probs = softmax(model.logits(hist[sl]))
        out[sl.start - lo:sl.stop - lo] = probs[np.arange(len(probs)), action[sl]]
    return out


def estimated_propensities(
    ctx: LoggedContexts,
    n_items: int,
    method: str = "bc",
    floor: float = 1e-4,
    model_cfg: PropensityModelConfig = PropensityModelConfig(),
    seed: int = 0,
    model: SequencePolicy | None = None,
    shards: int | None = None,
    backend: str = "local",
) -> np.ndarray:
    """p^(a_i | x_i) from the public logs, clipped to [floor, 1]: (n,).

    ``"bc"``: the softmax of :func:`fit_logger_model` (or ``model``) at the logged action, the rows
    scored chunk by chunk, in ``shards`` on ``backend`` ("ray": Ray tasks) with the same numbers
    (:func:`~recsim_post.truth.sharded.map_row_shards`); the model is fitted here, once.
    ``"frequency"``: the share of rows that showed a_i (ignores the context).
    """
    if not 0 < floor <= 1:
        raise ValueError(f"floor must lie in (0, 1], got {floor!r}")
    if method == "frequency":
        p = np.bincount(ctx.action, minlength=n_items)[ctx.action] / len(ctx)
    elif method == "bc":
        from ..truth.sharded import map_row_shards

        model = model if model is not None else fit_logger_model(ctx, n_items, model_cfg, seed)
        step = chunk_rows(n_items, 3)
        p = np.concatenate(map_row_shards(_propensity_part, len(ctx), step, (model, ctx.hist, ctx.action, step),
                                          shards, backend))
    else:
        raise ValueError(f"propensity method must be one of {', '.join(map(repr, PROPENSITY_METHODS))}, got {method!r}")
    return np.clip(p, floor, 1.0)


__all__ = ["PROPENSITY_METHODS", "PropensityModelConfig", "estimated_propensities", "fit_logger_model"]
