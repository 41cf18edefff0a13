"""Thread counts: simulating never changes torch's. ``numba.get_num_threads()`` starts Numba's
threading layer, whose OpenMP form sets the calling thread's OpenMP thread count to Numba's,
which is torch's too, so asking it for the row kernels' thread count silently undid
``OMP_NUM_THREADS=1`` for every later torch op. Each check runs in a fresh process (the layer
starts once per process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys, tempfile
import torch
import numba
from recsim_post.logs.simulate import simulate, stream_log_files
from recsim_post.world import kernels
from tests.conftest import tiny_scenario

before = torch.get_num_threads()
simulate(tiny_scenario())
with tempfile.TemporaryDirectory() as tmp:
    stream_log_files(tiny_scenario(seed=1), tmp + "/logs")
after = torch.get_num_threads()
threads = kernels.kernel_threads()
numba.get_num_threads()  # the negative control: this is what reset torch's threads
control = torch.get_num_threads()
print(before, after, threads, control, numba.threading_layer())
"""


def run(code: str, **env: str) -> list[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.slow
def test_simulate_keeps_omp_num_threads_1_for_torch():
    before, after, threads, control, layer = run(SCRIPT, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="2")
    assert (before, after) == ("1", "1")
    assert threads == "2"  # the row kernels still use Numba's count (NUMBA_NUM_THREADS)
    if layer == "omp":  # the control fails only where Numba's layer is OpenMP
        assert control == "2"


@pytest.mark.slow
def test_kernel_threads_follows_numba_set_num_threads():
    code = ("import numba; from recsim_post.world.kernels import kernel_threads; "
            "a = kernel_threads(); numba.set_num_threads(1); print(a, kernel_threads())")
    assert run(code, NUMBA_NUM_THREADS="2") == ["2", "1"]


def test_recsim_post_threads_sets_torchs_threads_when_training_starts(monkeypatch):
    import torch
    from torch import nn

    from recsim_post.errors import ConfigError
    from recsim_post.posttrain.loop import fit
    from recsim_post.seeding import SeedTree

    def train() -> None:
        module = nn.Linear(2, 1)
        fit(module, lambda run: [torch.ones(4, 2)], lambda m, x, run: (m(x).square().mean(), {}), epochs=1,
            lr=0.1, seed=SeedTree(0), device="cpu", progress=False)

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("RECSIM_POST_THREADS", raising=False)
        torch.set_num_threads(2)
        train()
        assert torch.get_num_threads() == 2  # unset: torch's count is left as it is
        monkeypatch.setenv("RECSIM_POST_THREADS", "1")
        train()
        assert torch.get_num_threads() == 1
        for bad in ("0", "two", "-1", "1.5", "²", "99999"):
            monkeypatch.setenv("RECSIM_POST_THREADS", bad)
            with pytest.raises(ConfigError) as info:
                train()
            assert "RECSIM_POST_THREADS" in str(info.value) and "\n" not in str(info.value)
    finally:
        torch.set_num_threads(before)
