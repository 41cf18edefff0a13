"""Evaluation at scale: the exact ground truth, the reward model's belief, evaluation histories and
the OPE bootstrap, each before (the code of c746fb3) and after the streaming rewrite, with peak RSS.

Rows (full size, the table of issue 12):

* ground truth: 10,000 users x 100,000 items, one policy; the uniform and oracle references plus
  the policy's sampled and top-10 value. The policy is a cheap float32 rank-2 factor model, so the
  row measures the ground truth rather than a policy's own scoring. old = the dense
  per-chunk computation the evaluator used (references(), then policy_value(), 2,048 users per
  chunk; kept as ``ground_truth.reference_sums``), timed on fewer users (``--old-users``) because
  at 10,000 users it needs ~7 GB; its seconds are scaled to all users.
* rm_value: what a 5-member reward ensemble on a SASRec backbone (d = 64, 2 layers, 50 positions)
  believes one policy earns, over 5,000 users, 3,000 items. old = every position scored, the last
  kept, 1,024 users per chunk (the evaluator's former ``_believed``) -- run here with 256 users per
  chunk to stay under 6 GB (the issue measured 9.4 GB with 1,024); new = ``Evaluator._exact`` with
  the belief (last position only, r* and the belief shared in one pass).
* histories: 10^7 clicks of 10^6 users, every user's last 200 clicks gathered in chunks of 2,048
  users, as a pass of the evaluator does per policy. old = the former ``logs.public.histories``
  (``histories_reference``: regroups every click per call), timed on ``--old-chunks`` chunks and scaled to all of them; new =
  one ``HistoryIndex.build`` and a gather per chunk.
* OPE: IPS, SNIPS and DR with 200 bootstrap resamples on 10^6 logged rounds (10 actions, so Open
  Bandit Pipeline's dense (n, A, 1) inputs fit too). old = the former multinomial bootstrap, one
  per estimator; new = one streamed Poisson bootstrap for the three, and the normal interval; obp =
  its ``estimate_policy_value`` + ``estimate_interval(n_bootstrap_samples=200)`` per estimator,
  when obp is installed.

Every (row, variant) runs in a fresh process, so its peak RSS (``ru_maxrss``, Python and the
libraries included) is its own. Timings are wall seconds of one run; compare old and new of the
same run, and read the load average printed before and after.

    python benchmarks/evaluation.py              # full sizes (several minutes; old rows scaled)
    python benchmarks/evaluation.py --small      # small sizes, about a minute
    python benchmarks/evaluation.py --rows ope histories --no-old
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FULL = dict(
    gt_users=10_000, gt_items=100_000, old_users=1_000,
    rm_users=5_000, rm_items=3_000, rm_old_chunk=256,
    clicks=10_000_000, click_users=1_000_000, old_chunks=3,
    ope_rounds=1_000_000,
)
SMALL = dict(
    gt_users=2_000, gt_items=20_000, old_users=500,
    rm_users=1_000, rm_items=1_000, rm_old_chunk=256,
    clicks=1_000_000, click_users=100_000, old_chunks=2,
    ope_rounds=100_000,
)
ROWS = ("ground-truth", "rm-value", "histories", "ope")
HISTORY_CHUNK = 2_048
N_BOOTSTRAP = 200


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# ground truth


def gt_world(n_users: int, n_items: int, d: int = 16, n_genres: int = 50, seed: int = 0):  # noqa: ANN201
    """A GroundTruth with random latents (no simulation needed to time the exact sums)."""
    from recsim_post.truth.ground_truth import GroundTruth
    from recsim_post.world.config import CatalogConfig, ScenarioConfig, UserConfig

    rng = np.random.default_rng(seed)
    cfg = ScenarioConfig(
        name="benchmark", catalog=CatalogConfig(n_items=n_items, n_genres=n_genres, latent_dim=d),
        users=UserConfig(n_users=n_users),
    )
    satiation = rng.exponential(size=(n_users, n_genres)) * (rng.random((n_users, n_genres)) < 0.3)
    return GroundTruth(
        cfg, rng.normal(size=(n_users, d)) / math.sqrt(d), satiation, rng.normal(size=(n_items, d)),
        rng.normal(size=n_items), rng.integers(0, n_genres, n_items), np.zeros(n_items), logger=None,
    )


class FactorPolicy:
    """:func:`factor_policy`'s scorer as a Policy (``logits(history, context)``, by ``context.users``),
    still callable on users directly."""

    def __init__(self, score, n_items: int) -> None:  # noqa: ANN001
        self.score, self.n_items = score, n_items

    def __call__(self, users: np.ndarray) -> np.ndarray:
        return self.score(users)

    def logits(self, history, context) -> np.ndarray:  # noqa: ANN001
        return self.score(np.asarray(context.users))


def factor_policy(n_users: int, n_items: int, seed: int = 1):  # noqa: ANN201
    """float32 logits a_u w_i + b_u w'_i + c_i: personal, cheap (about 1 ns per user and item, so the
    row times the ground truth rather than a policy's scoring) and elementwise, so a user's logits do
    not depend on how many users a call holds (a BLAS product may round differently)."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2, n_users)).astype(np.float32)
    w, w2, c = rng.normal(size=(3, n_items)).astype(np.float32)

    buffers: list[np.ndarray] = []

    def score(users: np.ndarray) -> np.ndarray:
        # two buffers reused from chunk to chunk (the caller is done with a chunk's logits before it
        # asks for the next): no fresh (users x items) allocation, whose page faults cost more than
        # the arithmetic on this VM
        if not buffers or len(buffers[0]) < len(users):
            buffers[:] = [np.empty((len(users), n_items), np.float32) for _ in range(2)]
        out, tmp = buffers[0][: len(users)], buffers[1][: len(users)]
        np.multiply.outer(a[users], w, out=out)
        out += np.multiply.outer(b[users], w2, out=tmp)
        out += c
        return out

    return FactorPolicy(score, n_items)


def run_ground_truth(variant: str, size: dict) -> dict:
    from recsim_post.truth.ground_truth import exact_sums, reference_sums

    n_users = size["old_users"] if variant == "old" else size["gt_users"]
    truth = gt_world(size["gt_users"], size["gt_items"])
    score = factor_policy(size["gt_users"], size["gt_items"])
    users = np.arange(n_users)
    start, cpu0 = time.perf_counter(), time.process_time()
    if variant == "old":
        uni, ora, ora_k, _, _ = reference_sums(truth, {}, users)  # references(), then policy_value()
        _, _, _, value, top = reference_sums(truth, {"pi": score}, users)
        v, vk = value["pi"], top["pi"]
    else:
        s = exact_sums(truth, users, {"pi": score})
        uni, ora, ora_k, v, vk = s.uniform, s.oracle, s.oracle_topk, s.value["pi"], s.topk["pi"]
    seconds = time.perf_counter() - start
    m = size["old_users"]  # the users both variants score: their values must agree
    check = np.concatenate([uni[:m], ora[:m], ora_k[:m], v[:m], vk[:m]])
    return dict(seconds=seconds, cpu=time.process_time() - cpu0, users=n_users, scale=size["gt_users"] / n_users, check=check.tolist(),
                size=f"{size['gt_users']:,} users x {size['gt_items']:,} items")


# ---------------------------------------------------------------------------------------------
# rm_value


def rm_setup(size: dict):  # noqa: ANN201
    import pandas as pd
    import torch

    from recsim_post.experiments.evaluate import Evaluator
    from recsim_post.truth.ground_truth import References
    from recsim_post.models.policy import build_model
    from recsim_post.models.sasrec import SASRecConfig
    from recsim_post.posttrain.reward_model import EnsembleHead, RewardEnsemble, item_vectors

    n_users, n_items = size["rm_users"], size["rm_items"]
    g = torch.Generator().manual_seed(0)
    backbone = build_model(SASRecConfig(dim=64, n_layers=2, n_heads=2, max_len=50), n_items, g)
    head = EnsembleHead(5, 64, n_items, init_std=0.3, init_bias=3.0, generator=g)
    with torch.no_grad():
        head.b.normal_(0.0, 0.5, generator=g)
    rm = RewardEnsemble(backbone, head, item_vectors(backbone), 50)
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 80, n_users)
    clicks = pd.DataFrame({
        "user_id": np.repeat(np.arange(n_users), counts),
        "item_id": rng.integers(0, n_items, counts.sum()),
    })
    truth = gt_world(n_users, n_items)
    ev = Evaluator(truth, clicks, np.arange(n_users), References(0.0, 1.0, 1.0, 10), np.zeros(0, np.int64),
                   np.zeros(0, np.int64), clicks, clicks, reward_model=rm)
    policy = factor_policy(n_users, n_items)
    return ev, rm, policy


def run_rm_value(variant: str, size: dict) -> dict:
    import torch

    from recsim_post.logs.public import histories

    ev, rm, policy = rm_setup(size)
    start, cpu0 = time.perf_counter(), time.process_time()
    if variant == "old":  # the evaluator's former _believed, verbatim but for the chunk size
        chunk, total = size["rm_old_chunk"], 0.0
        for lo in range(0, len(ev.users), chunk):
            users = ev.users[lo : lo + chunk]
            hist = histories(ev.clicks, users, 200)
            logits = policy(users).astype(np.float64)
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            with torch.no_grad():
                r_hat = rm.member_scores(torch.from_numpy(hist[:, -rm.max_len :]))[:, :, -1].mean(dim=0)
            total += float((p * r_hat.double().cpu().numpy()).sum())
        value = total / len(ev.users)
    else:
        value = ev._exact({"pi": policy}).believed("pi")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return dict(seconds=seconds, cpu=cpu, check=[value], size=f"{size['rm_users']:,} users x {size['rm_items']:,} items, E = 5")


# ---------------------------------------------------------------------------------------------
# histories


def click_frame(n_clicks: int, n_users: int, seed: int = 3):  # noqa: ANN201
    import pandas as pd

    rng = np.random.default_rng(seed)
    users = np.sort(rng.integers(0, n_users, n_clicks)).astype(np.int32)  # grouped: history order
    return pd.DataFrame({"user_id": users, "item_id": rng.integers(0, 100_000, n_clicks).astype(np.int32)})


def run_histories(variant: str, size: dict) -> dict:
    from recsim_post.logs.public import HistoryIndex, histories_reference

    clicks = click_frame(size["clicks"], size["click_users"])
    users = np.arange(size["click_users"])
    starts = range(0, len(users), HISTORY_CHUNK)
    start, cpu0 = time.perf_counter(), time.process_time()
    checksum = 0
    if variant == "old":
        done = starts[: size["old_chunks"]]
        for lo in done:
            checksum += int(histories_reference(clicks, users[lo : lo + HISTORY_CHUNK], 200).sum())
        seconds = time.perf_counter() - start
        scale = len(starts) / len(done)
        build = math.nan
    else:
        index = HistoryIndex.build(clicks)
        build = time.perf_counter() - start
        for i, lo in enumerate(starts):
            h = index.gather(users[lo : lo + HISTORY_CHUNK], 200)
            if i < size["old_chunks"]:
                checksum += int(h.sum())
        seconds, scale = time.perf_counter() - start, 1.0
    return dict(seconds=seconds, cpu=time.process_time() - cpu0, scale=scale, build=build, check=[checksum],
                size=f"{size['clicks']:,} clicks, {size['click_users']:,} users")


# ---------------------------------------------------------------------------------------------
# OPE


def ope_data(n: int, n_actions: int = 10, n_contexts: int = 1_000, seed: int = 4):  # noqa: ANN201
    """Logged rounds of a contextual bandit with a softmax logger, a sharper target and a noisy q^."""
    rng = np.random.default_rng(seed)

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    mu = rng.normal(size=(n_contexts, n_actions))
    pi0, pi = softmax(rng.normal(size=mu.shape)), softmax(2.0 * mu)
    x = rng.integers(0, n_contexts, n)
    a = np.minimum((rng.random(n)[:, None] > pi0[x].cumsum(axis=1)).sum(axis=1), n_actions - 1)
    r = mu[x, a] + rng.normal(size=n)
    q = mu + 0.3 * rng.normal(size=mu.shape)
    return x, a, r, pi0[x, a], pi, q


def old_interval(est, data, n_bootstrap: int, alpha: float, rng) -> tuple[float, float]:  # noqa: ANN001
    """ope._Estimator.interval as of c746fb3: a multinomial bootstrap of its own per estimator."""
    num, den = est._terms(data)
    n = len(num)
    per = max(1, 2**22 // n)
    stats = []
    for lo in range(0, int(n_bootstrap), per):
        idx = rng.integers(0, n, size=(min(per, int(n_bootstrap) - lo), n))
        s = num[idx].sum(axis=1)
        if den is None:
            stats.append(s / n)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                stats.append(s / den[idx].sum(axis=1))
    boot = np.concatenate(stats)
    boot = boot[np.isfinite(boot)]
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def run_ope(variant: str, size: dict) -> dict:
    from recsim_post.ope.estimators import DR, IPS, SNIPS, BanditData, intervals

    x, a, r, p0, pi, q = ope_data(size["ope_rounds"])
    n = len(a)
    rows = np.arange(n)
    out: dict = {"size": f"{n:,} rounds, 3 estimators, {N_BOOTSTRAP} resamples"}
    if variant == "obp":
        from obp.ope import DoublyRobust, InverseProbabilityWeighting, SelfNormalizedInverseProbabilityWeighting

        dist, qhat = pi[x][:, :, None], q[x][:, :, None]
        kw = dict(reward=r, action=a, position=np.zeros(n, np.int64), pscore=p0, action_dist=dist)
        start, cpu0 = time.perf_counter(), time.process_time()
        res = []
        for est, extra in ((InverseProbabilityWeighting(), {}), (SelfNormalizedInverseProbabilityWeighting(), {}),
                           (DoublyRobust(), {"estimated_rewards_by_reg_model": qhat})):
            v = est.estimate_policy_value(**kw, **extra)
            ci = est.estimate_interval(**kw, **extra, alpha=0.05, n_bootstrap_samples=N_BOOTSTRAP, random_state=0)
            res.append((v, ci["95.0% CI (lower)"], ci["95.0% CI (upper)"]))
        out.update(seconds=time.perf_counter() - start, cpu=time.process_time() - cpu0, check=[v for v, _, _ in res], cis=res)
        return out
    ests = [IPS(), SNIPS(), DR()]
    start, cpu0 = time.perf_counter(), time.process_time()
    if variant == "old":  # dense (n, A) inputs, one multinomial bootstrap per estimator
        d = BanditData(x, a, r, p0, pi_all=pi[x], q_hat_all=q[x])
        res = [(e.estimate(d), *old_interval(e, d, N_BOOTSTRAP, 0.05, np.random.default_rng(i))) for i, e in enumerate(ests)]
    else:  # per-row terms only; one set of resamples for the three
        d = BanditData(x, a, r, p0, pi[x, a], n_actions=pi.shape[1],
                       q_hat_pi=(pi * q).sum(axis=1)[x], q_hat_on_action=q[x, a])
        method = "normal" if variant == "new-normal" else "bootstrap"
        cis = intervals(ests, d, N_BOOTSTRAP, 0.05, np.random.default_rng(0), method)
        res = [(e.estimate(d), lo, hi) for e, (lo, hi) in zip(ests, cis)]
    out.update(seconds=time.perf_counter() - start, cpu=time.process_time() - cpu0, check=[v for v, _, _ in res], cis=res)
    del rows
    return out


RUNNERS = {"ground-truth": run_ground_truth, "rm-value": run_rm_value, "histories": run_histories, "ope": run_ope}


def variants(row: str, old: bool) -> list[str]:
    v = (["old"] if old else []) + ["new"]
    if row == "ope":
        v.append("new-normal")
        try:
            import obp  # noqa: F401

            v.append("obp")
        except ImportError:
            pass
    return v


TINY = dict(
    gt_users=50, gt_items=300, old_users=20, rm_users=40, rm_items=100, rm_old_chunk=16,
    clicks=2_000, click_users=300, old_chunks=1, ope_rounds=2_000,
)


def child(row: str, variant: str, size: dict) -> dict:
    RUNNERS[row](variant, TINY)  # warm-up: Numba kernels load from their cache, torch and BLAS start
    out = RUNNERS[row](variant, size)
    out.update(row=row, variant=variant, peak_rss_mb=peak_rss_mb())
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="small sizes: about a minute in all")
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="which rows to run")
    ap.add_argument("--no-old", action="store_true", help="skip the old implementations")
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        spec = json.loads(args._child)
        print(json.dumps(child(spec["row"], spec["variant"], spec["size"])))
        return

    size = SMALL if args.small else FULL
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{len(os.sched_getaffinity(0))} cores; sizes: {'--small' if args.small else 'full'}", flush=True)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = []
    for row in args.rows:
        for variant in variants(row, not args.no_old):
            spec = json.dumps({"row": row, "variant": variant, "size": size})
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", spec],
                                  capture_output=True, text=True, env=env, cwd=ROOT)
            if proc.returncode:
                print(f"  {row} / {variant} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"  {row:<13} {variant:<10} {r['seconds']:8.2f} s  {r['peak_rss_mb']:7.0f} MB", file=sys.stderr, flush=True)
    print()
    print(table(results))
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        print(json.dumps(results))


def table(results: list[dict]) -> str:
    head = f"{'work':<13} {'variant':<10} {'size':<44} {'seconds':>9} {'cpu s':>8} {'peak RSS MB':>11}  note"
    lines = [head, "-" * (len(head) + 30)]
    by = {(r["row"], r["variant"]): r for r in results}
    for r in results:
        secs = r["seconds"] * r.get("scale", 1.0)
        note = []
        if r.get("scale", 1.0) != 1.0:
            note.append(f"measured {r['seconds']:.2f} s on 1/{r['scale']:.0f} of the work, scaled")
        if r["row"] == "rm-value" and r["variant"] == "old":
            note.append("256 users per chunk (the old code: 1,024)")
        if r["row"] == "histories" and r["variant"] == "new":
            note.append(f"index built once in {r['build']:.2f} s")
        new = by.get((r["row"], "new"))
        if new is not None and r["variant"] != "new":
            a, b = np.asarray(r["check"]), np.asarray(new["check"])
            m = min(len(a), len(b))
            # relative to the largest magnitude checked: a per-user value near 0 has no relative digits
            rel = float(np.max(np.abs(a[:m] - b[:m])) / max(np.max(np.abs(b[:m])), 1e-300)) if m else math.nan
            note.append(f"vs new: max diff {rel:.1e} (relative)" + (" (point estimates)" if r["row"] == "ope" else ""))
            if r["variant"] != "new-normal" and r["variant"] in ("old", "obp") and r["row"] != "ope":
                note.append(f"new is {secs / new['seconds']:.1f}x faster")
        if r["row"] == "ope":
            note.append("CI " + ", ".join(f"[{lo:.4f}, {hi:.4f}]" for _, lo, hi in r["cis"]))
            if new is not None and r["variant"] in ("old", "obp"):
                note.append(f"new is {secs / new['seconds']:.1f}x faster")
        cpu = r["cpu"] * r.get("scale", 1.0)
        lines.append(f"{r['row']:<13} {r['variant']:<10} {r['size']:<44} {secs:>9.2f} {cpu:>8.2f} {r['peak_rss_mb']:>11.0f}  {'; '.join(note)}")
    lines += [
        "",
        "seconds: wall time of the row's work in its own process (scaled where noted); cpu s: its CPU time",
        "(all threads; cpu / seconds is how many cores the row really got on a shared machine); peak RSS: that",
        "process's ru_maxrss (Python, numpy, numba, torch where imported, the data and the work).",
        "old = the implementation of c746fb3 (kept or copied here); new = this code; obp = Open Bandit",
        "Pipeline's estimators on the same rows (its intervals: a multinomial bootstrap per estimator).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
