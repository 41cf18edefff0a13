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


def _scenario(name_or_path: str, seed: int | None, sets: Sequence[str] | None = None):  # noqa: ANN202
    import dataclasses

    from .config import override
    from .presets import resolve
    from .world.config import load_scenario

    cfg = load_scenario(resolve("envs", name_or_path))
    cfg = override(cfg, sets) if sets else cfg
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
    scenario = _scenario(args.scenario, None, args.set)
    closed = _closed_loop_config(args, DEMO_ROLLOUT_FLAGS)  # checked before any work starts
    agents = _agents(args.agents or preset_names("agents"))
    if not args.agents:  # every preset, in the order of the method registry: BC first, RL last
        order = {name: i for i, name in enumerate(METHODS)}
        agents.sort(key=lambda a: (order[a.method.name], a.model.kind != "sasrec", a.name))
    out = Path(args.out)
    frames, rm_reports = [], []
    with _AtomicFolder(out, args.overwrite, marker=DEMO_MARKER) as tmp:
        for seed in seeds:
            result = run_story(scenario, agents, seed=seed, progress=not args.quiet, say=say, closed_loop=closed)
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
    if closed.rounds > 0:
        print(_closed_loop_legend(
            result.evaluator.closed_loop, "mean",
            "A small cohort keeps the demo fast (--rollout-users/-rounds/-seeds/-slate set it; 0 rounds: off).",
        ))
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

    scenario = _scenario(args.scenario, args.seed, args.set)
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


def _evaluation_inputs(folder: str, paths: Sequence[str]):  # noqa: ANN202
    """The public logs, the sealed truth and the saved policies (named by file stem) of a log
    folder, every policy checked against the logs' catalogue: what evaluate and rollout read."""
    from .evaluation.ground_truth import GroundTruth
    from .logs.public import read_public
    from .models.policy import SequencePolicy

    logs = read_public(folder)
    policies = {}
    for path in paths:
        name = Path(path).stem
        if name in policies:  # rows are named by stem; two of one name would be indistinguishable
            raise ConfigError(f"two policy files are named '{name}' ({path} and another): rename one")
        policies[name] = SequencePolicy.load(path)
        if policies[name].n_items != logs.n_items:
            raise ConfigError(
                f"policy '{name}' scores {policies[name].n_items} items but the logs have {logs.n_items}"
            )
    return logs, GroundTruth.load(folder), policies


def _json_records(frame) -> list[dict]:  # noqa: ANN001 - a DataFrame; NaN -> null
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in frame.to_dict(orient="records")
    ]


def _flag_error(err: ConfigError, flags: dict[str, str]) -> ConfigError:
    """A config error ("rounds = 0 is out of range ...") reworded to name the flag that set it."""
    field, rest = str(err).split(" ", 1) if " " in str(err) else (str(err), "")
    return ConfigError(f"--{flags[field]} {rest}" if field in flags else str(err))


def _closed_loop_config(args: argparse.Namespace, flags: dict[str, str]):  # noqa: ANN202
    """ClosedLoopConfig from the flags named by ``flags`` (field -> flag, e.g. rounds -> rollout-rounds).
    A flag left unset (None) keeps the config's default; users = 0 means every user."""
    from .evaluation.rollout import ClosedLoopConfig

    values = {field: getattr(args, flag.replace("-", "_")) for field, flag in flags.items()}
    values = {field: v for field, v in values.items() if v is not None}
    if "seeds" in values:
        values["seeds"] = tuple(values["seeds"])
    if "users" in values:
        if values["users"] < 0:
            raise ConfigError(f"--{flags['users']} = {values['users']} is out of range: must be >= 0 (0 = every user)")
        values["users"] = values["users"] or None
    try:
        return ClosedLoopConfig(**values)
    except ConfigError as err:
        raise _flag_error(err, flags) from None


DEMO_ROLLOUT_FLAGS = {f: f"rollout-{f}" for f in ("rounds", "seeds", "users", "slate")}
ROLLOUT_FLAGS = {"rounds": "rounds", "seeds": "seeds", "users": "users", "slate": "slate", "k": "slate-size"}


def _closed_loop_legend(loop, spread: str, extra: str = "") -> str:  # noqa: ANN001 - a rollout.ClosedLoop
    return (
        "closed_loop: mean over users of the summed true reward r* of their clicks while the policy serves"
        f"\n  them slates after the logs end, {spread} over the rollout seeds;\n  {loop.describe()}."
        "\n  References as defined: uniform shows k random items, the logging policy samples its slates as"
        "\n  in the logs, the oracle shows the k best items by the current r* (greedy and myopic: not an"
        "\n  upper bound closed-loop)." + (f"\n  {extra}" if extra else "")
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score saved policies against the sealed ground truth of a log folder."""
    from .evaluation.evaluate import Evaluator
    from .evaluation.report import format_table, results_frame

    logs, truth, policies = _evaluation_inputs(args.logs, args.policy)
    evaluator = Evaluator.prepare(logs, truth, k=args.k)
    rows = evaluator.reference_rows() + [evaluator.policy_row(n, p) for n, p in policies.items()]
    frame = results_frame(rows, k=args.k)
    if args.json:
        print(json.dumps({"logs": str(args.logs), "k": args.k, "results": _json_records(frame)}, indent=2))
    else:
        print(format_table(frame))
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    """Deploy saved policies for H more rounds after the logs end (closed loop), beside reference policies."""
    import pandas as pd

    from .evaluation.evaluate import reference_policies
    from .evaluation.report import aggregate_seeds, format_aggregate, format_table
    from .evaluation.rollout import ClosedLoop, world_at_end_of_logging
    from .logs.public import split_leave_last_out

    if args.rounds < 1:
        raise ConfigError(f"--rounds = {args.rounds} is out of range: must be >= 1")
    cfg = _closed_loop_config(args, ROLLOUT_FLAGS)
    say = _say(args.quiet)
    logs, truth, policies = _evaluation_inputs(args.logs, args.policy)
    say(f"re-simulating '{truth.scenario.name}' (seed {truth.scenario.seed}) to rebuild the world at T")
    sim = world_at_end_of_logging(args.logs, logs, truth)
    clicks = logs.clicks()
    try:
        loop = ClosedLoop(sim.world, clicks, cfg)
    except ConfigError as err:
        raise _flag_error(err, ROLLOUT_FLAGS) from None
    refs = reference_policies(logs.n_items, split_leave_last_out(clicks).train, sim.logger)
    runs = []
    for kind, group in (("reference", refs), ("trained", policies)):
        for name, policy in group.items():
            say(f"rolling '{name}' ({loop.describe()})")
            runs += [{"method": name, "kind": kind, **run} for run in loop.run(policy).runs]
    long = pd.DataFrame(runs).rename(columns={"value": "closed_loop", "value_per_round": "per_round"})
    long["seed"] = long["seed"].astype(int)
    shown = ["closed_loop", "per_round", "ctr", "reward_clicked", "reward_shown", "rating"]
    summary = aggregate_seeds(long[["method", "kind", "seed", *shown]])
    if args.json:
        print(json.dumps({
            "logs": str(args.logs), "rounds": cfg.rounds, "slate": cfg.slate, "k": loop.k,
            "users": loop.n_users, "seeds": list(cfg.seeds), "results": _json_records(summary),
            "runs": _json_records(long),
        }, indent=2))
        return 0
    n_rounds = truth.scenario.simulation.n_rounds
    print(f"\nrecsim-post rollout — {args.logs} (scenario '{truth.scenario.name}', seed {truth.scenario.seed}), "
          f"rounds {n_rounds} .. {n_rounds + cfg.rounds - 1} after {n_rounds} logged\n")
    print(format_table(format_aggregate(summary).drop(columns="n_seeds")))
    print("\n" + _closed_loop_legend(loop, "mean ± std")
          + "\nper_round: closed_loop / rounds; ctr: clicks per slate; reward_clicked / reward_shown: mean r*"
            "\n  of the clicked / shown items; rating: mean observed rating of the clicks (all mean ± std).")
    return 0


def cmd_ope(args: argparse.Namespace) -> int:
    """Off-policy estimates (IPS, SNIPS, DM, DR, Switch-DR) next to the exact value, with true and
    estimated propensities: on a log folder (--logs), or as a multi-seed study that simulates a
    scenario and trains recipes first (--scenario)."""
    q_models = ("item", "sequence") if args.q_model == "both" else (args.q_model,)
    if args.scenario is not None:
        return _ope_study(args, q_models)
    from .evaluation.ground_truth import GroundTruth
    from .evaluation.ope_report import UniformPolicy, format_report, format_summary, ope_report, summarise
    from .logs.public import read_public
    from .models.policy import SequencePolicy

    study_only = [f for f, v in (("--seeds", args.seeds), ("--agents", args.agents), ("--out", args.out),
                                 ("--set", args.set)) if v is not None]
    if study_only or args.overwrite:
        raise ConfigError(f"{(study_only or ['--overwrite'])[0]} belongs to a study (--scenario), not to --logs")
    logs = read_public(args.logs)
    policies = {"uniform": UniformPolicy(logs.n_items)}
    for path in args.policy or []:
        policy = SequencePolicy.load(path)
        if policy.n_items != logs.n_items:
            raise ConfigError(f"policy '{Path(path).stem}' scores {policy.n_items} items but the logs have {logs.n_items}")
        policies[Path(path).stem] = policy
    report = ope_report(
        logs, GroundTruth.load(args.logs), policies, n_bootstrap=args.bootstrap,
        seed=args.seed if args.seed is not None else 0, propensity=args.propensity, q_model=q_models,
        say=_say(args.quiet),
    )
    if args.json:
        records = _json_records(report)
        print(json.dumps({"logs": str(args.logs), "results": records, "notes": report.attrs.get("notes", [])},
                         indent=2, default=str))
    else:
        print(format_report(report))
        print()
        print(format_summary(summarise(report)))
    return 0


def _ope_study(args: argparse.Namespace, q_models: tuple[str, ...]) -> int:
    """``recsim-post ope --scenario``: simulate, train, and score every estimator over seeds."""
    from .evaluation.ope_study import format_study, ope_study, write_study

    if args.policy is not None:
        raise ConfigError("--policy belongs to --logs; a study (--scenario) trains its policies from --agents")
    if args.seed is not None:
        raise ConfigError("--seed belongs to --logs; a study (--scenario) takes --seeds")
    say = _say(args.quiet)
    start = time.perf_counter()
    scenario = _scenario(args.scenario, None, args.set)
    agents = _agents(args.agents or ["bc"])
    seeds = args.seeds if args.seeds is not None else [scenario.seed]
    out = Path(args.out or "recsim-post-ope")
    with _AtomicFolder(out, args.overwrite, marker=DEMO_MARKER) as tmp:
        study = ope_study(
            scenario, agents, seeds, n_bootstrap=args.bootstrap, propensity=args.propensity, q_models=q_models,
            progress=not args.quiet, say=say,
        )
        write_study(study, tmp)
    if args.json:
        records = _json_records(study.summary)
        print(json.dumps({"scenario": scenario.name, "seeds": study.seeds, "summary": records, "notes": study.notes},
                         indent=2, default=str))
    else:
        print(f"\nrecsim-post ope — scenario '{scenario.name}', recipes {', '.join(a.name for a in agents)} + uniform, "
              f"{args.propensity} propensities, {args.bootstrap} bootstrap resamples\n")
        print(format_study(study))
        print(f"\nwrote {out}/ (report.csv, summary.csv, summary_by_policy.csv, values.csv)  "
              f"in {time.perf_counter() - start:.0f} s")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Turn one scenario dial over a grid of values: every recipe's true value and its paired difference to a baseline."""
    from .evaluation.report import write_csv
    from .sweep import Dial, format_sweep, paired_differences, plot_sweep, run_sweep

    say = _say(args.quiet)
    start = time.perf_counter()
    scenario = _scenario(args.scenario, None, args.set)
    dial = Dial.parse(args.dial)
    dial.scenarios(scenario)  # every value is checked before the recipes are read and any work starts
    agents = _agents(args.agents)
    names = [a.name for a in agents]
    if args.baseline not in names:
        raise ConfigError(f"--baseline {args.baseline} must be one of the recipes swept ({', '.join(names)})")
    out = Path(args.out)
    with _AtomicFolder(out, args.overwrite, marker=DEMO_MARKER) as tmp:
        long = run_sweep(scenario, dial, agents, args.seeds, backend=args.backend, say=say)
        summary = paired_differences(long, baseline=args.baseline)
        write_csv(long, tmp / "sweep.csv")
        write_csv(summary, tmp / "sweep_summary.csv")
        plot_sweep(summary, dial.key, tmp / "sweep.png")
    print(f"\nrecsim-post sweep — scenario '{scenario.name}', {dial.key} over {len(dial.values)} values, "
          f"seeds {' '.join(map(str, args.seeds))}\n")
    print(format_sweep(summary, dial.key, baseline=args.baseline))
    print(f"\nwrote {out}/ (sweep.csv, sweep_summary.csv, sweep.png)  in {time.perf_counter() - start:.0f} s")
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

    def settings(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--set", nargs="+", default=None, metavar="SECTION.KEY=VALUE",
                        help="override scenario knobs, e.g. --set feedback.noise_std=1.0 logging.epsilon=0.2")

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
        closed = d.add_argument_group("closed loop", "the closed_loop column: every row deployed for a few "
                                      "rounds after the logs (unset flags keep ClosedLoopConfig's defaults)")
        closed.add_argument("--rollout-rounds", type=int, default=None, metavar="H",
                            help="rounds each policy is deployed for (default: 5; 0 leaves the column out)")
        closed.add_argument("--rollout-seeds", type=int, nargs="+", default=None, metavar="S",
                            help="rollout seeds, the column is their mean (default: 0 1)")
        closed.add_argument("--rollout-users", type=int, default=None, metavar="N",
                            help="cohort of N users drawn at random (default: 250; 0 = every user)")
        closed.add_argument("--rollout-slate", choices=["topk", "sample"], default=None,
                            help="trained policies and popularity show their top k, or sample k from their softmax (default: topk)")
        settings(d)
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
    settings(s)
    common(s)
    s.set_defaults(func=cmd_simulate)

    w = sub.add_parser("sweep", help=cmd_sweep.__doc__)
    w.add_argument("--dial", required=True, metavar="SECTION.KEY=V1,V2,...",
                   help="the scenario knob to turn and its values, e.g. feedback.noise_std=0,0.5,1,2")
    w.add_argument("--scenario", default="quickstart", help="preset name or TOML path (default: quickstart)")
    w.add_argument("--agents", nargs="+", default=["bc", "exp-rsft", "ipo"], help="recipes (default: bc exp-rsft ipo)")
    w.add_argument("--baseline", default="bc", help="recipe the paired differences are taken to (default: bc)")
    w.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per value (default: 0 1 2)")
    w.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: cells one after another; ray: cells as Ray tasks (pip install ray)")
    w.add_argument("--out", default="recsim-post-sweep", help="output folder (default: ./recsim-post-sweep)")
    w.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    settings(w)
    common(w)
    w.set_defaults(func=cmd_sweep)

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

    r = sub.add_parser("rollout", help=cmd_rollout.__doc__.splitlines()[0])
    r.add_argument("--logs", required=True, help="log folder written by 'simulate' or 'demo' (with sealed/)")
    r.add_argument("--policy", nargs="+", required=True, help="policy files written by 'train'")
    r.add_argument("--rounds", type=int, default=10, metavar="H", help="rounds each policy is deployed for (default: 10)")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="rollout seeds: mean ± std over them (default: 0 1 2)")
    r.add_argument("--users", type=int, default=0, metavar="N", help="cohort of N users drawn at random (default: 0 = every user)")
    r.add_argument("--slate", choices=["topk", "sample"], default="topk",
                   help="trained policies and popularity show their top k, or sample k from their softmax; the logger "
                        "always samples as in the logs, the oracle always shows its top k (default: topk)")
    r.add_argument("--slate-size", type=int, default=None, metavar="K", help="items per slate (default: the logging slate size)")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    common(r)
    r.set_defaults(func=cmd_rollout)

    o = sub.add_parser("ope", help=cmd_ope.__doc__.splitlines()[0])
    where = o.add_mutually_exclusive_group(required=True)
    where.add_argument("--logs", default=None, help="log folder written by 'simulate' (with sealed/)")
    where.add_argument("--scenario", default=None,
                       help="a study instead: simulate this preset / TOML per seed, train --agents, score them")
    o.add_argument("--policy", nargs="*", default=None, help="with --logs: policy files written by 'train' (uniform is always included)")
    o.add_argument("--agents", nargs="+", default=None, help="with --scenario: recipes to train and evaluate (default: bc)")
    o.add_argument("--seeds", type=int, nargs="+", default=None, help="with --scenario: seeds (default: the scenario's)")
    o.add_argument("--out", default=None, help="with --scenario: output folder (default: ./recsim-post-ope)")
    o.add_argument("--overwrite", action="store_true", help="with --scenario: replace a non-empty output folder")
    o.add_argument("--propensity", choices=["bc", "frequency"], default="bc",
                   help="how propensities are estimated from the public logs (default: bc)")
    o.add_argument("--q-model", choices=["item", "sequence", "both"], default="both",
                   help="reward model of DM / DR / Switch-DR: item means, a personalised sequence model, or both (default)")
    o.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per interval")
    o.add_argument("--seed", type=int, default=None, help="with --logs: seed of the bootstrap and the models (default: 0)")
    o.add_argument("--json", action="store_true", help="machine-readable output")
    settings(o)
    common(o)
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
