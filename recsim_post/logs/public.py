"""The public side of the logs: what a real company would have. Training code reads only this.

``interactions.parquet`` has one row per impression (an item shown in a slate):

=========== ======= =====================================================================
column      dtype   meaning
=========== ======= =====================================================================
user_id     int32   who was shown the slate
timestamp   int32   the simulation round in which it was shown
slate_id    int64   one id per slate (request); rows of a slate share it
position    int16   0-based position in the slate (0 is the top)
item_id     int32   the item shown
click       int8    1 if the user chose this item, else 0 (at most one click per slate)
rating      float32 observed 1-5 rating of a clicked item (noisy, maybe flipped, whole stars
                    unless ``feedback.quantize = false``); NaN otherwise, and NaN for a click
                    whose rating is missing (``feedback.missing_rate``)
watch       float32 observed watch fraction in [0, 1] of a clicked item (noisy, censored at
                    ``feedback.watch_censor``); NaN otherwise
=========== ======= =====================================================================

``items.parquet`` has the observable item features: ``item_id``, ``genre`` and ``f0..f{k-1}``
(a noisy projection of the latent item vector).

Histories are click sequences ordered by (timestamp, position). Splits are leave-last-out: a
user's last click is the test target, the second-last the validation target, the rest is training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import LogError
from ..signals import SIGNALS
from .check import (
    check_interaction_rows, check_interaction_values, check_items_table, check_log_folder, check_public_tables,
)

INTERACTION_SCHEMA = pa.schema(
    [
        ("user_id", pa.int32()),
        ("timestamp", pa.int32()),
        ("slate_id", pa.int64()),
        ("position", pa.int16()),
        ("item_id", pa.int32()),
        ("click", pa.int8()),
        *((name, pa.float32()) for name in SIGNALS),
    ]
)
"""The public interactions: ids, the click, then one float32 column per feedback signal
(``recsim_post.signals.SIGNALS``, NaN where there was no click)."""

PAD = -1
"""Padding value in history arrays (histories are left-padded)."""


@dataclass(frozen=True)
class PublicLogs:
    """Public logs: impressions, observable item features and the manifest.

    ``rows`` are the impressions, or only the clicked ones when ``clicks_only`` (what
    ``read_public(folder, clicks_only=True)`` reads for training and evaluation, which never look at
    an unclicked impression); :attr:`interactions` refuses to hand out such a partial table.
    """

    rows: pd.DataFrame
    items: pd.DataFrame
    manifest: dict[str, Any]
    clicks_only: bool = False

    @property
    def interactions(self) -> pd.DataFrame:
        """Every public impression (LogError when the logs were read clicks only)."""
        if self.clicks_only:
            raise LogError("these logs were read clicks only (read_public(folder, clicks_only=True)): "
                           "read them whole for the impressions")
        return self.rows

    @property
    def n_items(self) -> int:
        return int(self.manifest["n_items"])

    @property
    def n_users(self) -> int:
        return int(self.manifest["n_users"])

    def clicks(self) -> pd.DataFrame:
        """Clicked rows only, in history order (user, timestamp, position)."""
        df = self.rows
        c = df[df["click"] == 1]
        return c.sort_values(["user_id", "timestamp", "position"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class Split:
    """Leave-last-out split of the clicks (each frame keeps the click columns)."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame


def split_leave_last_out(clicks: pd.DataFrame) -> Split:
    """Per user: the last click is test, the second-last validation, the rest training.

    Users with fewer than three clicks keep all their clicks in training.
    """
    clicks = clicks.sort_values(["user_id", "timestamp", "position"], kind="stable")
    rank_from_end = clicks.groupby("user_id").cumcount(ascending=False).to_numpy()
    n = clicks.groupby("user_id")["item_id"].transform("size").to_numpy()
    eligible = n >= 3
    test = eligible & (rank_from_end == 0)
    valid = eligible & (rank_from_end == 1)
    train = ~(test | valid)
    return Split(
        train=clicks[train].reset_index(drop=True),
        valid=clicks[valid].reset_index(drop=True),
        test=clicks[test].reset_index(drop=True),
    )


@dataclass(frozen=True)
class HistoryIndex:
    """Every user's clicks grouped once (one stable sort), so any set of users' histories is one gather.

    ``items[start[u] : start[u + 1]]`` are user u's clicked items in history order. Build it once per
    clicks frame and gather chunk by chunk: the cost is linear in the clicks plus the rows gathered
    (regrouping all clicks for every chunk of users made chunked callers quadratic).
    """

    items: np.ndarray  # (n_clicks,) int64, grouped by user, each user's clicks in history order
    start: np.ndarray  # (n_indexed_users + 1,) int64 offsets into ``items``

    @classmethod
    def build(cls, clicks: pd.DataFrame) -> "HistoryIndex":
        """Index a clicks frame (``user_id``, ``item_id``) whose rows are in history order per user."""
        u = clicks["user_id"].to_numpy(np.int64)
        items = clicks["item_id"].to_numpy(np.int64)
        if len(u) and u.min() < 0:
            raise ValueError(f"user ids must be >= 0, got {int(u.min())}")
        if len(u) > 1 and (u[1:] < u[:-1]).any():
            # a stable sort keeps each user's clicks in the order the frame gives them
            order = np.argsort(u, kind="stable")
            u, items = u[order], items[order]
        counts = np.bincount(u) if len(u) else np.zeros(0, np.int64)
        start = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=start[1:])
        return cls(items, start)

    @property
    def n_users(self) -> int:
        """Users 0 .. n_users - 1 are indexed; larger ids have no clicks."""
        return len(self.start) - 1

    def gather(self, users: np.ndarray, max_len: int) -> np.ndarray:
        """The last ``max_len`` clicked items of each user, left-padded with PAD: ``(len(users), max_len)``."""
        users = np.asarray(users, dtype=np.int64)
        if len(users) and users.min() < 0:
            raise ValueError(f"user ids must be >= 0, got {int(users.min())}")
        known = users < self.n_users
        u = np.where(known, users, 0)
        end = np.where(known, self.start[np.minimum(u + 1, self.n_users)], 0)
        begin = np.where(known, self.start[u], 0)
        idx = end[:, None] + np.arange(-max_len, 0, dtype=np.int64)[None, :]
        valid = idx >= begin[:, None]
        out = np.full((len(users), max_len), PAD, dtype=np.int64)
        out[valid] = self.items[idx[valid]]
        return out


def histories(clicks: pd.DataFrame | HistoryIndex, users: np.ndarray, max_len: int) -> np.ndarray:
    """The last ``max_len`` clicked items of each user, left-padded with PAD: shape (len(users), max_len).

    ``clicks`` must already be in history order (as :meth:`PublicLogs.clicks` returns them), or be a
    :class:`HistoryIndex` of such a frame: callers that gather many chunks of users build the index
    once and pass it, so each call costs only its gather.
    """
    index = clicks if isinstance(clicks, HistoryIndex) else HistoryIndex.build(clicks)
    return index.gather(users, max_len)


def histories_reference(clicks: pd.DataFrame, users: np.ndarray, max_len: int) -> np.ndarray:
    """The former :func:`histories` (it regroups every click on each call: quadratic for chunked
    callers), kept as the plain reference the tests and benchmarks/evaluation.py hold the index to.
    Its contract: ``clicks`` grouped by user in history order, ``users`` distinct."""
    users = np.asarray(users, dtype=np.int64)
    out = np.full((len(users), max_len), PAD, dtype=np.int64)
    if len(clicks) == 0 or len(users) == 0:
        return out
    u = clicks["user_id"].to_numpy(np.int64)
    items = clicks["item_id"].to_numpy(np.int64)
    order = np.arange(len(u))
    last_index = pd.Series(order).groupby(u).transform("max").to_numpy()
    from_end = last_index - order  # position of each click counted from the user's last (0 = most recent)
    keep = from_end < max_len
    row_of_user = np.full(max(int(u.max()), int(users.max())) + 1, -1, dtype=np.int64)
    row_of_user[users] = np.arange(len(users))
    rows = row_of_user[u]
    keep &= rows >= 0
    out[rows[keep], max_len - 1 - from_end[keep]] = items[keep]
    return out


def read_parquet(path: Path) -> pd.DataFrame:
    """One Parquet table as a DataFrame; an unreadable file raises LogError naming it."""
    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError, ValueError) as err:
        raise _corrupt(path, err) from None


def _corrupt(path: Path, err: Exception) -> LogError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return LogError(f"{path} is corrupt: {first}")


def read_public(folder: str | Path, clicks_only: bool = False) -> PublicLogs:
    """Read the public part of a log folder written by ``recsim-post simulate``.

    The folder is checked first (:func:`.check.check_log_folder`: manifest, files, SHA-256), each
    table is read once and its values checked (:func:`.check.check_public_tables`). Raises LogError
    naming the missing, unreadable or corrupt file. Needs no ``sealed/`` folder.

    ``clicks_only``: stream the interactions in blocks of rows, check every block and keep only its
    clicks, so memory holds the clicks and one block rather than every impression (at most one row
    per slate: a tenth of the rows with slates of 10, and fewer as not every slate is clicked); what
    training and the exact evaluation read. The result's :meth:`~PublicLogs.clicks`
    equal a whole read's.
    """
    folder = Path(folder)
    manifest = check_log_folder(folder, "public")
    path = folder / "interactions.parquet"
    if clicks_only:
        interactions = _read_clicks(path, manifest, folder)
        items = read_parquet(folder / "items.parquet")
        check_items_table(items, manifest, folder)
    else:
        interactions = read_parquet(path)
        items = read_parquet(folder / "items.parquet")
        check_public_tables(interactions, items, manifest, folder, _complete(interactions, path))
    return PublicLogs(interactions, items, manifest, clicks_only)


READ_BLOCK_ROWS = 1 << 20
"""Rows per block when the interactions are streamed (``read_public(..., clicks_only=True)``)."""


def _read_clicks(path: Path, manifest: dict[str, Any], folder: Path) -> pd.DataFrame:
    """The clicked rows of ``interactions.parquet``, read block by block, every block checked."""
    kept, n_rows = [], 0
    try:
        table = pq.ParquetFile(path)
        blocks = table.iter_batches(batch_size=READ_BLOCK_ROWS)
        one_block = table.metadata.num_rows <= READ_BLOCK_ROWS  # errors then read word for word as a whole read's
    except (pa.ArrowException, OSError, ValueError) as err:
        raise _corrupt(path, err) from None
    while True:
        try:
            block = next(blocks, None)
            frame = None if block is None else block.to_pandas()
        except (pa.ArrowException, OSError, ValueError) as err:
            raise _corrupt(path, err) from None
        if frame is None:
            break
        logged = _complete(frame, path)
        rows = None if one_block else (n_rows, n_rows + len(frame) - 1)
        check_interaction_values(frame, manifest, folder, logged, rows)
        n_rows += len(frame)
        kept.append(frame[frame["click"].to_numpy() == 1])
    check_interaction_rows(n_rows, manifest, folder)
    if not kept:  # a table of no rows: its columns, none of them filled
        empty = table.schema_arrow.empty_table().to_pandas()
        _complete(empty, path)
        return empty
    return pd.concat(kept, ignore_index=True)


def _complete(interactions: pd.DataFrame, path: Path) -> tuple[str, ...]:
    """Add a NaN column for each feedback signal the logs were written before (in place); the
    signals they hold. LogError when an id or click column is missing."""
    logged = tuple(name for name in SIGNALS if name in interactions.columns)
    for name in SIGNALS:
        if name not in logged and name != "rating":  # logs written before the signal existed
            interactions[name] = np.float32(np.nan)
    missing = set(INTERACTION_SCHEMA.names) - set(interactions.columns)
    if missing:
        raise LogError(f"{path} lacks columns: {', '.join(sorted(missing))}")
    return logged
