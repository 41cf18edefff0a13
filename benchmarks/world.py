"""The whole pipeline on one large world: simulate the logs, pre-train BC, score it exactly.

    python benchmarks/world.py --scenario million-users                 # 10^6 users x 2,000 items x 10 rounds
    python benchmarks/world.py --scenario million-users --set catalog.n_items=100000 simulation.n_rounds=3
    python benchmarks/world.py --quick                                   # a tiny world, a smoke run in seconds

Each stage is the command a user would run, in its own process, so its wall time and peak memory are
its own: ``recsim-post simulate`` (streamed Parquet), ``recsim-post train`` with a BC recipe for large
catalogues (agents/bc.toml with the sampled softmax, ``sparse_embeddings = true``, ``--epochs`` of
pre-training and no fine-tuning), and ``recsim-post evaluate`` (the exact ground truth of every
reference and of the trained policy, chunked over users: every user by default, ``--eval-users N``
for a random cohort). The answer to "the largest world that
generates, trains BC and scores exactly in 30 minutes" is the largest ``--set`` whose total stays
under 1,800 s. Peak memory: the stage's ``ru_maxrss`` (its process tree's largest).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stage(name: str, argv: list[str], env: dict[str, str]) -> dict:
    """Run one CLI stage in a child process; its wall time and peak RSS (ru_maxrss of the children
    waited for so far only grows, so each stage runs in a fresh grandchild via a tiny wrapper)."""
    wrapper = ("import resource, subprocess, sys, json; rc = subprocess.call(sys.argv[1:]); "
               "print(json.dumps({'rc': rc, 'maxrss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}), "
               "file=sys.stderr)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "recsim_post", *argv],
                         env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "{}"
    info = json.loads(last) if last.startswith("{") else {"rc": out.returncode, "maxrss": 0}
    if info["rc"] != 0:
        sys.exit(f"{name} failed (exit {info['rc']}): {(out.stderr.strip().splitlines() or ['?'])[-2][:200]}")
    return {"stage": name, "wall": wall, "peak_mb": info["maxrss"] / 1024, "stdout": out.stdout}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="million-users", help="preset name or TOML path")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="scenario overrides")
    ap.add_argument("--epochs", type=int, default=1, help="BC pre-training epochs (default 1)")
    ap.add_argument("--negatives", type=int, default=1024, help="sampled-softmax negatives per batch")
    ap.add_argument("--batch-size", type=int, default=128, help="training windows per step")
    ap.add_argument("--bucket", action="store_true",
                    help="length-bucketed batches ([pretrain] bucket_by_length = true): less padding computed")
    ap.add_argument("--eval-users", type=int, default=0, metavar="N",
                    help="users the exact ground truth is summed over (default 0: every user; evaluate's --users)")
    ap.add_argument("--out", default=None, help="where the logs and policy go (default: a temporary folder, removed)")
    ap.add_argument("--quick", action="store_true", help="a tiny world: the pipeline runs end to end in seconds")
    args = ap.parse_args(argv)

    from recsim_post.config import dumps_toml, to_dict
    from recsim_post.posttrain.recipe import load_agent
    from recsim_post.presets import resolve

    overrides = list(args.set)
    if args.quick:
        args.scenario = "quickstart"
        overrides = ["users.n_users=200", "simulation.n_rounds=5", "catalog.n_items=300", *overrides]
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="recsim-post-world-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    try:
        recipe = to_dict(load_agent(resolve("agents", "bc")))
        recipe["name"] = "bc-large"
        recipe["pretrain"].update(epochs=args.epochs, loss="sampled", negatives=args.negatives, sparse_embeddings=True,
                                  batch_size=args.batch_size, weight_decay=0.0, bucket_by_length=args.bucket)
        recipe["finetune"].update(epochs=0)
        agent = work / "bc-large.toml"
        agent.write_text(dumps_toml(recipe))
        logs, policy = work / "logs", work / "bc-large.pt"
        print(f"world: {args.scenario} {' '.join(overrides)}; BC: sampled softmax ({args.negatives} negatives), "
              f"sparse item embeddings, {args.epochs} epoch(s){', length-bucketed batches' if args.bucket else ''}; "
              "RECSIM_POST_THREADS="
              f"{os.environ.get('RECSIM_POST_THREADS', '(unset)')}; load average before: "
              + " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
        rows = [
            stage("simulate", ["simulate", "--scenario", args.scenario, "--out", str(logs), "-q",
                               *(["--set", *overrides] if overrides else [])], env),
            stage("train BC", ["train", "--logs", str(logs), "--agent", str(agent), "--out", str(policy), "-q",
                               "--no-cache"], env),
            stage("evaluate", ["evaluate", "--logs", str(logs), "--policy", str(policy), "--json",
                               "--users", str(args.eval_users)], env),
        ]
        manifest = json.loads((logs / "manifest.json").read_text())
        counts = manifest.get("counts") or manifest.get("rows") or {}
        print(f"\n{'stage':<10} {'wall s':>8} {'peak MB':>9}")
        for r in rows:
            print(f"{r['stage']:<10} {r['wall']:>8.1f} {r['peak_mb']:>9,.0f}")
        print(f"{'total':<10} {sum(r['wall'] for r in rows):>8.1f}")
        sc = manifest.get("scenario", {})
        print(f"\nusers {sc.get('users', {}).get('n_users')}, items {sc.get('catalog', {}).get('n_items')}, "
              f"rounds {sc.get('simulation', {}).get('n_rounds')}; rows {counts}")
        result = json.loads(rows[2]["stdout"])["results"]
        bc = next(r for r in result if r["method"] == "bc-large")
        print(f"bc-large: true_value_norm {bc['true_value_norm']:.3f} (exact over "
              f"{json.loads(rows[2]['stdout'])['users']:,} users)")
        print("load average after: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
