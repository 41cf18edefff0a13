"""The command line: the happy path end to end, and bad input -> one line, exit 2, nothing left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recsim_post import cli
from recsim_post.config import dumps_toml, to_dict
from recsim_post.posttrain.recipe import load_agent
from recsim_post.presets import resolve

from .conftest import tiny_scenario


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(dumps_toml(to_dict(tiny_scenario())))
    return path


@pytest.fixture
def agent_file(tmp_path: Path) -> Path:
    """exp-rsft with a small model and one epoch per stage."""
    data = to_dict(load_agent(resolve("agents", "exp-rsft")))
    data["model"].update(dim=16, n_layers=1, n_heads=1, max_len=12)
    data["pretrain"]["epochs"] = 1
    data["finetune"]["epochs"] = 1
    path = tmp_path / "small-exp-rsft.toml"
    path.write_text(dumps_toml(data))
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_train_evaluate(tmp_path, capsys, scenario_file, agent_file):
    logs = tmp_path / "logs"
    code, out, _ = run(capsys, "simulate", "--scenario", str(scenario_file), "--out", str(logs), "-q")
    assert code == 0 and "impressions" in out
    policy = tmp_path / "p.pt"
    code, out, _ = run(capsys, "train", "--logs", str(logs), "--agent", str(agent_file), "--out", str(policy), "-q")
    assert code == 0 and policy.is_file()
    code, out, _ = run(capsys, "evaluate", "--logs", str(logs), "--policy", str(policy), "--json")
    assert code == 0
    result = json.loads(out)
    methods = {r["method"]: r for r in result["results"]}
    assert set(methods) == {"uniform", "popularity", "logging policy", "oracle", "p"}
    assert methods["oracle"]["true_value_norm"] == 1.0 and methods["uniform"]["true_value_norm"] == 0.0
    assert methods["uniform"]["ndcg@10"] is None
    assert 0.0 <= methods["p"]["ndcg@10"] <= 1.0
    code, out, _ = run(capsys, "evaluate", "--logs", str(logs), "--policy", str(policy))
    assert code == 0 and "logging policy" in out


def test_demo_writes_table_plot_and_refuses_foreign_folder(tmp_path, capsys, scenario_file, agent_file):
    out = tmp_path / "demo"
    code, stdout, _ = run(capsys, "demo", "--scenario", str(scenario_file), "--agents", str(agent_file),
                          "--out", str(out), "-q")
    assert code == 0
    for name in ("results.csv", "results.png", "logs/manifest.json", "policies/exp-rsft.pt"):
        assert (out / name).is_file(), name
    assert "exp-rsft" in stdout and "oracle" in stdout and "ndcg@10" in stdout
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # running again replaces its own output; a folder it did not write is refused
    assert run(capsys, "demo", "--scenario", str(scenario_file), "--agents", str(agent_file),
               "--out", str(out), "-q", "--no-logs")[0] == 0
    assert not (out / "logs").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    code, _, err = run(capsys, "demo", "--scenario", str(scenario_file), "--out", str(foreign), "-q")
    assert code == 2 and "--overwrite" in err
    assert (foreign / "precious.txt").read_text() == "keep"


def test_listing_commands(capsys):
    code, out, _ = run(capsys, "envs")
    assert code == 0 and "quickstart" in out and "RecSimPost/trending-v0" in out
    code, out, _ = run(capsys, "agents")
    assert code == 0 and "bc" in out and "exp-rsft" in out


def _bad_scenario(tmp_path: Path, section: str, key: str, value) -> Path:  # noqa: ANN001
    data = to_dict(tiny_scenario())
    data[section][key] = value
    path = tmp_path / "bad.toml"
    path.write_text(dumps_toml(data))
    return path


@pytest.mark.parametrize(
    ("section", "key", "value", "needle"),
    [
        ("feedback", "noise_std", -1.0, "feedback.noise_std = -1.0 is out of range: must be >= 0"),
        ("catalog", "n_items", 0, "catalog.n_items = 0 is out of range: must be >= 2"),
        ("feedback", "colour", 3, "unknown key 'feedback.colour'; allowed keys: rating_center"),
        ("logging", "epsilon", 1.5, "logging.epsilon = 1.5 is out of range: must be >= 0 and <= 1"),
        ("users", "n_users", "many", "users.n_users = 'many' must be a whole number"),
    ],
)
def test_bad_scenario_values_exit_2_with_one_line(tmp_path, capsys, section, key, value, needle):
    bad = _bad_scenario(tmp_path, section, key, value)
    out = tmp_path / "never"
    code, stdout, err = run(capsys, "simulate", "--scenario", str(bad), "--out", str(out), "-q")
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_bad_agent_values_exit_2(tmp_path, capsys, scenario_file):
    logs = tmp_path / "logs"
    assert run(capsys, "simulate", "--scenario", str(scenario_file), "--out", str(logs), "-q")[0] == 0
    data = to_dict(load_agent(resolve("agents", "exp-rsft")))
    data["method"]["lam"] = 0.0
    bad = tmp_path / "bad-agent.toml"
    bad.write_text(dumps_toml(data))
    code, _, err = run(capsys, "train", "--logs", str(logs), "--agent", str(bad), "-q")
    assert code == 2 and "method.lam = 0.0 is out of range: must be > 0" in err
    assert not (logs / "policies").exists()
    code, _, err = run(capsys, "train", "--logs", str(logs), "--agent", "no-such-agent", "-q")
    assert code == 2 and "unknown agent 'no-such-agent'" in err and "exp-rsft" in err


def test_missing_and_corrupt_logs_exit_2(tmp_path, capsys, scenario_file):
    code, _, err = run(capsys, "evaluate", "--logs", str(tmp_path / "nope"), "--policy", "x.pt")
    assert code == 2 and "log folder not found" in err
    logs = tmp_path / "logs"
    assert run(capsys, "simulate", "--scenario", str(scenario_file), "--out", str(logs), "-q")[0] == 0
    data = (logs / "interactions.parquet").read_bytes()
    (logs / "interactions.parquet").write_bytes(data[: len(data) // 2])
    code, _, err = run(capsys, "train", "--logs", str(logs), "--agent", "bc", "-q")
    assert code == 2 and "interactions.parquet is corrupt" in err
    (logs / "manifest.json").write_text("{ not json")
    code, _, err = run(capsys, "train", "--logs", str(logs), "--agent", "bc", "-q")
    assert code == 2 and "manifest.json is corrupt" in err
    code, _, err = run(capsys, "simulate", "--scenario", "atlantis", "--out", str(tmp_path / "x"), "-q")
    assert code == 2 and "unknown scenario 'atlantis'" in err and "quickstart" in err


def test_simulate_refuses_to_clobber_and_failure_leaves_nothing(tmp_path, capsys, scenario_file, monkeypatch):
    logs = tmp_path / "logs"
    assert run(capsys, "simulate", "--scenario", str(scenario_file), "--out", str(logs), "-q")[0] == 0
    code, _, err = run(capsys, "simulate", "--scenario", str(scenario_file), "--out", str(logs), "-q")
    assert code == 2 and "already exists" in err

    from recsim_post.logs import simulate as sim_mod

    calls = {"n": 0}
    real = sim_mod._write_parquet

    def failing(*args, **kwargs):  # noqa: ANN002, ANN003
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(sim_mod, "_write_parquet", failing)
    with pytest.raises(OSError):
        cli.main(["simulate", "--scenario", str(scenario_file), "--out", str(tmp_path / "half"), "-q"])
    assert not (tmp_path / "half").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".half")]


def test_console_script_exits_2_without_traceback(tmp_path):
    """The real entry point, in a fresh process (argparse errors and our own errors alike)."""
    for argv in (["simulate", "--scenario", "atlantis", "--out", str(tmp_path / "o")], ["simulate"], ["evaluate", "--logs", str(tmp_path), "--policy", "p.pt", "--k", "0"]):
        proc = subprocess.run([sys.executable, "-m", "recsim_post.cli", *argv], capture_output=True, text=True)
        assert proc.returncode == 2, argv
        assert "Traceback" not in proc.stderr
        assert proc.stderr.startswith("recsim-post") or "usage:" in proc.stderr


def test_ope_command(tmp_path, capsys, scenario_file):
    logs = tmp_path / "logs"
    assert run(capsys, "simulate", "--scenario", str(scenario_file), "--out", str(logs), "-q")[0] == 0
    code, out, _ = run(capsys, "ope", "--logs", str(logs), "--bootstrap", "20", "--propensity", "frequency", "--json")
    assert code == 0
    rows = json.loads(out)["results"]
    assert {(r["estimator"], r["pscore"]) for r in rows} >= {("ips", "true"), ("dr", "estimated")}
    ips = next(r for r in rows if r["estimator"] == "ips" and r["pscore"] == "true")
    assert ips["ci_low"] <= ips["estimate"] <= ips["ci_high"] and ips["truth"] is not None


def test_ope_refuses_drifting_preferences(tmp_path, capsys):
    data = to_dict(tiny_scenario())
    data["dynamics"]["drift_rate"] = 0.1
    path = tmp_path / "drift.toml"
    path.write_text(dumps_toml(data))
    logs = tmp_path / "logs"
    assert run(capsys, "simulate", "--scenario", str(path), "--out", str(logs), "-q")[0] == 0
    code, _, err = run(capsys, "ope", "--logs", str(logs), "--bootstrap", "5")
    assert code == 2 and "dynamics.drift_rate = 0.1" in err and "Traceback" not in err
