"""Semantic IDs of a catalogue and their file, ``semantic_ids.parquet`` beside the logs.

The file has one row per item: ``item_id`` (int32, 0 .. n-1 in order) and ``c0 .. cL`` (int64):
L semantic codes, then the disambiguation token (0, 1, 2, ... among items sharing their L codes,
in item-id order). Its schema metadata (key ``recsim_post.semantic_ids``, JSON) records the
codebook size of every column, the SHA-256 of the ``items.parquet`` the codes were computed from
(the manifest's own hash of it), a hash of the feature matrix, the source (features or given
embeddings) and the tokenizer config. Loading checks all of it: a missing, unreadable or
malformed file, codes out of range or not unique, another catalogue size, or a fingerprint
that no longer matches the logs' items (stale codes) raise a one-line LogError.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import from_dict, to_dict
from ..errors import ConfigError, LogError
from .config import TokenizerConfig

FILE_NAME = "semantic_ids.parquet"
META_KEY = b"recsim_post.semantic_ids"
FORMAT = 1


def features_sha256(features: np.ndarray) -> str:
    """A fingerprint of a feature (or embedding) matrix: its shape and float64 values."""
    x = np.ascontiguousarray(features, dtype=np.float64)
    h = hashlib.sha256(f"{x.shape}".encode())
    h.update(x.tobytes())
    return h.hexdigest()


def _problem(codes: np.ndarray, sizes: tuple[int, ...]) -> str | None:
    """What is wrong with a code matrix and its codebook sizes, or None."""
    if codes.ndim != 2 or codes.shape[1] < 2:
        return f"codes must be a matrix with at least 2 columns (L codes and the disambiguation token), not {codes.shape}"
    if not np.issubdtype(codes.dtype, np.integer):
        return f"codes hold {codes.dtype} values, not whole numbers"
    if len(sizes) != codes.shape[1]:
        return f"{len(sizes)} codebook sizes for {codes.shape[1]} code columns"
    for j, size in enumerate(sizes):
        col = codes[:, j]
        if len(col) and (col.min() < 0 or col.max() >= size):
            bad = int(col[(col < 0) | (col >= size)][0])
            return f"c{j} = {bad} is out of range: codes of column c{j} must lie in 0 .. {size - 1}"
    if len(codes) and len(np.unique(codes, axis=0)) != len(codes):
        return "two items have the same semantic ID: every row of c0 .. cL must be unique"
    return None


@dataclass(frozen=True, eq=False)
class SemanticIds:
    """One semantic ID per item: ``codes[i]`` is item i's L codes and its disambiguation token."""

    codes: np.ndarray  # (n_items, L + 1) int64
    codebook_sizes: tuple[int, ...]  # L + 1: K per level, then the largest collision group
    items_sha256: str  # SHA-256 of the items.parquet the codes come from ("" when not from logs)
    features_sha256: str  # features_sha256() of the matrix that was tokenized
    source: str  # "features" (the public item features) or "embeddings" (a given matrix)
    config: TokenizerConfig

    def __post_init__(self) -> None:
        codes = np.asarray(self.codes)
        problem = _problem(codes, tuple(self.codebook_sizes))
        if problem:
            raise ValueError(problem)
        object.__setattr__(self, "codes", codes.astype(np.int64, copy=False))
        object.__setattr__(self, "codebook_sizes", tuple(int(s) for s in self.codebook_sizes))

    @property
    def levels(self) -> int:
        """L, the semantic levels (the disambiguation token not counted)."""
        return self.codes.shape[1] - 1

    @property
    def n_items(self) -> int:
        return self.codes.shape[0]

    @property
    def prefixes(self) -> np.ndarray:
        """The L semantic codes of every item (the disambiguation token dropped): (n_items, L)."""
        return self.codes[:, : self.levels]

    def to_frame(self) -> pd.DataFrame:
        data = {"item_id": np.arange(self.n_items, dtype=np.int32)}
        data.update({f"c{j}": self.codes[:, j] for j in range(self.codes.shape[1])})
        return pd.DataFrame(data)

    def metadata(self) -> dict[str, Any]:
        return {"format": FORMAT, "n_items": self.n_items, "levels": self.levels,
                "codebook_sizes": list(self.codebook_sizes), "items_sha256": self.items_sha256,
                "features_sha256": self.features_sha256, "source": self.source, "config": to_dict(self.config)}

    def write(self, path: str | Path) -> None:
        """Write the Parquet file at ``path`` (callers make it atomic: ``outputs.OutputFile``)."""
        table = pa.Table.from_pandas(self.to_frame(), preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[META_KEY] = json.dumps(self.metadata(), sort_keys=True).encode()
        pq.write_table(table.replace_schema_metadata(meta), path)

    @classmethod
    def load(cls, path: str | Path, *, items_sha256: str | None = None, n_items: int | None = None) -> "SemanticIds":
        """Read and check ``path``; with ``items_sha256`` / ``n_items`` (the logs'), refuse codes
        computed from other items. Every failure is a one-line LogError naming the file."""
        path = Path(path)
        if not path.is_file():
            raise LogError(f"{path} not found: semantic IDs are missing; run 'recsim-post tokenize --logs {path.parent}'")
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LogError(f"{path} is corrupt: {first}") from None
        raw = (table.schema.metadata or {}).get(META_KEY)
        try:
            meta = json.loads(raw) if raw is not None else None
        except (ValueError, UnicodeDecodeError):
            meta = None
        if not isinstance(meta, dict):
            raise LogError(f"{path} is not a semantic-ID file: its metadata lacks {META_KEY.decode()}")
        if meta.get("format") != FORMAT:
            raise LogError(f"{path} has format {meta.get('format')!r}; this recsim-post reads format {FORMAT}")
        try:
            levels, sizes = int(meta["levels"]), tuple(int(s) for s in meta["codebook_sizes"])
            config = from_dict(TokenizerConfig, meta["config"])
            fingerprint, feats, source = str(meta["items_sha256"]), str(meta["features_sha256"]), str(meta["source"])
        except (KeyError, TypeError, ValueError, ConfigError) as err:
            raise LogError(f"{path} is corrupt: its metadata is malformed ({err})") from None
        expected = ["item_id"] + [f"c{j}" for j in range(levels + 1)]
        if table.column_names != expected:
            raise LogError(f"{path} is corrupt: columns {', '.join(table.column_names)}; expected "
                           f"{', '.join(expected)} (L = {levels} levels and the disambiguation token)")
        frame = table.to_pandas()
        ids = frame["item_id"].to_numpy()
        if not np.array_equal(ids, np.arange(len(frame))):
            raise LogError(f"{path} is corrupt: item_id must be 0 .. {len(frame) - 1} in order")
        if n_items is not None and len(frame) != n_items:
            raise LogError(f"{path} holds {len(frame):,} items but the logs have {n_items:,}: it belongs to "
                           "other logs; run 'recsim-post tokenize' again with --overwrite")
        codes = frame[expected[1:]].to_numpy()
        problem = _problem(codes, sizes)
        if problem:
            raise LogError(f"{path} is corrupt: {problem}")
        if items_sha256 is not None and fingerprint != items_sha256:
            raise LogError(
                f"{path} is stale: it was computed from another items.parquet (sha256 {fingerprint[:12] or '—'}..., "
                f"the logs' is {items_sha256[:12]}...); run 'recsim-post tokenize --logs {path.parent} --overwrite'"
            )
        return cls(codes.astype(np.int64), sizes, fingerprint, feats, source, config)


def read_semantic_ids(folder: str | Path, manifest: dict[str, Any] | None = None) -> SemanticIds:
    """The semantic IDs beside a log folder's public files, checked against its items: the folder
    is checked first (manifest, SHA-256 of the public files) unless its ``manifest`` is given."""
    from ..logs.check import check_log_folder

    folder = Path(folder)
    manifest = check_log_folder(folder, "public") if manifest is None else manifest
    return SemanticIds.load(folder / FILE_NAME, items_sha256=manifest["sha256"]["items.parquet"],
                            n_items=int(manifest["n_items"]))


__all__ = ["FILE_NAME", "SemanticIds", "features_sha256", "read_semantic_ids"]
