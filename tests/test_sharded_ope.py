"""Off-policy estimation over sharded logs (ope/report.py): the passes over the logged rows that score
every target policy, r* and q^, and the propensity model, run in contiguous shards of whole chunks, in this process or as Ray
tasks, and the report is the unsharded one bit for bit (the Ray case runs inside
``tests/test_sharded_truth.py``'s Ray test, one Ray start for both)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsim_post.errors import ConfigError
from recsim_post.logs.simulate import simulate
from recsim_post.ope.data import logged_contexts
from recsim_post.ope.propensity import PropensityModelConfig, fit_logger_model
from recsim_post.ope.report import ope_report
from recsim_post.policy import UniformPolicy
from recsim_post.truth.ground_truth import GroundTruth
from recsim_post.truth.references import LoggerPolicy

from .conftest import run_cli, tiny_scenario


@pytest.fixture(scope="module")
def sim():
    return simulate(tiny_scenario())


def check_ope_shards(sim, backend: str, shard_counts, reward: str = "true", **extra) -> None:  # noqa: ANN001, ANN003
    """Every shard count gives the unsharded report, exactly (estimates, intervals, truth, errors)."""
    truth = GroundTruth.from_simulation(sim)
    policies = {"uniform": UniformPolicy(truth.n_items), "logger": LoggerPolicy(truth.logger, truth.trend)}
    kw = {"reward": reward, "propensity": "frequency", "q_model": "item", "interval": "normal", **extra}
    whole = ope_report(sim.public, truth, policies, **kw)
    assert len(whole) > 0 and whole["estimate"].notna().any()
    if reward == "true":
        assert whole["truth"].notna().all()
    for shards in shard_counts:
        got = ope_report(sim.public, truth, policies, backend=backend, shards=shards, **kw)
        pd.testing.assert_frame_equal(got, whole, check_exact=True)


def test_local_shards_give_the_unsharded_report(sim, small_row_chunks):
    check_ope_shards(sim, "local", (1, 2, 3))
    check_ope_shards(sim, "local", (3,), reward="rating")  # no exact truth: the per-row terms alone
    # the propensity model's pass over the rows is sharded too (the model is fitted once, in the driver)
    ctx = logged_contexts(sim.public.interactions, max_len=8)
    tiny = PropensityModelConfig(dim=8, max_len=8, epochs=1)
    model = fit_logger_model(ctx, sim.public.n_items, tiny)
    check_ope_shards(sim, "local", (3,), propensity="bc", propensity_model=model, max_len=8)


def test_bad_backend_or_shards_are_one_line_errors(sim):
    truth = GroundTruth.from_simulation(sim)
    policies = {"uniform": UniformPolicy(truth.n_items)}
    with pytest.raises(ConfigError, match="backend 'spark'"):
        ope_report(sim.public, truth, policies, propensity="frequency", q_model="item", backend="spark")
    with pytest.raises(ConfigError, match="shards = 0 is out of range"):
        ope_report(sim.public, truth, policies, propensity="frequency", q_model="item", shards=0)


def test_cli_ope_shards_belong_to_logs(capsys, tmp_path):
    code, _, err = run_cli(capsys, "ope", "--scenario", "quickstart", "--backend", "ray", "--out", str(tmp_path / "o"))
    assert code == 2 and "--backend and --shards belong to --logs" in err and err.strip().count("\n") == 0
    code, _, err = run_cli(capsys, "ope", "--logs", str(tmp_path), "--shards", "0")
    assert code == 2 and "must be >= 1" in err
    assert not (tmp_path / "o").exists()


def test_chunk_count_is_what_the_shards_cut(sim, small_row_chunks):
    """The 7-row chunks really cut this log into several shards (else the test above proves little)."""
    from recsim_post.ope.data import logged_contexts
    from recsim_post.truth.sharded import chunk_shards

    n = len(logged_contexts(sim.public.interactions))
    assert n > 3 * 7 and len(chunk_shards(n, 3, 7)) == 3
    assert np.all(np.diff([lo for lo, _ in chunk_shards(n, 3, 7)]) % 7 == 0)
