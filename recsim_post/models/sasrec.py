"""SASRec: a causal self-attention next-item model (Kang & McAuley, ICDM 2018), pre-LN variant.

Inputs are item-id histories left-padded with ``PAD = -1`` (shape ``(B, L)``, ``L <= max_len``);
the output is next-item logits over the whole catalogue at every position, ``(B, L, n_items)``:
``logits[b, t]`` scores the item that follows ``items[b, : t + 1]``.

Design choices worth knowing:

* Item id ``i`` is embedding row ``i + 1``; row 0 is padding. The output layer is the item embedding
  itself (tied), without the padding row, so a logit is ``<h_t, e_i>``.
* Positions are right-aligned: the last column always gets position ``max_len - 1``. A left-padded
  history therefore gives the same outputs at its real positions however many padding columns it
  carries, which lets the training loop drop all-padding columns from a batch.
* Attention is causal and never looks at padding keys; each position may always attend to itself,
  so padding rows (and the all-padding history) still have a finite softmax and give finite logits.
* Dropout draws its masks from an explicit ``torch.Generator`` passed to :meth:`SASRec.forward`, so
  a training run is reproducible without touching torch's global RNG. Attention-probability
  dropout is left out for the same reason (``scaled_dot_product_attention`` would use the global RNG).
* Parameters are initialised from an explicit generator too (``N(0, 0.02)`` weights, zero biases).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from ..config import Config, knob
from ..errors import ConfigError


@dataclass(frozen=True)
class SASRecConfig(Config):
    """Architecture of a SASRec sequence model."""

    kind: Literal["sasrec"] = knob("sasrec", "model family")
    dim: int = knob(64, "embedding and hidden width", ge=8, le=4096)
    n_layers: int = knob(2, "number of transformer blocks", ge=1, le=48)
    n_heads: int = knob(2, "attention heads per block (must divide dim)", ge=1, le=64)
    max_len: int = knob(50, "longest history the model reads (older clicks are dropped)", ge=1, le=4096)
    dropout: float = knob(0.1, "dropout on embeddings and residual branches", ge=0.0, lt=1.0)

    def check(self) -> None:
        if self.dim % self.n_heads:
            raise ConfigError(
                f"n_heads = {self.n_heads} does not divide dim = {self.dim}: "
                "dim must be a multiple of n_heads"
            )


def dropout(x: torch.Tensor, p: float, training: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout whose mask comes from ``generator`` (torch's global RNG only if it is None)."""
    if not training or p == 0.0:
        return x
    if generator is None:
        return F.dropout(x, p, training=True)
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep / (1.0 - p)


class _Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, n_heads: int, p: float) -> None:
        super().__init__()
        self.n_heads, self.p = n_heads, p
        self.ln_attn = nn.LayerNorm(dim)
        self.qkv = skip_init(nn.Linear, dim, 3 * dim)
        self.out = skip_init(nn.Linear, dim, dim)
        self.ln_ffn = nn.LayerNorm(dim)
        self.ffn_in = skip_init(nn.Linear, dim, 4 * dim)
        self.ffn_out = skip_init(nn.Linear, 4 * dim, dim)

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        b, length, dim = x.shape
        qkv = self.qkv(self.ln_attn(x)).view(b, length, 3, self.n_heads, dim // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, L, dim/H)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        a = a.transpose(1, 2).reshape(b, length, dim)
        x = x + dropout(self.out(a), self.p, self.training, generator)
        h = self.ffn_out(F.gelu(self.ffn_in(self.ln_ffn(x))))
        return x + dropout(h, self.p, self.training, generator)


class SASRec(nn.Module):
    """Causal transformer over item ids; logits over the full catalogue by the tied item embedding.

    The sequence-model interface (what :class:`~recsim_post.models.policy.SequencePolicy` and the
    training loop rely on): ``cfg``, ``n_items``, ``encode(items) -> (B, L, dim)``,
    ``score(h) -> (..., n_items)`` and ``forward = score(encode(.))``; ``item_vectors(ids)`` for the
    training losses that score only a few items.
    """

    def __init__(self, cfg: SASRecConfig, n_items: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if n_items < 1:
            raise ConfigError(f"n_items = {n_items} must be >= 1")
        self.cfg, self.n_items = cfg, n_items
        # skip_init builds the tensors without drawing from the global RNG; reset_parameters fills them.
        self.item_emb = skip_init(nn.Embedding, n_items + 1, cfg.dim, padding_idx=0)
        self.pos_emb = skip_init(nn.Embedding, cfg.max_len, cfg.dim)
        self.blocks = nn.ModuleList(_Block(cfg.dim, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        self.final_ln = nn.LayerNorm(cfg.dim)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise every parameter from ``generator`` (a fixed seed 0 when None)."""
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                # Draw on CPU, then copy, so the same generator works whatever device the model is on.
                w = torch.empty(module.weight.shape).normal_(0.0, 0.02, generator=generator)
                module.weight.copy_(w)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        self.item_emb.weight[0].zero_()

    def encode(self, items: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Hidden states ``(B, L, dim)`` for left-padded item ids ``(B, L)`` (PAD = -1)."""
        b, length = items.shape
        if length > self.cfg.max_len:
            raise ValueError(f"history length {length} exceeds max_len = {self.cfg.max_len}")
        real = items >= 0
        pos = torch.arange(self.cfg.max_len - length, self.cfg.max_len, device=items.device)
        x = self.item_emb((items + 1).clamp(min=0)) * math.sqrt(self.cfg.dim) + self.pos_emb(pos)
        x = dropout(x, self.cfg.dropout, self.training, generator) * real.unsqueeze(-1)
        # allowed[b, 0, q, k]: key k is at or before query q and is a real item, or is q itself
        # (the diagonal keeps a padding query's softmax finite; real queries never see padding).
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=items.device)
        allowed = (causal & (real[:, None, :] | eye)).unsqueeze(1)
        for block in self.blocks:
            x = block(x, allowed, generator)
        return self.final_ln(x)

    def score(self, h: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., n_items)`` of hidden states ``(..., dim)`` against every item (pad row excluded)."""
        return h @ self.item_emb.weight[1:].T

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """The output-layer vectors ``(..., dim)`` of item ids ``(...)``: ``score(h)[..., i] == <h, item_vectors(i)>``,
        for losses that score a few items rather than the catalogue (the sampled softmax). With
        ``item_emb.sparse`` set (``sparse_embeddings`` training) a lookup, so the gradient holds only these rows."""
        if self.item_emb.sparse:
            return F.embedding(ids + 1, self.item_emb.weight, sparse=True)
        return self.item_emb.weight[ids + 1]

    def forward(self, items: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Next-item logits ``(B, L, n_items)`` at every position of ``items`` ``(B, L)``."""
        return self.score(self.encode(items, generator))


__all__ = ["SASRecConfig", "SASRec", "dropout"]
