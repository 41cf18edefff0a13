"""The natively batched env (one sub-env per user, one round a step): spaces, seeding, rewards,
bad actions, autoreset, and agreement with the single-request env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import recsim_post  # noqa: F401 - registers the ids
from recsim_post.envs import env_id
from recsim_post.envs.recsim_env import RecSimEnv
from recsim_post.envs.vector_env import RecSimVectorEnv
from recsim_post.errors import ActionError
from recsim_post.world.config import UserConfig

from .conftest import tiny_scenario

N_ITEMS = 60  # the tiny scenario


def _best_slates(env: RecSimVectorEnv) -> np.ndarray:
    """Each user's top-K items by r* now (a policy that gets clicks)."""
    w = env.world
    r = w.true_reward(np.arange(env.num_envs))
    top = np.argsort(-r, axis=1)[:, : env.slate_size]
    return top[:, 0] if env.slate_size == 1 else top


@pytest.mark.parametrize("k", [1, 5])
def test_spaces_and_shapes(k):
    env = RecSimVectorEnv(num_envs=8, scenario=tiny_scenario(), slate_size=k, history_len=6)
    single = gym.spaces.Discrete(N_ITEMS) if k == 1 else gym.spaces.MultiDiscrete([N_ITEMS] * k)
    assert env.single_action_space == single
    assert env.single_observation_space == gym.spaces.MultiDiscrete([N_ITEMS + 1] * 6)
    assert env.action_space.shape == ((8,) if k == 1 else (8, k))
    assert env.observation_space.shape == (8, 6)
    assert env.num_envs == 8 and env.render_mode is None and env.world is None
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    obs, info = env.reset(seed=0)
    assert env.world.n_users == 8  # the world has one user per sub-env
    assert obs.shape == (8, 6) and (obs == N_ITEMS).all() and info["requesting"].shape == (8,)
    rng = np.random.default_rng(0)  # valid actions: a slate never repeats an item
    slates = np.stack([rng.permutation(N_ITEMS)[:k] for _ in range(8)])
    obs, r, term, trunc, info = env.step(slates[:, 0] if k == 1 else slates)
    assert r.shape == term.shape == trunc.shape == (8,)
    assert info["true_reward"].shape == (8, k) and info["clicked_position"].shape == (8,)
    assert ((info["clicked_position"] >= -1) & (info["clicked_position"] < k)).all()


def _rollout(seed: int, k: int = 3, steps: int = 12):
    env = RecSimVectorEnv(num_envs=16, scenario=tiny_scenario(), slate_size=k, horizon=5)
    out = [env.reset(seed=seed)[0]]
    for _ in range(steps):
        obs, r, _, trunc, info = env.step(_best_slates(env))
        out.append((obs, r, trunc, info["true_reward"], info["clicked_position"], info["requesting"]))
    return out


def test_same_seed_same_rollout_different_seed_differs():
    a, b, c = _rollout(3), _rollout(3), _rollout(4)
    assert repr(a) == repr(b)
    assert repr(a) != repr(c)


def test_only_requesting_users_are_served_and_rewards_are_their_ratings():
    env = RecSimVectorEnv(num_envs=80, scenario=tiny_scenario(), slate_size=3)
    _, info = env.reset(seed=1)
    w, s = env.world, env.cfg.satiation.strength
    clicks = 0
    for _ in range(4):
        asking = info["requesting"].copy()
        assert 0 < asking.sum() < 80  # activity 0.8: some users sit a round out
        sat = w.state.satiation.copy()
        slates = _best_slates(env)
        _, r, _, _, info = env.step(slates)
        served = info["_true_reward"]
        np.testing.assert_array_equal(served, asking)
        pos = info["clicked_position"]
        clicked = pos >= 0
        assert not clicked[~asking].any() and (r[~asking] == 0).all()
        clicks += clicked.sum()
        np.testing.assert_array_equal(r[clicked], np.where(info["rating_observed"][clicked], info["rating"][clicked], 0))
        assert set(np.unique(r[clicked])) <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0} and (r[asking & ~clicked] == 0).all()
        for b in np.flatnonzero(asking)[:5]:
            for k in range(3):
                i = slates[b, k]
                want = w.users.theta[b] @ w.catalog.vectors[i] + w.catalog.quality[i] - s * sat[b, w.catalog.genre[i]]
                assert info["true_reward"][b, k] == pytest.approx(want, abs=1e-12)
    assert clicks > 0


@pytest.mark.parametrize(
    ("k", "action", "match"),
    [
        (3, lambda a: a.__setitem__((2, 1), a[2, 0]), "env 2: the slate repeats item"),
        (3, lambda a: a.__setitem__((1, 2), N_ITEMS), "env 1: item 60 at slate position 2 is out of range"),
        (1, lambda a: a.__setitem__(3, -1), "env 3: item -1"),
    ],
)
def test_bad_actions_raise_action_error(k, action, match):
    env = RecSimVectorEnv(num_envs=4, scenario=tiny_scenario(users=UserConfig(n_users=4, activity=1.0)), slate_size=k)
    env.reset(seed=0)
    a = np.arange(4 * k).reshape(4, k) if k > 1 else np.arange(4)
    action(a)
    with pytest.raises(ActionError, match=match):
        env.step(a)
    with pytest.raises(ActionError, match="shape"):
        env.step(np.zeros((5, k) if k > 1 else 5, dtype=np.int64))
    with pytest.raises(ActionError, match="dtype"):
        env.step(a.astype(np.float64))


def test_actions_of_users_who_do_not_ask_are_ignored():
    """An invalid slate for a user who did not ask raises nothing and changes nothing: the round,
    the next observations and the world's state are those of the same step with valid slates."""
    runs = []
    for junk in (True, False):
        env = RecSimVectorEnv(num_envs=80, scenario=tiny_scenario(), slate_size=2)
        _, info = env.reset(seed=3)
        asking = info["requesting"]
        assert 0 < asking.sum() < 80
        a = _best_slates(env)
        if junk:
            a[~asking] = 0  # repeats item 0: invalid, but nobody asked
        obs, r, _, _, info = env.step(a)
        runs.append((obs, r, info["clicked_position"], info["true_reward"][asking], env.world.state.satiation.copy(),
                     env.world.state.popularity.copy()))
    for got, want in zip(*runs):
        np.testing.assert_array_equal(got, want)


def test_next_step_autoreset():
    env = RecSimVectorEnv(num_envs=32, scenario=tiny_scenario(), horizon=2)
    obs, info0 = env.reset(seed=2)
    for t in range(2):
        obs, r, term, trunc, info = env.step(_best_slates(env))
        assert not term.any()
        assert trunc.all() == (t == 1)
    assert (obs != N_ITEMS).any()  # someone clicked, so the reset below is visible
    first_world = env.world
    obs, r, term, trunc, info = env.step(_best_slates(env))  # the autoreset step: actions ignored
    assert (obs == N_ITEMS).all() and (r == 0).all() and not term.any() and not trunc.any()
    assert not info["_true_reward"].any() and (info["clicked_position"] == -1).all()
    assert env.world is not first_world and (info["round"] == 0).all()
    for t in range(2):  # the new episode runs its full horizon
        obs, r, term, trunc, info = env.step(_best_slates(env))
        assert info["_true_reward"].any() and trunc.all() == (t == 1)
    assert (r > 0).any()


def test_vector_and_single_env_serve_the_same_world():
    """The same seed and slates: the vector env's round equals the single env's requests of it."""
    cfg = tiny_scenario()
    single = RecSimEnv(cfg, slate_size=2, horizon=3)
    vec = RecSimVectorEnv(num_envs=cfg.users.n_users, scenario=cfg, slate_size=2, horizon=3)
    _, info_s = single.reset(seed=7)
    _, info_v = vec.reset(seed=7)
    for _ in range(3):
        asking = np.flatnonzero(info_v["requesting"])
        slates = _best_slates(vec)
        rows = []
        for u in asking:
            assert info_s["next_user"] == u
            _, r, _, _, info_s = single.step(slates[u])
            rows.append((r, info_s["clicked_position"], info_s["true_reward"].tolist()))
        _, r, _, _, info_v = vec.step(slates)
        assert rows == [(r[u], info_v["clicked_position"][u], info_v["true_reward"][u].tolist()) for u in asking]


def test_make_vec_uses_the_vector_entry_point():
    env = gym.make_vec(env_id("quickstart"), num_envs=64, vectorization_mode="vector_entry_point")
    assert isinstance(env.unwrapped, RecSimVectorEnv) and env.num_envs == 64
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 10) and env.unwrapped.world.n_users == 64
    env = gym.make_vec(env_id("trending"), num_envs=3, vectorization_mode="vector_entry_point", slate_size=4)
    assert env.action_space.shape == (3, 4) and env.unwrapped.cfg.name == "trending"


def test_many_users_in_one_call():
    env = RecSimVectorEnv(num_envs=4096, slate_size=5)
    obs, _ = env.reset(seed=0)
    obs, r, term, trunc, info = env.step(_best_slates(env))
    assert obs.shape == (4096, 10) and r.shape == (4096,) and info["true_reward"].shape == (4096, 5)
    assert env.observation_space.contains(obs) and (r > 0).sum() > 100


@pytest.mark.parametrize("k", [1, 4])
def test_random_rollout_stays_in_spaces(k):
    env = RecSimVectorEnv(num_envs=8, scenario=tiny_scenario(), slate_size=k, horizon=7)
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


def test_no_per_env_catalogue_sized_state():
    """A step of 512 users over 20,000 items allocates O(users x slate + items), far below one
    (users x items) float64 array (82 MB); the env holds no array that large either."""
    import tracemalloc

    from recsim_post.world.config import CatalogConfig

    N, n_items, k = 512, 20_000, 5
    cfg = tiny_scenario(catalog=CatalogConfig(n_items=n_items, n_genres=4, latent_dim=8))
    env = RecSimVectorEnv(num_envs=N, scenario=cfg, slate_size=k)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = [np.stack([rng.choice(n_items, k, replace=False) for _ in range(N)]) for _ in range(3)]
    env.step(actions[0])  # warm-up: first-call allocations (JIT caches)
    tracemalloc.start()
    try:
        for a in actions[1:]:
            env.step(a)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < N * n_items * 8 / 20, peak
    held = [v for obj in (env, env.session, env.world.state, env.world.users, env.world.catalog)
            for v in vars(obj).values() if isinstance(v, np.ndarray)]
    assert held and max(v.size for v in held) < N * n_items / 10
