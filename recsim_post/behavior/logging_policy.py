"""The trend-driven logging policy: what produced the logs, with exact (sealed) propensities.

    pi_0(i | u, t) = (1 - eps) * softmax_{i in S}(z_ui(t) / T) + eps / |S|   (i in S; 0 outside)
    z_ui(t)        = relevance_weight * (theta~_u . v_i + q~_i) + trend_weight * trend_i(t) + b_i(t)

S is the logger's support (all items unless ``support < 1``); b_i(t) is the external-suggestion
boost (:class:`Suggestions`); with switching on, one of K loggers (each its own trend_weight,
temperature T, eps and relevance_weight) acts in each round, on a schedule or by a random Markov
chain (:func:`logger_sequence`). See :class:`LoggingConfig`.

theta~ and q~ are a stale, noisy estimate of the users' preferences and the items' quality (as a
production model trained long ago would have): theta~_u = theta_u + relevance_noise * noise, drawn
once from the logging stream. Slates are drawn without replacement (Plackett-Luce).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ..seeding import SeedTree
from ..world import kernels
from ..world.config import LoggingConfig
from ..world.keyed import UserStreams
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
    support_idx: np.ndarray | None = None  # sorted ids of the items the logger can show (None = all)
    boost: np.ndarray | None = None  # (I,) external-suggestion boost b_i(t) of the current round
    active: int = 0  # which logger of the mixture acts in the current round (0 .. K-1)
    sequence: np.ndarray | None = None  # (n_rounds + 1,) active logger per round (random switching)

    def __post_init__(self) -> None:
        # (d, I) layout: the logits kernel streams one latent dimension across all items at a time.
        # With deficient support only the supported columns are kept: the kernels then work on S
        # alone (no zero weights ever reach the sampler) and item ids are mapped back afterwards.
        vt = self.vectors.T if self.support_idx is None else self.vectors.T[:, self.support_idx]
        self.vectors_t = np.ascontiguousarray(vt, dtype=np.float32)

    @property
    def n_items(self) -> int:
        return len(self.quality_hat)

    @property
    def epsilon(self) -> float:
        """eps of the active logger."""
        return self.cfg.logger_params(self.active)[2]

    def set_round(self, t: int, boost: np.ndarray | None) -> None:
        """Put the logger in its state of round t: the active parameterisation and the boost."""
        if self.sequence is not None:
            if not 0 <= t < len(self.sequence):
                raise ValueError(f"round {t} is outside the drawn logger sequence (rounds 0 .. {len(self.sequence) - 1})")
            self.active = int(self.sequence[t])
        else:
            self.active = self.cfg.active_logger(t)
        self.boost = boost

    @classmethod
    def create(cls, cfg: LoggingConfig, world: World, seed: SeedTree) -> "TrendLogger":
        rng = seed.generator("estimate")
        d = world.catalog.vectors.shape[1]
        theta = world.users.theta
        theta_hat = theta + cfg.relevance_noise * rng.standard_normal(theta.shape) / np.sqrt(d)
        q = world.catalog.quality
        quality_hat = q + cfg.relevance_noise * rng.standard_normal(q.shape) * max(q.std(), 1e-12)
        support_idx = None
        n_sup = cfg.n_supported(len(q))
        if n_sup < len(q):  # a new stream: drawing it leaves every other stream unchanged
            support_idx = np.sort(seed.generator("support").choice(len(q), n_sup, replace=False))
        sequence = None
        if cfg.switching == "random":
            sequence = logger_sequence(cfg, world.cfg.simulation.n_rounds, seed)
        return cls(cfg, theta_hat, quality_hat, world.catalog.vectors.astype(np.float32), support_idx,
                   sequence=sequence)

    def _terms(self, trend: np.ndarray) -> tuple[np.float32, np.ndarray, np.float32]:
        tw, temp, _, rw = self.cfg.logger_params(self.active)
        z = rw * self.quality_hat + tw * trend
        if self.boost is not None:
            z = z + self.boost
        if self.support_idx is not None:
            z = z[self.support_idx]
        return np.float32(rw), z.astype(np.float32), np.float32(1.0 / temp)

    def _to_items(self, slates: np.ndarray) -> np.ndarray:
        """Map slates over the supported columns back to item ids."""
        if self.support_idx is None:
            return slates
        return self.support_idx[slates].astype(np.int32)

    def logits(self, users: np.ndarray, trend: np.ndarray) -> np.ndarray:
        """z / T for users (B,) over the supported items (the whole catalogue by default): (B, |S|).

        theta~_u . v_i is summed in float32 in a fixed order over the latent dimensions (not by
        BLAS), so these are exactly the values the Numba kernel works with.
        """
        return kernels.logger_scores_ref(self.theta_hat, users, self.vectors_t, *self._terms(trend))

    def weights(self, users: np.ndarray, trend: np.ndarray, reference: bool = False) -> np.ndarray:
        """Unnormalised softmax weights exp(z/T - max) over the supported items: (B, |S|) float32.

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

        kernels.run_on_threads(work, min(kernels.kernel_threads(), len(starts)))
        return out

    def _block(self, B: int) -> int:
        """Users per block of work: see SAMPLE_BLOCK_BYTES; at least one block per thread."""
        n = self.vectors_t.shape[1]
        return max(1, min(max(64, SAMPLE_BLOCK_BYTES // (4 * n)), -(-B // kernels.kernel_threads())))

    def probabilities(self, users: np.ndarray, trend: np.ndarray) -> np.ndarray:
        """Exact pi_0(i | u) for users (B,): (B, I) float64, rows sum to one, 0 outside the support."""
        w = self.weights(users, trend).astype(np.float64)
        eps, n = self.epsilon, w.shape[1]
        p = (1.0 - eps) * w / w.sum(axis=1, keepdims=True) + eps / n
        if self.support_idx is None:
            return p
        full = np.zeros((p.shape[0], self.n_items))
        full[:, self.support_idx] = p
        return full

    def sample(
        self, users: np.ndarray, trend: np.ndarray, uniforms: np.ndarray, reference: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slates (B, K) with PL propensities and single-draw probabilities (see kernels).

        The Numba path works through the users in blocks (see :data:`SAMPLE_BLOCK_BYTES`) on
        ``kernels.kernel_threads()`` threads; every row is computed on its own, so the result does
        not depend on the block size or the number of threads.
        """
        eps = self.epsilon
        if reference:
            slates, prop, p_item = kernels.sample_slates_ref(self.weights(users, trend, reference=True), eps, uniforms)
            return self._to_items(slates), prop, p_item
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

        kernels.run_on_threads(work, min(kernels.kernel_threads(), len(starts)))
        return self._to_items(slates), prop, p_item


def logger_sequence(cfg: LoggingConfig, n_rounds: int, seed: SeedTree) -> np.ndarray:
    """The active logger in rounds 0 .. n_rounds (the last entry is the state at T): (n_rounds + 1,) int8.

    off: all 0.  schedule: a_t = (t // switch_every) % K.  random: a Markov chain with a_0 = 0 and,
    for t >= 1, with (u_t, w_t) two uniforms of stream ``seed/switching`` (seed is the logging node):
        a_t = a_{t-1}                          if u_t >= switch_prob
        a_t = j + [j >= a_{t-1}], j = floor(w_t * (K - 1))   otherwise (uniform over the K - 1 others)
    The uniforms are drawn as one (n_rounds, 2) block, so the first rounds of the sequence do not
    depend on n_rounds, and the stream is only drawn in random mode (no other stream moves).
    """
    K = cfg.n_loggers
    a = np.zeros(n_rounds + 1, dtype=np.int8)
    if cfg.switching == "schedule":
        a[:] = (np.arange(n_rounds + 1) // cfg.switch_every) % K
    elif cfg.switching == "random":
        u = seed.generator("switching").random((n_rounds, 2))
        cur = 0
        for t in range(1, n_rounds + 1):  # n_rounds steps of a scalar chain: negligible next to a round
            if u[t - 1, 0] < cfg.switch_prob:
                j = min(int(u[t - 1, 1] * (K - 1)), K - 2)  # w * (K - 1) can round up to K - 1 when w ~ 1
                cur = j + (j >= cur)
            a[t] = cur
    return a


@dataclass
class Suggestions:
    """External suggestions: campaigns that push a few items for a while (stream logging/suggestions).

    At the start of round t, with probability ``suggestion_rate``, a campaign starts that pushes
    ``suggestion_items`` items (uniform, without replacement) for rounds t .. t + duration - 1.
    b_i(t) = suggestion_size * (number of campaigns active at t that push i).
    """

    cfg: LoggingConfig
    n_items: int
    rng: np.random.Generator
    campaigns: list[tuple[int, np.ndarray]]

    @classmethod
    def create(cls, cfg: LoggingConfig, n_items: int, seed: SeedTree) -> "Suggestions | None":
        if cfg.suggestion_rate <= 0:
            return None
        return cls(cfg, n_items, seed.generator("suggestions"), [])

    def draw(self, t: int) -> None:
        """Maybe start a campaign in round t (one uniform per round, one choice per campaign)."""
        if self.rng.random() < self.cfg.suggestion_rate:
            self.campaigns.append((t, self.rng.choice(self.n_items, self.cfg.suggestion_items, replace=False)))

    def boost(self, t: int) -> np.ndarray:
        """b(t): (I,) float64, from the campaigns started so far."""
        b = np.zeros(self.n_items)
        for start, items in self.campaigns:
            if start <= t < start + self.cfg.suggestion_duration:
                b[items] += self.cfg.suggestion_size
        return b


SERVE_CHUNK_USERS = 8192
"""Users per call of :meth:`TrendLogger.sample` when serving a round (bounds its buffers)."""


@dataclass
class LoggerServer:
    """The logging policy serving the world's rounds (a ``world.engine.SlateFn``).

    Each round, in this order: K uniforms per request from ``rng`` (stream ``logging/slates``),
    maybe a new suggestion campaign, the logger put in its state of the round (active logger,
    boost), then slates drawn by Plackett-Luce with their exact propensities as the round's extras
    (``propensity``: the slate's PL probability per position; ``propensity_item``: the single-draw
    probability pi_0(item | u, t)). ``active`` records the active logger of every round served.
    With per-user streams (``keyed``) a request's K uniforms are keyed by (round, user) instead
    (stream ``per-user/slates``, world/keyed.py); campaigns and switching stay sequential.
    """

    logger: TrendLogger
    suggestions: Suggestions | None
    rng: np.random.Generator
    active: list[int] = field(default_factory=list)
    reference: bool = False  # sample with the plain-numpy reference kernels (benchmarks, checks)
    chunk: int = SERVE_CHUNK_USERS  # users per sample() call
    keyed: UserStreams | None = None  # per-user streams: slate uniforms keyed by (round, user), rng unused

    @classmethod
    def create(cls, logger: TrendLogger, n_items: int, seed: SeedTree, keyed: UserStreams | None = None) -> "LoggerServer":
        """The server of ``logger`` with its streams under the logging node ``seed``."""
        return cls(logger, Suggestions.create(logger.cfg, n_items, seed), seed.generator("slates"), keyed=keyed)

    def set_round(self, t: int) -> None:
        """Put the logger in its state of round t (a new campaign may start)."""
        if self.suggestions is not None:
            self.suggestions.draw(t)
        self.logger.set_round(t, self.suggestions.boost(t) if self.suggestions is not None else None)
        self.active.append(self.logger.active)

    def __call__(self, world: World, rnd) -> tuple[np.ndarray, dict[str, np.ndarray]]:  # noqa: ANN001 - an engine.Round
        self.set_round(rnd.t)  # draws on other streams than the slates' uniforms: the order is free
        return self.serve(rnd)

    def serve(self, rnd) -> tuple[np.ndarray, dict[str, np.ndarray]]:  # noqa: ANN001 - an engine.Round
        """Slates for ``rnd`` from the logger in its current state (a shard's, set by the driver)."""
        K = self.logger.cfg.slate_size
        if self.keyed is not None:
            uniforms = self.keyed.uniforms("slates", rnd.t, rnd.users, K)
        else:
            uniforms = self.rng.random((rnd.n, K))
        slates = np.empty((rnd.n, K), dtype=np.int32)
        prop = np.empty((rnd.n, K))
        p_item = np.empty((rnd.n, K))
        for lo in range(0, rnd.n, self.chunk):
            sl = slice(lo, min(lo + self.chunk, rnd.n))
            slates[sl], prop[sl], p_item[sl] = self.logger.sample(rnd.users[sl], rnd.trend, uniforms[sl],
                                                                  reference=self.reference)
        return slates, {"propensity": prop, "propensity_item": p_item}

    def finish(self, t: int) -> None:
        """Leave the logger in its state at T = t (the boost of round T; no new campaign)."""
        self.logger.set_round(t, self.suggestions.boost(t) if self.suggestions is not None else None)
        self.active.append(self.logger.active)
