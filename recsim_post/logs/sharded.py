"""``recsim-post simulate --backend ray``: the users split into shards, the same logs.

A scenario on per-user random streams (``simulation.streams = "per-user"``, world/keyed.py) draws
every per-user number of round t as a pure function of (seed, stream, t, user, draw), and every
per-user step of a round is computed row by row (the logger's slates, the choice, the signals,
satiation, drift, sessions). So the users can be cut into contiguous shards that each run their
own users' rounds; merged in user order, their rows are exactly the rows of the unsharded run.
:func:`stream_sharded_log_files` writes byte-identical folders for 1, 2, 4, ... shards, local or on
Ray, and byte-identical to ``stream_log_files`` of the same scenario.

Each round::

    driver   the logger's state of round t (suggestion campaign, active logger: sequential
             streams under logging/), the world's popularity and shocks
    shards   begin (activity, trend), serve (slates), respond (choice, signals), and the per-user
             end of the round (satiation, drift, sessions) for their users; return their rows
    driver   concatenates the rows in shard order (= user order), updates popularity from every
             slate and click (np.bincount over the gathered rows, the very expression of the
             unsharded run, so no float sum is reduced in another order), draws the shocks
             (sequential world/shocks), hands the shards round t + 1 and, while they play it,
             writes round t's rows through the same Parquet writers

Population-level randomness (shocks, campaigns, the switching chain) never leaves the driver.
The driver builds the world (World.create: the same initial state as an unsharded run) and hands
each shard a copy of its users' rows and of the catalogue; at the end it gathers the users' final
state (theta, satiation, sessions) for the sealed tables. A shard holds the catalogue: memory is
(shards + 1) catalogues, the per-user state once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..behavior.logging_policy import LoggerServer, TrendLogger
from ..truth.sharded import ray_module  # one place says how to install Ray (cli imports it from here too)
from ..errors import ConfigError
from ..outputs import OutputFolder
from ..world.config import ScenarioConfig
from ..world.engine import Responses, RoundRecord, Streams, begin_round, respond, return_uniforms
from ..world.keyed import UserStreams
from ..world.world import Catalog, Population, World, WorldState
from .simulate import Columns, LogRun, stream_log_files

BACKENDS = ("local", "ray")

PER_USER_HINT = 'set simulation.streams = "per-user" (e.g. --set simulation.streams=per-user)'


def check_shardable(cfg: ScenarioConfig) -> None:
    """Refuse a scenario on sequential streams: its users' numbers come from one sequence, so no
    shard can draw its own users' without the others (one line, names the fix)."""
    if cfg.simulation.streams != "per-user":
        raise ConfigError(f"sharded simulation needs per-user random streams: {PER_USER_HINT} "
                          f"(scenario '{cfg.name}' has simulation.streams = \"{cfg.simulation.streams}\")")


def shard_bounds(n_users: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous user ranges [lo, hi) of ``shards`` near-equal shards (no empty shard)."""
    s = max(1, min(int(shards), n_users))
    cuts = [n_users * i // s for i in range(s + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


@dataclasses.dataclass
class ShardRound:
    """A shard's part of a round: its requests (global user ids, ascending) and what came of them."""

    users: np.ndarray
    slates: np.ndarray
    choice: np.ndarray
    rstar: np.ndarray
    signals: dict[str, np.ndarray]
    extras: dict[str, np.ndarray]
    theta: np.ndarray | None  # with drift: theta of the users who clicked, after the round


class Shard:
    """Users ``lo .. hi - 1`` of a per-user-streams run: their state, and their part of each round.

    Plain Python: run in-process (:class:`LocalShards`) or as a Ray actor (:class:`RayShards`).
    Local user ids are ``0 .. hi - lo - 1``; every draw is keyed by the global id.
    """

    def __init__(self, cfg: ScenarioConfig, lo: int, catalog: Catalog, payload: dict[str, Any],
                 keys: dict[str, int], threads: int | None = None) -> None:
        if threads is not None:  # a Ray actor shares the machine with the other shards
            import numba

            numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        # own, writable copies: the driver's arrays (local) or Ray's read-only object-store views
        p = {k: (None if v is None else np.array(v)) for k, v in payload.items()}
        catalog = Catalog(**{f.name: np.array(getattr(catalog, f.name)) for f in dataclasses.fields(catalog)})
        self.lo = lo
        users = Population(p["theta"], p["susceptibility"], p["activity"], p["rating_bias"])
        state = WorldState(p["popularity"], p["shock"], p["satiation"], 0, p["arrival_round"], p["away"],
                           p["session_slates"])
        self.world = World(cfg, catalog, users, state)
        self.logger = TrendLogger(cfg.logging, p["theta_hat"], p["quality_hat"], p["vectors"], p["support_idx"])
        self.keyed = UserStreams(keys, lo)
        # only the keyed streams are drawn here: the sequential ones (shocks, ...) live on the driver
        self.streams = Streams(None, None, None, None, {}, self.keyed)  # type: ignore[arg-type]
        self.server = LoggerServer(self.logger, None, None, keyed=self.keyed)  # type: ignore[arg-type]

    def play(self, t: int, popularity: np.ndarray, shock: np.ndarray, active: int,
             boost: np.ndarray | None) -> ShardRound:
        """Round ``t`` for this shard's users, under the driver's population state."""
        world, st = self.world, self.world.state
        st.round, st.popularity, st.shock = t, popularity, shock
        self.logger.active, self.logger.boost = active, boost
        rnd = begin_round(world, self.streams)
        slates, extras = self.server.serve(rnd)
        resp = respond(world, rnd, slates)
        clicked = resp.clicked
        clicked_users = rnd.users[clicked]
        items = slates[clicked, resp.choice[clicked]].astype(np.int64)
        world.advance_users(clicked_users, items, rnd.users, return_uniforms(world, self.keyed))
        st.round = t + 1
        theta = world.users.theta[clicked_users] if world.cfg.dynamics.drift_rate > 0 else None
        return ShardRound(rnd.users + self.lo, slates, resp.choice, resp.rstar, resp.signals, dict(extras), theta)

    def user_state(self) -> dict[str, np.ndarray]:
        """The per-user state that moves (theta, satiation, sessions), for the sealed tables."""
        st = self.world.state
        return {"theta": self.world.users.theta, "satiation": st.satiation, "away": st.away,
                "session_slates": st.session_slates}


def shard_payload(world: World, logger: TrendLogger, lo: int, hi: int) -> dict[str, Any]:
    """What shard [lo, hi) starts from: its users' rows of the world and the logger's (the
    catalogue goes separately: Ray shares one copy of it between the shards)."""
    st, users = world.state, world.users
    rows = slice(lo, hi)
    return {
        "theta": users.theta[rows], "susceptibility": users.susceptibility[rows], "activity": users.activity[rows],
        "rating_bias": None if users.rating_bias is None else users.rating_bias[rows],
        "popularity": st.popularity, "shock": st.shock, "satiation": st.satiation[rows],
        "arrival_round": st.arrival_round[rows], "away": st.away[rows], "session_slates": st.session_slates[rows],
        "theta_hat": logger.theta_hat[rows], "quality_hat": logger.quality_hat, "vectors": logger.vectors,
        "support_idx": logger.support_idx,
    }


class ShardSet(Protocol):
    """The shards of a run, in user order. :meth:`start` hands them a round and returns at once
    where it can (Ray), :meth:`collect` waits for their parts of it."""

    bounds: list[tuple[int, int]]

    def start(self, t: int, popularity: np.ndarray, shock: np.ndarray, active: int,
              boost: np.ndarray | None) -> Any: ...

    def collect(self, handle: Any) -> list[ShardRound]: ...

    def user_state(self) -> list[dict[str, np.ndarray]]: ...

    def close(self) -> None: ...


class LocalShards:
    """Shards in this process, one after another: the reference the Ray path must match."""

    def __init__(self, cfg: ScenarioConfig, world: World, logger: TrendLogger, keys: dict[str, int],
                 shards: int) -> None:
        self.bounds = shard_bounds(world.n_users, shards)
        self.shards = [Shard(cfg, lo, world.catalog, shard_payload(world, logger, lo, hi), keys)
                       for lo, hi in self.bounds]

    def start(self, t: int, popularity: np.ndarray, shock: np.ndarray, active: int,
              boost: np.ndarray | None) -> list[ShardRound]:
        """Play the round now (copies: the driver moves its popularity and shocks on in place)."""
        return [s.play(t, popularity.copy(), shock.copy(), active, boost) for s in self.shards]

    def collect(self, handle: list[ShardRound]) -> list[ShardRound]:
        return handle

    def user_state(self) -> list[dict[str, np.ndarray]]:
        return [s.user_state() for s in self.shards]

    def close(self) -> None:
        self.shards = []



class RayShards:
    """Shards as Ray actors (``ray.init`` here unless Ray is already up; shut down by :meth:`close`
    only if started here). ``shards=None``: one shard per CPU Ray sees."""

    def __init__(self, cfg: ScenarioConfig, world: World, logger: TrendLogger, keys: dict[str, int],
                 shards: int | None) -> None:
        ray = self.ray = ray_module()
        self.started_here = not ray.is_initialized()
        if self.started_here:  # Ray's own INFO lines would break a quiet run's one line of output
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        try:
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
            self.bounds = shard_bounds(world.n_users, shards or cpus)
            threads = max(1, cpus // len(self.bounds))
            # num_cpus=0: more shards than CPUs still start (they then take turns on the cores)
            actor = ray.remote(num_cpus=0)(Shard)
            catalog = ray.put(world.catalog)  # a top-level argument: Ray resolves it to the object
            self.actors = [actor.remote(cfg, lo, catalog, shard_payload(world, logger, lo, hi), keys, threads)
                           for lo, hi in self.bounds]
        except BaseException:
            self.close()
            raise

    def start(self, t: int, popularity: np.ndarray, shock: np.ndarray, active: int,
              boost: np.ndarray | None) -> list[Any]:
        """The round on every actor, without waiting (object refs of their parts)."""
        ray = self.ray
        pop, sh = ray.put(popularity), ray.put(shock)  # copies, made now: once per round, shared by every shard
        return [a.play.remote(t, pop, sh, active, boost) for a in self.actors]

    def collect(self, handle: list[Any]) -> list[ShardRound]:
        return self.ray.get(handle)

    def user_state(self) -> list[dict[str, np.ndarray]]:
        return self.ray.get([a.user_state.remote() for a in self.actors])

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            self.ray.kill(a)
        self.actors = []
        if self.started_here and self.ray.is_initialized():
            self.ray.shutdown()


class ShardedLogRun(LogRun):
    """:class:`LogRun` with its users' rounds played by shards (per-user streams only): the same
    rows, the same final state, so :func:`stream_log_files` writes the same bytes."""

    def __init__(self, cfg: ScenarioConfig, shards: int | None = None, backend: str = "local",
                 streamed: bool = False) -> None:
        check_shardable(cfg)
        if backend not in BACKENDS:
            raise ConfigError(f"backend = '{backend}' is not allowed: must be one of {', '.join(BACKENDS)}")
        if shards is not None and shards < 1:
            raise ConfigError(f"shards = {shards} is out of range: must be >= 1")
        super().__init__(cfg, streamed=streamed)
        assert self.streams.keyed is not None  # per-user streams, checked above
        keys = self.streams.keyed.keys
        if backend == "ray":
            self.shards: ShardSet = RayShards(cfg, self.world, self.logger, keys, shards)
        else:
            self.shards = LocalShards(cfg, self.world, self.logger, keys, shards or 1)
        self._next: tuple[int, Any] | None = None  # the round handed to the shards and not yet collected

    def rounds(self, progress: bool = False, chunk_users: int | None = None) -> Iterator[tuple[Columns, Columns | None]]:
        """:meth:`LogRun.rounds`; at the end the shards' user state comes back into the world."""
        try:
            yield from super().rounds(progress, chunk_users)
            for (lo, hi), state in zip(self.shards.bounds, self.shards.user_state()):
                self.world.users.theta[lo:hi] = state["theta"]
                st = self.world.state
                st.satiation[lo:hi] = state["satiation"]
                st.away[lo:hi] = state["away"]
                st.session_slates[lo:hi] = state["session_slates"]
        finally:
            self.close()

    def _start(self, t: int) -> None:
        """Hand round ``t`` to the shards: the driver sets the logger's round first (campaigns and
        the switching chain: sequential streams, drawn here only, in round order)."""
        self.server.set_round(t)
        st = self.world.state
        self._next = (t, self.shards.start(t, st.popularity, st.shock, self.logger.active, self.logger.boost))

    def step(self, t: int) -> tuple[RoundRecord, np.ndarray | None]:
        """Round ``t``: the shards play it, the driver merges their rows in user order and moves
        the population state on, then hands them round t + 1 at once: on Ray they play it while
        the driver writes round t's rows (the next round needs only the population state)."""
        if self._next is None or self._next[0] != t:
            self._start(t)
        assert self._next is not None
        parts = self.shards.collect(self._next[1])
        self._next = None
        world = self.world
        rec = merge_rounds(t, parts)
        resp = rec.responses
        clicked = resp.clicked
        items = rec.slates[clicked, resp.choice[clicked]].astype(np.int64)
        world.advance_population(rec.slates, items, self.streams.shocks)
        world.state.round += 1
        if t + 1 < self.cfg.simulation.n_rounds:
            self._start(t + 1)
        theta = np.concatenate([p.theta for p in parts]) if self.drift else None
        return rec, theta

    def close(self) -> None:
        """Stop the shards (Ray actors, and Ray itself if started here)."""
        self.shards.close()


def merge_rounds(t: int, parts: Sequence[ShardRound]) -> RoundRecord:
    """The shards' parts of round ``t`` as one record, in shard order (= user order)."""
    def cat(get):  # noqa: ANN001, ANN202
        return np.concatenate([get(p) for p in parts])

    responses = Responses(cat(lambda p: p.choice), cat(lambda p: p.rstar),
                          {k: cat(lambda p, k=k: p.signals[k]) for k in parts[0].signals})
    extras = {k: cat(lambda p, k=k: p.extras[k]) for k in parts[0].extras}
    return RoundRecord(t, cat(lambda p: p.users).astype(np.int64), cat(lambda p: p.slates), responses, extras)


def stream_sharded_log_files(cfg: ScenarioConfig, folder: str | Path, shards: int | None = None,
                             backend: str = "local", progress: bool = False) -> dict[str, Any]:
    """:func:`stream_log_files` with the users in ``shards`` shards (``backend`` local: in this
    process; ray: Ray actors, ``shards=None`` one per CPU). Byte-identical files for any number of
    shards and to the unsharded run. Returns the manifest."""
    return stream_log_files(cfg, folder, progress=progress,
                            run=lambda: ShardedLogRun(cfg, shards, backend, streamed=True))


def stream_sharded_logs(cfg: ScenarioConfig, out: str | Path, shards: int | None = None, backend: str = "local",
                        overwrite: bool = False, progress: bool = False) -> dict[str, Any]:
    """:func:`stream_sharded_log_files` into a safely written folder (temporary name, then swapped
    in: a failure or a kill leaves nothing half-written)."""
    target = OutputFolder(out, "simulate", overwrite=overwrite, replace_own=False, what="output folder")
    with target as tmp:
        return stream_sharded_log_files(cfg, tmp, shards, backend, progress)


__all__ = [
    "BACKENDS", "LocalShards", "RayShards", "Shard", "ShardRound", "ShardedLogRun", "check_shardable",
    "merge_rounds", "shard_bounds", "stream_sharded_log_files", "stream_sharded_logs",
]
