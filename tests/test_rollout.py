"""Closed-loop rollouts: shapes, determinism, isolation from the caller's world, sanity of values."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsim_post.errors import ConfigError, LogError
from recsim_post.experiments.evaluate import Evaluator
from recsim_post.policy import FunctionPolicy, UniformPolicy
from recsim_post.truth.ground_truth import GroundTruth
from recsim_post.truth.references import LoggerPolicy, OraclePolicy, reference_policies
from recsim_post.truth.rollout import (
    ROUND_COLUMNS, ClosedLoop, ClosedLoopConfig, plackett_luce_slates, rollout, topk_slates, world_at_end_of_logging,
)
from recsim_post.logs.check import sha256_file
from recsim_post.logs.public import read_public
from recsim_post.logs.simulate import simulate, write_logs
from recsim_post.world.config import DynamicsConfig
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
    r = rollout(sim.world, UniformPolicy(sim.world.n_items), sim.public.clicks(), 7, SeedTree(0))
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
    pol = LoggerPolicy(sim.logger, sim.world.trend(), slate=None)
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
    ora = rollout(sim.world, OraclePolicy(n_items=sim.world.n_items), clicks, 8, SeedTree(0))
    uni = rollout(sim.world, UniformPolicy(sim.world.n_items), clicks, 8, SeedTree(0))
    assert ora.summary["reward_shown"] > uni.summary["reward_shown"] + 0.5
    assert (ora.rounds["reward_shown"] > uni.rounds["reward_shown"]).all()
    assert ora.summary["value"] > uni.summary["value"]


def test_clicks_build_up_satiation_in_the_rolled_world(sim):
    r = rollout(sim.world, OraclePolicy(n_items=sim.world.n_items), sim.public.clicks(), 5, SeedTree(0))
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
    t = plackett_luce_slates(np.zeros((50, 20)), 6, rng)
    assert all(len(set(row)) == 6 for row in t)


def test_rollout_slates_have_no_duplicates_and_histories_grow(sim, monkeypatch):
    from recsim_post.world.world import World

    shown, seen = [], []
    choose = World.choose

    def spy_choose(self, users, slates, *args, **kwargs):
        shown.append(np.array(slates))
        return choose(self, users, slates, *args, **kwargs)

    def spy(users, hist):
        seen.append(dict(zip(users.tolist(), hist.copy())))
        return np.tile(np.arange(sim.world.n_items, dtype=np.float32) % 3, (len(users), 1))

    monkeypatch.setattr(World, "choose", spy_choose)
    r = rollout(sim.world, FunctionPolicy(sim.world.n_items, lambda h, c: spy(c.users, h)), sim.public.clicks(), 3,
                SeedTree(0), k=7)
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


# --------------------------------------------------------------------------------------------- #
# references deployed as defined, the closed-loop column, the world at T rebuilt from a folder
# --------------------------------------------------------------------------------------------- #


def test_references_keep_their_own_slate_rule(sim):
    clicks = sim.public.clicks()
    for pol in (OraclePolicy(n_items=sim.world.n_items), LoggerPolicy(sim.logger, sim.world.trend(), slate="sample")):
        a = rollout(sim.world, pol, clicks, 4, SeedTree(1), slate="topk")
        b = rollout(sim.world, pol, clicks, 4, SeedTree(1), slate="sample")
        assert a.clicks.equals(b.clicks), pol.name
    # without a rule of its own the logger follows the rollout's
    free = LoggerPolicy(sim.logger, sim.world.trend(), slate=None)
    a = rollout(sim.world, free, clicks, 4, SeedTree(1), slate="topk")
    b = rollout(sim.world, free, clicks, 4, SeedTree(1), slate="sample")
    assert not a.clicks.equals(b.clicks)


def test_closed_loop_config_rejects_bad_values():
    with pytest.raises(ConfigError, match=r"rounds = -1 is out of range: must be >= 0"):
        ClosedLoopConfig(rounds=-1)
    with pytest.raises(ConfigError, match="at least one rollout seed"):
        ClosedLoopConfig(seeds=())
    with pytest.raises(ConfigError, match=r"seeds = \[0, -2\] is out of range"):
        ClosedLoopConfig(seeds=(0, -2))
    with pytest.raises(ConfigError, match="users = 0 is out of range"):
        ClosedLoopConfig(users=0)
    with pytest.raises(ConfigError, match="slate = 'best' is not allowed"):
        ClosedLoopConfig(slate="best")


def test_closed_loop_is_the_mean_of_the_seeded_rollouts_on_one_cohort(sim):
    clicks = sim.public.clicks()
    cfg = ClosedLoopConfig(rounds=4, seeds=(0, 3), users=30)
    loop = ClosedLoop(sim.world, clicks, cfg)
    assert loop.n_users == 30 and len(np.unique(loop.cohort)) == 30
    # the cohort belongs to the world (its seed), not to the policy or the rollout seeds
    again = ClosedLoop(sim.world, clicks, ClosedLoopConfig(rounds=2, seeds=(5,), users=30))
    np.testing.assert_array_equal(loop.cohort, again.cohort)
    pol = LoggerPolicy(sim.logger, sim.world.trend(), slate="sample")
    v = loop.run(pol)
    direct = [rollout(sim.world, pol, clicks, 4, SeedTree(s), users=loop.cohort).summary["value"] for s in (0, 3)]
    assert v.mean == pytest.approx(np.mean(direct), rel=1e-12)
    assert v.std == pytest.approx(np.std(direct, ddof=1), rel=1e-12)
    assert [r["seed"] for r in v.runs] == [0, 3] and v.runs[0]["n_users"] == 30
    assert loop.run(pol) == v  # same seeds, same numbers
    assert np.isnan(ClosedLoop(sim.world, clicks, ClosedLoopConfig(rounds=2, seeds=(0,))).run(pol).std)
    # a cohort larger than the world is everyone
    assert ClosedLoop(sim.world, clicks, ClosedLoopConfig(users=10_000)).cohort is None
    with pytest.raises(ConfigError, match="k = 61 is out of range"):
        ClosedLoop(sim.world, clicks, ClosedLoopConfig(k=61))


def _state(world) -> dict[str, np.ndarray]:
    return {**_world_arrays(world), "arrival_round": world.state.arrival_round, "trend": world.trend(),
            "vectors": world.catalog.vectors, "hype": world.catalog.hype}


@pytest.fixture(scope="module")
def dyn_folder(tmp_path_factory):
    """Logs of a world with sessions, late arrivals and drift: state that sealed/ does not hold."""
    sc = tiny_scenario(seed=4, dynamics=DynamicsConfig(drift_rate=0.1, session_budget=3, arrival=0.3))
    s = simulate(sc)
    folder = tmp_path_factory.mktemp("dyn") / "logs"
    write_logs(s, folder)
    return s, folder


def test_world_at_end_of_logging_rebuilds_the_exact_world(dyn_folder):
    s, folder = dyn_folder
    assert s.world.state.away.any()  # sessions ended: the state a rollout needs beyond sealed/
    logs, truth = read_public(folder), GroundTruth.load(folder)
    rebuilt = world_at_end_of_logging(folder, logs, truth)
    for key, arr in _state(s.world).items():
        np.testing.assert_array_equal(arr, _state(rebuilt.world)[key], err_msg=key)
    a = rollout(s.world, LoggerPolicy(s.logger, s.world.trend(), "sample"), s.public.clicks(), 5, SeedTree(2))
    b = rollout(rebuilt.world, LoggerPolicy(rebuilt.logger, rebuilt.world.trend(), "sample"), logs.clicks(), 5, SeedTree(2))
    assert a.clicks.equals(b.clicks) and a.summary == b.summary


def _copy(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(folder, out)
    return out


def test_world_at_end_of_logging_refuses_logs_it_cannot_reproduce(dyn_folder, tmp_path):
    _, folder = dyn_folder
    # a public file changed after it was written
    edited = _copy(folder, tmp_path)
    df = pq.read_table(edited / "interactions.parquet").to_pandas()
    df.loc[0, "rating"] = 5.0 if df.loc[0, "rating"] != 5.0 else 1.0
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), edited / "interactions.parquet")
    with pytest.raises(LogError, match="interactions.parquet does not match the sha256 in manifest.json"):
        world_at_end_of_logging(edited, read_public(edited))
    shutil.rmtree(edited)
    # a manifest whose scenario is not what produced the files
    edited = _copy(folder, tmp_path)
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["scenario"]["seed"] = 5
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LogError, match="with seed 5 does not reproduce .* its public logs differ"):
        world_at_end_of_logging(edited, read_public(edited), GroundTruth.load(edited))
    shutil.rmtree(edited)
    # sealed/ that disagrees with the world the public logs came from
    edited = _copy(folder, tmp_path)
    users = pq.read_table(edited / "sealed" / "users.parquet").to_pandas()
    users["satiation0"] += 1.0
    pq.write_table(pa.Table.from_pandas(users, preserve_index=False), edited / "sealed" / "users.parquet")
    with pytest.raises(LogError, match="sealed/users.parquet does not match the sha256 in manifest.json"):
        GroundTruth.load(edited)  # the hash catches the edit before any table is read
    manifest = json.loads((edited / "manifest.json").read_text())  # a consistent manifest: the world decides
    manifest["sha256"]["sealed/users.parquet"] = sha256_file(edited / "sealed" / "users.parquet")
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LogError, match="the sealed satiation at T differs"):
        world_at_end_of_logging(edited, read_public(edited), GroundTruth.load(edited))
    # no sha256 table: nothing to verify against
    manifest = json.loads((edited / "manifest.json").read_text())
    del manifest["sha256"]
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LogError, match="no sha256 table"):
        world_at_end_of_logging(edited, read_public(edited))


def test_the_oracle_shows_the_best_first_slate_and_nothing_more_is_promised(sim):
    """The one ordering that is exact: in the first round every policy serves the same active
    users (common random numbers) from the same world, and the oracle shows each of them the k
    items of highest r*, so no policy's shown items are worth more. Over the later rounds the
    greedy oracle's own clicks satiate users and move trends, so its closed-loop value is not an
    upper bound, and no test asserts one."""
    ev = Evaluator.prepare(sim.public, GroundTruth.from_simulation(sim))
    bc = pretrain(ev.train, sim.public.n_items, small_agent("bc", 1), SeedTree(0), progress=False)
    pols = {**reference_policies(sim.public.n_items, ev.train, sim.logger, sim.world.trend()), "bc": bc}
    first = {name: rollout(sim.world, p, ev.clicks, 3, SeedTree(6)).rounds.iloc[0] for name, p in pols.items()}
    assert len({int(r["n_active"]) for r in first.values()}) == 1
    best = first["oracle"]["reward_shown"]
    for name, r in first.items():
        assert r["reward_shown"] <= best + 1e-12, name
