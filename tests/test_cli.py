"""The command line: the happy path end to end, and bad input -> one line, exit 2, nothing left."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from recsim_post import cli
from recsim_post.config import dumps_toml, to_dict
from recsim_post.posttrain.recipe import load_agent
from recsim_post.presets import preset_description, preset_dir, resolve

from .conftest import run_cli, tiny_scenario


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


run = run_cli


def printed_table(text: str) -> dict[str, dict[str, str]]:
    """The first table printed in ``text`` as {method: {column: cell}}: a header line, a rule of
    dashes, then rows up to a blank line; each column spans the dashes under its name."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if i and line.strip() and set(line) <= {"-", " "})
    spans = [m.span() for m in re.finditer(r"-+", lines[rule])]
    header = [lines[rule - 1][a:b].strip() for a, b in spans]
    rows = {}
    for line in lines[rule + 1 :]:
        if not line.strip():
            break
        cells = dict(zip(header, (line[a:b].strip() for a, b in spans)))
        rows[cells["method"]] = cells
    return rows


def check_table(text: str, expected: dict[str, dict[str, float | None]]) -> None:
    """The printed table has exactly the ``expected`` rows, in order, and shows their numbers to
    three decimals (None: the dash of an undefined cell)."""
    table = printed_table(text)
    assert list(table) == list(expected), list(table)
    for method, values in expected.items():
        for column, value in values.items():
            shown = table[method][column]
            assert shown == ("—" if value is None else f"{value:.3f}"), (method, column, shown, value)


def test_simulate_train_evaluate(tmp_path, capsys, scenario_file, agent_file):
    logs = tmp_path / "logs"
    code, out, _ = run(capsys, "simulate", "--scenario", str(scenario_file), "--out", str(logs), "-q")
    assert code == 0
    m = json.loads((logs / "manifest.json").read_text())  # the counts it prints are those it wrote
    assert f"{m['rows']['interactions']:,} impressions, {m['clicks']:,} clicks, 80 users, 60 items" in out
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
    assert result["users"] == 80  # the default cohort (5,000) holds every user of this world
    # --users: the exact truth on a random cohort (the offline metrics still on every held-out click)
    code, out, _ = run(capsys, "evaluate", "--logs", str(logs), "--policy", str(policy), "--json", "--users", "30")
    small = json.loads(out)
    assert code == 0 and small["users"] == 30
    few = {r["method"]: r for r in small["results"]}
    assert few["p"]["ndcg@10"] == methods["p"]["ndcg@10"] and few["p"]["true_value"] != methods["p"]["true_value"]
    assert json.loads(run(capsys, "evaluate", "--logs", str(logs), "--policy", str(policy), "--json",
                          "--users", "0")[1])["results"] == result["results"]  # 0 = every user
    code, _, err = run(capsys, "evaluate", "--logs", str(logs), "--policy", str(policy), "--users", "-1")
    assert code == 2 and "--users = -1" in err and "Traceback" not in err
    code, out, _ = run(capsys, "evaluate", "--logs", str(logs), "--policy", str(policy))
    assert code == 0
    columns = ("true_value", "true_value_norm", "ndcg@10", "mrr")
    check_table(out, {m: {c: r[c] for c in columns} for m, r in methods.items()})  # the JSON's numbers


def test_demo_writes_table_plot_and_refuses_foreign_folder(tmp_path, capsys, scenario_file, agent_file):
    out = tmp_path / "demo"
    code, stdout, _ = run(capsys, "demo", "--scenario", str(scenario_file), "--agents", str(agent_file),
                          "--out", str(out), "-q")
    assert code == 0
    for name in ("results.csv", "results.png", "logs/manifest.json", "policies/exp-rsft.pt"):
        assert (out / name).is_file(), name
    import pandas as pd

    csv = pd.read_csv(out / "results.csv").set_index("method")
    shown = {m: {c: (None if math.isnan(csv.loc[m, c]) else csv.loc[m, c]) for c in ("true_value_norm", "ndcg@10")}
             for m in csv.index}
    assert list(shown) == ["uniform", "popularity", "logging policy", "oracle", "exp-rsft"]
    check_table(stdout, shown)  # the table printed is the one written
    # negative control: the legend alone names the oracle and ndcg@10, so a table without the
    # oracle's row fails here (the former check, three substrings anywhere, passed it)
    no_oracle = "\n".join(line for line in stdout.splitlines() if not line.startswith("oracle "))
    assert "oracle" in no_oracle and "ndcg@10" in no_oracle
    with pytest.raises(AssertionError):
        check_table(no_oracle, shown)
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


def check_listing(out: str, kind: str) -> None:
    """One line per preset file of ``kind``, sorted: its name, (envs) its Gymnasium id, its description."""
    names = sorted(p.stem for p in preset_dir(kind).glob("*.toml"))
    assert len(names) >= 5
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == names
    for name, line in zip(names, lines):
        if kind == "envs":
            assert line.split()[1] == f"RecSimPost/{name}-v0", line
        assert line.endswith(preset_description(preset_dir(kind) / f"{name}.toml")), line


def test_listing_commands(capsys):
    code, out, _ = run(capsys, "envs")
    assert code == 0
    check_listing(out, "envs")
    code, out, _ = run(capsys, "agents")
    assert code == 0
    check_listing(out, "agents")
    # negative control: "bc" is a substring of bc-hstu's line and "quickstart" of other scenarios'
    # descriptions, so a listing that drops those presets passed the former substring checks
    for kind, name in (("agents", "bc"), ("envs", "quickstart")):
        code, out, _ = run(capsys, kind)
        dropped = "\n".join(line for line in out.splitlines() if line.split()[0] != name)
        assert name in dropped
        with pytest.raises(AssertionError):
            check_listing(dropped, kind)


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
    assert code == 2 and "interactions.parquet does not match the sha256 in manifest.json" in err
    (logs / "manifest.json").write_text("{ not json")
    code, _, err = run(capsys, "train", "--logs", str(logs), "--agent", "bc", "-q")
    assert code == 2 and "manifest.json is corrupt" in err
    code, _, err = run(capsys, "simulate", "--scenario", "atlantis", "--out", str(tmp_path / "x"), "-q")
    assert code == 2 and "unknown scenario 'atlantis'" in err and "quickstart" in err


def test_simulate_refuses_to_clobber_and_failure_leaves_nothing(tmp_path, capsys, scenario_file, monkeypatch):
    logs = tmp_path / "logs"
    assert run(capsys, "simulate", "--scenario", str(scenario_file), "--out", str(logs), "-q")[0] == 0
    code, _, err = run(capsys, "simulate", "--scenario", str(scenario_file), "--out", str(logs), "-q")
    assert code == 2 and "is not empty: it holds the results of an earlier 'recsim-post simulate'" in err
    assert "--overwrite" in err

    from recsim_post.logs import simulate as sim_mod

    calls = {"n": 0}
    real = sim_mod._write_parquet

    def failing(*args, **kwargs):  # noqa: ANN002, ANN003
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(sim_mod, "_write_parquet", failing)
    code, _, err = run(capsys, "simulate", "--scenario", str(scenario_file), "--out", str(tmp_path / "a" / "half"), "-q")
    assert code == 1 and err == "recsim-post: error: disk full\n"  # an I/O failure: one line, no traceback
    assert not (tmp_path / "a").exists()  # not even the parent folder it made
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
    # a logged signal as the reward: estimates of the watch collected, no exact truth, its own legend
    code, out, _ = run(capsys, "ope", "--logs", str(logs), "--bootstrap", "5", "--propensity", "frequency",
                       "--q-model", "item", "--reward", "watch", "--json")
    report = json.loads(out)
    assert code == 0 and report["reward"] == "watch" and "expected watch" in report["definitions"]
    watch = next(r for r in report["results"] if r["estimator"] == "ips" and r["pscore"] == "true")
    assert 0 <= watch["estimate"] <= 1 and watch["estimate"] != ips["estimate"]
    assert all(r["truth"] is None or r["truth"] != r["truth"] for r in report["results"])  # NaN or null
    code, _, err = run(capsys, "ope", "--scenario", str(scenario_file), "--reward", "click")
    assert code == 2 and err.startswith("recsim-post: error: --reward click belongs to --logs")


def test_ope_scores_drifting_preferences_exactly(tmp_path, capsys):
    """With preference drift the sealed theta history gives the exact truth at every logged round."""
    data = to_dict(tiny_scenario())
    data["dynamics"]["drift_rate"] = 0.1
    path = tmp_path / "drift.toml"
    path.write_text(dumps_toml(data))
    logs = tmp_path / "logs"
    assert run(capsys, "simulate", "--scenario", str(path), "--out", str(logs), "-q")[0] == 0
    code, out, _ = run(capsys, "ope", "--logs", str(logs), "--bootstrap", "5", "--propensity", "frequency", "--json")
    assert code == 0
    rows = json.loads(out)["results"]
    assert rows and all(r["truth"] is not None and math.isfinite(r["truth"]) for r in rows)


# --------------------------------------------------------------------------------------------- #
# closed loop: `rollout`, and the demo's closed_loop column
# --------------------------------------------------------------------------------------------- #

ROLLOUT = ("--rounds", "3", "--seeds", "0", "1", "--users", "40")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """A demo on the tiny world with one small recipe and a 3-round, 40-user closed loop."""
    root = tmp_path_factory.mktemp("closed")
    scenario = root / "tiny.toml"
    scenario.write_text(dumps_toml(to_dict(tiny_scenario())))
    data = to_dict(load_agent(resolve("agents", "exp-rsft")))
    data["model"].update(dim=16, n_layers=1, n_heads=1, max_len=12)
    data["pretrain"]["epochs"] = data["finetune"]["epochs"] = 1
    agent = root / "small-exp-rsft.toml"
    agent.write_text(dumps_toml(data))
    out = root / "demo"
    assert cli.main(["demo", "--scenario", str(scenario), "--agents", str(agent), "--out", str(out), "-q",
                     "--rollout-rounds", "3", "--rollout-seeds", "0", "1", "--rollout-users", "40"]) == 0
    return out


def test_demo_has_a_closed_loop_column_and_rollout_reproduces_it(demo_run, capsys):
    import pandas as pd

    table = pd.read_csv(demo_run / "results.csv").set_index("method")
    assert list(table.index) == ["uniform", "popularity", "logging policy", "oracle", "exp-rsft"]
    assert table["closed_loop"].notna().all()
    args = ("rollout", "--logs", str(demo_run / "logs"), "--policy", str(demo_run / "policies" / "exp-rsft.pt"), *ROLLOUT)
    code, out, _ = run(capsys, *args, "--json", "-q")
    assert code == 0
    result = json.loads(out)
    assert (result["rounds"], result["users"], result["seeds"], result["k"]) == (3, 40, [0, 1], 5)
    rows = {r["method"]: r for r in result["results"]}
    assert set(rows) == set(table.index)
    assert {r["kind"] for m, r in rows.items() if m != "exp-rsft"} == {"reference"}
    # the world re-simulated from the folder is the demo's world: the same numbers, row by row
    for method, r in rows.items():
        assert r["closed_loop_mean"] == pytest.approx(table.loc[method, "closed_loop"], rel=1e-12, abs=1e-12), method
        assert r["closed_loop_std"] is not None and r["n_seeds"] == 2
    assert len(result["runs"]) == 2 * len(rows)
    assert run(capsys, *args, "--json", "-q")[1] == out  # same seeds, same output
    code, text, _ = run(capsys, *args, "-q")
    assert code == 0 and "not an" in text  # the legend says what the oracle row is not
    table = printed_table(text)  # the same numbers as mean ± std over the seeds
    assert list(table) == list(rows)
    for method, r in rows.items():
        assert table[method]["closed_loop"] == f"{r['closed_loop_mean']:.3f} ± {r['closed_loop_std']:.3f}", method


def test_rollout_with_sampled_slates_keeps_the_references_definitions(demo_run, capsys):
    args = ("rollout", "--logs", str(demo_run / "logs"), "--policy", str(demo_run / "policies" / "exp-rsft.pt"), *ROLLOUT, "--json", "-q")
    top = {r["method"]: r for r in json.loads(run(capsys, *args)[1])["results"]}
    sampled = {r["method"]: r for r in json.loads(run(capsys, *args, "--slate", "sample")[1])["results"]}
    for method in ("logging policy", "oracle"):  # they build their slates their own way either way
        assert sampled[method]["closed_loop_mean"] == top[method]["closed_loop_mean"], method
    assert sampled["exp-rsft"]["closed_loop_mean"] != top["exp-rsft"]["closed_loop_mean"]


def _foreign_policy(path: Path) -> Path:
    from recsim_post.models.policy import SequencePolicy, build_model
    from recsim_post.models.sasrec import SASRecConfig

    SequencePolicy(build_model(SASRecConfig(dim=16, n_layers=1, n_heads=1, max_len=12), 7), 7).save(path)
    return path


def test_rollout_bad_input_exits_2_with_one_line(demo_run, tmp_path, capsys):
    import shutil

    logs, policy = demo_run / "logs", str(demo_run / "policies" / "exp-rsft.pt")
    twin = tmp_path / "twin" / "exp-rsft.pt"
    twin.parent.mkdir()
    shutil.copy(policy, twin)
    edited = tmp_path / "edited"
    shutil.copytree(logs, edited)
    import pyarrow.parquet as pq

    items = pq.read_table(edited / "items.parquet")  # valid parquet, one feature value changed
    pq.write_table(items.set_column(2, "f0", [[v + 1.0 for v in items.column("f0").to_pylist()]]),
                   edited / "items.parquet")
    cases = [
        (["--logs", str(tmp_path / "nope"), "--policy", policy], "log folder not found"),
        (["--logs", str(logs), "--policy", policy, "--rounds", "0"], "--rounds = 0 is out of range: must be >= 1"),
        (["--logs", str(logs), "--policy", policy, "--seeds", "0", "-1"], "--seeds: -1 is out of range: a seed must be >= 0"),
        (["--logs", str(logs), "--policy", policy, "--users", "-3"], "--users = -3 is out of range: must be >= 0"),
        (["--logs", str(logs), "--policy", policy, "--slate-size", "61"],
         "--slate-size = 61 is out of range: must be <= the catalogue size 60"),
        (["--logs", str(logs), "--policy", str(_foreign_policy(tmp_path / "other.pt"))],
         "policy 'other' scores 7 items but the logs have 60"),
        (["--logs", str(logs), "--policy", str(tmp_path / "missing.pt")], "policy file not found"),
        (["--logs", str(logs), "--policy", policy, str(twin)], "two policy files are named 'exp-rsft'"),
        (["--logs", str(edited), "--policy", policy], "items.parquet does not match the sha256 in manifest.json"),
    ]
    for argv, needle in cases:
        code, out, err = run(capsys, "rollout", *argv, "-q")
        assert code == 2, argv
        assert needle in err, (needle, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and out == ""
    with pytest.raises(SystemExit) as exc:  # argparse's own errors: exit 2 as well
        cli.main(["rollout", "--logs", str(logs), "--policy", policy, "--rounds", "three"])
    assert exc.value.code == 2
    assert "invalid int value: 'three'" in capsys.readouterr().err


def test_demo_checks_its_closed_loop_flags_before_any_work(tmp_path, capsys, scenario_file):
    out = tmp_path / "never"
    for flags, needle in [
        (["--rollout-users", "-1"], "--rollout-users = -1 is out of range: must be >= 0"),
        (["--rollout-rounds", "-2"], "--rollout-rounds = -2 is out of range: must be >= 0"),
        (["--rollout-seeds", "-5"], "--rollout-seeds: -5 is out of range: a seed must be >= 0"),
    ]:
        code, _, err = run(capsys, "demo", "--scenario", str(scenario_file), "--out", str(out), "-q", *flags)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
        assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_demo_without_closed_loop_has_no_column(tmp_path, capsys, scenario_file, agent_file):
    import pandas as pd

    out = tmp_path / "demo"
    code, stdout, _ = run(capsys, "demo", "--scenario", str(scenario_file), "--agents", str(agent_file),
                          "--out", str(out), "-q", "--no-logs", "--rollout-rounds", "0")
    assert code == 0 and "closed_loop" not in stdout.split("\nwrote ")[0]  # the table and its legend
    assert "closed_loop" not in pd.read_csv(out / "results.csv").columns


def test_default_demo_recipes_are_item_level_then_token_sft_and_gflowgr():
    names = [a.name for a in cli._story_agents(None)]
    assert names[0] == "bc" and names[-3:] == ["sft-token", "gflowgr-tb", "gflowgr-db"]
    assert "exp-rsft-token" not in names and "dpo-token" not in names  # run when named
    assert [a.name for a in cli._story_agents(["dpo-token"])] == ["dpo-token"]
