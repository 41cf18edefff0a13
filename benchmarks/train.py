"""BC training throughput: full softmax vs sampled softmax (logQ-corrected), with dense or sparse
item-embedding updates, over large catalogues.

    python benchmarks/train.py                        # 10^3, 10^4, 10^5 items, full and sampled, batch 128
    python benchmarks/train.py --large                # plus 10^6 items
    python benchmarks/train.py --quick                # a smoke run in seconds
    python benchmarks/train.py --device cuda --batch-size 512 --large   # on a GPU (bf16 autocast)

Each row runs in a fresh process (its peak memory is its own) and trains the agents/bc.toml model
(SASRec, dim 64, 2 layers, 2 heads, max_len 50) through the training loop itself (``fit`` with the
closure ``train_copy`` builds: the full softmax's logits + ``bc_loss``, or ``sampled_nll`` +
``bc_nll_loss``; ``sparse``: the same with ``sparse_rows``, i.e. ``sparse_embeddings = true``) on synthetic windows: random item ids, 50 real targets per window. One warm-up
``fit`` of two steps, then a timed ``fit`` of as many steps as fit in ``--seconds`` (at least
``--min-steps``). ``windows/s`` counts training windows (sequences of 50 clicks; the issue's
"examples"), ``targets/s`` the next-item targets in them (50 per window).

Peak memory: ``ru_maxrss`` of the row's process on CPU (Python, torch and the work), or
``torch.cuda.max_memory_allocated`` on CUDA. A full-softmax row whose logits alone (logits, their
log-softmax and their gradient: 3 x B x 50 x n_items float32) would pass ``--max-gb`` is skipped.
Torch's CPU threads: ``RECSIM_POST_THREADS`` if set, else torch's default (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

LENGTH = 50


def measure_row(n_items: int, loss: str, batch_size: int, negatives: int, seconds: float, min_steps: int,
                device: str) -> dict:
    """Train one configuration in this process; its throughput and peak memory as plain data."""
    import numpy as np
    import torch

    from recsim_post.models.device import pick_device
    from recsim_post.models.policy import build_model
    from recsim_post.models.sasrec import SASRecConfig
    from recsim_post.posttrain.bc import bc_loss, bc_nll_loss
    from recsim_post.posttrain.data import Windows
    from recsim_post.posttrain.loop import TrainConfig, fit, sampled_nll, sparse_rows, window_batches
    from recsim_post.seeding import SeedTree

    dev = pick_device(device)  # type: ignore[arg-type]
    seed = SeedTree(0)
    model = build_model(SASRecConfig(dim=64, n_layers=2, n_heads=2, max_len=LENGTH, dropout=0.1), n_items,
                        torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)

    def windows(n: int) -> Windows:
        items = rng.integers(0, n_items, (n, LENGTH + 1))
        return Windows(items[:, :-1].copy(), items[:, 1:].copy(), np.ones((n, LENGTH), np.float32),
                       np.ones((n, LENGTH), bool), np.arange(n))

    def closure(w: Windows):  # noqa: ANN202 - the loss closure train_copy would build
        if loss == "full":
            def full_loss(m, batch, run):  # noqa: ANN001, ANN202
                with run.autocast():
                    logits = m(batch.inputs, generator=run.dropout)
                return bc_loss(logits.float(), batch.targets, batch.mask)
            return full_loss
        cfg = TrainConfig(loss="sampled", negatives=negatives)
        return sampled_nll(lambda nll, batch: bc_nll_loss(nll, batch.mask), w, n_items, cfg, seed)

    # "sparse": the sampled softmax with sparse_embeddings (the table's rows under a lazy Adam)
    optim = sparse_rows(model) if loss == "sparse" else {}

    def run(n_steps: int) -> float:
        w = windows(n_steps * batch_size)
        start = time.perf_counter()
        fit(model, window_batches(w, batch_size), closure(w), epochs=1, lr=1e-3, seed=seed, grad_clip=1.0,
            device=device, progress=False, **optim)  # type: ignore[arg-type]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(2)  # warm-up: allocator, kernels, first-touch of the embedding
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # How many steps fit in the budget, from one timed step; then the timed run itself.
    per_step = run(1)
    steps = max(min_steps, int(seconds / max(per_step, 1e-6)))
    wall = run(steps)
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return dict(n_items=n_items, loss=loss, batch_size=batch_size, negatives=negatives if loss != "full" else 0,
                steps=steps, wall=wall, windows_per_s=steps * batch_size / wall,
                targets_per_s=steps * batch_size * LENGTH / wall, peak_mb=peak / 2**20, device=dev.type,
                threads=torch.get_num_threads(), cpu=os.cpu_count(),
                gpu=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "")


def table(rows: list[dict]) -> str:
    head = (f"{'n_items':>9} {'loss':<8} {'negatives':>9} {'batch':>5} {'steps':>5} {'windows/s':>10} "
            f"{'targets/s':>11} {'peak MB':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['n_items']:>9,} {r['loss']:<8} {'':>9} {r['batch_size']:>5} {'':>5} {r['skipped']}")
            continue
        neg = f"{r['negatives']:,}" if r["negatives"] else "-"
        lines.append(f"{r['n_items']:>9,} {r['loss']:<8} {neg:>9} {r['batch_size']:>5} {r['steps']:>5} "
                     f"{r['windows_per_s']:>10,.0f} {r['targets_per_s']:>11,.0f} {r['peak_mb']:>8,.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, nargs="+", default=[1_000, 10_000, 100_000], help="catalogue sizes")
    ap.add_argument("--large", action="store_true", help="add 10^6 items")
    ap.add_argument("--losses", nargs="+", default=["full", "sampled", "sparse"], choices=["full", "sampled", "sparse"],
                    help="full softmax; sampled softmax (logQ); sampled + sparse_embeddings (default: all three)")
    ap.add_argument("--batch-size", type=int, default=128, help="windows (of 50 clicks) per step")
    ap.add_argument("--negatives", type=int, default=1024, help="shared negatives per step (sampled rows)")
    ap.add_argument("--seconds", type=float, default=10.0, help="time budget of a row's timed run")
    ap.add_argument("--min-steps", type=int, default=3, help="timed steps at least, whatever the budget")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--max-gb", type=float, default=12.0, help="skip full-softmax rows whose logits need more")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--_row", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._row:  # child process: one row, printed as JSON
        print(json.dumps(measure_row(**json.loads(args._row))))
        return
    if args.quick:
        args.items, args.batch_size, args.negatives, args.seconds, args.min_steps = [1_000], 8, 64, 0.2, 1
    items = args.items + ([1_000_000] if args.large and 1_000_000 not in args.items else [])

    print(f"BC training, SASRec dim 64 x 2 layers, windows of {LENGTH}; device {args.device}; "
          f"RECSIM_POST_THREADS={os.environ.get('RECSIM_POST_THREADS', '(unset)')}; load average before: "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
    rows = []
    for n_items in items:
        for loss in args.losses:
            logits_gb = 3 * args.batch_size * LENGTH * n_items * 4 / 2**30
            if loss == "full" and logits_gb > args.max_gb:
                rows.append(dict(n_items=n_items, loss=loss, batch_size=args.batch_size,
                                 skipped=f"skipped: its logits alone need {logits_gb:.0f} GB (--max-gb {args.max_gb:g})"))
                continue
            spec = dict(n_items=n_items, loss=loss, batch_size=args.batch_size, negatives=args.negatives,
                        seconds=args.seconds, min_steps=args.min_steps, device=args.device)
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_row", json.dumps(spec)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                last = (out.stderr.strip().splitlines() or ["?"])[-1]
                rows.append(dict(n_items=n_items, loss=loss, batch_size=args.batch_size,
                                 skipped=f"failed (exit {out.returncode}): {last[:80]}"))
            else:
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  {n_items:>9,} items, {loss}: " + (r.get("skipped") or f"{r['steps']} steps in {r['wall']:.1f} s"),
                  file=sys.stderr, flush=True)
    done = [r for r in rows if "skipped" not in r]
    print()
    print(table(rows))
    if done:
        r = done[0]
        where = f"CUDA ({r['gpu']}, bf16 autocast)" if r["device"] == "cuda" else f"CPU, {r['threads']} torch threads"
        print(f"\n{where}, {r['cpu']} cores. peak MB: "
              + ("torch.cuda.max_memory_allocated" if r["device"] == "cuda" else "the row's ru_maxrss (whole process)"))
    print("load average after: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if len(done) < len(rows) and any(r["skipped"].startswith("failed") for r in rows if "skipped" in r):
        sys.exit(1)


if __name__ == "__main__":
    main()
