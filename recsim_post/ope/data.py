"""The logged bandit rows of OPE: position-0 impressions as contexts, their public click histories,
and target policies evaluated on them chunk by chunk.

x_i = (u_i, t_i, h_i): the user, the round and h_i her public click history strictly before round
t_i; a_i the item shown on top. Everything here reads public logs only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..logs.public import PAD
from ..policy import Context, Policy, softmax
from ..truth.ground_truth import BUDGET_BYTES

CHUNK_ROWS = 4096
"""Logged rows per chunk of (rows x items) work, fewer where a chunk would exceed the byte budget."""


def chunk_rows(n_items: int, arrays: int) -> int:
    """Rows per chunk: :data:`CHUNK_ROWS`, or fewer so that ``arrays`` float64 (rows x items) arrays
    stay within the ground truth's byte budget (so memory is flat in the catalogue size)."""
    return max(1, min(CHUNK_ROWS, BUDGET_BYTES // (8 * arrays * max(int(n_items), 1))))


@dataclass(frozen=True)
class LoggedContexts:
    """The position-0 rows, in log order: who, when, what was shown, and the public history then."""

    user: np.ndarray  # (n,) int64
    timestamp: np.ndarray  # (n,) int64, the round
    action: np.ndarray  # (n,) int64, the item shown at position 0
    slate_id: np.ndarray  # (n,) int64
    hist: np.ndarray  # (n, max_len) int64, clicks strictly before the round, left-padded with PAD

    def __len__(self) -> int:
        return len(self.user)


def click_histories_at(clicks: pd.DataFrame, users: np.ndarray, timestamps: np.ndarray, max_len: int) -> np.ndarray:
    """For each (user, round): the user's last ``max_len`` clicked items with timestamp < round.

    ``clicks`` needs user_id, timestamp, position, item_id. Vectorised: one sort, two searchsorted.
    """
    users = np.asarray(users, np.int64)
    timestamps = np.asarray(timestamps, np.int64)
    out = np.full((len(users), max_len), PAD, dtype=np.int64)
    if len(clicks) == 0 or len(users) == 0:
        return out
    c = clicks.sort_values(["user_id", "timestamp", "position"], kind="stable")
    cu = c["user_id"].to_numpy(np.int64)
    ct = c["timestamp"].to_numpy(np.int64)
    items = c["item_id"].to_numpy(np.int64)
    span = int(max(ct.max(), timestamps.max())) + 2
    keys = cu * span + ct  # non-decreasing
    start = np.searchsorted(keys, users * span, side="left")
    end = np.searchsorted(keys, users * span + timestamps, side="left")  # first click at >= round
    idx = end[:, None] - max_len + np.arange(max_len)[None, :]
    valid = idx >= start[:, None]
    out[valid] = items[idx[valid]]
    return out


def logged_contexts(interactions: pd.DataFrame, max_len: int = 50, position: int = 0) -> LoggedContexts:
    """The ``position`` rows of the public interactions and each row's click history at that time."""
    top = interactions[interactions["position"].to_numpy() == position]
    clicks = interactions[interactions["click"].to_numpy() == 1]
    users = top["user_id"].to_numpy(np.int64)
    ts = top["timestamp"].to_numpy(np.int64)
    return LoggedContexts(
        users, ts, top["item_id"].to_numpy(np.int64), top["slate_id"].to_numpy(np.int64),
        click_histories_at(clicks, users, ts, max_len),
    )


# --------------------------------------------------------------------------------------------
# target policies


def policy_logits(policy: Policy, ctx: LoggedContexts, sl: slice) -> np.ndarray:
    """The policy on logged contexts ``sl``: each user's history then, and her round."""
    return policy.logits(ctx.hist[sl], Context(ctx.user[sl], ctx.timestamp[sl]))


def policy_probabilities(policy: Policy, ctx: LoggedContexts, chunk: int = CHUNK_ROWS) -> np.ndarray:
    """pi(. | x_i) on every logged context: (n, n_items) float64, batched."""
    return np.concatenate([softmax(policy_logits(policy, ctx, slice(lo, lo + chunk))) for lo in range(0, len(ctx), chunk)])


__all__ = ["CHUNK_ROWS", "LoggedContexts", "chunk_rows", "click_histories_at", "logged_contexts", "policy_logits",
           "policy_probabilities"]
