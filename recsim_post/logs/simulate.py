"""Roll the logging policy through the world and write the logs.

A log folder::

    manifest.json            scenario, seed, package version, row counts, file hashes
    interactions.parquet     public: one row per impression (see logs/public.py)
    items.parquet            public: observable item features
    sealed/impressions.parquet   true reward, PL propensity, single-draw probability per impression
                                 (no propensities with propensity_mode = "none"; logger_id with
                                 switching on)
    sealed/items.parquet         latent vectors, quality, hype, the logger's quality estimate,
                                 popularity / shock / trend at the end of logging
    sealed/users.parquet         preferences, susceptibility, activity, the logger's estimate,
                                 per-genre satiation at the end of logging (and each user's
                                 rating offset b_u with feedback.user_bias_std > 0)
    sealed/logger_rounds.parquet only with switching on: the active logger in rounds 0 .. T
                                 (round, logger_id; row T is the logger's state at T)
    sealed/theta_updates.parquet only with dynamics.drift_rate > 0: preferences over time, as
                                 (round, user_id, theta0..) rows = theta_u at the start of that
                                 round; round 0 holds every user, round t >= 1 the users whose
                                 theta moved in round t - 1 (those who clicked), so theta_u(t) is
                                 the user's last row with round <= t (exact float64 values)

Same scenario and seed give byte-identical files. :func:`write_logs` (an in-memory
:class:`Simulation`) and :func:`stream_logs` (``recsim-post simulate``: each round's rows written to
Parquet row groups as they are made, memory flat in the rounds) write the same bytes, through
``recsim_post.outputs``: built under a hidden temporary name and swapped in atomically, so a failure
or a kill never leaves a half-written or half-deleted folder behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .. import __version__
from ..behavior.logging_policy import LoggerServer, TrendLogger
from ..config import to_dict
from ..outputs import OutputFolder
from ..seeding import SeedTree
from ..world.config import ScenarioConfig, check_memory
from ..world.engine import Responses, RoundRecord, Streams, step_round
from ..world.world import World
from .public import INTERACTION_SCHEMA, PublicLogs


@dataclass
class Simulation:
    """Everything a logging run produced: the public logs, the sealed tables and the final world."""

    public: PublicLogs
    sealed_impressions: pd.DataFrame
    world: World
    logger: TrendLogger
    logger_rounds: pd.DataFrame | None = None  # with switching: round, logger_id for rounds 0 .. T
    theta_updates: pd.DataFrame | None = None  # with drift: round, user_id, theta0.. (see module doc)


Columns = dict[str, np.ndarray]


class LogRun:
    """A logging run: the world, the logger and its random streams, advanced one round at a time.

    Streams (all children of ``SeedTree(cfg.seed)``): ``world`` builds the world and its shocks,
    ``logging`` the logger's estimate and its slates, ``users`` who is active and what they choose,
    ``feedback`` the rating noise, ``feedback-extra`` the watch noise and missing ratings,
    ``users/dynamics`` who comes back after leaving (``world/arrivals``, in World.create, who
    arrives late; ``world/rating-bias``, only with feedback.user_bias_std > 0, each user's rating
    offset). Changing how one stream is consumed leaves the others unchanged.
    ``logging/support`` and ``logging/suggestions`` (only drawn when those knobs are on) pick the
    logger's support and the external-suggestion campaigns. After :meth:`rounds` the logger is left
    in its state at T = n_rounds (active logger and suggestion boost of round T, no new campaign).
    ``logging/switching`` (only drawn with switch_prob > 0) is the random switching chain.
    With ``simulation.streams = "per-user"`` the per-user numbers (activity, choice, signal draws,
    slate uniforms, returns) are keyed under ``per-user/`` instead (world/keyed.py), and
    ``logs/sharded.py`` writes the same bytes from any number of shards.

    Both :func:`simulate` (everything in memory) and :func:`stream_log_files` (each round to disk
    as it finishes) are this loop, so the two give the same rows.
    """

    def __init__(self, cfg: ScenarioConfig, streamed: bool = False) -> None:
        check_memory(cfg, streamed=streamed)  # refuse a world that cannot fit before allocating any of it
        tree = SeedTree(cfg.seed)
        self.cfg = cfg
        self.world = World.create(cfg, tree.child("world"))
        self.logger = TrendLogger.create(cfg.logging, self.world, tree.child("logging"))
        self.streams = Streams.logging(tree, per_user=cfg.simulation.streams == "per-user")
        self.server = LoggerServer.create(self.logger, self.world.n_items, tree.child("logging"), self.streams.keyed)
        self.switching = cfg.logging.n_loggers > 1
        self.drift = cfg.dynamics.drift_rate > 0
        self.mode = cfg.logging.propensity_mode

    def theta_start(self) -> Columns | None:
        """With drift: theta_u at the start of round 0, every user (the first theta_updates rows)."""
        if not self.drift:
            return None
        # a copy: the rows may be kept (simulate) while theta moves on
        return theta_rows(0, np.arange(self.world.n_users), self.world.users.theta.copy())

    def rounds(self, progress: bool = False, chunk_users: int | None = None) -> Iterator[tuple[Columns, Columns | None]]:
        """Run every round; yield its impression rows (:func:`impression_rows`) as soon as it
        finishes and, with drift, the theta rows of the users it moved (those who clicked).
        ``chunk_users``: a round's rows come in pieces of that many users (the theta rows with its
        last piece), so a streamed run never holds a whole round's rows; None: one piece a round."""
        n_rounds = self.cfg.simulation.n_rounds
        next_slate = 0
        for t in tqdm(range(n_rounds), desc="simulate", disable=not progress, unit="round"):
            rec, moved = self.step(t)
            theta = None if moved is None else theta_rows(t + 1, rec.clicked_users, moved)
            logger_id = self.server.active[t] if self.switching else None  # one entry per round begun
            n = len(rec.users)
            step = chunk_users or max(n, 1)
            starts = range(0, n, step) or range(1)  # an empty round still yields its (empty) rows
            for lo in starts:
                hi = min(lo + step, n)
                part = rec if hi - lo == n else _user_rows(rec, lo, hi)
                yield impression_rows(part, next_slate + lo, logger_id), theta if lo == starts[-1] else None
            next_slate += n
        self.server.finish(n_rounds)

    def step(self, t: int) -> tuple[RoundRecord, np.ndarray | None]:
        """Round ``t``: its record and, with drift, theta of the users who clicked, after it (they
        are the users it moved: at most one click each)."""
        rec = step_round(self.world, self.streams, self.server)
        return rec, self.world.users.theta[rec.clicked_users] if self.drift else None

    def close(self) -> None:
        """Release what the run holds outside this process (nothing here; a sharded run's workers)."""

    def split(self, cols: Columns) -> tuple[Columns, Columns]:
        """Impression rows -> (public interactions columns, sealed impressions columns)."""
        public = {k: cols[k] for k in INTERACTION_SCHEMA.names}
        if self.mode == "logged":  # a company that logs its propensities
            public["pscore"] = cols["propensity_item"]
        sealed_cols = ["slate_id", "position", "true_reward"]
        if self.mode != "none":  # "none": nobody recorded them, not even in the truth OPE may read
            sealed_cols += ["propensity", "propensity_item"]
        if self.switching:
            sealed_cols.append("logger_id")
        return public, {k: cols[k] for k in sealed_cols}

    def interaction_schema(self) -> pa.Schema:
        """The public interactions' schema (``pscore`` with propensity_mode = "logged")."""
        if self.mode == "logged":
            return INTERACTION_SCHEMA.append(pa.field("pscore", pa.float64()))
        return INTERACTION_SCHEMA

    def sealed_schema(self) -> pa.Schema:
        """The sealed impressions' schema (the dtypes :func:`impression_rows` gives them)."""
        fields = [("slate_id", pa.int64()), ("position", pa.int16()), ("true_reward", pa.float64())]
        if self.mode != "none":
            fields += [("propensity", pa.float64()), ("propensity_item", pa.float64())]
        if self.switching:
            fields.append(("logger_id", pa.int8()))
        return pa.schema(fields)

    def theta_schema(self) -> pa.Schema:
        """The sealed theta_updates' schema: round, user_id, theta0 .. theta{d-1}."""
        d = self.world.users.theta.shape[1]
        return pa.schema([("round", pa.int32()), ("user_id", pa.int32())] + [(f"theta{j}", pa.float64()) for j in range(d)])

    def logger_rounds(self) -> pd.DataFrame | None:
        """With switching (after :meth:`rounds`): the active logger in rounds 0 .. T."""
        if not self.switching:
            return None
        return pd.DataFrame({
            "round": np.arange(self.cfg.simulation.n_rounds + 1, dtype=np.int32),
            "logger_id": np.asarray(self.server.active, dtype=np.int8),
        })

    def items(self) -> pd.DataFrame:
        """The public items table: item_id, genre and the observable features f0.."""
        world = self.world
        items = pd.DataFrame({"item_id": np.arange(world.n_items, dtype=np.int32),
                              "genre": world.catalog.genre.astype(np.int32)})
        for j in range(world.catalog.features.shape[1]):
            items[f"f{j}"] = world.catalog.features[:, j]
        return items

    def manifest(self, rows: int, items: int, clicks: int) -> dict[str, Any]:
        """The manifest (without its sha256 table)."""
        return {
            "scenario": to_dict(self.cfg),
            "seed": self.cfg.seed,
            "package_version": __version__,
            "n_users": self.world.n_users,
            "n_items": self.world.n_items,
            "rows": {"interactions": rows, "items": items},
            "clicks": clicks,
        }


def theta_rows(r: int, users: np.ndarray, theta: np.ndarray) -> Columns:
    """theta_updates rows: theta (n, d) of ``users`` at the start of round ``r``."""
    cols: Columns = {"round": np.full(len(users), r, np.int32), "user_id": np.asarray(users).astype(np.int32)}
    cols.update({f"theta{j}": theta[:, j] for j in range(theta.shape[1])})
    return cols


def _concat(parts: list[Columns]) -> Columns:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def simulate(cfg: ScenarioConfig, progress: bool = False) -> Simulation:
    """Run the scenario's logging policy for ``cfg.simulation.n_rounds`` rounds, keeping every row
    in memory (:class:`LogRun` holds the streams; :func:`stream_log_files` writes the same rows to
    disk round by round without keeping them)."""
    run = LogRun(cfg)
    parts: list[Columns] = []
    start = run.theta_start()
    theta_parts = [] if start is None else [start]
    for rows, theta in run.rounds(progress):
        parts.append(rows)
        if theta is not None:
            theta_parts.append(theta)
    public, sealed_cols = run.split(_concat(parts))
    interactions = pd.DataFrame(public)
    sealed = pd.DataFrame(sealed_cols)
    theta_updates = pd.DataFrame(_concat(theta_parts)) if theta_parts else None
    items = run.items()
    manifest = run.manifest(len(interactions), len(items), int(interactions["click"].sum()))
    return Simulation(PublicLogs(interactions, items, manifest), sealed, run.world, run.logger, run.logger_rounds(),
                      theta_updates)


def _user_rows(rec: RoundRecord, lo: int, hi: int) -> RoundRecord:
    """Users ``lo:hi`` of a round (views, no copies)."""
    r, rows = rec.responses, slice(lo, hi)
    responses = Responses(r.choice[rows], r.rstar[rows], {k: v[rows] for k, v in r.signals.items()})
    return RoundRecord(rec.t, rec.users[rows], rec.slates[rows], responses,
                       {k: np.asarray(v)[rows] for k, v in rec.extras.items()})


def impression_rows(rec: RoundRecord, first_slate: int, logger_id: int | None = None) -> dict[str, np.ndarray]:
    """A round as impression rows (one per shown item): the public columns, the true reward and
    the server's extras (the logger's propensities), slates numbered from ``first_slate``."""
    n, K = rec.slates.shape
    resp = rec.responses
    clicked = resp.clicked
    rows, pos = np.flatnonzero(clicked), resp.choice[clicked]
    click = np.zeros((n, K), dtype=np.int8)
    click[rows, pos] = 1
    cols: dict[str, np.ndarray] = {} if logger_id is None else {"logger_id": np.full(n * K, logger_id, dtype=np.int8)}
    cols.update(
        user_id=np.repeat(rec.users, K).astype(np.int32),
        timestamp=np.full(n * K, rec.t, dtype=np.int32),
        slate_id=np.repeat(np.arange(first_slate, first_slate + n, dtype=np.int64), K),
        position=np.tile(np.arange(K, dtype=np.int16), n),
        item_id=rec.slates.ravel(),
        click=click.ravel(),
    )
    for name, values in resp.signals.items():  # what a click records, NaN on the other rows
        full = np.full((n, K), np.nan, dtype=np.float32)
        full[rows, pos] = values[clicked]
        cols[name] = full.ravel()
    cols["true_reward"] = resp.rstar.ravel()
    for name, values in rec.extras.items():
        cols[name] = np.asarray(values).reshape(n * K)
    return cols


def _sealed_items(sim: Simulation) -> pd.DataFrame:
    return sealed_items(sim.world, sim.logger)


def sealed_items(w: World, lg: TrendLogger) -> pd.DataFrame:
    """The sealed items table: latents, quality, hype, the logger's estimate, the trend state at T."""
    return pd.DataFrame(sealed_item_columns(w, lg))


def sealed_item_columns(w: World, lg: TrendLogger) -> Columns:
    """:func:`sealed_items` as columns (views of the world's arrays where they can be)."""
    c = w.catalog
    cols: Columns = {
        "item_id": np.arange(w.n_items, dtype=np.int32),
        "genre": c.genre.astype(np.int32),
        "quality": c.quality,
        "hype": c.hype,
        "quality_hat": lg.quality_hat,
        "popularity": w.state.popularity,
        "shock": w.state.shock,
        "trend": w.trend(),
    }
    for j in range(c.vectors.shape[1]):
        cols[f"v{j}"] = c.vectors[:, j]
    if lg.support_idx is not None:  # the logger's state at T, for GroundTruth.load
        supported = np.zeros(w.n_items, dtype=bool)
        supported[lg.support_idx] = True
        cols["logger_supported"] = supported
    if lg.boost is not None:
        cols["logger_boost"] = lg.boost
    return cols


def _sealed_users(sim: Simulation) -> pd.DataFrame:
    return sealed_users(sim.world, sim.logger)


def sealed_users(w: World, lg: TrendLogger) -> pd.DataFrame:
    """The sealed users table: preferences, susceptibility, activity, the logger's estimate, satiation at T."""
    return pd.DataFrame(sealed_user_columns(w, lg))


def sealed_user_columns(w: World, lg: TrendLogger) -> Columns:
    """:func:`sealed_users` as columns (views of the world's arrays)."""
    cols: Columns = {
        "user_id": np.arange(w.n_users, dtype=np.int32),
        "susceptibility": w.users.susceptibility,
        "activity": w.users.activity,
    }
    for j in range(w.users.theta.shape[1]):
        cols[f"theta{j}"] = w.users.theta[:, j]
    for j in range(lg.theta_hat.shape[1]):
        cols[f"theta_hat{j}"] = lg.theta_hat[:, j]
    for g in range(w.state.satiation.shape[1]):
        cols[f"satiation{g}"] = w.state.satiation[:, g]
    if w.users.rating_bias is not None:  # only with feedback.user_bias_std > 0: the table is unchanged otherwise
        cols["rating_bias"] = w.users.rating_bias
    return cols


ROW_GROUP_ROWS = 1 << 20
"""Rows per Parquet row group: pyarrow's default for a whole table. :class:`TableWriter` cuts every
table into groups of exactly this many rows (the last one shorter) whether its rows come round by
round or all at once, so a streamed folder and one written from memory are byte-identical."""


class _HashedFile(io.RawIOBase):
    """A new file (``path``) that hashes (SHA-256) what is written to it: the manifest's hash without
    reading the file back. ``path`` None: the bytes are hashed and dropped (:func:`replay_public_hashes`)."""

    def __init__(self, path: Path | None) -> None:
        super().__init__()
        self._file = None if path is None else io.FileIO(path, "xb")
        self.sha, self._size = hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # noqa: ANN001 - any bytes-like object
        view = memoryview(data).cast("B")
        n = len(view) if self._file is None else self._file.write(view)
        self.sha.update(view[:n])
        self._size += n
        return n

    def tell(self) -> int:
        return self._size

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


class TableWriter:
    """One Parquet table (zstd, no pandas metadata) written row group by row group as its rows
    arrive: memory holds the batch being written and less than one row group of earlier rows,
    whatever the table's length. ``path`` None: the bytes are only hashed, never stored."""

    def __init__(self, path: Path | None, schema: pa.Schema) -> None:
        self.path, self.schema = path, schema
        self._file = _HashedFile(path)
        self._writer = pq.ParquetWriter(self._file, schema, compression="zstd")
        self._pending: list[tuple[pa.Table, bool]] = []  # (rows, whole: a batch as made, not a slice)
        self._buffered = 0
        self.rows = 0

    def write(self, cols: Mapping[str, np.ndarray]) -> None:
        """Append rows (a column dict holding the schema's columns, any number of rows)."""
        # from_pandas: NaN becomes null, as pa.Table.from_pandas wrote these tables before
        arrays = [pa.array(cols[f.name], type=f.type, from_pandas=True) for f in self.schema]
        self._pending.append((pa.Table.from_arrays(arrays, schema=self.schema), True))
        self._buffered += len(arrays[0])
        self.rows += len(arrays[0])
        if self._buffered < ROW_GROUP_ROWS:
            return
        while self._buffered >= ROW_GROUP_ROWS:
            self._writer.write_table(self._take(ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
        if self._buffered:  # the rest waits for the next rows as a copy: this batch's memory is freed now
            rest = self._take(self._buffered)
            self._pending, self._buffered = [(rest, True)], len(rest)

    def _take(self, n: int) -> pa.Table:
        """The first ``n`` pending rows as one table of contiguous arrays (a copy), no longer pending.
        Every row group is written from such a copy, so the bytes cannot depend on how the rows
        arrived (one batch, or rounds that end mid-group)."""
        head, whole = self._pending[0]
        if whole and len(head) == n:  # one batch as pa.array made it: contiguous already, no copy
            self._pending.pop(0)
            self._buffered -= n
            return head
        pieces, need = [], n
        while need:
            head, _ = self._pending[0]
            if len(head) <= need:
                pieces.append(self._pending.pop(0)[0])
                need -= len(head)
            else:
                pieces.append(head.slice(0, need))
                self._pending[0] = (head.slice(need), False)
                need = 0
        self._buffered -= n
        columns = [pa.concat_arrays([c for p in pieces for c in p.column(i).chunks]) for i in range(len(self.schema))]
        return pa.Table.from_arrays(columns, schema=self.schema)

    def close(self) -> str:
        """Finish the file; its SHA-256."""
        if self._buffered:
            self._writer.write_table(self._take(self._buffered), row_group_size=ROW_GROUP_ROWS)
        elif self.rows == 0:  # as pq.write_table writes an empty table: one empty row group
            self._writer.write_table(self.schema.empty_table())
        self._writer.close()
        self._file.close()
        return self._file.sha.hexdigest()

    def abort(self) -> None:
        """Close without finishing (the folder is being thrown away)."""
        with contextlib.suppress(Exception):
            self._writer.close()
        self._file.close()


def _write_parquet(df: pd.DataFrame | Columns, path: Path | None, schema: pa.Schema | None = None) -> str:
    """Write a whole table, a frame or columns (row groups as :class:`TableWriter` cuts them, fed
    a row group at a time: no second copy of a large table); its SHA-256 (``path`` None: only that)."""
    cols = {str(name): np.asarray(df[name]) for name in df}
    if schema is None:
        schema = pa.schema([(name, pa.from_numpy_dtype(v.dtype)) for name, v in cols.items()])
    n = len(next(iter(cols.values()))) if cols else 0
    writer = TableWriter(path, schema)
    try:
        for lo in range(0, n, ROW_GROUP_ROWS):
            writer.write({name: v[lo:lo + ROW_GROUP_ROWS] for name, v in cols.items()})
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def _write_manifest(folder: Path, manifest: Mapping[str, Any], hashes: Mapping[str, str]) -> None:
    text = json.dumps(dict(manifest, sha256=dict(hashes)), indent=2, sort_keys=True) + "\n"
    (folder / "manifest.json").write_text(text)


def write_log_files(sim: Simulation, folder: str | Path) -> Path:
    """Write the log files of an in-memory :class:`Simulation` into ``folder`` (made if missing;
    it should be empty): the building block of :func:`write_logs` and of the commands that write
    logs inside a larger output. Byte-identical to :func:`stream_log_files` of the same scenario."""
    folder = Path(folder)
    (folder / "sealed").mkdir(parents=True, exist_ok=True)
    schema = INTERACTION_SCHEMA
    if "pscore" in sim.public.interactions.columns:
        schema = schema.append(pa.field("pscore", pa.float64()))
    hashes = {
        "interactions.parquet": _write_parquet(sim.public.interactions, folder / "interactions.parquet", schema),
        "items.parquet": _write_parquet(sim.public.items, folder / "items.parquet"),
        "sealed/impressions.parquet": _write_parquet(sim.sealed_impressions, folder / "sealed" / "impressions.parquet"),
        "sealed/items.parquet": _write_parquet(_sealed_items(sim), folder / "sealed" / "items.parquet"),
        "sealed/users.parquet": _write_parquet(_sealed_users(sim), folder / "sealed" / "users.parquet"),
    }
    optional = {"sealed/logger_rounds.parquet": sim.logger_rounds, "sealed/theta_updates.parquet": sim.theta_updates}
    for name, df in optional.items():
        if df is not None:
            hashes[name] = _write_parquet(df, folder / name)
    _write_manifest(folder, sim.public.manifest, hashes)
    return folder


def stream_log_files(cfg: ScenarioConfig, folder: str | Path, progress: bool = False,
                     run: Callable[[], LogRun] | None = None) -> dict[str, Any]:
    """Simulate ``cfg`` and write its log files into ``folder`` round by round: each round's rows
    go to the Parquet writers as it finishes and are dropped, so memory is the world plus one
    round (and one row group per table), flat in the number of rounds. Returns the manifest.

    The files are byte-identical to ``write_log_files(simulate(cfg), folder)``. ``run`` makes the
    :class:`LogRun` (default ``LogRun(cfg, streamed=True)``; logs/sharded.py passes a sharded one).
    """
    folder = Path(folder)
    (folder / "sealed").mkdir(parents=True, exist_ok=True)
    log_run = LogRun(cfg, streamed=True) if run is None else run()
    try:
        return _stream_run(cfg, folder, log_run, progress)
    finally:
        log_run.close()


def _stream_run(cfg: ScenarioConfig, folder: Path, run: LogRun, progress: bool) -> dict[str, Any]:
    writers = {
        "interactions.parquet": TableWriter(folder / "interactions.parquet", run.interaction_schema()),
        "sealed/impressions.parquet": TableWriter(folder / "sealed" / "impressions.parquet", run.sealed_schema()),
    }
    if run.drift:
        writers["sealed/theta_updates.parquet"] = TableWriter(folder / "sealed" / "theta_updates.parquet",
                                                              run.theta_schema())
    clicks = 0
    try:
        start = run.theta_start()
        if start is not None:
            writers["sealed/theta_updates.parquet"].write(start)
        for rows, theta in _pieces(run, progress):
            public, sealed = run.split(rows)
            writers["interactions.parquet"].write(public)
            writers["sealed/impressions.parquet"].write(sealed)
            clicks += int(np.count_nonzero(public["click"]))
            if theta is not None:
                writers["sealed/theta_updates.parquet"].write(theta)
        hashes = {name: w.close() for name, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    items = run.items()
    hashes["items.parquet"] = _write_parquet(items, folder / "items.parquet")
    sealed = folder / "sealed"
    hashes["sealed/items.parquet"] = _write_parquet(sealed_item_columns(run.world, run.logger), sealed / "items.parquet")
    hashes["sealed/users.parquet"] = _write_parquet(sealed_user_columns(run.world, run.logger), sealed / "users.parquet")
    logger_rounds = run.logger_rounds()
    if logger_rounds is not None:
        hashes["sealed/logger_rounds.parquet"] = _write_parquet(logger_rounds, folder / "sealed" / "logger_rounds.parquet")
    manifest = run.manifest(writers["interactions.parquet"].rows, len(items), clicks)
    _write_manifest(folder, manifest, hashes)
    return dict(manifest, sha256=hashes)


def _pieces(run: LogRun, progress: bool = False) -> Iterator[tuple[Columns, Columns | None]]:
    """``run``'s rows in pieces of about one row group (:meth:`LogRun.rounds`): a streamed run holds
    one piece's rows, not a whole round's."""
    return run.rounds(progress, chunk_users=max(1, ROW_GROUP_ROWS // run.cfg.logging.slate_size))


def replay_public_hashes(run: LogRun) -> dict[str, str]:
    """Run ``run`` (a fresh :class:`LogRun`) to the end and return the SHA-256 that its public files,
    ``interactions.parquet`` and ``items.parquet``, would have — the bytes :func:`stream_log_files`
    writes, hashed and dropped, so memory is the world plus one piece of a round. After it, ``run``
    holds the world and the logger at T. What a rollout uses to check, against the manifest, that a
    re-simulation reproduces a log folder exactly, without holding its rows."""
    sink = TableWriter(None, run.interaction_schema())
    try:
        for rows, _ in _pieces(run):
            sink.write(run.split(rows)[0])
        interactions = sink.close()
    except BaseException:
        sink.abort()
        raise
    return {"interactions.parquet": interactions, "items.parquet": _write_parquet(run.items(), None)}


def write_logs(sim: Simulation, out: str | Path, overwrite: bool = False) -> Path:
    """Write a log folder safely (``recsim_post.outputs.OutputFolder``): a non-empty ``out`` is
    refused unless ``overwrite``; the folder is built under a hidden temporary name and swapped in
    atomically, so a failure or a kill never leaves a half-written or half-deleted folder."""
    target = OutputFolder(out, "simulate", overwrite=overwrite, replace_own=False, what="output folder")
    with target as tmp:
        write_log_files(sim, tmp)
    return target.target


def stream_logs(cfg: ScenarioConfig, out: str | Path, overwrite: bool = False, progress: bool = False) -> dict[str, Any]:
    """:func:`write_logs` without the rows in memory: simulate ``cfg`` straight into a safely
    written log folder (:func:`stream_log_files` inside ``OutputFolder``). Returns the manifest."""
    target = OutputFolder(out, "simulate", overwrite=overwrite, replace_own=False, what="output folder")
    with target as tmp:
        return stream_log_files(cfg, tmp, progress=progress)
