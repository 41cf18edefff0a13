"""The trend-driven logging policy: what produced the logs, with exact (sealed) propensities.

    pi_0(i | u, t) = (1 - eps) * softmax_i(z_ui(t) / T) + eps / n_items
    z_ui(t)        = relevance_weight * (theta~_u . v_i + q~_i) + trend_weight * trend_i(t)

theta~ and q~ are a stale, noisy estimate of the users' preferences and the items' quality (as a
production model trained long ago would have): theta~_u = theta_u + relevance_noise * noise, drawn
once from the logging stream. Slates are drawn without replacement (Plackett-Luce).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numba
import numpy as np

from ..seeding import SeedTree
from ..world import kernels
from ..world.config import LoggingConfig
from ..world.world import World


WEIGHT_FLOOR = np.float32(-80.0)
"""Shifted logits are floored here so that no weight underflows to zero in float32."""

SAMPLE_BLOCK_BYTES = 4 * 2**20
"""Size of the (block, n_items) float32 weight buffer inside :meth:`TrendLogger.sample` (about
1,000 users at 1,000 items, 100 at 10,000): small enough to stay in cache between the logits
kernel, numpy's exp and the sampler, large enough that handing blocks to threads costs little."""


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

    def weights(self, users: np.ndarray, trend: np.ndarray, reference: bool = False) -> np.ndarray:
        """Unnormalised softmax weights exp(z/T - max): (B, I) float32.

        Floored at exp(-80) so no weight underflows to zero in float32: every item keeps support.
        ``reference`` computes the logits with plain numpy instead (the same values, bit for bit).
        """
        rw, bias, inv_t = self._terms(trend)
        if reference:
            w = kernels.logger_logits_ref(
                self.theta_hat, users, self.vectors_t, rw, bias, inv_t, WEIGHT_FLOOR
            )
            np.exp(w, out=w)
            return w
        users = np.asarray(users)
        B, n = len(users), self.vectors_t.shape[1]
        out = np.empty((B, n), dtype=np.float32)
        block = self._block(B)
        starts = range(0, B, block)
        claim = itertools.count()

        def work() -> None:
            while (i := next(claim)) < len(starts):
                lo, hi = starts[i], min(starts[i] + block, B)
                kernels.logger_logits_rows(
                    self.theta_hat, users, self.vectors_t, rw, bias, inv_t, WEIGHT_FLOOR, out, lo, hi
                )
                np.exp(out[lo:hi], out=out[lo:hi])

        kernels.run_on_threads(work, min(numba.get_num_threads(), len(starts)))
        return out

    def _block(self, B: int) -> int:
        """Users per block of work: see SAMPLE_BLOCK_BYTES; at least one block per thread."""
        n = self.vectors_t.shape[1]
        return max(1, min(max(64, SAMPLE_BLOCK_BYTES // (4 * n)), -(-B // numba.get_num_threads())))

    def probabilities(self, users: np.ndarray, trend: np.ndarray) -> np.ndarray:
        """Exact pi_0(i | u) for users (B,): (B, I) float64, rows sum to one."""
        w = self.weights(users, trend).astype(np.float64)
        eps, n = self.cfg.epsilon, w.shape[1]
        return (1.0 - eps) * w / w.sum(axis=1, keepdims=True) + eps / n

    def sample(
        self, users: np.ndarray, trend: np.ndarray, uniforms: np.ndarray, reference: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slates (B, K) with PL propensities and single-draw probabilities (see kernels).

        The Numba path works through the users in blocks (see :data:`SAMPLE_BLOCK_BYTES`) on
        ``numba.get_num_threads()`` threads; every row is computed on its own, so the result does
        not depend on the block size or the number of threads.
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
        if B == 0:
            return slates, prop, p_item
        rw, bias, inv_t = self._terms(trend)
        ramp = kernels.cdf_ramp(eps, n)
        block = self._block(B)
        starts = range(0, B, block)
        claim = itertools.count()  # blocks are handed out one at a time: a slow thread holds few

        def work() -> None:
            buf = np.empty((min(block, B), n), dtype=np.float32)
            cdf = np.empty(n, dtype=np.float64)
            while (i := next(claim)) < len(starts):
                lo = starts[i]
                hi = min(lo + block, B)
                w = buf[: hi - lo]
                kernels.logger_logits_rows(
                    self.theta_hat, users[lo:hi], self.vectors_t, rw, bias, inv_t, WEIGHT_FLOOR, w, 0, hi - lo
                )
                np.exp(w, out=w)
                kernels.sample_slates_rows(
                    w, eps, uniforms[lo:hi], ramp, cdf, 0, hi - lo, slates[lo:hi], prop[lo:hi], p_item[lo:hi]
                )

        kernels.run_on_threads(work, min(numba.get_num_threads(), len(starts)))
        return slates, prop, p_item

