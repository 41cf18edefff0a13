"""The scenario: every knob of the world, the logging policy and the simulation, with its range.

A scenario TOML (``envs/*.toml``) maps one-to-one onto :class:`ScenarioConfig`; the defaults here
are the ``quickstart`` scenario, so ``ScenarioConfig()`` is the embedded default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import Config, from_dict, knob, read_toml
from ..errors import ConfigError

# Ranges shared by many knobs. Every numeric knob has both ends, so no value is infinite or NaN.
SCALE_MAX = 100.0
"""Largest weight, std or utility offset. Utilities, logits and ratings are O(1): at 100 a term
already decides every choice (exp(100) ~ 1e43), and sums of such terms stay far inside float32."""
TEMPERATURE_MIN = 1e-3
"""Smallest logger temperature: 1/T multiplies float32 logits, and below this the logger is argmax anyway."""
MAX_ENTITIES = 1_000_000_000
"""Most items or users: ids are int32 in the logs. Whether such a world fits in memory is checked
separately (:func:`check_memory`), before anything is allocated."""
MAX_ROUNDS = 1_000_000
"""Most rounds (of logging, of a session, of a campaign, between logger switches)."""
SEED_MAX = 2**32 - 1
"""Largest seed (numpy's legacy range; seeds are written to JSON and result tables)."""


@dataclass(frozen=True)
class CatalogConfig(Config):
    """Items: latent vectors in genre clusters, true quality, hype, observable features."""

    n_items: int = knob(
        500, "number of items in the catalogue (ids are int32; memory is checked before simulating)",
        ge=2, le=MAX_ENTITIES,
    )
    n_genres: int = knob(10, "number of genre clusters", ge=1, le=100_000)
    latent_dim: int = knob(16, "dimension of latent user and item vectors", ge=1, le=4096)
    genre_spread: float = knob(1.0, "spread of item vectors around their genre centre", ge=0, le=SCALE_MAX)
    quality_std: float = knob(0.3, "std of true item quality q_i (adds to every user's reward)", ge=0, le=SCALE_MAX)
    hype_std: float = knob(1.0, "std of hype h_i: attracts clicks, adds no true value", ge=0, le=SCALE_MAX)
    n_features: int = knob(8, "number of observable item features f0..f{k-1}", ge=1, le=4096)
    feature_noise: float = knob(0.3, "noise std of the observable features", ge=0, le=SCALE_MAX)


@dataclass(frozen=True)
class UserConfig(Config):
    """Users: latent preferences near a few favourite genres, trend susceptibility, activity."""

    n_users: int = knob(
        1000, "number of users (ids are int32; memory is checked before simulating)", ge=1, le=MAX_ENTITIES
    )
    favourite_genres: int = knob(2, "genres a user's preference vector is built from", ge=1, le=100_000)
    preference_scale: float = knob(1.5, "norm scale of user preference vectors", ge=0, le=SCALE_MAX)
    preference_noise: float = knob(1.0, "idiosyncratic part of a user's preference", ge=0, le=SCALE_MAX)
    trend_susceptibility: float = knob(
        0.5, "mean of s_u ~ Beta, how strongly a user follows trends", gt=0, lt=1
    )
    activity: float = knob(0.8, "probability that a user asks for a slate in a round", gt=0, le=1)


@dataclass(frozen=True)
class TrendConfig(Config):
    """Popularity that feeds on its own exposure and clicks, plus exogenous shocks.

    pop(t+1) = memory * pop(t) + (1 - memory) * (w * exposure share + (1 - w) * click share)
    trend_i(t) = log(n_items * pop_i(t)) + shock_i(t);  shock_i(t+1) = shock_decay * shock_i(t)
    """

    memory: float = knob(0.8, "fraction of popularity kept from one round to the next", ge=0, lt=1)
    exposure_weight: float = knob(0.5, "share of popularity fed by exposure rather than clicks", ge=0, le=1)
    initial_hype_weight: float = knob(1.0, "how much hype shapes the initial popularity", ge=0, le=SCALE_MAX)
    floor: float = knob(
        0.05, "popularity floor relative to uniform, keeps log-trend finite (1: no item below uniform)", gt=0, le=1
    )
    shock_rate: float = knob(0.1, "probability per round of an external shock (an item goes viral)", ge=0, le=1)
    shock_size: float = knob(3.0, "boost to a shocked item's trend (logit units)", ge=0, le=SCALE_MAX)
    shock_decay: float = knob(0.8, "per-round decay of a shock", ge=0, lt=1)


@dataclass(frozen=True)
class SatiationConfig(Config):
    """Per-genre satiation: S_ug <- decay * S_ug + 1[clicked genre g]; reward loses strength * S_ug."""

    strength: float = knob(0.2, "true reward lost per unit of satiation", ge=0, le=SCALE_MAX)
    decay: float = knob(0.7, "per-round decay of satiation", ge=0, lt=1)


@dataclass(frozen=True)
class ChoiceConfig(Config):
    """How a user picks (at most) one item of a slate, on an engagement utility.

    utility_k = reward_weight * r*(u, i_k) + trend_pull * s_u * trend_i + hype_pull * h_i
                - position_bias * log2(1 + k)

    ``click_model = "mnl"``: multinomial logit over the slate plus a no-click option u_0 =
    no_click_utility, P(k) = exp(utility_k) / (exp(u_0) + sum_j exp(utility_j)); position bias is
    the position-based term above.

    ``click_model = "cascade"`` (Craswell et al., 2008): the user scans the slate top-down and
    clicks position k with probability p_k = sigmoid(utility_k - u_0), stopping at the first click:
    P(k) = p_k * prod_{j<k} (1 - p_j),  P(no click) = prod_j (1 - p_j).  The position-based term
    still applies on top of the examination order (set position_bias = 0 for a pure cascade).
    Trend pull and hype add engagement, never true reward, under either model.
    """

    reward_weight: float = knob(1.5, "weight of the true reward in engagement utility", ge=0, le=SCALE_MAX)
    trend_pull: float = knob(1.0, "weight of s_u * trend_i: engagement that adds no true value", ge=0, le=SCALE_MAX)
    hype_pull: float = knob(0.5, "weight of hype h_i: engagement that adds no true value", ge=0, le=SCALE_MAX)
    position_bias: float = knob(0.5, "utility lost by slate position k: bias * log2(1 + k)", ge=0, le=SCALE_MAX)
    no_click_utility: float = knob(
        5.0, "utility of choosing nothing (beyond +-100 users always or never click)", ge=-SCALE_MAX, le=SCALE_MAX
    )
    click_model: Literal["mnl", "cascade"] = knob(
        "mnl", "mnl: logit over the slate and no click; cascade: top-down scan, first click stops"
    )


@dataclass(frozen=True)
class FeedbackConfig(Config):
    """Observed signals of a clicked item (click, watch fraction, rating), from the true reward r*.

    rating = clip(round(center + scale * r* + noise_std * z + b_u), 1, 5),  z ~ N(0, 1)
             (quantize = false: clip(center + scale * r* + noise_std * z + b_u, 1, 5), not rounded);
    with probability flip_rate the rating is flipped to 6 - rating; then, with probability
    missing_rate, it is missing (NaN; the click and the watch fraction are still logged).
    b_u = user_bias_std * z_u, z_u ~ N(0, 1) once per user (stream world/rating-bias, drawn only
    when user_bias_std > 0): each user rates on her own offset, fixed for the whole run. It is a
    feedback artefact: r*, the choices and every other signal ignore it (sealed as users.rating_bias).

    watch = clip(sigmoid(watch_offset + watch_scale * r*) + watch_noise_std * z2, 0, 1),
            z2 ~ N(0, 1), then censored: watch >= watch_censor is recorded as watch_censor
            (watch_censor = 1 is no censoring). NaN when there was no click.
    """

    rating_center: float = knob(
        1.5, "rating of an item with true reward 0 (before clipping to 1..5)", ge=-SCALE_MAX, le=SCALE_MAX
    )
    rating_scale: float = knob(1.0, "rating points per unit of true reward", ge=0, le=SCALE_MAX)
    noise_std: float = knob(0.5, "Gaussian noise std sigma on the latent rating", ge=0, le=SCALE_MAX)
    flip_rate: float = knob(0.0, "probability that a rating is flipped (6 - rating)", ge=0, le=1)
    quantize: bool = knob(True, "round ratings to whole stars 1..5; false keeps the clipped value")
    missing_rate: float = knob(0.0, "probability that a clicked item's rating is missing (NaN)", ge=0, le=1)
    user_bias_std: float = knob(
        0.0, "std s of each user's rating offset b_u ~ N(0, s^2), added to her latent rating before rounding "
        "and clipping (0 = off; r* is unchanged)", ge=0, le=SCALE_MAX,
    )
    watch_offset: float = knob(
        0.0, "a in watch = sigmoid(a + b * r*) + noise: watch at r* = 0", ge=-SCALE_MAX, le=SCALE_MAX
    )
    watch_scale: float = knob(1.0, "b in watch = sigmoid(a + b * r*) + noise", ge=0, le=SCALE_MAX)
    watch_noise_std: float = knob(0.1, "Gaussian noise std on the watch fraction", ge=0, le=SCALE_MAX)
    watch_censor: float = knob(1.0, "watch fractions >= this are recorded as this (1 = off)", gt=0, le=1)


@dataclass(frozen=True)
class DynamicsConfig(Config):
    """Slow user dynamics during logging (every one is off by default).

    drift: after a click on item i, theta_u <- (1 - drift_rate) * theta_u + drift_rate * v_i,
           so preferences move toward consumed items (the distance to v_i shrinks by 1 - drift_rate).
    sessions: a user leaves after session_budget slates in a row (0 = never); each round after
           that she returns with probability return_prob, so she stays away L >= 1 rounds with
           P(L = l) = (1 - return_prob)^(l - 1) * return_prob; her session count then restarts.
    arrivals: a fraction ``arrival`` of the users (chosen at random) is absent at round 0 and
           arrives in a round drawn uniformly from 1 .. n_rounds - 1.
    A user asks for a slate in a round with probability activity_u if she is present.
    """

    drift_rate: float = knob(0.0, "eta: step of theta_u toward the clicked item's vector v_i", ge=0, le=1)
    session_budget: int = knob(0, "slates in a row before a user leaves (0 = users never leave)", ge=0, le=MAX_ROUNDS)
    return_prob: float = knob(0.5, "per-round probability that a user who left comes back", ge=0, le=1)
    arrival: float = knob(0.0, "fraction of users absent at round 0 who arrive later", ge=0, le=1)


@dataclass(frozen=True)
class LoggingConfig(Config):
    """The trend-driven logging policy (hidden from training code).

    pi_0(i | u, t) = (1 - epsilon) * softmax_{i in S}(z_ui(t) / temperature) + epsilon / |S|
                     for i in S, and exactly 0 for i outside S
    z_ui(t)        = relevance_weight * (theta~_u . v_i + q~_i) + trend_weight * trend_i(t) + b_i(t)
    with theta~, q~ a stale, noisy estimate of the truth. Slates are drawn from pi_0 without
    replacement (Plackett-Luce). Every knob below the first six is off by default:

    support S: a random subset of round(support * n_items) items (stream logging/support); the
        logger never shows the rest (deficient support), and eps-mixing spreads over S only.
    external suggestions b_i(t) = suggestion_size * #{campaigns c active at t with i in c}: at
        the start of each round, with probability suggestion_rate, a campaign starts that pushes
        suggestion_items items (uniform, without replacement; stream logging/suggestions) for
        rounds t .. t + suggestion_duration - 1.
    switching: a mixture of K >= 2 loggers, one active per round (sealed as ``logger_id``).
        Logger 0 is (trend_weight, temperature, epsilon, relevance_weight); logger 1 is
        (alt_trend_weight, alt_temperature, epsilon, relevance_weight); loggers 2 .. K-1 come from
        the extra_* lists (K = 2 + their length; an empty list leaves that parameter at logger 0's
        value). Which logger acts in round t:
        schedule (switch_every > 0): logger (t // switch_every) % K;
        random (switch_prob > 0): a Markov chain started at logger 0 in round 0; at the start of
        each round t >= 1, with probability switch_prob, it jumps to one of the K - 1 other loggers
        drawn uniformly (stream logging/switching), else it stays. Its stationary law is uniform
        and a stay lasts L rounds with P(L = l) = (1 - switch_prob)^(l - 1) * switch_prob.
        With both off there is one logger and the alt_* / extra_* knobs are unused.
    propensity_mode: "hidden" keeps propensities in the sealed tables only; "logged" also writes
        the single-draw probability pi_0(item | u, t) as a public ``pscore`` column; "none" is a
        logger that never recorded them: neither public nor sealed propensity columns (the true
        reward and the logger's state stay sealed), so OPE must estimate them from the logs.
    """

    slate_size: int = knob(10, "items shown per slate", ge=1, le=1000)
    temperature: float = knob(0.5, "softmax temperature of the logger", ge=TEMPERATURE_MIN, le=SCALE_MAX)
    relevance_weight: float = knob(1.0, "weight of the logger's relevance estimate", ge=0, le=SCALE_MAX)
    relevance_noise: float = knob(0.7, "noise std of the logger's stale preference estimate", ge=0, le=SCALE_MAX)
    trend_weight: float = knob(0.5, "weight of the trend term in the logger", ge=0, le=SCALE_MAX)
    epsilon: float = knob(0.05, "uniform exploration mixed into the logger", ge=0, le=1)
    support: float = knob(1.0, "fraction of the catalogue the logger can show (1 = all)", gt=0, le=1)
    suggestion_rate: float = knob(0.0, "per-round probability of an external-suggestion campaign (0 = off)", ge=0, le=1)
    suggestion_size: float = knob(2.0, "logit boost b added to each suggested item's z while pushed", ge=0, le=SCALE_MAX)
    suggestion_items: int = knob(3, "items pushed by one suggestion campaign", ge=1, le=MAX_ENTITIES)
    suggestion_duration: int = knob(5, "rounds a suggestion campaign lasts", ge=1, le=MAX_ROUNDS)
    switch_every: int = knob(
        0, "schedule switching: rounds between switches to the next logger (0 = off)", ge=0, le=MAX_ROUNDS
    )
    switch_prob: float = knob(
        0.0, "random switching: per-round probability of jumping to a uniformly drawn other logger (0 = off)",
        ge=0, le=1,
    )
    alt_trend_weight: float = knob(2.0, "trend_weight of logger 1 (used when switching is on)", ge=0, le=SCALE_MAX)
    alt_temperature: float = knob(
        1.0, "temperature of logger 1 (used when switching is on)", ge=TEMPERATURE_MIN, le=SCALE_MAX
    )
    extra_trend_weights: tuple[float, ...] = knob(
        (), "trend_weight of loggers 2, 3, ... (each in trend_weight's range; [] = logger 0's value or no extra "
        "loggers)", ge=0, le=SCALE_MAX,
    )
    extra_temperatures: tuple[float, ...] = knob(
        (), "temperature of loggers 2, 3, ... (each in temperature's range; [] = logger 0's value or no extra "
        "loggers)", ge=TEMPERATURE_MIN, le=SCALE_MAX,
    )
    extra_epsilons: tuple[float, ...] = knob(
        (), "epsilon of loggers 2, 3, ... (each in [0, 1]; [] = logger 0's value or no extra loggers)", ge=0, le=1
    )
    extra_relevance_weights: tuple[float, ...] = knob(
        (), "relevance_weight of loggers 2, 3, ... (each in relevance_weight's range; [] = logger 0's value or "
        "no extra loggers)", ge=0, le=SCALE_MAX,
    )
    propensity_mode: Literal["hidden", "logged", "none"] = knob(
        "hidden",
        "hidden: propensities sealed only; logged: also a public pscore column; none: never recorded",
    )

    def _extras(self) -> dict[str, tuple[float, ...]]:
        return {
            "extra_trend_weights": self.extra_trend_weights, "extra_temperatures": self.extra_temperatures,
            "extra_epsilons": self.extra_epsilons, "extra_relevance_weights": self.extra_relevance_weights,
        }

    def check(self) -> None:
        if self.switch_every > 0 and self.switch_prob > 0:
            raise ConfigError(
                f"switch_every = {self.switch_every} and switch_prob = {self.switch_prob:g} are both on: "
                "switch on a schedule (switch_every > 0) or at random (switch_prob > 0), not both"
            )
        lengths = {name: len(v) for name, v in self._extras().items() if v}
        if len(set(lengths.values())) > 1:
            raise ConfigError(
                "extra_* lists must have the same length (one value per extra logger) or be empty, got "
                + ", ".join(f"{k} of length {n}" for k, n in lengths.items())
            )
        if lengths and self.switch_every == 0 and self.switch_prob == 0:
            name = next(iter(lengths))
            raise ConfigError(
                f"{name} = {list(self._extras()[name])} describes extra loggers but switching is off: "
                "set switch_every > 0 or switch_prob > 0 (or leave the extra_* lists empty)"
            )
        for name, n in lengths.items():
            if n > 100:  # logger_id is sealed as int8
                raise ConfigError(f"{name} has {n} values: at most 100 extra loggers are allowed")

    def n_supported(self, n_items: int) -> int:
        """|S|: the number of items the logger can show."""
        return n_items if self.support >= 1.0 else max(1, int(round(self.support * n_items)))

    @property
    def switching(self) -> Literal["off", "schedule", "random"]:
        """How the active logger changes: never, on a schedule, or by a random Markov chain."""
        if self.switch_every > 0:
            return "schedule"
        return "random" if self.switch_prob > 0 else "off"

    @property
    def n_loggers(self) -> int:
        """K: 1 without switching, else 2 + the number of extra loggers."""
        if self.switching == "off":
            return 1
        return 2 + max((len(v) for v in self._extras().values()), default=0)

    def logger_params(self, k: int) -> tuple[float, float, float, float]:
        """(trend_weight, temperature, epsilon, relevance_weight) of logger k (0 <= k < n_loggers)."""
        if not 0 <= k < self.n_loggers:
            raise ValueError(f"logger {k} does not exist: this mixture has loggers 0 .. {self.n_loggers - 1}")
        if k == 0:
            return self.trend_weight, self.temperature, self.epsilon, self.relevance_weight
        if k == 1:
            return self.alt_trend_weight, self.alt_temperature, self.epsilon, self.relevance_weight
        j = k - 2

        def pick(values: tuple[float, ...], base: float) -> float:
            return values[j] if values else base

        return (
            pick(self.extra_trend_weights, self.trend_weight), pick(self.extra_temperatures, self.temperature),
            pick(self.extra_epsilons, self.epsilon), pick(self.extra_relevance_weights, self.relevance_weight),
        )

    def active_logger(self, t: int) -> int:
        """Which logger acts in round t: 0 without switching, (t // switch_every) % K on a schedule.

        Random switching draws the sequence from a seed: see behavior.logging_policy.logger_sequence.
        """
        if self.switching == "random":
            raise ValueError(
                "with switch_prob > 0 the active logger is drawn at random; "
                "use behavior.logging_policy.logger_sequence (or the sealed logger_id)"
            )
        return (t // self.switch_every) % self.n_loggers if self.switch_every > 0 else 0


@dataclass(frozen=True)
class SimulationConfig(Config):
    """How long the logger runs, and how its per-user random numbers are drawn.

    ``streams = "sequential"``: each per-user random number comes from a whole-population generator
    drawn in user order (every log made so far). ``"per-user"``: it is a pure function of (seed,
    stream, round, user, draw) (``world/keyed.py``), so the users can be simulated in shards
    (``recsim-post simulate --backend ray``) and any number of shards writes the same bytes.
    The two give different (equally valid) logs of the same world.
    """

    n_rounds: int = knob(30, "rounds of logging; each active user gets one slate per round", ge=1, le=MAX_ROUNDS)
    streams: Literal["sequential", "per-user"] = knob(
        "sequential", "sequential: population-wide random streams; per-user: keyed by user, shardable (--backend ray)"
    )


@dataclass(frozen=True)
class ScenarioConfig(Config):
    """A whole scenario: the world, its logger and how long logging runs."""

    name: str = knob("quickstart", "scenario name")
    description: str = knob("small and fast: the demo's default world", "one-line description")
    seed: int = knob(0, "root seed of the scenario's random streams", ge=0, le=SEED_MAX)
    catalog: CatalogConfig = knob(CatalogConfig(), "items")
    users: UserConfig = knob(UserConfig(), "users")
    trends: TrendConfig = knob(TrendConfig(), "popularity and shocks")
    satiation: SatiationConfig = knob(SatiationConfig(), "per-genre satiation")
    dynamics: DynamicsConfig = knob(DynamicsConfig(), "preference drift, leaving and returning, arrivals")
    choice: ChoiceConfig = knob(ChoiceConfig(), "slate choice model")
    feedback: FeedbackConfig = knob(FeedbackConfig(), "observed feedback")
    logging: LoggingConfig = knob(LoggingConfig(), "logging policy")
    simulation: SimulationConfig = knob(SimulationConfig(), "simulation length")

    def check(self) -> None:
        if self.logging.slate_size > self.catalog.n_items:
            raise ConfigError(
                f"logging.slate_size = {self.logging.slate_size} is out of range: "
                f"must be <= catalog.n_items = {self.catalog.n_items}"
            )
        n_sup = self.logging.n_supported(self.catalog.n_items)
        if self.logging.slate_size > n_sup:
            raise ConfigError(
                f"logging.slate_size = {self.logging.slate_size} is out of range: must be <= the "
                f"{n_sup} items the logger supports (logging.support * catalog.n_items)"
            )
        if self.logging.suggestion_rate > 0 and self.logging.suggestion_items > self.catalog.n_items:
            raise ConfigError(
                f"logging.suggestion_items = {self.logging.suggestion_items} is out of range: "
                f"must be <= catalog.n_items = {self.catalog.n_items}"
            )
        if self.catalog.n_genres > self.catalog.n_items:
            raise ConfigError(
                f"catalog.n_genres = {self.catalog.n_genres} is out of range: "
                f"must be <= catalog.n_items = {self.catalog.n_items}"
            )


def load_scenario(path: str | Path) -> ScenarioConfig:
    """Read a scenario TOML; unknown keys and out-of-range values raise ConfigError."""
    data = read_toml(path)
    try:
        return from_dict(ScenarioConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{Path(path).name}: {err}") from None


# ------------------------------------------------------------------------------------------------
# Memory: a scenario whose arrays cannot fit is refused before anything is allocated.
# ------------------------------------------------------------------------------------------------

LOG_ROW_BYTES = 250
"""Bytes per logged impression while simulating and writing: the per-round parts, their
concatenation and the public and sealed tables (measured 140-210 on quickstart-like worlds)."""

WORKING_BYTES = 100 * 10**6
"""Buffers that do not grow with the world (Arrow and Parquet writers, per-round scratch)."""

GB = 10**9


STREAM_BUFFER_ROWS = 2 << 20
"""Rows a streamed run holds beside its current round: the Parquet writers' pending rows (up to a
row group, ``logs.simulate.ROW_GROUP_ROWS``, and the slice being written)."""


def memory_estimate(cfg: ScenarioConfig, num_envs: int = 0, history_len: int = 10, streamed: bool = False) -> int:
    """Bytes a run of ``cfg`` needs at its peak, an estimate on the safe side (about 1.5-2x the
    peak RSS measured on worlds dominated by items, users or log rows).

    ``num_envs = 0``: ``simulate`` and writing its logs -- the world, the logger (its float32 item
    vectors and one (64, n_items) float32 buffer per thread), users' latents with their sealed table,
    and every potential impression (n_users * min(1, activity) * n_rounds * slate_size rows) at
    LOG_ROW_BYTES each. ``num_envs >= 1``: a Gymnasium env serving the world (``num_envs`` users,
    the population of ``cfg`` in the vector env) -- the world, and per user a click history and the
    round's responses. ``streamed``: the logs go to disk round by round (``simulate`` on the
    command line), so only one round's rows and the writers' buffers are held, not every row.
    """
    c, u = cfg.catalog, cfg.users
    d, g, f = c.latent_dim, c.n_genres, c.n_features
    fav = min(u.favourite_genres, g)
    # items: vectors (and two temporaries while drawn), features (float64, then float32), quality,
    # hype, genre, popularity, shock, trend, exposure counts
    per_item = 8 * d * 3 + 12 * f + 8 * 10
    # users: theta (and its noise), satiation (and the draw that picks favourites), the favourites'
    # centres (fav x d while summed), activity, susceptibility, arrival and session state
    per_user = 8 * d * (2 + fav) + 8 * g * 3 + 8 * 6
    if num_envs:
        per_env = 16 * history_len + 48 * cfg.logging.slate_size + 200
        return WORKING_BYTES + c.n_items * per_item + u.n_users * per_user + num_envs * per_env
    threads = os.cpu_count() or 1
    # the logger: float32 vectors twice (as given, and transposed over its support), its quality
    # estimate, and per thread a weight buffer of at least 64 users and a float64 CDF
    per_item += 8 * d + 8 + threads * (4 * 64 + 8)
    # the sealed tables (vectors, quality, hype, estimate, trend state) as a frame and as Arrow
    per_item += 2 * (8 * d + 8 * 8)
    # the logger's estimate of theta (and its noise); the sealed users table as a frame and as Arrow
    per_user += 8 * d * 2 + 2 * 8 * (2 * d + g + 3)
    per_round = int(u.n_users * cfg.logging.slate_size * min(1.0, u.activity))
    rows = per_round * cfg.simulation.n_rounds
    if streamed:  # one round's rows (its parts and their public / sealed split) and the writers' buffers
        rows = min(rows, per_round + STREAM_BUFFER_ROWS)
    total = WORKING_BYTES + c.n_items * per_item + u.n_users * per_user + rows * LOG_ROW_BYTES
    if cfg.dynamics.drift_rate > 0 and not streamed:  # theta of every click, kept per round, then as a table
        total += u.n_users * cfg.simulation.n_rounds * 8 * (3 * d + 4)
    return total


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping: /proc/meminfo's MemAvailable (or
    os.sysconf), capped by a cgroup (container) memory limit; None where neither can be read."""
    found = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        try:
            limit = int(Path(limit_file).read_text().strip())  # "max" (no limit) raises ValueError
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit < 2**60:  # v1 writes a huge number for "no limit"
            found = min(found, max(limit - usage, 0))
    return found


def _size_text(n: float) -> str:
    if n >= 10 * GB:
        return f"{n / GB:,.0f} GB"
    if n >= GB:
        return f"{n / GB:.1f} GB"
    return f"{n / 10**6:,.0f} MB"


LARGE_IMPRESSIONS = 10**7
"""A world whose logs can exceed this many impressions is large (:func:`is_large`)."""

LARGE_PAIRS = 10**10
"""A world with more (user, item) pairs than this is large: exact ground truth over it takes minutes."""


def potential_impressions(cfg: ScenarioConfig) -> int:
    """Impressions the logs hold if every user asks with her mean activity: users x activity x rounds x slate."""
    u = cfg.users
    return int(u.n_users * min(1.0, u.activity) * cfg.simulation.n_rounds * cfg.logging.slate_size)


def is_large(cfg: ScenarioConfig) -> bool:
    """Whether ``cfg`` is a world for a run of minutes, not for a test of seconds: more than
    ``LARGE_IMPRESSIONS`` potential impressions or ``LARGE_PAIRS`` (user, item) pairs. The
    per-preset tests (golden logs, env parity, the envs) skip large presets
    (``presets.preset_names("envs", large=False)``)."""
    return potential_impressions(cfg) > LARGE_IMPRESSIONS or cfg.users.n_users * cfg.catalog.n_items > LARGE_PAIRS


def check_memory(cfg: ScenarioConfig, num_envs: int = 0, history_len: int = 10, available: int | None = None,
                 streamed: bool = False) -> None:
    """Raise ConfigError when :func:`memory_estimate` exceeds the memory available (read from the
    machine unless ``available`` is given, in bytes; nothing is checked where it cannot be read)."""
    need = memory_estimate(cfg, num_envs, history_len, streamed=streamed)
    have = available_memory() if available is None else available
    if have is None or need <= have:
        return
    c, u = cfg.catalog, cfg.users
    if num_envs:
        knobs = f"catalog.n_items = {c.n_items}, users.n_users = {u.n_users} and num_envs = {num_envs}"
        what = "for the environment"
    else:
        knobs = (f"catalog.n_items = {c.n_items}, users.n_users = {u.n_users}, simulation.n_rounds = "
                 f"{cfg.simulation.n_rounds} and logging.slate_size = {cfg.logging.slate_size}")
        what = "for the simulation"
    raise ConfigError(
        f"{knobs} need about {_size_text(need)} {what}; this machine has {_size_text(have)} available: "
        "make the world smaller"
    )
