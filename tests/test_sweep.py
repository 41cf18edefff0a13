"""Dotted-key overrides and dial sweeps."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from recsim_post.config import override, parse_value
from recsim_post.errors import ConfigError
from recsim_post.experiments.sweep import Dial, format_sweep, paired_differences, plot_sweep, run_sweep, sweep_summary
from recsim_post.world.config import ScenarioConfig

from .conftest import tiny_scenario
from .test_story import small_agent


def test_override_sets_nested_keys_and_keeps_the_rest():
    base = ScenarioConfig()
    got = override(base, ["feedback.noise_std=1.5", "choice.click_model=cascade", "seed=7"])
    assert got.feedback.noise_std == 1.5 and got.choice.click_model == "cascade" and got.seed == 7
    assert got.logging == base.logging and got.catalog == base.catalog
    assert base.feedback.noise_std == 0.5  # the input is untouched
    assert override(base, [("logging.epsilon", 0.2)]).logging.epsilon == 0.2


@pytest.mark.parametrize("text, match", [
    ("feedback.nois=1", r"unknown key 'feedback\.nois'; allowed keys in feedback: .*noise_std"),
    ("feedbak.noise_std=1", r"unknown section 'feedbak'.*sections: catalog"),
    ("feedback.noise_std=-1", r"feedback\.noise_std = -1\.0 is out of range: must be >= 0"),
    ("feedback=1", r"'feedback' is a section"),
    ("noequals", r"must look like section\.key=value"),
    ("choice.click_model=probit", r"must be one of 'mnl', 'cascade'"),
])
def test_override_errors_are_one_line_and_name_the_key(text, match):
    with pytest.raises(ConfigError, match=match) as err:
        override(ScenarioConfig(), [text])
    assert "\n" not in str(err.value)


def test_values_parse_as_toml_or_bare_strings():
    assert parse_value("1") == 1 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value("cascade") == "cascade"
    assert parse_value('"a b"') == "a b"


def test_dial_parse_and_scenarios():
    d = Dial.parse("feedback.noise_std=0, 0.5,2")
    assert d == Dial("feedback.noise_std", (0, 0.5, 2))
    scs = d.scenarios(tiny_scenario())
    assert [s.feedback.noise_std for s in scs] == [0.0, 0.5, 2.0]
    assert scs[1].name == "tiny[feedback.noise_std=0.5]"
    with pytest.raises(ConfigError, match="repeats"):
        Dial.parse("feedback.noise_std=1,1")
    with pytest.raises(ConfigError, match="no values"):
        Dial.parse("feedback.noise_std=")
    with pytest.raises(ConfigError, match="out of range"):  # checked before any cell runs
        Dial.parse("feedback.noise_std=1,-2").scenarios(tiny_scenario())


def test_paired_differences_hand_computed():
    long = pd.DataFrame({
        "value": ["0"] * 6,
        "seed": [0, 0, 1, 1, 2, 2],
        "method": ["bc", "x"] * 3,
        "kind": ["trained"] * 6,
        "true_value_norm": [0.2, 0.3, 0.5, 0.45, 0.1, 0.4],
    })
    s = paired_differences(long).set_index("method")
    # deltas of x: +0.1, -0.05, +0.3
    assert s.loc["x", "delta_mean"] == pytest.approx(0.35 / 3)
    assert s.loc["x", "delta_std"] == pytest.approx(np.std([0.1, -0.05, 0.3], ddof=1))
    assert s.loc["x", "wins"] == 2 and s.loc["x", "n_seeds"] == 3
    assert s.loc["x", "true_value_norm_mean"] == pytest.approx(1.15 / 3)
    assert math.isnan(s.loc["bc", "delta_mean"])
    with pytest.raises(ConfigError, match="baseline 'dpo' is not among the methods: bc, x"):
        paired_differences(long, baseline="dpo")
    assert "matched_delta_mean" not in sweep_summary(long).columns  # rows without a matched view
    # at π_ref's entropy x's deltas are 0, -0.1, +0.1: the raw gain was sharpening
    long["matched_norm"] = [0.2, 0.2, 0.5, 0.4, 0.1, 0.2]
    m = sweep_summary(long).set_index("method")
    assert m.loc["x", "delta_mean"] == pytest.approx(0.35 / 3)
    assert m.loc["x", "matched_delta_mean"] == pytest.approx(0.0)
    assert m.loc["x", "matched_delta_std"] == pytest.approx(0.1)
    assert m.loc["x", "matched_wins"] == 1 and math.isnan(m.loc["bc", "matched_delta_mean"])
    text = format_sweep(m.reset_index(), "d")
    assert "at π_ref's entropy" in text and "+0.000 ± 0.100 (1/3)" in text


@pytest.mark.slow
def test_sweep_end_to_end_is_deterministic_and_tabulated(tmp_path):
    dial = Dial.parse("feedback.flip_rate=0,0.4")
    agents = [small_agent("bc", 1), small_agent("exp-rsft", 1)]
    long = run_sweep(tiny_scenario(), dial, agents, seeds=[0, 1], eval_users=None)
    assert list(long.columns[:3]) == ["dial", "value", "seed"]
    assert set(long["value"]) == {"0", "0.4"} and set(long["seed"]) == {0, 1}
    cell = long[(long["value"] == "0.4") & (long["seed"] == 1)].drop(columns=["dial", "value", "seed"])
    again = run_sweep(tiny_scenario(), Dial("feedback.flip_rate", (0.4,)), agents, seeds=[1], eval_users=None)
    pd.testing.assert_frame_equal(cell.reset_index(drop=True), again.drop(columns=["dial", "value", "seed"]))
    # the dial changes only the feedback: the reference rows (world + logger) are the same per seed
    refs = long[long["kind"] == "reference"].pivot_table(index=["seed", "method"], columns="value", values="true_value_norm")
    np.testing.assert_allclose(refs["0"], refs["0.4"])
    summary = sweep_summary(long)
    text = format_sweep(summary, dial.key)
    assert "feedback.flip_rate=0.4" in text and "exp-rsft" in text and "/2)" in text
    assert "at π_ref's entropy" in text and summary["matched_delta_mean"].notna().any()
    from matplotlib.image import imread

    png = plot_sweep(summary, dial.key, tmp_path / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(png)  # the two panels side by side (11 x 4.5 in), something drawn on them
    assert image.shape[1] > 2 * image.shape[0] and image[..., :3].std() > 0.01


def test_unknown_backend_is_rejected():
    with pytest.raises(ConfigError, match="backend = 'spark' is not allowed: must be one of local, ray"):
        run_sweep(tiny_scenario(), Dial.parse("feedback.flip_rate=0"), [], seeds=[0], backend="spark")


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def files(tmp_path):
    from recsim_post.config import dumps_toml, to_dict

    scenario = tmp_path / "tiny.toml"
    scenario.write_text(dumps_toml(to_dict(tiny_scenario())))
    agents = []
    for name in ("bc", "exp-rsft"):
        a = small_agent(name, 1)
        path = tmp_path / f"small-{name}.toml"
        path.write_text(dumps_toml(to_dict(dataclasses.replace(a, name=f"small-{name}"))))
        agents.append(str(path))
    return str(scenario), agents


def _run(capsys, *argv):
    from recsim_post import cli

    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_sweep_command_writes_tables_and_plot(tmp_path, capsys, files):
    scenario, agents = files
    out = tmp_path / "sw"
    code, stdout, _ = _run(capsys, "sweep", "--scenario", scenario, "--dial", "feedback.noise_std=0,1",
                           "--agents", *agents, "--baseline", "small-bc", "--seeds", "0", "--out", str(out), "-q",
                           "--workers", "2")
    assert code == 0
    assert "paired difference to small-bc" in stdout and "feedback.noise_std=1" in stdout
    assert "paired difference to small-bc at π_ref's entropy" in stdout
    assert {p.name for p in out.iterdir()} >= {"sweep.csv", "sweep_summary.csv", "sweep.png"}
    long = pd.read_csv(out / "sweep.csv")
    assert len(long[long["kind"] == "trained"]) == 2 * 2  # 2 values x 2 recipes x 1 seed


@pytest.mark.parametrize("argv, needle", [
    (["--dial", "feedback.noise_std=0,-1"], "feedback.noise_std = -1.0 is out of range"),
    (["--dial", "feedback.nois=0,1"], "unknown key 'feedback.nois'"),
    (["--dial", "feedback.noise_std=0,1", "--baseline", "dpo"], "--baseline dpo must be one of the recipes swept"),
    (["--dial", "feedback.noise_std=0,1", "--set", "logging.epsilon=2"], "logging.epsilon = 2.0 is out of range"),
    (["--dial", "feedback.noise_std=0,1", "--backend", "spark"], "invalid choice: 'spark'"),
    (["--dial", "feedback.noise_std=0,1", "--workers", "0"], "--workers"),
])
def test_sweep_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, files, argv, needle):
    scenario, agents = files
    out = tmp_path / "sw"
    code, stdout, err = _run(capsys, "sweep", "--scenario", scenario, "--agents", *agents,
                             "--out", str(out), "-q", *argv)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".sw.tmp-*"))


def test_simulate_with_set_changes_the_knob(tmp_path, capsys, files):
    from recsim_post.logs.public import read_public

    scenario, _ = files
    code, _, _ = _run(capsys, "simulate", "--scenario", scenario, "--set", "logging.propensity_mode=logged",
                      "--out", str(tmp_path / "logs"), "-q")
    assert code == 0 and "pscore" in read_public(tmp_path / "logs").interactions.columns


# Ray: sweeps and studies run their cells through the same run_cells / _run_ray; tests/test_study.py's
# test_ray_and_a_process_pool_give_the_local_table holds Ray's cells equal to local ones for both.
