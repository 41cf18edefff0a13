"""Row kernels of the exact ground truth, each with a plain-numpy reference (tests/test_exact_kernels.py
holds them equal with hypothesis).

The exact sums run over (users x items) blocks of r*, logits and reward-model beliefs. These
kernels reduce a block row by row without (users x items) temporaries, release the GIL and are
run on a few Python threads over blocks of rows (:func:`recsim_post.world.kernels.run_row_blocks`,
the simulator's pattern: no OpenMP layer that would reset torch's thread settings). r* itself is
the world's (:func:`recsim_post.world.kernels.true_reward_rows`).

* :func:`softmax_dot`: ``sum_i softmax(z)_i x_i = sum_i e^(z_i - m) x_i / sum_i e^(z_i - m)``
  with ``m = max_i z_i``, float64 throughout. numpy's and libm's float64 exp are scalar on an AVX2
  machine (8-9 ns each); :func:`exp_nonpositive` is a polynomial the compiler vectorises (within
  2 ulp), and the two sums are vector partial sums: about 4 ns per (user, item) on one thread.
* :func:`topk_mean`: the mean of ``x`` over the k highest-scoring items of a row, found with a
  sorted buffer of k entries. Which k items argpartition picks among items tied at the k-th score
  is its own choice, so a row with such a tie (or a NaN) is flagged and the caller falls back to
  ``np.argpartition`` for it: every result is the one argpartition gives.
* :func:`tempered_softmax`: the log-partition and the entropy of softmax(z / τ) at every τ of a
  grid (the sharpness view's entropy and likelihood profiles), one vectorised pass per row and τ.
* :func:`poisson_accumulate`: the streamed Poisson bootstrap of the OPE estimators: each resample's
  weighted sum of each per-row column, ``S[j, b] += N_ib x_ij``, with N_ib ~ Poisson(1) read off a
  uniform by the inverse CDF; the (rows x resamples) counts are never stored.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from ..world.kernels import finish_true_reward_rows, run_row_blocks

# ---------------------------------------------------------------------------------------------
# sum_i softmax(z)_i x_i
# ---------------------------------------------------------------------------------------------


def _bitcast(src: types.Type, dst: types.Type):  # noqa: ANN202 - a Numba intrinsic
    """An intrinsic reinterpreting a ``src`` value as the ``dst`` value with the same bits."""

    @intrinsic
    def cast(typingctx, x):  # noqa: ANN001, ANN202
        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            return builder.bitcast(args[0], context.get_value_type(dst))

        return dst(src), codegen

    return cast


_f64_from_bits = _bitcast(types.int64, types.float64)
_bits_from_f64 = _bitcast(types.float64, types.int64)

_SHIFT = 6755399441055744.0  # 1.5 * 2**52: adding it rounds |y| < 2**51 to an integer, kept in the low bits
_SHIFT_BITS = 4843621399236968448  # the int64 bits of _SHIFT


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def exp_nonpositive(x):  # pragma: no cover - compiled
    """e^x for x <= 0, within 2 ulp of libm; 0 for x < -708 (e^x < 3.1e-308) and for x = -inf.

    Cody-Waite reduction x = k ln 2 + r, |r| <= ln 2 / 2, then e^r by its Taylor polynomial of
    degree 13 (truncation error below 1e-17) and 2^k built from its exponent bits. No call, no
    table and no float-to-integer conversion (AVX2 has none for 64-bit integers): the compiler
    vectorises a loop of it, with fused multiply-adds where the CPU has them, several times faster
    than numpy's or libm's scalar float64 exp.
    """
    y = x if x > -708.0 else -708.0
    t = y * 1.4426950408889634 + _SHIFT  # round(y / ln 2), in t's low mantissa bits
    k = t - _SHIFT
    r = (y - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10  # ln 2, hi and lo parts
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    e = p * _f64_from_bits((_bits_from_f64(t) - _SHIFT_BITS + 1023) << 52)  # p * 2**k
    return e if x >= -708.0 else 0.0  # also 0 for NaN: a row with a NaN logit has m = NaN, so s = 0


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _exp_shifted(z, m, e):  # pragma: no cover - compiled
    for i in range(z.shape[0]):
        e[i] = exp_nonpositive(np.float64(z[i]) - m)


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def _sum_and_dot(e, x):  # pragma: no cover - compiled
    # reassociation lets the compiler keep vector partial sums (a fixed order for a given build)
    s = 0.0
    t = 0.0
    for i in range(e.shape[0]):
        s += e[i]
        t += e[i] * x[i]
    return s, t


@numba.njit(cache=True, nogil=True, error_model="numpy")  # 0 / 0 is NaN, not an exception
def _softmax_dot_rows(z, m, x, lo, hi, out):  # pragma: no cover - compiled
    e = np.empty(z.shape[1])
    for b in range(lo, hi):
        _exp_shifted(z[b], m[b], e)
        s, t = _sum_and_dot(e, x[b])
        out[b] = t / s


def softmax_dot(logits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per row: sum_i softmax(logits)_i * x_i, float64 (logits may be float32; -inf = probability 0;
    a row with a NaN, a +inf or only -inf logits gives NaN, as the reference does)."""
    logits, x = _rows_pair(logits, x)
    m = logits.max(axis=1).astype(np.float64) if logits.shape[1] else np.zeros(len(x))
    out = np.empty(len(x), np.float64)
    run_row_blocks(lambda lo, hi: _softmax_dot_rows(logits, m, x, lo, hi, out), len(x), x.shape[1])
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


TOPK_BLOCK = 64
"""Scores scanned per block by the top-k search: a block whose maximum does not beat the current
k-th best is skipped after one vectorised pass."""


@numba.njit(cache=True, nogil=True, fastmath={"nnan", "nsz"})
def _block_max(scores, lo, hi):  # pragma: no cover - compiled
    # no NaN here (rows with one are set aside before), so the max reduction may be vectorised
    m = -np.inf
    for i in range(lo, hi):
        v = np.float64(scores[i])
        m = v if v > m else m
    return m


@numba.njit(cache=True, nogil=True)
def _topk_row(scores, x, k, vals, idx):  # pragma: no cover - compiled
    """(mean of x over the k best-scoring items, ambiguous?) for one row without NaN; ``vals``/``idx``
    are (k,) scratch. Ambiguous (ties at the k-th score): the mean is that of some k best items."""
    n = scores.shape[0]
    filled = 0
    for lo in range(0, n, TOPK_BLOCK):
        hi = min(lo + TOPK_BLOCK, n)
        if filled == k and not _block_max(scores, lo, hi) > vals[k - 1]:
            continue  # most blocks, once the buffer holds good items
        for i in range(lo, hi):
            v = np.float64(scores[i])
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
    t = 0.0
    for j in range(k):
        t += x[idx[j]]
    kth = vals[k - 1]
    count = 0
    for i in range(n):
        count += np.float64(scores[i]) >= kth
    # items tied at the k-th score: which k of them argpartition picks is its call (the mean of the
    # scores themselves is the same whichever are picked)
    return t / k, count > k


@numba.njit(cache=True, nogil=True)
def _topk_rows(scores, m, x, k, lo, hi, out, ambiguous):  # pragma: no cover - compiled
    vals = np.empty(k, np.float64)
    idx = np.empty(k, np.int64)
    for b in range(lo, hi):
        if m[b] != m[b]:  # a NaN score: argpartition's business
            ambiguous[b] = True
            continue
        out[b], ambiguous[b] = _topk_row(scores[b], x[b], k, vals, idx)


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
    m = scores.max(axis=1)  # NaN exactly where a row holds a NaN
    run_row_blocks(lambda lo, hi: _topk_rows(scores, m, x, k, lo, hi, out, ambiguous), B, n)
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
# one pass per policy: softmax-weighted sums (of r*, and of a belief) and the top-k mean
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, error_model="numpy")  # 0 / 0 is NaN, not an exception
def _policy_rows(z, m, x, xb, with_belief, k, lo, hi, value, belief, topk, ambiguous):  # pragma: no cover
    n = z.shape[1]
    e = np.empty(n)
    vals = np.empty(k, np.float64)
    idx = np.empty(k, np.int64)
    for b in range(lo, hi):
        # the row is read from memory once and reused from cache by every reduction
        _exp_shifted(z[b], m[b], e)
        s, t = _sum_and_dot(e, x[b])
        value[b] = t / s
        if with_belief:
            s, t = _sum_and_dot(e, xb[b])
            belief[b] = t / s
        if m[b] != m[b]:  # a NaN logit: the sums are NaN already, the top k is argpartition's business
            ambiguous[b] = True
        else:
            topk[b], ambiguous[b] = _topk_row(z[b], x[b], k, vals, idx)


def policy_sums(
    logits: np.ndarray, x: np.ndarray, k: int, belief: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per row, in one pass over the row: (softmax_dot(logits, x), topk_mean(logits, x, k),
    softmax_dot(logits, belief) or None). The softmax's exponentials are computed once for both
    weighted sums; each value equals the separate function's (:func:`softmax_dot`, :func:`topk_mean`)."""
    logits, x = _rows_pair(logits, x)
    B, n = x.shape
    k = min(int(k), n)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    xb = x if belief is None else _rows_pair(logits, belief)[1]
    m = logits.max(axis=1).astype(np.float64) if n else np.zeros(B)
    value, believed, topk = np.empty(B), np.empty(B), np.empty(B)
    ambiguous = np.zeros(B, np.bool_)
    run_row_blocks(
        lambda lo, hi: _policy_rows(logits, m, x, xb, belief is not None, k, lo, hi, value, believed, topk, ambiguous),
        B, n,
    )
    if ambiguous.any():
        rows = np.flatnonzero(ambiguous)
        topk[rows] = topk_mean_ref(logits[rows], x[rows], k)
    return value, topk, (believed if belief is not None else None)


# ---------------------------------------------------------------------------------------------
# the softmax at many temperatures: log-partition and entropy of softmax(z / tau), per row and tau
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def _tempered_sums(z, m, inv_tau, with_entropy):  # pragma: no cover - compiled
    # a = (z - m) / tau <= 0; -inf logits (a = -inf) are floored at -745, where e^a is already 0, so
    # e * a is 0 rather than 0 * -inf = NaN and the loop stays branch-free (vectorised)
    s = 0.0
    d = 0.0
    for i in range(z.shape[0]):
        a = (np.float64(z[i]) - m) * inv_tau
        a = a if a > -745.0 else -745.0
        e = exp_nonpositive(a)
        s += e
        if with_entropy:
            d += e * a
    return s, d


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _tempered_rows(z, m, inv_taus, with_entropy, lo, hi, lse, ent):  # pragma: no cover - compiled
    for b in range(lo, hi):
        for j in range(inv_taus.shape[0]):
            s, d = _tempered_sums(z[b], m[b], inv_taus[j], with_entropy)
            lse[b, j] = math.log(s)
            if with_entropy:
                ent[b, j] = lse[b, j] - d / s


def tempered_softmax(
    logits: np.ndarray, taus: np.ndarray, entropy: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per row b and temperature τ_j, with s = z − max_i z_i (so the row's top item has s = 0)::

        lse[b, j] = log Σ_i e^{s_i / τ_j}            (log softmax(z / τ)_i = s_i / τ_j − lse[b, j])
        ent[b, j] = lse[b, j] − Σ_i π_i s_i / τ_j     = H(softmax(z / τ_j)), nats

    float64, ``(B, len(taus))`` each (``ent`` None unless ``entropy``); one pass over the row per τ,
    no (rows × items) temporaries. -inf logits have probability 0; a row with a NaN, a +inf or only
    -inf logits gives NaN, as the reference (:func:`tempered_softmax_ref`) does."""
    z = np.asarray(logits)
    if z.dtype not in (np.float32, np.float64):
        z = z.astype(np.float64)
    z = np.ascontiguousarray(z)
    taus = np.asarray(taus, np.float64).reshape(-1)
    if z.ndim != 2:
        raise ValueError(f"logits must be a (B, I) array, got shape {z.shape}")
    if not (np.isfinite(taus).all() and (taus > 0).all()):
        raise ValueError("temperatures must be positive finite numbers")
    B, n = z.shape
    lse = np.full((B, len(taus)), np.nan)
    ent = np.full((B, len(taus)), np.nan) if entropy else np.empty((0, 0))
    if n == 0 or B == 0:
        return lse, (ent if entropy else None)
    m = z.max(axis=1).astype(np.float64)
    ok = np.isfinite(m)
    inv = 1.0 / taus
    run_row_blocks(lambda lo, hi: _tempered_rows(z, m, inv, entropy, lo, hi, lse, ent), B, n * len(taus))
    bad = ~ok
    if bad.any():  # NaN, +inf or only -inf: no distribution (the kernel's numbers there are meaningless)
        lse[bad] = np.nan
        if entropy:
            ent[bad] = np.nan
    return lse, (ent if entropy else None)


def tempered_softmax_ref(
    logits: np.ndarray, taus: np.ndarray, entropy: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Plain-numpy reference of :func:`tempered_softmax`: the full log-softmax at each τ."""
    z = np.asarray(logits, np.float64)
    s = z - z.max(axis=1, keepdims=True)
    lse_cols, ent_cols = [], []
    with np.errstate(invalid="ignore", under="ignore", divide="ignore"):
        for t in np.asarray(taus, np.float64).reshape(-1):
            a = s / t
            lse = np.log(np.exp(a).sum(axis=1))
            lse_cols.append(lse)
            if entropy:
                logp = a - lse[:, None]
                p = np.exp(logp)
                ent_cols.append(-np.where(p > 0, p * logp, 0.0).sum(axis=1))
    lse_all = np.stack(lse_cols, axis=1) if lse_cols else np.empty((len(z), 0))
    ent_all = (np.stack(ent_cols, axis=1) if ent_cols else np.empty((len(z), 0))) if entropy else None
    bad = ~np.isfinite(z.max(axis=1)) if z.shape[1] else np.ones(len(z), bool)
    lse_all[bad] = np.nan
    if ent_all is not None:
        ent_all[bad] = np.nan
    return lse_all, ent_all


# ---------------------------------------------------------------------------------------------
# r* finished in place, with the references' per-user statistics, in one pass
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def _row_sum(r):  # pragma: no cover - compiled
    s = 0.0
    for i in range(r.shape[0]):
        s += r[i]
    return s


@numba.njit(cache=True, nogil=True)
def _rstar_stats_rows(r, quality, genre, satiation, strength, k, lo, hi, mean, best, topk):  # pragma: no cover
    n = r.shape[1]
    vals = np.empty(k, np.float64)
    idx = np.empty(k, np.int64)
    for b in range(lo, hi):
        finish_true_reward_rows(r, quality, genre, satiation, strength, b, b + 1)
        row = r[b]
        mean[b] = _row_sum(row) / n
        best[b] = _block_max(row, 0, n)  # r* holds no NaN
        topk[b], _ = _topk_row(row, row, k, vals, idx)  # the k best values: ties do not change them


def true_reward_stats(
    product: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], strength: float, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Finish r* in place from :func:`recsim_post.world.kernels.true_reward_product`'s ``product`` (the
    world's finishing kernel, so r* is exactly :func:`~recsim_post.world.kernels.true_reward_rows`'s)
    and return its row means, row maxima and means of the k largest, taken while each row is in cache."""
    r, sat, q, g = product
    B, n = r.shape
    k = min(int(k), n)
    mean, best, topk = np.empty(B), np.empty(B), np.empty(B)
    run_row_blocks(lambda lo, hi: _rstar_stats_rows(r, q, g, sat, float(strength), k, lo, hi, mean, best, topk), B, n)
    return mean, best, topk


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
# the streamed Poisson bootstrap: S[j, b] += N_ib x_ij, N_ib ~ Poisson(1) from a uniform
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
def _poisson_accumulate(u, x, cdf, acc):  # pragma: no cover - compiled
    rows, B = u.shape
    k = x.shape[1]
    top = len(cdf)
    c = np.empty(B)
    for i in range(rows):
        # counts 0 .. 8 branch-free over the resamples (vectorised); P(N >= 8) = 1e-5
        for b in range(B):
            v = u[i, b]
            c[b] = (
                np.int64(v >= cdf[0]) + np.int64(v >= cdf[1]) + np.int64(v >= cdf[2]) + np.int64(v >= cdf[3])
                + np.int64(v >= cdf[4]) + np.int64(v >= cdf[5]) + np.int64(v >= cdf[6]) + np.int64(v >= cdf[7])
            )
        for b in range(B):  # the rare tail, one step at a time
            if c[b] == 8.0:
                v = u[i, b]
                m = 8
                while m < top and v >= cdf[m]:
                    m += 1
                c[b] = m
        # a rank-one update: every resample's sum of each column gains N_ib x_ij
        for j in range(k):
            xij = x[i, j]
            for b in range(B):
                acc[j, b] += c[b] * xij


def poisson_accumulate(u: np.ndarray, x: np.ndarray, acc: np.ndarray | None = None) -> np.ndarray:
    """``acc[j, b] += sum_i N(u[i, b]) x[i, j]``: (k, B) float64, N(u) = #{m : u >= P(N <= m)} the
    Poisson(1) count of the uniform u by the inverse CDF.

    ``u`` (rows, B) uniforms in [0, 1) -- one per logged row and resample --, ``x`` (rows, k) the
    estimators' per-row columns; ``acc`` zeros when None. The counts are never stored: each row's
    B counts are computed and multiplied into the sums at once.
    """
    u = np.ascontiguousarray(u, np.float64)
    x = np.ascontiguousarray(x, np.float64)
    if u.ndim != 2 or x.ndim != 2 or u.shape[0] != x.shape[0]:
        raise ValueError(f"u {u.shape} must be (rows, B) and x {x.shape} must be (rows, k)")
    if acc is None:
        acc = np.zeros((x.shape[1], u.shape[1]))
    elif acc.shape != (x.shape[1], u.shape[1]) or acc.dtype != np.float64 or not acc.flags.c_contiguous:
        raise ValueError(f"acc must be a C-contiguous float64 array of shape {(x.shape[1], u.shape[1])}")
    _poisson_accumulate(u, x, POISSON1_THRESHOLDS, acc)
    return acc


def poisson_counts_ref(u: np.ndarray) -> np.ndarray:
    """The Poisson(1) counts of uniforms ``u`` (any shape), float64: the inverse CDF by searchsorted."""
    return np.searchsorted(POISSON1_THRESHOLDS, u, side="right").astype(np.float64)


def poisson_accumulate_ref(u: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Plain-numpy reference of :func:`poisson_accumulate` (from zero): the counts as a matrix, one product."""
    return x.T @ poisson_counts_ref(u)


__all__ = [
    "POISSON1_CDF", "POISSON1_THRESHOLDS", "poisson_accumulate", "poisson_accumulate_ref", "poisson_counts_ref", "exp_nonpositive", "policy_sums", "softmax_dot", "softmax_dot_ref", "tempered_softmax", "tempered_softmax_ref", "true_reward_stats", "topk_mean", "topk_mean_ref",
]
