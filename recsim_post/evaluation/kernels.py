"""Row kernels of the exact ground truth, each with a plain-numpy reference (tests/test_exact_kernels.py
holds them equal with hypothesis).

The exact sums run over (users x items) blocks of r*, logits and reward-model beliefs. These
kernels reduce a block row by row without (users x items) temporaries, release the GIL and are
run on a few Python threads over blocks of rows (:func:`recsim_post.world.kernels.run_row_blocks`,
the simulator's pattern: no OpenMP layer that would reset torch's thread settings). r* itself is
the world's (:func:`recsim_post.world.kernels.true_reward_rows`).

* :func:`softmax_dot_rows`: ``sum_i softmax(z)_i x_i = sum_i e^(z_i - m) x_i / sum_i e^(z_i - m)``
  with ``m = max_i z_i``, float64 throughout (one pass for the max, one for both sums).
* :func:`topk_rows`: the mean of ``x`` over the k highest-scoring items of a row, found with a
  sorted buffer of k entries. Which k items argpartition picks among items tied at the k-th score
  is its own choice, so a row with such a tie (or a NaN) is flagged and the caller falls back to
  ``np.argpartition`` for it: every result is the one argpartition gives.
* :func:`poisson_counts`: Poisson(1) resampling counts read off uniforms by the inverse CDF, for the
  streamed Poisson bootstrap of the OPE estimators (ope.py multiplies them into the estimators'
  per-row terms, one matrix product per block of logged rows).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ..world.kernels import run_row_blocks

# ---------------------------------------------------------------------------------------------
# sum_i softmax(z)_i x_i
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _softmax_dot_rows(z, x, lo, hi, out):  # pragma: no cover - compiled
    n = z.shape[1]
    for b in range(lo, hi):
        m = -np.inf
        for i in range(n):
            v = np.float64(z[b, i])
            if v > m or v != v:
                m = v
        s = 0.0
        t = 0.0
        for i in range(n):
            e = math.exp(np.float64(z[b, i]) - m)
            s += e
            t += e * x[b, i]
        out[b] = t / s


def softmax_dot(logits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per row: sum_i softmax(logits)_i * x_i, float64 (logits may be float32; -inf = probability 0)."""
    logits, x = _rows_pair(logits, x)
    out = np.empty(len(x), np.float64)
    run_row_blocks(lambda lo, hi: _softmax_dot_rows(logits, x, lo, hi, out), len(x), x.shape[1])
    return out


def softmax_dot_ref(logits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Plain-numpy reference of :func:`softmax_dot` (the ground truth's original code)."""
    z = np.asarray(logits).astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return (p * x).sum(axis=1)


# ---------------------------------------------------------------------------------------------
# mean of x over the k best-scoring items
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _topk_rows(scores, x, k, lo, hi, out, ambiguous):  # pragma: no cover - compiled
    n = scores.shape[1]
    vals = np.empty(k, np.float64)
    idx = np.empty(k, np.int64)
    for b in range(lo, hi):
        filled = 0
        bad = False
        for i in range(n):
            v = np.float64(scores[b, i])
            if v != v:
                bad = True
                break
            if filled == k and not v > vals[k - 1]:
                continue
            # insert v into the descending buffer, dropping its last entry when full
            j = filled if filled < k else k - 1
            while j > 0 and vals[j - 1] < v:
                vals[j] = vals[j - 1]
                idx[j] = idx[j - 1]
                j -= 1
            vals[j] = v
            idx[j] = i
            if filled < k:
                filled += 1
        if not bad:
            kth = vals[k - 1]
            count = 0
            for i in range(n):
                if np.float64(scores[b, i]) >= kth:
                    count += 1
            bad = count > k  # items tied at the k-th score: the k chosen among them are argpartition's call
        ambiguous[b] = bad
        if not bad:
            t = 0.0
            for j in range(k):
                t += x[b, idx[j]]
            out[b] = t / k


def topk_mean(scores: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """Per row: the mean of x over the k highest-scoring items (k is capped at the row length).

    The same k items as ``np.argpartition(-scores, k - 1, axis=1)[:, :k]`` (its choice among items
    tied at the k-th score included: such rows are computed by argpartition itself).
    """
    scores, x = _rows_pair(scores, x)
    B, n = x.shape
    k = min(int(k), n)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out = np.empty(B, np.float64)
    ambiguous = np.zeros(B, np.bool_)
    run_row_blocks(lambda lo, hi: _topk_rows(scores, x, k, lo, hi, out, ambiguous), B, n)
    if ambiguous.any():
        rows = np.flatnonzero(ambiguous)
        out[rows] = topk_mean_ref(scores[rows], x[rows], k)
    return out


def topk_mean_ref(scores: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """Plain-numpy reference of :func:`topk_mean` (the ground truth's original code)."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.take_along_axis(x, top, axis=1).mean(axis=1)


# ---------------------------------------------------------------------------------------------
# plumbing
# ---------------------------------------------------------------------------------------------


def _rows_pair(scores: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)
    scores = np.ascontiguousarray(scores)
    x = np.ascontiguousarray(x, np.float64)
    if scores.ndim != 2 or scores.shape != x.shape:
        raise ValueError(f"scores {scores.shape} and values {x.shape} must be (B, I) arrays of one shape")
    return scores, x




# ---------------------------------------------------------------------------------------------
# the Poisson bootstrap's counts: N ~ Poisson(1) from a uniform, by the inverse CDF
# ---------------------------------------------------------------------------------------------


def poisson1_cdf(max_count: int = 24) -> np.ndarray:
    """P(N <= j) for N ~ Poisson(1), j = 0 .. max_count (float64)."""
    j = np.arange(max_count + 1)
    pmf = np.exp(-1.0 - np.array([math.lgamma(k + 1.0) for k in j]))
    return np.cumsum(pmf)


POISSON1_CDF = poisson1_cdf()
"""P(N <= j) of Poisson(1), j = 0 .. 24."""

POISSON1_THRESHOLDS = np.unique(POISSON1_CDF)
"""The inverse-CDF table, strictly increasing: a uniform u in [0, 1) gives the count
#{j : u >= P(N <= j)}. (The CDF stops growing in float64 at 1 - 1.1e-16, after 19 entries, so a
count is 19 at most; P(N > 19) < 1e-18.)"""


@numba.njit(cache=True, nogil=True)
def _poisson_counts(u, cdf, out, lo, hi):  # pragma: no cover - compiled
    m = u.shape[1]
    top = len(cdf)
    for b in range(lo, hi):
        # counts 0 .. 8 branch-free (the compiler vectorises the comparisons); P(N >= 8) = 1e-5
        for i in range(m):
            v = u[b, i]
            out[b, i] = (
                np.int64(v >= cdf[0]) + np.int64(v >= cdf[1]) + np.int64(v >= cdf[2]) + np.int64(v >= cdf[3])
                + np.int64(v >= cdf[4]) + np.int64(v >= cdf[5]) + np.int64(v >= cdf[6]) + np.int64(v >= cdf[7])
            )
        for i in range(m):  # the rare tail, one step at a time
            if out[b, i] == 8.0:
                v = u[b, i]
                c = 8
                while c < top and v >= cdf[c]:
                    c += 1
                out[b, i] = c


def poisson_counts(u: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Poisson(1) counts (float64) of uniforms ``u`` in [0, 1) by the inverse CDF:
    ``N(u) = #{j : u >= P(N <= j)}``. ``out`` may be ``u`` itself (each count overwrites its uniform)."""
    u = np.asarray(u, np.float64)
    if u.ndim != 2 or not u.flags.c_contiguous:
        raise ValueError(f"u must be a C-contiguous (B, n) float64 array, got shape {u.shape}")
    out = np.empty_like(u) if out is None else out
    if out.shape != u.shape or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float64 array of shape {u.shape}")
    _poisson_counts(u, POISSON1_THRESHOLDS, out, 0, u.shape[0])
    return out


def poisson_counts_ref(u: np.ndarray) -> np.ndarray:
    """Plain-numpy reference of :func:`poisson_counts`."""
    return np.searchsorted(POISSON1_THRESHOLDS, u, side="right").astype(np.float64)


__all__ = [
    "POISSON1_CDF", "POISSON1_THRESHOLDS", "poisson_counts", "poisson_counts_ref", "softmax_dot", "softmax_dot_ref", "topk_mean", "topk_mean_ref",
]
