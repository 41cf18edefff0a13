"""A trained sequence model as a recommendation policy: numpy histories in, next-item logits out.

This is the one object the rest of the framework (evaluation, CLI) holds: it knows the catalogue
size and the history length, runs the model batched under ``no_grad`` in eval mode, and saves to /
loads from a single ``torch.save`` file (config + state dict, no pickled code).
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..config import from_dict, show, to_dict
from ..errors import ConfigError, LogError
from ..logs.public import PAD
from .device import autocast
from .hstu import HSTU, HSTUConfig
from .sasrec import SASRec, SASRecConfig

ModelConfig = SASRecConfig | HSTUConfig
"""Union of the model configs, dispatched on their ``kind`` key."""

MODEL_CONFIGS: dict[str, type[ModelConfig]] = {"sasrec": SASRecConfig, "hstu": HSTUConfig}

FORMAT = "recsim-post/sequence-policy/1"


def build_model(cfg: ModelConfig, n_items: int, generator: torch.Generator | None = None) -> nn.Module:
    """The sequence model for ``cfg`` over ``n_items`` items, initialised from ``generator``."""
    if cfg.kind == "sasrec":
        return SASRec(cfg, n_items, generator)
    if cfg.kind == "hstu":
        return HSTU(cfg, n_items, generator)
    raise ConfigError(f"model.kind = {cfg.kind!r} is not allowed: must be one of {', '.join(MODEL_CONFIGS)}")


def model_config_from_dict(data: Mapping[str, Any]) -> ModelConfig:
    """Read a model config table, dispatching on its ``kind`` key."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"model must be a table of settings, not {show(data)}")
    kind = data.get("kind", "sasrec")
    if not isinstance(kind, str) or kind not in MODEL_CONFIGS:  # a list or table is not hashable
        raise ConfigError(f"model.kind = {show(kind)} is not allowed: must be one of {', '.join(MODEL_CONFIGS)}")
    return from_dict(MODEL_CONFIGS[kind], data, prefix="model")


def pad_history(hist: np.ndarray, max_len: int) -> np.ndarray:
    """Left-padded histories ``(rows, L)`` cut to their last ``max_len`` columns, or left-padded with
    PAD up to them: a fresh contiguous ``(rows, max_len)`` int64 array."""
    hist = np.asarray(hist, dtype=np.int64)
    if hist.ndim != 2:
        raise ValueError(f"hist must be a 2-d (rows, length) array, got shape {hist.shape}")
    out = np.full((hist.shape[0], max_len), PAD, dtype=np.int64)
    keep = hist[:, max(hist.shape[1] - max_len, 0) :]
    out[:, max_len - keep.shape[1] :] = keep
    return out


def trim_padding(hist: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """``hist`` ``(rows, L)`` without its leading columns that are PAD in every row (at least one
    column kept). A sequence model's state after the last column does not depend on them (positions
    count from the right, padding is masked), and a batch of short histories then costs what its
    longest history costs, not ``max_len`` -- the inference twin of training's ``Batch.trim``."""
    real = (hist != PAD).any(0)
    cols = np.flatnonzero(real.cpu().numpy() if isinstance(real, torch.Tensor) else real)
    first = int(cols[0]) if len(cols) else hist.shape[1] - 1
    return hist[:, first:]


class SequencePolicy:
    """Next-item policy π(· | history) backed by a sequence model.

    ``history`` holds per-epoch training metrics appended by the post-training methods (each entry
    has a ``stage`` key); it is saved with the weights so a policy file documents how it was made.
    """

    def __init__(self, model: nn.Module, n_items: int, max_len: int | None = None, batch_size: int = 1024) -> None:
        model_len = model.cfg.max_len
        max_len = model_len if max_len is None else max_len
        if not 1 <= max_len <= model_len:
            raise ConfigError(f"max_len = {max_len} is out of range: must be >= 1 and <= the model's {model_len}")
        if n_items != model.n_items:
            raise ConfigError(f"n_items = {n_items} does not match the model's catalogue of {model.n_items}")
        self.model, self.n_items, self.max_len, self.batch_size = model, n_items, max_len, batch_size
        self.history: list[dict[str, Any]] = []
        self.logit_scale: float = 1.0
        """Multiplies the model's scores in :meth:`logits`: π(·|x) = softmax(logit_scale · scores).
        1 for a policy trained on log-probabilities; 1/T for CQL's softmax(Q/T) over Q-values."""

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> "SequencePolicy":
        """Move the model to ``device`` (in place) and return self."""
        self.model.to(device)
        return self

    def pad(self, hist: np.ndarray) -> np.ndarray:
        """``hist`` truncated to its last ``max_len`` columns, or left-padded with PAD up to them."""
        return pad_history(hist, self.max_len)

    @torch.no_grad()
    def logits(self, hist: np.ndarray, context: Any = None) -> np.ndarray:
        """Next-item logits ``(B, n_items)`` float32 after the last column of ``hist`` ``(B, L)``
        (PAD = -1): the ``recsim_post.policy.Policy`` protocol (a sequence model ignores the context)."""
        hist = self.pad(hist)
        if hist.size and hist.max() >= self.n_items:
            raise ValueError(f"hist holds item id {hist.max()}, but the catalogue has {self.n_items} items")
        out = np.empty((hist.shape[0], self.n_items), dtype=np.float32)
        was_training = self.model.training
        self.model.eval()
        device = self.device
        try:
            for start in range(0, hist.shape[0], self.batch_size):
                # torch.tensor copies: the caller's array may be a read-only view (pandas, memmap).
                items = torch.tensor(trim_padding(hist[start : start + self.batch_size])).to(device)
                with autocast(device):
                    h = self.model.encode(items)[:, -1]
                    scores = self.model.score(h)
                out[start : start + len(items)] = (scores.float() * self.logit_scale).cpu().numpy()
        finally:
            self.model.train(was_training)
        return out

    def clone(self) -> "SequencePolicy":
        """An independent deep copy (weights, config and training history)."""
        return copy.deepcopy(self)

    def save(self, path: str | Path) -> None:
        """Write config, catalogue size, max_len, history, logit_scale and weights to ``path`` (one torch file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Through a buffer: torch names the archive's inner folder after the file, so saving to a
        # temporary name would make the bytes depend on it; from a buffer they depend only on the policy.
        buffer = io.BytesIO()
        torch.save(self.payload(), buffer)
        path.write_bytes(buffer.getvalue())

    def payload(self) -> dict[str, Any]:
        """What :meth:`save` writes (plain data and CPU tensors); :meth:`from_payload` reads it back."""
        return canonical({
            "format": FORMAT,
            "model": to_dict(self.config),
            "n_items": self.n_items,
            "max_len": self.max_len,
            "history": self.history,
            "logit_scale": float(self.logit_scale),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
        })

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "SequencePolicy":
        """Read a policy written by :meth:`save`; a missing or corrupt file raises a one-line
        LogError naming the field that is wrong (see :func:`check_payload`)."""
        path = Path(path)
        payload = read_policy_file(path)
        if payload.get("format") != FORMAT:
            raise LogError(f"{path} is not a recsim-post policy file (format {FORMAT!r} expected)")
        return cls.from_payload(payload, path, device)

    @classmethod
    def from_payload(cls, payload: dict[str, Any], path: Path, device: torch.device | str = "cpu") -> "SequencePolicy":
        """The policy of a file's payload (read by :func:`read_policy_file`), every field checked."""
        cfg, n_items, max_len, logit_scale, history, state = check_payload(payload, path)
        try:
            model = build_model(cfg, n_items)
            model.load_state_dict(state)
            policy = cls(model, n_items, max_len)
        except (ConfigError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0]
            raise LogError(f"{path} is a corrupt policy file: {first}") from None
        policy.history = history
        policy.logit_scale = logit_scale
        return policy.to(device)


def canonical(obj: Any) -> Any:
    """``obj`` with every string interned, through dicts, lists and tuples. Pickle memoizes objects
    by identity, so a payload built in memory (one key string shared by every history row) and the
    same payload read back from a file (a string object per row) would pickle to different bytes;
    interned, a policy file's bytes depend only on its values (a policy fine-tuned from a cached
    π_ref is byte-identical to one fine-tuned from a fresh one)."""
    if type(obj) is str:
        return sys.intern(obj)
    if isinstance(obj, dict):
        return {canonical(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [canonical(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(canonical(v) for v in obj)
    return obj


def read_policy_file(path: Path) -> dict[str, Any]:
    """The payload of a policy file (any format), read without running code; a missing or
    unreadable file raises a one-line LogError."""
    if not path.is_file():
        raise LogError(f"policy file not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            # weights_only: the file holds plain data and tensors, and loading must never run code.
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():  # torch's advice here (weights_only=False) would run the file's code
            raise LogError(
                f"{path} is not a recsim-post policy file: it holds Python objects other than plain data "
                "and tensors, and those are never loaded (loading them could run code)"
            ) from None
        raise LogError(f"{path} is not a recsim-post policy file: torch cannot read it (corrupt pickle)") from None
    except Exception as err:  # torch raises many types for a bad file (EOF, unicode, zip)
        raise LogError(
            f"{path} is not a recsim-post policy file: torch cannot read it ({type(err).__name__})"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("format"), str):
        raise LogError(f"{path} is not a recsim-post policy file (format {FORMAT!r} expected)")
    return payload


def check_payload(
    payload: Mapping[str, Any], path: Path
) -> tuple[ModelConfig, int, int, float, list[dict[str, Any]], dict[str, torch.Tensor]]:
    """The fields of a policy file, each checked: (model config, n_items, max_len, logit_scale,
    history, state dict). A missing, non-numeric, NaN or out-of-range field, a weight that is not
    a tensor or holds NaN or inf, or an item embedding that does not match n_items and the model's
    width raise a one-line LogError naming it -- before any model is built (so a file claiming a
    huge catalogue cannot make the loader allocate it)."""
    def bad(what: str) -> LogError:
        return LogError(f"{path} is a corrupt policy file: {what}")

    for key in ("model", "n_items", "max_len", "state_dict"):
        if key not in payload:
            raise bad(f"field '{key}' is missing")
    try:
        cfg = model_config_from_dict(payload["model"])
    except ConfigError as err:
        raise bad(str(err)) from None
    values = {}
    for key in ("n_items", "max_len"):
        v = payload[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise bad(f"{key} = {show(v)} must be a whole number >= 1")
        values[key] = v
    scale = payload.get("logit_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise bad(f"logit_scale = {show(scale)} must be a finite number > 0")
    history = payload.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise bad("history must be a list of tables (one per training epoch)")
    state = payload["state_dict"]
    if not isinstance(state, dict):
        raise bad(f"state_dict must be a table of weights, not {type(state).__name__}")
    for key, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise bad(f"weight {show(key)} is a {type(t).__name__}, not a tensor")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise bad(f"weight {show(key)} holds NaN or infinite values")
    emb = state.get("item_emb.weight")
    expected = (values["n_items"] + 1, cfg.dim)
    if emb is None or tuple(emb.shape) != expected:
        shape = "missing" if emb is None else f"of shape {tuple(emb.shape)}"
        raise bad(f"the item embedding item_emb.weight is {shape}; n_items = {values['n_items']} and "
                  f"model.dim = {cfg.dim} need {expected}")
    return cfg, values["n_items"], values["max_len"], float(scale), history, state


__all__ = ["SequencePolicy", "check_payload", "read_policy_file", "build_model", "model_config_from_dict", "ModelConfig", "MODEL_CONFIGS"]
