"""A real outside client: Stable-Baselines3 trains PPO on the single-request environment.

Optional dependency (the ``rl`` extra, included in ``dev``): skipped when stable-baselines3 is absent.
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

import recsim_post  # noqa: F401 - registers the ids

from .conftest import require, tiny_scenario

sb3 = require("stable_baselines3")


@pytest.mark.slow
def test_sb3_ppo_trains_on_the_single_request_env():
    from stable_baselines3.common.env_checker import check_env as sb3_check_env
    from stable_baselines3.common.monitor import Monitor

    env = gym.make("RecSimPost/quickstart-v0", scenario=tiny_scenario(), horizon=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(env.unwrapped, warn=True)
    env = Monitor(env)
    model = sb3.PPO("MlpPolicy", env, n_steps=256, batch_size=64, n_epochs=2, seed=0, device="cpu", verbose=0)
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default makes a folder in /tmp per run
    model.learn(total_timesteps=2048)
    lengths, returns = env.get_episode_lengths(), env.get_episode_rewards()
    # every episode SB3 saw served every request of the 3 rounds (80 users, activity 0.8: ~190 of
    # them), and its return is a sum of observed 0-5 ratings
    assert len(lengths) >= 5 and all(120 <= n <= 240 for n in lengths)
    assert all(0 <= r <= 5 * n for r, n in zip(returns, lengths)) and sum(returns) > 0
    obs, _ = env.reset(seed=1)
    for _ in range(20):
        action, _ = model.predict(obs, deterministic=True)
        assert env.action_space.contains(int(action))
        obs, reward, term, trunc, info = env.step(int(action))
        assert np.isfinite(info["true_reward"]).all()
