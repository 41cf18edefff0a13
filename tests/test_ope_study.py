"""The multi-seed OPE study: end to end on a tiny world, its CSVs, and the `ope --scenario` command."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsim_post import cli
from recsim_post.config import dumps_toml, to_dict
from recsim_post.errors import ConfigError
from recsim_post.ope.qmodel import SequenceQConfig
from recsim_post.ope.propensity import PropensityModelConfig
from recsim_post.experiments.ope_study import format_study, ope_study, write_study
from recsim_post.posttrain.recipe import load_agent
from recsim_post.presets import resolve

from .conftest import tiny_scenario


def _small(name: str):
    """A preset recipe with a small model and one epoch per stage."""
    agent = load_agent(resolve("agents", name))
    data = to_dict(agent)
    data["model"].update(dim=16, n_layers=1, n_heads=1, max_len=12)
    data["pretrain"]["epochs"] = 1
    data["finetune"]["epochs"] = 1
    return data


@pytest.fixture
def agent_files(tmp_path: Path) -> list[Path]:
    paths = []
    for name in ("bc", "exp-rsft"):
        path = tmp_path / f"small-{name}.toml"
        path.write_text(dumps_toml(_small(name)))
        paths.append(path)
    return paths


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(dumps_toml(to_dict(tiny_scenario())))
    return path


def test_study_end_to_end(tmp_path, agent_files):
    agents = [load_agent(p) for p in agent_files]
    study = ope_study(
        tiny_scenario(), agents, [0, 1], n_bootstrap=20, propensity="bc",
        q_cfg=SequenceQConfig(dim=8, max_len=5, epochs=1, device="cpu"),
        model_cfg=PropensityModelConfig(dim=8, max_len=10, epochs=1, batch_size=512),
    )
    rep = study.report
    assert set(rep["seed"]) == {0, 1}
    assert set(rep["policy"]) == {"uniform", "bc", "exp-rsft"}  # the recipes' names, not their files'
    # per seed x policy x source: IPS, SNIPS, and DM / DR / Switch-DR for each of two q^
    assert len(rep) == 2 * 3 * 2 * (2 + 3 * 2)
    assert np.isfinite(rep[["estimate", "ci_low", "ci_high", "truth", "error_norm"]].to_numpy()).all()
    assert len(study.summary) == 2 * 8 and (study.summary["n"] == 2 * 3).all()
    assert len(study.by_policy) == 3 * 2 * 8
    assert set(study.values["seed"]) == {0, 1} and "true_value_norm" in study.values.columns
    text = format_study(study)
    assert "dr [sequence]" in text and "switch-dr [item]" in text
    paths = write_study(study, tmp_path / "out")
    assert [p.name for p in paths] == ["report.csv", "summary.csv", "summary_by_policy.csv", "values.csv"]
    back = pd.read_csv(paths[1])
    assert len(back) == len(study.summary)
    # each seed's exact truth is that seed's: the worlds differ
    u = rep[(rep.policy == "uniform") & (rep.estimator == "ips") & (rep.pscore == "true")]
    assert u["truth"].nunique() == 2


def test_study_refuses_bad_seeds_and_names(agent_files):
    agents = [load_agent(p) for p in agent_files]
    with pytest.raises(ConfigError, match="distinct"):
        ope_study(tiny_scenario(), agents, [0, 0])
    with pytest.raises(ConfigError, match="uniform"):
        ope_study(tiny_scenario(), [dataclasses.replace(agents[0], name="uniform")], [0])


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ope_study_command(tmp_path, capsys, scenario_file, agent_files):
    out = tmp_path / "study"
    code, text, err = run(
        capsys, "ope", "--scenario", str(scenario_file), "--agents", str(agent_files[0]), "--seeds", "0", "1",
        "--out", str(out), "--bootstrap", "10", "--propensity", "frequency", "--q-model", "item", "-q",
        "--set", "logging.propensity_mode=none",
    )
    assert code == 0, err
    assert {p.name for p in out.iterdir()} >= {"report.csv", "summary.csv", "summary_by_policy.csv", "values.csv"}
    assert "bias_norm per target policy" in text and "wrote" in text
    rep = pd.read_csv(out / "report.csv")
    assert set(rep["q_model"]) == {"none", "item"} and set(rep["seed"]) == {0, 1}
    # --set reached every seed's simulation: its logs recorded no propensities, so only estimated ones are used
    assert set(rep["pscore"]) == {"estimated"}


def _exits_2(capsys, tmp_path, *argv: str, match: str) -> None:
    before = set(tmp_path.iterdir())
    with pytest.raises(SystemExit) as info:  # argparse errors exit directly
        code = cli.main(list(argv))
        raise SystemExit(code)
    _, err = capsys.readouterr()
    assert info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert match in err, err
    assert set(tmp_path.iterdir()) == before  # nothing written, not even a temporary folder


@pytest.mark.parametrize(
    "argv, match",
    [
        (("ope", "--logs", "L", "--scenario", "quickstart"), "not allowed with argument"),
        (("ope", "--bootstrap", "5"), "one of the arguments --logs --scenario is required"),
        (("ope", "--scenario", "quickstart", "--agents", "no-such-recipe"), "unknown agent 'no-such-recipe'"),
        (("ope", "--scenario", "atlantis"), "unknown scenario 'atlantis'"),
        (("ope", "--scenario", "quickstart", "--policy", "p.pt"), "--policy belongs to --logs"),
        (("ope", "--scenario", "quickstart", "--seed", "3"), "--seed belongs to --logs"),
        (("ope", "--scenario", "quickstart", "--seeds", "1", "1"), "distinct"),
        (("ope", "--scenario", "quickstart", "--bootstrap", "0"), "--bootstrap = 0 is out of range"),
        (("ope", "--scenario", "quickstart", "--q-model", "user"), "invalid choice"),
        (("ope", "--scenario", "quickstart", "--set", "logging.switch_prob=2"), "logging.switch_prob = 2.0 is out of range"),
    ],
)
def test_ope_bad_input_exits_2(tmp_path, capsys, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    _exits_2(capsys, tmp_path, *argv, match=match)


def test_ope_logs_refuses_study_options(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _exits_2(capsys, tmp_path, "ope", "--logs", str(tmp_path / "none"), "--agents", "bc", match="--agents belongs to a study")
    _exits_2(capsys, tmp_path, "ope", "--logs", str(tmp_path / "none"), "--out", "x", match="--out belongs to a study")
    _exits_2(capsys, tmp_path, "ope", "--logs", str(tmp_path / "none"), "--set", "logging.epsilon=0.1",
             match="--set belongs to a study")


def test_ope_study_refuses_an_occupied_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    _exits_2(capsys, tmp_path, "ope", "--scenario", "quickstart", "--out", "busy",
             match="--out busy is not empty: it holds files recsim-post did not write (keep.txt)")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def _logs_folder(tmp_path: Path, capsys, **logging) -> Path:
    from recsim_post.world.config import LoggingConfig

    try:
        cfg = tiny_scenario(logging=LoggingConfig(slate_size=5, **logging))
    except ConfigError as err:  # a knob this version does not have
        pytest.skip(str(err))
    path = tmp_path / "scenario.toml"
    path.write_text(dumps_toml(to_dict(cfg)))
    logs = tmp_path / "logs"
    assert run(capsys, "simulate", "--scenario", str(path), "--out", str(logs), "-q")[0] == 0
    return logs


def test_ope_logs_without_propensities_says_so_in_one_line(tmp_path, capsys):
    logs = _logs_folder(tmp_path, capsys, propensity_mode="none")
    code, out, err = run(capsys, "ope", "--logs", str(logs), "--bootstrap", "10", "--propensity", "frequency",
                         "--q-model", "item", "--json")
    assert code == 0, err
    notes = [line for line in err.splitlines() if "propensit" in line]
    assert len(notes) == 1 and "estimated propensities (frequency) only" in notes[0]
    body = __import__("json").loads(out)
    assert {r["pscore"] for r in body["results"]} == {"estimated"} and len(body["notes"]) == 1


def test_ope_logs_reports_deficient_support(tmp_path, capsys):
    logs = _logs_folder(tmp_path, capsys, support=0.8)
    code, out, err = run(capsys, "ope", "--logs", str(logs), "--bootstrap", "10", "--propensity", "frequency",
                         "--q-model", "item")
    assert code == 0, err
    assert "deficient support" in out and "uniform puts 20.0% of its mass there" in out
