"""Where tensors live: device choice and mixed precision.

bf16 autocast on CUDA needs no gradient scaler (bf16 has float32's exponent range), so the training
loop stays the same on both devices; on CPU autocast is a no-op because CPU bf16 matmuls are slower
than float32 ones on most machines.
"""

from __future__ import annotations

import contextlib
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


__all__ = ["DevicePref", "pick_device", "autocast"]
