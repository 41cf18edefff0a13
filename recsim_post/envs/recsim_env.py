"""The world as a Gymnasium environment that serves one request per step."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ..errors import ActionError, ConfigError
from ..world.config import SEED_MAX, ScenarioConfig
from .common import Session, check_render_mode, check_slates, env_setup, require_episode, reward_of


class RecSimEnv(gym.Env[np.ndarray, Any]):
    """Serve the world's requests, one per step: the recommender in the logging policy's seat.

    ## Description
    The scenario's whole world runs underneath: every round the active users ask for a slate
    (activity, sessions, arrivals), each is served by the agent in turn, users choose by the
    scenario's choice model and record its feedback signals, and when everyone was served the
    world moves on (popularity feeds on exposure and clicks, shocks, satiation, preference drift).
    It is the round of ``recsim_post.world.engine`` that ``simulate`` runs, so every knob of the
    scenario acts here, and an agent that serves each request with the logger's slate reproduces
    the logs of ``recsim-post simulate`` at the same seed exactly (a test checks it per preset).
    Requests come in the logs' order: round by round, users in increasing id within a round.

    ## Action Space
    ``Discrete(n_items)`` when ``slate_size == 1`` (the default), else ``MultiDiscrete([n_items] *
    slate_size)``: a slate of distinct items, position 0 first (``slate_size =
    cfg.logging.slate_size`` is the logs' setting). Anything else raises
    :class:`recsim_post.errors.ActionError`.

    ## Observation Space
    ``MultiDiscrete([n_items + 1] * history_len)``: the requesting user's last ``history_len``
    clicked items, oldest first, left-padded with ``n_items`` (her public history, as in the logs).

    ## Rewards
    The ``reward`` signal (default ``"rating"``; ``"watch"`` or ``"click"`` too) of the click, 0
    without a click or when the signal went missing. ``info`` holds the ground truth
    ``true_reward`` (r* of every slate item at the round's start), ``clicked``,
    ``clicked_position`` (-1: none), every signal (``rating``, ``watch``: 0 where unobserved) with
    ``observed`` (a dict of bools), ``user_id`` and ``round`` of the request just served; after
    ``reset`` and ``step`` alike, ``next_user`` and ``next_round`` name the request the
    observation belongs to.

    ## Starting State
    The world of ``SeedTree(seed)`` at round 0, built exactly as ``simulate`` builds it: nobody has
    clicked, so every history is empty.

    ## Episode End
    Truncation once every request of ``horizon`` rounds (default: the scenario's
    ``simulation.n_rounds``) was served; no termination.

    ## Arguments
    ``scenario``: a preset name, a TOML path or a :class:`ScenarioConfig`; ``horizon`` (rounds);
    ``history_len`` (default 10); ``slate_size`` (default 1); ``reward`` (default ``"rating"``);
    ``render_mode`` (``None`` or ``"ansi"``). Out-of-range values raise
    :class:`recsim_post.errors.ConfigError`; ``step`` before ``reset`` or after truncation raises
    ``gymnasium.error.ResetNeeded``.

    ## Seeding
    ``reset(seed=s)`` builds the world and every stream from ``s``: ``reset(seed=cfg.seed)`` is the
    preset's logged world. ``reset()`` starts a new world from a seed drawn from ``self.np_random``.

    ## Version History
    * v1: the world engine underneath: requests of the whole population, trends that move, every
      scenario knob (sessions, drift, missing ratings, ...), the logs reproduced exactly.
    * v0: one user per episode over a world frozen at its initial popularity.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        scenario: str | ScenarioConfig = "quickstart",
        horizon: int | None = None,
        history_len: int = 10,
        slate_size: int = 1,
        reward: str = "rating",
        render_mode: str | None = None,
    ) -> None:
        cfg, args = env_setup(scenario, horizon=horizon, history_len=history_len, slate_size=slate_size, reward=reward)
        check_render_mode(render_mode, self.metadata["render_modes"])
        self.cfg, self.render_mode = cfg, render_mode
        self.horizon, self.history_len, self.slate_size, self.reward = (
            cfg.simulation.n_rounds, args.history_len, args.slate_size, args.reward)
        n = cfg.catalog.n_items
        self.n_items = n
        self.action_space = spaces.Discrete(n) if self.slate_size == 1 else spaces.MultiDiscrete(
            np.full(self.slate_size, n, dtype=np.int64))
        self.observation_space = spaces.MultiDiscrete(np.full(self.history_len, n + 1, dtype=np.int64))
        self.session: Session | None = None
        self._row = 0  # the next request of the current round
        self._slates: np.ndarray | None = None  # the round's slates, filled request by request
        self._choice: np.ndarray | None = None
        self._ended = False
        self._last: dict[str, Any] = {}

    @property
    def world(self):  # noqa: ANN201 - world.World
        """The world of the current episode (None before the first reset)."""
        return None if self.session is None else self.session.world

    @property
    def current_round(self):  # noqa: ANN201 - world.engine.Round
        """The round being served (its users, random numbers and trend)."""
        return None if self.session is None else self.session.round

    # ------------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        world_seed = seed if seed is not None else int(self.np_random.integers(SEED_MAX + 1))
        self.session = Session(self.cfg, world_seed, self.history_len)
        self._ended = False
        self._last = {}
        if not self._next_request():
            raise ConfigError("no user asks for a slate in the whole episode: raise users.activity or the horizon")
        return self._obs(), self._next_info({"seed": world_seed})

    def _next_request(self) -> bool:
        """Move to the next request, ending and beginning rounds as needed; False at the episode's end."""
        s = self.session
        assert s is not None
        while True:
            if s.round is not None and self._row < s.round.n:
                return True
            if s.round is not None:  # everyone of this round was served
                s.end(self._slates, self._choice)
            if s.finished:
                return False
            rnd = s.begin()
            self._row = 0
            self._slates = np.zeros((rnd.n, self.slate_size), dtype=np.int32)
            self._choice = np.full(rnd.n, -1, dtype=np.int32)

    def _obs(self) -> np.ndarray:
        s = self.session
        assert s is not None and s.round is not None
        return s.hist[s.round.users[self._row]].copy()

    def _next_info(self, info: dict[str, Any]) -> dict[str, Any]:
        s = self.session
        if s is not None and s.round is not None and self._row < s.round.n:
            info.update(next_user=int(s.round.users[self._row]), next_round=int(s.round.t))
        else:
            info.update(next_user=-1, next_round=-1)
        return info

    def step(self, action):  # noqa: ANN001 - gymnasium's signature
        require_episode(self.session is not None, self._ended, self.horizon)
        s = self.session
        slate = self._check_action(action)
        b = self._row
        rnd = s.round
        resp = s.respond(slate[None, :], rows=np.array([b]))
        self._slates[b], self._choice[b] = slate, resp.choice[0]
        reward, values, observed = reward_of(resp, self.reward)
        info = {
            "user_id": int(rnd.users[b]), "round": int(rnd.t),
            "true_reward": resp.rstar[0].copy(),
            "clicked": bool(resp.clicked[0]), "clicked_position": int(resp.choice[0]),
            **{name: float(v[0]) for name, v in values.items()},
            "observed": {name: bool(v[0]) for name, v in observed.items()},
        }
        self._last = dict(info, slate=slate)
        self._row += 1
        more = self._next_request()
        self._ended = not more
        obs = self._obs() if more else np.full(self.history_len, self.n_items, dtype=np.int64)
        return obs, float(reward[0]), False, not more, self._next_info(info)

    def _check_action(self, action: Any) -> np.ndarray:
        a = np.asarray(action)
        n, K = self.n_items, self.slate_size
        if K == 1:
            if a.shape != () or not np.issubdtype(a.dtype, np.integer) or not self.action_space.contains(a.astype(np.int64)):
                raise ActionError(
                    f"action {action!r} is outside the action space Discrete({n}): must be an integer in [0, {n - 1}]"
                )
            return a.astype(np.int32).reshape(1)
        if a.shape != (K,) or not np.issubdtype(a.dtype, np.integer):
            raise ActionError(f"action of shape {a.shape} and dtype {a.dtype} is outside the action space: "
                              f"must be {K} distinct integers in [0, {n - 1}]")
        check_slates(a.astype(np.int64)[None, :], n, what="the slate of user", ids=self.session.round.users[self._row:])
        return a.astype(np.int32)

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        if not self._last:
            return "no request served yet"
        x = self._last
        what = "no click" if not x["clicked"] else (
            f"clicked position {x['clicked_position']}"
            + (f", rated {x['rating']:.0f}" if x["observed"].get("rating") else ", rating missing"))
        return (f"round {x['round']} user {x['user_id']}: slate {x['slate'].tolist()} -> {what} "
                f"(true reward of the slate's top item {x['true_reward'][0]:+.2f})")
