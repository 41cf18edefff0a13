r"""The exponential tilt of the logger and its two noisy-reward guarantees, computed exactly.

Source: Chidambaram, Krishnamurthy, Xu, Hsiao, Bhattacharya, "Robust Post-Training for Generative
Recommenders: Why Exponential Reward-Weighted SFT Outperforms RLHF", arXiv:2603.10279 (2026),
Theorems 4.3 and 4.4. Only the paper's abstract could be retrieved here (it claims a guarantee
"that scales only logarithmically with catalog size" and that "λ controls the robustness-improvement
tradeoff"); the statements below are the ones the issue gives, with their derivations written out,
not the paper's own wording.

Per context x (a user at the end of logging T), with the logger π_β(·|x), the true reward r*(x, a)
over the catalogue A and a noisy reward r̂ = r* + ξ, ξ_a ~ N(0, σ²) i.i.d.::

    π_λ(a|x)  ∝ π_β(a|x) exp(r̂(x, a) / λ)        (the noisy tilt: what reward-weighted SFT targets)
    π*_λ(a|x) ∝ π_β(a|x) exp(r*(x, a) / λ)       (the exact tilt, noiseless)
    V(π)      = Σ_a π(a|x) r*(x, a)
    ε         = σ √(2 log(2|A| / δ))

With probability ≥ 1 - δ over ξ (per context):

    (4.3)  V(π_λ) - V(π_β) ≥ -2ε
    (4.4)  V(π_λ) - V(π_β) ≥ -R_max (e^{2ε/λ} - 1)

Both hold *deterministically* on the event E = {max_a |ξ_a| ≤ ε}, and P(E) ≥ 1 - δ because
P(|ξ_a| > ε) ≤ 2 exp(-ε² / 2σ²) = δ / |A| (Gaussian tail) and a union bound over the |A| actions.
On E:

* (4.3): π_λ maximises E_π[r̂] - λ KL(π ‖ π_β), and π_β scores KL = 0, so
  E_{π_λ}[r̂] ≥ E_{π_β}[r̂]; then V(π_λ) = E_{π_λ}[r̂] - E_{π_λ}[ξ] ≥ E_{π_β}[r̂] - ε
  = V(π_β) + E_{π_β}[ξ] - ε ≥ V(π_β) - 2ε.
* (4.4): π_λ(a)/π*_λ(a) = e^{ξ_a/λ} Z*/Ẑ with Ẑ/Z* = E_{π*_λ}[e^{ξ/λ}] ∈ [e^{-ε/λ}, e^{ε/λ}], so the
  ratio lies in [e^{-2ε/λ}, e^{2ε/λ}] and |π_λ(a) - π*_λ(a)| ≤ (e^{2ε/λ} - 1) π*_λ(a). Hence
  |V(π_λ) - V(π*_λ)| ≤ (e^{2ε/λ} - 1) Σ_a π*_λ(a) |r*_a| ≤ (e^{2ε/λ} - 1) R_max, and the exact tilt
  never lowers the value: V(π*_λ) - V(π_β) = Cov_{π_β}(r*, e^{r*/λ}) / E_{π_β}[e^{r*/λ}] ≥ 0 (two
  increasing functions of one variable are non-negatively correlated).

R_max. We take ``R_max(x) = max_{a : π_β(a|x) > 0} |r*(x, a)|``, per context over the logger's support
(the whole catalogue when the logger mixes in ε-uniform exploration). The step that uses it bounds
Σ_a π*_λ(a) |r*_a|, a π*_λ-average of |r*|, and π*_λ lives on π_β's support, so the bound needs
exactly this: an *absolute* value (r* is negative for many items here, so max r* would not do: with
all r* < 0, max r* < 0 and the bound would claim an improvement it cannot guarantee), maximised
where π*_λ can put mass. Because Σ_a (π_λ - π*_λ)(a) = 0, r* may be shifted by any constant first;
the best shift, the midpoint of r*'s range, gives the tighter, shift-invariant variant
``R_half(x) = (max r* - min r*) / 2`` (:attr:`TiltBounds.bound2_centred`), reported alongside.

Everything is batched over contexts: arrays are (B, |A|) float64 and every reduction is per row.
Logits of -inf mark actions outside the logger's support (probability 0 under every tilt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ATOL = 1e-12
"""Float slack of the violation flags: a gap of -1e-17 against a bound of 0 (σ = 0 or λ = ∞) is rounding, not a violation."""


def bound_eps(sigma: float, n_actions: int, delta: float) -> float:
    """ε = σ √(2 log(2|A| / δ)): max_a |ξ_a| ≤ ε with probability ≥ 1 - δ for |A| i.i.d. N(0, σ²)."""
    if sigma < 0 or n_actions < 1 or not 0 < delta < 1:
        raise ValueError(f"need sigma >= 0, n_actions >= 1 and 0 < delta < 1, got {sigma}, {n_actions}, {delta}")
    return float(sigma) * math.sqrt(2.0 * math.log(2.0 * n_actions / delta))


def log_tilt(logits_beta: np.ndarray, reward: np.ndarray, lam: float) -> np.ndarray:
    """log π_λ(a|x) = log softmax(logits_β + reward / λ) per row: (B, A) float64.

    Stable for every λ in [0, ∞]: the reward is shifted by its row maximum over the support before
    dividing by λ, so the tilted logits are ≤ logits_β and the maximiser keeps a finite logit even
    when (r - max r)/λ underflows to -inf for the rest (λ → 0 is then the argmax of the reward,
    ties shared in proportion to π_β, the limit of the tilt). λ = ∞ adds exactly 0: π_λ = π_β.
    """
    if not lam >= 0:  # also refuses NaN
        raise ValueError(f"lambda must be >= 0 (inf allowed), got {lam}")
    logits_beta = np.asarray(logits_beta, np.float64)
    reward = np.asarray(reward, np.float64)
    support = np.isfinite(logits_beta)
    top = np.max(np.where(support, reward, -np.inf), axis=-1, keepdims=True)
    d = np.where(support, reward - top, 0.0)  # <= 0 on the support; 0 off it (logit -inf wins anyway)
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(d == 0.0, 0.0, d / lam) if lam != math.inf else np.zeros_like(d)  # 0/0 at λ = 0 is the max
    z = logits_beta + shift
    m = np.max(z, axis=-1, keepdims=True)  # finite: the reward's maximiser keeps its own logit
    return z - m - np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True))


def tilt(logits_beta: np.ndarray, rhat: np.ndarray, lam: float) -> np.ndarray:
    """π_λ(·|x) ∝ π_β(·|x) exp(r̂(x, ·)/λ) per row: (B, A) probabilities (see :func:`log_tilt`)."""
    return np.exp(log_tilt(logits_beta, rhat, lam))


def values(probs: np.ndarray, r_star: np.ndarray) -> np.ndarray:
    """V(π) = Σ_a π(a|x) r*(x, a) per row: (B,)."""
    return np.einsum("ba,ba->b", probs, r_star)


@dataclass(frozen=True)
class TiltBounds:
    """Per-context results of :func:`tilt_bounds`, each (B,) float64 (flags bool)."""

    gap: np.ndarray  # V(π_λ) - V(π_β): the noisy tilt against the logger
    exact_gap: np.ndarray  # V(π*_λ) - V(π_β): the noiseless tilt against the logger (>= 0)
    bound1: np.ndarray  # -2ε (Theorem 4.3)
    bound2: np.ndarray  # -R_max (e^{2ε/λ} - 1) (Theorem 4.4), R_max = max |r*| over the support
    bound2_centred: np.ndarray  # -R_half (e^{2ε/λ} - 1), R_half = (max r* - min r*)/2: tighter, still valid
    violates1: np.ndarray  # gap < bound1
    violates2: np.ndarray  # gap < bound2
    violates2_centred: np.ndarray  # gap < bound2_centred
    noise_exceeds: np.ndarray  # max_a |ξ_a| > ε: outside the event on which both bounds are certain
    r_max: np.ndarray  # R_max(x)

    @property
    def noise_cost(self) -> np.ndarray:
        """V(π*_λ) - V(π_λ): the value the noise costs the tilt."""
        return self.exact_gap - self.gap


def tilt_bounds(
    logits_beta: np.ndarray, r_star: np.ndarray, xi: np.ndarray, lam: float, eps: float,
    v_beta: np.ndarray | None = None, exact_value: np.ndarray | None = None,
) -> TiltBounds:
    """Both guarantees, checked exactly, for contexts (B,) over actions (A,).

    ``logits_beta`` (B, A): the logger's logits (softmax = π_β; -inf off its support); ``r_star``
    (B, A): the true reward; ``xi`` (B, A): the reward noise (r̂ = r* + ξ); ``eps``: ε of
    :func:`bound_eps`. ``v_beta`` and ``exact_value`` (V(π_β), V(π*_λ), (B,)) may be passed in when
    the caller reuses them across noise levels (they do not depend on ξ).
    """
    r_star = np.asarray(r_star, np.float64)
    xi = np.asarray(xi, np.float64)
    support = np.isfinite(logits_beta)
    if v_beta is None:
        v_beta = values(tilt(logits_beta, r_star, math.inf), r_star)
    if exact_value is None:
        exact_value = values(tilt(logits_beta, r_star, lam), r_star)
    v_noisy = values(tilt(logits_beta, r_star + xi, lam), r_star)
    gap = v_noisy - v_beta
    exact_gap = exact_value - v_beta
    r_max = np.max(np.where(support, np.abs(r_star), 0.0), axis=1)
    r_half = 0.5 * (np.max(np.where(support, r_star, -np.inf), axis=1) - np.min(np.where(support, r_star, np.inf), axis=1))
    with np.errstate(over="ignore"):  # e^{2ε/λ} may overflow to inf: the bound is then -inf, vacuous
        growth = np.expm1(2.0 * eps / lam) if lam > 0 else (math.inf if eps > 0 else 0.0)
    bound1 = np.full(len(gap), -2.0 * eps)
    with np.errstate(invalid="ignore"):  # 0 * inf when R_max = 0: no spread, no loss
        bound2 = np.where(r_max == 0, 0.0, -r_max * growth)
        bound2_centred = np.where(r_half == 0, 0.0, -r_half * growth)
    noise_max = np.max(np.where(support, np.abs(xi), 0.0), axis=1)
    return TiltBounds(
        gap, exact_gap, bound1, bound2, bound2_centred,
        gap < bound1 - ATOL, gap < bound2 - ATOL, gap < bound2_centred - ATOL,
        noise_max > eps, r_max,
    )
