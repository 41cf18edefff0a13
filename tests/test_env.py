"""The single-request Gymnasium environment: registered ids, check_env, seeding, the world
underneath (requests in the logs' order, rewards from the signals, r* by hand), bad actions."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import recsim_post  # noqa: F401 - registers the ids
from recsim_post.envs import env_id
from recsim_post.envs.recsim_env import RecSimEnv
from recsim_post.errors import ActionError, ConfigError
from recsim_post.presets import preset_names

from .conftest import tiny_scenario


@pytest.mark.parametrize("preset", preset_names("envs", large=False))
def test_every_preset_is_registered_and_passes_check_env(preset):
    env = gym.make(env_id(preset))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
    env.close()


def _rollout(env, seed: int, steps: int = 60):
    obs, info = env.reset(seed=seed)
    out = [obs, info]
    rng = np.random.default_rng(0)
    for _ in range(steps):
        obs, r, term, trunc, info = env.step(int(rng.integers(env.action_space.n)))
        out.append((obs.copy(), r, term, trunc, info["true_reward"], info["clicked"], info["user_id"]))
    return out


def test_same_seed_same_rollout_different_seed_differs():
    env = gym.make(env_id("quickstart"))
    a, b, c = _rollout(env, 3), _rollout(env, 3), _rollout(env, 4)
    assert repr(a) == repr(b)
    assert repr(a) != repr(c)


def test_requests_come_round_by_round_in_user_order_and_the_episode_spans_the_horizon():
    env = RecSimEnv(tiny_scenario(), horizon=3)
    obs, info = env.reset(seed=5)
    served, trunc = [], False
    while not trunc:
        expect = (info["next_round"], info["next_user"])
        obs, r, term, trunc, info = env.step(0)
        assert (info["round"], info["user_id"]) == expect
        served.append(expect)
    assert served == sorted(served)  # by round, then by user id
    assert {t for t, _ in served} == {0, 1, 2} and info["next_user"] == -1
    for t in range(3):  # each round, a user asks at most once
        users = [u for rr, u in served if rr == t]
        assert len(users) == len(set(users))


def test_rewards_are_the_chosen_signal_and_info_holds_the_truth():
    """r* of a slate item equals theta . v + q - strength * satiation, by hand, at every request;
    the reward is the rating of a click (0 without one, or when it went missing)."""
    env = RecSimEnv(tiny_scenario(), slate_size=3, horizon=6)
    obs, info = env.reset(seed=0)
    world, strength = env.world, env.cfg.satiation.strength
    rng = np.random.default_rng(1)
    clicks, trunc = 0, False
    while not trunc:
        user = info["next_user"]
        slate = rng.choice(world.n_items, 3, replace=False)
        sat = world.state.satiation[user].copy()  # the round's state: satiation moves only between rounds
        obs, r, term, trunc, info = env.step(slate)
        want = world.users.theta[user] @ world.catalog.vectors[slate].T + world.catalog.quality[slate] \
            - strength * sat[world.catalog.genre[slate]]
        np.testing.assert_allclose(info["true_reward"], want, rtol=1e-12, atol=1e-12)
        if info["clicked"]:
            clicks += 1
            assert 0 <= info["clicked_position"] < 3 and info["observed"]["watch"]
            assert r == (info["rating"] if info["observed"]["rating"] else 0.0) and r in (0, 1, 2, 3, 4, 5)
        else:
            assert r == 0.0 and info["clicked_position"] == -1 and not any(info["observed"].values())
    assert not term and clicks > 0


def test_the_reward_can_be_any_signal():
    for reward in ("watch", "click"):
        env = RecSimEnv(tiny_scenario(), horizon=2, reward=reward)
        env.reset(seed=0)
        trunc, seen = False, 0
        while not trunc:
            _, r, _, trunc, info = env.step(1)
            expected = info["watch"] if reward == "watch" else float(info["clicked"])
            assert r == expected
            seen += info["clicked"]
        assert seen > 0
    with pytest.raises(ConfigError, match="reward = 'likes' is not a feedback signal: must be one of click, rating, watch"):
        RecSimEnv(reward="likes")


def test_histories_grow_with_the_users_clicks():
    env = RecSimEnv(tiny_scenario(), horizon=4)
    obs, info = env.reset(seed=2)
    clicked: dict[int, list[int]] = {}
    trunc = False
    while not trunc:
        user = info["next_user"]
        mine = [i for i in obs if i != env.n_items]
        assert mine == clicked.get(user, [])[-env.history_len:]
        item = int(np.random.default_rng(user).integers(env.n_items))
        obs, r, term, trunc, info = env.step(item)
        if info["clicked"]:
            clicked.setdefault(user, []).append(item)
    assert clicked


def test_slates_of_several_items():
    env = RecSimEnv(tiny_scenario(), slate_size=4, horizon=1)
    env.reset(seed=0)
    assert env.action_space == gym.spaces.MultiDiscrete([60] * 4)
    _, _, _, _, info = env.step(np.array([3, 1, 4, 2]))
    assert info["true_reward"].shape == (4,)
    with pytest.raises(ActionError, match="the slate repeats item 1"):
        env.step(np.array([1, 1, 4, 2]))
    with pytest.raises(ActionError, match="item 60 at slate position 2 is out of range"):
        env.step(np.array([1, 0, 60, 2]))
    with pytest.raises(ActionError, match="must be 4 distinct integers"):
        env.step(np.array([1, 0, 2]))


@pytest.mark.parametrize("action", [-1, 500, 10**9, 2.5, "3", [1, 2]])
def test_action_outside_the_space_is_a_clear_error(action):
    env = gym.make(env_id("quickstart")).unwrapped
    env.reset(seed=0)
    with pytest.raises(ActionError, match=r"outside the action space Discrete\(500\): must be an integer in \[0, 499\]"):
        env.step(action)
