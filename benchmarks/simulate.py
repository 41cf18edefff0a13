"""Simulated user-steps per second: the Numba kernels against the plain-numpy references.

One user-step is what ``recsim_post.logs.simulate`` does for one active user in one round, through
the same code (the round of ``recsim_post.world.engine`` served by the logging policy): the logging
policy's softmax over the whole catalogue, a slate of K items drawn without replacement
(Plackett-Luce, inverse CDF), the user's choice from the slate (MNL with a no-click option) and
every feedback signal (rating, watch). The random numbers are drawn inside the timed work, and the
logger serves the users in chunks of ``SERVE_CHUNK_USERS`` exactly as the simulator does, so memory
stays bounded.

Each (path, catalogue size) row runs in a fresh Python process, so that its peak RSS is its own.
The numpy reference is timed on fewer users (``--ref-users``) because it is much slower; its
throughput is per user either way. Afterwards the reference process also runs the Numba path on
the same users and the same random numbers and checks that the outputs agree.

    python benchmarks/simulate.py                      # 100,000 users, 1,000 and 10,000 items
    python benchmarks/simulate.py --quick              # a smoke run in a few seconds
    python benchmarks/simulate.py --items 1000 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc

import numpy as np

LATENT_DIM = 32
SLATE_SIZE = 10


def build(n_items: int, n_users: int):
    """World and logger of the benchmark scenario (default knobs otherwise)."""
    from recsim_post.behavior.logging_policy import TrendLogger
    from recsim_post.seeding import SeedTree
    from recsim_post.world.config import CatalogConfig, LoggingConfig, ScenarioConfig, UserConfig
    from recsim_post.world.world import World

    cfg = ScenarioConfig(
        name="benchmark",
        catalog=CatalogConfig(n_items=n_items, latent_dim=LATENT_DIM),
        users=UserConfig(n_users=n_users),
        logging=LoggingConfig(slate_size=SLATE_SIZE),
    )
    tree = SeedTree(cfg.seed)
    world = World.create(cfg, tree.child("world"))
    logger = TrendLogger.create(cfg.logging, world, tree.child("logging"))
    return world, logger


def user_steps(world, logger, users: np.ndarray, rng: np.random.Generator, chunk: int, reference: bool):
    """One round's per-user work for ``users``, through the world engine (world/engine.py): the
    logger serves the round (in chunks of ``chunk`` users), the users choose and record their
    signals. Every random number comes from ``rng``; returns the outputs."""
    from recsim_post.behavior.logging_policy import LoggerServer
    from recsim_post.world import feedback
    from recsim_post.world.engine import Round, respond

    n = len(users)
    rnd = Round(world.state.round, users, world.trend(), rng.random(n),
                feedback.draw({s: rng for s in feedback.SIGNAL_STREAMS}, n))
    slates, extras = LoggerServer(logger, None, rng, reference=reference, chunk=chunk)(world, rnd)
    resp = respond(world, rnd, slates, reference=reference)
    return (slates, extras["propensity"], extras["propensity_item"], resp.choice, resp.signals["rating"],
            resp.rstar, resp.signals["watch"])
def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_row(path: str, n_items: int, n_users: int, timed_users: int, chunk: int, repeats: int) -> dict:
    """Runs in its own process: build, warm up, time, trace memory, (reference) check agreement."""
    import numba

    reference = path == "numpy-ref"
    world, logger = build(n_items, n_users)
    users = np.arange(timed_users, dtype=np.int64)
    # warm-up: JIT-compile (or load from the cache) every kernel with the argument types used below
    user_steps(world, logger, users[: min(timed_users, 512)], np.random.default_rng(99), chunk, False)
    if reference:
        user_steps(world, logger, users[: min(timed_users, 64)], np.random.default_rng(99), chunk, True)
    rss_before = rss_now_mb()

    walls, cpus = [], []
    for rep in range(repeats):
        rng = np.random.default_rng(rep)
        t0, c0 = time.perf_counter(), time.process_time()
        user_steps(world, logger, users, rng, chunk, reference)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)

    # memory, in a separate untimed run: tracemalloc slows allocation down a little
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    user_steps(world, logger, users, np.random.default_rng(0), chunk, reference)
    traced_peak = (tracemalloc.get_traced_memory()[1] - base) / 2**20
    tracemalloc.stop()

    row = dict(
        path=path, n_items=n_items, n_users=n_users, timed_users=timed_users,
        wall=statistics.median(walls), cpu=statistics.median(cpus), walls=walls,
        traced_mb=traced_peak, rss_before_mb=rss_before,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        threads=numba.get_num_threads(),
    )
    if reference:  # same users, same random numbers: the Numba path must agree
        got = user_steps(world, logger, users, np.random.default_rng(1234), chunk, False)
        ref = user_steps(world, logger, users, np.random.default_rng(1234), chunk, True)
        names = ("slates", "propensity", "p_item", "choice", "rating", "true_reward", "watch")
        row["identical"] = [k for k, a, b in zip(names, got, ref) if np.array_equal(a, b, equal_nan=True)]
        row["differ"] = {
            k: float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))
            for k, a, b in zip(names, got, ref) if not np.array_equal(a, b, equal_nan=True)
        }
    return row


def machine_line() -> str:
    import numba

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(
            f"{i['internal_api']} {i['version']} ({i['num_threads']} threads)"
            for i in threadpool_info() if i["user_api"] == "blas"
        ) or "none loaded"
    except ImportError:
        blas = "unknown (threadpoolctl not installed)"
    return (
        f"machine: {cores} cores ({cpu}), Python {platform.python_version()}, numpy {np.__version__}, "
        f"numba {numba.__version__} ({numba.get_num_threads()} threads), BLAS: {blas}"
    )


def table(rows: list[dict], chunk: int) -> str:
    head = (
        f"{'path':<10} {'n_items':>7} {'users/batch':>11} {'timed users':>11} {'user-steps/s':>12} "
        f"{'s/batch':>8} {'cpu s/batch':>11} {'traced MB':>9} {'peak RSS MB':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        rate = r["timed_users"] / r["wall"]
        per_batch = r["n_users"] / rate  # seconds for the full batch (measured, or scaled per user)
        cpu_batch = r["cpu"] * r["n_users"] / r["timed_users"]
        star = "" if r["timed_users"] == r["n_users"] else "*"
        lines.append(
            f"{r['path']:<10} {r['n_items']:>7,} {r['n_users']:>11,} {r['timed_users']:>10,}{star or ' '} "
            f"{rate:>12,.0f} {per_batch:>8.3f} {cpu_batch:>11.3f} {r['traced_mb']:>9.1f} "
            f"{r['peak_rss_mb']:>11.0f}"
        )
    notes = [
        "",
        f"user-steps/s = timed users / median wall time of the repetitions; chunks of {chunk:,} users.",
        "* timed on fewer users; s/batch and cpu s/batch are scaled to the full batch per user.",
        "cpu s/batch: process CPU time (all threads); cpu/wall shows how many cores the run really got.",
        "traced MB: tracemalloc peak above the baseline during one batch (numpy allocations are traced;",
        "  arrays that Numba kernels allocate are not). peak RSS MB: the process high-water mark",
        "  (resource.getrusage ru_maxrss), including Python, Numba/LLVM and the world itself.",
    ]
    return "\n".join(lines + notes)


def main(argv: list[str] | None = None) -> None:
    from recsim_post.behavior.logging_policy import SERVE_CHUNK_USERS as CHUNK_USERS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=100_000, help="users per batch (and in the world)")
    ap.add_argument("--items", type=int, nargs="+", default=[1_000, 10_000], help="catalogue sizes")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions (the median is reported)")
    ap.add_argument("--ref-users", type=int, default=2_000, help="users the numpy reference is timed on")
    ap.add_argument("--chunk", type=int, default=CHUNK_USERS, help="users per kernel call (as simulate.py)")
    ap.add_argument("--no-reference", action="store_true", help="time the Numba path only")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--no-extras", action="store_true",
                    help="skip the vector-env and large-catalogue log-generation sections")
    ap.add_argument("--_row", help=argparse.SUPPRESS)
    ap.add_argument("--_loggen", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._row:  # child process: one row, printed as JSON
        spec = json.loads(args._row)
        print(json.dumps(measure_row(**spec)))
        return
    if args._loggen:  # child process: log generation for one preset, printed as JSON
        print(json.dumps(log_generation(args._loggen)))
        return

    if args.quick:
        args.users, args.items, args.repeats, args.ref_users = 4_000, [300, 1_000], 2, 300
    specs = []
    for n_items in args.items:
        specs.append(dict(path="numba", n_items=n_items, n_users=args.users, timed_users=args.users,
                          chunk=args.chunk, repeats=args.repeats))
        if not args.no_reference:
            specs.append(dict(path="numpy-ref", n_items=n_items, n_users=args.users,
                              timed_users=min(args.ref_users, args.users), chunk=args.chunk,
                              repeats=args.repeats))

    print(machine_line())
    print(f"scenario: latent_dim={LATENT_DIM}, slate_size={SLATE_SIZE}, load average before: "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
    rows = []
    for spec in specs:
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--_row", json.dumps(spec)],
            check=True, capture_output=True, text=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"  {r['path']:<10} {r['n_items']:>6,} items: "
              + ", ".join(f"{x:.3f}" for x in r["walls"]) + f" s for {r['timed_users']:,} users",
              file=sys.stderr, flush=True)
    print()
    print(table(rows, args.chunk))
    print("load average after: " + " ".join(f"{x:.2f}" for x in os.getloadavg())
          + f"; the kernels ran on {rows[0]['threads']} threads (numba.get_num_threads())")
    for r in rows:
        if r["path"] == "numpy-ref":
            differ = ", ".join(f"{k} (max rel. diff {v:.1e})" for k, v in r["differ"].items()) or "none"
            print(f"check at {r['n_items']:,} items, {r['timed_users']:,} users, same random numbers: "
                  f"identical: {', '.join(r['identical'])}; differ: {differ}")
    if args.no_extras:
        return

    print("\nvector env (benchmarks/vector_env.py): one kernel call per step for all users", flush=True)
    users = ["1", "64"] if args.quick else ["1", "64", "4096"]
    out = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "vector_env.py"),
         "--users", *users, "--slates", "1", "10"],
        check=True, capture_output=True, text=True,
    )
    print(out.stdout.rstrip())

    preset = "quickstart" if args.quick else "large-catalog"
    for mode in ("memory", "streamed"):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_loggen", f"{preset}:{mode}"],
                             check=True, capture_output=True, text=True)
        g = json.loads(out.stdout.strip().splitlines()[-1])
        how = ("simulate() then write_logs" if mode == "memory"
               else "stream_logs, as recsim-post simulate: each round written as it finishes")
        print(f"\nlog generation, preset '{preset}' ({g['n_items']:,} items, {g['n_users']:,} users, "
              f"{g['n_rounds']} rounds), {how}: {g['rows']:,} impressions in {g['seconds']:.1f} s = "
              f"{g['rows'] / g['seconds']:,.0f} impressions/s ({g['slates'] / g['seconds']:,.0f} user-steps/s), "
              f"write to Parquet {g['write_seconds']:.1f} s, peak RSS {g['peak_rss_mb']:.0f} MB")


def log_generation(spec: str) -> dict:
    """Simulate a preset's whole logging run and write it (in a child process: its own peak RSS).
    ``spec`` is ``PRESET:memory`` (every row in memory, then written; the write is timed apart) or
    ``PRESET:streamed`` (rounds written as they finish; the write is inside the simulation's time)."""
    import tempfile

    from recsim_post.logs.simulate import simulate, stream_logs, write_logs
    from recsim_post.presets import resolve
    from recsim_post.world.config import load_scenario

    preset, mode = spec.split(":")
    cfg = load_scenario(resolve("envs", preset))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        if mode == "streamed":
            manifest = stream_logs(cfg, os.path.join(tmp, "logs"))
            seconds, write_seconds = time.perf_counter() - start, 0.0
            rows = manifest["rows"]["interactions"]
            peak = peak_rss_mb()  # before reading a column back
            inter = pd_read(os.path.join(tmp, "logs", "interactions.parquet"), ["slate_id"])
        else:
            sim = simulate(cfg)
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            write_logs(sim, os.path.join(tmp, "logs"))
            write_seconds = time.perf_counter() - start
            inter = sim.public.interactions
            rows = len(inter)
            peak = peak_rss_mb()
    return dict(
        n_items=cfg.catalog.n_items, n_users=cfg.users.n_users, n_rounds=cfg.simulation.n_rounds,
        rows=rows, slates=int(inter["slate_id"].nunique()), seconds=seconds,
        write_seconds=write_seconds, peak_rss_mb=peak,
    )


def peak_rss_mb() -> float:
    """This process's peak resident set so far (ru_maxrss)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pd_read(path: str, columns: list[str]):  # noqa: ANN201 - a DataFrame
    import pandas as pd

    return pd.read_parquet(path, columns=columns)


if __name__ == "__main__":
    main()
