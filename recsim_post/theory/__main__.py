"""``python -m recsim_post.theory``: the tilt-bound study table (Theorems 4.3/4.4 of arXiv:2603.10279)."""

from __future__ import annotations

import argparse
import os
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recsim_post.theory", description=__doc__)
    p.add_argument("--scenario", default="quickstart", help="preset name or TOML path")
    p.add_argument("--n-items", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.5, 1.0])
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.05, 0.2, 1.0, 5.0])
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=None, help="default: the scenario's")
    p.add_argument("--users", type=int, default=None, help="evaluation users (the first n; default all)")
    p.add_argument("--out", default=None, help="also write the table to this CSV file")
    args = p.parse_args(argv)

    import pandas as pd

    from .study import tilt_bound_study

    start = time.perf_counter()
    table = tilt_bound_study(args.scenario, args.n_items, args.sigmas, args.lambdas, args.delta, args.seed, args.users)
    wall = time.perf_counter() - start
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_rows", 500):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nwall {wall:.1f} s, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.out:
        table.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
