"""The batched per-step work of the simulator, as Numba kernels with plain-numpy references.

Each kernel takes its random numbers as arguments (drawn by the caller from a named stream), so
the Numba kernel and its numpy reference consume exactly the same randomness and must return the
same result; ``tests/test_kernels.py`` holds them equal with hypothesis.

Why the work is split this way: ``exp`` over the catalogue is done by numpy (its vectorised exp
beats a scalar exp inside a Numba loop), and the kernels do the rest, row by row, without large
temporaries: the logger's logits (a float32 dot product in a fixed order, see
:func:`logger_logits`), a cumulative sum per user, inverse-CDF sampling of a slate without
replacement (K uniforms per user, no Gumbel noise over the whole catalogue), the slate choice and
the feedback. Each kernel has a serial ``*_rows`` form that releases the GIL; the simulator runs
those on a few Python threads (:func:`run_on_threads`), the ``parallel=True`` forms are for
callers that want one call per batch (they start Numba's threading layer, which with OpenMP resets
torch's thread count; the simulator never calls them, see :func:`kernel_threads`).
``benchmarks/simulate.py`` measures the whole user-step.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

# ---------------------------------------------------------------------------------------------
# Threads for the row kernels. The ``*_rows`` kernels release the GIL, and so does numpy's exp,
# so plain Python threads run them in parallel. Unlike a ``parallel=True`` kernel (an OpenMP
# fork-join per call), threads that claim blocks of rows one at a time need no barrier per call:
# on a busy machine a thread that the OS deschedules delays only its own block, and no idle
# OpenMP worker spins on a core that the other threads need.
# ---------------------------------------------------------------------------------------------

_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool)


def kernel_threads() -> int:
    """Threads the row kernels run on: Numba's thread count (``NUMBA_NUM_THREADS``, default the
    cores; or what ``numba.set_num_threads`` chose), read without starting Numba's threading layer.

    ``numba.get_num_threads()`` starts that layer, and its OpenMP form sets the OpenMP thread count
    of the calling thread to Numba's, which is torch's too: the next torch op would run on every
    core, silently undoing ``OMP_NUM_THREADS=1`` or ``torch.set_num_threads(1)``. The row kernels
    run on Python threads (:func:`run_on_threads`), so they never need that layer.
    """
    from numba.np.ufunc import parallel

    if parallel._is_initialized:  # started by someone (set_num_threads, a parallel kernel): it knows best
        return numba.get_num_threads()
    return int(numba.config.NUMBA_NUM_THREADS)


def run_on_threads(work: Callable[[], None], n: int) -> None:
    """Run ``work`` on n threads (this one and n - 1 pool threads) and wait for all of them."""
    global _POOL
    if n <= 1:
        work()
        return
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] < n - 1:  # new after fork, or too small
        _POOL = (os.getpid(), n - 1, ThreadPoolExecutor(n - 1, thread_name_prefix="recsim-kernels"))
    futures = [_POOL[2].submit(work) for _ in range(n - 1)]
    try:
        work()
    finally:
        for f in futures:
            f.result()


# ---------------------------------------------------------------------------------------------
# The logger's shifted logits, one row per user (what goes into exp):
#   s_i = (dot(theta_u, v_i) * relevance_weight + bias_i) * inv_temperature      (float32)
#   out_i = max(s_i - max_j s_j, floor)
# dot(theta_u, v_i) is summed in float32 in the fixed order j = 0, 1, ..., d - 1 (each product
# rounded, then added), so the kernel and the numpy reference agree bit for bit and the result
# does not depend on the BLAS build, its thread count or the block size (a BLAS sgemm would).
# Four users share each pass over the item vectors; the order of the sums is the same.
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, inline="always")
def _dot_rows4(theta, u0, u1, u2, u3, vt, z0, z1, z2, z3):
    d, n = vt.shape
    for i in range(n):
        z0[i] = np.float32(0.0)
        z1[i] = np.float32(0.0)
        z2[i] = np.float32(0.0)
        z3[i] = np.float32(0.0)
    j = 0
    while j + 4 <= d:
        a0 = np.float32(theta[u0, j]); a1 = np.float32(theta[u0, j + 1])
        a2 = np.float32(theta[u0, j + 2]); a3 = np.float32(theta[u0, j + 3])
        b0 = np.float32(theta[u1, j]); b1 = np.float32(theta[u1, j + 1])
        b2 = np.float32(theta[u1, j + 2]); b3 = np.float32(theta[u1, j + 3])
        c0 = np.float32(theta[u2, j]); c1 = np.float32(theta[u2, j + 1])
        c2 = np.float32(theta[u2, j + 2]); c3 = np.float32(theta[u2, j + 3])
        e0 = np.float32(theta[u3, j]); e1 = np.float32(theta[u3, j + 1])
        e2 = np.float32(theta[u3, j + 2]); e3 = np.float32(theta[u3, j + 3])
        v0 = vt[j]; v1 = vt[j + 1]; v2 = vt[j + 2]; v3 = vt[j + 3]
        for i in range(n):
            x0 = v0[i]; x1 = v1[i]; x2 = v2[i]; x3 = v3[i]
            z0[i] = (((z0[i] + a0 * x0) + a1 * x1) + a2 * x2) + a3 * x3
            z1[i] = (((z1[i] + b0 * x0) + b1 * x1) + b2 * x2) + b3 * x3
            z2[i] = (((z2[i] + c0 * x0) + c1 * x1) + c2 * x2) + c3 * x3
            z3[i] = (((z3[i] + e0 * x0) + e1 * x1) + e2 * x2) + e3 * x3
        j += 4
    while j < d:
        a0 = np.float32(theta[u0, j]); b0 = np.float32(theta[u1, j])
        c0 = np.float32(theta[u2, j]); e0 = np.float32(theta[u3, j])
        v0 = vt[j]
        for i in range(n):
            x0 = v0[i]
            z0[i] = z0[i] + a0 * x0
            z1[i] = z1[i] + b0 * x0
            z2[i] = z2[i] + c0 * x0
            z3[i] = z3[i] + e0 * x0
        j += 1


@numba.njit(cache=True, inline="always")
def _dot_row(theta, u, vt, z):
    d, n = vt.shape
    for i in range(n):
        z[i] = np.float32(0.0)
    for j in range(d):
        a = np.float32(theta[u, j])
        v = vt[j]
        for i in range(n):
            z[i] = z[i] + a * v[i]


@numba.njit(cache=True, inline="always")
def _scale_shift_floor(z, rw, bias, inv_t, floor, lanes):
    """z <- max(s - max(s), floor) with s = (z * rw + bias) * inv_t, all in float32."""
    n = z.shape[0]
    L = lanes.shape[0]
    for i in range(n):
        z[i] = (z[i] * rw + bias[i]) * inv_t
    # the row maximum, in L independent lanes so that the loop vectorises (max is exact, so
    # the order does not matter)
    lanes[:] = -np.inf
    top = n - n % L
    for i0 in range(0, top, L):
        for l in range(L):
            v = z[i0 + l]
            lanes[l] = v if v > lanes[l] else lanes[l]
    m = np.float32(-np.inf)
    for i in range(top, n):
        m = z[i] if z[i] > m else m
    for l in range(L):
        m = lanes[l] if lanes[l] > m else m
    for i in range(n):
        v = z[i] - m
        z[i] = floor if v < floor else v


@numba.njit(cache=True, nogil=True)
def logger_logits_rows(
    theta: np.ndarray,
    users: np.ndarray,
    vectors_t: np.ndarray,
    relevance_weight: np.float32,
    bias: np.ndarray,
    inv_temperature: np.float32,
    floor: np.float32,
    out: np.ndarray,
    lo: int,
    hi: int,
) -> None:
    """Rows lo..hi of :func:`logger_logits`, serially and without the GIL (for callers that run
    their own threads)."""
    lanes = np.empty(16, dtype=np.float32)
    b = lo
    while b + 4 <= hi:
        _dot_rows4(theta, users[b], users[b + 1], users[b + 2], users[b + 3], vectors_t,
                   out[b], out[b + 1], out[b + 2], out[b + 3])
        b += 4
    while b < hi:
        _dot_row(theta, users[b], vectors_t, out[b])
        b += 1
    for r in range(lo, hi):
        _scale_shift_floor(out[r], relevance_weight, bias, inv_temperature, floor, lanes)


@numba.njit(cache=True, parallel=True)
def logger_logits(
    theta: np.ndarray,
    users: np.ndarray,
    vectors_t: np.ndarray,
    relevance_weight: np.float32,
    bias: np.ndarray,
    inv_temperature: np.float32,
    floor: np.float32,
    out: np.ndarray,
) -> np.ndarray:
    """Shifted logits of ``users`` (B,) into ``out`` (B, n) float32, ready for ``np.exp``.

    theta: (N, d) float64 (rows are rounded to float32); vectors_t: (d, n) float32, C-contiguous;
    bias: (n,) float32; the scalars are float32. Returns ``out``.
    """
    B = users.shape[0]
    for g in numba.prange((B + 3) // 4):
        logger_logits_rows(theta, users, vectors_t, relevance_weight, bias, inv_temperature, floor,
                           out, 4 * g, min(4 * g + 4, B))
    return out


def logger_scores_ref(
    theta: np.ndarray,
    users: np.ndarray,
    vectors_t: np.ndarray,
    relevance_weight: np.float32,
    bias: np.ndarray,
    inv_temperature: np.float32,
) -> np.ndarray:
    """Plain-numpy s = (dot * relevance_weight + bias) * inv_temperature, (B, n) float32, unshifted."""
    th = theta[users].astype(np.float32)
    z = np.zeros((len(users), vectors_t.shape[1]), dtype=np.float32)
    for j in range(vectors_t.shape[0]):  # sequential over d, as in the kernel, so sums agree exactly
        z += th[:, j, None] * vectors_t[j][None, :]
    z *= relevance_weight
    z += bias[None, :]
    z *= inv_temperature
    return z


def logger_logits_ref(
    theta, users, vectors_t, relevance_weight, bias, inv_temperature, floor
) -> np.ndarray:
    """Plain-numpy reference of :func:`logger_logits` (returns a new array)."""
    z = logger_scores_ref(theta, users, vectors_t, relevance_weight, bias, inv_temperature)
    z -= z.max(axis=1, keepdims=True)
    np.maximum(z, floor, out=z)
    return z


# ---------------------------------------------------------------------------------------------
# Slate sampling: Plackett-Luce (sampling without replacement) from
#   p_i = (1 - eps) * w_i / sum(w) + eps / n_items
# Each position uses one uniform u: the target t = u * (mass not yet chosen) is mapped back onto
# the full CDF by skipping the mass of already-chosen items, in ascending item order.
#   cum_i = w_0 + ... + w_i        (float64, summed left to right)
#   cdf_i = (1 - eps) * cum_i / cum_{n-1} + eps * (i + 1) / n
# x = the first index with cdf_x > t (n if none); cdf is non-decreasing, so any exact search
# finds the same x as the reference's count of cdf <= t.
# ---------------------------------------------------------------------------------------------


RECOMPUTE_BELOW = 1e-6


@numba.njit(cache=True, inline="always")
def _first_above(cdf: np.ndarray, t: float, n: int) -> int:
    """First index x with cdf[x] > t (n if none), for a non-decreasing cdf (branch-free halving)."""
    base = 0
    size = n
    while size > 1:
        half = size >> 1
        base = base + half if cdf[base + half] <= t else base
        size -= half
    return base + 1 if cdf[base] <= t else base


@numba.njit(cache=True)
def cdf_ramp(eps: float, n: int) -> np.ndarray:
    """eps * (i + 1) / n for i < n: the uniform part of the CDF, shared by every row."""
    ramp = np.empty(n, dtype=np.float64)
    for i in range(n):
        ramp[i] = eps * (i + 1) / n
    return ramp


@numba.njit(cache=True, nogil=True)
def sample_slates_rows(
    weights: np.ndarray,
    eps: float,
    uniforms: np.ndarray,
    ramp: np.ndarray,
    cdf: np.ndarray,
    lo: int,
    hi: int,
    slates: np.ndarray,
    prop: np.ndarray,
    p_item: np.ndarray,
) -> None:
    """Rows lo..hi of :func:`sample_slates` into its outputs, serially and without the GIL.

    ramp = cdf_ramp(eps, n); cdf: (n,) float64 scratch, one per thread.
    """
    n = weights.shape[1]
    K = uniforms.shape[1]
    a = 1.0 - eps
    floor = eps / n
    chosen = np.empty(K, dtype=np.int64)  # ascending order of item index
    p_chosen = np.empty(K, dtype=np.float64)  # their p_i, in the same order
    for b in range(lo, hi):
        w = weights[b]
        acc = 0.0
        for i in range(n):
            acc += w[i]
            cdf[i] = acc
        total = acc
        for i in range(n):
            cdf[i] = a * cdf[i] / total + ramp[i]
        remaining = 1.0
        for k in range(K):
            t = uniforms[b, k] * remaining
            # Skip the chosen items at or below the answer, in ascending order: item c_j is
            # skipped (t += p_cj) while c_j <= first_above(t), i.e. while cdf[c_j - 1] <= t.
            # This is the reference's search / skip / search-again loop, one probe per item.
            for j in range(k):
                cj = chosen[j]
                if cj > 0 and cdf[cj - 1] > t:
                    break
                t += p_chosen[j]
            x = _first_above(cdf, t, n)
            x = _fix_rounding(x, chosen, k, n)
            px = a * w[x] / total + floor
            slates[b, k] = x
            prop[b, k] = px / remaining
            p_item[b, k] = px
            remaining -= px
            # insert x into the sorted list of chosen items
            pos = k
            while pos > 0 and chosen[pos - 1] > x:
                chosen[pos] = chosen[pos - 1]
                p_chosen[pos] = p_chosen[pos - 1]
                pos -= 1
            chosen[pos] = x
            p_chosen[pos] = px
            if remaining < RECOMPUTE_BELOW:
                # 1 - sum(chosen) cancels catastrophically when the slate has taken almost all
                # the mass; sum what is left instead (rare: only when K is close to the support)
                remaining = 0.0
                j = 0
                for i in range(n):
                    if j <= k and chosen[j] == i:
                        j += 1
                    else:
                        remaining += a * w[i] / total + floor


@numba.njit(cache=True, parallel=True)
def sample_slates(
    weights: np.ndarray, eps: float, uniforms: np.ndarray, cum: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one slate per row of ``weights`` (B, n) without replacement.

    uniforms: (B, K) in [0, 1); cum: (R, n) float64 scratch, R >= 1: the rows are split into
    min(R, B) contiguous groups run in parallel, each with one scratch row, so R = the number of
    Numba threads is enough (a (B, n) array works too, it only costs memory).
    Returns (slates (B, K) int32, propensity (B, K) = P(item at k | items before k),
    p_item (B, K) = p_i, the item's single-draw probability under the logger).
    """
    B, n = weights.shape
    K = uniforms.shape[1]
    R = min(cum.shape[0], B)
    slates = np.empty((B, K), dtype=np.int32)
    prop = np.empty((B, K), dtype=np.float64)
    p_item = np.empty((B, K), dtype=np.float64)
    ramp = cdf_ramp(eps, n)
    per = (B + R - 1) // R if R > 0 else 0
    for r in numba.prange(R):
        sample_slates_rows(weights, eps, uniforms, ramp, cum[r], r * per, min(B, (r + 1) * per),
                           slates, prop, p_item)
    return slates, prop, p_item


@numba.njit(cache=True, inline="always")
def _fix_rounding(x: int, chosen: np.ndarray, k: int, n: int) -> int:
    """Guard against round-off: past the end, or on a chosen item, take the nearest free item below."""
    if x >= n:
        x = n - 1
    while True:
        taken = False
        for j in range(k):
            if chosen[j] == x:
                taken = True
                break
        if not taken:
            return x
        x = x - 1 if x > 0 else n - 1


def sample_slates_ref(
    weights: np.ndarray, eps: float, uniforms: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plain-numpy reference of :func:`sample_slates` (vectorised over rows, loops over positions)."""
    B, n = weights.shape
    K = uniforms.shape[1]
    cum = np.cumsum(weights, axis=1, dtype=np.float64)
    total = cum[:, -1:].copy()
    idx = np.arange(1, n + 1, dtype=np.float64)
    cdf = (1.0 - eps) * cum / total + eps * idx / n
    p = (1.0 - eps) * weights.astype(np.float64) / total + eps / n
    rows = np.arange(B)
    slates = np.empty((B, K), dtype=np.int32)
    prop = np.empty((B, K))
    p_item = np.empty((B, K))
    remaining = np.ones(B)
    chosen_sorted = np.empty((B, 0), dtype=np.int64)
    for k in range(K):
        t = uniforms[:, k] * remaining
        x = (cdf <= t[:, None]).sum(axis=1)
        active = np.ones(B, dtype=bool)
        for j in range(k):
            item = chosen_sorted[:, j]
            skip = active & (item <= x)
            active &= skip
            t = np.where(skip, t + p[rows, item], t)
            x = np.where(skip, (cdf <= t[:, None]).sum(axis=1), x)
        x = np.minimum(x, n - 1)
        for r in range(B):  # round-off guard, as in the kernel (practically never taken)
            while x[r] in chosen_sorted[r]:
                x[r] = x[r] - 1 if x[r] > 0 else n - 1
        px = p[rows, x]
        slates[:, k] = x
        prop[:, k] = px / remaining
        p_item[:, k] = px
        remaining = remaining - px
        chosen_sorted = np.sort(np.concatenate([chosen_sorted, x[:, None]], axis=1), axis=1)
        low = remaining < RECOMPUTE_BELOW
        if low.any():
            free = np.ones((B, n), dtype=bool)
            np.put_along_axis(free, chosen_sorted, False, axis=1)
            exact = np.cumsum(np.where(free, p, 0.0), axis=1)[:, -1]
            remaining = np.where(low, exact, remaining)
    return slates, prop, p_item


# ---------------------------------------------------------------------------------------------
# The true reward r*(u, i, t) = theta_u . v_i + q_i - strength * S_{u, genre(i)}(t): one finishing
# term for every kernel, (dot + q) - strength * S, and its numpy twin for every reference. Keeping
# that one float64 expression (no FMA: Numba does not contract without fastmath) is what makes the
# kernels and the references agree bit for bit, and the logs stay as they were.
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, inline="always")
def _finish_r(acc: float, q: float, strength: float, sat: float) -> float:  # pragma: no cover - compiled
    """r* from theta . v (``acc``), the item's quality, the satiation strength and S_{u, genre(i)}."""
    return (acc + q) - strength * sat


def finish_r_ref(dot: np.ndarray, quality: np.ndarray, strength: float, satiation: np.ndarray) -> np.ndarray:
    """Plain-numpy :func:`_finish_r` (broadcasting): (dot + quality) - strength * satiation."""
    return (dot + quality) - strength * satiation


# ---------------------------------------------------------------------------------------------
# Slate choice.
#   r*_k   = theta_u . v_{i_k} + q_{i_k} - satiation_strength * S_{u, genre(i_k)}   (see _finish_r)
#   util_k = reward_weight * r*_k + trend_pull * s_u * trend_{i_k} + hype_pull * h_{i_k}
#            - position_bias * log2(1 + k)
#   mnl:     P(k) = exp(util_k) / (exp(u_0) + sum_j exp(util_j)),  P(no click) = exp(u_0) / (...)
#   cascade: p_k = 1 / (1 + exp(u_0 - util_k)),  P(k) = p_k * prod_{j<k} (1 - p_j),
#            P(no click) = prod_j (1 - p_j)   (Craswell et al. 2008: scan top-down, stop at a click)
#   Either way one uniform per user picks the outcome by inverse CDF over [slot 0..K-1, no click].
#   What is recorded of the click (rating, watch, ...) is world/feedback.py's.
# params = [reward_weight, trend_pull, hype_pull, no_click_utility, satiation_strength, cascade]
# position_penalty[k] = position_bias * log2(1 + k), computed once by the caller.
# theta_u . v_i is summed in the fixed order j = 0 .. d - 1 (kernel and reference alike).
# ---------------------------------------------------------------------------------------------

CHOICE_PARAMS = ("reward_weight", "trend_pull", "hype_pull", "no_click_utility", "satiation_strength", "cascade")


@numba.njit(cache=True, nogil=True)
def choose_rows(
    slates: np.ndarray,
    theta: np.ndarray,
    susceptibility: np.ndarray,
    satiation: np.ndarray,
    item_vecs: np.ndarray,
    quality: np.ndarray,
    hype: np.ndarray,
    genre: np.ndarray,
    trend: np.ndarray,
    params: np.ndarray,
    position_penalty: np.ndarray,
    u_choice: np.ndarray,
    lo: int,
    hi: int,
    choice: np.ndarray,
    rstar: np.ndarray,
    cprob: np.ndarray,
) -> None:
    """Rows lo..hi of :func:`choose` into its outputs, serially and without the GIL."""
    K = slates.shape[1]
    d = theta.shape[1]
    reward_w, trend_pull, hype_pull, u0, sat_s = params[0], params[1], params[2], params[3], params[4]
    cascade = params[5] != 0.0
    util = np.empty(K + 1, dtype=np.float64)
    for b in range(lo, hi):
        for k in range(K):
            i = slates[b, k]
            acc = 0.0
            for j in range(d):
                acc = acc + theta[b, j] * item_vecs[i, j]
            r = _finish_r(acc, quality[i], sat_s, satiation[b, genre[i]])
            rstar[b, k] = r
            util[k] = (
                reward_w * r
                + trend_pull * susceptibility[b] * trend[i]
                + hype_pull * hype[i]
                - position_penalty[k]
            )
        if cascade:
            # util[k] <- P(click at k) = p_k * (probability of reaching k); util[K] <- P(no click)
            reach = 1.0
            for k in range(K):
                p = 1.0 / (1.0 + np.exp(u0 - util[k]))
                util[k] = reach * p
                reach = reach * (1.0 - p)
            util[K] = reach
            total = 1.0
        else:
            util[K] = u0
            m = util[0]
            for k in range(1, K + 1):
                if util[k] > m:
                    m = util[k]
            total = 0.0
            for k in range(K + 1):
                util[k] = np.exp(util[k] - m)
                total += util[k]
        # inverse CDF over [slot 0, ..., slot K-1, no click]
        t = u_choice[b] * total
        acc = 0.0
        c = K
        for k in range(K):
            acc += util[k]
            if t < acc:
                c = k
                break
        cprob[b] = util[c] / total
        choice[b] = -1 if c == K else c


CHOICE_BLOCK_USERS = 1024
"""Rows per piece of work in :func:`choose` (threads claim pieces one at a time)."""


def choose(
    slates: np.ndarray,
    theta: np.ndarray,
    susceptibility: np.ndarray,
    satiation: np.ndarray,
    item_vecs: np.ndarray,
    quality: np.ndarray,
    hype: np.ndarray,
    genre: np.ndarray,
    trend: np.ndarray,
    params: np.ndarray,
    position_penalty: np.ndarray,
    u_choice: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users choose (at most) one item of their slates (B, K).

    theta (B, d), susceptibility (B,), satiation (B, n_genres) are the rows of the users in the batch.
    Returns (choice (B,) int32: slate position or -1 for no click, true_reward (B, K) float64 of
    every shown item, choice_prob (B,) of what happened). Runs :func:`choose_rows` on
    :func:`kernel_threads` threads (see :func:`run_on_threads`).
    """
    B, K = slates.shape
    choice = np.empty(B, dtype=np.int32)
    rstar = np.empty((B, K), dtype=np.float64)
    cprob = np.empty(B, dtype=np.float64)
    args = (slates, theta, susceptibility, satiation, item_vecs, quality, hype, genre, trend, params,
            position_penalty, u_choice)
    starts = range(0, B, CHOICE_BLOCK_USERS)
    claim = itertools.count()

    def work() -> None:
        while (i := next(claim)) < len(starts):
            lo = starts[i]
            hi = min(lo + CHOICE_BLOCK_USERS, B)
            choose_rows(*args, lo, hi, choice, rstar, cprob)

    run_on_threads(work, min(kernel_threads(), len(starts)))
    return choice, rstar, cprob


def choose_ref(
    slates, theta, susceptibility, satiation, item_vecs, quality, hype, genre, trend, params,
    position_penalty, u_choice,
):
    """Plain-numpy reference of :func:`choose`, vectorised over users and slots."""
    B, K = slates.shape
    reward_w, trend_pull, hype_pull, u0, sat_s = params[:5]
    cascade = params[5] != 0.0
    vecs = item_vecs[slates]  # (B, K, d)
    dot = np.zeros((B, K))
    for j in range(theta.shape[1]):  # sequential over d, as in the kernel, so sums agree exactly
        dot = dot + theta[:, None, j] * vecs[:, :, j]
    rows = np.arange(B)[:, None]
    rstar = finish_r_ref(dot, quality[slates], sat_s, satiation[rows, genre[slates]])
    util = (
        reward_w * rstar
        + trend_pull * susceptibility[:, None] * trend[slates]
        + hype_pull * hype[slates]
        - position_penalty[None, :K]
    )
    if cascade:
        with np.errstate(over="ignore"):  # exp overflows to inf: p = 0, as in the kernel
            p = 1.0 / (1.0 + np.exp(u0 - util))
        e = np.empty((B, K + 1))
        reach = np.ones(B)
        for k in range(K):  # sequential, as in the kernel
            e[:, k] = reach * p[:, k]
            reach = reach * (1.0 - p[:, k])
        e[:, K] = reach
        total = np.ones(B)
    else:
        util = np.concatenate([util, np.full((B, 1), u0)], axis=1)
        e = np.exp(util - util.max(axis=1, keepdims=True))
        total = np.zeros(B)
        for k in range(K + 1):  # sequential, as in the kernel
            total = total + e[:, k]
    t = u_choice * total
    acc = np.zeros(B)
    c = np.full(B, K)
    for k in range(K):
        acc = acc + e[:, k]
        hit = (c == K) & (t < acc)
        c[hit] = k
    cprob = e[np.arange(B), c] / total
    choice = np.where(c < K, c, -1).astype(np.int32)
    return choice, rstar, cprob


# ---------------------------------------------------------------------------------------------
# Blocks of rows on threads, for kernels that reduce (users x items) arrays row by row.
# ---------------------------------------------------------------------------------------------

ROW_BLOCK_ELEMENTS = 1 << 20
"""Elements of a block of rows handed to one thread at a time (8 MB of float64)."""


def run_row_blocks(fn: Callable[[int, int], None], n_rows: int, row_len: int) -> None:
    """Run ``fn(lo, hi)`` over blocks of about :data:`ROW_BLOCK_ELEMENTS` elements on
    :func:`kernel_threads` threads (see :func:`run_on_threads`); ``fn`` must release the GIL
    to run in parallel and must write only its own rows."""
    if n_rows == 0:
        return
    per = max(1, ROW_BLOCK_ELEMENTS // max(row_len, 1))
    starts = range(0, n_rows, per)
    claim = itertools.count()

    def work() -> None:
        while (i := next(claim)) < len(starts):
            fn(starts[i], min(starts[i] + per, n_rows))

    run_on_threads(work, min(kernel_threads(), len(starts)))


# ---------------------------------------------------------------------------------------------
# r*(u, i) = theta_u . v_i + q_i - strength * S_u,genre(i), for (users x items) blocks. The BLAS
# product theta . v is finished in place, row by row, with the same float64 operations in the
# same order as the reference ((dot + q) - strength * S): bit for bit the same values, without the
# reference's strided Fortran-order gather S[:, genre] and its two full-size temporaries.
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def finish_true_reward_rows(r, quality, genre, satiation, strength, lo, hi):  # pragma: no cover - compiled
    """r[b, i] = (r[b, i] + quality[i]) - strength * satiation[b, genre[i]] (:func:`_finish_r`) for rows
    lo .. hi - 1, in place (r holds theta . v); also called row by row by truth/kernels.py."""
    n = r.shape[1]
    for b in range(lo, hi):
        for i in range(n):
            r[b, i] = _finish_r(r[b, i], quality[i], strength, satiation[b, genre[i]])


def true_reward_product(
    theta: np.ndarray,
    satiation: np.ndarray,
    vectors: np.ndarray,
    quality: np.ndarray,
    genre: np.ndarray,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """theta . v_i into ``out`` ((B, I) float64, C-contiguous; allocated when None), and the
    contiguous satiation, quality and genre arrays that :func:`finish_true_reward_rows` reads:
    (r, satiation, quality, genre). Finishing r row by row then gives r*."""
    theta = np.ascontiguousarray(theta, np.float64)
    B, n = len(theta), len(quality)
    if out is None:
        out = np.empty((B, n), np.float64)
    elif out.shape != (B, n) or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float64 array of shape {(B, n)}, got {out.shape} {out.dtype}")
    np.matmul(theta, np.asarray(vectors, np.float64).T, out=out)
    return (
        out, np.ascontiguousarray(satiation, np.float64), np.ascontiguousarray(quality, np.float64),
        np.ascontiguousarray(genre, np.int64),
    )


def true_reward_rows(
    theta: np.ndarray,
    satiation: np.ndarray,
    vectors: np.ndarray,
    quality: np.ndarray,
    genre: np.ndarray,
    strength: float,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """r*[b, i] = theta_b . v_i + q_i - strength * satiation[b, genre_i]: (B, I) float64, C order.

    One BLAS product finished in place row by row; bit for bit :func:`true_reward_rows_ref` (for
    the same rows in one call: BLAS may round theta . v differently for another number of rows).
    ``out`` ((B, I) float64, C-contiguous) reuses a buffer, e.g. one per chunk of users.
    """
    r, sat, q, g = true_reward_product(theta, satiation, vectors, quality, genre, out)
    run_row_blocks(lambda lo, hi: finish_true_reward_rows(r, q, g, sat, float(strength), lo, hi), len(r), r.shape[1])
    return r


def true_reward_rows_ref(
    theta: np.ndarray,
    satiation: np.ndarray,
    vectors: np.ndarray,
    quality: np.ndarray,
    genre: np.ndarray,
    strength: float,
) -> np.ndarray:
    """Plain-numpy reference of :func:`true_reward_rows` (dense, one matmul)."""
    return finish_r_ref(theta @ vectors.T, quality[None, :], strength, satiation[:, genre])


# ---------------------------------------------------------------------------------------------
# r*(u, i) for (row, item) pairs, one item per row (the OPE's logged actions): theta . v summed
# as the choice kernel sums it, so the r* of a shown item comes out as the logs hold it.
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def true_reward_pairs_rows(theta, satiation, vectors, quality, genre, strength, items, lo, hi, out):  # pragma: no cover
    """out[b] = r*(b, items[b]) for rows lo .. hi - 1, theta . v summed in the order j = 0 .. d - 1."""
    d = theta.shape[1]
    for b in range(lo, hi):
        i = items[b]
        acc = 0.0
        for j in range(d):
            acc = acc + theta[b, j] * vectors[i, j]
        out[b] = _finish_r(acc, quality[i], strength, satiation[b, genre[i]])


def true_reward_pairs(
    theta_rows: np.ndarray,
    satiation_rows: np.ndarray,
    vectors: np.ndarray,
    quality: np.ndarray,
    genre: np.ndarray,
    strength: float,
    items: np.ndarray,
) -> np.ndarray:
    """r*(b, items[b]) for B rows, one item each: (B,) float64.

    theta_rows (B, d) and satiation_rows (B, G) are the rows' users' (at the rows' rounds);
    vectors (I, d), quality (I,), genre (I,) the catalogue's, indexed by ``items`` (B,). theta . v
    is summed in the order j = 0 .. d - 1, as :func:`choose` sums it, so r* of a shown item is bit
    for bit the choice kernel's (and :func:`true_reward_pairs_ref`'s); no (B, d) gather of vectors.
    """
    theta = np.ascontiguousarray(theta_rows, np.float64)
    sat = np.ascontiguousarray(satiation_rows, np.float64)
    items = np.ascontiguousarray(items, np.int64)
    B = len(items)
    if theta.shape[0] != B or sat.shape[0] != B:
        raise ValueError(f"true_reward_pairs: {B} items for {theta.shape[0]} theta rows and {sat.shape[0]} satiation rows")
    out = np.empty(B, np.float64)
    if B == 0:
        return out
    if items.min() < 0 or items.max() >= len(quality):
        raise ValueError(f"true_reward_pairs: items must be in [0, {len(quality)})")
    v = np.ascontiguousarray(vectors, np.float64)
    q = np.ascontiguousarray(quality, np.float64)
    g = np.ascontiguousarray(genre, np.int64)
    s = float(strength)
    run_row_blocks(lambda lo, hi: true_reward_pairs_rows(theta, sat, v, q, g, s, items, lo, hi, out), B, theta.shape[1])
    return out


def true_reward_pairs_ref(
    theta_rows: np.ndarray,
    satiation_rows: np.ndarray,
    vectors: np.ndarray,
    quality: np.ndarray,
    genre: np.ndarray,
    strength: float,
    items: np.ndarray,
) -> np.ndarray:
    """Plain-numpy reference of :func:`true_reward_pairs` (the same sums in the same order)."""
    items = np.asarray(items, np.int64)
    vecs = vectors[items]
    dot = np.zeros(len(items))
    for j in range(theta_rows.shape[1]):  # sequential over d, as in the kernel, so sums agree exactly
        dot = dot + theta_rows[:, j] * vecs[:, j]
    return finish_r_ref(dot, quality[items], strength, satiation_rows[np.arange(len(items)), genre[items]])


# ---------------------------------------------------------------------------------------------
# Satiation: S <- decay * S, then S[u, genre(i)] += 1 for each click (u, i) of the round, in order
# (the order np.add.at adds in, so a user's repeated genre in one round adds up the same way).
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def satiation_step(S: np.ndarray, users: np.ndarray, genres: np.ndarray, decay: float) -> None:  # pragma: no cover
    """One round of satiation in place: S (N, G) *= decay, then S[users[k], genres[k]] += 1 for k in order."""
    for u in range(S.shape[0]):
        for g in range(S.shape[1]):
            S[u, g] = S[u, g] * decay
    for k in range(users.shape[0]):
        S[users[k], genres[k]] += 1.0


def satiation_step_ref(S: np.ndarray, users: np.ndarray, genres: np.ndarray, decay: float) -> None:
    """Plain-numpy reference of :func:`satiation_step` (in place)."""
    S *= decay
    np.add.at(S, (users, genres), 1.0)


@numba.njit(cache=True, nogil=True)
def _replay_satiation(S, click_users, click_genres, click_bounds, at_users, at_order, at_bounds, decay, out):  # pragma: no cover
    n_rounds = len(click_bounds) - 1
    for t in range(n_rounds + 1):
        for m in range(at_bounds[t], at_bounds[t + 1]):
            r = at_order[m]
            for g in range(S.shape[1]):
                out[r, g] = S[at_users[r], g]
        if t < n_rounds:
            c0, c1 = click_bounds[t], click_bounds[t + 1]
            satiation_step(S, click_users[c0:c1], click_genres[c0:c1], decay)


def _replay_inputs(n_users, n_genres, n_rounds, click_users, click_genres, click_rounds, at_users, at_rounds):
    cu, cg, ct = (np.asarray(a, np.int64).ravel() for a in (click_users, click_genres, click_rounds))
    au, at = (np.asarray(a, np.int64).ravel() for a in (at_users, at_rounds))
    if not (len(cu) == len(cg) == len(ct)) or len(au) != len(at):
        raise ValueError("replay_satiation: click_users/click_genres/click_rounds and at_users/at_rounds must match in length")
    for name, a, hi in (("click_users", cu, n_users), ("click_genres", cg, n_genres), ("click_rounds", ct, n_rounds),
                        ("at_users", au, n_users), ("at_rounds", at, n_rounds + 1)):
        if len(a) and (a.min() < 0 or a.max() >= hi):
            raise ValueError(f"replay_satiation: {name} must be in [0, {hi})")
    return cu, cg, ct, au, at


def replay_satiation(
    n_users: int,
    n_genres: int,
    decay: float,
    n_rounds: int,
    click_users: np.ndarray,
    click_genres: np.ndarray,
    click_rounds: np.ndarray,
    at_users: np.ndarray,
    at_rounds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Replay the world's satiation from its clicks: (S at the start of each requested (user, round),
    (n, G); S at the end of round n_rounds - 1, (N, G)).

    S(0) = 0 and round t ends with :func:`satiation_step` on the clicks of round t (click_users,
    click_genres, click_rounds: one entry per click, genre of the clicked item; within a round in
    the order given, as the world adds them), exactly as ``World.advance`` moves it: the same
    floats, bit for bit. ``at_users``/``at_rounds`` (n,) ask for S[u] at the start of round t
    (t = n_rounds gives the final state). Rounds outside [0, n_rounds) for clicks, [0, n_rounds]
    for requests, raise ValueError. One compiled pass over the rounds; no Python loop per round.
    """
    cu, cg, ct, au, at = _replay_inputs(n_users, n_genres, n_rounds, click_users, click_genres, click_rounds,
                                        at_users, at_rounds)
    corder = np.argsort(ct, kind="stable")  # stable: a round's clicks keep their order
    click_bounds = np.searchsorted(ct[corder], np.arange(n_rounds + 1)).astype(np.int64)
    at_order = np.argsort(at, kind="stable").astype(np.int64)
    at_bounds = np.searchsorted(at[at_order], np.arange(n_rounds + 2)).astype(np.int64)
    S = np.zeros((int(n_users), int(n_genres)))
    out = np.empty((len(au), int(n_genres)))
    _replay_satiation(S, cu[corder], cg[corder], click_bounds, au, at_order, at_bounds, float(decay), out)
    return out, S


def replay_satiation_ref(
    n_users: int,
    n_genres: int,
    decay: float,
    n_rounds: int,
    click_users: np.ndarray,
    click_genres: np.ndarray,
    click_rounds: np.ndarray,
    at_users: np.ndarray,
    at_rounds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Plain-numpy reference of :func:`replay_satiation` (one numpy step per round)."""
    cu, cg, ct, au, at = _replay_inputs(n_users, n_genres, n_rounds, click_users, click_genres, click_rounds,
                                        at_users, at_rounds)
    S = np.zeros((int(n_users), int(n_genres)))
    out = np.empty((len(au), int(n_genres)))
    for t in range(n_rounds + 1):
        ask = at == t
        out[ask] = S[au[ask]]
        if t < n_rounds:
            c = ct == t
            satiation_step_ref(S, cu[c], cg[c], decay)
    return out, S
