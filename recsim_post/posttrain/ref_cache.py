"""The π_ref cache on disk: ``recsim-post train`` pre-trains π_ref once per log folder and setting.

Training eleven recipes on one log folder one call at a time used to repeat the same behaviour
cloning eleven times. :class:`RefCache` keeps each π_ref it pre-trains in ``LOGS/cache/`` as
``pi_ref-<key>.pt`` and hands it back when a later call asks for the same one. The key is a hash of
everything π_ref depends on:

* the logs' content: the SHA-256 of every public file, as ``manifest.json`` lists them (and as
  :func:`~recsim_post.logs.check.check_log_folder` has just verified); the sealed side is never read
  by training, so it is not part of the key;
* the recipe's :func:`~recsim_post.posttrain.recipe.pretrain_spec`: its [model], its [pretrain], what
  it generates and, for a token recipe, its [token_head];
* a token recipe's semantic IDs (:func:`semantic_ids_fingerprint`: the codes and their provenance);
* the training seed (the :class:`~recsim_post.seeding.SeedTree` node pre-training draws from);
* the code: :func:`~recsim_post.outputs.code_fingerprint` (every source file of the package), the
  torch version, the device pre-training runs on and torch's CPU thread count (``RECSIM_POST_THREADS``,
  else torch's default: float sums round differently on another count).

A cached π_ref is the pre-trained policy's own payload (``policy.payload()``, weights and history
exactly), so a recipe fine-tuned from it is byte-identical to one fine-tuned from a fresh π_ref.

**Where, and why there.** The cache belongs to the logs: its entries are worthless for any other
log folder, and a folder rewritten by ``simulate --out LOGS --overwrite`` takes them with it (they
would all miss). ``LOGS/cache/`` carries a marker (:data:`~recsim_post.outputs.CACHE_MARKER`) and
the ownership checks of :mod:`recsim_post.outputs` count the cache entries in a marked folder as
recsim-post's own, so the cache never makes a log or demo folder look changed by someone else.
Delete ``LOGS/cache/`` (or any file in it) at any time; ``recsim-post train --no-cache`` neither
reads nor writes it.

**Bounded.** The cache keeps the :data:`MAX_ENTRIES` most recently used entries (a hit marks its
entry used by touching its modification time); after each write the least recently used beyond that
are deleted. Only files named like its own entries (``pi_ref-<24 hex digits>.pt``) are ever
counted or deleted: anything else in the folder is left alone.

**Never a crash.** A file that cannot be read, is corrupt, or holds another key is ignored with a
one-line note, pre-trained again and replaced; a cache that cannot be written (a read-only log
folder, a full disk) is noted and training goes on. Writes go through
:func:`~recsim_post.outputs.atomic_write` (a hidden temporary renamed into place), so a run killed
while writing leaves the old entry or the new one, never half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import RecsimError
from ..models.device import pick_device, training_threads
from ..models.load import TrainedPolicy, policy_from_payload
from ..outputs import CACHE_MARKER, atomic_write, code_fingerprint
from ..semantic.ids import SemanticIds
from ..seeding import SeedTree
from .recipe import AgentConfig, pretrain_spec

FORMAT = "recsim-post/pi-ref-cache/1"
"""The format of a cache entry: ``{"format", "key", "spec", "created", "seconds", "policy"}``."""

FOLDER = "cache"
"""The cache's folder inside a log folder."""

PREFIX = "pi_ref-"
"""Entries are ``pi_ref-<24 hex digits of the key>.pt``."""

ENTRY = re.compile(re.escape(PREFIX) + r"[0-9a-f]{24}\.pt")
"""The name of a cache entry: the only files eviction may delete."""

MAX_ENTRIES = 8
"""Entries kept by default: a few recipes' worth of π_ref per log folder (each is a model's weights)."""


def semantic_ids_fingerprint(ids: SemanticIds) -> str:
    """A SHA-256 of the semantic IDs: every code, the codebook sizes, and where they came from."""
    h = hashlib.sha256(json.dumps(ids.metadata(), sort_keys=True, default=str).encode())
    h.update(ids.codes.astype("<i8", copy=False).tobytes())
    return h.hexdigest()


def public_hashes(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The SHA-256 of every public file a log folder's manifest lists (what training reads)."""
    return {name: digest for name, digest in sorted(manifest["sha256"].items()) if not name.startswith("sealed/")}


class RefCache:
    """A :data:`~recsim_post.posttrain.recipe.ReferenceSource` backed by ``folder`` (``LOGS/cache``).

    ``RecipeTrainer(..., reference=RefCache(...))`` asks it for each π_ref it has not got in memory.
    """

    def __init__(
        self, folder: str | Path, logs_sha256: Mapping[str, str], n_items: int, seed: SeedTree, *,
        semantic_ids: SemanticIds | None = None, say: Callable[[str], None] = lambda _: None,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries = {max_entries} must be >= 1")
        self.folder = Path(folder)
        self.max_entries = max_entries
        self.logs_sha256 = dict(sorted(logs_sha256.items()))
        self.n_items, self.seed, self.say = n_items, seed, say
        self.ids_fingerprint = semantic_ids_fingerprint(semantic_ids) if semantic_ids is not None else None
        self.hits = 0
        self.misses = 0

    # -- keys

    def spec(self, agent: AgentConfig) -> dict[str, Any]:
        """Everything π_ref of ``agent`` depends on, as plain data (see the module docstring)."""
        return {
            "logs": self.logs_sha256,
            "split": "leave-last-out",
            "n_items": self.n_items,
            "recipe": pretrain_spec(agent),
            "semantic_ids": self.ids_fingerprint if agent.generate == "token" else None,
            "seed": {"seed": self.seed.seed, "path": list(self.seed.path)},
            "code": code_fingerprint(),
            "torch": torch.__version__,
            "device": pick_device(agent.pretrain.device).type,
            # CPU float sums round differently on another thread count: part of what the weights depend on
            "threads": training_threads() or torch.get_num_threads(),
        }

    def key(self, agent: AgentConfig) -> str:
        text = json.dumps(self.spec(agent), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def path(self, agent: AgentConfig) -> Path:
        return self.folder / f"{PREFIX}{self.key(agent)}.pt"

    # -- the source

    def __call__(self, agent: AgentConfig, compute: Callable[[], TrainedPolicy]) -> TrainedPolicy:
        path, key = self.path(agent), self.key(agent)
        if path.exists():
            policy = self._read(path, key, agent)
            if policy is not None:
                self.hits += 1
                with contextlib.suppress(OSError):  # a read-only cache still serves hits
                    os.utime(path)  # mark it used: eviction goes by modification time
                return policy
        self.misses += 1
        start = time.perf_counter()
        policy = compute()
        self._write(path, key, agent, policy, time.perf_counter() - start)
        return policy

    def _read(self, path: Path, key: str, agent: AgentConfig) -> TrainedPolicy | None:
        """The cached π_ref, or None (said in one line) when the file is unusable."""
        def ignore(why: str) -> None:
            self.say(f"ignoring the cached pi_ref {path} ({why}): pre-training it again and replacing the file")

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # weights_only: plain data and tensors, never code
                entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
            ignore(f"unreadable: {type(err).__name__}")
            return None
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            ignore("not a pi_ref cache entry")
            return None
        if entry.get("key") != key or entry.get("spec") != json.loads(json.dumps(self.spec(agent), default=str)):
            ignore("its key does not match this run's")
            return None
        try:
            policy = policy_from_payload(entry.get("policy"), path, pick_device(agent.pretrain.device))
        except RecsimError as err:
            ignore(f"corrupt: {str(err).removeprefix(f'{path} ')}")
            return None
        created = entry.get("created", "?")
        seconds = entry.get("seconds")
        took = f" in {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
        self.say(f"reusing pi_ref from {path} (pre-trained {created}{took}; --no-cache pre-trains it again)")
        return policy

    def _write(self, path: Path, key: str, agent: AgentConfig, policy: TrainedPolicy, seconds: float) -> None:
        entry = {
            "format": FORMAT, "key": key, "spec": json.loads(json.dumps(self.spec(agent), default=str)),
            "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": float(seconds),
            "policy": policy.payload(),
        }
        buffer = io.BytesIO()
        torch.save(entry, buffer)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            marker = self.folder / CACHE_MARKER
            if not marker.is_file():
                atomic_write(marker, lambda fh: fh.write(_MARKER_TEXT))
            atomic_write(path, lambda fh: fh.write(buffer.getvalue()))
        except OSError as err:
            self.say(f"cannot write the pi_ref cache {path} ({err.strerror or err}): going on without it")
            return
        self.say(f"cached pi_ref in {path} (delete {self.folder} to clear the cache)")
        self._evict(keep=path)

    def _evict(self, keep: Path) -> None:
        """Delete the least recently used entries beyond ``max_entries`` (never ``keep``, just written)."""
        try:
            entries = [f for f in self.folder.iterdir() if ENTRY.fullmatch(f.name) and f.is_file() and f != keep]
            # Newest first; the name breaks ties so equal times evict in a fixed order.
            entries.sort(key=lambda f: (f.stat().st_mtime_ns, f.name), reverse=True)
        except OSError:  # the folder vanished or a file went away meanwhile: evict next time
            return
        old = entries[self.max_entries - 1 :]
        for f in old:
            with contextlib.suppress(OSError):
                f.unlink()
        if old:
            self.say(f"removed {len(old)} least recently used pi_ref cache entr{'y' if len(old) == 1 else 'ies'} "
                     f"from {self.folder} (it keeps {self.max_entries})")


_MARKER_TEXT = (json.dumps({
    "tool": "recsim-post",
    "what": "cache of pre-trained pi_ref policies of 'recsim-post train' for the logs of the folder above; "
            "every file here may be deleted at any time (it is recomputed when needed)",
}, indent=2) + "\n").encode()


__all__ = ["ENTRY", "FOLDER", "FORMAT", "MAX_ENTRIES", "PREFIX", "RefCache", "public_hashes", "semantic_ids_fingerprint"]
