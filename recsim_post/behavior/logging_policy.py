"""The trend-driven logging policy: what produced the logs, with exact (sealed) propensities.

    pi_0(i | u, t) = (1 - eps) * softmax_i(z_ui(t) / T) + eps / n_items
    z_ui(t)        = relevance_weight * (theta~_u . v_i + q~_i) + trend_weight * trend_i(t)

theta~ and q~ are a stale, noisy estimate of the users' preferences and the items' quality (as a
production model trained long ago would have): theta~_u = theta_u + relevance_noise * noise, drawn
once from the logging stream. Slates are drawn without replacement (Plackett-Luce).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ..seeding import SeedTree
from ..world import kernels
from ..world.config import LoggingConfig
from ..world.world import World


WEIGHT_FLOOR = np.float32(-80.0)
"""Shifted logits are floored here so that no weight underflows to zero in float32."""

SAMPLE_BLOCK_USERS = 1024
"""Users per kernel call inside :meth:`TrendLogger.sample`: a (block, n_items) float32 weight
buffer (4 MB at 1,000 items) stays in cache between the logits kernel, exp and the sampler."""


@dataclass
class TrendLogger:
    """Softmax over a stale relevance estimate plus a trend term, with temperature and eps-mixing."""

    cfg: LoggingConfig
    theta_hat: np.ndarray  # (N, d) the logger's estimate of user preferences
    quality_hat: np.ndarray  # (I,) the logger's estimate of item quality
    vectors: np.ndarray  # (I, d) float32 copy of item vectors

    def __post_init__(self) -> None:
        # (d, I) layout: the logits kernel streams one latent dimension across all items at a time
        self.vectors_t = np.ascontiguousarray(self.vectors.T, dtype=np.float32)

    @classmethod
    def create(cls, cfg: LoggingConfig, world: World, seed: SeedTree) -> "TrendLogger":
        rng = seed.generator("estimate")
        d = world.catalog.vectors.shape[1]
        theta = world.users.theta
        theta_hat = theta + cfg.relevance_noise * rng.standard_normal(theta.shape) / np.sqrt(d)
        q = world.catalog.quality
        quality_hat = q + cfg.relevance_noise * rng.standard_normal(q.shape) * max(q.std(), 1e-12)
        return cls(cfg, theta_hat, quality_hat, world.catalog.vectors.astype(np.float32))

    def _terms(self, trend: np.ndarray) -> tuple[np.float32, np.ndarray, np.float32]:
        c = self.cfg
        bias = (c.relevance_weight * self.quality_hat + c.trend_weight * trend).astype(np.float32)
        return np.float32(c.relevance_weight), bias, np.float32(1.0 / c.temperature)

    def logits(self, users: np.ndarray, trend: np.ndarray) -> np.ndarray:
        """z / T for users (B,) over the whole catalogue: (B, I) float32.

        theta~_u . v_i is summed in float32 in a fixed order over the latent dimensions (not by
        BLAS), so these are exactly the values the Numba kernel works with.
        """
        return kernels.logger_scores_ref(self.theta_hat, users, self.vectors_t, *self._terms(trend))

    def weights(
        self, users: np.ndarray, trend: np.ndarray, reference: bool = False, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Unnormalised softmax weights exp(z/T - max): (B, I) float32.

        Floored at exp(-80) so no weight underflows to zero in float32: every item keeps support.
        ``reference`` computes the logits with plain numpy (same values, bit for bit); ``out``
        is an optional (B, I) float32 buffer for the Numba path.
        """
        rw, bias, inv_t = self._terms(trend)
        if reference:
            w = kernels.logger_logits_ref(
                self.theta_hat, users, self.vectors_t, rw, bias, inv_t, WEIGHT_FLOOR
            )
        else:
            if out is None:
                out = np.empty((len(users), self.vectors_t.shape[1]), dtype=np.float32)
            w = kernels.logger_logits(
                self.theta_hat, np.asarray(users), self.vectors_t, rw, bias, inv_t, WEIGHT_FLOOR, out
            )
        np.exp(w, out=w)
        return w

    def probabilities(self, users: np.ndarray, trend: np.ndarray) -> np.ndarray:
        """Exact pi_0(i | u) for users (B,): (B, I) float64, rows sum to one."""
        w = self.weights(users, trend).astype(np.float64)
        eps, n = self.cfg.epsilon, w.shape[1]
        return (1.0 - eps) * w / w.sum(axis=1, keepdims=True) + eps / n

    def sample(
        self, users: np.ndarray, trend: np.ndarray, uniforms: np.ndarray, reference: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slates (B, K) with PL propensities and single-draw probabilities (see kernels).

        The Numba path works through the users in blocks of :data:`SAMPLE_BLOCK_USERS`; every
        row is computed independently, so the result does not depend on the block size.
        """
        eps = self.cfg.epsilon
        if reference:
            return kernels.sample_slates_ref(self.weights(users, trend, reference=True), eps, uniforms)
        users = np.asarray(users)
        B, K = uniforms.shape
        n = self.vectors_t.shape[1]
        slates = np.empty((B, K), dtype=np.int32)
        prop = np.empty((B, K), dtype=np.float64)
        p_item = np.empty((B, K), dtype=np.float64)
        buf = np.empty((min(B, SAMPLE_BLOCK_USERS), n), dtype=np.float32)
        cum = np.empty((numba.get_num_threads(), n), dtype=np.float64)
        for lo in range(0, B, SAMPLE_BLOCK_USERS):
            hi = min(lo + SAMPLE_BLOCK_USERS, B)
            w = self.weights(users[lo:hi], trend, out=buf[: hi - lo])
            slates[lo:hi], prop[lo:hi], p_item[lo:hi] = kernels.sample_slates(w, eps, uniforms[lo:hi], cum)
        return slates, prop, p_item
