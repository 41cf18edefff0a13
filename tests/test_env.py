"""The Gymnasium environment: registered ids, check_env, seeding, rewards, bad actions."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import recsim_post  # noqa: F401 - registers the ids
from recsim_post.envs import env_id
from recsim_post.errors import ActionError
from recsim_post.presets import preset_names


@pytest.mark.parametrize("preset", preset_names("envs"))
def test_every_preset_is_registered_and_passes_check_env(preset):
    env = gym.make(env_id(preset))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
    env.close()


def _rollout(env, seed: int, steps: int = 30):
    obs, _ = env.reset(seed=seed)
    out = [obs]
    rng = np.random.default_rng(0)
    for _ in range(steps):
        obs, r, term, trunc, info = env.step(int(rng.integers(env.action_space.n)))
        out.append((obs.copy(), r, term, trunc, info["true_reward"], info["clicked"]))
    return out


def test_same_seed_same_rollout_different_seed_differs():
    env = gym.make(env_id("quickstart"))
    a, b, c = _rollout(env, 3), _rollout(env, 3), _rollout(env, 4)
    assert repr(a) == repr(b)
    assert repr(a) != repr(c)


def test_reward_is_observed_feedback_and_info_has_truth():
    env = gym.make(env_id("quickstart"), horizon=400)
    obs, info = env.reset(seed=0)
    user = info["user_id"]
    world = env.unwrapped.world
    clicks = 0
    for t in range(400):
        item = t % world.n_items
        expected = world.users.theta[user] @ world.catalog.vectors[item] + world.catalog.quality[item] \
            - env.unwrapped.cfg.satiation.strength * env.unwrapped._satiation[0, world.catalog.genre[item]]
        obs, r, term, trunc, info = env.step(item)
        assert info["true_reward"] == pytest.approx(expected)
        if info["clicked"]:
            clicks += 1
            assert r in (1.0, 2.0, 3.0, 4.0, 5.0) and obs[-1] == item
        else:
            assert r == 0.0
    assert trunc and not term and clicks > 0


def test_episode_truncates_at_horizon():
    env = gym.make(env_id("quickstart"), horizon=3)
    env.reset(seed=1)
    flags = [env.step(0)[3] for _ in range(3)]
    assert flags == [False, False, True]


@pytest.mark.parametrize("action", [-1, 500, 10**9, 2.5, "3", [1, 2]])
def test_action_outside_the_space_is_a_clear_error(action):
    env = gym.make(env_id("quickstart")).unwrapped
    env.reset(seed=0)
    with pytest.raises(ActionError, match=r"outside the action space Discrete\(500\): must be an integer in \[0, 499\]"):
        env.step(action)
