"""The batched per-step work of the simulator, as Numba kernels with plain-numpy references.

Each kernel takes its random numbers as arguments (drawn by the caller from a named stream), so
the Numba kernel and its numpy reference consume exactly the same randomness and must return the
same result; ``tests/test_kernels.py`` holds them equal with hypothesis.

Why the work is split this way: the dot products and ``exp`` over the catalogue are done by numpy
(BLAS and vectorised exp beat a scalar exp inside a loop), and the kernels do what numpy cannot do
without materialising large temporaries: a cumulative sum per user, inverse-CDF sampling of a slate
without replacement (K uniforms per user, no Gumbel noise over the whole catalogue), the slate
choice and the feedback.
"""

from __future__ import annotations

import numba
import numpy as np

# ---------------------------------------------------------------------------------------------
# Slate sampling: Plackett-Luce (sampling without replacement) from
#   p_i = (1 - eps) * w_i / sum(w) + eps / n_items
# Each position uses one uniform u: the target t = u * (mass not yet chosen) is mapped back onto
# the full CDF by skipping the mass of already-chosen items, in ascending item order.
# ---------------------------------------------------------------------------------------------


RECOMPUTE_BELOW = 1e-6


@numba.njit(cache=True, inline="always")
def _cdf_at(cum: np.ndarray, i: int, total: float, eps: float, n: int) -> float:
    return (1.0 - eps) * cum[i] / total + eps * (i + 1) / n


@numba.njit(cache=True, inline="always")
def _search(cum: np.ndarray, t: float, total: float, eps: float, n: int) -> int:
    """First index x with cdf(x) > t (n if none)."""
    lo = 0
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        if _cdf_at(cum, mid, total, eps, n) <= t:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, parallel=True)
def sample_slates(
    weights: np.ndarray, eps: float, uniforms: np.ndarray, cum: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one slate per row of ``weights`` (B, n) without replacement.

    uniforms: (B, K) in [0, 1); cum: (B, n) float64 scratch for the cumulative sums.
    Returns (slates (B, K) int32, propensity (B, K) = P(item at k | items before k),
    p_item (B, K) = p_i, the item's single-draw probability under the logger).
    """
    B, n = weights.shape
    K = uniforms.shape[1]
    slates = np.empty((B, K), dtype=np.int32)
    prop = np.empty((B, K), dtype=np.float64)
    p_item = np.empty((B, K), dtype=np.float64)
    for b in numba.prange(B):
        c = cum[b]
        acc = 0.0
        for i in range(n):
            acc += weights[b, i]
            c[i] = acc
        total = acc
        chosen = np.empty(K, dtype=np.int64)  # ascending order of item index
        remaining = 1.0
        for k in range(K):
            t = uniforms[b, k] * remaining
            x = _search(c, t, total, eps, n)
            for j in range(k):
                item = chosen[j]
                if item <= x:
                    pj = (1.0 - eps) * weights[b, item] / total + eps / n
                    t += pj
                    x = _search(c, t, total, eps, n)
                else:
                    break
            x = _fix_rounding(x, chosen, k, n)
            px = (1.0 - eps) * weights[b, x] / total + eps / n
            slates[b, k] = x
            prop[b, k] = px / remaining
            p_item[b, k] = px
            remaining -= px
            # insert x into the sorted list of chosen items
            pos = k
            while pos > 0 and chosen[pos - 1] > x:
                chosen[pos] = chosen[pos - 1]
                pos -= 1
            chosen[pos] = x
            if remaining < RECOMPUTE_BELOW:
                # 1 - sum(chosen) cancels catastrophically when the slate has taken almost all
                # the mass; sum what is left instead (rare: only when K is close to the support)
                remaining = 0.0
                j = 0
                for i in range(n):
                    if j <= k and chosen[j] == i:
                        j += 1
                    else:
                        remaining += (1.0 - eps) * weights[b, i] / total + eps / n
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
# Slate choice and feedback.
#   r*_k   = theta_u . v_{i_k} + q_{i_k} - satiation_strength * S_{u, genre(i_k)}
#   util_k = reward_weight * r*_k + trend_pull * s_u * trend_{i_k} + hype_pull * h_{i_k}
#            - position_bias * log2(1 + k)
#   P(k) = exp(util_k) / (exp(u_0) + sum_j exp(util_j)),  P(no click) = exp(u_0) / (...)
#   rating = clip(floor(center + scale * r*_c + sigma * z + 1/2), 1, 5), flipped to 6 - rating
#            with probability flip_rate.
# params = [reward_weight, trend_pull, hype_pull, no_click_utility, satiation_strength,
#           rating_center, rating_scale, noise_std, flip_rate]
# position_penalty[k] = position_bias * log2(1 + k), computed once by the caller.
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, parallel=True)
def choose_and_rate(
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
    z_noise: np.ndarray,
    u_flip: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Users choose from their slates (B, K) and rate what they chose.

    theta (B, d), susceptibility (B,), satiation (B, n_genres) are the rows of the users in the batch.
    Returns (choice (B,) int32: slate position or -1 for no click, rating (B,) float32: NaN when no
    click, true_reward (B, K) float64 of every shown item, choice_prob (B,) of what happened).
    """
    B, K = slates.shape
    d = theta.shape[1]
    reward_w, trend_pull, hype_pull, u0 = params[0], params[1], params[2], params[3]
    sat_s, center, scale, sigma, flip = params[4], params[5], params[6], params[7], params[8]
    choice = np.empty(B, dtype=np.int32)
    rating = np.empty(B, dtype=np.float32)
    rstar = np.empty((B, K), dtype=np.float64)
    cprob = np.empty(B, dtype=np.float64)
    for b in numba.prange(B):
        util = np.empty(K + 1, dtype=np.float64)
        for k in range(K):
            i = slates[b, k]
            acc = 0.0
            for j in range(d):
                acc = acc + theta[b, j] * item_vecs[i, j]
            r = acc + quality[i] - sat_s * satiation[b, genre[i]]
            rstar[b, k] = r
            util[k] = (
                reward_w * r
                + trend_pull * susceptibility[b] * trend[i]
                + hype_pull * hype[i]
                - position_penalty[k]
            )
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
        if c == K:
            choice[b] = -1
            rating[b] = np.nan
        else:
            choice[b] = c
            x = np.floor(center + scale * rstar[b, c] + sigma * z_noise[b] + 0.5)
            x = min(max(x, 1.0), 5.0)
            if u_flip[b] < flip:
                x = 6.0 - x
            rating[b] = x
    return choice, rating, rstar, cprob


def choose_and_rate_ref(
    slates, theta, susceptibility, satiation, item_vecs, quality, hype, genre, trend, params,
    position_penalty, u_choice, z_noise, u_flip,
):
    """Plain-numpy reference of :func:`choose_and_rate`, vectorised over users and slots."""
    B, K = slates.shape
    reward_w, trend_pull, hype_pull, u0, sat_s, center, scale, sigma, flip = params
    vecs = item_vecs[slates]  # (B, K, d)
    dot = np.zeros((B, K))
    for j in range(theta.shape[1]):  # sequential over d, as in the kernel, so sums agree exactly
        dot = dot + theta[:, None, j] * vecs[:, :, j]
    rows = np.arange(B)[:, None]
    rstar = dot + quality[slates] - sat_s * satiation[rows, genre[slates]]
    util = (
        reward_w * rstar
        + trend_pull * susceptibility[:, None] * trend[slates]
        + hype_pull * hype[slates]
        - position_penalty[None, :K]
    )
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
    clicked = c < K
    safe_c = np.where(clicked, c, 0)
    x = np.floor(center + scale * rstar[np.arange(B), safe_c] + sigma * z_noise + 0.5)
    x = np.clip(x, 1.0, 5.0)
    x = np.where(u_flip < flip, 6.0 - x, x)
    rating = np.where(clicked, x, np.nan).astype(np.float32)
    choice = np.where(clicked, c, -1).astype(np.int32)
    return choice, rating, rstar, cprob
