r"""Dropping Z(x) in exp-RSFT: the two-context counter-example, in closed form and checked numerically.

Setting. Contexts x with probabilities P(x), actions y, a logger π_β(y|x) and a known reward
r(x, y). Exp-RSFT fits π by weighted maximum likelihood on logged pairs (x, y) ~ P(x) π_β(y|x)::

    L(π) = −Σ_x P(x) Σ_y π_β(y|x) w(x, y) log π(y|x)

    "none"    (Z dropped)       w(x, y) = exp(r(x, y)/λ)
    "context" (per-context Z)   w(x, y) = exp(r(x, y)/λ) / Z(x),   Z(x) = Σ_y π_β(y|x) exp(r(x, y)/λ)

Write π_λ(y|x) = π_β(y|x) exp(r(x, y)/λ) / Z(x) for the tilt (the solution of
max_π E_π[r] − λ KL(π ‖ π_β) in each context). Then
Σ_y π_β(y|x) w(x, y) log π(y|x) = c(x) Σ_y π_λ(y|x) log π(y|x) with c(x) = Z(x) ("none") or 1
("context"): the objective is a cross-entropy to the tilt, one per context, and the two variants
differ *only* in how the contexts are weighted against each other, P(x) Z(x) against P(x).

* Tabular class (a free π(·|x) per context): each context is minimised on its own, the factor c(x)
  does not matter, and both variants give π = π_λ exactly (:func:`tabular_fit`).
* Shared class (one distribution p(y) for every context, the extreme of parameter sharing): the
  minimiser of −Σ_x ρ(x) Σ_y π_λ(y|x) log p(y) is the mixture p = Σ_x ρ(x) π_λ(·|x) with
  ρ(x) ∝ P(x) Z(x) ("none") or ρ(x) = P(x) ("context") (:func:`shared_fit`). Dropping Z(x) hands
  each context a vote proportional to Z(x) = E_{π_β}[exp(r/λ) | x], i.e. exponential in its typical
  reward.

A constant shift r(x, ·) + b(x) leaves π_λ(·|x) unchanged (it cancels in the tilt) and multiplies
Z(x) by exp(b(x)/λ). So the per-context normalised fit is invariant to per-context reward shifts, and
the unnormalised fit is not: a user who rates everything one star higher (a per-user rating bias,
``feedback.user_bias_std``) gets e^{1/λ} times the say over the shared parameters.

The counter-example (:class:`TwoContext`, the issue's). Two contexts A, B with P(A) = α (= ½), two
actions; the logger plays (q, 1 − q) = (0.9, 0.1) in both; r(A, ·) = (1, 0), r(B, ·) = (c, c).
With E = e^{1/λ} and C = e^{c/λ}::

    Z(A) = q E + (1 − q),   Z(B) = C
    π_λ(1|A) = q E / Z(A)   (> q),     π_λ(1|B) = q   (B's rewards are constant: its tilt is the logger)

    shared, "context":  p_ctx  = α π_λ(1|A) + (1 − α) q                          (does not depend on c)
    shared, "none":     p_none = [α Z(A) π_λ(1|A) + (1 − α) C q] / [α Z(A) + (1 − α) C]
                               = q [α E + (1 − α) C] / [α Z(A) + (1 − α) C]

True value of a shared p (the rewards are exact): V(p) = α p + (1 − α) c; the best shared policy
plays action 1 always (V = α + (1 − α) c) and the regret of p is α (1 − p). Hence:

* p_none moves with c, a constant reward shift in a context where the action does not matter:
  p_none → π_λ(1|A) as c → −∞ (B's vote vanishes) and p_none → q as c → +∞ (the fit is the
  logger: A's preference is washed out).
* p_none = p_ctx exactly when Z(B) = Z(A), i.e. c = c* = λ log Z(A) = λ log(q e^{1/λ} + 1 − q):
  then the two contexts' factors are equal and cancel. Dropping Z hurts the true value
  (p_none < p_ctx) exactly when c > c*, and helps when c < c*: it is not the best shared policy
  that normalising buys (that is p = 1), but an answer that does not depend on each context's
  reward offset. With half the contexts uninformative, "context" gives the uninformative contexts
  their data share; "none" gives them e^{(c − c*)/λ} times more (or less).

At α = ½, q = 0.9, λ = 1, c = 0: E = e, Z(A) = 0.9e + 0.1 = 2.54645, π_λ(1|A) = 0.96073,
p_ctx = 0.93036, p_none = 0.9(e + 1)/(Z(A) + 1) = 0.94361 (c* = 0.93470 > 0, so dropping Z
helps here), and at c = 2: p_none = 0.9(e + e²)/(Z(A) + e²) = 0.91556 < p_ctx (it hurts).
At λ = 0.3 the swing is wider: p_none runs from 0.99605 (c = −2) to 0.90300 (c = 2), regret
0.0020 to 0.0485, while p_ctx = 0.94803 (regret 0.0260) throughout.

:func:`numeric_fit` minimises the same population objectives by L-BFGS over softmax logits in
float64 (torch), so the closed forms are checked against a solver that knows nothing of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Normalise = Literal["none", "context"]
NORMALISE: tuple[str, ...] = ("none", "context")
PolicyClass = Literal["shared", "tabular"]


def _check(p_x: np.ndarray, logger: np.ndarray, rewards: np.ndarray, lam: float, normalise: str) -> None:
    """One-line ValueErrors for a problem that is not a distribution over contexts / actions."""
    if normalise not in NORMALISE:
        raise ValueError(f"normalise = {normalise!r} is not allowed: must be one of 'none', 'context'")
    if not (lam > 0 and math.isfinite(lam)):
        raise ValueError(f"lam = {lam!r} is out of range: must be > 0 and finite")
    if p_x.ndim != 1 or logger.ndim != 2 or logger.shape != rewards.shape or logger.shape[0] != len(p_x):
        raise ValueError(
            f"shapes do not match: p_x {p_x.shape}, logger {logger.shape}, rewards {rewards.shape} "
            "(need (K,), (K, A), (K, A))"
        )
    if (p_x < 0).any() or not math.isclose(float(p_x.sum()), 1.0, abs_tol=1e-9):
        raise ValueError("p_x must be a probability vector (>= 0, summing to 1)")
    if (logger < 0).any() or not np.allclose(logger.sum(axis=1), 1.0, atol=1e-9):
        raise ValueError("every row of logger must be a probability vector (>= 0, summing to 1)")
    if not np.isfinite(rewards).all():
        raise ValueError("rewards must be finite")


def _arrays(p_x, logger, rewards) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: ANN001 - array-likes
    return (np.asarray(p_x, np.float64), np.atleast_2d(np.asarray(logger, np.float64)),
            np.atleast_2d(np.asarray(rewards, np.float64)))


def log_partition(logger: np.ndarray, rewards: np.ndarray, lam: float) -> np.ndarray:
    """log Z(x) = log Σ_y π_β(y|x) exp(r(x, y)/λ), per context ``(K,)``, in log space (no overflow)."""
    logger, rewards = np.atleast_2d(logger), np.atleast_2d(rewards)
    with np.errstate(divide="ignore"):  # log 0 = −inf: an action the logger never plays adds nothing
        a = np.log(logger) + rewards / lam
    top = a.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis=1, keepdims=True)))[:, 0]


def tilt(logger: np.ndarray, rewards: np.ndarray, lam: float) -> np.ndarray:
    """π_λ(y|x) = π_β(y|x) exp(r(x, y)/λ) / Z(x), ``(K, A)``."""
    logger, rewards = np.atleast_2d(logger), np.atleast_2d(rewards)
    with np.errstate(divide="ignore"):
        a = np.log(logger) + rewards / lam
    return np.exp(a - log_partition(logger, rewards, lam)[:, None])


def context_weights(p_x, logger, rewards, lam: float, normalise: Normalise) -> np.ndarray:  # noqa: ANN001
    """ρ(x), the share of the objective that context x holds: ∝ P(x) Z(x) ("none") or P(x) ("context")."""
    p_x, logger, rewards = _arrays(p_x, logger, rewards)
    _check(p_x, logger, rewards, lam, normalise)
    if normalise == "context":
        return p_x.copy()
    with np.errstate(divide="ignore"):
        a = np.log(p_x) + log_partition(logger, rewards, lam)
    return np.exp(a - a.max()) / np.exp(a - a.max()).sum()


def shared_fit(p_x, logger, rewards, lam: float, normalise: Normalise) -> np.ndarray:  # noqa: ANN001
    """The exact minimiser over one shared distribution p(y): Σ_x ρ(x) π_λ(·|x), ``(A,)``."""
    rho = context_weights(p_x, logger, rewards, lam, normalise)
    return rho @ tilt(np.atleast_2d(logger), np.atleast_2d(rewards), lam)


def tabular_fit(p_x, logger, rewards, lam: float, normalise: Normalise) -> np.ndarray:  # noqa: ANN001
    """The exact minimiser over a free π(·|x) per context: π_λ for either variant, ``(K, A)``."""
    p_x, logger, rewards = _arrays(p_x, logger, rewards)
    _check(p_x, logger, rewards, lam, normalise)
    return tilt(logger, rewards, lam)


def true_value(p_x, policy, rewards) -> float:  # noqa: ANN001
    """V(π) = Σ_x P(x) Σ_y π(y|x) r(x, y); ``policy`` is ``(A,)`` (shared) or ``(K, A)``."""
    p_x, rewards = np.asarray(p_x, np.float64), np.atleast_2d(np.asarray(rewards, np.float64))
    pi = np.broadcast_to(np.asarray(policy, np.float64), rewards.shape)
    return float(p_x @ (pi * rewards).sum(axis=1))


def numeric_fit(
    p_x, logger, rewards, lam: float, normalise: Normalise, policy: PolicyClass = "shared",  # noqa: ANN001
    max_iter: int = 500,
) -> tuple[np.ndarray, float]:
    """Minimise the population objective of the module docstring by L-BFGS over softmax logits.

    Returns (π, the gradient's max-norm at the end). ``policy = "shared"``: one logit vector for all
    contexts, π ``(A,)``; ``"tabular"``: one per context, π ``(K, A)``. The objective is divided by
    its total weight Σ_x P(x) Σ_y π_β(y|x) w(x, y), a positive constant that leaves the minimiser
    alone but keeps the curvature O(1) whatever λ and the rewards (the weights span e^{Δr/λ}).
    Float64, deterministic (no random start: logits begin at 0)."""
    p_x, logger, rewards = _arrays(p_x, logger, rewards)
    _check(p_x, logger, rewards, lam, normalise)
    with np.errstate(divide="ignore"):
        log_w = rewards / lam - (log_partition(logger, rewards, lam)[:, None] if normalise == "context" else 0.0)
        log_mass = np.log(p_x)[:, None] + np.log(logger) + log_w  # log of P(x) π_β(y|x) w(x, y)
    mass = torch.from_numpy(np.exp(log_mass - log_mass.max()))
    mass = mass / mass.sum()
    k, n_actions = logger.shape
    logits = torch.zeros((1 if policy == "shared" else k, n_actions), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([logits], lr=1.0, max_iter=max_iter, tolerance_grad=1e-13, tolerance_change=1e-16,
                            history_size=20, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        opt.zero_grad()
        loss = -(mass * torch.log_softmax(logits, dim=-1)).sum()  # (1, A) broadcasts over the K contexts
        loss.backward()
        return loss

    opt.step(objective)
    objective()
    grad = float(logits.grad.abs().max())
    pi = torch.softmax(logits.detach(), dim=-1).numpy()
    return (pi[0] if policy == "shared" else pi), grad


@dataclass(frozen=True)
class TwoContext:
    """The issue's counter-example: P(A) = alpha, logger (q, 1 − q) in both contexts, r(A, ·) =
    (1, 0), r(B, ·) = (c, c). Closed forms of the module docstring as functions of (λ, c)."""

    alpha: float = 0.5
    q: float = 0.9

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha = {self.alpha!r} is out of range: must be in (0, 1)")
        if not 0 < self.q < 1:
            raise ValueError(f"q = {self.q!r} is out of range: must be in (0, 1)")

    def problem(self, c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(P(x) (2,), π_β (2, 2), r (2, 2)) for the general functions of this module."""
        return (np.array([self.alpha, 1 - self.alpha]), np.array([[self.q, 1 - self.q]] * 2),
                np.array([[1.0, 0.0], [c, c]]))

    def z_a(self, lam: float) -> float:
        """Z(A) = q e^{1/λ} + 1 − q."""
        return self.q * math.exp(1 / lam) + 1 - self.q

    def tilt_a(self, lam: float) -> float:
        """π_λ(1|A) = q e^{1/λ} / Z(A) (written as 1 / (1 + (1 − q) e^{−1/λ} / q): no overflow at small λ)."""
        return 1.0 / (1.0 + (1 - self.q) * math.exp(-1 / lam) / self.q)

    def p_context(self, lam: float) -> float:
        """π(action 1) of the shared fit with per-context Z: α π_λ(1|A) + (1 − α) q. Free of c."""
        return self.alpha * self.tilt_a(lam) + (1 - self.alpha) * self.q

    def p_none(self, lam: float, c: float) -> float:
        """π(action 1) of the shared fit with Z dropped: the tilts mixed with weights ∝ P(x) Z(x).

        Computed as a logistic mix, s = log[(1 − α) Z(B)] − log[α Z(A)], so it is exact for any c/λ."""
        s = math.log1p(-self.alpha) + c / lam - (math.log(self.alpha) + math.log(self.z_a(lam)))
        share_b = 1.0 / (1.0 + math.exp(-s)) if s > -700 else 0.0  # = (1 − α) C / (α Z(A) + (1 − α) C)
        return (1 - share_b) * self.tilt_a(lam) + share_b * self.q

    def c_star(self, lam: float) -> float:
        """The shift at which both fits coincide: c* = λ log Z(A) (Z(B) = Z(A)); "none" is worse above it."""
        return lam * math.log(self.z_a(lam))

    def value(self, p: float, c: float) -> float:
        """True value of the shared policy (p, 1 − p): α p + (1 − α) c."""
        return self.alpha * p + (1 - self.alpha) * c

    def regret(self, p: float) -> float:
        """Best shared value (p = 1) minus the value of p: α (1 − p), whatever c."""
        return self.alpha * (1 - p)


def two_context_table(lams: tuple[float, ...] = (0.3, 1.0, 3.0), cs: tuple[float, ...] = (-2.0, 0.0, 1.0, 2.0, 5.0),
                      example: TwoContext = TwoContext()) -> "pd.DataFrame":  # noqa: F821 - pandas imported lazily
    """One row per (λ, c): both closed-form fits, their regrets and c* (for notes and the README)."""
    import pandas as pd  # here: the closed forms themselves need only numpy

    rows = []
    for lam in lams:
        for c in cs:
            p_n, p_c = example.p_none(lam, c), example.p_context(lam)
            rows.append({"lam": lam, "c": c, "c_star": example.c_star(lam), "p_none": p_n, "p_context": p_c,
                         "regret_none": example.regret(p_n), "regret_context": example.regret(p_c)})
    return pd.DataFrame(rows)


__all__ = [
    "NORMALISE", "Normalise", "PolicyClass", "TwoContext", "context_weights", "log_partition", "numeric_fit",
    "shared_fit", "tabular_fit", "tilt", "true_value", "two_context_table",
]
