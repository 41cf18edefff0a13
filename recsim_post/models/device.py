"""Where tensors live: device choice, mixed precision and torch's CPU threads.

bf16 autocast on CUDA needs no gradient scaler (bf16 has float32's exponent range), so the training
loop stays the same on both devices; on CPU autocast is a no-op because CPU bf16 matmuls are slower
than float32 ones on most machines.

Threads: training runs on ``RECSIM_POST_THREADS`` torch threads when it is set (:func:`apply_threads`),
else on torch's own default (``OMP_NUM_THREADS``, or every core). The count is fixed, never chosen
from the cores that look free: float sums split over a different number of threads round
differently, so trained weights would then depend on the machine's load at the time.
"""

from __future__ import annotations

import contextlib
import os
from typing import Literal

import torch

from ..errors import ConfigError

DevicePref = Literal["auto", "cpu", "cuda"]


def pick_device(pref: DevicePref = "auto") -> torch.device:
    """The torch device for ``pref``: "auto" is CUDA when available, else CPU.

    Asking for "cuda" on a machine without one is a ConfigError rather than a silent CPU fallback,
    so a recipe that promises a GPU run never quietly takes hours on CPU.
    """
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
        return torch.device("cuda")
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    raise ConfigError(f"device = {pref!r} is not allowed: must be one of 'auto', 'cpu', 'cuda'")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, a no-op context on any other device."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


THREADS_ENV = "RECSIM_POST_THREADS"
"""The environment variable that fixes torch's CPU thread count for training."""

MAX_THREADS = 4096


def training_threads() -> int | None:
    """The thread count ``RECSIM_POST_THREADS`` asks for, or None when it is unset or empty (torch's
    default stands). Anything but a whole number from 1 to MAX_THREADS is a one-line ConfigError."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_THREADS:
        raise ConfigError(f"{THREADS_ENV} = {text[:40]!r} is not allowed: must be a whole number from 1 to {MAX_THREADS} "
                          "(torch's CPU threads for training), or unset for torch's default")
    return int(text)


def apply_threads() -> None:
    """Set torch's CPU thread count to ``RECSIM_POST_THREADS`` when it is set; else change nothing."""
    threads = training_threads()
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


__all__ = ["DevicePref", "THREADS_ENV", "apply_threads", "autocast", "pick_device", "training_threads"]
