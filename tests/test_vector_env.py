"""The natively batched env: spaces, seeding, rewards, bad actions, autoreset, parity with RecSimEnv."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import recsim_post  # noqa: F401 - registers the ids
from recsim_post.envs import env_id
from recsim_post.envs.recsim_env import RecSimEnv
from recsim_post.envs.vector_env import RecSimVectorEnv
from recsim_post.errors import ActionError

N_ITEMS = 500  # quickstart


def _best_slates(env: RecSimVectorEnv) -> np.ndarray:
    """Each user's top-K items by r* now (a policy that gets clicks)."""
    w = env.world
    r = w.users.theta[env._users] @ w.catalog.vectors.T + w.catalog.quality  # noqa: SLF001
    top = np.argsort(-r, axis=1)[:, : env.slate_size]
    return top[:, 0] if env.slate_size == 1 else top


@pytest.mark.parametrize("k", [1, 5])
def test_spaces_and_shapes(k):
    env = RecSimVectorEnv(num_envs=8, slate_size=k, history_len=6)
    single = gym.spaces.Discrete(N_ITEMS) if k == 1 else gym.spaces.MultiDiscrete([N_ITEMS] * k)
    assert env.single_action_space == single
    assert env.single_observation_space == gym.spaces.MultiDiscrete([N_ITEMS + 1] * 6)
    assert env.action_space.shape == ((8,) if k == 1 else (8, k))
    assert env.observation_space.shape == (8, 6)
    assert env.num_envs == 8 and env.render_mode is None
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    obs, info = env.reset(seed=0)
    assert obs.shape == (8, 6) and (obs == N_ITEMS).all() and info["user_id"].shape == (8,)
    rng = np.random.default_rng(0)  # valid actions: a slate never repeats an item
    slates = np.stack([rng.permutation(N_ITEMS)[:k] for _ in range(8)])
    obs, r, term, trunc, info = env.step(slates[:, 0] if k == 1 else slates)
    assert r.shape == term.shape == trunc.shape == (8,)
    assert info["true_reward"].shape == (8, k) and info["clicked_position"].shape == (8,)
    assert ((info["clicked_position"] >= -1) & (info["clicked_position"] < k)).all()


def _rollout(seed: int, k: int = 3, steps: int = 12):
    env = RecSimVectorEnv(num_envs=16, slate_size=k, horizon=5)
    env.action_space.seed(0)
    out = [env.reset(seed=seed)[0]]
    for _ in range(steps):
        obs, r, _, trunc, info = env.step(env.action_space.sample() if k == 1 else _best_slates(env))
        out.append((obs, r, trunc, info["true_reward"], info["clicked_position"], info["user_id"]))
    return out


def test_same_seed_same_rollout_different_seed_differs():
    a, b, c = _rollout(3), _rollout(3), _rollout(4)
    assert repr(a) == repr(b)
    assert repr(a) != repr(c)


def test_rewards_are_ratings_where_clicked_and_true_reward_by_hand():
    env = RecSimVectorEnv(num_envs=64, slate_size=3)
    env.reset(seed=1)
    w, s = env.world, env.cfg.satiation.strength
    clicks = 0
    for _ in range(4):
        users, sat = env._users.copy(), env._satiation.copy()  # noqa: SLF001 - state before the step
        slates = _best_slates(env)
        _, r, _, _, info = env.step(slates)
        pos = info["clicked_position"]
        clicked = pos >= 0
        clicks += clicked.sum()
        assert np.array_equal(info["clicked"], clicked)
        assert set(np.unique(r[clicked])) <= {1.0, 2.0, 3.0, 4.0, 5.0}
        assert (r[~clicked] == 0).all()
        for b, k in [(0, 0), (5, 2), (63, 1)]:
            i = slates[b, k]
            want = w.users.theta[users[b]] @ w.catalog.vectors[i] + w.catalog.quality[i] - s * sat[b, w.catalog.genre[i]]
            assert info["true_reward"][b, k] == pytest.approx(want, abs=1e-12)
    assert clicks > 0


@pytest.mark.parametrize(
    ("k", "action", "match"),
    [
        (3, lambda a: a.__setitem__((2, 1), a[2, 0]), "env 2: the slate repeats item"),
        (3, lambda a: a.__setitem__((1, 2), N_ITEMS), "env 1: item 500 at slate position 2 is out of range"),
        (1, lambda a: a.__setitem__(3, -1), "env 3: item -1"),
    ],
)
def test_bad_actions_raise_action_error(k, action, match):
    env = RecSimVectorEnv(num_envs=4, slate_size=k)
    env.reset(seed=0)
    a = np.arange(4 * k).reshape(4, k) if k > 1 else np.arange(4)
    action(a)
    with pytest.raises(ActionError, match=match):
        env.step(a)
    with pytest.raises(ActionError, match="shape"):
        env.step(np.zeros((5, k) if k > 1 else 5, dtype=np.int64))
    with pytest.raises(ActionError, match="dtype"):
        env.step(a.astype(np.float64))


def test_next_step_autoreset():
    env = RecSimVectorEnv(num_envs=32, horizon=2)
    obs, info0 = env.reset(seed=2)
    users0 = info0["user_id"]
    for t in range(2):
        obs, r, term, trunc, info = env.step(_best_slates(env))
        assert not term.any()
        assert trunc.all() == (t == 1)
    assert (obs != N_ITEMS).any()  # someone clicked, so the reset below is visible
    obs, r, term, trunc, info = env.step(_best_slates(env))  # the autoreset step: actions ignored
    assert (obs == N_ITEMS).all() and (r == 0).all() and not term.any() and not trunc.any()
    assert not info["_true_reward"].any() and (info["clicked_position"] == -1).all()
    assert (info["user_id"] != users0).any()  # new users were drawn
    for t in range(2):  # the new episode runs its full horizon
        obs, r, term, trunc, info = env.step(_best_slates(env))
        assert info["_true_reward"].all() and trunc.all() == (t == 1)
    assert (r > 0).any()


def test_one_env_matches_recsim_env_exactly():
    """With num_envs = 1 and slate 1 the random draws line up, so the episode is identical."""
    single, vec = RecSimEnv(horizon=40), RecSimVectorEnv(num_envs=1, horizon=40)
    o1, i1 = single.reset(seed=7)
    o2, i2 = vec.reset(seed=7)
    assert i1["user_id"] == i2["user_id"][0] and np.array_equal(o1, o2[0])
    clicks = 0
    for t in range(40):
        a = int(_best_slates(vec)[0]) if t % 4 else t  # mostly good items (clicks), some arbitrary
        x, y = single.step(a), vec.step(np.array([a]))
        assert np.array_equal(x[0], y[0][0]) and x[1] == y[1][0] and x[3] == y[3][0]
        assert x[4]["true_reward"] == y[4]["true_reward"][0, 0] and x[4]["clicked"] == y[4]["clicked"][0]
        clicks += x[4]["clicked"]
    assert clicks > 0


def test_click_rate_agrees_with_single_env_statistically():
    """Fixed item 0 shown to many fresh users: first-step click rates agree within 4 sigma."""
    single = RecSimEnv()
    hits = 0
    n1 = 300
    for s in range(n1):
        single.reset(seed=1000 + s)
        hits += single.step(0)[4]["clicked"]
    vec = RecSimVectorEnv(num_envs=4000)
    vec.reset(seed=0)
    p2 = vec.step(np.zeros(4000, dtype=np.int64))[4]["clicked"].mean()
    p1 = hits / n1
    sigma = np.sqrt(p2 * (1 - p2) / n1 + p2 * (1 - p2) / 4000) + 1e-3
    assert abs(p1 - p2) < 4 * sigma


def test_make_vec_uses_the_vector_entry_point():
    env = gym.make_vec(env_id("quickstart"), num_envs=64, vectorization_mode="vector_entry_point")
    assert isinstance(env.unwrapped, RecSimVectorEnv) and env.num_envs == 64
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 10)
    env = gym.make_vec(env_id("trending"), num_envs=3, vectorization_mode="vector_entry_point", slate_size=4)
    assert env.action_space.shape == (3, 4) and env.unwrapped.cfg.name == env.unwrapped.world.cfg.name


def test_many_users_in_one_call():
    env = RecSimVectorEnv(num_envs=4096, slate_size=5)
    obs, _ = env.reset(seed=0)
    obs, r, term, trunc, info = env.step(_best_slates(env))
    assert obs.shape == (4096, 10) and r.shape == (4096,) and info["true_reward"].shape == (4096, 5)
    assert env.observation_space.contains(obs)


@pytest.mark.parametrize("k", [1, 4])
def test_random_rollout_stays_in_spaces(k):
    env = RecSimVectorEnv(num_envs=8, slate_size=k, horizon=7)
    env.action_space.seed(1)
    obs, _ = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    for _ in range(50):
        a = env.action_space.sample()
        if k > 1:  # random slates may repeat items; use distinct ones
            a = np.stack([np.random.default_rng(int(x)).choice(N_ITEMS, k, replace=False) for x in a[:, 0]])
        obs, r, term, trunc, info = env.step(a)
        assert env.observation_space.contains(obs)
        assert r.dtype == np.float64 and term.dtype == trunc.dtype == np.bool_
