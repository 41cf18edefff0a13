"""Streaming log generation: ``simulate`` on the command line writes each round to Parquet row
groups as it finishes. The files are byte-identical to writing the in-memory simulation, whatever
the row-group size; memory does not grow with the rounds; a failure mid-stream leaves nothing."""

from __future__ import annotations

import dataclasses
import filecmp
import hashlib
import json
import tracemalloc
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsim_post.logs import simulate as sim_mod
from recsim_post.logs.public import read_public
from recsim_post.logs.simulate import simulate, stream_log_files, stream_logs, write_log_files
from recsim_post.world.config import DynamicsConfig, LoggingConfig, SimulationConfig, UserConfig

from .conftest import tiny_scenario

FILES = ["manifest.json", "interactions.parquet", "items.parquet", "sealed/impressions.parquet",
         "sealed/items.parquet", "sealed/users.parquet", "sealed/logger_rounds.parquet",
         "sealed/theta_updates.parquet"]


def every_knob():
    """A tiny world with every optional table: drift, switching loggers, logged propensities."""
    tiny = tiny_scenario()
    return dataclasses.replace(
        tiny, dynamics=DynamicsConfig(drift_rate=0.2),
        logging=LoggingConfig(slate_size=5, switch_prob=0.3, extra_temperatures=(2.0,), propensity_mode="logged"),
    )


@pytest.mark.parametrize("group_rows", [97, 1 << 20])
def test_streamed_folder_is_byte_identical_to_the_in_memory_one(tmp_path: Path, monkeypatch, group_rows: int):
    # 97 rows a group: groups end mid-round and rounds end mid-group; 2^20: one group per table
    monkeypatch.setattr(sim_mod, "ROW_GROUP_ROWS", group_rows)
    cfg = every_knob()
    manifest = stream_log_files(cfg, tmp_path / "streamed")
    write_log_files(simulate(cfg), tmp_path / "memory")
    for name in FILES:
        assert filecmp.cmp(tmp_path / "streamed" / name, tmp_path / "memory" / name, shallow=False), name
    on_disk = json.loads((tmp_path / "streamed" / "manifest.json").read_text())
    assert on_disk == manifest
    for name, digest in manifest["sha256"].items():  # hashed while written = hashed when read back
        assert hashlib.sha256((tmp_path / "streamed" / name).read_bytes()).hexdigest() == digest, name
    groups = pq.ParquetFile(tmp_path / "streamed" / "interactions.parquet").metadata
    sizes = [groups.row_group(i).num_rows for i in range(groups.num_row_groups)]
    assert all(s == group_rows for s in sizes[:-1]) and 0 < sizes[-1] <= group_rows
    assert sum(sizes) == manifest["rows"]["interactions"]


def test_streamed_logs_read_back_as_the_simulation(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sim_mod, "ROW_GROUP_ROWS", 50)
    cfg = every_knob()
    stream_logs(cfg, tmp_path / "logs")
    sim = simulate(cfg)
    logs = read_public(tmp_path / "logs")
    pd.testing.assert_frame_equal(logs.interactions, sim.public.interactions)
    pd.testing.assert_frame_equal(logs.items, sim.public.items)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "logs" / "sealed" / "impressions.parquet"),
                                  sim.sealed_impressions)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "logs" / "sealed" / "theta_updates.parquet"),
                                  sim.theta_updates)
    assert {k: v for k, v in logs.manifest.items() if k != "sha256"} == sim.public.manifest


def test_an_empty_log_is_written_as_an_empty_table(tmp_path: Path):
    """A world where nobody asks for a slate (everyone arrives after the last round)."""
    cfg = dataclasses.replace(tiny_scenario(), simulation=SimulationConfig(n_rounds=1),
                              dynamics=DynamicsConfig(arrival=1.0))
    stream_log_files(cfg, tmp_path / "streamed")
    write_log_files(simulate(cfg), tmp_path / "memory")
    for name in FILES[:6]:
        assert filecmp.cmp(tmp_path / "streamed" / name, tmp_path / "memory" / name, shallow=False), name
    assert len(pd.read_parquet(tmp_path / "streamed" / "interactions.parquet")) == 0


def _peak_bytes(fn) -> int:  # noqa: ANN001
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_flat_in_the_number_of_rounds(tmp_path: Path, monkeypatch):
    """Four times the rounds: the in-memory simulation's peak grows with them, the stream's does
    not (numpy's allocations are traced; one round is about 1,600 rows here)."""
    monkeypatch.setattr(sim_mod, "ROW_GROUP_ROWS", 2048)
    base = dataclasses.replace(tiny_scenario(), users=UserConfig(n_users=200))

    def rounds(n: int):  # noqa: ANN202
        return dataclasses.replace(base, simulation=SimulationConfig(n_rounds=n))

    stream_log_files(rounds(1), tmp_path / "warm-up")  # first calls allocate once (JIT caches, imports)
    stream = [_peak_bytes(lambda n=n: stream_log_files(rounds(n), tmp_path / f"s{n}")) for n in (10, 40)]
    memory = [_peak_bytes(lambda n=n: simulate(rounds(n))) for n in (10, 40)]
    assert memory[1] > 2.5 * memory[0]  # the control: rows kept in memory grow with the rounds
    assert stream[1] < 1.2 * stream[0], stream


def test_a_failure_mid_stream_leaves_nothing(tmp_path: Path, monkeypatch):
    real = sim_mod.TableWriter.write
    calls = {"n": 0}

    def failing(self, cols):  # noqa: ANN001
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        real(self, cols)

    monkeypatch.setattr(sim_mod.TableWriter, "write", failing)
    with pytest.raises(OSError, match="disk full"):
        stream_logs(tiny_scenario(), tmp_path / "a" / "logs")
    assert not (tmp_path / "a").exists()  # not even the parent folder it made


@pytest.mark.parametrize("group_rows", [97, 1 << 20])
def test_a_replay_hashes_the_public_files_as_written_and_keeps_the_world_at_t(tmp_path: Path, monkeypatch, group_rows: int):
    """What a rollout checks a log folder with: a re-simulation's public files, hashed and dropped,
    have the manifest's SHA-256 (logged propensities, switching loggers and drift included), and
    the run is left at T as simulate leaves it."""
    from recsim_post.logs.simulate import LogRun, replay_public_hashes

    monkeypatch.setattr(sim_mod, "ROW_GROUP_ROWS", group_rows)
    cfg = every_knob()
    manifest = stream_log_files(cfg, tmp_path / "logs")
    run = LogRun(cfg)
    hashes = replay_public_hashes(run)
    assert hashes == {name: manifest["sha256"][name] for name in ("interactions.parquet", "items.parquet")}
    sim = simulate(cfg)
    for table in (sim_mod.sealed_item_columns, sim_mod.sealed_user_columns):  # world and logger at T
        a, b = table(run.world, run.logger), table(sim.world, sim.logger)
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), table.__name__
    pd.testing.assert_frame_equal(run.logger_rounds(), sim.logger_rounds)
    other = dataclasses.replace(cfg, seed=cfg.seed + 1)
    assert replay_public_hashes(LogRun(other))["interactions.parquet"] != hashes["interactions.parquet"]


def test_a_replay_holds_no_rows(tmp_path: Path, monkeypatch):
    """Four times the rounds, the same peak: the replay keeps the world and one piece of a round."""
    from recsim_post.logs.simulate import LogRun, replay_public_hashes

    monkeypatch.setattr(sim_mod, "ROW_GROUP_ROWS", 2048)
    base = dataclasses.replace(tiny_scenario(), users=UserConfig(n_users=200))

    def rounds(n: int):  # noqa: ANN202
        return dataclasses.replace(base, simulation=SimulationConfig(n_rounds=n))

    replay_public_hashes(LogRun(rounds(1)))  # first calls allocate once
    peak = [_peak_bytes(lambda n=n: replay_public_hashes(LogRun(rounds(n)))) for n in (10, 40)]
    assert peak[1] < 1.2 * peak[0], peak
