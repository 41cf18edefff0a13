r"""Offline ranking metrics on held-out logs: NDCG@k, HR@k and MRR over the full catalogue.

These are the numbers a real company would report. They are computed beside the ground truth
(never instead of it) because the gap between the two is one of the things this project measures.

Rules
-----
* **Full-catalogue ranking.** Every item of the catalogue competes with the target; there is no
  sampled-negative shortcut (sampled metrics are known to disagree with full ones).
* **History excluded.** Items in the user's history (``exclude``, PAD = -1 entries ignored) are
  removed from the ranking, except the target itself, which is always ranked even if it was
  consumed before (repeat consumption is a valid next item).
* **Pessimistic ties.** ``rank = 1 + #{non-excluded items j != target : s_j >= s_target}``, so a
  policy that gives every item the same score ranks the target last, not first.
* With a single relevant item the ideal DCG is 1, hence, for a row whose target has rank ``r``:

  .. math::

     \mathrm{NDCG@k} = \frac{\mathbb{1}[r \le k]}{\log_2(r + 1)}, \qquad
     \mathrm{HR@k} = \mathbb{1}[r \le k], \qquad
     \mathrm{MRR} = \frac{1}{r} \ (\text{not truncated at } k).

  The reported values are means over rows.

The work is vectorised over rows and done in chunks of rows so that memory stays bounded (a few
MiB of temporaries) even for a catalogue of 100,000 items.
"""

from __future__ import annotations

import numpy as np

from ..logs.public import PAD

__all__ = ["metrics_from_ranks", "ranking_metrics", "target_ranks"]

# Elements of the (rows x items) boolean comparison held at once: 4 MiB per temporary.
_CHUNK_ELEMENTS = 1 << 22


def target_ranks(
    logits: np.ndarray,
    targets: np.ndarray,
    exclude: np.ndarray | None = None,
    *,
    chunk_rows: int | None = None,
) -> np.ndarray:
    """1-based rank of each row's target among the non-excluded items, ties counted against it.

    Args:
        logits: (B, I) real scores, higher is better; NaN is rejected.
        targets: (B,) integer item ids in ``[0, I)``.
        exclude: (B, L) integer item ids to remove from the ranking (the user's history), PAD = -1
            entries ignored; the target is never removed. ``None`` removes nothing.
        chunk_rows: rows processed at once; by default as many as keep a chunk near 4 M elements.

    Returns:
        (B,) int64 ranks in ``[1, I]``:
        ``1 + #{non-excluded j != target : logits[b, j] >= logits[b, target]}``.

    Raises:
        ValueError: on a shape mismatch, a target or history item out of range, or NaN scores.
    """
    logits, targets, exclude = _validate(logits, targets, exclude)
    n_rows, n_items = logits.shape
    if chunk_rows is None:
        chunk_rows = max(1, _CHUNK_ELEMENTS // max(n_items, 1))
    elif chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows}")
    check_nan = np.issubdtype(logits.dtype, np.floating)

    ranks = np.empty(n_rows, dtype=np.int64)
    for lo in range(0, n_rows, chunk_rows):
        hi = min(lo + chunk_rows, n_rows)
        scores = logits[lo:hi]
        if check_nan:
            bad = np.isnan(scores).any(axis=1)
            if bad.any():
                raise ValueError(f"logits hold NaN at row {lo + int(np.argmax(bad))}")
        tgt = targets[lo:hi]
        tgt_score = scores[np.arange(hi - lo), tgt]
        # `>=` counts the target itself (s_t >= s_t), which supplies the "1 +" of the rank.
        beats = scores >= tgt_score[:, None]
        if exclude is not None:
            hist = exclude[lo:hi]
            drop = (hist != PAD) & (hist != tgt[:, None])
            r, c = np.nonzero(drop)
            # Assignment (not subtraction) so an item repeated in the history is removed once.
            beats[r, hist[r, c]] = False
        ranks[lo:hi] = np.count_nonzero(beats, axis=1)
    return ranks


def metrics_from_ranks(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    """Mean NDCG@k, HR@k and MRR of 1-based target ranks (see the module docstring).

    Returns ``{"ndcg@k": ..., "hr@k": ..., "mrr": ...}`` with the actual ``k`` in the keys.
    """
    k = _check_k(k)
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    if not np.issubdtype(ranks.dtype, np.integer):
        raise ValueError(f"ranks must be integers, got dtype {ranks.dtype}")
    if ranks.min() < 1:
        raise ValueError(f"ranks are 1-based, got {int(ranks.min())}")
    r = ranks.astype(np.float64)
    hit = ranks <= k
    return {
        f"ndcg@{k}": float(np.mean(np.where(hit, 1.0 / np.log2(r + 1.0), 0.0))),
        f"hr@{k}": float(np.mean(hit)),
        "mrr": float(np.mean(1.0 / r)),
    }


def ranking_metrics(
    logits: np.ndarray,
    targets: np.ndarray,
    exclude: np.ndarray | None = None,
    k: int = 10,
    *,
    chunk_rows: int | None = None,
) -> dict[str, float]:
    """Mean NDCG@k, HR@k and MRR over rows, full-catalogue ranking with history excluded.

    Args:
        logits: (B, I) scores of every item for each held-out row (B >= 1).
        targets: (B,) the held-out next item of each row.
        exclude: (B, L) the user's history, left-padded with PAD = -1; its items are removed
            from the ranking except the target. ``None`` ranks the whole catalogue.
        k: cut-off of NDCG and HR (MRR is not truncated).
        chunk_rows: rows processed at once (memory bound); the result does not depend on it.

    Returns:
        ``{"ndcg@k": ..., "hr@k": ..., "mrr": ...}`` with the actual ``k`` in the keys, e.g. "ndcg@10".
        Ties are broken pessimistically; see :func:`target_ranks` and the module docstring.
    """
    k = _check_k(k)
    if np.ndim(logits) == 2 and np.shape(logits)[0] == 0:
        raise ValueError("ranking_metrics needs at least one row, got logits of shape (0, I)")
    return metrics_from_ranks(target_ranks(logits, targets, exclude, chunk_rows=chunk_rows), k)


def _check_k(k: int) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _validate(
    logits: np.ndarray, targets: np.ndarray, exclude: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, I), got shape {logits.shape}")
    if not (np.issubdtype(logits.dtype, np.floating) or np.issubdtype(logits.dtype, np.integer)):
        raise ValueError(f"logits must be real numbers, got dtype {logits.dtype}")
    n_rows, n_items = logits.shape

    targets = np.asarray(targets)
    if targets.shape != (n_rows,):
        raise ValueError(f"targets must have shape ({n_rows},) to match logits, got {targets.shape}")
    if n_rows and not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be integers, got dtype {targets.dtype}")
    targets = targets.astype(np.int64, copy=False)
    out = (targets < 0) | (targets >= n_items)
    if out.any():
        row = int(np.argmax(out))
        raise ValueError(f"target {int(targets[row])} at row {row} is outside [0, {n_items})")

    if exclude is not None:
        exclude = np.asarray(exclude)
        if exclude.ndim != 2 or exclude.shape[0] != n_rows:
            raise ValueError(f"exclude must have shape ({n_rows}, L) to match logits, got {exclude.shape}")
        if exclude.size and not np.issubdtype(exclude.dtype, np.integer):
            raise ValueError(f"exclude must be integers, got dtype {exclude.dtype}")
        exclude = exclude.astype(np.int64, copy=False)
        out = (exclude != PAD) & ((exclude < 0) | (exclude >= n_items))
        if out.any():
            row, col = np.argwhere(out)[0]
            raise ValueError(
                f"exclude holds item {int(exclude[row, col])} at row {int(row)}, "
                f"outside [0, {n_items}) and not PAD ({PAD})"
            )
    return logits, targets, exclude
