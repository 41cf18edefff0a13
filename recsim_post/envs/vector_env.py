"""A natively batched version of :class:`~.recsim_env.RecSimEnv`: many users, one kernel call a step."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from ..errors import ActionError
from ..world import kernels
from ..world.config import ScenarioConfig
from ..world.world import World
from .common import check_render_mode, env_setup, require_episode

_RESCALE_BELOW = 1e-150  # renormalise a row's lazily decayed shocks before the scale underflows


class RecSimVectorEnv(gym.vector.VectorEnv):
    """Recommend slates to ``num_envs`` simulated users at once (a hand-vectorised ``RecSimEnv``).

    ## Description
    Each sub-environment is one :class:`~.recsim_env.RecSimEnv` episode: a user drawn from the
    population at reset, satiation that decays every step and rises by one in the clicked item's
    genre, exogenous shocks that arrive and decay independently per sub-environment, and item
    popularity fixed at the world's initial state. All sub-environments share one world (built
    from the scenario and its seed). A step makes one :func:`kernels.choose_and_rate` call for the
    whole batch and updates the state with numpy; there is no Python loop over sub-environments.

    ## Action Space
    Single: ``Discrete(n_items)`` when ``slate_size == 1``, else ``MultiDiscrete([n_items] *
    slate_size)`` (a slate of distinct items, position 0 first). Batched: ``batch_space`` of it,
    i.e. an int array of shape ``(num_envs,)`` or ``(num_envs, slate_size)``. An action of the
    wrong shape or dtype, an item out of range or a slate that repeats an item raises
    :class:`recsim_post.errors.ActionError` (also for sub-environments that are autoresetting,
    whose actions are otherwise ignored).

    ## Observation Space
    Single: ``MultiDiscrete([n_items + 1] * history_len)``, the user's last ``history_len``
    clicked items, oldest first, left-padded with ``n_items``. Batched: ``(num_envs, history_len)``.

    ## Rewards
    The observed feedback: the 1-5 rating if the user clicked a slate item, else 0. The user
    chooses among the slate and a no-click option by a multinomial logit on the engagement
    utility minus the position penalty ``position_bias * log2(1 + k)``.
    ``info["true_reward"]`` (num_envs, slate_size) holds r*(u, i, t) = theta_u . v_i + q_i -
    satiation.strength * S_u,genre(i) of every slate item; ``info["clicked_position"]`` (num_envs,)
    the clicked slot or -1; ``info["clicked"]``, ``info["rating"]`` (0 without a click) and
    ``info["user_id"]``. Following Gymnasium's convention, ``info["_<key>"]`` is False for
    sub-environments that were autoreset in this step (their values are 0, or -1 for the position).

    ## Starting State
    Per sub-environment: a user drawn uniformly from the population, no satiation, no shocks,
    an empty history.

    ## Episode End
    Truncation after ``horizon`` steps; no termination. Autoreset is ``AutoresetMode.NEXT_STEP``:
    the step after a sub-environment's episode ended ignores its action, resets it (drawing a new
    user) and returns its reset observation with reward 0 and terminated = truncated = False.

    ## Arguments
    ``num_envs``; ``scenario``: a preset name, a TOML path or a :class:`ScenarioConfig`;
    ``horizon`` (default 50); ``history_len`` (default 10); ``slate_size`` (default 1);
    ``max_episode_steps``: if given, replaces ``horizon`` (``gymnasium.make_vec`` passes it when a
    registration sets one). Whole numbers in the ranges of :class:`~.common.EnvArgs`, the slate at most
    the catalogue, and the world with ``num_envs`` users in memory, else
    :class:`recsim_post.errors.ConfigError`. ``step`` before the first ``reset`` raises
    ``gymnasium.error.ResetNeeded``.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        scenario: str | ScenarioConfig = "quickstart",
        horizon: int = 50,
        history_len: int = 10,
        slate_size: int = 1,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if max_episode_steps is not None:
            horizon = max_episode_steps
        cfg, args = env_setup(
            scenario, horizon=horizon, history_len=history_len, slate_size=slate_size, num_envs=num_envs
        )
        check_render_mode(render_mode, self.metadata["render_modes"])
        self.cfg, self.horizon, self.history_len, self.slate_size = cfg, args.horizon, args.history_len, args.slate_size
        self.num_envs, self.render_mode = args.num_envs, None
        self.world = w = World.create(cfg)
        n, N, K = w.n_items, self.num_envs, self.slate_size
        self.single_action_space = (
            spaces.Discrete(n) if K == 1 else spaces.MultiDiscrete(np.full(K, n, dtype=np.int64))
        )
        self.single_observation_space = spaces.MultiDiscrete(np.full(self.history_len, n + 1, dtype=np.int64))
        self.action_space = batch_space(self.single_action_space, N)
        self.observation_space = batch_space(self.single_observation_space, N)

        self._trend0 = w.trend() - w.state.shock  # popularity part only; shocks are per sub-env
        self._position_penalty = cfg.choice.position_bias * np.log2(1.0 + np.arange(K, dtype=np.float64))
        self._virtual_slates = np.arange(N * K, dtype=np.int32).reshape(N, K)
        # per-sub-env state
        self._users = np.zeros(N, dtype=np.int64)
        self._t = np.zeros(N, dtype=np.int64)
        self._satiation = np.zeros((N, cfg.catalog.n_genres))
        # shocks, decayed lazily: actual[b, i] = _shock_raw[b, i] * _shock_scale[b]
        self._shock_raw = np.zeros((N, n))
        self._shock_scale = np.ones(N)
        self._history = np.full((N, self.history_len), n, dtype=np.int64)
        self._needs_reset = np.zeros(N, dtype=bool)
        self._started = False

    # ------------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset every sub-environment (or those in ``options["reset_mask"]``).

        ``seed`` (an int) seeds ``self.np_random``; all later randomness is drawn from it.
        """
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise ActionError(f"seed = {seed!r} is not allowed: must be an int or None")
            self._np_random, self._np_random_seed = seeding.np_random(int(seed))
        mask = np.ones(self.num_envs, dtype=bool)
        if options and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"])
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
                raise ActionError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},)")
            if not self._started and not mask.all():
                raise ActionError("options['reset_mask'] must select every sub-env on the first reset")
        self._reset_rows(mask)
        self._started = True
        return self._history.copy(), {"user_id": self._users.copy(), "_user_id": mask.copy()}

    def _reset_rows(self, mask: np.ndarray) -> None:
        m = int(mask.sum())
        if m == 0:
            return
        self._users[mask] = self.np_random.integers(self.world.n_users, size=m)
        self._t[mask] = 0
        self._satiation[mask] = 0.0
        self._shock_raw[mask] = 0.0
        self._shock_scale[mask] = 1.0
        self._history[mask] = self.world.n_items
        self._needs_reset[mask] = False

    def step(self, actions):  # noqa: ANN001 - gymnasium's signature
        require_episode(self._started, False, self.horizon)  # ended sub-envs autoreset instead
        slates = self._check_actions(actions)  # (N, K) int64
        w, rng, cfg = self.world, self.np_random, self.cfg
        N, n = self.num_envs, w.n_items
        rows = np.arange(N)
        active = ~self._needs_reset

        # one kernel call over a "virtual catalogue" of the N*K shown items, so each sub-env sees
        # its own shocks in the trend (the kernel takes one trend per item, not per user)
        flat = slates.ravel()
        shock = self._shock_raw[rows[:, None], slates] * self._shock_scale[:, None]
        cat = w.catalog
        u_choice, z_noise, u_flip = rng.random(N), rng.standard_normal(N), rng.random(N)
        choice, rating, rstar, _ = kernels.choose_and_rate(
            self._virtual_slates, w.users.theta[self._users], w.users.susceptibility[self._users],
            self._satiation, cat.vectors[flat], cat.quality[flat], cat.hype[flat], cat.genre[flat],
            (self._trend0[slates] + shock).ravel(), w.choice_params, self._position_penalty,
            u_choice, z_noise, u_flip,
        )
        clicked = (choice >= 0) & active
        item = slates[rows, np.maximum(choice, 0)]

        # the world moves on: satiation decays and grows on a click, shocks decay and arrive
        t = cfg.trends
        self._satiation *= cfg.satiation.decay
        self._shock_scale *= t.shock_decay
        small = self._shock_scale < _RESCALE_BELOW
        if small.any():
            self._shock_raw[small] *= self._shock_scale[small, None]
            self._shock_scale[small] = 1.0
        arrive = rng.random(N) < t.shock_rate
        where = rng.integers(n, size=int(arrive.sum()))
        self._shock_raw[arrive, where] += t.shock_size / self._shock_scale[arrive]
        c = np.flatnonzero(clicked)
        self._satiation[c, cat.genre[item[c]]] += 1.0
        self._history[c, :-1] = self._history[c, 1:]
        self._history[c, -1] = item[c]
        self._t[active] += 1

        reward = np.where(clicked, rating, 0.0).astype(np.float64)
        rstar = np.where(active[:, None], rstar, 0.0)
        clicked_position = np.where(clicked, choice, -1).astype(np.int64)
        terminated = np.zeros(N, dtype=bool)
        truncated = active & (self._t >= self.horizon)

        # NEXT_STEP autoreset: sub-envs whose episode ended last step start a new one now
        resetting = self._needs_reset.copy()
        self._reset_rows(resetting)
        self._needs_reset = truncated | terminated
        info = {
            "true_reward": rstar, "_true_reward": active.copy(),
            "clicked_position": clicked_position, "_clicked_position": active.copy(),
            "clicked": clicked, "_clicked": active.copy(),
            "rating": reward.copy(), "_rating": active.copy(),
            "user_id": self._users.copy(), "_user_id": np.ones(N, dtype=bool),
        }
        return self._history.copy(), reward, terminated, truncated, info

    def _check_actions(self, actions: Any) -> np.ndarray:
        a = np.asarray(actions)
        N, K, n = self.num_envs, self.slate_size, self.world.n_items
        shape = (N,) if K == 1 else (N, K)
        if a.shape != shape or not np.issubdtype(a.dtype, np.integer):
            raise ActionError(
                f"actions of shape {a.shape} and dtype {a.dtype} are outside the action space: "
                f"must be an integer array of shape {shape}"
            )
        a = a.astype(np.int64).reshape(N, K)
        bad = (a < 0) | (a >= n)
        if bad.any():
            b, k = np.argwhere(bad)[0]
            raise ActionError(f"env {b}: item {a[b, k]} at slate position {k} is out of range: must be in [0, {n - 1}]")
        if K > 1:
            s = np.sort(a, axis=1)
            dup = s[:, 1:] == s[:, :-1]
            if dup.any():
                b, k = np.argwhere(dup)[0]
                raise ActionError(f"env {b}: the slate repeats item {s[b, k]}: a slate's items must be distinct")
        return a

    def close_extras(self, **kwargs: Any) -> None:
        pass
