"""Closed-loop rollouts: shapes, determinism, isolation from the caller's world, sanity of values."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from recsim_post.evaluation.evaluate import Evaluator
from recsim_post.evaluation.ground_truth import GroundTruth
from recsim_post.evaluation.rollout import (
    ROUND_COLUMNS, logger_policy, oracle_policy, rollout, sample_slates, topk_slates, uniform_policy,
)
from recsim_post.logs.simulate import simulate
from recsim_post.posttrain.recipe import pretrain
from recsim_post.seeding import SeedTree

from .conftest import tiny_scenario
from .test_story import small_agent


@pytest.fixture(scope="module")
def sim():
    return simulate(tiny_scenario())


def _world_arrays(world) -> dict[str, np.ndarray]:
    st = world.state
    return {
        "popularity": st.popularity, "shock": st.shock, "satiation": st.satiation,
        "away": st.away, "session_slates": st.session_slates, "theta": world.users.theta,
        "round": np.array(st.round),
    }


def test_round_frame_has_one_row_per_round_and_the_documented_columns(sim):
    r = rollout(sim.world, uniform_policy(sim.world.n_items), sim.public.clicks(), 7, SeedTree(0))
    assert list(r.rounds.columns) == ROUND_COLUMNS and len(r.rounds) == 7
    assert r.rounds["round"].tolist() == list(range(7))
    assert r.rounds["world_round"].tolist() == list(range(12, 19))  # continues after 12 logged rounds
    assert (r.rounds["n_active"] > 0).all()
    assert ((r.rounds["ctr"] >= 0) & (r.rounds["ctr"] <= 1)).all()
    assert r.rounds["n_clicks"].sum() == len(r.clicks)
    np.testing.assert_allclose(r.summary["value"], r.rounds["reward_per_user"].sum())
    assert r.summary["k"] == 5 and r.summary["n_rounds"] == 7
    ratings = r.clicks["rating"].dropna()
    assert ((ratings >= 1) & (ratings <= 5)).all()


@pytest.mark.parametrize("slate", ["topk", "sample"])
def test_same_seed_same_result_and_the_caller_world_is_untouched(sim, slate):
    before = copy.deepcopy(_world_arrays(sim.world))
    trend = sim.world.trend().copy()
    pol = logger_policy(sim.logger)
    a = rollout(sim.world, pol, sim.public.clicks(), 6, SeedTree(3), slate=slate)
    b = rollout(sim.world, pol, sim.public.clicks(), 6, SeedTree(3), slate=slate)
    assert a.rounds.equals(b.rounds) and a.clicks.equals(b.clicks)
    assert a.summary == b.summary
    c = rollout(sim.world, pol, sim.public.clicks(), 6, SeedTree(4), slate=slate)
    assert not a.clicks.equals(c.clicks)
    after = _world_arrays(sim.world)
    for key, arr in before.items():
        np.testing.assert_array_equal(arr, after[key], err_msg=key)
    np.testing.assert_array_equal(trend, sim.world.trend())
    assert a.world is not sim.world and a.world.state.round == sim.world.state.round + 6


def test_oracle_shows_far_better_items_than_uniform(sim):
    clicks = sim.public.clicks()
    ora = rollout(sim.world, oracle_policy(sim.world), clicks, 8, SeedTree(0))
    uni = rollout(sim.world, uniform_policy(sim.world.n_items), clicks, 8, SeedTree(0))
    assert ora.summary["reward_shown"] > uni.summary["reward_shown"] + 0.5
    assert (ora.rounds["reward_shown"] > uni.rounds["reward_shown"]).all()
    assert ora.summary["value"] > uni.summary["value"]


def test_clicks_build_up_satiation_in_the_rolled_world(sim):
    r = rollout(sim.world, oracle_policy(), sim.public.clicks(), 5, SeedTree(0))
    last = r.clicks[r.clicks["timestamp"] == r.clicks["timestamp"].max()]
    assert len(last) > 0
    genre = r.world.catalog.genre[last["item_id"].to_numpy()]
    sat = r.world.state.satiation[last["user_id"].to_numpy(), genre]
    assert (sat >= 1.0).all()  # decayed old satiation + 1 for the click of the last round
    # r* = theta . v + q - strength * S: those items lost at least `strength` for those users
    w, strength = r.world, r.world.cfg.satiation.strength
    assert strength > 0
    u, i = last["user_id"].to_numpy(), last["item_id"].to_numpy()
    base = (w.users.theta[u] * w.catalog.vectors[i]).sum(axis=1) + w.catalog.quality[i]
    rstar = w.true_reward(u)[np.arange(len(u)), i]
    np.testing.assert_allclose(rstar, base - strength * sat)
    assert (rstar <= base - strength + 1e-9).all()


def test_topk_slates_have_no_duplicates_and_respect_the_ranking():
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 3, (50, 20)).astype(np.float64)  # many exact ties
    s = topk_slates(logits, 6, rng)
    assert s.shape == (50, 6)
    assert all(len(set(row)) == 6 for row in s)
    picked = np.take_along_axis(logits, s, 1)
    assert (np.diff(picked, axis=1) <= 0).all()  # best first
    kth = -np.sort(-logits, axis=1)[:, 5]
    assert (picked.min(axis=1) == kth).all()  # nothing better left out
    t = sample_slates(np.zeros((50, 20)), 6, rng)
    assert all(len(set(row)) == 6 for row in t)


def test_rollout_slates_have_no_duplicates_and_histories_grow(sim, monkeypatch):
    from recsim_post.world.world import World

    shown, seen = [], []
    respond = World.respond

    def spy_respond(self, users, slates, *args, **kwargs):
        shown.append(np.array(slates))
        return respond(self, users, slates, *args, **kwargs)

    def spy(users, hist):
        seen.append(dict(zip(users.tolist(), hist.copy())))
        return np.tile(np.arange(sim.world.n_items, dtype=np.float32) % 3, (len(users), 1))

    monkeypatch.setattr(World, "respond", spy_respond)
    r = rollout(sim.world, spy, sim.public.clicks(), 3, SeedTree(0), k=7)
    assert r.summary["k"] == 7 and len(shown) == 3
    for s in shown:
        assert s.shape[1] == 7 and all(len(set(row)) == 7 for row in s)
    # a user who clicked in round 0 and asks again later sees that click at the end of her history
    first = r.clicks[r.clicks["timestamp"] == 12]
    hits = [(u, it) for u, it in zip(first["user_id"], first["item_id"]) if u in seen[1]]
    assert hits
    for u, it in hits:
        assert seen[1][u][-1] == it


def test_a_trained_bc_policy_runs_through_the_rollout(sim):
    ev = Evaluator.prepare(sim.public, GroundTruth.from_simulation(sim))
    policy = pretrain(ev.train, sim.public.n_items, small_agent("bc", 1), SeedTree(0), progress=False)
    r = rollout(sim.world, policy, sim.public.clicks(), 4, SeedTree(0), slate="sample")
    assert len(r.rounds) == 4 and np.isfinite(r.summary["value"])
    assert r.rounds["n_clicks"].sum() > 0
