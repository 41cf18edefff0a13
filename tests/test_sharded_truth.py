"""The exact pass with the users in shards (truth/sharded.py) gives the unsharded numbers, bit for bit.

Shards cut on chunk boundaries, so every chunk (and every policy's batch) holds the same users as in
one pass; the per-user arrays are joined in user order and the entropy profile re-added chunk by
chunk. Local shards in-process, Ray tasks, the Evaluator and ``recsim-post evaluate --backend ray``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from recsim_post.errors import ConfigError
from recsim_post.experiments.evaluate import Evaluator
from recsim_post.logs.public import HistoryIndex
from recsim_post.logs.simulate import simulate
from recsim_post.policy import HISTORY_LEN, UniformPolicy
from recsim_post.truth.ground_truth import ExactSums, GroundTruth, exact_sums
from recsim_post.truth.references import LoggerPolicy
from recsim_post.truth.sharded import chunk_shards, sharded_exact_sums

from .conftest import require, run_cli, tiny_scenario
from .test_sharded_ope import check_ope_shards


@pytest.fixture(scope="module")
def sim():
    return simulate(tiny_scenario())


class Factors:
    """A picklable float32 policy (a BLAS product per batch): users' rows times items' columns."""

    def __init__(self, n_users: int, n_items: int) -> None:
        rng = np.random.default_rng(1)
        self.n_items, self.max_len = n_items, HISTORY_LEN
        self.u = torch.from_numpy(rng.normal(size=(n_users, 8)).astype(np.float32))
        self.v = torch.from_numpy(rng.normal(size=(8, n_items)).astype(np.float32))

    def logits(self, history, context):  # noqa: ANN001, ANN201
        with torch.no_grad():
            return (self.u[torch.from_numpy(np.asarray(context.users))] @ self.v).numpy()


def _policies(truth: GroundTruth) -> dict:
    n = truth.n_items
    return {
        "logger": LoggerPolicy(truth.logger, truth.trend),
        "factors": Factors(truth.n_users, n),
        "uniform": UniformPolicy(n),
    }


def assert_same_sums(a: ExactSums, b: ExactSums) -> None:
    for f in dataclasses.fields(ExactSums):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, dict):
            assert x.keys() == y.keys(), f.name
            for key in x:
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{f.name}[{key!r}]")
        elif x is None or isinstance(x, int):
            assert x == y, f.name
        else:
            np.testing.assert_array_equal(x, y, err_msg=f.name)


def test_chunk_shards_cut_on_chunk_boundaries():
    assert chunk_shards(80, 1, 7) == [(0, 80)]
    assert chunk_shards(80, 2, 7) == [(0, 42), (42, 80)]  # 12 chunks: 6 + 6
    assert chunk_shards(80, 3, 7) == [(0, 28), (28, 56), (56, 80)]
    assert chunk_shards(10, 5, 7) == [(0, 7), (7, 10)]  # no more shards than chunks
    assert chunk_shards(0, 3, 7) == [(0, 0)]
    with pytest.raises(ConfigError, match="shards = 0"):
        chunk_shards(10, 0, 7)


@pytest.mark.parametrize("chunk", [7, 80])
def test_local_shards_give_the_unsharded_sums(sim, chunk):
    truth = GroundTruth.from_simulation(sim)
    users = np.arange(3, truth.n_users)  # a shard need not start at user 0
    pols = _policies(truth)
    index = HistoryIndex.build(sim.public.clicks())
    hist = lambda u: index.gather(u, HISTORY_LEN)  # noqa: E731
    belief = lambda u: truth.true_reward(u) * 0.5 + 0.1  # noqa: E731
    ref_of = {"factors": "logger"}
    whole = exact_sums(truth, users, pols, 5, belief=belief, chunk=chunk, histories=hist, sharpness=True, ref_of=ref_of)
    assert whole.profile_chunks["factors"].shape[0] == -(-len(users) // chunk)
    for shards in (1, 2, 3):
        got = sharded_exact_sums(truth, users, pols, 5, belief=belief, chunk=chunk, histories=hist,
                                 sharpness=True, ref_of=ref_of, shards=shards)
        assert_same_sums(got, whole)
    plain = exact_sums(truth, users, pols, 5, chunk=chunk)
    assert_same_sums(sharded_exact_sums(truth, users, pols, 5, chunk=chunk, shards=3), plain)


def test_bad_backend_or_shards_are_one_line_errors(sim):
    truth = GroundTruth.from_simulation(sim)
    with pytest.raises(ConfigError, match="backend 'spark'"):
        sharded_exact_sums(truth, np.arange(5), backend="spark")
    with pytest.raises(ConfigError, match="shards = 0"):
        sharded_exact_sums(truth, np.arange(5), shards=0)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 7 users (the tiny catalogue would otherwise fit every user in one chunk, one shard)."""
    import recsim_post.truth.ground_truth as gt
    import recsim_post.truth.sharded as sh

    monkeypatch.setattr(gt, "chunk_users", lambda n_items, budget_bytes=None: 7)
    monkeypatch.setattr(sh, "chunk_users", lambda n_items, budget_bytes=None: 7)


def _frame(rows):
    import pandas as pd

    return pd.DataFrame([dataclasses.asdict(r) for r in rows])


def _table(truth: GroundTruth):
    from recsim_post.posttrain.reward_model import TableRewardModel

    g = torch.Generator().manual_seed(0)
    return TableRewardModel(torch.linspace(0, 1, truth.n_items), n_members=3, member_noise=0.2, generator=g)


def _check_evaluator(sim, backend: str, shard_counts) -> None:
    import pandas as pd

    truth = GroundTruth.from_simulation(sim)
    pols = {"factors": Factors(truth.n_users, truth.n_items)}
    pi_refs = {"factors": UniformPolicy(truth.n_items)}
    whole = Evaluator.prepare(sim.public, truth, k=5)
    whole.reward_model = _table(truth)
    expected = _frame(whole.rows(pols, pi_refs=pi_refs))
    assert expected["rm_value"].notna().all() and expected["kl_ref"].notna().any()
    for shards in shard_counts:
        ev = Evaluator.prepare(sim.public, truth, k=5, backend=backend, shards=shards)
        ev.reward_model = _table(truth)
        assert ev.refs == whole.refs
        pd.testing.assert_frame_equal(_frame(ev.rows(pols, pi_refs=pi_refs)), expected, check_exact=True)
        assert ev.values(pols) == whole.values(pols)


def test_evaluator_rows_are_the_same_in_shards(sim, small_chunks):
    """Rows with beliefs, sharpness, KL to a π_ref and the tempered pass: local 2 and 3 shards."""
    _check_evaluator(sim, "local", (2, 3))


@pytest.fixture
def local_ray():
    ray = require("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.slow
def test_ray_shards_give_the_local_numbers(sim, small_chunks, small_row_chunks, local_ray):
    """Ray tasks (the truth and policies put once; histories and beliefs shipped as the index and the
    model) give the local rows, bit for bit. Workers import the package afresh, so the chunk size
    reaches them as an argument: the monkeypatched 7 holds there too. The off-policy report over
    row shards is checked in the same Ray session (one start-up for both)."""
    truth = GroundTruth.from_simulation(sim)
    pols = _policies(truth)
    users = np.arange(truth.n_users)
    index = HistoryIndex.build(sim.public.clicks())
    from functools import partial

    hist = partial(index.gather, max_len=HISTORY_LEN)
    whole = exact_sums(truth, users, pols, 5, chunk=7, histories=hist, sharpness=True, ref_of={"factors": "logger"})
    got = sharded_exact_sums(truth, users, pols, 5, chunk=7, histories=hist, sharpness=True,
                             ref_of={"factors": "logger"}, shards=2, backend="ray")
    assert_same_sums(got, whole)
    _check_evaluator(sim, "ray", (2,))
    check_ope_shards(sim, "ray", (2,))


def test_cli_evaluate_refuses_bad_shards_and_missing_ray(capsys, monkeypatch, tmp_path):
    code, _, err = run_cli(capsys, "evaluate", "--logs", str(tmp_path), "--policy", "p.pt", "--shards", "0")
    assert code == 2 and "--shards" in err and "must be >= 1" in err
    code, _, err = run_cli(capsys, "evaluate", "--logs", str(tmp_path), "--policy", "p.pt", "--shards", "two")
    assert code == 2 and "'two' is not a whole number" in err
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # import ray fails as if not installed
    code, _, err = run_cli(capsys, "evaluate", "--logs", str(tmp_path), "--policy", "p.pt", "--backend", "ray")
    assert code == 2 and err.strip().count("\n") == 0 and "--backend ray needs Ray" in err


@pytest.mark.slow
def test_cli_evaluate_on_ray_prints_the_local_table(tmp_path, capsys, small_chunks, local_ray):
    from recsim_post.config import dumps_toml, to_dict
    from recsim_post.posttrain.recipe import load_agent
    from recsim_post.presets import resolve

    scenario = tmp_path / "tiny.toml"
    scenario.write_text(dumps_toml(to_dict(tiny_scenario())))
    data = to_dict(load_agent(resolve("agents", "bc")))
    data["model"].update(dim=16, n_layers=1, n_heads=1, max_len=12)
    data["pretrain"]["epochs"] = 1
    data["finetune"]["epochs"] = 1
    agent = tmp_path / "small-bc.toml"
    agent.write_text(dumps_toml(data))
    logs, policy = tmp_path / "logs", tmp_path / "p.pt"
    assert run_cli(capsys, "simulate", "--scenario", str(scenario), "--out", str(logs), "-q")[0] == 0
    assert run_cli(capsys, "train", "--logs", str(logs), "--agent", str(agent), "--out", str(policy), "-q")[0] == 0
    code, local, _ = run_cli(capsys, "evaluate", "--logs", str(logs), "--policy", str(policy))
    assert code == 0
    code, out, err = run_cli(capsys, "evaluate", "--logs", str(logs), "--policy", str(policy), "--shards", "3")
    assert code == 0 and out == local, err
    # on Ray once, as JSON: every digit, not only the table's three decimals (each Ray call is slow to start)
    code, out, _ = run_cli(capsys, "evaluate", "--logs", str(logs), "--policy", str(policy), "--json")
    code, ray_json, err = run_cli(capsys, "evaluate", "--logs", str(logs), "--policy", str(policy), "--json",
                                  "--backend", "ray", "--shards", "2")
    assert code == 0 and ray_json == out, err
