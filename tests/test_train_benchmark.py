"""benchmarks/train.py --quick: the BC training benchmark runs end to end (full, sampled and sparse rows,
each in its own process) and prints its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_benchmark_quick_prints_a_row_per_loss():
    # One torch thread: tiny steps on a busy machine otherwise spend their time waiting on each other.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECSIM_POST_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train.py"), "--quick", "--device", "cpu"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.strip().startswith("1,000")]
    assert [r[1] for r in rows] == ["full", "sampled", "sparse"]
    assert all(float(r[5].replace(",", "")) > 0 for r in rows)  # windows/s
    assert "CPU, 1 torch threads" in out.stdout and "load average after" in out.stdout
