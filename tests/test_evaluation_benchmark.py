"""benchmarks/evaluation.py --small: every row (exact ground truth, the reward model's belief,
histories, the OPE estimators and obp's beside them) runs end to end on the current code and prints
its table. It had broken silently once, when policies became objects with ``logits``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import require

ROOT = Path(__file__).resolve().parents[1]


def test_evaluation_benchmark_small_prints_every_row():
    require("obp")  # the ope rows put obp's estimators beside ours
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECSIM_POST_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "evaluation.py"), "--small", "--no-old"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split()[:2] for line in out.stdout.splitlines()
            if line.split()[:1] and line.split()[0] in {"ground-truth", "rm-value", "histories", "ope"}]
    assert rows == [["ground-truth", "new"], ["rm-value", "new"], ["histories", "new"], ["ope", "new"],
                    ["ope", "new-normal"], ["ope", "obp"]]
    assert "Traceback" not in out.stderr and "max diff 0.0e+00" in out.stdout  # normal CI and obp agree on the points


def test_world_benchmark_quick_runs_every_stage():
    """benchmarks/world.py --quick: simulate, train BC (sampled softmax, sparse embeddings, here with
    length-bucketed batches) and the exact evaluation over every user run as the CLI commands they
    time, and the table is printed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECSIM_POST_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "world.py"), "--quick", "--bucket"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    stages = [line.split()[0] for line in out.stdout.splitlines()
              if line.split()[:1] and line.split()[0] in {"simulate", "train", "evaluate", "total"}]
    assert stages == ["simulate", "train", "evaluate", "total"]
    assert "(exact over 200 users)" in out.stdout  # --eval-users 0: every user of the quick world
    assert "1 epoch(s), length-bucketed batches;" in out.stdout
