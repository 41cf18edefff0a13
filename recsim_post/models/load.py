"""Read any saved policy (item-level or token-level) by its file's format."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import LogError
from .policy import FORMAT as SEQUENCE_FORMAT
from .policy import SequencePolicy, read_policy_file
from .token import FORMAT as TOKEN_FORMAT
from .token import TokenPolicy

TrainedPolicy = SequencePolicy | TokenPolicy


def load_policy(path: str | Path, device: torch.device | str = "cpu", *, items_sha256: str | None = None) -> TrainedPolicy:
    """A :class:`SequencePolicy` or :class:`TokenPolicy` from ``path``. With ``items_sha256`` (the
    logs' items.parquet), a token policy whose semantic IDs come from other items is refused.
    Any bad file: a one-line LogError."""
    path = Path(path)
    payload = read_policy_file(path)
    if payload["format"] == SEQUENCE_FORMAT:
        return SequencePolicy.from_payload(payload, path, device)
    if payload["format"] == TOKEN_FORMAT:
        return TokenPolicy.from_payload(payload, path, device, items_sha256=items_sha256)
    raise LogError(f"{path} is not a recsim-post policy file (format {payload['format']!r} is unknown)")


__all__ = ["TrainedPolicy", "load_policy"]
