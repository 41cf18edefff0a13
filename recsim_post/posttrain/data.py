"""Training windows: users' click sequences cut into next-item prediction examples.

A user's clicks ``s_0 … s_{n-1}`` give ``n − 1`` targets ``s_1 … s_{n-1}``, each predicted from the
clicks before it. They are cut, from the most recent end, into windows ``w`` of ``max_len + 1``
consecutive clicks that overlap by one (``inputs = w[:-1]``, ``targets = w[1:]``), so every target
appears exactly once; the oldest window is the short one and is left-padded with ``PAD``. A target
at the start of a window sees only the earlier clicks inside that window (the usual SASRec trade).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from ..errors import LogError
from ..logs.public import PAD
from ..signals import check_reward, reward_range


@dataclass(frozen=True, eq=False)
class Batch:
    """A batch of windows as tensors, all ``(B, L)``: PAD where ``mask`` is False."""

    inputs: torch.Tensor
    """int64 item ids read by the model (left-padded)."""
    targets: torch.Tensor
    """int64 next item at each position."""
    rewards: torch.Tensor
    """float32 observed reward signal of the target (the recipe's ``reward``: NaN where padded or
    not observed)."""
    mask: torch.Tensor
    """bool, True where the position holds a real target."""
    users: torch.Tensor
    """int64 ``(B,)`` the user each window belongs to (for per-user baselines)."""
    slate_ids: torch.Tensor | None = None
    """int64 ``(B, L)`` the logged slate each target was clicked from (PAD where padded); None
    when the clicks carry no ``slate_id`` column."""
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    """What a method's ``prepare`` step adds once per batch (sampled actions, old log-probs, ...)."""

    def to(self, device: torch.device | str) -> "Batch":
        slates = None if self.slate_ids is None else self.slate_ids.to(device, non_blocking=True)
        return Batch(*(t.to(device, non_blocking=True) for t in (self.inputs, self.targets, self.rewards, self.mask, self.users)),
                     slate_ids=slates)

    def trim(self) -> "Batch":
        """Drop the leading columns that are padding in every row (the model's outputs at real
        positions do not depend on them, and short histories then cost less)."""
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else self.mask.shape[1] - 1
        slates = None if self.slate_ids is None else self.slate_ids[:, start:]
        return Batch(self.inputs[:, start:], self.targets[:, start:], self.rewards[:, start:], self.mask[:, start:],
                     self.users, slate_ids=slates)


@dataclass(frozen=True, eq=False)
class Windows:
    """All training windows of a click log, as numpy arrays of shape ``(N, max_len)`` (``users``: ``(N,)``)."""

    inputs: np.ndarray
    targets: np.ndarray
    rewards: np.ndarray
    mask: np.ndarray
    users: np.ndarray
    slate_ids: np.ndarray | None = None
    """``(N, max_len)`` int64 the slate each target was clicked from (PAD where padded), or None
    when the clicks frame has no ``slate_id`` column."""

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def max_len(self) -> int:
        return self.inputs.shape[1]

    def lengths(self) -> np.ndarray:
        """``(N,)`` the real targets of each window (windows are left-padded, so a batch's trimmed
        width is its longest window's length)."""
        return self.mask.sum(axis=1)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True,
        bucket: bool = False,
    ) -> Iterator[Batch]:
        """CPU batches of at most ``batch_size`` windows, in an order drawn from ``generator`` when
        ``shuffle`` (a generator is required then: there is no hidden global RNG).

        ``bucket`` (with ``shuffle``): batches of windows of similar length. The shuffled windows are
        cut into pools of :data:`BUCKET_POOL` batches, each pool sorted by window length and cut into
        batches, and the batches are served in a random order: every window once per epoch, as
        before, but a batch's trimmed width is close to its windows' lengths rather than the longest
        of ``batch_size`` random windows.
        """
        if shuffle:
            if generator is None:
                raise ValueError("shuffle=True needs a seeded torch.Generator")
            order = torch.randperm(len(self), generator=generator).numpy()
        else:
            order = np.arange(len(self))
        if bucket and shuffle:
            groups = bucketed(order, self.lengths(), batch_size, generator)
        else:
            groups = (order[start : start + batch_size] for start in range(0, len(self), batch_size))
        for idx in groups:
            yield Batch(
                torch.from_numpy(self.inputs[idx]),
                torch.from_numpy(self.targets[idx]),
                torch.from_numpy(self.rewards[idx]),
                torch.from_numpy(self.mask[idx]),
                torch.from_numpy(self.users[idx]),
                slate_ids=None if self.slate_ids is None else torch.from_numpy(self.slate_ids[idx]),
            )


BUCKET_POOL = 64
"""Batches per pool in length-bucketed batching (:meth:`Windows.batches` with ``bucket``): larger
pools pad less, smaller ones keep more of the shuffle's mixing."""


def bucketed(order: np.ndarray, lengths: np.ndarray, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """Length buckets of a shuffled ``order``: pools of :data:`BUCKET_POOL` batches, each sorted by
    ``lengths`` (longest first, ties in shuffled order) and cut into batches of ``batch_size``; the
    batches of every pool, in an order drawn from ``generator``."""
    pool = batch_size * BUCKET_POOL
    groups = []
    for lo in range(0, len(order), pool):
        idx = order[lo : lo + pool]
        idx = idx[np.argsort(-lengths[idx], kind="stable")]
        groups.extend(idx[s : s + batch_size] for s in range(0, len(idx), batch_size))
    return [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]


def reward_column(clicks: pd.DataFrame, reward: str = "rating") -> np.ndarray:
    """The ``reward`` signal of every click (float32; NaN where it was not observed): its column,
    or 1 for every click when the reward is the click itself."""
    check_reward(reward)
    if reward == "click":
        return np.ones(len(clicks), dtype=np.float32)
    if reward not in clicks.columns:
        raise LogError(f"clicks frame lacks the column of the reward signal {reward!r}")
    return clicks[reward].to_numpy(np.float32)


def make_windows(clicks: pd.DataFrame, max_len: int, n_items: int | None = None, reward: str = "rating") -> Windows:
    """Cut a clicks frame (``user_id``, ``item_id`` and the ``reward`` signal's column; each user's
    rows contiguous and in history order, as :meth:`PublicLogs.clicks` and the leave-last-out split
    give them) into windows."""
    missing = {"user_id", "item_id"} - set(clicks.columns)
    if missing:
        raise LogError(f"clicks frame lacks columns: {', '.join(sorted(missing))}")
    if max_len < 1:
        raise ValueError(f"max_len = {max_len} must be >= 1")
    users = clicks["user_id"].to_numpy(np.int64)
    items = clicks["item_id"].to_numpy(np.int64)
    ratings = reward_column(clicks, reward)
    if len(items) and (items.min() < 0 or (n_items is not None and items.max() >= n_items)):
        raise LogError(f"clicks hold item ids in [{items.min()}, {items.max()}], outside the catalogue [0, {n_items})")

    # Runs of equal user_id; each user must form exactly one run.
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
    if len(starts) != len(np.unique(users)):
        raise LogError("clicks must list each user's rows together, in history order")
    run_len = np.diff(np.r_[starts, len(users)])
    run = np.repeat(np.arange(len(starts)), run_len)
    j = np.arange(len(users)) - starts[run]  # index of the click within its user's sequence
    from_end = run_len[run] - 1 - j  # 0 for the user's last click

    n_win = (run_len - 1 + max_len - 1) // max_len  # ceil((n - 1) / max_len) targets-windows per user
    first_win = np.r_[0, np.cumsum(n_win)[:-1]]
    total = int(n_win.sum())

    t = np.flatnonzero(j >= 1)  # rows that are targets
    k = from_end[t] // max_len  # window index counted from the user's most recent one
    row = first_win[run[t]] + n_win[run[t]] - 1 - k  # windows of a user in chronological order
    col = max_len - 1 - from_end[t] % max_len

    out_inputs = np.full((total, max_len), PAD, dtype=np.int64)
    out_targets = np.full((total, max_len), PAD, dtype=np.int64)
    out_rewards = np.full((total, max_len), np.nan, dtype=np.float32)
    out_mask = np.zeros((total, max_len), dtype=bool)
    out_users = np.empty(total, dtype=np.int64)
    out_inputs[row, col] = items[t - 1]
    out_targets[row, col] = items[t]
    out_rewards[row, col] = ratings[t]
    out_mask[row, col] = True
    out_users[row] = users[t]
    out_slates = None
    if "slate_id" in clicks.columns:  # where each target was clicked from (GFlowGR's shown items)
        out_slates = np.full((total, max_len), PAD, dtype=np.int64)
        out_slates[row, col] = clicks["slate_id"].to_numpy(np.int64)[t]
    return Windows(out_inputs, out_targets, out_rewards, out_mask, out_users, out_slates)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is True (0 when there are none; broadcasts;
    the graph is kept)."""
    mask = mask.expand_as(x)
    # where(), not x * mask: an inf/NaN at a masked-out position must not leak into the mean.
    return torch.where(mask, x, torch.zeros_like(x)).sum() / mask.to(x.dtype).sum().clamp(min=1.0)


@dataclass(frozen=True, eq=False)
class PostTrainData:
    """What post-training may learn from: the public training clicks and the catalogue size, plus a
    reward model fitted on those same clicks for the methods that need one."""

    clicks: pd.DataFrame
    n_items: int
    reward_model: Any = None
    """A :class:`~recsim_post.posttrain.reward_model.RewardModel`, or None."""
    reward: str = "rating"
    """The feedback signal learned from (``recsim_post.signals.REWARDS``)."""
    interactions: pd.DataFrame | None = None
    """The public impressions (slate_id, position, item_id, click), for methods that read what was
    shown beside a click (GFlowGR's shown-not-clicked items); None when the caller has only clicks."""

    def windows(self, max_len: int) -> Windows:
        return make_windows(self.clicks, max_len, self.n_items, self.reward)

    @property
    def reward_range(self) -> tuple[float, float]:
        """(lowest, highest) value of the reward signal."""
        return reward_range(self.reward)


__all__ = ["Batch", "PostTrainData", "Windows", "make_windows", "masked_mean", "reward_column"]
