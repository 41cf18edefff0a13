"""SIGKILL at the worst moments: `simulate`, `train` and `sweep` killed at fixed points of the
replacement protocol and at random times (fixed seed). After every kill the user's old result or
the complete new one is in place, never a mix and never nothing; the next run cleans up (or puts
the old folder back), and a rerun completes. A killed sweep keeps its finished cells and resumes.

Each run is a real process (``python driver.py ARGS``) so that the kill is a real SIGKILL; the
fixed points are reached by wrapping the module's own primitives in the child process.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from recsim_post.config import dumps_toml, to_dict
from recsim_post.outputs import MARKER

from .conftest import tiny_scenario
from .test_story import small_agent

pytestmark = pytest.mark.slow

DRIVER = '''
import os, signal, sys
from pathlib import Path

point = os.environ.get("FAULT", "")
if point:
    from recsim_post import outputs

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "exchange":  # the new folder is in, the old one not yet deleted
        real_exchange = outputs._exchange

        def exchange(a, b):
            ok = real_exchange(a, b)
            if ok:
                die()
            return ok

        outputs._exchange = exchange
    elif point == "aside":  # no atomic exchange: killed between the two renames
        outputs._exchange = lambda a, b: False
        real_rename, target = os.rename, os.path.realpath(os.environ["FAULT_TARGET"])

        def rename(src, dst, *args, **kwargs):
            real_rename(src, dst, *args, **kwargs)
            if os.path.realpath(src) == target:
                die()

        outputs.os.rename = rename
    elif point == "delete-old":  # killed while deleting the old copy
        def delete(path):
            next(p for p in sorted(Path(path).rglob("*")) if p.is_file()).unlink()
            die()

        outputs._delete = delete
    elif point == "report":  # killed while a sweep writes its last report
        real_write = outputs.Workspace.write

        def write(self, name, writer):
            if name == "sweep.png":
                self._mark("running", pending=name)
                writer(self.target / name)
                die()
            return real_write(self, name, writer)

        outputs.Workspace.write = write

from recsim_post.cli import main

sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    (root / "driver.py").write_text(DRIVER)
    cfg = to_dict(tiny_scenario())
    cfg["users"]["n_users"] = 400  # long enough to be killed in the middle
    (root / "world.toml").write_text(dumps_toml(cfg))
    (root / "bc.toml").write_text(dumps_toml(to_dict(small_agent("bc", 1))))
    return {"root": root, "driver": root / "driver.py", "scenario": root / "world.toml", "agent": root / "bc.toml"}


def cli(env: dict[str, Path], *argv: str, fault: str = "", target: Path | None = None) -> subprocess.Popen:
    child_env = dict(os.environ, FAULT=fault, FAULT_TARGET=str(target or ""))
    return subprocess.Popen([sys.executable, str(env["driver"]), *argv], cwd=env["root"], env=child_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def content(folder: Path) -> dict[str, bytes]:
    """A folder's files without the ownership marker (its timestamps differ from run to run)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def leftovers(folder: Path) -> list[str]:
    """Hidden temporaries, old copies and lock files (the ownership marker is no leftover)."""
    return sorted(p.name for p in folder.iterdir() if ".recsim-post" in p.name and p.name != MARKER)


def wait_for(proc: subprocess.Popen, folder: Path, pattern: str) -> None:
    """Until ``folder`` holds a name matching ``pattern`` (e.g. the run's lock file: it is past
    its checks and working)."""
    deadline = time.monotonic() + 300
    while not list(folder.glob(pattern)):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it started working"
        time.sleep(0.01)


def working_seconds(env: dict[str, Path], argv: list[str], folder: Path, pattern: str) -> float:
    """How long a run works once ``pattern`` appears in ``folder`` (it completes)."""
    proc = cli(env, *argv)
    wait_for(proc, folder, pattern)
    start = time.monotonic()
    code, _, err = finish(proc)
    assert code == 0, err
    return time.monotonic() - start


def killed_at(env: dict[str, Path], argv: list[str], folder: Path, pattern: str, seconds: float) -> None:
    """SIGKILL ``seconds`` after the run started working."""
    proc = cli(env, *argv)
    wait_for(proc, folder, pattern)
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def test_simulate_overwrite_killed_anywhere_keeps_old_or_new(env):
    root = env["root"] / "sim"
    root.mkdir()
    logs = root / "logs"
    base = ["simulate", "--scenario", str(env["scenario"]), "--out", str(logs), "-q"]
    lock = ".new-ref.recsim-post.lock"
    duration = working_seconds(env, [*base, "--seed", "1", "--out", str(root / "new-ref")], root, lock)
    assert finish(cli(env, *base, "--seed", "0", "--out", str(root / "old-ref")))[0] == 0
    old, new = content(root / "old-ref"), content(root / "new-ref")
    assert old != new
    rng = random.Random(8)
    delays = [rng.uniform(0.0, 1.1) * duration for _ in range(4)]
    for fault in ["exchange", "aside", "delete-old"] + [f"random-{d:.3f}s" for d in delays]:
        assert finish(cli(env, *base, "--seed", "0", "--overwrite"))[0] == 0  # the user's logs
        if fault.startswith("random"):
            killed_at(env, [*base, "--seed", "1", "--overwrite"], root, ".logs.recsim-post.lock", delays.pop(0))
        else:
            code, _, _ = finish(cli(env, *base, "--seed", "1", "--overwrite", fault=fault, target=logs))
            assert code == -signal.SIGKILL, fault
        # right after the kill: the old logs or the complete new ones (or, only between the two
        # renames of a filesystem without an atomic exchange, the old logs under a hidden name)
        if logs.exists():
            assert content(logs) in (old, new), fault
        else:
            assert fault == "aside"
            (aside,) = [p for p in root.iterdir() if ".recsim-post-old-" in p.name]
            assert content(aside) == old
        # the next run on the same output cleans up (refusing, without --overwrite) ...
        code, _, err = finish(cli(env, *base, "--seed", "1"))
        assert code == 2 and "is not empty" in err, (fault, err)
        assert content(logs) in (old, new) and leftovers(root) == [], fault
        if fault == "aside":
            assert content(logs) == old  # put back where it was
        # ... and a rerun completes
        assert finish(cli(env, *base, "--seed", "1", "--overwrite"))[0] == 0
        assert content(logs) == new and leftovers(root) == [], fault


def test_train_killed_keeps_the_old_policy_or_the_new_one(env):
    root = env["root"] / "train"
    root.mkdir()
    logs = root / "logs"
    assert finish(cli(env, "simulate", "--scenario", str(env["scenario"]), "--out", str(logs), "-q"))[0] == 0
    policy = root / "p.pt"
    base = ["train", "--logs", str(logs), "--agent", str(env["agent"]), "--out", str(policy), "-q"]
    duration = working_seconds(env, [*base, "--seed", "1", "--out", str(root / "new.pt")], root, ".new.pt.recsim-post.lock")
    assert finish(cli(env, *base, "--seed", "0"))[0] == 0
    old, new = policy.read_bytes(), (root / "new.pt").read_bytes()
    assert old != new
    rng = random.Random(3)
    for delay in [rng.uniform(0.0, 1.1) * duration for _ in range(3)]:
        killed_at(env, [*base, "--seed", "1", "--overwrite"], root, ".p.pt.recsim-post.lock", delay)
        assert policy.read_bytes() in (old, new)
        code, _, err = finish(cli(env, *base, "--seed", "1"))  # the next run cleans up, and refuses
        assert code == 2 and "already exists" in err
        assert leftovers(root) == []
        assert finish(cli(env, *base, "--seed", "1", "--overwrite"))[0] == 0
        assert policy.read_bytes() == new
        policy.write_bytes(old)


def test_a_killed_sweep_keeps_its_finished_cells_and_resumes(env):
    root = env["root"] / "sweep"
    root.mkdir()
    base = ["sweep", "--scenario", str(env["scenario"]), "--dial", "feedback.noise_std=0,2", "--agents",
            str(env["agent"]), "--seeds", "0", "1", "--set", "users.n_users=80"]
    assert finish(cli(env, *base, "--out", str(root / "ref"), "-q"))[0] == 0
    reference = pd.read_csv(root / "ref" / "sweep.csv")
    out = root / "s"
    rng = random.Random(11)
    for after_cells in (1, 3):
        proc = cli(env, *base, "--out", str(out), "-q")
        deadline = time.monotonic() + 300
        while len(list(out.glob("cells/*/.recsim-post-cell.json"))) < after_cells:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))  # somewhere inside the next cell
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        done = len(list(out.glob("cells/*/.recsim-post-cell.json")))
        assert done >= after_cells
        code, _, err = finish(cli(env, *base, "--out", str(out)))  # resumes: says so, runs the rest
        assert code == 0, err
        assert f"resuming: {done} of 4 cells already finished" in err
        pd.testing.assert_frame_equal(pd.read_csv(out / "sweep.csv"), reference)
        assert leftovers(out) == [] and leftovers(root) == []
        if after_cells == 1:  # the next round starts again from the first cell alone
            for cell in sorted(out.glob("cells/*"))[1:]:
                shutil.rmtree(cell)
    # killed while writing the last report: the rerun knows the half-written report as its own
    code, _, _ = finish(cli(env, *base, "--out", str(out), "-q", fault="report"))
    assert code == -signal.SIGKILL
    code, _, err = finish(cli(env, *base, "--out", str(out)))
    assert code == 0 and "resuming: 4 of 4 cells already finished" in err
    pd.testing.assert_frame_equal(pd.read_csv(out / "sweep.csv"), reference)
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_two_writers_started_together_never_both_win(env):
    """Two `simulate` runs (different seeds) and two `train` runs aimed at one output at the same
    moment: exactly one succeeds, the other stops with one line, and the output is whole."""
    root = env["root"] / "race"
    root.mkdir()
    logs = root / "logs"
    base = ["simulate", "--scenario", str(env["scenario"]), "--out", str(logs), "-q"]
    results = [finish(p) for p in [cli(env, *base, "--seed", "0"), cli(env, *base, "--seed", "1")]]
    assert sorted(code for code, _, _ in results) == [0, 2]
    (err,) = [e for code, _, e in results if code == 2]
    assert len(err.strip().splitlines()) == 1 and ("being written by another" in err or "is not empty" in err)
    winner = next(i for i, (code, _, _) in enumerate(results) if code == 0)
    assert finish(cli(env, *base[:-3], "--out", str(root / "ref"), "-q", "--seed", str(winner)))[0] == 0
    assert content(logs) == content(root / "ref") and leftovers(root) == []
    policy = root / "p.pt"
    train = ["train", "--logs", str(logs), "--agent", str(env["agent"]), "--out", str(policy), "-q"]
    results = [finish(p) for p in [cli(env, *train, "--seed", "0"), cli(env, *train, "--seed", "1")]]
    assert sorted(code for code, _, _ in results) == [0, 2]
    (err,) = [e for code, _, e in results if code == 2]
    assert "being written by another" in err or "already exists" in err
    assert leftovers(root) == [] and policy.stat().st_size > 0
