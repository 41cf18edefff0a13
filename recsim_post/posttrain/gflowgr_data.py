r"""GFlowGR's augmented trajectories and composite reward, over item ids and their semantic IDs.

Each logged click (context x, clicked item y⁺, the slate it was chosen from, its observed signal)
gets N augmented trajectories y_1 … y_N. Each is drawn from a mixture of samplers (weights are
:class:`~recsim_post.posttrain.gflownet.GFlowGRConfig`'s ``sample_*`` knobs):

=========== ==========================================================================================
clicked     y⁺ itself
shown       uniform over the slate's items other than y⁺ (shown, not clicked); a random item when the
            slate holds no other item
random      uniform over the catalogue
curriculum  a π_ref-ranked negative: rank the catalogue without y⁺ by π_ref's logit (rank 0 = most
            likely), take a window of w = max(1, round(band · (n − 1))) ranks starting at
            start(p) = round((1 − p) · (n − 1 − w)), and draw uniformly inside it. Training progress
            p = 0 gives the lowest-ranked (easy) negatives, p = 1 the highest-ranked (hard) ones.
on_policy   ``sample(rows, n)`` supplied by the caller (the token policy's constrained sampler)
=========== ==========================================================================================

Composite reward, positive by construction (R = exp(log R))::

    log R(x, y) = w_outcome · outcome(x, y) + w_collab · collab(x, y) + w_prefix · prefix(x, y)

    outcome = outcome_clicked + signal_weight · s   if y = y⁺   (s = the signal scaled to [−1, 1]
                                                                 over its range; missing: 0)
              outcome_shown                         if y is in the slate and y ≠ y⁺
              outcome_unshown                       otherwise
    collab  = (ℓ_ref(x, y) − mean_i ℓ_ref(x, i)) / std_i ℓ_ref(x, i)   π_ref's logit of y, standardised
                                                                      over the catalogue per context
    prefix  = (number of leading tokens y's ID shares with y⁺'s ID) / (L + 1)        ∈ [0, 1]

Each term is returned separately (:class:`RewardTerms`) so that training can log them.

All randomness comes from a numpy Generator handed in by the caller (one stream per epoch/batch of
the SeedTree); nothing reads a global RNG. Everything is vectorised over the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..errors import ConfigError, LogError
from .gflownet import GFlowGRConfig

SAMPLERS = ("clicked", "shown", "random", "curriculum", "on_policy")
"""The samplers, in the order of :meth:`GFlowGRConfig.sampler_weights` and of ``AugmentedItems.source``."""

OnPolicySampler = Callable[[np.ndarray, int], np.ndarray]
"""``sample(rows, n) -> (len(rows), n)`` item ids drawn from the current policy for the batch's
contexts ``rows`` (indices into the batch)."""

ArrayLike = np.ndarray | torch.Tensor


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ---------------------------------------------------------------- clicks and their slates


@dataclass(frozen=True)
class SlateIndex:
    """The items of every logged slate, to look up by ``slate_id`` (from the public interactions)."""

    slate_ids: np.ndarray
    """``(n_slates,)`` int64, sorted."""
    items: np.ndarray
    """``(n_slates, S)`` int64 items in slate order (by position), ``-1`` after a short slate's end."""
    clicks: np.ndarray
    """``(n_slates, S)`` bool, True on the clicked item."""

    @classmethod
    def from_interactions(cls, interactions: pd.DataFrame) -> "SlateIndex":
        """Build from the public ``interactions`` (columns slate_id, position, item_id, click)."""
        missing = {"slate_id", "position", "item_id", "click"} - set(interactions.columns)
        if missing:
            raise LogError(f"interactions lack the columns {sorted(missing)}")
        df = interactions.sort_values(["slate_id", "position"], kind="stable")
        sid = df["slate_id"].to_numpy(np.int64)
        ids, start, count = np.unique(sid, return_index=True, return_counts=True)
        width = int(count.max()) if len(count) else 0
        row = np.repeat(np.arange(len(ids)), count)
        col = np.arange(len(sid)) - np.repeat(start, count)  # rank inside the slate
        items = np.full((len(ids), width), -1, np.int64)
        clicks = np.zeros((len(ids), width), bool)
        items[row, col] = df["item_id"].to_numpy(np.int64)
        clicks[row, col] = df["click"].to_numpy() == 1
        return cls(ids, items, clicks)

    def lookup(self, slate_ids: ArrayLike) -> np.ndarray:
        """``(B, S)`` the items of each slate in ``slate_ids`` (``-1`` padded); an unknown id raises LogError."""
        q = _numpy(slate_ids).astype(np.int64)
        at = np.searchsorted(self.slate_ids, q).clip(max=max(len(self.slate_ids) - 1, 0))
        if len(self.slate_ids) == 0 or not np.array_equal(self.slate_ids[at], q):
            raise LogError("slate ids not in the logged interactions")
        return self.items[at]


@dataclass(frozen=True)
class ClickContexts:
    """B logged clicks: what the samplers and the reward know about each (numpy arrays)."""

    clicked: np.ndarray
    """``(B,)`` int64 clicked item y⁺."""
    slate: np.ndarray
    """``(B, S)`` int64 items of the slate y⁺ was chosen from (y⁺ among them), ``-1`` padded."""
    signal: np.ndarray
    """``(B,)`` float observed signal of the click (rating, watch, …); NaN when not observed."""

    def __post_init__(self) -> None:
        b = len(self.clicked)
        if self.slate.ndim != 2 or self.slate.shape[0] != b or self.signal.shape != (b,):
            raise ConfigError(f"ClickContexts: clicked (B,), slate (B, S), signal (B,) expected, got "
                              f"{self.clicked.shape}, {self.slate.shape}, {self.signal.shape}")

    @classmethod
    def from_clicks(cls, clicks: pd.DataFrame, slates: SlateIndex, signal: str = "rating") -> "ClickContexts":
        """One context per row of a public clicks frame (item_id, slate_id, and the ``signal``
        column; ``"click"`` gives 1 for every click)."""
        value = (np.ones(len(clicks)) if signal == "click" else clicks[signal].to_numpy(np.float64))
        return cls(clicks["item_id"].to_numpy(np.int64), slates.lookup(clicks["slate_id"].to_numpy()), value)

    def __len__(self) -> int:
        return len(self.clicked)


# ---------------------------------------------------------------- samplers


@dataclass(frozen=True)
class AugmentedItems:
    """N augmented trajectories per click: the items (each one path through the trie) and the
    sampler that drew each."""

    items: np.ndarray
    """``(B, N)`` int64 item ids."""
    source: np.ndarray
    """``(B, N)`` int8 index into :data:`SAMPLERS` (after fallbacks: a "shown" slot whose slate had
    no other item is recorded as "random")."""

    def shares(self) -> dict[str, float]:
        """The share of trajectories each sampler drew (for the training log)."""
        return {f"share_{name}": float(np.mean(self.source == k)) for k, name in enumerate(SAMPLERS)}


def sample_shown(contexts: ClickContexts, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(len(rows),)`` an item shown in each row's slate and not clicked (uniform over them);
    ``-1`` where the slate holds no such item."""
    slate = contexts.slate[rows]
    ok = (slate >= 0) & (slate != contexts.clicked[rows, None])
    k = ok.sum(axis=1)
    pick = np.floor(rng.random(len(rows)) * k).astype(np.int64)  # the pick-th valid entry, uniformly
    col = (np.cumsum(ok, axis=1) - 1 == pick[:, None]) & ok
    out = slate[np.arange(len(rows)), col.argmax(axis=1)]
    return np.where(k > 0, out, -1)


def curriculum_ranks(n_others: int, band: float, progress: float) -> tuple[int, int]:
    """The curriculum's rank window [start, start + w) among the ``n_others`` items ranked by π_ref
    (rank 0 = most likely): w = max(1, round(band · n_others)), start = round((1 − p)(n_others − w))."""
    if not 0.0 <= progress <= 1.0:
        raise ConfigError(f"progress = {progress!r} is out of range: must be >= 0 and <= 1")
    w = min(n_others, max(1, int(round(band * n_others))))
    return int(round((1.0 - progress) * (n_others - w))), w


def sample_curriculum(
    ref_logits: ArrayLike, clicked: np.ndarray, band: float, progress: float, rng: np.random.Generator
) -> np.ndarray:
    """``(R,)`` one negative per row of ``ref_logits`` ``(R, n_items)``: uniform in the rank window
    of :func:`curriculum_ranks` among the items other than ``clicked`` ``(R,)``, ranked by π_ref's
    logit (ties broken by item id)."""
    logits = _numpy(ref_logits).astype(np.float64, copy=False)
    r, n = logits.shape
    order = np.argsort(-logits, axis=1, kind="stable")  # (R, n): item ids, most likely first
    # drop y⁺ from each row: the rest keep their order
    others = order[order != clicked[:, None]].reshape(r, n - 1)
    start, w = curriculum_ranks(n - 1, band, progress)
    return others[np.arange(r), start + rng.integers(0, w, size=r)]


def sample_items(
    contexts: ClickContexts,
    cfg: GFlowGRConfig,
    n_items: int,
    rng: np.random.Generator,
    *,
    ref_logits: ArrayLike | None = None,
    progress: float = 0.0,
    on_policy: OnPolicySampler | None = None,
) -> AugmentedItems:
    """``cfg.n_augment`` trajectories per click, each from the sampler mixture (module docstring).

    ``ref_logits`` ``(B, n_items)`` π_ref's logits per context (needed when the curriculum weighs
    more than 0); ``progress`` ∈ [0, 1] the share of training done (moves the curriculum from easy
    to hard); ``on_policy`` the policy's sampler (needed when its weight is > 0). The draws are a
    function of ``rng``'s state (and of ``on_policy``): the same seed gives the same items.
    """
    b, n_aug = len(contexts), cfg.n_augment
    weights = cfg.sampler_weights()
    if weights[SAMPLERS.index("curriculum")] > 0 and ref_logits is None:
        raise ConfigError("the curriculum sampler (sample_curriculum > 0) needs π_ref's logits (ref_logits)")
    if weights[SAMPLERS.index("on_policy")] > 0 and on_policy is None:
        raise ConfigError("the on-policy sampler (sample_on_policy > 0) needs the policy's sampler (on_policy)")
    source = rng.choice(len(SAMPLERS), size=(b, n_aug), p=weights / weights.sum()).astype(np.int8)
    # One uniform item for every slot, used by the random sampler and as the shown sampler's
    # fallback (one vectorised draw instead of one per sampler).
    uniform = rng.integers(0, n_items, size=(b, n_aug))
    items = np.where(source == SAMPLERS.index("clicked"), contexts.clicked[:, None], uniform).astype(np.int64)

    rows, cols = np.nonzero(source == SAMPLERS.index("shown"))
    if len(rows):
        shown = sample_shown(contexts, rows, rng)
        items[rows, cols] = np.where(shown >= 0, shown, items[rows, cols])
        source[rows[shown < 0], cols[shown < 0]] = SAMPLERS.index("random")

    rows, cols = np.nonzero(source == SAMPLERS.index("curriculum"))
    if len(rows):
        logits = _numpy(ref_logits)
        if logits.shape != (b, n_items):
            raise ConfigError(f"ref_logits must be (B, n_items) = ({b}, {n_items}), got {logits.shape}")
        items[rows, cols] = sample_curriculum(logits[rows], contexts.clicked[rows], cfg.curriculum_band, progress, rng)

    slots = source == SAMPLERS.index("on_policy")
    if slots.any():
        need = np.nonzero(slots.any(axis=1))[0]
        k = int(slots.sum(axis=1).max())
        drawn = np.asarray(on_policy(need, k), dtype=np.int64)
        if drawn.shape != (len(need), k) or drawn.min() < 0 or drawn.max() >= n_items:
            raise ConfigError(f"on_policy(rows, {k}) must return ({len(need)}, {k}) item ids in [0, {n_items}), "
                              f"got shape {drawn.shape}")
        # the j-th on-policy slot of a row takes that row's j-th sample
        rank = np.cumsum(slots, axis=1) - 1
        row_of = np.full(b, -1)
        row_of[need] = np.arange(len(need))
        rr, cc = np.nonzero(slots)
        items[rr, cc] = drawn[row_of[rr], rank[rr, cc]]
    return AugmentedItems(items, source)


# ---------------------------------------------------------------- composite reward


@dataclass(frozen=True, eq=False)
class RewardTerms:
    """The composite reward of each trajectory and its terms, all ``(B, N)`` float tensors."""

    outcome: torch.Tensor
    collab: torch.Tensor
    prefix: torch.Tensor
    log_reward: torch.Tensor
    """w_outcome · outcome + w_collab · collab + w_prefix · prefix (module docstring)."""

    def metrics(self) -> dict[str, torch.Tensor]:
        """Mean of each term and of log R (0-dim, detached): ``reward_outcome``, ``reward_collab``,
        ``reward_prefix``, ``log_reward``."""
        return {
            "reward_outcome": self.outcome.detach().mean(), "reward_collab": self.collab.detach().mean(),
            "reward_prefix": self.prefix.detach().mean(), "log_reward": self.log_reward.detach().mean(),
        }


def outcome_term(
    items: torch.Tensor, contexts: ClickContexts, cfg: GFlowGRConfig, signal_range: tuple[float, float]
) -> torch.Tensor:
    """``(B, N)`` the logged-outcome term of each item (module docstring); ``signal_range`` the
    (lowest, highest) value of the click's signal (``signals.reward_range``)."""
    lo, hi = signal_range
    if not hi > lo:
        raise ConfigError(f"signal_range = {signal_range!r} must have highest > lowest")
    device = items.device
    clicked = torch.tensor(contexts.clicked, device=device)[:, None]  # a copy: the arrays may be read-only
    slate = torch.tensor(contexts.slate, device=device)
    s = (torch.tensor(contexts.signal, dtype=torch.float64, device=device) - (lo + hi) / 2) / ((hi - lo) / 2)
    s = torch.nan_to_num(s, nan=0.0)[:, None]  # a missing signal adds nothing
    is_click = items == clicked
    in_slate = (items[:, :, None] == slate[:, None, :]).any(dim=2)
    return torch.where(
        is_click, cfg.outcome_clicked + cfg.signal_weight * s,
        torch.where(in_slate, torch.tensor(cfg.outcome_shown, dtype=torch.float64, device=device),
                    torch.tensor(cfg.outcome_unshown, dtype=torch.float64, device=device)),
    )


def collab_term(items: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` π_ref's logit of each item, standardised over the catalogue per context:
    (ℓ_y − mean ℓ) / std ℓ (population std; 0 where the logits are all equal)."""
    logits = ref_logits.to(torch.float64)
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, correction=0, keepdim=True)
    z = (logits.gather(1, items) - mean) / std.clamp(min=1e-12)
    return torch.where(std > 0, z, torch.zeros_like(z))


def prefix_term(items: torch.Tensor, clicked: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` the number of leading tokens each item's semantic ID shares with the clicked
    item's, over the ID length L + 1 (1 for the clicked item itself)."""
    same = codes[items] == codes[clicked][:, None, :]  # (B, N, L+1)
    return same.to(torch.int64).cumprod(dim=2).sum(dim=2).to(torch.float64) / codes.shape[1]


def composite_reward(
    items: ArrayLike,
    contexts: ClickContexts,
    codes: ArrayLike,
    cfg: GFlowGRConfig,
    *,
    ref_logits: ArrayLike | None = None,
    signal_range: tuple[float, float] = (1.0, 5.0),
) -> RewardTerms:
    """The composite reward (module docstring) of ``items`` ``(B, N)`` for the B clicks.

    ``codes`` ``(n_items, L+1)`` the semantic IDs (``SemanticIds.codes``); ``ref_logits``
    ``(B, n_items)`` π_ref's logits per context (None: the collab term is 0); ``signal_range`` the
    range of the clicks' signal (default: a 1-5 rating). Tensors stay on ``ref_logits``' device
    (else the CPU); the terms are float64.
    """
    device = ref_logits.device if isinstance(ref_logits, torch.Tensor) else torch.device("cpu")
    items_t = torch.as_tensor(_numpy(items) if not isinstance(items, torch.Tensor) else items, device=device).long()
    if items_t.ndim != 2 or items_t.shape[0] != len(contexts):
        raise ConfigError(f"items must be (B, N) with B = {len(contexts)}, got {tuple(items_t.shape)}")
    codes_t = torch.as_tensor(_numpy(codes) if not isinstance(codes, torch.Tensor) else codes, device=device).long()
    outcome = outcome_term(items_t, contexts, cfg, signal_range)
    if ref_logits is None:
        collab = torch.zeros_like(outcome)
    else:
        logits = torch.as_tensor(ref_logits, device=device)
        collab = collab_term(items_t, logits)
    prefix = prefix_term(items_t, torch.tensor(contexts.clicked, device=device), codes_t)
    log_r = cfg.w_outcome * outcome + cfg.w_collab * collab + cfg.w_prefix * prefix
    return RewardTerms(outcome, collab, prefix, log_r)


__all__ = [
    "AugmentedItems", "ClickContexts", "OnPolicySampler", "RewardTerms", "SAMPLERS", "SlateIndex", "collab_term",
    "composite_reward", "curriculum_ranks", "outcome_term", "prefix_term", "sample_curriculum", "sample_items",
    "sample_shown",
]
