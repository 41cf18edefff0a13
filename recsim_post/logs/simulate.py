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
                                 per-genre satiation at the end of logging
    sealed/logger_rounds.parquet only with switching on: the active logger in rounds 0 .. T
                                 (round, logger_id; row T is the logger's state at T)
    sealed/theta_updates.parquet only with dynamics.drift_rate > 0: preferences over time, as
                                 (round, user_id, theta0..) rows = theta_u at the start of that
                                 round; round 0 holds every user, round t >= 1 the users whose
                                 theta moved in round t - 1 (those who clicked), so theta_u(t) is
                                 the user's last row with round <= t (exact float64 values)

Same scenario and seed give byte-identical files. :func:`write_logs` writes the folder through
``recsim_post.outputs``: built under a hidden temporary name and swapped in atomically, so a failure
or a kill never leaves a half-written or half-deleted folder behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .. import __version__
from ..behavior.logging_policy import LoggerServer, TrendLogger
from ..config import to_dict
from ..outputs import OutputFolder
from .check import sha256_file
from ..seeding import SeedTree
from ..world.config import ScenarioConfig, check_memory
from ..world.engine import RoundRecord, Streams, step_round
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


def simulate(cfg: ScenarioConfig, progress: bool = False) -> Simulation:
    """Run the scenario's logging policy for ``cfg.simulation.n_rounds`` rounds.

    Streams (all children of ``SeedTree(cfg.seed)``): ``world`` builds the world and its shocks,
    ``logging`` the logger's estimate and its slates, ``users`` who is active and what they choose,
    ``feedback`` the rating noise, ``feedback-extra`` the watch noise and missing ratings,
    ``users/dynamics`` who comes back after leaving (``world/arrivals``, in World.create, who
    arrives late). Changing how one stream is consumed leaves the others unchanged.
    ``logging/support`` and ``logging/suggestions`` (only drawn when those knobs are on) pick the
    logger's support and the external-suggestion campaigns. After the loop the logger is left in
    its state at T = n_rounds (active logger and suggestion boost of round T, no new campaign).
    ``logging/switching`` (only drawn with switch_prob > 0) is the random switching chain.
    """
    check_memory(cfg)  # refuse a world that cannot fit before allocating any of it
    tree = SeedTree(cfg.seed)
    world = World.create(cfg, tree.child("world"))
    logger = TrendLogger.create(cfg.logging, world, tree.child("logging"))
    server = LoggerServer.create(logger, world.n_items, tree.child("logging"))
    streams = Streams.logging(tree)
    switching = cfg.logging.n_loggers > 1
    drift = cfg.dynamics.drift_rate > 0
    # theta_u at the start of round 0 (everyone), then the rows that moved in each round
    theta_log = [(0, np.arange(world.n_users), world.users.theta.copy())] if drift else []

    parts: list[dict[str, np.ndarray]] = []
    next_slate = 0
    for t in tqdm(range(cfg.simulation.n_rounds), desc="simulate", disable=not progress, unit="round"):
        rec = step_round(world, streams, server)
        if drift:  # the round moved theta of exactly the users who clicked (at most one click each)
            theta_log.append((t + 1, rec.clicked_users, world.users.theta[rec.clicked_users]))  # fancy index: a copy
        parts.append(impression_rows(rec, next_slate, logger_id=server.active[-1] if switching else None))
        next_slate += len(rec.users)

    server.finish(cfg.simulation.n_rounds)
    active = server.active
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    interactions = pd.DataFrame({k: cols[k] for k in INTERACTION_SCHEMA.names})
    mode = cfg.logging.propensity_mode
    if mode == "logged":  # a company that logs its propensities
        interactions["pscore"] = cols["propensity_item"]
    sealed_cols = ["slate_id", "position", "true_reward"]
    if mode != "none":  # "none": nobody recorded them, not even in the truth OPE may read
        sealed_cols += ["propensity", "propensity_item"]
    sealed = pd.DataFrame({k: cols[k] for k in sealed_cols + (["logger_id"] if switching else [])})
    logger_rounds = None
    if switching:
        logger_rounds = pd.DataFrame({
            "round": np.arange(cfg.simulation.n_rounds + 1, dtype=np.int32),
            "logger_id": np.asarray(active, dtype=np.int8),
        })
    theta_updates = None
    if drift:
        d = world.users.theta.shape[1]
        upd = {
            "round": np.concatenate([np.full(len(u), r, np.int32) for r, u, _ in theta_log]),
            "user_id": np.concatenate([u for _, u, _ in theta_log]).astype(np.int32),
        }
        th = np.concatenate([x for *_, x in theta_log])
        theta_updates = pd.DataFrame({**upd, **{f"theta{j}": th[:, j] for j in range(d)}})
    items = pd.DataFrame({"item_id": np.arange(world.n_items, dtype=np.int32), "genre": world.catalog.genre.astype(np.int32)})
    for j in range(world.catalog.features.shape[1]):
        items[f"f{j}"] = world.catalog.features[:, j]
    manifest = {
        "scenario": to_dict(cfg),
        "seed": cfg.seed,
        "package_version": __version__,
        "n_users": world.n_users,
        "n_items": world.n_items,
        "rows": {"interactions": len(interactions), "items": len(items)},
        "clicks": int(interactions["click"].sum()),
    }
    return Simulation(PublicLogs(interactions, items, manifest), sealed, world, logger, logger_rounds, theta_updates)


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
    w, c = sim.world, sim.world.catalog
    df = pd.DataFrame(
        {
            "item_id": np.arange(w.n_items, dtype=np.int32),
            "genre": c.genre.astype(np.int32),
            "quality": c.quality,
            "hype": c.hype,
            "quality_hat": sim.logger.quality_hat,
            "popularity": w.state.popularity,
            "shock": w.state.shock,
            "trend": w.trend(),
        }
    )
    for j in range(c.vectors.shape[1]):
        df[f"v{j}"] = c.vectors[:, j]
    lg = sim.logger
    if lg.support_idx is not None:  # the logger's state at T, for GroundTruth.load
        supported = np.zeros(w.n_items, dtype=bool)
        supported[lg.support_idx] = True
        df["logger_supported"] = supported
    if lg.boost is not None:
        df["logger_boost"] = lg.boost
    return df


def _sealed_users(sim: Simulation) -> pd.DataFrame:
    w = sim.world
    cols: dict[str, np.ndarray] = {
        "user_id": np.arange(w.n_users, dtype=np.int32),
        "susceptibility": w.users.susceptibility,
        "activity": w.users.activity,
    }
    for j in range(w.users.theta.shape[1]):
        cols[f"theta{j}"] = w.users.theta[:, j]
    for j in range(sim.logger.theta_hat.shape[1]):
        cols[f"theta_hat{j}"] = sim.logger.theta_hat[:, j]
    for g in range(w.state.satiation.shape[1]):
        cols[f"satiation{g}"] = w.state.satiation[:, g]
    return pd.DataFrame(cols)


def _write_parquet(df: pd.DataFrame, path: Path, schema: pa.Schema | None = None) -> str:
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    # no pandas metadata: keeps files byte-identical across pandas versions and small
    table = table.replace_schema_metadata(None)
    pq.write_table(table, path, compression="zstd")
    return sha256_file(path)


def write_log_files(sim: Simulation, folder: str | Path) -> Path:
    """Write the log files into ``folder`` (made if missing; it should be empty): the building
    block of :func:`write_logs` and of the commands that write logs inside a larger output."""
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
    manifest = dict(sim.public.manifest, sha256=hashes)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return folder


def write_logs(sim: Simulation, out: str | Path, overwrite: bool = False) -> Path:
    """Write a log folder safely (``recsim_post.outputs.OutputFolder``): a non-empty ``out`` is
    refused unless ``overwrite``; the folder is built under a hidden temporary name and swapped in
    atomically, so a failure or a kill never leaves a half-written or half-deleted folder."""
    target = OutputFolder(out, "simulate", overwrite=overwrite, replace_own=False, what="output folder")
    with target as tmp:
        write_log_files(sim, tmp)
    return target.target
