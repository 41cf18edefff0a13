"""The one check of a log folder, run before any reader touches its tables.

:func:`check_log_folder` reads ``manifest.json``, checks its shape (a JSON object; ``n_items`` and
``n_users`` positive whole numbers that agree with its scenario; ``rows`` a table of counts;
``sha256`` a table of relative file -> 64 hex digits; ``scenario`` a table), then checks that
every file the manifest lists on the side being read (public, or ``sealed/``) exists and matches
its SHA-256, streaming each file through the hash. The readers (:func:`~.public.read_public`,
``evaluation.ground_truth.GroundTruth.load``) call it first, then parse each table once and hand
it to :func:`check_public_tables` / :func:`check_sealed_tables`, which check values vectorised:
ids within the catalogue and the population, counts that match the manifest, finite values where
they must be finite, ratings in [1, 5], watch fractions in [0, 1], propensities in (0, 1].

Every failure is a one-line :class:`~recsim_post.errors.LogError` naming the file and what is wrong.
This module reads the manifest's scenario as plain data: it must not import the world (training
code imports the public reader, and a test keeps the world out of its reach).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..config import show
from ..errors import LogError
from ..signals import SIGNALS

Side = Literal["public", "sealed"]

PUBLIC_FILES = ("interactions.parquet", "items.parquet")
"""Public files every log folder has (and its manifest hashes)."""
SEALED_FILES = ("sealed/impressions.parquet", "sealed/items.parquet", "sealed/users.parquet")
"""Sealed files every log folder has; ``sealed/logger_rounds.parquet`` and
``sealed/theta_updates.parquet`` are written (and hashed) only when the scenario needs them."""

SCENARIO_WHOLE_NUMBERS = (
    "catalog.n_items", "catalog.n_genres", "catalog.latent_dim", "users.n_users", "simulation.n_rounds",
    "logging.slate_size",
)
"""Knobs of the manifest's scenario that every log folder has (positive whole numbers)."""

HASH_BLOCK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (memory stays flat for any size)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _scenario_value(manifest: Mapping[str, Any], dotted: str, where: Path) -> Any:
    node: Any = manifest["scenario"]
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise LogError(f"{where} is corrupt: scenario.{dotted} is missing")
        node = node[part]
    return node


def scenario_int(manifest: Mapping[str, Any], dotted: str, where: Path, lowest: int = 1) -> int:
    """A whole-number knob of the manifest's scenario (``"simulation.n_rounds"``), checked >= lowest."""
    value = _scenario_value(manifest, dotted, where)
    if not _whole(value) or value < lowest:
        raise LogError(f"{where} is corrupt: scenario.{dotted} = {show(value)} must be a whole number >= {lowest}")
    return value


def scenario_float(manifest: Mapping[str, Any], dotted: str, where: Path, default: float | None = None) -> float:
    """A numeric knob of the manifest's scenario, checked finite; ``default`` where a log written
    before the knob existed lacks it."""
    try:
        value = _scenario_value(manifest, dotted, where)
    except LogError:
        if default is None:
            raise
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise LogError(f"{where} is corrupt: scenario.{dotted} = {show(value)} must be a finite number")
    return float(value)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """``manifest.json`` of a log folder, its shape checked (see the module doc)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LogError(f"log folder not found: {folder}")
    path = folder / "manifest.json"
    if not path.is_file():
        raise LogError(f"{folder} is not a log folder: manifest.json is missing")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise LogError(f"{path} is corrupt: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    except OSError as err:
        raise LogError(f"{path} cannot be read: {err.strerror or err}") from None
    if not isinstance(manifest, dict):
        raise LogError(f"{path} is corrupt: it must hold a JSON object, not {type(manifest).__name__}")
    for key in ("n_items", "n_users", "rows", "scenario"):
        if key not in manifest:
            raise LogError(f"{path} is corrupt: key '{key}' is missing")
    for key in ("n_items", "n_users"):
        if not _whole(manifest[key]) or manifest[key] < 1:
            raise LogError(f"{path} is corrupt: {key} = {show(manifest[key])} must be a positive whole number")
    for key in ("seed", "clicks"):
        if key in manifest and (not _whole(manifest[key]) or manifest[key] < 0):
            raise LogError(f"{path} is corrupt: {key} = {show(manifest[key])} must be a whole number >= 0")
    rows = manifest["rows"]
    if not isinstance(rows, dict):
        raise LogError(f"{path} is corrupt: rows must be a table of row counts, not {show(rows)}")
    for name in ("interactions", "items"):
        if name not in rows:
            raise LogError(f"{path} is corrupt: rows.{name} is missing")
        if not _whole(rows[name]) or rows[name] < 0:
            raise LogError(f"{path} is corrupt: rows.{name} = {show(rows[name])} must be a whole number >= 0")
    if not isinstance(manifest["scenario"], dict):
        raise LogError(f"{path} is corrupt: scenario must be a table of settings, not {show(manifest['scenario'])}")
    for knob in SCENARIO_WHOLE_NUMBERS:  # what the value checks of both sides rely on
        scenario_int(manifest, knob, path)
    for key, knob in (("n_items", "catalog.n_items"), ("n_users", "users.n_users")):
        if scenario_int(manifest, knob, path) != manifest[key]:
            raise LogError(
                f"{path} is corrupt: {key} = {manifest[key]} but its scenario has {knob} = "
                f"{_scenario_value(manifest, knob, path)}"
            )
    sums = manifest.get("sha256")
    if sums is None:
        raise LogError(f"{path} has no sha256 table: the logs cannot be verified (write them again with simulate)")
    if not isinstance(sums, dict):
        raise LogError(f"{path} is corrupt: sha256 must be a table of file -> hash, not {show(sums)}")
    for name, digest in sums.items():
        parts = PurePosixPath(name).parts if isinstance(name, str) else ()
        if name.startswith("/") or not parts or ".." in parts or "\\" in name:
            raise LogError(f"{path} is corrupt: sha256 lists {show(name)}, which is not a file inside the log folder")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise LogError(f"{path} is corrupt: sha256 of {name} = {show(digest)} must be 64 hex digits")
    for name in PUBLIC_FILES + SEALED_FILES:
        if name not in sums:
            raise LogError(f"{path} is corrupt: it has no sha256 of {name}")
    return manifest


def check_files(folder: Path, manifest: Mapping[str, Any], side: Side) -> None:
    """Every file of ``side`` that the manifest lists exists and matches its SHA-256."""
    sealed_dir = folder / "sealed"
    if side == "sealed" and not sealed_dir.is_dir():
        raise LogError(
            f"{folder} has no sealed/ folder: the ground truth (true rewards, propensities, latents) is not "
            "there; evaluate, ope and rollout need the folder as written by simulate"
        )
    for name, digest in manifest["sha256"].items():
        if name.startswith("sealed/") != (side == "sealed"):
            continue
        path = folder / name
        if not path.is_file():
            raise LogError(f"{folder} is incomplete: {name} is missing (manifest.json lists it)")
        try:
            actual = sha256_file(path)
        except OSError as err:
            raise LogError(f"{path} cannot be read: {err.strerror or err}") from None
        if actual != digest:
            raise LogError(
                f"{path} does not match the sha256 in manifest.json: the file is damaged or was changed "
                "after simulate wrote it"
            )


def check_log_folder(folder: str | Path, side: Side = "public") -> dict[str, Any]:
    """The shared check run before any reader: the manifest's shape, then every file of ``side``
    (``"public"``: what training reads; ``"sealed"``: the ground truth) present and matching its
    SHA-256. Returns the manifest; raises a one-line LogError naming what is wrong."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    check_files(folder, manifest, side)
    return manifest


# ------------------------------------------------------------------------------------------------
# values, on tables already read (each table is parsed once, then checked here)
# ------------------------------------------------------------------------------------------------


def _fail(where: Path, column: str, values: np.ndarray, bad: np.ndarray, allowed: str,
          block: tuple[int, int] | None = None) -> None:
    """``block``: ``values`` are rows first .. last of a file read block by block (rows are
    numbered in the file; the count is the block's)."""
    i = int(np.argmax(bad))
    first, among = (0, "") if block is None else (block[0], f" among rows {block[0]:,} .. {block[1]:,}")
    raise LogError(
        f"{where} is corrupt: {column} = {show(values[i].item())} in row {first + i} "
        f"({int(bad.sum()):,} rows like it{among}): {allowed}"
    )


def _column(frame: pd.DataFrame, column: str, where: Path) -> np.ndarray:
    if column not in frame.columns:
        raise LogError(f"{where} is corrupt: column {column} is missing")
    return frame[column].to_numpy()


def _ids(frame: pd.DataFrame, column: str, n: int, where: Path, what: str,
         block: tuple[int, int] | None = None) -> np.ndarray:
    x = _column(frame, column, where)
    if not np.issubdtype(x.dtype, np.integer):
        raise LogError(f"{where} is corrupt: column {column} holds {x.dtype} values, not whole numbers")
    _require(where, column, x, (x >= 0) & (x < n), f"must lie in 0 .. {n - 1} ({what})", block)
    return x


def _floats(frame: pd.DataFrame, column: str, where: Path) -> np.ndarray:
    x = _column(frame, column, where)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise LogError(f"{where} is corrupt: column {column} holds {x.dtype} values, not numbers")
    return x


def _finite(frame: pd.DataFrame, columns: list[str], where: Path) -> None:
    for c in columns:
        x = _floats(frame, c, where)
        _require(where, c, x, np.isfinite(x), "must be a finite number")


def _require(where: Path, column: str, values: np.ndarray, ok: np.ndarray, allowed: str,
             block: tuple[int, int] | None = None) -> None:
    if not ok.all():
        _fail(where, column, values, ~ok, allowed, block)


def _signal(frame: pd.DataFrame, column: str, low: float, high: float, clicked: np.ndarray, where: Path,
            block: tuple[int, int] | None = None) -> np.ndarray:
    """An observed signal of a click: in [low, high] or NaN, and NaN on every row without a click."""
    x = _floats(frame, column, where)
    nan = np.isnan(x)
    _require(where, column, x, nan | ((x >= low) & (x <= high)), f"must lie in [{low:g}, {high:g}] (or be NaN)",
             block)
    _require(where, column, x, clicked | nan, "must be NaN on a row without a click", block)
    return x


def _propensities(frame: pd.DataFrame, column: str, where: Path, block: tuple[int, int] | None = None) -> None:
    p = _floats(frame, column, where)
    _require(where, column, p, (p > 0) & (p <= 1), "a propensity must lie in (0, 1]", block)


def _rows(frame: pd.DataFrame, expected: int, where: Path, why: str) -> None:
    _count(len(frame), expected, where, why)


def _count(n_rows: int, expected: int, where: Path, why: str) -> None:
    if n_rows != expected:
        raise LogError(f"{where} is corrupt: {n_rows:,} rows, expected {expected:,} ({why})")


def _one_row_each(frame: pd.DataFrame, column: str, count: str, manifest: Mapping[str, Any], where: Path,
                  what: str) -> None:
    """One row per item (or user), ids 0 .. n - 1 in order where the table has an id column."""
    n = manifest[count]
    _rows(frame, n, where, f"one per {what}: {count} in the manifest")
    if column in frame.columns:
        ids = _ids(frame, column, n, where, f"the {what} ids")
        if not np.array_equal(ids, np.arange(n)):
            raise LogError(f"{where} is corrupt: {column} must be 0 .. {n - 1} in order")


def _latents(frame: pd.DataFrame, prefix: str, n: int, where: Path, knob: str) -> list[str]:
    """The columns prefix0 .. prefix{n-1}: as many as the scenario's ``knob`` says, every value finite."""
    found = _blocks(frame, prefix)
    if len(found) != n:
        raise LogError(f"{where} is corrupt: {len(found)} columns {prefix}0.., the scenario's {knob} is {n}")
    _finite(frame, found, where)
    return found


def _blocks(frame: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in frame.columns if c.startswith(prefix) and c[len(prefix):].isdigit()]


def check_public_tables(
    interactions: pd.DataFrame, items: pd.DataFrame, manifest: Mapping[str, Any], folder: Path,
    signals: Sequence[str] | None = None,
) -> None:
    """Values of the public tables: row counts as in the manifest, every row's values
    (:func:`check_interaction_values`), one items row per item (:func:`check_items_table`).
    ``signals``: the feedback signals the logs hold (None: every one of ``signals.SIGNALS``)."""
    _rows(interactions, manifest["rows"]["interactions"], folder / "interactions.parquet",
          "rows.interactions in the manifest")
    check_interaction_values(interactions, manifest, folder, signals)
    check_items_table(items, manifest, folder)


def check_interaction_rows(n_rows: int, manifest: Mapping[str, Any], folder: Path) -> None:
    """The public interactions hold as many rows as the manifest says (for readers that stream
    the table and never hold it whole)."""
    _count(n_rows, manifest["rows"]["interactions"], folder / "interactions.parquet",
           "rows.interactions in the manifest")


def check_interaction_values(
    interactions: pd.DataFrame, manifest: Mapping[str, Any], folder: Path, signals: Sequence[str] | None = None,
    block: tuple[int, int] | None = None,
) -> None:
    """Values of public interaction rows (the whole table or any block of its rows): user, item,
    round and slate position ids within the world; click 0/1; ratings of clicks in [1, 5] (NaN only
    when the scenario drops ratings, ``feedback.missing_rate`` > 0), watch fractions in [0, 1], and
    neither on rows without a click; a public ``pscore`` in (0, 1]. ``signals``: the feedback
    signals the logs hold (None: every one of ``signals.SIGNALS``); each is checked against its
    range (logs written before a signal existed lack its column). ``block``: the rows are rows
    first .. last of the file (a streamed read): errors number rows in the file."""
    where_m = folder / "manifest.json"
    n_items, n_users = manifest["n_items"], manifest["n_users"]
    n_rounds = scenario_int(manifest, "simulation.n_rounds", where_m)
    slate = scenario_int(manifest, "logging.slate_size", where_m)
    missing_rate = scenario_float(manifest, "feedback.missing_rate", where_m, default=0.0)

    where = folder / "interactions.parquet"
    _ids(interactions, "user_id", n_users, where, "the population", block)
    _ids(interactions, "item_id", n_items, where, "the catalogue", block)
    _ids(interactions, "timestamp", n_rounds, where, "the logged rounds", block)
    _ids(interactions, "position", slate, where, "positions in a slate", block)
    slate_id = _column(interactions, "slate_id", where)
    if not np.issubdtype(slate_id.dtype, np.integer):
        raise LogError(f"{where} is corrupt: column slate_id holds {slate_id.dtype} values, not whole numbers")
    _require(where, "slate_id", slate_id, slate_id >= 0, "must be >= 0", block)
    click = _column(interactions, "click", where)
    _require(where, "click", click, (click == 0) | (click == 1), "must be 0 or 1", block)
    clicked = click == 1
    rating = _signal(interactions, "rating", 1, 5, clicked, where, block)
    if missing_rate == 0:
        _require(where, "rating", rating, ~clicked | ~np.isnan(rating),
                 "a click must have a rating (the scenario's feedback.missing_rate is 0)", block)
    for name in SIGNALS if signals is None else signals:
        if name != "rating":
            _signal(interactions, name, SIGNALS[name].low, SIGNALS[name].high, clicked, where, block)
    if "pscore" in interactions.columns:
        _propensities(interactions, "pscore", where, block)


def check_items_table(items: pd.DataFrame, manifest: Mapping[str, Any], folder: Path) -> None:
    """The public items table: one row per item, ids 0 .. n_items - 1 once each, genres within the
    scenario's, finite features."""
    n_items = manifest["n_items"]
    n_genres = scenario_int(manifest, "catalog.n_genres", folder / "manifest.json")
    where = folder / "items.parquet"
    _rows(items, manifest["rows"]["items"], where, "rows.items in the manifest")
    _rows(items, n_items, where, "one per item: n_items in the manifest")
    ids = _ids(items, "item_id", n_items, where, "the catalogue")
    if len(np.unique(ids)) != n_items:
        raise LogError(f"{where} is corrupt: item_id must list every item 0 .. {n_items - 1} once")
    if "genre" in items.columns:
        _ids(items, "genre", n_genres, where, "the scenario's genres")
    _finite(items, _blocks(items, "f"), where)


def check_sealed_tables(
    folder: Path,
    manifest: Mapping[str, Any],
    items: pd.DataFrame,
    users: pd.DataFrame,
    impressions: pd.DataFrame | None,
    n_loggers: int = 1,
    theta_updates: pd.DataFrame | None = None,
) -> None:
    """Values of the sealed tables: one items row per item and one users row per user (the same
    world as the manifest), latent dimensions and genres as in the scenario; finite latents,
    qualities, trends and true rewards; satiation >= 0; propensities in (0, 1]; logger ids in
    0 .. n_loggers - 1; one impressions row per logged impression (None: not read, its SHA-256
    checked only); theta updates of real users."""
    where_m = folder / "manifest.json"
    d = scenario_int(manifest, "catalog.latent_dim", where_m)
    n_genres = scenario_int(manifest, "catalog.n_genres", where_m)
    n_users = manifest["n_users"]

    where = folder / "sealed" / "items.parquet"
    _one_row_each(items, "item_id", "n_items", manifest, where, "item")
    _ids(items, "genre", n_genres, where, "the scenario's genres")
    _latents(items, "v", d, where, "latent_dim")
    cols = ["quality", "quality_hat", "trend"] + [c for c in ("hype", "popularity", "shock", "logger_boost")
                                                  if c in items.columns]
    _finite(items, cols, where)

    where = folder / "sealed" / "users.parquet"
    _one_row_each(users, "user_id", "n_users", manifest, where, "user")
    _latents(users, "theta", d, where, "latent_dim")
    _latents(users, "theta_hat", d, where, "latent_dim")
    for c in _latents(users, "satiation", n_genres, where, "n_genres"):
        x = users[c].to_numpy()
        _require(where, c, x, x >= 0, "satiation must be >= 0")
    if "rating_bias" in users.columns:  # written only with feedback.user_bias_std > 0
        _finite(users, ["rating_bias"], where)

    where = folder / "sealed" / "impressions.parquet"
    if impressions is not None:
        _rows(impressions, manifest["rows"]["interactions"], where, "one per impression: rows.interactions in the manifest")
        _finite(impressions, ["true_reward"], where)
        for c in ("propensity", "propensity_item"):
            if c in impressions.columns:
                _propensities(impressions, c, where)
        if "logger_id" in impressions.columns:
            _ids(impressions, "logger_id", n_loggers, where, "the scenario's loggers")

    if theta_updates is not None:
        where = folder / "sealed" / "theta_updates.parquet"
        _ids(theta_updates, "user_id", n_users, where, "the population")
        _latents(theta_updates, "theta", d, where, "latent_dim")


__all__ = [
    "PUBLIC_FILES", "SEALED_FILES", "check_files", "check_log_folder", "check_public_tables", "check_sealed_tables",
    "check_interaction_rows", "check_interaction_values", "check_items_table",
    "read_manifest", "scenario_float", "scenario_int", "sha256_file",
]
