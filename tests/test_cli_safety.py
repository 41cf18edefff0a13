"""Issue 8 at the command line, as a user calls it: outputs that must never be written, folders
that belong to someone else, concurrent writers, interrupted and resumed runs, and checks that
happen before any work. Every case asserts the exit status, one line on stderr without a
traceback, and the file system before and after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from recsim_post import cli
from recsim_post.config import dumps_toml, to_dict
from recsim_post.outputs import MARKER, OutputFolder

from .conftest import run_cli, tiny_scenario
from .test_safe_outputs import tree
from .test_story import small_agent

ROOT = Path(__file__).resolve().parent.parent


run = run_cli


def refused(capsys, root: Path, *argv: str, needle: str) -> str:
    """Run the CLI and check it refused: exit 2, one line naming ``needle``, the tree under
    ``root`` unchanged (nothing deleted, nothing half-written, no temporaries)."""
    before = tree(root)
    code, out, err = run(capsys, *argv)
    assert code == 2, (argv, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("recsim-post") and "Traceback" not in err, err
    assert needle in err, (needle, err)
    assert tree(root) == before, argv
    return err


@pytest.fixture
def no_work(monkeypatch):
    """Any simulation or training makes the test fail: refusals must come before the work."""

    def boom(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("the work started before the output was checked")

    import recsim_post.logs.simulate as sim_mod
    import recsim_post.posttrain.recipe as recipe
    import recsim_post.experiments.story as story

    monkeypatch.setattr(sim_mod, "simulate", boom)
    monkeypatch.setattr(sim_mod, "LogRun", boom)  # simulate on the command line streams through it
    monkeypatch.setattr(story, "run_story", boom)
    monkeypatch.setattr(recipe, "pretrain", boom)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny scenario, a small BC recipe, and logs simulated from them."""
    root = tmp_path_factory.mktemp("files")
    scenario = root / "tiny.toml"
    scenario.write_text(dumps_toml(to_dict(tiny_scenario())))
    agent = root / "small-bc.toml"
    agent.write_text(dumps_toml(to_dict(small_agent("bc", 1))))
    logs = root / "logs"
    assert cli.main(["simulate", "--scenario", str(scenario), "--out", str(logs), "-q"]) == 0
    return {"scenario": scenario, "agent": agent, "logs": logs}


def commands(files: dict[str, Path], out: str) -> dict[str, list[str]]:
    s, a = str(files["scenario"]), str(files["agent"])
    return {
        "simulate": ["simulate", "--scenario", s, "--out", out, "-q"],
        "demo": ["demo", "--scenario", s, "--agents", a, "--out", out, "-q"],
        "compare": ["compare", "--scenario", s, "--agents", a, "--seeds", "0", "1", "--out", out, "-q"],
        "sweep": ["sweep", "--scenario", s, "--dial", "feedback.noise_std=0,1", "--agents", a, "--baseline",
                  "bc", "--seeds", "0", "--out", out, "-q"],
        "ope": ["ope", "--scenario", s, "--agents", a, "--seeds", "0", "--out", out, "-q"],
        "train": ["train", "--logs", str(files["logs"]), "--agent", a, "--out", out, "-q"],
    }


# --------------------------------------------------------------------------------------------- #
# data loss: outputs that must never be written
# --------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("command", ["simulate", "demo", "compare", "sweep", "ope", "train"])
def test_no_command_writes_over_the_current_folder_or_its_ancestors(tmp_path, capsys, monkeypatch, files, no_work, command):
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("the user's")
    (tmp_path / "also-precious.txt").write_text("the user's")
    monkeypatch.chdir(work)
    for out, needle in ((".", "is the current folder"), ("..", "is an ancestor of the current folder"),
                        (str(work), "is the current folder")):
        argv = commands(files, out)[command]
        refused(capsys, tmp_path, *argv, needle=needle)
        if command != "train":  # train's --overwrite is for a file
            refused(capsys, tmp_path, *argv, "--overwrite", needle=needle)


def test_outputs_that_cannot_be_written_are_refused_before_the_work(tmp_path, capsys, files, no_work):
    (tmp_path / "a-file").write_text("x")
    cmds = commands(files, str(tmp_path / "a-file" / "out"))
    for name in ("simulate", "demo", "sweep", "train"):
        refused(capsys, tmp_path, *cmds[name], needle="which is a file, not a folder")
    refused(capsys, tmp_path, *commands(files, "/proc/recsim-post-x")["simulate"], needle="cannot write --out /proc/recsim-post-x")
    refused(capsys, tmp_path, *commands(files, str(tmp_path))["train"], needle="is a folder: give a file name")
    refused(capsys, tmp_path, *commands(files, str(tmp_path / "a-file"))["simulate"], "--overwrite",
            needle="is a file, not a folder")


def test_a_non_empty_log_folder_is_refused_before_simulating(tmp_path, capsys, files, no_work):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "mine.csv").write_text("1,2")
    refused(capsys, tmp_path, *commands(files, str(tmp_path / "logs"))["simulate"],
            needle="holds files recsim-post did not write (mine.csv); pass --overwrite")


def test_each_command_owns_its_folders(tmp_path, capsys, files, no_work):
    """A folder another command wrote, or one holding the user's files, is never replaced
    without --overwrite (today a sweep --out onto a demo folder deletes the demo)."""
    cases = {"demo": "sweep", "compare": "demo", "sweep": "ope", "ope": "compare", "simulate": "demo"}
    for owner, intruder in cases.items():
        folder = tmp_path / owner
        target = OutputFolder(folder, owner)
        with target as tmp:
            (tmp / "result.txt").write_text(owner)
        refused(capsys, tmp_path, *commands(files, str(folder))[intruder],
                needle=f"was written by 'recsim-post {owner}', not by '{intruder}'")
    (tmp_path / "demo" / "my-notes.txt").write_text("keep")
    refused(capsys, tmp_path, *commands(files, str(tmp_path / "demo"))["demo"],
            needle="holds files added or changed since recsim-post demo wrote it (my-notes.txt)")


def test_a_second_writer_stops_at_once(tmp_path, capsys, files, no_work):
    held = OutputFolder(tmp_path / "logs", "simulate")
    with held:
        for name in ("simulate", "demo", "sweep"):
            err = refused(capsys, tmp_path, *commands(files, str(tmp_path / "logs"))[name],
                          needle="is being written by another recsim-post run")
            assert f"(pid {os.getpid()})" in err


def test_demo_replaces_its_own_folder_and_keeps_the_users_files(tmp_path, capsys, files):
    out = tmp_path / "demo"
    argv = commands(files, str(out))["demo"] + ["--rollout-rounds", "0"]
    assert run(capsys, *argv)[0] == 0
    first = tree(out)
    assert run(capsys, *argv, "--no-logs")[0] == 0  # its own, unchanged: replaced without --overwrite
    assert not (out / "logs").exists() and (out / "policies" / "bc.pt").is_file()
    (out / "policies" / "mine.pt").write_bytes(b"the user's policy")
    refused(capsys, tmp_path, *argv, needle="(policies/mine.pt)")
    assert run(capsys, *argv, "--overwrite")[0] == 0
    assert tree(out).keys() == first.keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no lock file, no temporaries


def test_train_refuses_an_existing_file_before_training(tmp_path, capsys, files, no_work):
    (tmp_path / "p.pt").write_bytes(b"the user's")
    refused(capsys, tmp_path, *commands(files, str(tmp_path / "p.pt"))["train"], needle="already exists; pass --overwrite")


def test_negative_seeds_are_refused_in_one_line(tmp_path, capsys, files, no_work):
    logs = str(files["logs"])
    for argv in (["train", "--logs", logs, "--agent", "bc", "--seed", "-1"],
                 ["ope", "--logs", logs, "--seed", "-3"],
                 ["simulate", "--out", str(tmp_path / "x"), "--seed", "-2"],
                 ["compare", "--seeds", "0", "-1", "--out", str(tmp_path / "y")],
                 ["sweep", "--dial", "feedback.noise_std=0,1", "--seeds", "-1", "--out", str(tmp_path / "z")]):
        refused(capsys, tmp_path, *argv, needle="is out of range: a seed must be >= 0")


def test_repeated_seeds_are_refused(tmp_path, capsys, files, no_work):
    cmds = commands(files, str(tmp_path / "o"))
    refused(capsys, tmp_path, *cmds["compare"], "--seeds", "1", "1", needle="repeats a seed")
    refused(capsys, tmp_path, *cmds["sweep"], "--seeds", "2", "2", needle="repeat a seed")


# --------------------------------------------------------------------------------------------- #
# presets, headers, help
# --------------------------------------------------------------------------------------------- #


def test_a_folder_named_like_a_preset_does_not_shadow_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "trending").mkdir()  # what `simulate --out trending` leaves behind
    (tmp_path / "trending" / "manifest.json").write_text("{}")
    code, out, err = run(capsys, "simulate", "--scenario", "trending", "--set", "users.n_users=20",
                         "simulation.n_rounds=2", "catalog.n_items=50", "--out", "logs", "-q")
    assert code == 0, err
    assert "scenario 'trending[users.n_users=20,simulation.n_rounds=2,catalog.n_items=50]'" in out
    refused(capsys, tmp_path, "simulate", "--scenario", "./trending", "--out", "l2", needle="scenario file ./trending is a folder, not a TOML file")
    refused(capsys, tmp_path, "simulate", "--scenario", "nowhere.toml", "--out", "l2", needle="scenario file not found: nowhere.toml")


def test_headers_name_the_command_and_the_overrides(tmp_path, capsys, files):
    s, a = str(files["scenario"]), str(files["agent"])
    code, out, _ = run(capsys, "compare", "--scenario", s, "--agents", a, "--seeds", "0", "1", "--out",
                       str(tmp_path / "c"), "--rollout-rounds", "0", "--set", "feedback.noise_std=1", "-q")
    assert code == 0
    assert "recsim-post compare — scenario 'tiny[feedback.noise_std=1]', mean ± std over seeds 0, 1" in out
    assert "recsim-post demo" not in out


def test_help_is_plain_text_and_whole(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "``" not in out and "Off-policy estimates (IPS, SNIPS, DM, DR, Switch-DR)" in out
    for command in ("demo", "compare", "simulate", "sweep", "train", "evaluate", "rollout", "ope", "envs", "agents"):
        code, text, _ = run(capsys, command, "--help")
        assert code == 0 and "``" not in text
        description = text.split("\n\n")[1]  # argparse: usage, blank line, description
        assert not description.startswith(("options:", "positional")), command


def test_progress_bars_stay_off_a_redirected_stderr(tmp_path, files):
    proc = subprocess.run(
        [sys.executable, "-m", "recsim_post", "simulate", "--scenario", str(files["scenario"]),
         "--out", str(tmp_path / "logs")], capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and len(proc.stderr) < 200, proc.stderr


# --------------------------------------------------------------------------------------------- #
# interrupted runs
# --------------------------------------------------------------------------------------------- #


def test_sigterm_stops_a_run_like_ctrl_c_and_leaves_nothing(tmp_path):
    """SIGTERM (what `timeout` and schedulers send) ends the run cleanly: exit 143, one line, no
    output and no temporaries."""
    big = tmp_path / "big.toml"
    cfg = to_dict(tiny_scenario())
    cfg["users"]["n_users"], cfg["simulation"]["n_rounds"] = 20_000, 100  # seconds of work, ~2 GB at most
    big.write_text(dumps_toml(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "recsim_post", "simulate", "--scenario", str(big),
                             "--out", str(tmp_path / "logs"), "-q"], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".logs.recsim-post-new-*")):  # the run is past its checks and working
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err == "recsim-post: terminated\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.toml"]


def test_an_interrupted_compare_resumes_with_its_finished_seeds(tmp_path, capsys, files, monkeypatch):
    import recsim_post.experiments.story as story

    out = tmp_path / "c"
    argv = ["compare", "--scenario", str(files["scenario"]), "--agents", str(files["agent"]), "--seeds", "0", "1",
            "2", "--rollout-rounds", "0", "--out"]
    code, reference, _ = run(capsys, *argv, str(tmp_path / "ref"), "-q")
    assert code == 0
    real, calls = story.run_story, []

    def interrupted_third(*args, **kwargs):  # noqa: ANN002, ANN003
        calls.append(kwargs.get("seed"))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(story, "run_story", interrupted_third)
    code, _, err = run(capsys, *argv, str(out), "-q")
    assert code == 130 and err.strip().endswith("recsim-post: interrupted")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "seed-0", "seed-1"]
    calls.clear()
    monkeypatch.setattr(story, "run_story", lambda *a, **k: (calls.append(k.get("seed")), real(*a, **k))[1])
    code, resumed, err = run(capsys, *argv, str(out))  # without -q: it says it resumes
    assert code == 0 and calls == [2]
    assert "resuming: 2 of 3 cells already finished" in err
    table = lambda text: text.split("\n\n")[1]  # noqa: E731 - the table between header and legend
    assert table(resumed) == table(reference)
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), pd.read_csv(tmp_path / "ref" / "results.csv"))


def test_an_interrupted_ope_study_resumes(tmp_path, capsys, files, monkeypatch):
    from recsim_post.experiments import ope_study

    out = tmp_path / "o"
    argv = ["ope", "--scenario", str(files["scenario"]), "--agents", str(files["agent"]), "--seeds", "0", "1",
            "--bootstrap", "5", "--q-model", "item", "-q", "--json", "--out", str(out)]
    real, calls = ope_study.ope_study_seed, []

    def second_fails(*args, **kwargs):  # noqa: ANN002, ANN003
        calls.append(args[2])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ope_study, "ope_study_seed", second_fails)
    assert run(capsys, *argv)[0] == 130
    assert (out / "seed-0" / "report.parquet").is_file() and not (out / "seed-1").exists()
    calls.clear()
    code, resumed, _ = run(capsys, *argv)
    assert code == 0 and calls == [1]
    monkeypatch.setattr(ope_study, "ope_study_seed", real)
    code, fresh, _ = run(capsys, *argv[:-1], str(tmp_path / "fresh"))
    assert code == 0 and resumed == fresh


def test_a_sigterm_inside_a_foreign_callback_is_raised_again_soon():
    """Inside llvmlite's callbacks (Numba compiling) a raised exception would be swallowed: the
    handler re-arms itself on SIGALRM and raises once the run is back in plain Python."""
    import types

    fake = types.SimpleNamespace(f_code=types.SimpleNamespace(co_filename="/x/llvmlite/binding/executionengine.py"),
                                 f_back=None)
    previous = signal.getsignal(signal.SIGALRM)
    try:
        assert cli._terminate(signal.SIGTERM, fake) is None  # deferred, not raised into the callback
        with pytest.raises(cli.Terminated):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # the retry fires here, in plain Python
                time.sleep(0.01)
        with pytest.raises(cli.Terminated):  # outside a callback it raises at once
            cli._terminate(signal.SIGTERM, sys._getframe())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
