"""Rounds per second of the native batched VectorEnv (one sub-env per user of one world, one
choice-kernel call per round for all the users who ask).

    python benchmarks/vector_env.py                      # 1, 64 and 4,096 users, slates of 1 and 10
    python benchmarks/vector_env.py --users 1 64 --steps 200

Random valid actions are drawn outside the timed loop; the table reports rounds (vector steps) per
second, requests served per second (the users who asked, summed over the rounds) and each row's
peak RSS (every row runs in a fresh child process).

    python benchmarks/vector_env.py --users 4096 --slates 1 10 --scenario large-catalog --steps 20
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import time

import numpy as np

from recsim_post.envs.vector_env import RecSimVectorEnv


def random_slates(rng: np.random.Generator, users: int, n_items: int, k: int) -> np.ndarray:
    """(users, k) uniformly random slates of distinct items, in O(users * k) memory: rows with a
    repeated item are drawn again (rare when k is much smaller than the catalogue). The benchmark
    used to take the k smallest of (users, n_items) uniforms: 3.3 GB per step at 4,096 x 10^5, which
    was the "vector env" memory the issue measured, not the env's."""
    if 2 * k > n_items:  # a slate of most of a small catalogue: a permutation prefix per row
        return np.argsort(rng.random((users, n_items)), axis=1)[:, :k]
    slates = rng.integers(0, n_items, (users, k))
    while True:
        s = np.sort(slates, axis=1)
        again = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if not again.any():
            return slates
        slates[again] = rng.integers(0, n_items, (int(again.sum()), k))


def bench(users: int, slate: int, steps: int, scenario: str) -> tuple[float, float, float]:
    env = RecSimVectorEnv(num_envs=users, scenario=scenario, slate_size=slate, horizon=steps + 1)
    rng = np.random.default_rng(0)
    actions = np.stack([random_slates(rng, users, env.n_items, slate) for _ in range(steps)])
    if slate == 1:
        actions = actions[:, :, 0]
    env.reset(seed=0)
    env.step(actions[0])  # warm-up (JIT cache load)
    served = 0
    start = time.perf_counter()
    for t in range(1, steps):
        served += int(env.step(actions[t])[4]["_true_reward"].sum())
    elapsed = time.perf_counter() - start
    return (steps - 1) / elapsed, served / elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, nargs="+", default=[1, 64, 4096])
    p.add_argument("--slates", type=int, nargs="+", default=[1, 10])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--scenario", default="quickstart")
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} cores; scenario {args.scenario}; {args.steps} steps per row\n")
    print(f"{'users':>7} {'slate':>6} {'rounds/s':>15} {'requests/s':>14} {'peak RSS':>10}")
    spawn = multiprocessing.get_context("spawn")  # a fresh process per row: its own peak RSS
    for users in args.users:
        for slate in args.slates:
            steps = max(20, min(args.steps, 2_000_000 // (users * slate)))
            with spawn.Pool(1) as pool:
                vs, us, rss = pool.apply(bench, (users, slate, steps, args.scenario))
            print(f"{users:>7,} {slate:>6} {vs:>15,.0f} {us:>14,.0f} {rss:>7,.0f} MB")
    print(f"\nload average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
