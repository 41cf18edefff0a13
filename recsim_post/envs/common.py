"""What the single-request and the vector environment share: their constructor arguments, the
world's memory, a run of the world (:class:`Session`), and that an episode is running when
``step`` is called."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium.error import ResetNeeded

from ..config import Config, knob
from ..errors import ActionError, ConfigError
from ..presets import resolve
from ..seeding import SeedTree
from .. import signals
from ..world.config import ScenarioConfig, check_memory, load_scenario
from ..world.engine import Responses, Round, Streams, begin_round, end_round, respond
from ..world.world import World


@dataclass(frozen=True)
class EnvArgs(Config):
    """Constructor arguments of :class:`~.recsim_env.RecSimEnv` and :class:`~.vector_env.RecSimVectorEnv`."""

    horizon: int | None = knob(None, "rounds of the world per episode (None: the scenario's simulation.n_rounds)",
                               ge=1, le=1_000_000)
    history_len: int = knob(10, "clicked items in an observation", ge=1, le=10_000)
    slate_size: int = knob(1, "items per recommendation (at most the catalogue)", ge=1, le=1000)
    num_envs: int = knob(1, "vector env: users of the world, one sub-environment each", ge=1, le=1_000_000_000)
    reward: str = knob("rating", "the feedback signal that is the reward (recsim_post.signals.REWARDS: click, rating, watch)")

    def check(self) -> None:
        signals.check_reward(self.reward)


def env_setup(scenario: str | ScenarioConfig, users: int | None = None, **args: Any) -> tuple[ScenarioConfig, EnvArgs]:
    """The scenario (a preset name, a TOML path or a config) and the checked constructor arguments.

    ``users`` replaces the scenario's population size (the vector env's ``num_envs``); ``horizon``
    replaces its number of rounds. Whole numbers are required (``horizon = 1.5`` is refused, numpy
    integers are accepted); the slate must fit the catalogue and the world must fit in memory.
    Everything wrong raises a one-line ConfigError, before the world is built.
    """
    cfg = scenario if isinstance(scenario, ScenarioConfig) else load_scenario(resolve("envs", scenario))
    values = {k: int(v) if isinstance(v, np.integer) else v for k, v in args.items()}
    env_args = EnvArgs(**values)
    if env_args.slate_size > cfg.catalog.n_items:
        raise ConfigError(
            f"slate_size = {env_args.slate_size} is out of range: must be <= catalog.n_items = {cfg.catalog.n_items}"
        )
    if users is not None and users != cfg.users.n_users:
        cfg = dataclasses.replace(cfg, users=dataclasses.replace(cfg.users, n_users=int(users)))
    if env_args.horizon is not None and env_args.horizon != cfg.simulation.n_rounds:
        cfg = dataclasses.replace(cfg, simulation=dataclasses.replace(cfg.simulation, n_rounds=env_args.horizon))
    check_memory(cfg, num_envs=cfg.users.n_users, history_len=env_args.history_len)
    return cfg, env_args


def check_render_mode(render_mode: str | None, allowed: list[str]) -> None:
    """A render mode the environment does not have is a ConfigError naming the ones it has."""
    if render_mode is not None and render_mode not in allowed:
        names = ", ".join(["None"] + [repr(m) for m in allowed])
        raise ConfigError(f"render_mode = {render_mode!r} is not allowed: must be one of {names}")


def require_episode(started: bool, ended: bool, horizon: int) -> None:
    """Raise ResetNeeded (as Gymnasium's own environments do) when ``step`` comes before the first
    ``reset`` or after the episode was truncated."""
    if not started:
        raise ResetNeeded("step() called before reset(): call reset(seed=...) first")
    if ended:
        raise ResetNeeded(
            f"step() called after the episode was truncated (horizon = {horizon} rounds): call reset() to start "
            "a new one"
        )


def check_slates(a: np.ndarray, n_items: int, what: str = "env", ids: np.ndarray | None = None) -> None:
    """Items in range and no item twice in a slate: rows of ``a`` (B, K) int64; the first bad row
    is named ``what`` and its id (``ids[row]``, or the row number)."""
    name = (lambda b: f"{what} {b if ids is None else ids[b]}")  # noqa: E731
    bad = (a < 0) | (a >= n_items)
    if bad.any():
        b, k = np.argwhere(bad)[0]
        raise ActionError(f"{name(b)}: item {a[b, k]} at slate position {k} is out of range: must be in [0, {n_items - 1}]")
    if a.shape[1] > 1:
        s = np.sort(a, axis=1)
        dup = s[:, 1:] == s[:, :-1]
        if dup.any():
            b, k = np.argwhere(dup)[0]
            raise ActionError(f"{name(b)}: the slate repeats item {s[b, k]}: a slate's items must be distinct")


class Session:
    """One run of the world from round 0, as both environments serve it.

    The world and its random streams come from ``SeedTree(seed)`` exactly as ``simulate`` builds
    them (``World.create`` under ``world``, ``engine.Streams.logging``), so an agent that serves the
    requests with the logger's slates reproduces the logs of ``simulate`` at that seed. The session
    keeps every user's public click history (``hist``, left-padded with ``n_items``), as the logs do.
    """

    def __init__(self, cfg: ScenarioConfig, seed: int, history_len: int) -> None:
        tree = SeedTree(seed)
        self.cfg, self.seed = cfg, seed
        self.world = World.create(cfg, tree.child("world"))
        self.streams = Streams.logging(tree, per_user=cfg.simulation.streams == "per-user")
        self.pad = self.world.n_items
        self.hist = np.full((self.world.n_users, history_len), self.pad, dtype=np.int64)
        self.round: Round | None = None
        self.rounds_done = 0

    @property
    def n_rounds(self) -> int:
        return self.cfg.simulation.n_rounds

    @property
    def finished(self) -> bool:
        return self.rounds_done >= self.n_rounds

    def begin(self) -> Round:
        """Begin the next round (who asks, their random numbers)."""
        self.round = begin_round(self.world, self.streams)
        return self.round

    def respond(self, slates: np.ndarray, rows: slice | np.ndarray | None = None) -> Responses:
        """The responses of the round's users (or ``rows`` of them) to ``slates``."""
        assert self.round is not None
        return respond(self.world, self.round, slates, rows)

    def end(self, slates: np.ndarray, choice: np.ndarray) -> None:
        """End the round: the world moves on; the clickers' histories grow by their click."""
        assert self.round is not None
        end_round(self.world, self.round, slates, choice, self.streams)
        clicked = choice >= 0
        users = self.round.users[clicked]
        if len(users):  # a user clicks at most once per round
            self.hist[users, :-1] = self.hist[users, 1:]
            self.hist[users, -1] = slates[clicked, choice[clicked]]
        self.rounds_done += 1
        self.round = None


def reward_of(responses: Responses, reward: str) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(reward (m,) float64, signals (m,) with 0 where unobserved, observed (m,) bool per signal)."""
    values, observed = {}, {}
    for name, v in responses.signals.items():
        ok = ~np.isnan(v)
        observed[name] = ok
        values[name] = np.where(ok, v, 0.0).astype(np.float64)
    r = responses.clicked.astype(np.float64) if reward == "click" else values[reward]
    return r, values, observed


__all__ = ["EnvArgs", "Session", "check_render_mode", "check_slates", "env_setup", "require_episode", "reward_of"]
