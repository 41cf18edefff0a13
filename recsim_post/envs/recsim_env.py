"""A single-user recommendation environment over a scenario's world."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ..errors import ActionError
from ..world import kernels
from ..world.config import ScenarioConfig
from ..world.world import World
from .common import check_render_mode, env_setup, require_episode


class RecSimEnv(gym.Env[np.ndarray, np.int64]):
    """Recommend one item at a time to one simulated user.

    ## Description
    The world (catalogue, user population, hype) is built from the scenario and its seed, so every
    episode happens in the same world. At ``reset`` a user is drawn from the population; at each
    step the agent recommends an item, the user clicks it or not (multinomial logit against a
    no-click option, on an engagement utility that mixes the true reward with trend pull and hype)
    and rates what they clicked with the scenario's feedback noise. Clicking raises the user's
    satiation for that genre, which decays each step. Item popularity stays at the world's initial
    state (one user does not move a population's trends); exogenous shocks arrive and decay as in
    the scenario.

    ## Action Space
    ``Discrete(n_items)``: the item to recommend. Anything else raises
    :class:`recsim_post.errors.ActionError`.

    ## Observation Space
    ``MultiDiscrete([n_items + 1] * history_len)``: the user's last ``history_len`` clicked items,
    oldest first, left-padded with ``n_items`` (meaning "no click yet").

    ## Rewards
    The observed feedback: the 1-5 rating if the user clicked, else 0. The ground truth
    r*(u, item, t) = theta_u . v_item + q_item - satiation.strength * S_u,genre(item) is in
    ``info["true_reward"]`` at every step, clicked or not.

    ## Starting State
    A user drawn uniformly from the population, with no satiation and an empty history.

    ## Episode End
    Truncation after ``horizon`` steps; there is no termination. ``step`` before the first
    ``reset``, or after truncation without a ``reset``, raises ``gymnasium.error.ResetNeeded``.

    ## Arguments
    ``scenario``: a preset name, a TOML path or a :class:`ScenarioConfig`;
    ``horizon`` (default 50); ``history_len`` (default 10): whole numbers in the ranges of
    :class:`~.common.EnvArgs`, else :class:`recsim_post.errors.ConfigError`.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        scenario: str | ScenarioConfig = "quickstart",
        horizon: int = 50,
        history_len: int = 10,
        render_mode: str | None = None,
    ) -> None:
        cfg, args = env_setup(scenario, horizon=horizon, history_len=history_len)
        check_render_mode(render_mode, self.metadata["render_modes"])
        horizon, history_len = args.horizon, args.history_len
        self.cfg, self.horizon, self.history_len, self.render_mode = cfg, horizon, history_len, render_mode
        self.world = World.create(cfg)
        n = self.world.n_items
        self.action_space = spaces.Discrete(n)
        self.observation_space = spaces.MultiDiscrete(np.full(history_len, n + 1, dtype=np.int64))
        self._trend0 = self.world.trend() - self.world.state.shock
        self._user = 0
        self._t = 0
        self._satiation = np.zeros((1, cfg.catalog.n_genres))
        self._shock = np.zeros(n)
        self._history = np.full(history_len, n, dtype=np.int64)
        self._last: dict[str, Any] = {}
        self._started = self._ended = False  # step() needs a running episode

    def _obs(self) -> np.ndarray:
        return self._history.copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._user = int(self.np_random.integers(self.world.n_users))
        self._t = 0
        self._satiation[:] = 0.0
        self._shock[:] = 0.0
        self._history[:] = self.world.n_items
        self._last = {}
        self._started, self._ended = True, False
        return self._obs(), {"user_id": self._user}

    def step(self, action):  # noqa: ANN001 - gymnasium's signature
        require_episode(self._started, self._ended, self.horizon)
        item = self._check_action(action)
        w, rng = self.world, self.np_random
        u = np.array([self._user])
        choice, rating, rstar, _ = kernels.choose_and_rate(
            np.array([[item]], dtype=np.int32), w.users.theta[u], w.users.susceptibility[u],
            self._satiation, w.catalog.vectors, w.catalog.quality, w.catalog.hype, w.catalog.genre,
            self._trend0 + self._shock, w.choice_params, w.position_penalty,
            rng.random(1), rng.standard_normal(1), rng.random(1),
        )
        clicked = bool(choice[0] >= 0)
        # the world moves on: satiation decays and grows on a click, shocks decay and arrive
        t = self.cfg.trends
        self._satiation *= self.cfg.satiation.decay
        self._shock *= t.shock_decay
        if rng.random() < t.shock_rate:
            self._shock[rng.integers(w.n_items)] += t.shock_size
        if clicked:
            self._satiation[0, w.catalog.genre[item]] += 1.0
            self._history = np.roll(self._history, -1)
            self._history[-1] = item
        self._t += 1
        reward = float(rating[0]) if clicked else 0.0
        info = {
            "true_reward": float(rstar[0, 0]),
            "clicked": clicked,
            "rating": reward,  # 0 when there was no click (NaN would break equality checks)
            "user_id": self._user,
        }
        self._last = dict(info, item=item)
        self._ended = self._t >= self.horizon
        return self._obs(), reward, False, self._ended, info

    def _check_action(self, action: Any) -> int:
        a = np.asarray(action)
        if a.shape != () or not np.issubdtype(a.dtype, np.integer) or not self.action_space.contains(a.astype(np.int64)):
            raise ActionError(
                f"action {action!r} is outside the action space Discrete({self.world.n_items}): "
                f"must be an integer in [0, {self.world.n_items - 1}]"
            )
        return int(a)

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        if not self._last:
            return f"user {self._user}: no recommendation yet"
        x = self._last
        what = f"clicked, rated {x['rating']:.0f}" if x["clicked"] else "no click"
        return f"t={self._t} user {self._user}: item {x['item']} -> {what} (true reward {x['true_reward']:+.2f})"
