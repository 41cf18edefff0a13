r"""A token-level generative recommender over semantic IDs (TIGER-style), scored exactly like an
item-level policy.

Every item i has a semantic ID c(i) = (c_0, …, c_{D−1}): L codes and a last disambiguation token
(D = L + 1; see ``recsim_post.semantic``). After a history x the model emits the D tokens one by one::

    h      = backbone(x)                                 SASRec or HSTU over the item history
    u_d    = A_d h + Σ_{j<d} E_j[c_j]                     the state before token d (teacher forcing)
    π(c_d | x, c_<d) = softmax over the tokens that continue a valid prefix of W_d gelu(u_d) + b_d

    log π(i | x) = Σ_d log π(c_d(i) | x, c_<d(i))        (the item's only path: one ID per item)

Tokens that continue no item's prefix get probability 0 (the softmax runs over the valid children
of the prefix only), so the item probabilities sum to one over the catalogue and every sample or
beam is an item. :class:`PrefixTrie` holds the valid continuations as arrays: the children of the
depth-d prefixes form a dense ``(N_d, V_d)`` table, so masks, steps and the enumeration of every
item are gathers, never a Python walk over nodes.

Three ways to read the model:

* :meth:`TokenModel.target_log_probs` — log π(y|x) of given items, teacher-forced, D small
  softmaxes per item: what training uses (no softmax over the catalogue).
* :meth:`TokenModel.item_log_probs` — the exact distribution over the whole catalogue, enumerated
  level by level over the trie (float64): what ground truth, offline metrics, OPE and rollouts read
  through :class:`TokenPolicy.logits`. No sampling noise.
* :meth:`TokenModel.beam_search` and :meth:`TokenModel.sample` — constrained decoding.

The head is a one-hidden-layer MLP per level over the backbone state plus the prefix tokens'
embeddings: small and fast; the prefix sums of every trie node are computed once per call, so the
enumeration costs Σ_d N_d·hidden·(dim + V_d) per history.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from ..config import Config, from_dict, knob, to_dict
from ..errors import ConfigError, LogError
from ..semantic.config import TokenizerConfig
from ..semantic.ids import SemanticIds
from .device import autocast
from .policy import ModelConfig, build_model, canonical, model_config_from_dict, pad_history, read_policy_file, trim_padding

FORMAT = "recsim-post/token-policy/1"

BUDGET_BYTES = 256 * 2**20
"""Largest (rows, nodes, width) float tensor the enumeration and beam search build at once."""


@dataclass(frozen=True)
class TokenHeadConfig(Config):
    """The token-level head on top of the backbone."""

    hidden: int = knob(128, "width of each level's hidden layer and of the prefix-token embeddings", ge=8, le=8192)


# ---------------------------------------------------------------- the prefix trie


class PrefixTrie:
    """The valid semantic IDs as a prefix tree of arrays (numpy; :meth:`TokenModel` keeps torch copies).

    Depth d = 0 … D; the nodes at depth d are the distinct d-token prefixes in lexicographic order
    (node 0 at depth 0 is the empty prefix; the nodes at depth D are the items' full IDs).

    * ``node_of[d]`` ``(n_items,)``: the node of item i's d-token prefix;
    * ``child[d]`` ``(N_d, V_d)``: the node at depth d + 1 reached by token v, or −1 (not a prefix of
      any item); ``child[d] >= 0`` is the mask of valid next tokens;
    * ``parent[d]``, ``token[d]`` ``(N_{d+1},)``: each depth-(d+1) node's parent and last token;
    * ``prefix[d]`` ``(N_d, d)``: each depth-d node's tokens;
    * ``leaf_item`` ``(n_items,)``: the item of each depth-D node.
    """

    def __init__(self, codes: np.ndarray, sizes: tuple[int, ...]) -> None:
        codes = np.asarray(codes, dtype=np.int64)
        n, depth = codes.shape
        if len(sizes) != depth:
            raise ValueError(f"{len(sizes)} codebook sizes for {depth} code columns")
        self.codes, self.sizes, self.n_items, self.depth = codes, tuple(int(s) for s in sizes), n, depth
        self.node_of: list[np.ndarray] = [np.zeros(n, np.int64)]
        self.prefix: list[np.ndarray] = [np.zeros((1, 0), np.int64)]
        for d in range(1, depth + 1):
            uniq, inv = np.unique(codes[:, :d], axis=0, return_inverse=True)
            self.prefix.append(uniq)
            self.node_of.append(inv.reshape(-1).astype(np.int64))
        if len(self.prefix[depth]) != n:
            raise ValueError("two items have the same semantic ID: every row of the codes must be unique")
        self.parent, self.token, self.child = [], [], []
        for d in range(depth):
            m = len(self.prefix[d + 1])
            parent, token = np.empty(m, np.int64), np.empty(m, np.int64)
            parent[self.node_of[d + 1]] = self.node_of[d]
            token[self.node_of[d + 1]] = codes[:, d]
            child = np.full((len(self.prefix[d]), self.sizes[d]), -1, np.int64)
            child[parent, token] = np.arange(m)
            self.parent.append(parent)
            self.token.append(token)
            self.child.append(child)
        self.leaf_item = np.empty(n, np.int64)
        self.leaf_item[self.node_of[depth]] = np.arange(n)

    def n_nodes(self, d: int) -> int:
        return len(self.prefix[d])

    def mask(self, d: int, nodes: np.ndarray) -> np.ndarray:
        """Valid next tokens after the depth-d prefixes ``nodes`` ``(...)``: bool ``(..., V_d)``."""
        return self.child[d][nodes] >= 0

    def walk(self, tokens: np.ndarray) -> np.ndarray:
        """The item of each token path ``(..., D)``, or −1 where a path leaves the trie."""
        node = np.zeros(tokens.shape[:-1], np.int64)
        for d in range(self.depth):
            ok = node >= 0
            tok = tokens[..., d]
            valid = ok & (tok >= 0) & (tok < self.sizes[d])
            node = np.where(valid, self.child[d][np.where(ok, node, 0), np.where(valid, tok, 0)], -1)
        return np.where(node >= 0, self.leaf_item[np.maximum(node, 0)], -1)


# ---------------------------------------------------------------- the model


class TokenModel(nn.Module):
    """Backbone over the item history + an autoregressive head over the item's semantic-ID tokens.

    Exposes the sequence-model interface too (``cfg``, ``n_items``, ``encode``, ``score``,
    ``item_emb``): ``encode`` and ``score`` are the backbone's (the reward model scores its states
    against the backbone's item vectors), and ``forward(items)`` returns the exact next-item
    log-probabilities ``(B, L, n_items)`` enumerated over the trie, so a caller that needs the whole
    catalogue (a frozen π_ref's distribution) reads it like an item model's logits.
    """

    def __init__(
        self, cfg: ModelConfig, head: TokenHeadConfig, ids: SemanticIds, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        n_items = ids.n_items
        self.cfg, self.head_cfg, self.n_items = cfg, head, n_items
        self.backbone = build_model(cfg, n_items, generator)
        self.trie = PrefixTrie(ids.codes, ids.codebook_sizes)
        D, H, dim = self.trie.depth, head.hidden, cfg.dim
        self.proj = nn.ModuleList(skip_init(nn.Linear, dim, H) for _ in range(D))
        self.out = nn.ModuleList(skip_init(nn.Linear, H, v) for v in self.trie.sizes)
        # the last token is never a prefix: D − 1 embedding tables
        self.tok_emb = nn.ModuleList(skip_init(nn.Embedding, v, H) for v in self.trie.sizes[:-1])
        # Torch copies of the trie as non-persistent buffers: they move with .to(device) and stay
        # out of the state dict (the file records the codes and rebuilds them).
        t = self.trie
        self.register_buffer("codes", torch.from_numpy(t.codes), persistent=False)
        for d in range(D):
            self.register_buffer(f"child_{d}", torch.from_numpy(t.child[d]), persistent=False)
            self.register_buffer(f"parent_{d}", torch.from_numpy(t.parent[d]), persistent=False)
            self.register_buffer(f"token_{d}", torch.from_numpy(t.token[d]), persistent=False)
            self.register_buffer(f"node_of_{d}", torch.from_numpy(t.node_of[d]), persistent=False)
            self.register_buffer(f"prefix_{d}", torch.from_numpy(t.prefix[d]), persistent=False)
            # the prefixes with >= 2 valid continuations (the only ones the enumeration runs the head
            # on), each one's row among them, and which children hang below one of them
            fan = (t.child[d] >= 0).sum(axis=1)
            branch = np.flatnonzero(fan >= 2)
            slot = np.full(len(fan), -1, np.int64)
            slot[branch] = np.arange(len(branch))
            self.register_buffer(f"branch_{d}", torch.from_numpy(branch), persistent=False)
            self.register_buffer(f"slot_{d}", torch.from_numpy(slot), persistent=False)
            self.register_buffer(f"branched_{d}", torch.from_numpy(np.flatnonzero(fan[t.parent[d]] >= 2)),
                                 persistent=False)
        self.register_buffer("node_of_items", torch.from_numpy(t.node_of[D]), persistent=False)
        self.register_buffer("leaf_item", torch.from_numpy(t.leaf_item), persistent=False)
        self.reset_head(generator)

    # -- parameters

    @torch.no_grad()
    def reset_head(self, generator: torch.Generator | None = None) -> None:
        """Initialise the head from ``generator`` (after the backbone drew its own): N(0, 0.02)
        weights, zero biases, as the backbones do."""
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        for module in (*self.proj, *self.out, *self.tok_emb):
            module.weight.copy_(torch.empty(module.weight.shape).normal_(0.0, 0.02, generator=generator))
            if isinstance(module, nn.Linear):
                module.bias.zero_()

    @property
    def depth(self) -> int:
        """D = L + 1 tokens per item."""
        return self.trie.depth

    @property
    def item_emb(self) -> nn.Embedding:
        return self.backbone.item_emb

    def _buf(self, name: str, d: int) -> torch.Tensor:
        return getattr(self, f"{name}_{d}")

    # -- the sequence-model interface

    def encode(self, items: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The backbone's hidden states ``(B, L, dim)``."""
        return self.backbone.encode(items, generator)

    def score(self, h: torch.Tensor) -> torch.Tensor:
        """The backbone's tied item scores (not the policy: see :meth:`item_log_probs`)."""
        return self.backbone.score(h)

    def forward(self, items: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact next-item log-probabilities ``(B, L, n_items)`` float32 after every position."""
        with autocast(items.device):
            h = self.encode(items, generator)
        b, length, dim = h.shape
        return self.item_log_probs(h.float().reshape(b * length, dim)).float().reshape(b, length, self.n_items)

    # -- the head

    def _level_state(self, d: int, h: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """The hidden state before token d: gelu(A_d h + Σ_{j<d} E_j[c_j]), ``h`` ``(..., dim)``
        broadcast against the prefix embedding sums ``prefix`` ``(..., H)`` -> ``(..., H)``."""
        return F.gelu(self.proj[d](h) + prefix)

    def _level_logits(self, d: int, h: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Logits over level d's tokens (see :meth:`_level_state`) -> ``(..., V_d)`` float32."""
        return self.out[d](self._level_state(d, h, prefix)).float()

    def step_states(self, h: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The head's hidden state before each of the D tokens of ``items`` ``(...)`` after states
        ``h`` ``(..., dim)``: ``(..., D, H)``. A head on it (a state flow log F(s) per prefix, for
        detailed balance) sees exactly what the token softmax sees."""
        codes = self.codes[items]
        h = h.float()
        prefix = torch.zeros((), device=h.device)
        states = []
        for d in range(self.depth):
            states.append(self._level_state(d, h, prefix).expand(*items.shape, -1))
            if d < self.depth - 1:
                prefix = prefix + self.tok_emb[d](codes[..., d])
        return torch.stack(states, dim=-2)

    def _node_prefix_sums(self, d: int) -> torch.Tensor:
        """Σ_{j<d} E_j[c_j] for every depth-d node: ``(N_d, H)``."""
        prefix = self._buf("prefix", d)
        total = torch.zeros(len(prefix), self.head_cfg.hidden, device=prefix.device)
        for j in range(d):
            total = total + self.tok_emb[j](prefix[:, j])
        return total

    def target_log_probs(self, h: torch.Tensor, items: torch.Tensor, per_step: bool = False) -> torch.Tensor:
        """log π(item | x) of ``items`` ``(...)`` (valid ids) after states ``h`` ``(..., dim)``
        (broadcast): the sum over levels of the masked token log-softmaxes, teacher-forced.

        ``per_step``: the D terms instead, ``(..., D)`` (a GFlowNet reads its forward policy there)."""
        codes = self.codes[items]  # (..., D)
        h = h.float()
        prefix = torch.zeros((), device=h.device)
        steps = []
        for d in range(self.depth):
            logits = self._level_logits(d, h, prefix)
            valid = self._buf("child", d)[self._buf("node_of", d)[items]] >= 0
            logp = torch.log_softmax(logits.masked_fill(~valid, -torch.inf), dim=-1)
            steps.append(logp.gather(-1, codes[..., d : d + 1]).squeeze(-1))
            if d < self.depth - 1:
                prefix = prefix + self.tok_emb[d](codes[..., d])
        out = torch.stack(steps, dim=-1)
        return out if per_step else out.sum(-1)

    def _chunk(self, rows: int) -> int:
        width = max(self.head_cfg.hidden, max(self.trie.sizes))
        widest = max(self.trie.n_nodes(d) for d in range(self.depth))
        return max(1, min(rows, BUDGET_BYTES // (8 * width * widest)))

    def item_log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """Exact log π(i | x) of every item, ``(B, n_items)`` float64 in item-id order, for states
        ``h`` ``(B, dim)``: level by level over the trie, each node's log-probability is its
        parent's plus the masked log-softmax of its token (chunked over rows to a byte budget).

        Only the prefixes with two or more valid continuations are run through the head: a lone
        child has probability exactly 1 (most disambiguation tokens are 0 and alone), so the
        deepest, widest levels cost little."""
        h = h.float()
        branches = [self._buf("branch", d) for d in range(self.depth)]
        prefixes = [self._node_prefix_sums(d)[branches[d]] for d in range(self.depth)]
        valids = [self._buf("child", d)[branches[d]] >= 0 for d in range(self.depth)]
        out, step = [], self._chunk(len(h))
        for lo in range(0, len(h), step):
            hc = h[lo : lo + step]
            logp = torch.zeros(len(hc), 1, dtype=torch.float64, device=h.device)  # the root
            for d in range(self.depth):
                parent, token, slot = self._buf("parent", d), self._buf("token", d), self._buf("slot", d)
                step_logp = torch.zeros(len(hc), len(parent), dtype=torch.float64, device=h.device)
                if len(branches[d]):
                    logits = self._level_logits(d, hc[:, None, :], prefixes[d][None])  # (b, M_d, V_d)
                    valid = valids[d]
                    lsm = torch.log_softmax(logits.double().masked_fill(~valid, -torch.inf), dim=-1)
                    has = self._buf("branched", d)  # children whose parent branches
                    step_logp[:, has] = lsm[:, slot[parent[has]], token[has]]
                logp = logp[:, parent] + step_logp  # (b, N_{d+1})
            out.append(logp[:, self.node_of_items])
        return torch.cat(out) if out else torch.zeros(0, self.n_items, dtype=torch.float64, device=h.device)

    def beam_search(self, h: torch.Tensor, k: int, beam: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most probable items found by a beam of width ``beam`` (default k) over the
        trie: ``(items (B, k) int64, log π (B, k) float64)``, best first; every item is valid
        (each prefix node has an item below it, so a beam never runs dry). A beam as wide as the
        largest level of the trie is exhaustive: its top 1 is the argmax of :meth:`item_log_probs`."""
        beam = k if beam is None else beam
        if not 1 <= k <= min(beam, self.n_items):
            raise ConfigError(f"k = {k} is out of range: must be >= 1 and <= min(beam = {beam}, n_items = {self.n_items})")
        h = h.float()
        b = len(h)
        nodes = torch.zeros(b, 1, dtype=torch.int64, device=h.device)
        score = torch.zeros(b, 1, dtype=torch.float64, device=h.device)
        for d in range(self.depth):
            prefix = self._node_prefix_sums(d)[nodes.clamp(min=0)]  # (b, W, H)
            logits = self._level_logits(d, h[:, None, :], prefix)  # (b, W, V_d)
            child = self._buf("child", d)[nodes.clamp(min=0)]  # (b, W, V_d)
            valid = (child >= 0) & (nodes >= 0)[..., None]
            lsm = torch.log_softmax(logits.double().masked_fill(child < 0, -torch.inf), dim=-1)
            cand = (score[..., None] + lsm).masked_fill(~valid, -torch.inf).reshape(b, -1)
            width = min(beam, cand.shape[1])
            score, idx = cand.topk(width, dim=-1)
            nodes = child.reshape(b, -1).gather(1, idx).masked_fill(~torch.isfinite(score), -1)
        return self.leaf_item[nodes[:, :k].clamp(min=0)], score[:, :k]

    def sample(self, h: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` items per state drawn from π(·|x) token by token (ancestral sampling restricted to
        valid continuations): ``h`` ``(..., dim)`` -> ``(..., n)`` int64 item ids."""
        shape = h.shape[:-1]
        flat = h.float().reshape(-1, h.shape[-1]).repeat_interleave(n, dim=0)
        nodes = torch.zeros(len(flat), dtype=torch.int64, device=h.device)
        prefix = torch.zeros((), device=h.device)
        for d in range(self.depth):
            logits = self._level_logits(d, flat, prefix)
            child = self._buf("child", d)[nodes]
            probs = torch.softmax(logits.masked_fill(child < 0, -torch.inf), dim=-1)
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            nodes = child.gather(1, tok[:, None]).squeeze(1)
            if d < self.depth - 1:
                prefix = prefix + self.tok_emb[d](tok)
        return self.leaf_item[nodes].reshape(*shape, n)


# ---------------------------------------------------------------- the seam training reads


Scorer = Callable[[torch.Tensor], torch.Tensor]
"""``logp(items) -> log π(items | x_t)``: item ids ``(B, L)`` or ``(B, L, K)`` (PAD clamped to 0)
-> float32 of the same shape."""


def is_token_model(model: nn.Module) -> bool:
    return isinstance(model, TokenModel)


def target_scorer(model: nn.Module, inputs: torch.Tensor, generator: torch.Generator | None = None) -> Scorer:
    """Run ``model`` once over the windows ``inputs`` ``(B, L)`` (under autocast on CUDA) and
    return the :data:`Scorer` of its next-item log-probabilities after every position.

    An item model gathers from its log-softmax over the catalogue; a :class:`TokenModel` sums its
    D token log-probabilities (no softmax over the catalogue)."""
    with autocast(inputs.device):
        if is_token_model(model):
            h = model.encode(inputs, generator)
        else:
            logits = model(inputs, generator=generator)
    if is_token_model(model):
        h = h.float()

        def token_logp(items: torch.Tensor) -> torch.Tensor:
            hh = h if items.dim() == 2 else h.unsqueeze(-2)
            return model.target_log_probs(hh, items.clamp(min=0))

        return token_logp
    logp = F.log_softmax(logits.float(), dim=-1)

    def item_logp(items: torch.Tensor) -> torch.Tensor:
        if items.dim() == 2:
            return logp.gather(-1, items.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return logp.gather(-1, items.clamp(min=0))

    return item_logp


def sample_next(model: nn.Module, inputs: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` items per position drawn from the model's next-item distribution: ``(B, L)`` -> ``(B, L, n)``.
    A token model samples token by token (no enumeration of the catalogue)."""
    with autocast(inputs.device):
        if is_token_model(model):
            h = model.encode(inputs)
        else:
            logits = model(inputs)
    if is_token_model(model):
        return model.sample(h.float(), n, generator)
    b, length, v = logits.shape
    probs = torch.softmax(logits.float(), dim=-1).reshape(b * length, v)
    return torch.multinomial(probs, n, replacement=True, generator=generator).view(b, length, n)


# ---------------------------------------------------------------- the policy


class TokenPolicy:
    """π(· | history) of a :class:`TokenModel`: the ``recsim_post.policy.Policy`` protocol with
    exact item log-probabilities, plus constrained decoding, save / load / clone.

    ``history`` holds per-epoch training metrics (each with a ``stage`` key), saved with the weights.
    """

    slate = None

    def __init__(self, model: TokenModel, max_len: int | None = None, batch_size: int = 512,
                 ids: SemanticIds | None = None) -> None:
        model_len = model.cfg.max_len
        max_len = model_len if max_len is None else max_len
        if not 1 <= max_len <= model_len:
            raise ConfigError(f"max_len = {max_len} is out of range: must be >= 1 and <= the model's {model_len}")
        self.model, self.n_items, self.max_len, self.batch_size = model, model.n_items, max_len, batch_size
        self.ids = ids
        """The semantic IDs the model was built on (their fingerprint is saved with the policy)."""
        self.history: list[dict[str, Any]] = []

    @classmethod
    def build(cls, cfg: ModelConfig, head: TokenHeadConfig, ids: SemanticIds,
              generator: torch.Generator | None = None) -> "TokenPolicy":
        """A fresh policy over ``ids`` (backbone first, then the head, from ``generator``)."""
        return cls(TokenModel(cfg, head, ids, generator), cfg.max_len, ids=ids)

    @property
    def config(self) -> ModelConfig:
        """The backbone's config (what a recipe's [model] section holds)."""
        return self.model.cfg

    @property
    def head_config(self) -> TokenHeadConfig:
        return self.model.head_cfg

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> "TokenPolicy":
        self.model.to(device)
        return self

    def pad(self, hist: np.ndarray) -> np.ndarray:
        return pad_history(hist, self.max_len)

    def _states(self, hist: np.ndarray) -> torch.Tensor:
        hist = self.pad(hist)
        if hist.size and hist.max() >= self.n_items:
            raise ValueError(f"hist holds item id {hist.max()}, but the catalogue has {self.n_items} items")
        items = torch.tensor(trim_padding(hist)).to(self.device)
        with autocast(self.device):
            return self.model.encode(items)[:, -1].float()

    def _batched(self, hist: np.ndarray, fn: Callable[[torch.Tensor], Any]) -> list[Any]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return [fn(self._states(hist[lo : lo + self.batch_size])) for lo in range(0, len(hist), self.batch_size)]
        finally:
            self.model.train(was_training)

    def logits(self, hist: np.ndarray, context: Any = None) -> np.ndarray:
        """Exact next-item log-probabilities ``(B, n_items)`` float64 (they sum to one in
        probability): the Policy protocol (the context is ignored)."""
        hist = np.asarray(hist)
        parts = self._batched(hist, lambda h: self.model.item_log_probs(h).cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, self.n_items))

    def beam_search(self, hist: np.ndarray, k: int, beam: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items by constrained beam search: ``(items (B, k), log π (B, k))``."""
        parts = self._batched(np.asarray(hist), lambda h: [t.cpu().numpy() for t in self.model.beam_search(h, k, beam)])
        if not parts:
            return np.zeros((0, k), np.int64), np.zeros((0, k))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def sample(self, hist: np.ndarray, n: int, generator: torch.Generator) -> np.ndarray:
        """``n`` items per history sampled token by token: ``(B, n)`` int64 (valid ids only)."""
        parts = self._batched(np.asarray(hist), lambda h: self.model.sample(h, n, generator).cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, n), np.int64)

    def clone(self) -> "TokenPolicy":
        return copy.deepcopy(self)

    # -- file

    def save(self, path: str | Path) -> None:
        """One torch file: backbone and head configs, the semantic IDs (codes, sizes, the items'
        fingerprint), max_len, history and weights."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()  # as SequencePolicy.save: bytes that depend only on the policy
        torch.save(self.payload(), buffer)
        path.write_bytes(buffer.getvalue())

    def payload(self) -> dict[str, Any]:
        """What :meth:`save` writes (plain data and CPU tensors); :meth:`from_payload` reads it back."""
        ids = self.ids
        return canonical({
            "format": FORMAT,
            "model": to_dict(self.config),
            "head": to_dict(self.head_config),
            "n_items": self.n_items,
            "max_len": self.max_len,
            "history": self.history,
            "codes": torch.from_numpy(self.model.trie.codes.copy()),
            "codebook_sizes": list(self.model.trie.sizes),
            "items_sha256": ids.items_sha256 if ids is not None else "",
            "features_sha256": ids.features_sha256 if ids is not None else "",
            "source": ids.source if ids is not None else "",
            "tokenizer": to_dict(ids.config) if ids is not None else to_dict(TokenizerConfig()),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
        })

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu", *, items_sha256: str | None = None) -> "TokenPolicy":
        """Read a file written by :meth:`save`. With ``items_sha256`` (the logs' items.parquet),
        refuse a policy whose semantic IDs were computed from other items. Every failure is a
        one-line LogError."""
        path = Path(path)
        return cls.from_payload(read_policy_file(path), path, device, items_sha256=items_sha256)

    @classmethod
    def from_payload(cls, payload: dict[str, Any], path: Path, device: torch.device | str = "cpu", *,
                     items_sha256: str | None = None) -> "TokenPolicy":
        def bad(what: str) -> LogError:
            return LogError(f"{path} is a corrupt token policy file: {what}")

        if payload.get("format") != FORMAT:
            raise LogError(f"{path} is not a recsim-post token policy file (format {FORMAT!r} expected)")
        for key in ("model", "head", "n_items", "max_len", "codes", "codebook_sizes", "state_dict"):
            if key not in payload:
                raise bad(f"field '{key}' is missing")
        try:
            cfg = model_config_from_dict(payload["model"])
            head = from_dict(TokenHeadConfig, payload["head"], prefix="head")
            tok_cfg = from_dict(TokenizerConfig, payload.get("tokenizer", {}), prefix="tokenizer")
        except ConfigError as err:
            raise bad(str(err)) from None
        codes = payload["codes"]
        if not isinstance(codes, torch.Tensor) or codes.dtype != torch.int64:
            raise bad("codes must be an int64 tensor")
        try:
            ids = SemanticIds(codes.numpy(), tuple(int(s) for s in payload["codebook_sizes"]),
                              str(payload.get("items_sha256", "")), str(payload.get("features_sha256", "")),
                              str(payload.get("source", "")), tok_cfg)
        except (ValueError, TypeError) as err:
            raise bad(f"its semantic IDs are invalid: {err}") from None
        n_items, max_len = payload["n_items"], payload["max_len"]
        if n_items != ids.n_items:
            raise bad(f"n_items = {n_items} but the codes list {ids.n_items} items")
        # "" = IDs computed from logs held in memory (a demo): the caller checks their features instead
        if items_sha256 is not None and ids.items_sha256 and ids.items_sha256 != items_sha256:
            raise LogError(
                f"{path} was trained on semantic IDs of another items.parquet (sha256 {ids.items_sha256[:12] or '—'}..., "
                f"the logs' is {items_sha256[:12]}...): it does not belong to these logs"
            )
        state = payload["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise bad("state_dict must be a table of tensors")
        for key, t in state.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise bad(f"weight {key!r} holds NaN or infinite values")
        history = payload.get("history", [])
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise bad("history must be a list of tables (one per training epoch)")
        try:
            model = TokenModel(cfg, head, ids)
            model.load_state_dict(state)
            policy = cls(model, max_len, ids=ids)
        except (ConfigError, RuntimeError, TypeError) as err:
            first = str(err).strip().splitlines()[0]
            raise bad(first) from None
        policy.history = history
        return policy.to(device)


__all__ = [
    "FORMAT", "PrefixTrie", "Scorer", "TokenHeadConfig", "TokenModel", "TokenPolicy", "is_token_model",
    "sample_next", "target_scorer",
]
