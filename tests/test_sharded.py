"""Per-user random streams and sharded simulation: keyed draws equal their numpy reference, and any
number of shards (in-process or Ray actors) writes byte-identical log folders."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_post.logs.sharded import ShardedLogRun, shard_bounds, stream_sharded_log_files
from recsim_post.logs.simulate import simulate, stream_log_files
from recsim_post.seeding import SeedTree
from recsim_post.world import keyed
from recsim_post.errors import ConfigError
from recsim_post.world.config import (
    DynamicsConfig, FeedbackConfig, LoggingConfig, ScenarioConfig, SimulationConfig,
)

from .conftest import require, run_cli, tiny_scenario

SETTINGS = settings(max_examples=60, deadline=None)


def per_user(cfg: ScenarioConfig, n_rounds: int = 10) -> ScenarioConfig:
    return dataclasses.replace(cfg, simulation=SimulationConfig(n_rounds=n_rounds, streams="per-user"))


def everything_on(seed: int = 0) -> ScenarioConfig:
    """Per-user streams with every feature that draws per-user numbers or moves per-user state:
    drift, sessions, late arrivals, rating offsets, random logger switching, campaigns, support."""
    return per_user(tiny_scenario(
        seed,
        dynamics=DynamicsConfig(drift_rate=0.1, session_budget=3, return_prob=0.3, arrival=0.2),
        logging=LoggingConfig(slate_size=5, switch_prob=0.3, suggestion_rate=0.3, support=0.8),
        feedback=FeedbackConfig(user_bias_std=0.5),
    ))


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of a log folder (the manifest included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- keyed draws -------------------------------------------------------------------------------


@st.composite
def keyed_problems(draw):
    key = draw(st.integers(0, 2**64 - 1))
    t = draw(st.integers(0, 10**6))
    users = np.array(draw(st.lists(st.integers(0, 2**31 - 1), min_size=0, max_size=20)), dtype=np.int64)
    return key, t, users, draw(st.integers(1, 6))


@SETTINGS
@given(keyed_problems())
def test_keyed_uniforms_match_reference(problem):
    key, t, users, k = problem
    got = keyed.keyed_uniforms(np.uint64(key), t, users, k)
    np.testing.assert_array_equal(got, keyed.keyed_uniforms_ref(key, t, users, k))
    assert ((got >= 0) & (got < 1)).all()


@SETTINGS
@given(keyed_problems())
def test_keyed_normals_match_reference(problem):
    key, t, users, k = problem
    got = keyed.keyed_normals(np.uint64(key), t, users, k)
    # integer hashing is exact; log and cos are libm's in Numba and may be numpy's own SIMD
    # versions in the reference: a few ulp apart at most (sharding never mixes the two)
    np.testing.assert_array_max_ulp(got, keyed.keyed_normals_ref(key, t, users, k), maxulp=4)


def test_keyed_draws_depend_only_on_their_counters():
    """A user's numbers are the same drawn alone, in any batch, at any offset; streams, rounds
    and users differ; the laws are uniform and standard normal."""
    streams = keyed.UserStreams.create(SeedTree(7))
    users = np.arange(20_000)
    u = streams.uniforms("choice", 3, users)
    np.testing.assert_array_equal(streams.uniforms("choice", 3, users[[17, 5, 19_999]]), u[[17, 5, 19_999]])
    np.testing.assert_array_equal(streams.shifted(100).uniforms("choice", 3, users[:50]), u[100:150])
    assert not np.array_equal(streams.uniforms("choice", 4, users), u)
    assert not np.array_equal(streams.uniforms("activity", 3, users), u)
    rows = streams.uniforms("slates", 0, users, 4)
    assert rows.shape == (20_000, 4) and abs(np.corrcoef(rows[:, 0], rows[:, 1])[0, 1]) < 0.03
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    z = streams.normals("z_rating", 3, users)
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03
    assert abs(np.corrcoef(z, streams.uniforms("u_flip", 3, users))[0, 1]) < 0.03  # one sequential stream, two keys


def test_shard_bounds_cover_the_users_in_order():
    assert shard_bounds(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert shard_bounds(3, 8) == [(0, 1), (1, 2), (2, 3)]  # no empty shard
    assert shard_bounds(5, 1) == [(0, 5)]


# -- what the knob changes, and what it does not ----------------------------------------------


def test_streams_knob_default_and_validation():
    assert ScenarioConfig().simulation.streams == "sequential"  # every existing log: golden hashes unchanged
    from recsim_post.config import from_dict

    with pytest.raises(ConfigError, match="simulation.streams = 'bogus' is not allowed: must be one of 'sequential', 'per-user'"):
        from_dict(ScenarioConfig, {"simulation": {"streams": "bogus"}})


def test_per_user_streams_keep_the_population_streams():
    """Per-user streams move every per-user number, but shocks, campaigns and the switching chain
    stay on their sequential streams: the same shocks and logger sequence as the default."""
    seq = dataclasses.replace(everything_on(), simulation=SimulationConfig(n_rounds=10))
    a, b = simulate(seq), simulate(everything_on())
    assert not a.public.interactions.equals(b.public.interactions)
    pd.testing.assert_frame_equal(a.logger_rounds, b.logger_rounds)
    np.testing.assert_array_equal(a.world.state.shock, b.world.state.shock)
    assert b.theta_updates is not None and len(b.theta_updates) > b.world.n_users  # drift moved users
    assert b.world.state.away.any() and b.world.users.rating_bias is not None  # sessions and offsets on


# -- shards ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [per_user(tiny_scenario(3)), everything_on()], ids=["plain", "everything-on"])
def test_local_shards_write_the_unsharded_bytes(tmp_path, cfg):
    stream_log_files(cfg, tmp_path / "whole")
    want = file_hashes(tmp_path / "whole")
    for shards in (1, 2, 4):
        stream_sharded_log_files(cfg, tmp_path / f"s{shards}", shards=shards)
        assert file_hashes(tmp_path / f"s{shards}") == want, shards


def test_sharded_run_leaves_the_final_world_of_the_unsharded_run():
    cfg = everything_on(1)
    whole = simulate(cfg)
    run = ShardedLogRun(cfg, shards=3)
    for _ in run.rounds():
        pass
    np.testing.assert_array_equal(run.world.users.theta, whole.world.users.theta)
    np.testing.assert_array_equal(run.world.state.satiation, whole.world.state.satiation)
    np.testing.assert_array_equal(run.world.state.away, whole.world.state.away)
    np.testing.assert_array_equal(run.world.state.popularity, whole.world.state.popularity)
    assert run.world.state.round == whole.world.state.round


def test_sharding_refuses_sequential_streams_and_bad_shards():
    with pytest.raises(ConfigError, match='needs per-user random streams: set simulation.streams = "per-user"'):
        ShardedLogRun(tiny_scenario())
    with pytest.raises(ConfigError, match="shards = 0 is out of range"):
        ShardedLogRun(per_user(tiny_scenario()), shards=0)
    with pytest.raises(ConfigError, match="backend = 'spark' is not allowed"):
        ShardedLogRun(per_user(tiny_scenario()), backend="spark")


@pytest.fixture(scope="module")
def local_ray():
    """Local Ray on two CPUs for the module's tests (shut down after them)."""
    ray = require("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.slow
def test_ray_shards_write_the_local_bytes(tmp_path, local_ray):
    cfg = everything_on(2)
    stream_log_files(cfg, tmp_path / "whole")
    want = file_hashes(tmp_path / "whole")
    for shards in (1, 2, 4):
        stream_sharded_log_files(cfg, tmp_path / f"ray{shards}", shards=shards, backend="ray")
        assert file_hashes(tmp_path / f"ray{shards}") == want, shards
    assert local_ray.is_initialized()  # Ray started by the caller is left running


# -- the command line --------------------------------------------------------------------------


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    from recsim_post.config import dumps_toml, to_dict

    path = tmp_path / "tiny.toml"
    path.write_text(dumps_toml(to_dict(tiny_scenario())))
    return path


@pytest.mark.parametrize("argv, message", [
    (["--backend", "ray", "--shards", "0"], "argument --shards: 0 is out of range: must be >= 1"),
    (["--backend", "ray", "--shards", "two"], "argument --shards: 'two' is not a whole number"),
    (["--shards", "2"], "--shards belongs to --backend ray"),
    (["--backend", "ray"], 'needs per-user random streams: set simulation.streams = "per-user"'),
    (["--backend", "spark"], "invalid choice: 'spark'"),
    (["--set", "simulation.streams=bogus"], "simulation.streams = 'bogus' is not allowed"),
])
def test_simulate_bad_backend_input_is_one_line_exit_2(tmp_path, capsys, scenario_file, argv, message):
    out = tmp_path / "logs"
    code, _, err = run_cli(capsys, "simulate", "--scenario", str(scenario_file), "--out", str(out), "-q", *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_simulate_backend_ray_without_ray_is_one_line_exit_2(tmp_path, capsys, scenario_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    out = tmp_path / "logs"
    code, _, err = run_cli(capsys, "simulate", "--scenario", str(scenario_file), "--out", str(out), "-q",
                           "--backend", "ray", "--set", "simulation.streams=per-user")
    assert code == 2 and "--backend ray needs Ray: pip install" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_simulate_backend_ray_writes_the_local_folder(tmp_path, capsys, scenario_file, local_ray):
    args = ["simulate", "--scenario", str(scenario_file), "-q", "--set", "simulation.streams=per-user"]
    assert run_cli(capsys, *args, "--out", str(tmp_path / "local"))[0] == 0
    assert run_cli(capsys, *args, "--out", str(tmp_path / "ray"), "--backend", "ray", "--shards", "2")[0] == 0
    logs = {k: v for k, v in file_hashes(tmp_path / "local").items() if not k.startswith(".")}  # not the folder's marker
    assert {k: v for k, v in file_hashes(tmp_path / "ray").items() if not k.startswith(".")} == logs
    assert '"streams": "per-user"' in (tmp_path / "ray" / "manifest.json").read_text()
