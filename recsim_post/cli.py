"""The ``recsim-post`` command line.

Bad input (an unknown key, a value out of range, a missing or corrupt log folder) prints one line
``recsim-post: error: ...`` and exits with status 2, without a traceback; outputs are written
atomically, so a failed command leaves nothing half-written behind.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import ConfigError, RecsimError

DEMO_MARKER = ".recsim-post-demo"


def _say(quiet: bool):  # noqa: ANN202
    def say(msg: str) -> None:
        if not quiet:
            print(f"· {msg}", file=sys.stderr, flush=True)

    return say


def _scenario(name_or_path: str, seed: int | None):  # noqa: ANN202
    import dataclasses

    from .presets import resolve
    from .world.config import load_scenario

    cfg = load_scenario(resolve("envs", name_or_path))
    return dataclasses.replace(cfg, seed=seed) if seed is not None else cfg


def _agents(names: Sequence[str]):  # noqa: ANN202
    from .posttrain.recipe import load_agent
    from .presets import resolve

    return [load_agent(resolve("agents", n)) for n in names]


class _AtomicFolder:
    """Build an output folder under a temporary sibling name; rename it into place on success."""

    def __init__(self, out: Path, overwrite: bool, marker: str | None = None) -> None:
        occupied = out.is_dir() and any(out.iterdir()) or (out.exists() and not out.is_dir())
        ours = marker is not None and (out / marker).is_file()
        if occupied and not (overwrite or ours):
            raise ConfigError(f"output folder {out} already exists and is not empty; pass --overwrite to replace it")
        self.out, self.marker = out, marker

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        self.tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.marker:
            (self.tmp / self.marker).write_text("written by recsim-post\n")
        if self.out.exists():
            shutil.rmtree(self.out) if self.out.is_dir() else self.out.unlink()
        self.tmp.rename(self.out)


# --------------------------------------------------------------------------------------------- #
# commands
# --------------------------------------------------------------------------------------------- #


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole story on one scenario: simulate, pre-train, post-train, score against the truth."""
    import pandas as pd

    from .evaluation.report import aggregate_seeds, format_aggregate, format_table, plot_results, write_csv
    from .logs.simulate import write_logs
    from .posttrain.recipe import METHODS
    from .presets import preset_names
    from .story import run_story

    say = _say(args.quiet)
    start = time.perf_counter()
    seeds = [args.seed] if args.seed is not None else (args.seeds or [None])
    scenario = _scenario(args.scenario, None)
    agents = _agents(args.agents or preset_names("agents"))
    if not args.agents:  # every preset, in the order of the method registry: BC first, RL last
        order = {name: i for i, name in enumerate(METHODS)}
        agents.sort(key=lambda a: (order[a.method.name], a.model.kind != "sasrec", a.name))
    out = Path(args.out)
    frames, rm_reports = [], []
    with _AtomicFolder(out, args.overwrite, marker=DEMO_MARKER) as tmp:
        for seed in seeds:
            result = run_story(scenario, agents, seed=seed, progress=not args.quiet, say=say)
            seed_used = result.simulation.world.cfg.seed
            frames.append(result.frame.assign(seed=seed_used))
            if result.evaluator.reward_model is not None:
                rm = result.evaluator.reward_model
                rm_reports.append(result.evaluator.reward_report(rm, rm.max_len).assign(seed=seed_used))
            sub = "" if len(seeds) == 1 else f"seed-{seed_used}"
            if not args.no_logs:
                write_logs(result.simulation, tmp / "logs" / sub)
            for name, policy in result.policies.items():
                policy.save(tmp / "policies" / sub / f"{name}.pt")
        if len(frames) == 1:
            table = frames[0].drop(columns="seed")
            write_csv(table, tmp / "results.csv")
            plot_results(table, tmp / "results.png")
        else:
            long = pd.concat(frames, ignore_index=True)
            summary = aggregate_seeds(long)
            write_csv(long, tmp / "results.csv")
            write_csv(summary, tmp / "results_summary.csv")
            plot_results(summary, tmp / "results.png")
            table = format_aggregate(summary).drop(columns="n_seeds")
        if rm_reports:
            write_csv(pd.concat(rm_reports, ignore_index=True), tmp / "reward_models.csv")
    which = f"seed {seeds[0] if seeds[0] is not None else scenario.seed}" if len(seeds) == 1 else \
        f"mean ± std over seeds {', '.join(map(str, seeds))}"
    print(f"\nrecsim-post demo — scenario '{scenario.name}', {which}\n")
    print(format_table(table))
    print(
        "\ntrue_value: exact expected true reward of a policy that samples one item;"
        "\ntrue_value_norm: 0 = uniform, 1 = oracle; top10_*: the policy's top 10 shown;"
        "\nndcg@10 / hr@10 / mrr: offline metrics on each user's held-out last click."
    )
    if rm_reports:
        from .evaluation.reward_report import format_reward_report

        print("\n" + format_reward_report(rm_reports[0].drop(columns="seed"))
              + ("" if len(rm_reports) == 1 else f"\n(seed {seeds[0]}; every seed in reward_models.csv)"))
        print("rm_value: what the reward model believes a policy earns (rating scale); a method that "
              "raises it without raising true_value is fooling its reward model.")
    print(f"\nwrote {out}/ (results.csv, results.png"
          + ("" if args.no_logs else ", logs/") + f", policies/)  in {time.perf_counter() - start:.0f} s")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Roll the scenario's logging policy and write a log folder."""
    from .logs.simulate import simulate, write_logs

    scenario = _scenario(args.scenario, args.seed)
    sim = simulate(scenario, progress=not args.quiet)
    write_logs(sim, args.out, overwrite=args.overwrite)
    m = sim.public.manifest
    print(f"wrote {args.out}: {m['rows']['interactions']:,} impressions, {m['clicks']:,} clicks, "
          f"{m['n_users']:,} users, {m['n_items']:,} items (scenario '{scenario.name}', seed {scenario.seed})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Pre-train pi_ref by BC on public logs and post-train it with a recipe."""
    from .logs.public import read_public, split_leave_last_out
    from .posttrain.recipe import post_train, pretrain
    from .seeding import SeedTree

    say = _say(args.quiet)
    logs = read_public(args.logs)
    (agent,) = _agents([args.agent])
    out = Path(args.out) if args.out else Path(args.logs) / "policies" / f"{agent.name}.pt"
    if out.exists() and not args.overwrite:
        raise ConfigError(f"policy file {out} already exists; pass --overwrite to replace it")
    seed = args.seed if args.seed is not None else int(logs.manifest.get("seed", 0))
    tree = SeedTree(seed).child("training")
    train = split_leave_last_out(logs.clicks()).train
    say(f"pre-training pi_ref on {len(train):,} clicks")
    ref = pretrain(train, logs.n_items, agent, tree, progress=not args.quiet)
    say(f"post-training with '{agent.method.name}'")
    policy = post_train(ref, train, logs.n_items, agent, tree, progress=not args.quiet)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        policy.save(tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score saved policies against the sealed ground truth of a log folder."""
    from .evaluation.evaluate import Evaluator
    from .evaluation.ground_truth import GroundTruth
    from .evaluation.report import format_table, results_frame
    from .logs.public import read_public
    from .models.policy import SequencePolicy

    logs = read_public(args.logs)
    policies = {Path(p).stem: SequencePolicy.load(p) for p in args.policy}
    for name, policy in policies.items():
        if policy.n_items != logs.n_items:
            raise ConfigError(
                f"policy '{name}' scores {policy.n_items} items but the logs have {logs.n_items}"
            )
    evaluator = Evaluator.prepare(logs, GroundTruth.load(args.logs), k=args.k)
    rows = evaluator.reference_rows() + [evaluator.policy_row(n, p) for n, p in policies.items()]
    frame = results_frame(rows, k=args.k)
    if args.json:
        records = [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in frame.to_dict(orient="records")
        ]
        print(json.dumps({"logs": str(args.logs), "k": args.k, "results": records}, indent=2))
    else:
        print(format_table(frame))
    return 0


def cmd_ope(args: argparse.Namespace) -> int:
    """Off-policy estimates (IPS, SNIPS, DM, DR, Switch-DR) next to the exact value, with true and
    estimated propensities."""
    from .evaluation.ground_truth import GroundTruth
    from .evaluation.ope_report import UniformPolicy, format_report, format_summary, ope_report, summarise
    from .logs.public import read_public
    from .models.policy import SequencePolicy

    logs = read_public(args.logs)
    policies = {"uniform": UniformPolicy(logs.n_items)}
    for path in args.policy or []:
        policy = SequencePolicy.load(path)
        if policy.n_items != logs.n_items:
            raise ConfigError(f"policy '{Path(path).stem}' scores {policy.n_items} items but the logs have {logs.n_items}")
        policies[Path(path).stem] = policy
    report = ope_report(
        logs, GroundTruth.load(args.logs), policies, n_bootstrap=args.bootstrap, seed=args.seed,
        propensity=args.propensity,
    )
    if args.json:
        records = [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in report.to_dict(orient="records")
        ]
        print(json.dumps({"logs": str(args.logs), "results": records}, indent=2, default=str))
    else:
        print(format_report(report))
        print()
        print(format_summary(summarise(report)))
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    """List the scenario presets and their Gymnasium ids."""
    from .envs.registration import env_id
    from .presets import preset_description, preset_dir, preset_names

    for name in preset_names("envs"):
        desc = preset_description(preset_dir("envs") / f"{name}.toml")
        print(f"{name:16s} {env_id(name):28s} {desc}")
    return 0


def cmd_agents(args: argparse.Namespace) -> int:
    """List the post-training recipes."""
    from .presets import preset_description, preset_dir, preset_names

    for name in preset_names("agents"):
        print(f"{name:16s} {preset_description(preset_dir('agents') / f'{name}.toml')}")
    return 0


# --------------------------------------------------------------------------------------------- #


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own convention)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="recsim-post", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--version", action="version", version=f"recsim-post {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--quiet", "-q", action="store_true", help="no progress output")

    def story_parser(name: str, help_text: str, out: str, seeds: list[int] | None) -> None:
        d = sub.add_parser(name, help=help_text)
        d.add_argument("--scenario", default="quickstart", help="preset name or TOML path (default: quickstart)")
        d.add_argument("--agents", nargs="+", default=None,
                       help="recipes to compare, names or TOML paths (default: every preset recipe)")
        seed = d.add_mutually_exclusive_group()
        seed.add_argument("--seed", type=int, default=None, help="overrides the scenario's seed")
        seed.add_argument("--seeds", type=int, nargs="+", default=seeds,
                          help="run every seed and report mean ± std" + (f" (default: {' '.join(map(str, seeds))})" if seeds else " (e.g. --seeds 0 1 2)"))
        d.add_argument("--out", default=out, help=f"output folder (default: ./{out})")
        d.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
        d.add_argument("--no-logs", action="store_true", help="do not keep the simulated logs")
        common(d)
        d.set_defaults(func=cmd_demo)

    story_parser("demo", cmd_demo.__doc__, "recsim-post-demo", None)
    story_parser("compare", "the demo over several seeds: every recipe, mean ± std of each column",
                 "recsim-post-compare", [0, 1, 2])

    s = sub.add_parser("simulate", help=cmd_simulate.__doc__)
    s.add_argument("--scenario", default="quickstart", help="preset name or TOML path")
    s.add_argument("--seed", type=int, default=None, help="overrides the scenario's seed")
    s.add_argument("--out", required=True, help="log folder to write")
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    common(s)
    s.set_defaults(func=cmd_simulate)

    t = sub.add_parser("train", help=cmd_train.__doc__)
    t.add_argument("--logs", required=True, help="log folder written by 'simulate'")
    t.add_argument("--agent", required=True, help="recipe name or TOML path")
    t.add_argument("--out", default=None, help="policy file (default: LOGS/policies/NAME.pt)")
    t.add_argument("--seed", type=int, default=None, help="training seed (default: the logs' seed)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing policy file")
    common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help=cmd_evaluate.__doc__)
    e.add_argument("--logs", required=True, help="log folder written by 'simulate' (with sealed/)")
    e.add_argument("--policy", nargs="+", required=True, help="policy files written by 'train'")
    e.add_argument("--k", type=int, default=10, help="cut-off of NDCG@k, HR@k and the top-k value")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.set_defaults(func=cmd_evaluate)

    o = sub.add_parser("ope", help=cmd_ope.__doc__.splitlines()[0])
    o.add_argument("--logs", required=True, help="log folder written by 'simulate' (with sealed/)")
    o.add_argument("--policy", nargs="*", default=None, help="policy files written by 'train' (uniform is always included)")
    o.add_argument("--propensity", choices=["bc", "frequency"], default="bc",
                   help="how propensities are estimated from the public logs (default: bc)")
    o.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per interval")
    o.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the propensity model")
    o.add_argument("--json", action="store_true", help="machine-readable output")
    o.set_defaults(func=cmd_ope)

    sub.add_parser("envs", help=cmd_envs.__doc__).set_defaults(func=cmd_envs)
    sub.add_parser("agents", help=cmd_agents.__doc__).set_defaults(func=cmd_agents)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recsim-post`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "k", 1) < 1:
        parser.error(f"--k = {args.k} is out of range: must be >= 1")
    if getattr(args, "bootstrap", 1) < 1:
        parser.error(f"--bootstrap = {args.bootstrap} is out of range: must be >= 1")
    try:
        return int(args.func(args) or 0)
    except RecsimError as err:
        print(f"recsim-post: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recsim-post: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
