"""The world as a natively batched Gymnasium VectorEnv: one sub-environment per user, one round a step."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from ..errors import ActionError, ConfigError
from ..world.config import SEED_MAX, ScenarioConfig
from ..signals import SIGNALS
from .common import Session, check_render_mode, check_slates, env_setup, require_episode, reward_of


class RecSimVectorEnv(gym.vector.VectorEnv):
    """Serve a whole world, one round per step: sub-environment ``b`` is user ``b``.

    ## Description
    The world has ``num_envs`` users (the scenario's ``users.n_users`` replaced by it when they
    differ) and runs the round of ``recsim_post.world.engine``, as ``simulate`` does: each step the
    users who ask for a slate this round (``info["requesting"]``, known from the previous
    ``reset``/``step``) are served the agent's slates; the others' actions are ignored. Users choose
    by the scenario's choice model and record its feedback signals, and the world moves on
    (popularity, shocks, satiation, drift, sessions, arrivals). Every knob of the scenario acts
    here, and serving each round with the logger's slates reproduces ``simulate``'s logs exactly
    when ``num_envs`` is the scenario's population (a test checks it per preset). A step is one
    choice-kernel call for all requests; there is no Python loop over sub-environments.

    ## Action Space
    Single: ``Discrete(n_items)`` when ``slate_size == 1``, else ``MultiDiscrete([n_items] *
    slate_size)`` (a slate of distinct items, position 0 first). Batched: ``(num_envs,)`` or
    ``(num_envs, slate_size)`` ints. A wrong shape or dtype, or, on a requesting row, an item out of
    range or a repeated item raises :class:`recsim_post.errors.ActionError`.

    ## Observation Space
    Single: ``MultiDiscrete([n_items + 1] * history_len)``, the user's last ``history_len`` clicked
    items, oldest first, left-padded with ``n_items``. Batched: ``(num_envs, history_len)``.

    ## Rewards
    The ``reward`` signal (default ``"rating"``) of each served user's click, 0 elsewhere. ``info``:
    ``true_reward`` (num_envs, slate_size) r* of the slate items, ``clicked``, ``clicked_position``
    (-1: none), every signal (0 where unobserved) with ``<signal>_observed``, each with its
    ``_<key>`` mask of the users served this step; ``requesting`` (who asks in the next step) and
    ``round`` (the next round), for everyone.

    ## Starting State
    The world of ``SeedTree(seed)`` at round 0, built exactly as ``simulate`` builds it.

    ## Episode End
    Every sub-environment is truncated after ``horizon`` rounds (default: the scenario's
    ``simulation.n_rounds``); no termination. Autoreset is ``AutoresetMode.NEXT_STEP``: the step
    after the last round ignores the actions and starts a new world (its seed drawn from
    ``self.np_random``), returning its first observation with reward 0.

    ## Arguments
    ``num_envs`` (the population); ``scenario``: a preset name, a TOML path or a
    :class:`ScenarioConfig`; ``horizon`` (rounds); ``history_len`` (default 10); ``slate_size``
    (default 1); ``reward`` (default ``"rating"``); ``max_episode_steps``: replaces ``horizon``
    (``gymnasium.make_vec`` passes it when a registration sets one). Out-of-range values raise
    :class:`recsim_post.errors.ConfigError`; ``step`` before ``reset`` raises
    ``gymnasium.error.ResetNeeded``.

    ## Version History
    * v1: the world engine underneath: one sub-environment per user of one world.
    * v0: independent single-user episodes over a world frozen at its initial popularity.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        scenario: str | ScenarioConfig = "quickstart",
        horizon: int | None = None,
        history_len: int = 10,
        slate_size: int = 1,
        reward: str = "rating",
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if max_episode_steps is not None:
            horizon = max_episode_steps
        cfg, args = env_setup(scenario, users=num_envs, horizon=horizon, history_len=history_len,
                              slate_size=slate_size, num_envs=num_envs, reward=reward)
        check_render_mode(render_mode, self.metadata["render_modes"])
        self.cfg, self.render_mode = cfg, None
        self.horizon, self.history_len, self.slate_size, self.reward = (
            cfg.simulation.n_rounds, args.history_len, args.slate_size, args.reward)
        self.num_envs = N = args.num_envs
        n, K = cfg.catalog.n_items, self.slate_size
        self.n_items = n
        self.single_action_space = spaces.Discrete(n) if K == 1 else spaces.MultiDiscrete(np.full(K, n, dtype=np.int64))
        self.single_observation_space = spaces.MultiDiscrete(np.full(self.history_len, n + 1, dtype=np.int64))
        self.action_space = batch_space(self.single_action_space, N)
        self.observation_space = batch_space(self.single_observation_space, N)
        self.session: Session | None = None
        self._needs_reset = False

    @property
    def world(self):  # noqa: ANN201 - world.World
        return None if self.session is None else self.session.world

    @property
    def current_round(self):  # noqa: ANN201 - world.engine.Round
        """The round the next step serves (its users, random numbers and trend)."""
        return None if self.session is None else self.session.round

    # ------------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """A new world: from ``seed`` (an int), else from a seed drawn from ``self.np_random``."""
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise ConfigError(f"seed = {seed!r} is not allowed: must be an int or None")
            self._np_random, self._np_random_seed = seeding.np_random(int(seed))
        world_seed = int(seed) if seed is not None else int(self.np_random.integers(SEED_MAX + 1))
        self._start(world_seed)
        return self.session.hist.copy(), self._next_info({"seed": world_seed})

    def _start(self, world_seed: int) -> None:
        self.session = Session(self.cfg, world_seed, self.history_len)
        self.session.begin()
        self._needs_reset = False

    def _next_info(self, info: dict[str, Any]) -> dict[str, Any]:
        N = self.num_envs
        requesting = np.zeros(N, dtype=bool)
        s = self.session
        if s is not None and s.round is not None:
            requesting[s.round.users] = True
        info.update(requesting=requesting, _requesting=np.ones(N, dtype=bool),
                    round=np.full(N, -1 if s is None or s.round is None else s.round.t, dtype=np.int64),
                    _round=np.ones(N, dtype=bool))
        return info

    def step(self, actions):  # noqa: ANN001 - gymnasium's signature
        require_episode(self.session is not None, False, self.horizon)
        N = self.num_envs
        slates = self._check_shape(actions)
        if self._needs_reset:  # NEXT_STEP autoreset: the previous step ended the episode
            self._start(int(self.np_random.integers(SEED_MAX + 1)))
            zeros = np.zeros(N)
            return (self.session.hist.copy(), zeros, np.zeros(N, bool), np.zeros(N, bool),
                    self._next_info(self._empty_info()))
        s = self.session
        rnd = s.round
        served = slates[rnd.users]
        check_slates(served, self.n_items, what="env", ids=rnd.users)
        served = served.astype(np.int32)
        resp = s.respond(served)
        s.end(served, resp.choice)
        reward_rows, values, observed = reward_of(resp, self.reward)
        reward = np.zeros(N)
        reward[rnd.users] = reward_rows
        info = self._empty_info()
        mask = np.zeros(N, dtype=bool)
        mask[rnd.users] = True
        info["true_reward"][rnd.users] = resp.rstar
        info["clicked"][rnd.users] = resp.clicked
        info["clicked_position"][rnd.users] = resp.choice
        for name in values:
            info[name][rnd.users] = values[name]
            info[f"{name}_observed"][rnd.users] = observed[name]
        for key in list(info):
            if not key.startswith("_"):
                info[f"_{key}"] = mask.copy()
        done = s.finished
        if done:
            self._needs_reset = True
        else:
            s.begin()
        truncated = np.full(N, done)
        return s.hist.copy(), reward, np.zeros(N, dtype=bool), truncated, self._next_info(info)

    def _empty_info(self) -> dict[str, Any]:
        N, K = self.num_envs, self.slate_size
        info: dict[str, Any] = {
            "true_reward": np.zeros((N, K)), "clicked": np.zeros(N, dtype=bool),
            "clicked_position": np.full(N, -1, dtype=np.int64),
        }
        for name in SIGNALS:
            info[name] = np.zeros(N)
            info[f"{name}_observed"] = np.zeros(N, dtype=bool)
        for key in list(info):
            info[f"_{key}"] = np.zeros(N, dtype=bool)
        return info

    def _check_shape(self, actions: Any) -> np.ndarray:
        a = np.asarray(actions)
        N, K = self.num_envs, self.slate_size
        shape = (N,) if K == 1 else (N, K)
        if a.shape != shape or not np.issubdtype(a.dtype, np.integer):
            raise ActionError(
                f"actions of shape {a.shape} and dtype {a.dtype} are outside the action space: "
                f"must be an integer array of shape {shape}"
            )
        return a.astype(np.int64).reshape(N, K)

    def close_extras(self, **kwargs: Any) -> None:
        pass
