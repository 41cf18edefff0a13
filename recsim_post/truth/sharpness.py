r"""Sharpness is not skill: entropy, KL to π_ref, greedy value and temperature-matched ground truth.

``true_value`` scores a policy that samples one item from its softmax at temperature 1, so a policy
that only becomes sharper scores higher without ranking any better. These statistics separate the
two, per user u with history h_u at T (π = softmax(z), z the policy's logits)::

    H(π)              = log Σ_i e^{z_i} − Σ_i π_i z_i                       entropy, nats
    KL(π ‖ π_ref)     = Σ_i π_i (z_i − z_ref,i) − lse(z) + lse(z_ref)        to the policy it was tuned from
    greedy            = r*(u, argmax_i z_i)                                   top-1 value (= top-k with k = 1)
    π_τ               = softmax(z / τ)                                        the same ranking, sharper (τ < 1)

Two temperatures a team could pick without the truth, each scored exactly by ground truth:

* matched entropy: the τ at which the policy's mean entropy equals π_ref's (so a post-trained
  policy is compared with its reference at equal spread); mean entropy rises monotonically with τ,
  so τ is found on a log-spaced grid (:data:`TAU_GRID`) and interpolated in log τ;
* held-out likelihood: the τ of the grid that maximises the log-likelihood of each user's held-out
  last click (temperature scaling, as a team calibrates a model on validation data).

Everything is per row and streams in chunks of users like the rest of the ground truth
(:func:`truth.ground_truth.exact_sums`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..policy import Context
from .kernels import tempered_softmax

TAU_GRID: np.ndarray = 2.0 ** np.linspace(-6.0, 6.0, 49)
"""Temperatures 1/64 … 64, four per octave: where matched entropy and the held-out likelihood look."""

TAU_ONE = 24
"""The index of τ = 1 in :data:`TAU_GRID` (exactly 2^0): the entropy profile's column is the policy's entropy."""


def _log_softmax(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log π, π) of the rows of ``z`` in float64; -inf logits get probability 0 (log π = -inf)."""
    z = np.asarray(z, np.float64)
    m = np.max(z, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", under="ignore"):
        s = z - m
        lse = np.log(np.exp(s).sum(axis=1, keepdims=True))
        logp = s - lse
        p = np.exp(logp)
    return logp, p


def entropy(logits: np.ndarray) -> np.ndarray:
    """Per row: H(softmax(logits)) in nats (0 for a point mass; -inf logits contribute nothing)."""
    logp, p = _log_softmax(logits)
    with np.errstate(invalid="ignore"):  # 0 · (-inf) where p = 0: masked by the where
        return -np.where(p > 0, p * logp, 0.0).sum(axis=1)


def kl(logits: np.ndarray, ref_logits: np.ndarray) -> np.ndarray:
    """Per row: KL(softmax(logits) ‖ softmax(ref_logits)) in nats (inf where π puts mass that π_ref
    does not)."""
    logp, p = _log_softmax(logits)
    logq, _ = _log_softmax(ref_logits)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (logp - logq), 0.0)
    return terms.sum(axis=1)


def entropy_profile(logits: np.ndarray, taus: np.ndarray = TAU_GRID) -> np.ndarray:
    """``(rows, len(taus))``: the entropy of softmax(logits / τ) per row and temperature (a Numba
    kernel, one pass over the row per τ: :func:`truth.kernels.tempered_softmax`)."""
    return tempered_softmax(logits, taus, entropy=True)[1]


def nll_profile(logits: np.ndarray, targets: np.ndarray, taus: np.ndarray = TAU_GRID) -> np.ndarray:
    """``(rows, len(taus))``: −log softmax(logits / τ)[target] per row and temperature."""
    z = np.asarray(logits)
    taus = np.asarray(taus, np.float64)
    lse, _ = tempered_softmax(z, taus, entropy=False)
    rows = np.arange(len(z))
    with np.errstate(invalid="ignore"):
        s = np.asarray(z[rows, targets], np.float64) - z.max(axis=1).astype(np.float64)
        return lse - s[:, None] / taus[None, :]


def matching_tau(mean_entropy: np.ndarray, target: float, taus: np.ndarray = TAU_GRID) -> float:
    """The τ at which ``mean_entropy`` (the mean entropy at each grid τ, nondecreasing) equals
    ``target``, by linear interpolation in log τ; clipped to the grid's ends (NaN if the target or
    the profile is not finite)."""
    h = np.asarray(mean_entropy, np.float64)
    if not (np.isfinite(target) and np.isfinite(h).all()):
        return float("nan")
    h = np.maximum.accumulate(h)  # floating-point wiggles at the flat ends must not break the search
    log_t = np.log(np.asarray(taus, np.float64))
    if target <= h[0]:
        return float(taus[0])
    if target >= h[-1]:
        return float(taus[-1])
    j = int(np.searchsorted(h, target))  # h[j-1] < target <= h[j]
    lo, hi = h[j - 1], h[j]
    w = 0.0 if hi == lo else (target - lo) / (hi - lo)
    return float(np.exp(log_t[j - 1] + w * (log_t[j] - log_t[j - 1])))


@dataclass(frozen=True)
class Tempered:
    """``policy`` at temperature ``tau``: logits / τ (the same ranking; τ < 1 sharper, τ > 1 flatter)."""

    policy: object
    tau: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"a temperature must be a positive finite number, got {self.tau}")

    @property
    def n_items(self) -> int:
        return int(self.policy.n_items)  # type: ignore[attr-defined]

    @property
    def max_len(self) -> int:
        return int(self.policy.max_len)  # type: ignore[attr-defined]

    def logits(self, hist: np.ndarray, context: Context | None = None) -> np.ndarray:
        z = np.asarray(self.policy.logits(hist, context), np.float64)  # type: ignore[attr-defined]
        return z / self.tau


__all__ = ["TAU_GRID", "TAU_ONE", "Tempered", "entropy", "entropy_profile", "kl", "matching_tau", "nll_profile"]
