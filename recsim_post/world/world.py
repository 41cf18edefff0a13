"""The simulated world: catalogue, users, trends, satiation, the true reward and the choice model.

Everything here is ground truth. Training code never imports this module (a test enforces it);
the logs it produces are split into a public part and a sealed part that only evaluation reads.

True reward (ground truth), for user u, item i at time t::

    r*(u, i, t) = theta_u . v_i + q_i - satiation.strength * S_u,genre(i)(t)
    S(t + 1) = satiation.decay * S(t), then S_u,genre(i) += 1 for each click (u, i) of round t

Each formula has one implementation, in :mod:`.kernels`: r* (``_finish_r``, used by the choice
kernel, :func:`~.kernels.true_reward_rows` for (users x items) blocks and
:func:`~.kernels.true_reward_pairs` for one item per row) and the satiation step
(:func:`~.kernels.satiation_step`, replayed from logged clicks by :func:`~.kernels.replay_satiation`).

What users *engage with* mixes r* with trend pull and hype (see :class:`~.config.ChoiceConfig`),
and what the logs show is a noisy rating and watch fraction of it (see
:class:`~.config.FeedbackConfig`). Users drift toward what they consume, leave after a session
and come back, and arrive over time (see :class:`~.config.DynamicsConfig`; all off by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..seeding import SeedTree
from . import kernels
from .config import ScenarioConfig


@dataclass
class Catalog:
    """Item ground truth and observable features."""

    vectors: np.ndarray  # (I, d) float64 latent item vectors v_i
    genre: np.ndarray  # (I,) int64 genre of each item
    quality: np.ndarray  # (I,) float64 true quality q_i
    hype: np.ndarray  # (I,) float64 hype h_i (engagement without value)
    features: np.ndarray  # (I, n_features) float32 observable noisy projection of v_i
    genre_centres: np.ndarray  # (G, d)

    @property
    def n_items(self) -> int:
        return len(self.quality)


@dataclass
class Population:
    """User ground truth."""

    theta: np.ndarray  # (N, d) float64 preference vectors
    susceptibility: np.ndarray  # (N,) float64 trend susceptibility s_u in (0, 1)
    activity: np.ndarray  # (N,) float64 probability of asking for a slate in a round
    rating_bias: np.ndarray | None = None  # (N,) float64 b_u added to every rating of u; None: off

    @property
    def n_users(self) -> int:
        return len(self.susceptibility)


def make_catalog(cfg: ScenarioConfig, rng: np.random.Generator) -> Catalog:
    """Items in genre clusters: v_i = c_genre + spread * noise, with unit-norm genre centres."""
    c = cfg.catalog
    d = c.latent_dim
    centres = rng.standard_normal((c.n_genres, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # every genre gets at least one item, the rest are drawn uniformly
    genre = np.concatenate(
        [np.arange(c.n_genres), rng.integers(0, c.n_genres, c.n_items - c.n_genres)]
    )
    genre = rng.permutation(genre).astype(np.int64)
    vectors = centres[genre] + c.genre_spread * rng.standard_normal((c.n_items, d)) / np.sqrt(d)
    quality = c.quality_std * rng.standard_normal(c.n_items)
    hype = c.hype_std * rng.standard_normal(c.n_items)
    projection = rng.standard_normal((d, c.n_features)) / np.sqrt(d)
    features = vectors @ projection + c.feature_noise * rng.standard_normal((c.n_items, c.n_features))
    return Catalog(vectors, genre, quality, hype, features.astype(np.float32), centres)


def make_population(cfg: ScenarioConfig, catalog: Catalog, rng: np.random.Generator) -> Population:
    """theta_u = scale * (sum of m favourite genre centres) / sqrt(m) + noise; s_u ~ Beta."""
    u = cfg.users
    n, d = u.n_users, cfg.catalog.latent_dim
    m = min(u.favourite_genres, cfg.catalog.n_genres)
    favourites = np.argsort(rng.random((n, cfg.catalog.n_genres)), axis=1)[:, :m]
    theta = u.preference_scale * catalog.genre_centres[favourites].sum(axis=1) / np.sqrt(m)
    theta += u.preference_noise * rng.standard_normal((n, d)) / np.sqrt(d)
    concentration = 4.0
    s = rng.beta(concentration * u.trend_susceptibility, concentration * (1 - u.trend_susceptibility), n)
    # activity varies around its mean so some users are heavy users, clipped to a valid probability
    activity = np.clip(u.activity * rng.uniform(0.5, 1.5, n), 0.05, 1.0)
    return Population(theta, s, activity)


@dataclass
class WorldState:
    """What changes over time: popularity, shocks, per-genre satiation and who is present."""

    popularity: np.ndarray  # (I,) sums to 1
    shock: np.ndarray  # (I,) >= 0
    satiation: np.ndarray  # (N, G) >= 0
    round: int = 0
    arrival_round: np.ndarray | None = None  # (N,) int64: the round a user joins (0: from the start)
    away: np.ndarray | None = None  # (N,) bool: left after a session and not yet back
    session_slates: np.ndarray | None = None  # (N,) int64: slates seen in the current session

    def present(self) -> np.ndarray:
        """(N,) bool: users who have arrived and are not away."""
        n = len(self.satiation)
        arrived = np.ones(n, bool) if self.arrival_round is None else self.arrival_round <= self.round
        return arrived if self.away is None else arrived & ~self.away


@dataclass
class World:
    """Catalogue + population + dynamic state, and the rules that move it."""

    cfg: ScenarioConfig
    catalog: Catalog
    users: Population
    state: WorldState
    position_penalty: np.ndarray = field(init=False)
    choice_params: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        ch = self.cfg.choice
        self.position_penalty = self.position_penalties(self.cfg.logging.slate_size)
        self.choice_params = np.array(  # kernels.CHOICE_PARAMS
            [ch.reward_weight, ch.trend_pull, ch.hype_pull, ch.no_click_utility, self.cfg.satiation.strength,
             float(ch.click_model == "cascade")],
            dtype=np.float64,
        )

    def position_penalties(self, k: int) -> np.ndarray:
        """position_bias * log2(1 + j) for slate positions j = 0 .. k - 1."""
        return self.cfg.choice.position_bias * np.log2(1.0 + np.arange(max(k, 1), dtype=np.float64))

    @classmethod
    def create(cls, cfg: ScenarioConfig, seed: SeedTree | None = None) -> "World":
        """Build the world from the scenario; ``seed`` defaults to the scenario's own world stream."""
        seed = seed if seed is not None else SeedTree(cfg.seed).child("world")
        catalog = make_catalog(cfg, seed.generator("catalog"))
        users = make_population(cfg, catalog, seed.generator("users"))
        state = initial_state(cfg, catalog, seed.generator("trends"))
        dyn = cfg.dynamics
        if dyn.arrival > 0:  # its own stream, so the other streams are drawn exactly as without it
            rng = seed.generator("arrivals")
            n = users.n_users
            late = rng.permutation(n)[: int(round(dyn.arrival * n))]
            state.arrival_round[late] = rng.integers(1, max(cfg.simulation.n_rounds, 2), len(late))
        if cfg.feedback.user_bias_std > 0:  # its own stream too; off, nothing is drawn and nothing moves
            z = seed.generator("rating-bias").standard_normal(users.n_users)
            users.rating_bias = cfg.feedback.user_bias_std * z  # the same z for every std: studies compare like with like
        return cls(cfg, catalog, users, state)

    @property
    def n_items(self) -> int:
        return self.catalog.n_items

    @property
    def n_users(self) -> int:
        return self.users.n_users

    def trend(self) -> np.ndarray:
        """trend_i = log(n_items * max(pop_i, floor / n_items)) + shock_i."""
        n = self.n_items
        pop = np.maximum(self.state.popularity, self.cfg.trends.floor / n)
        return np.log(n * pop) + self.state.shock

    def true_reward(self, users: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
        """r*(u, i, now) for users (B,) and all items (or ``items`` (M,)): shape (B, I or M)."""
        items = np.arange(self.n_items) if items is None else np.asarray(items)
        return true_reward_matrix(
            self.users.theta[users], self.state.satiation[users], self.catalog.vectors[items],
            self.catalog.quality[items], self.catalog.genre[items], self.cfg.satiation.strength,
        )

    def choose(
        self,
        users: np.ndarray,
        slates: np.ndarray,
        u_choice: np.ndarray,
        trend: np.ndarray | None = None,
        reference: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Users (B,) choose from slates (B, K): (choice, r* of the shown items, probability of
        the outcome); see :func:`kernels.choose`. What they record of it: world/feedback.py."""
        trend = self.trend() if trend is None else trend
        slates = np.ascontiguousarray(slates, dtype=np.int32)
        penalty = self.position_penalty
        if slates.shape[1] > len(penalty):  # a slate longer than the logger's (a rollout's k, an env's)
            penalty = self.position_penalties(slates.shape[1])
        fn = kernels.choose_ref if reference else kernels.choose
        return fn(
            slates, self.users.theta[users], self.users.susceptibility[users], self.state.satiation[users],
            self.catalog.vectors, self.catalog.quality, self.catalog.hype, self.catalog.genre,
            trend, self.choice_params, penalty, u_choice,
        )

    def active_users(self, u_activity: np.ndarray) -> np.ndarray:
        """Users asking for a slate this round: present and u_activity (N,) < activity_u."""
        want = u_activity < self.users.activity
        dyn = self.cfg.dynamics
        if dyn.arrival > 0 or dyn.session_budget > 0:
            want &= self.state.present()
        return np.flatnonzero(want)

    def advance(
        self,
        shown: np.ndarray,
        clicked_users: np.ndarray,
        clicked_items: np.ndarray,
        rng: np.random.Generator,
        shown_users: np.ndarray | None = None,
        rng_dynamics: np.random.Generator | None = None,
        u_return: np.ndarray | None = None,
    ) -> None:
        """End a round: popularity feeds on exposure and clicks, shocks decay/arrive, satiation moves.

        With :class:`~.config.DynamicsConfig` on: preferences drift toward the clicked items, and
        the users shown a slate (``shown_users``, one slate each) count down their session; those
        away come back with probability return_prob (uniforms ``u_return`` (N,), per-user streams,
        or else drawn from ``rng_dynamics``). The population part (:meth:`advance_population`)
        and the per-user part (:meth:`advance_users`) touch disjoint state and streams, which is
        what lets a sharded run do the first on the driver and the second in the shards.
        """
        self.advance_population(shown, clicked_items, rng)
        if self.cfg.dynamics.session_budget > 0 and u_return is None:
            if rng_dynamics is None:
                raise ValueError("advance: session_budget > 0 needs rng_dynamics")
            u_return = rng_dynamics.random(self.n_users)
        self.advance_users(clicked_users, clicked_items, shown_users, u_return)
        self.state.round += 1

    def advance_population(self, shown: np.ndarray, clicked_items: np.ndarray, rng: np.random.Generator) -> None:
        """The population-level end of a round: popularity from every slate ``shown`` (n, K) and
        every clicked item, then shocks decay and maybe arrive (``rng``: one or two draws)."""
        t, n = self.cfg.trends, self.n_items
        st = self.state
        if shown.size:
            exposure = np.bincount(shown.ravel(), minlength=n) / shown.size
            clicks = (
                np.bincount(clicked_items, minlength=n) / clicked_items.size
                if clicked_items.size
                else exposure
            )
            target = t.exposure_weight * exposure + (1 - t.exposure_weight) * clicks
            st.popularity = t.memory * st.popularity + (1 - t.memory) * target
            st.popularity /= st.popularity.sum()
        st.shock *= t.shock_decay
        if rng.random() < t.shock_rate:
            st.shock[rng.integers(n)] += t.shock_size

    def advance_users(
        self,
        clicked_users: np.ndarray,
        clicked_items: np.ndarray,
        shown_users: np.ndarray | None = None,
        u_return: np.ndarray | None = None,
    ) -> None:
        """The per-user end of a round: satiation, drift and sessions of the users held here
        (each row on its own: a shard's users move as they would in the whole population)."""
        st = self.state
        kernels.satiation_step(
            st.satiation, np.asarray(clicked_users, np.int64), np.asarray(self.catalog.genre[clicked_items], np.int64),
            float(self.cfg.satiation.decay),
        )
        dyn = self.cfg.dynamics
        if dyn.drift_rate > 0 and len(clicked_users):
            # theta_u <- (1 - eta) theta_u + eta v_i (a user clicks at most once per round)
            theta = self.users.theta
            theta[clicked_users] = (
                (1.0 - dyn.drift_rate) * theta[clicked_users]
                + dyn.drift_rate * self.catalog.vectors[clicked_items]
            )
        if dyn.session_budget > 0:
            if u_return is None:
                raise ValueError("advance_users: session_budget > 0 needs u_return")
            back = st.away & (u_return < dyn.return_prob)
            st.away &= ~back
            st.session_slates[back] = 0
            if shown_users is not None and len(shown_users):
                st.session_slates[shown_users] += 1
                done = shown_users[st.session_slates[shown_users] >= dyn.session_budget]
                st.away[done] = True
                st.session_slates[done] = 0


def initial_state(cfg: ScenarioConfig, catalog: Catalog, rng: np.random.Generator) -> WorldState:
    """Initial popularity ∝ exp(initial_hype_weight * h_i + noise); no shocks; no satiation."""
    logits = cfg.trends.initial_hype_weight * catalog.hype + rng.standard_normal(catalog.n_items)
    pop = np.exp(logits - logits.max())
    return WorldState(
        popularity=pop / pop.sum(),
        shock=np.zeros(catalog.n_items),
        satiation=np.zeros((cfg.users.n_users, cfg.catalog.n_genres)),
        arrival_round=np.zeros(cfg.users.n_users, dtype=np.int64),
        away=np.zeros(cfg.users.n_users, dtype=bool),
        session_slates=np.zeros(cfg.users.n_users, dtype=np.int64),
    )


true_reward_matrix = kernels.true_reward_rows
"""r*[b, i] = theta_b . v_i + q_i - strength * satiation[b, genre_i]: (B, I) float64, C order (the
world's one r* for (users x items) blocks; ``out=`` reuses a buffer)."""
