"""Rounds per second of the native batched VectorEnv (one sub-env per user of one world, one
choice-kernel call per round for all the users who ask).

    python benchmarks/vector_env.py                      # 1, 64 and 4,096 users, slates of 1 and 10
    python benchmarks/vector_env.py --users 1 64 --steps 200

Random valid actions are drawn outside the timed loop; the table reports rounds (vector steps) per
second, requests served per second (the users who asked, summed over the rounds) and the
process's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np

from recsim_post.envs.vector_env import RecSimVectorEnv


def bench(users: int, slate: int, steps: int, scenario: str) -> tuple[float, float]:
    env = RecSimVectorEnv(num_envs=users, scenario=scenario, slate_size=slate, horizon=steps + 1)
    rng = np.random.default_rng(0)
    n_items = env.n_items
    # slates without duplicates: the `slate` smallest of fresh uniforms, per user and step
    actions = np.stack([np.argpartition(rng.random((users, n_items)), slate - 1, axis=1)[:, :slate].copy()
                        for _ in range(steps)])
    if slate == 1:
        actions = actions[:, :, 0]
    env.reset(seed=0)
    env.step(actions[0])  # warm-up (JIT cache load)
    served = 0
    start = time.perf_counter()
    for t in range(1, steps):
        served += int(env.step(actions[t])[4]["_true_reward"].sum())
    elapsed = time.perf_counter() - start
    return (steps - 1) / elapsed, served / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, nargs="+", default=[1, 64, 4096])
    p.add_argument("--slates", type=int, nargs="+", default=[1, 10])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--scenario", default="quickstart")
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} cores; scenario {args.scenario}; {args.steps} steps per row\n")
    print(f"{'users':>7} {'slate':>6} {'rounds/s':>15} {'requests/s':>14}")
    for users in args.users:
        for slate in args.slates:
            steps = max(20, min(args.steps, 2_000_000 // (users * slate)))
            vs, us = bench(users, slate, steps, args.scenario)
            print(f"{users:>7,} {slate:>6} {vs:>15,.0f} {us:>14,.0f}")
    print(f"\npeak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
