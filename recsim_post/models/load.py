"""Read any saved policy (item-level or token-level) by its file's format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    return policy_from_payload(read_policy_file(path), path, device, items_sha256=items_sha256)


def policy_from_payload(payload: dict[str, Any], path: str | Path, device: torch.device | str = "cpu", *,
                        items_sha256: str | None = None) -> TrainedPolicy:
    """The policy of a payload read from ``path`` (``policy.payload()`` as :meth:`save` writes it),
    dispatched on its format, every field checked; any bad payload: a one-line LogError."""
    path = Path(path)
    if not isinstance(payload, dict) or not isinstance(payload.get("format"), str):
        raise LogError(f"{path} is not a recsim-post policy file (it holds no format)")
    if payload["format"] == SEQUENCE_FORMAT:
        return SequencePolicy.from_payload(payload, path, device)
    if payload["format"] == TOKEN_FORMAT:
        return TokenPolicy.from_payload(payload, path, device, items_sha256=items_sha256)
    raise LogError(f"{path} is not a recsim-post policy file (format {payload['format']!r} is unknown)")


__all__ = ["TrainedPolicy", "load_policy", "policy_from_payload"]
