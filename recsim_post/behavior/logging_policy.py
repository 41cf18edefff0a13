"""The trend-driven logging policy: what produced the logs, with exact (sealed) propensities.

    pi_0(i | u, t) = (1 - eps) * softmax_i(z_ui(t) / T) + eps / n_items
    z_ui(t)        = relevance_weight * (theta~_u . v_i + q~_i) + trend_weight * trend_i(t)

theta~ and q~ are a stale, noisy estimate of the users' preferences and the items' quality (as a
production model trained long ago would have): theta~_u = theta_u + relevance_noise * noise, drawn
once from the logging stream. Slates are drawn without replacement (Plackett-Luce).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..seeding import SeedTree
from ..world import kernels
from ..world.config import LoggingConfig
from ..world.world import World


@dataclass
class TrendLogger:
    """Softmax over a stale relevance estimate plus a trend term, with temperature and eps-mixing."""

    cfg: LoggingConfig
    theta_hat: np.ndarray  # (N, d) the logger's estimate of user preferences
    quality_hat: np.ndarray  # (I,) the logger's estimate of item quality
    vectors: np.ndarray  # (I, d) float32 copy of item vectors, for a fast matmul

    @classmethod
    def create(cls, cfg: LoggingConfig, world: World, seed: SeedTree) -> "TrendLogger":
        rng = seed.generator("estimate")
        d = world.catalog.vectors.shape[1]
        theta = world.users.theta
        theta_hat = theta + cfg.relevance_noise * rng.standard_normal(theta.shape) / np.sqrt(d)
        q = world.catalog.quality
        quality_hat = q + cfg.relevance_noise * rng.standard_normal(q.shape) * max(q.std(), 1e-12)
        return cls(cfg, theta_hat, quality_hat, world.catalog.vectors.astype(np.float32))

    def logits(self, users: np.ndarray, trend: np.ndarray) -> np.ndarray:
        """z / T for users (B,) over the whole catalogue: (B, I) float32."""
        c = self.cfg
        bias = (c.relevance_weight * self.quality_hat + c.trend_weight * trend).astype(np.float32)
        z = self.theta_hat[users].astype(np.float32) @ self.vectors.T
        z *= np.float32(c.relevance_weight)
        z += bias[None, :]
        z *= np.float32(1.0 / c.temperature)
        return z

    def weights(self, users: np.ndarray, trend: np.ndarray) -> np.ndarray:
        """Unnormalised softmax weights exp(z/T - max): (B, I) float32, computed in place."""
        w = self.logits(users, trend)
        w -= w.max(axis=1, keepdims=True)
        # floor at exp(-80) so no weight underflows to zero in float32: every item keeps support
        np.maximum(w, np.float32(-80.0), out=w)
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
        """Slates (B, K) with PL propensities and single-draw probabilities (see kernels)."""
        w = self.weights(users, trend)
        if reference:
            return kernels.sample_slates_ref(w, self.cfg.epsilon, uniforms)
        cum = np.empty(w.shape, dtype=np.float64)
        return kernels.sample_slates(w, self.cfg.epsilon, uniforms, cum)
