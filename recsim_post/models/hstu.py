r"""HSTU: a Hierarchical Sequential Transduction Unit backbone (Zhai et al., ICML 2024, §3).

"Actions Speak Louder than Words: Trillion-Parameter Sequential Transducers for Generative
Recommendations" replaces the transformer block (softmax attention + feed-forward) by one unit with
three sub-layers, Eqs. (1)-(3)::

    U(X), V(X), Q(X), K(X) = Split(φ1(f1(X)))                      (1)  φ1 = SiLU, f1 linear
    A(X) V(X)              = φ2(Q(X) K(X)ᵀ + rab^{p,t}) V(X)        (2)  φ2 = SiLU, no softmax
    Y(X)                   = f2(Norm(A(X) V(X)) ⊙ U(X))             (3)  gating by U, f2 linear

and a layer returns ``X + Y(X)``; there is no separate feed-forward block. Inputs, outputs and the
interface are those of :class:`~recsim_post.models.sasrec.SASRec` (left-padded ids, ``PAD = -1``,
item ``i`` is embedding row ``i + 1``, tied output embedding, ``encode``/``score``/``forward``), so
either backbone is selected in a recipe by ``[model] kind = "hstu"`` or ``"sasrec"``.

What this implementation does, and where it chooses:

* **Pointwise attention.** ``A = SiLU(QKᵀ + rab) ⊙ causal / n`` (see
  :func:`pointwise_attention_weights`): each weight is computed on its own, so a row need not sum to
  one and the strength of a user's engagement survives aggregation (the paper's argument against
  softmax). Multi-head: Q, K, V, U are split into ``n_heads`` heads of ``dim / n_heads`` each;
  ``Norm`` is a LayerNorm over the concatenated heads, as in the reference code.
* **Normalisation n** (``attn_norm``): ``"max_len"`` (default) divides by the constant
  ``cfg.max_len``. That is what the reference does (it divides by the padded length, and it pads
  every sequence to the maximum length), and it keeps the count of engagements visible.
  ``"attended"`` divides by the number of real positions each query attends to (itself included),
  so ``A`` averages instead of summing. Both make padding invisible: extra left padding or trimmed
  all-padding columns change no output at a real position.
* **Relative attention bias rab^{p,t}.** ``rab^p``: one learned scalar per head and
  relative-position bucket; distance ``d = q − k ≥ 0`` (causal) falls in bucket ``d`` for
  ``d < n_pos_buckets / 2`` and in log-spaced buckets up to ``max_len`` beyond (T5-style; every
  distance is exact when ``n_pos_buckets >= max_len``). ``rab^t``: one learned scalar per head and
  time-gap bucket ``min(floor(log2(1 + t_q − t_k)), n_time_buckets − 1)``, added only when
  ``n_time_buckets > 0`` *and* the caller passes ``timestamps``. The training windows and
  :class:`~recsim_post.models.policy.SequencePolicy` carry no timestamps yet, so the time term is
  off by default (``n_time_buckets = 0``) and the model then relies on positions alone.
* **Embeddings.** Like SASRec (and the reference's input preprocessor): item embedding ``× √dim`` plus
  a learned absolute position embedding (``abs_pos``), right-aligned so the last column always has
  position ``max_len − 1``; padding rows are zeroed. A final LayerNorm precedes the tied output layer
  (the reference L2-normalises instead, for its sampled-softmax loss; we score the full catalogue).
* **Masking.** Causal, and padding keys are never attended to. A padding query (or an all-padding
  history) attends to nothing, gets ``A V = 0`` and still gives finite logits — no softmax, so no
  ``0 / 0`` to guard against.
* **Randomness.** Dropout (on the input embeddings and on ``Norm(AV) ⊙ U`` before ``f2``, where the
  reference puts it) draws its masks from the ``generator`` passed to :meth:`HSTU.forward`;
  parameters (``N(0, 0.02)`` weights and relative biases, zero linear biases) from the generator
  passed to the constructor. Torch's global RNG is never touched.
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
from .sasrec import dropout


@dataclass(frozen=True)
class HSTUConfig(Config):
    """Architecture of an HSTU sequence model (Zhai et al. 2024, §3)."""

    kind: Literal["hstu"] = knob("hstu", "model family: HSTU (pointwise SiLU attention, gated, no FFN)")
    dim: int = knob(64, "embedding and hidden width", ge=8, le=4096)
    n_layers: int = knob(2, "number of HSTU layers", ge=1, le=48)
    n_heads: int = knob(2, "attention heads per layer (must divide dim)", ge=1, le=64)
    max_len: int = knob(50, "longest history the model reads (older clicks are dropped)", ge=1, le=4096)
    dropout: float = knob(0.1, "dropout on embeddings and on the gated attention output", ge=0.0, lt=1.0)
    n_pos_buckets: int = knob(
        32, "relative-position buckets of rab^p (exact below half of them, log-spaced up to max_len)", ge=2, le=4096
    )
    n_time_buckets: int = knob(
        0, "log2 time-gap buckets of rab^t; 0 = no time term (windows carry no timestamps yet)", ge=0, le=64
    )
    attn_norm: Literal["max_len", "attended"] = knob(
        "max_len", "divide SiLU attention by max_len (reference) or by the number of attended positions"
    )
    abs_pos: bool = knob(True, "add a learned absolute (right-aligned) position embedding to the input")

    def check(self) -> None:
        if self.dim % self.n_heads:
            raise ConfigError(
                f"n_heads = {self.n_heads} does not divide dim = {self.dim}: "
                "dim must be a multiple of n_heads"
            )


def relative_position_buckets(distance: torch.Tensor, n_buckets: int, max_distance: int) -> torch.Tensor:
    """Bucket of each non-negative distance ``q − k``: exact below ``n_buckets // 2``, then log-spaced
    up to ``max_distance`` (T5-style); every distance is exact when ``n_buckets >= max_distance``."""
    distance = distance.clamp(min=0)
    if n_buckets >= max_distance:
        return distance.clamp(max=n_buckets - 1)
    exact = n_buckets // 2
    # exact < n_buckets < max_distance, so the log below is of a ratio >= 1 over a positive log.
    far = exact + (
        torch.log(distance.clamp(min=exact).float() / exact) / math.log(max_distance / exact) * (n_buckets - exact)
    ).long()
    return torch.where(distance < exact, distance, far.clamp(max=n_buckets - 1))


def time_gap_buckets(timestamps: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """``(B, L, L)`` bucket ``min(floor(log2(1 + t_q − t_k)), n_buckets − 1)`` of each query/key time
    gap (negative gaps, which the causal mask hides anyway, count as 0)."""
    gap = (timestamps[:, :, None] - timestamps[:, None, :]).double().clamp(min=0.0)
    return torch.floor(torch.log2(1.0 + gap)).long().clamp(max=n_buckets - 1)


def pointwise_attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    bias: torch.Tensor | float,
    allowed: torch.Tensor,
    norm: torch.Tensor | float,
) -> torch.Tensor:
    """HSTU attention weights ``φ2(QKᵀ + rab) / n`` on allowed pairs, 0 elsewhere (Eq. 2, φ2 = SiLU).

    ``q`` ``(..., Lq, d)``, ``k`` ``(..., Lk, d)``; ``bias`` and ``allowed`` (bool) broadcast to
    ``(..., Lq, Lk)``; ``norm`` broadcasts too (a number, or a count per query). No softmax: the
    weights of a row need not sum to one, and a query with no allowed key gets an all-zero row.
    """
    scores = q @ k.transpose(-1, -2) + bias
    return torch.where(allowed, F.silu(scores), torch.zeros((), dtype=scores.dtype, device=scores.device)) / norm


class _HSTULayer(nn.Module):
    """One HSTU layer: X + f2(Norm(A(X)V(X)) ⊙ U(X)), Eqs. (1)-(3), pre-LN on the input."""

    def __init__(self, cfg: HSTUConfig) -> None:
        super().__init__()
        self.n_heads, self.p = cfg.n_heads, cfg.dropout
        self.norm_in = nn.LayerNorm(cfg.dim)
        self.f1 = skip_init(nn.Linear, cfg.dim, 4 * cfg.dim)
        # Small eps: A V is divided by max_len and can be tiny early in a sequence.
        self.norm_attn = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.f2 = skip_init(nn.Linear, cfg.dim, cfg.dim)
        self.pos_bias = nn.Parameter(torch.zeros(cfg.n_heads, cfg.n_pos_buckets))
        self.time_bias = nn.Parameter(torch.zeros(cfg.n_heads, cfg.n_time_buckets)) if cfg.n_time_buckets else None

    def forward(
        self,
        x: torch.Tensor,
        allowed: torch.Tensor,
        norm: torch.Tensor | float,
        pos_bucket: torch.Tensor,
        time_bucket: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        b, length, dim = x.shape
        u, v, q, k = F.silu(self.f1(self.norm_in(x))).split(dim, dim=-1)  # Eq. (1)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, L, dim) -> (B, H, L, dim/H)
            return t.view(b, length, self.n_heads, dim // self.n_heads).transpose(1, 2)

        bias = self.pos_bias[:, pos_bucket].unsqueeze(0)  # (1, H, L, L)
        if time_bucket is not None and self.time_bias is not None:
            bias = bias + self.time_bias[:, time_bucket].transpose(0, 1)  # (B, H, L, L)
        w = pointwise_attention_weights(heads(q), heads(k), bias, allowed, norm)  # Eq. (2)
        av = (w @ heads(v)).transpose(1, 2).reshape(b, length, dim)
        gated = dropout(self.norm_attn(av) * u, self.p, self.training, generator)
        return x + self.f2(gated)  # Eq. (3) and the residual


class HSTU(nn.Module):
    """HSTU over item ids; logits over the full catalogue by the tied item embedding.

    Same interface as :class:`~recsim_post.models.sasrec.SASRec`: ``cfg``, ``n_items``,
    ``encode(items) -> (B, L, dim)``, ``score(h) -> (..., n_items)`` and ``forward = score(encode(.))``;
    ``encode``/``forward`` also take optional ``timestamps`` ``(B, L)`` for the time bias.
    """

    def __init__(self, cfg: HSTUConfig, n_items: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if n_items < 1:
            raise ConfigError(f"n_items = {n_items} must be >= 1")
        self.cfg, self.n_items = cfg, n_items
        # skip_init builds the tensors without drawing from the global RNG; reset_parameters fills them.
        self.item_emb = skip_init(nn.Embedding, n_items + 1, cfg.dim, padding_idx=0)
        self.pos_emb = skip_init(nn.Embedding, cfg.max_len, cfg.dim) if cfg.abs_pos else None
        self.layers = nn.ModuleList(_HSTULayer(cfg) for _ in range(cfg.n_layers))
        self.final_ln = nn.LayerNorm(cfg.dim)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise every parameter from ``generator`` (a fixed seed 0 when None)."""
        if generator is None:
            generator = torch.Generator().manual_seed(0)

        def normal_(t: torch.Tensor) -> None:
            # Draw on CPU, then copy, so the same generator works whatever device the model is on.
            t.copy_(torch.empty(t.shape).normal_(0.0, 0.02, generator=generator))

        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                normal_(module.weight)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.LayerNorm):
                module.reset_parameters()
            if isinstance(module, _HSTULayer):
                normal_(module.pos_bias)
                if module.time_bias is not None:
                    normal_(module.time_bias)
        self.item_emb.weight[0].zero_()

    def encode(
        self,
        items: torch.Tensor,
        generator: torch.Generator | None = None,
        timestamps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states ``(B, L, dim)`` for left-padded item ids ``(B, L)`` (PAD = -1).

        ``timestamps`` ``(B, L)`` (any monotone time unit; padding entries are ignored) switch on the
        relative time bias; it needs ``n_time_buckets > 0``.
        """
        b, length = items.shape
        cfg = self.cfg
        if length > cfg.max_len:
            raise ValueError(f"history length {length} exceeds max_len = {cfg.max_len}")
        if timestamps is not None:
            if cfg.n_time_buckets == 0:
                raise ValueError("timestamps were given but n_time_buckets = 0: set it > 0 to use a time bias")
            if timestamps.shape != items.shape:
                raise ValueError(f"timestamps have shape {tuple(timestamps.shape)}, items {tuple(items.shape)}")
        device = items.device
        real = items >= 0
        x = self.item_emb((items + 1).clamp(min=0)) * math.sqrt(cfg.dim)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(cfg.max_len - length, cfg.max_len, device=device))
        x = dropout(x, cfg.dropout, self.training, generator) * real.unsqueeze(-1)

        # allowed[b, 0, q, k]: key k is a real item at or before query q (padding is never attended).
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        allowed = (causal & real[:, None, :]).unsqueeze(1)
        if cfg.attn_norm == "max_len":
            norm: torch.Tensor | float = float(cfg.max_len)
        else:
            norm = allowed.sum(-1, keepdim=True).clamp(min=1).to(x.dtype)
        pos = torch.arange(length, device=device)
        pos_bucket = relative_position_buckets(pos[:, None] - pos[None, :], cfg.n_pos_buckets, cfg.max_len)
        time_bucket = None if timestamps is None else time_gap_buckets(timestamps, cfg.n_time_buckets)
        for layer in self.layers:
            x = layer(x, allowed, norm, pos_bucket, time_bucket, generator)
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

    def forward(
        self,
        items: torch.Tensor,
        generator: torch.Generator | None = None,
        timestamps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-item logits ``(B, L, n_items)`` at every position of ``items`` ``(B, L)``."""
        return self.score(self.encode(items, generator, timestamps))


__all__ = [
    "HSTUConfig",
    "HSTU",
    "pointwise_attention_weights",
    "relative_position_buckets",
    "time_gap_buckets",
]
