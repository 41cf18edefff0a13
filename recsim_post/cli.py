"""The recsim-post command line: simulate worlds, post-train policies on their logs, and score them
against the ground truth.

Bad input (an unknown key, a value out of range, a missing or corrupt log folder, an output that
must not be written) prints one line "recsim-post: error: ..." and exits with status 2, without a
traceback; SIGINT and SIGTERM stop a run cleanly (exit 130 / 143). Outputs go through
recsim_post.outputs: checked before the work, locked against a second writer, built under a hidden
temporary name and swapped in atomically; long runs (compare, sweep, the OPE study) write each
finished cell at once and resume when rerun.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import ConfigError, RecsimError
from .signals import REWARDS

SUMMARY = (
    "Simulated worlds in which post-training of generative recommenders is scored against the ground truth."
)


class Terminated(BaseException):
    """SIGTERM (what `timeout`, schedulers and `kill` send), raised where the run is, so that every
    output's clean-up runs as it does for Ctrl-C."""


def _say(quiet: bool):  # noqa: ANN202
    def say(msg: str) -> None:
        if not quiet:
            print(f"· {msg}", file=sys.stderr, flush=True)

    return say


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: a redirected stderr gets the one-line steps, not thousands
    of bar updates."""
    return not args.quiet and sys.stderr.isatty()


def _scenario(name_or_path: str, seed: int | None, sets: Sequence[str] | None = None,
              streamed: bool = False):  # noqa: ANN202
    """The scenario of a preset name or TOML path, with --set overrides (recorded in its name, so
    the header, the manifest and every table say which world this is) and --seed. ``streamed``:
    the run writes its logs round by round (simulate), so its rows need not fit in memory."""
    import dataclasses

    from .config import override
    from .presets import resolve
    from .world.config import load_scenario

    from .world.config import check_memory

    cfg = load_scenario(resolve("envs", name_or_path))
    if sets:
        cfg = override(cfg, sets)
        cfg = dataclasses.replace(cfg, name=f"{cfg.name}[{','.join(s.strip() for s in sets)}]")
    cfg = dataclasses.replace(cfg, seed=seed) if seed is not None else cfg
    check_memory(cfg, streamed=streamed)  # a world that cannot fit is refused before anything else is loaded
    return cfg


def _agents(names: Sequence[str]):  # noqa: ANN202
    from .presets import resolve

    paths = [resolve("agents", n) for n in names]  # unknown names fail before torch is imported
    from .posttrain.recipe import load_agent

    agents = [load_agent(p) for p in paths]
    seen: dict[str, str] = {}
    for n, a in zip(names, agents):
        if a.name in seen:
            raise ConfigError(f"recipes {seen[a.name]} and {n} are both named '{a.name}': every recipe needs its own name")
        seen[a.name] = n
    return agents


DEMO_TOKEN_RECIPES = ("sft-token", "gflowgr-tb", "gflowgr-db")
"""The token-level recipes of the default demo: token SFT (their π_ref's recipe) and GFlowGR; the
other token recipes (exp-rsft-token, asft-token, dpo-token, ipo-token) run when named."""


def _story_agents(names: Sequence[str] | None):  # noqa: ANN202
    """--agents, or every item-level preset in the order of the method registry (BC first, RL
    last) followed by :data:`DEMO_TOKEN_RECIPES`; the other token recipes run when named."""
    from .presets import preset_names

    agents = _agents(names or preset_names("agents"))
    from .posttrain.recipe import METHODS

    if not names:
        agents = [a for a in agents if a.generate == "item" or a.name in DEMO_TOKEN_RECIPES]
        order = {name: i for i, name in enumerate(METHODS)}
        agents.sort(key=lambda a: (a.generate != "item", DEMO_TOKEN_RECIPES.index(a.name) if a.generate != "item" else 0,
                                   order[a.method.name], a.model.kind != "sasrec", a.name))
    return agents


def _check_out(path: str, what: str = "--out") -> None:
    """The cheap part of an output's checks (a path that must never be written), done before the
    slow validation (recipes import torch); the full check, with the lock, comes right after."""
    from .outputs import resolve_output

    resolve_output(path, what)


def _positive_int(text: str) -> int:
    """argparse type of a count flag (--shards): a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is out of range: must be >= 1")
    return value


def _seed_arg(text: str) -> int:
    """argparse type of every seed flag: a whole number >= 0 (numpy's SeedSequence needs one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    from .world.config import SEED_MAX

    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value} is out of range: a seed must be >= 0 and <= {SEED_MAX}")
    return value


# --------------------------------------------------------------------------------------------- #
# commands
# --------------------------------------------------------------------------------------------- #


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole story on one scenario: simulate, pre-train, post-train, score against the truth."""
    say = _say(args.quiet)
    start = time.perf_counter()
    command = args.command
    scenario = _scenario(args.scenario, None, args.set)
    _check_out(args.out)
    seeds = [args.seed] if args.seed is not None else (args.seeds or [scenario.seed])
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {' '.join(map(str, seeds))} repeats a seed")
    if args.agents:  # a misspelt recipe name fails before the slower checks below
        from .presets import resolve

        for name in args.agents:
            resolve("agents", name)
    closed = _closed_loop_config(args, DEMO_ROLLOUT_FLAGS)  # checked before any work starts
    agents = _story_agents(args.agents)
    if len(seeds) == 1:
        run = _demo_one(args, scenario, agents, seeds[0], closed, say)
    else:
        run = _demo_seeds(args, scenario, agents, seeds, closed, say)
    table, rm_report, loop_text, wrote = run
    which = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± std over seeds {', '.join(map(str, seeds))}"
    print(f"\nrecsim-post {command} — scenario '{scenario.name}', {which}\n")
    from .experiments.report import SHARPNESS_LEGEND, format_table, split_for_print

    main, sharp = split_for_print(table)
    print(format_table(main))
    print(
        "\ntrue_value: exact expected true reward of a policy that samples one item;"
        "\ntrue_value_norm: 0 = uniform, 1 = oracle; top10_*: the policy's top 10 shown;"
        "\nndcg@5 / ndcg@10 / hr@10 / mrr: offline metrics on each user's held-out last click."
    )
    if sharp is not None:
        print("\nsharpness is not skill: the same policies compared at equal spread\n")
        print(format_table(sharp))
        print("\n" + SHARPNESS_LEGEND)
    if closed.rounds > 0 and loop_text:
        print(_closed_loop_legend(
            loop_text, "mean",
            "A small cohort keeps the demo fast (--rollout-users/-rounds/-seeds/-slate set it; 0 rounds: off).",
        ))
    if rm_report is not None:
        from .metrics.reward_report import format_reward_report

        print("\n" + format_reward_report(rm_report.drop(columns="seed"))
              + ("" if len(seeds) == 1 else f"\n(seed {seeds[0]}; every seed in reward_models.csv)"))
        print("rm_value: what the reward model believes a policy earns (rating scale); a method that "
              "raises it without raising true_value is fooling its reward model.")
    print(f"\nwrote {args.out}/ ({wrote})  in {time.perf_counter() - start:.0f} s")
    return 0


def _write_story(result, folder: Path, keep_logs: bool) -> None:  # noqa: ANN001 - a story.StoryResult
    """A story's logs (unless --no-logs) and trained policies under ``folder``."""
    from .logs.simulate import write_log_files

    if keep_logs:
        write_log_files(result.simulation, folder / "logs")
    for name, policy in result.policies.items():
        policy.save(folder / "policies" / f"{name}.pt")


def _story_outputs(result):  # noqa: ANN001, ANN202 - a story.StoryResult -> (frame, rm report or None, legend)
    seed = result.simulation.world.cfg.seed
    rm_report = None
    if result.evaluator.reward_model is not None:
        rm = result.evaluator.reward_model
        rm_report = result.evaluator.reward_report(rm, rm.max_len).assign(seed=seed)
    loop = result.evaluator.closed_loop
    return result.frame.assign(seed=seed), rm_report, (loop.describe() if loop is not None else "")


def _demo_one(args, scenario, agents, seed, closed, say):  # noqa: ANN001, ANN202
    """One seed: the folder is built whole and swapped in (logs/, policies/ at the top)."""
    from .outputs import OutputFolder

    out = OutputFolder(args.out, args.command, overwrite=args.overwrite, say=say)  # refuses before the work
    from .experiments.report import plot_results, write_csv
    from .experiments.story import run_story

    with out as tmp:
        result = run_story(scenario, agents, seed=seed, progress=_progress(args), say=say, closed_loop=closed)
        frame, rm_report, loop_text = _story_outputs(result)
        _write_story(result, tmp, not args.no_logs)
        table = frame.drop(columns="seed")
        write_csv(table, tmp / "results.csv")
        plot_results(table, tmp / "results.png")
        if rm_report is not None:
            write_csv(rm_report, tmp / "reward_models.csv")
    wrote = "results.csv, results.png" + ("" if args.no_logs else ", logs/") + ", policies/"
    return table, rm_report, loop_text, wrote


def _demo_seeds(args, scenario, agents, seeds, closed, say):  # noqa: ANN001, ANN202
    """Several seeds: a resumable workspace, one folder per finished seed (seed-N/ with logs/,
    policies/ and its tables), the tables over seeds at the top."""
    from .config import to_dict
    from .outputs import Workspace, cell_key

    spec = {"scenario": to_dict(scenario), "agents": [to_dict(a) for a in agents],
            "closed_loop": to_dict(closed), "logs": not args.no_logs}
    cells = {f"seed-{s}": cell_key({**spec, "seed": s}) for s in seeds}
    with Workspace(args.out, args.command, cells, overwrite=args.overwrite, say=say) as ws:
        import pandas as pd

        from .experiments.report import aggregate_seeds, format_aggregate, plot_results, write_csv
        from .experiments.story import run_story

        for s in seeds:
            name = f"seed-{s}"
            if ws.done(name):
                continue
            result = run_story(scenario, agents, seed=s, progress=_progress(args), say=say, closed_loop=closed)
            frame, rm_report, loop_text = _story_outputs(result)
            with ws.cell(name, {"closed_loop": loop_text}) as tmp:
                _write_story(result, tmp, not args.no_logs)
                frame.to_parquet(tmp / "results.parquet")
                write_csv(frame, tmp / "results.csv")
                if rm_report is not None:
                    rm_report.to_parquet(tmp / "reward_models.parquet")
            say(f"seed {s} finished: {args.out}/{name}/")
        long = pd.concat([pd.read_parquet(ws.path(f"seed-{s}") / "results.parquet") for s in seeds],
                         ignore_index=True)
        rms = [ws.path(f"seed-{s}") / "reward_models.parquet" for s in seeds]
        rm_all = pd.concat([pd.read_parquet(p) for p in rms], ignore_index=True) if all(p.is_file() for p in rms) else None
        summary = aggregate_seeds(long)
        ws.write("results.csv", lambda path: write_csv(long, path))
        ws.write("results_summary.csv", lambda path: write_csv(summary, path))
        ws.write("results.png", lambda path: plot_results(summary, path))
        if rm_all is not None:
            ws.write("reward_models.csv", lambda path: write_csv(rm_all, path))
        ws.finish()
        loop_text = ws.info(f"seed-{seeds[-1]}").get("closed_loop", "")
    rm_first = rm_all[rm_all["seed"] == seeds[0]] if rm_all is not None else None
    wrote = "results.csv, results_summary.csv, results.png, " + ", ".join(f"seed-{s}/" for s in seeds)
    return format_aggregate(summary).drop(columns="n_seeds"), rm_first, loop_text, wrote


def cmd_simulate(args: argparse.Namespace) -> int:
    """Roll the scenario's logging policy and write a log folder (--backend ray: the users in
    shards on Ray actors, for scenarios on per-user random streams; the same bytes as local)."""
    from .outputs import OutputFolder

    if args.shards is not None and args.backend != "ray":
        raise ConfigError("--shards belongs to --backend ray")
    scenario = _scenario(args.scenario, args.seed, args.set, streamed=True)
    if args.backend == "ray":
        from .logs.sharded import check_shardable, ray_module

        check_shardable(scenario)  # before Ray or the output folder: a wrong scenario costs nothing
        ray_module()
    out = OutputFolder(args.out, "simulate", overwrite=args.overwrite, replace_own=False,
                       say=_say(args.quiet))  # refuses before the simulation runs
    from .logs.simulate import stream_log_files

    with out as tmp:  # each round goes to disk as it finishes: memory is flat in the rounds
        if args.backend == "ray":
            from .logs.sharded import stream_sharded_log_files

            m = stream_sharded_log_files(scenario, tmp, args.shards, "ray", progress=_progress(args))
        else:
            m = stream_log_files(scenario, tmp, progress=_progress(args))
    print(f"wrote {args.out}: {m['rows']['interactions']:,} impressions, {m['clicks']:,} clicks, "
          f"{m['n_users']:,} users, {m['n_items']:,} items (scenario '{scenario.name}', seed {scenario.seed})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Pre-train pi_ref by BC on public logs and post-train it with one recipe or several (--agent a b
    c): recipes that share [model] and [pretrain] share one pi_ref and those that need a reward model
    share one ensemble. Each pi_ref is kept in LOGS/cache/ and reused by later calls on the same logs
    with the same settings, code and seed (--no-cache neither reads nor writes it; delete the folder
    to clear it)."""
    import contextlib

    from .logs.public import read_public, split_leave_last_out
    from .outputs import OutputFile

    say = _say(args.quiet)
    names = list(args.agent)
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"--agent names {name} twice: give each recipe once")
    several = len(names) > 1
    if args.out:
        _check_out(args.out)
        if several:
            _check_out_folder(args.out)
    agents = _agents(names)
    from .posttrain.recipe import needs_impressions

    # only GFlowGR reads the clicks' slates; every other method sees the clicks alone, and a clicks-only
    # read holds at most one row per slate in memory
    whole = any(needs_impressions(a) for a in agents)
    logs = read_public(args.logs, clicks_only=not whole)
    folder = Path(args.out) if (args.out and several) else Path(args.logs) / "policies"
    targets = {a.name: (args.out if (args.out and not several) else str(folder / f"{a.name}.pt")) for a in agents}
    from .seeding import SeedTree

    seed = args.seed if args.seed is not None else int(logs.manifest.get("seed", 0))
    tree = SeedTree(seed).child("training")
    # the codes are read (a stale or corrupt file refused) or computed before the outputs are claimed
    ids = _semantic_ids(args.logs, logs, tree, say) if any(a.generate == "token" for a in agents) else None
    with contextlib.ExitStack() as outputs:
        # every output is checked and locked before training; all are renamed into place at the
        # end, together (a failure or an interrupt leaves none of them, and no temporary)
        tmps = {name: outputs.enter_context(OutputFile(path, overwrite=args.overwrite, say=say))
                for name, path in targets.items()}
        from .posttrain.recipe import RecipeTrainer
        from .posttrain.ref_cache import FOLDER, RefCache, public_hashes

        train = split_leave_last_out(logs.clicks()).train
        cache = None if args.no_cache else RefCache(Path(args.logs) / FOLDER, public_hashes(logs.manifest),
                                                    logs.n_items, tree, semantic_ids=ids, say=say)
        trainer = RecipeTrainer(train, logs.n_items, tree, progress=_progress(args), semantic_ids=ids,
                                interactions=logs.interactions if whole else None, say=say, reference=cache)
        for agent in agents:
            trainer.train(agent).save(tmps[agent.name])
    for path in targets.values():
        print(f"wrote {path}")
    return 0


def _check_out_folder(raw: str) -> None:
    """With several recipes --out is a folder that receives NAME.pt per recipe: refuse a file, or a
    new name that reads as a policy file's."""
    from .outputs import resolve_output

    path = resolve_output(raw)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {raw} is a file: with several recipes --out names a folder that receives "
                          "one NAME.pt per recipe")
    if not path.exists() and path.suffix == ".pt":
        raise ConfigError(f"--out {raw} reads as a policy file, but with several recipes --out names a folder "
                          "that receives one NAME.pt per recipe")


def _semantic_ids(folder: str, logs, tree, say):  # noqa: ANN001, ANN202 - PublicLogs, SeedTree -> SemanticIds
    """The semantic IDs of a log folder for a token recipe: LOGS/semantic_ids.parquet, checked
    against the logs' items (missing → tokenized in memory with the default tokenizer, said so;
    stale or corrupt → a one-line LogError)."""
    from .semantic import FILE_NAME, read_semantic_ids

    if (Path(folder) / FILE_NAME).exists():
        return read_semantic_ids(folder, logs.manifest)
    from .semantic import default_tokenizer, tokenize_logs

    cfg = default_tokenizer(tree)
    say(f"no {FILE_NAME} in {folder}: tokenizing the items in memory (default tokenizer, seed {cfg.seed}); "
        "'recsim-post tokenize' writes them once")
    return tokenize_logs(logs, cfg).ids


def _check_token_policy(policy, logs, path) -> None:  # noqa: ANN001 - a trained policy, PublicLogs, its file
    """A token policy's semantic IDs must come from these logs' items (a one-line LogError if not)."""
    ids = getattr(policy, "ids", None)
    if ids is not None:
        from .semantic import check_ids_match_logs

        check_ids_match_logs(ids, logs, str(path))


def _evaluation_inputs(folder: str, paths: Sequence[str]):  # noqa: ANN202
    """The public logs, the sealed truth and the saved policies (named by file stem) of a log
    folder, every policy checked against the logs' catalogue: what evaluate and rollout read. Both
    read only the public clicks (streamed, every row checked) and not the sealed impressions (only
    OPE looks at an unclicked impression; rollout checks its re-simulation by the files' SHA-256)."""
    from .truth.ground_truth import GroundTruth
    from .logs.public import read_public
    from .models.load import load_policy

    logs = read_public(folder, clicks_only=True)
    truth = GroundTruth.load(folder, impressions=False)  # a folder without sealed/ is reported before the policy files
    policies = {}
    for path in paths:
        name = Path(path).stem
        if name in policies:  # rows are named by stem; two of one name would be indistinguishable
            raise ConfigError(f"two policy files are named '{name}' ({path} and another): rename one")
        policies[name] = load_policy(path, items_sha256=logs.manifest["sha256"]["items.parquet"])
        _check_token_policy(policies[name], logs, path)
        if policies[name].n_items != logs.n_items:
            raise ConfigError(
                f"policy '{name}' scores {policies[name].n_items} items but the logs have {logs.n_items}"
            )
    return logs, truth, policies


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
    from .truth.rollout import ClosedLoopConfig

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


def _closed_loop_legend(described: str, spread: str, extra: str = "") -> str:
    """The legend of the closed_loop column; ``described`` is ``ClosedLoop.describe()``."""
    return (
        "closed_loop: mean over users of the summed true reward r* of their clicks while the policy serves"
        f"\n  them slates after the logs end, {spread} over the rollout seeds;\n  {described}."
        "\n  References as defined: uniform shows k random items, the logging policy samples its slates as"
        "\n  in the logs, the oracle shows the k best items by the current r* (greedy and myopic: not an"
        "\n  upper bound closed-loop)." + (f"\n  {extra}" if extra else "")
    )


TRUE_VALUE_LEGEND = (
    "true_value: exact expected true reward of a policy that samples one item, for every evaluation user given"
    " her whole public history, at the end of logging T (ope's truth is another estimand: the logged requests,"
    " each user at the round she asked); true_value_norm: 0 = uniform, 1 = oracle; top{k}_*: the policy's"
    " top {k} shown; ndcg@{k} / hr@{k} / mrr: offline metrics on each user's held-out last click."
)
OPE_TRUTH_LEGEND = (
    "truth: the exact value of the estimand every estimator targets, (1/n) sum_i sum_a pi(a | h_i)"
    " r*(u_i, a, t_i) over the n logged requests (position-0 rows), each user at the round t_i she asked"
    " with her history h_i then. It is not evaluate's true_value, which scores pi on every user's whole"
    " history at the end of logging."
)
OPE_SIGNAL_LEGEND = (
    "estimate: the expected {reward} collected on the top slot if pi chose it and the logger filled the"
    " rest of the slate, estimated from the logged {reward} (0 where the top item was not clicked). It"
    " involves the choice model, so it has no exact value (truth is NaN): compare the estimators with each"
    " other, or use --reward true for errors against the exact truth."
)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score saved policies against the sealed ground truth of a log folder."""
    from .experiments.evaluate import Evaluator
    from .experiments.report import format_table, results_frame

    session = contextlib.nullcontext()
    if args.backend == "ray":
        from .truth.sharded import ray_module, ray_session

        ray_module()  # before reading anything: a missing Ray costs nothing
        session = ray_session()  # one Ray for every pass
    if args.users < 0:
        raise ConfigError(f"--users = {args.users} is out of range: must be >= 0 (0 = every user)")
    logs, truth, policies = _evaluation_inputs(args.logs, args.policy)
    with session:
        evaluator = Evaluator.prepare(logs, truth, k=args.k, max_users=args.users or None, backend=args.backend,
                                      shards=args.shards)
        rows = evaluator.reference_rows() + [evaluator.policy_row(n, p) for n, p in policies.items()]
    frame = results_frame(rows, k=args.k)
    legend = TRUE_VALUE_LEGEND.format(k=args.k)
    if args.json:
        print(json.dumps({"logs": str(args.logs), "k": args.k, "users": int(len(evaluator.users)),
                          "results": _json_records(frame),
                          "definitions": legend}, indent=2))
    else:
        print(format_table(frame))
        print("\n" + textwrap.fill(legend, width=100))
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    """Deploy saved policies for H more rounds after the logs end (closed loop), beside reference policies."""
    import pandas as pd

    from .truth.references import reference_policies
    from .experiments.report import aggregate_seeds, format_aggregate, format_table
    from .truth.rollout import ClosedLoop, world_at_end_of_logging
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
    refs = reference_policies(logs.n_items, split_leave_last_out(clicks).train, sim.logger, sim.world.trend())
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
    print("\n" + _closed_loop_legend(loop.describe(), "mean ± std")
          + "\nper_round: closed_loop / rounds; ctr: clicks per slate; reward_clicked / reward_shown: mean r*"
            "\n  of the clicked / shown items; rating: mean observed rating of the clicks (all mean ± std).")
    return 0


def cmd_ope(args: argparse.Namespace) -> int:
    """Off-policy estimates (IPS, SNIPS, DM, DR, Switch-DR) next to the exact value, with true and
    estimated propensities: on a log folder (--logs), or as a multi-seed study that simulates a
    scenario and trains recipes first (--scenario)."""
    q_models = ("item", "sequence") if args.q_model == "both" else (args.q_model,)
    if args.scenario is not None:
        if args.reward != "true":
            raise ConfigError(f"--reward {args.reward} belongs to --logs: a study (--scenario) measures each "
                              "estimator's error against the exact truth, which only --reward true has")
        if args.backend != "local" or args.shards is not None:
            raise ConfigError("--backend and --shards belong to --logs: they shard one log's rows")
        return _ope_study(args, q_models)
    from .truth.ground_truth import GroundTruth
    from .ope.report import format_report, format_summary, ope_report, summarise
    from .policy import UniformPolicy
    from .logs.public import read_public
    from .models.load import load_policy

    study_only = [f for f, v in (("--seeds", args.seeds), ("--agents", args.agents), ("--out", args.out),
                                 ("--set", args.set)) if v is not None]
    if study_only or args.overwrite:
        raise ConfigError(f"{(study_only or ['--overwrite'])[0]} belongs to a study (--scenario), not to --logs")
    logs = read_public(args.logs)
    policies = {"uniform": UniformPolicy(logs.n_items)}
    for path in args.policy or []:
        policy = load_policy(path, items_sha256=logs.manifest["sha256"]["items.parquet"])
        _check_token_policy(policy, logs, path)
        if policy.n_items != logs.n_items:
            raise ConfigError(f"policy '{Path(path).stem}' scores {policy.n_items} items but the logs have {logs.n_items}")
        policies[Path(path).stem] = policy
    report = ope_report(
        logs, GroundTruth.load(args.logs), policies, n_bootstrap=args.bootstrap,
        seed=args.seed if args.seed is not None else 0, propensity=args.propensity, q_model=q_models,
        say=_say(args.quiet), reward=args.reward, backend=args.backend, shards=args.shards,
    )
    legend = OPE_TRUTH_LEGEND if args.reward == "true" else OPE_SIGNAL_LEGEND.format(reward=args.reward)
    if args.json:
        records = _json_records(report)
        print(json.dumps({"logs": str(args.logs), "results": records, "notes": report.attrs.get("notes", []),
                          "reward": args.reward, "definitions": legend}, indent=2, default=str))
    else:
        print(format_report(report))
        if args.reward == "true":
            print()
            print(format_summary(summarise(report)))
        print("\n" + textwrap.fill(legend, width=100))
    return 0


def _ope_study(args: argparse.Namespace, q_models: tuple[str, ...]) -> int:
    """``recsim-post ope --scenario``: simulate, train, and score every estimator over seeds, one
    resumable cell per seed."""
    from .config import to_dict
    from .outputs import Workspace, cell_key

    if args.policy is not None:
        raise ConfigError("--policy belongs to --logs; a study (--scenario) trains its policies from --agents")
    if args.seed is not None:
        raise ConfigError("--seed belongs to --logs; a study (--scenario) takes --seeds")
    say = _say(args.quiet)
    start = time.perf_counter()
    scenario = _scenario(args.scenario, None, args.set)
    out = args.out or "recsim-post-ope"
    _check_out(out)
    agents = _agents(args.agents or ["bc"])
    seeds = args.seeds if args.seeds is not None else [scenario.seed]
    from .experiments.ope_study import check_study

    seeds = check_study(agents, seeds)
    spec = {"scenario": to_dict(scenario), "agents": [to_dict(a) for a in agents], "bootstrap": args.bootstrap,
            "propensity": args.propensity, "q_models": list(q_models)}
    cells = {f"seed-{s}": cell_key({**spec, "seed": s}) for s in seeds}
    with Workspace(out, "ope", cells, overwrite=args.overwrite, say=say) as ws:
        import pandas as pd

        from .experiments.ope_study import SeedResult, combine_study, format_study, ope_study_seed
        from .experiments.report import write_csv

        for s in seeds:
            name = f"seed-{s}"
            if ws.done(name):
                continue
            part = ope_study_seed(scenario, agents, s, n_bootstrap=args.bootstrap, propensity=args.propensity,
                                  q_models=q_models, progress=_progress(args), say=say)
            with ws.cell(name, {"notes": part.notes}) as tmp:
                part.report.to_parquet(tmp / "report.parquet")
                part.values.to_parquet(tmp / "values.parquet")
                write_csv(part.report, tmp / "report.csv")
            say(f"seed {s} finished: {out}/{name}/")
        parts = [SeedResult(pd.read_parquet(ws.path(f"seed-{s}") / "report.parquet"),
                            pd.read_parquet(ws.path(f"seed-{s}") / "values.parquet"),
                            list(ws.info(f"seed-{s}").get("notes", []))) for s in seeds]
        study = combine_study(parts, seeds, time.perf_counter() - start)
        for name, frame in (("report.csv", study.report), ("summary.csv", study.summary),
                            ("summary_by_policy.csv", study.by_policy), ("values.csv", study.values)):
            ws.write(name, lambda path, frame=frame: write_csv(frame, path))
        ws.finish()
    if args.json:
        records = _json_records(study.summary)
        print(json.dumps({"scenario": scenario.name, "seeds": study.seeds, "summary": records, "notes": study.notes},
                         indent=2, default=str))
    else:
        print(f"\nrecsim-post ope — scenario '{scenario.name}', recipes {', '.join(a.name for a in agents)} + uniform, "
              f"{args.propensity} propensities, {args.bootstrap} bootstrap resamples\n")
        print(format_study(study))
        print(f"\nwrote {out}/ (report.csv, summary.csv, summary_by_policy.csv, values.csv, "
              + ", ".join(f"seed-{s}/" for s in seeds) + f")  in {time.perf_counter() - start:.0f} s")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Turn one scenario dial over a grid of values: every recipe's true value and its paired
    difference to a baseline, one resumable cell per value and seed."""
    from .outputs import Workspace, cell_key
    from .experiments.sweep import Dial, cell_spec, sweep_cells

    say = _say(args.quiet)
    start = time.perf_counter()
    scenario = _scenario(args.scenario, None, args.set)
    _check_out(args.out)
    dial = Dial.parse(args.dial)
    cells = sweep_cells(scenario, dial, args.seeds)  # every value is checked before any work starts
    from .world.config import check_memory

    for cell in cells[:: len(args.seeds)]:  # one scenario per dial value
        check_memory(cell.scenario)
    agents = _agents(args.agents)
    names = [a.name for a in agents]
    if args.baseline not in names:
        raise ConfigError(f"--baseline {args.baseline} must be one of the recipes swept ({', '.join(names)})")
    eval_users = 5000
    keys = {c.name: cell_key(cell_spec(c, agents, eval_users)) for c in cells}
    with Workspace(args.out, "sweep", keys, overwrite=args.overwrite, say=say) as ws:
        from .experiments.report import write_csv
        from .experiments.sweep import format_sweep, plot_sweep, run_sweep, sweep_summary

        long = run_sweep(scenario, dial, agents, args.seeds, backend=args.backend, eval_users=eval_users,
                         say=say, store=ws, workers=args.workers)
        summary = sweep_summary(long, baseline=args.baseline)
        ws.write("sweep.csv", lambda path: write_csv(long, path))
        ws.write("sweep_summary.csv", lambda path: write_csv(summary, path))
        ws.write("sweep.png", lambda path: plot_sweep(summary, dial.key, path))
        ws.finish()
    print(f"\nrecsim-post sweep — scenario '{scenario.name}', {dial.key} over {len(dial.values)} values, "
          f"seeds {' '.join(map(str, args.seeds))}\n")
    print(format_sweep(summary, dial.key, baseline=args.baseline))
    print(f"\nwrote {args.out}/ (sweep.csv, sweep_summary.csv, sweep.png, cells/)  in {time.perf_counter() - start:.0f} s")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    """Run a study (studies/NAME.toml or a path): a grid over scenario knobs, recipe knobs and seeds,
    one resumable cell per (scenario, grid point, seed), then a report with confidence intervals,
    paired differences, the KL-reward frontier and the selection regret of offline criteria."""
    from .experiments.study import load_study, run_study, study_agents, study_cells

    say = _say(args.quiet)
    start = time.perf_counter()
    cfg = load_study(args.study, small=args.small)
    out = args.out or f"recsim-post-study-{cfg.name}" + ("-small" if args.small else "")
    _check_out(out)
    if cfg.kind == "story":  # every scenario, variant and reference is checked before any work starts
        from .world.config import check_memory

        cells = study_cells(cfg)
        for cell in cells[:: len(cfg.seeds)]:
            check_memory(cell.scenario)
        study_agents(cfg)
    run_study(cfg, out, overwrite=args.overwrite, backend=args.backend, workers=args.workers, say=say,
              progress=_progress(args), report_only=args.report_only)
    report = Path(out) / "report.md"
    print("\n" + report.read_text(encoding="utf-8"))
    print(f"\nwrote {out}/ (report.md, results.parquet, results.csv, figures, cells/)  in {time.perf_counter() - start:.0f} s")
    return 0


TOKENIZE_FLAGS = {"method": "method", "levels": "levels", "codebook_size": "codebook-size", "seed": "seed",
                  "genre_onehot": "genre-onehot"}

TOKENIZE_LEGEND = (
    "usage: share of a level's codes that some item uses; perplexity: exp of the entropy of the level's code "
    "distribution (= codes when all are used equally, 1 when one code takes every item); dis: the disambiguation "
    "token, whose size is the largest group of items sharing all L codes. collision rate: share of items whose "
    "L codes another item shares. reconstruction error: mean ||x - x_hat||^2 over items, x the standardised "
    "features and x_hat the sum of the item's centroids (rkmeans) or the RQ-VAE's decoding; relative: divided by "
    "the features' total variance. NMI (evaluation, from sealed/): normalised mutual information between the "
    "level-1 codes and the true genres."
)


def cmd_tokenize(args: argparse.Namespace) -> int:
    """Compute semantic IDs of a log folder's items from their public features (residual k-means or
    an RQ-VAE, then a disambiguation token) and write LOGS/semantic_ids.parquet."""
    from .logs.check import read_manifest
    from .semantic.config import TokenizerConfig, resolve_codebook_size

    flags = {"method": args.method, "levels": args.levels, "codebook_size": args.codebook_size,
             "genre_onehot": args.genre_onehot or None}
    try:
        cfg = TokenizerConfig(**{k: v for k, v in flags.items() if v is not None})
    except ConfigError as err:
        raise _flag_error(err, TOKENIZE_FLAGS) from None
    manifest = read_manifest(args.logs)  # a log folder, before anything is written into it
    try:
        k = resolve_codebook_size(cfg, manifest["n_items"])
    except ConfigError as err:
        raise _flag_error(err, TOKENIZE_FLAGS) from None
    seed = args.seed if args.seed is not None else int(manifest.get("seed", 0))
    import dataclasses

    cfg = dataclasses.replace(cfg, seed=seed)
    from .outputs import OutputFile
    from .semantic import FILE_NAME

    say = _say(args.quiet)
    target = Path(args.logs) / FILE_NAME
    out = OutputFile(target, overwrite=args.overwrite, what="output", say=say)  # refuses an existing file first
    from .logs.public import read_public
    from .semantic import tokenize_logs, tokenizer_report

    start = time.perf_counter()
    with out as tmp:
        logs = read_public(args.logs)
        say(f"tokenizing {logs.n_items:,} items: {cfg.method}, L = {cfg.levels}, K = {k} (seed {seed})")
        fit = tokenize_logs(logs, cfg)
        fit.ids.write(tmp)
    seconds = time.perf_counter() - start
    report = tokenizer_report(fit)
    nmi, nmi_note = None, "no sealed/ folder: the true genres are not there"
    if (Path(args.logs) / "sealed").is_dir():
        from .metrics.semantic import semantic_truth_report

        nmi, nmi_note = semantic_truth_report(fit.ids.codes, args.logs)["nmi_genre_level1"], ""
    if args.json:
        print(json.dumps({"logs": str(args.logs), "file": str(target), "method": cfg.method, "levels": cfg.levels,
                          "codebook_size": k, "seed": seed, **report.summary(), "nmi_genre_level1": nmi,
                          "levels_usage": _json_records(report.usage), "seconds": seconds}, indent=2))
        return 0
    from .experiments.report import format_table

    print(f"\nrecsim-post tokenize — {args.logs}: {report.n_items:,} items, {cfg.method}, L = {cfg.levels}, "
          f"K = {k}, seed {seed}\n")
    print(format_table(report.usage))
    print()
    print(f"collision rate        {report.collision_rate:.3f}  ({report.max_collisions} items at most share "
          f"their {cfg.levels} codes)")
    print(f"reconstruction error  {report.reconstruction_mse:.3f}  (relative {report.relative_error:.3f})")
    print("NMI level 1 vs genre  " + (f"{nmi:.3f}" if nmi is not None else f"—  ({nmi_note})"))
    print("\n" + textwrap.fill(TOKENIZE_LEGEND, width=100))
    print(f"\nwrote {target} in {seconds:.1f} s")
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


def _doc(fn) -> str:  # noqa: ANN001
    """A command function's docstring as one plain paragraph (its help and description)."""
    return " ".join((fn.__doc__ or "").split())


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="recsim-post", description=SUMMARY,
                epilog="Run 'recsim-post COMMAND --help' for a command's options. Bad input exits 2 with one line.")
    p.add_argument("--version", action="version", version=f"recsim-post {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    def command(name: str, fn, help_text: str | None = None) -> argparse.ArgumentParser:  # noqa: ANN001
        text = help_text or _doc(fn)
        sp = sub.add_parser(name, help=text.split(". ")[0].rstrip(".") + ".", description=text)
        sp.set_defaults(func=fn)
        return sp

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--quiet", "-q", action="store_true",
                        help="no progress output (progress bars are shown only on a terminal anyway)")

    def settings(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--set", nargs="+", default=None, metavar="SECTION.KEY=VALUE",
                        help="override scenario knobs, e.g. --set feedback.noise_std=1.0 logging.epsilon=0.2")

    def story_parser(name: str, help_text: str, out: str, seeds: list[int] | None) -> None:
        d = command(name, cmd_demo, help_text)
        d.add_argument("--scenario", default="quickstart", help="preset name or TOML path (default: quickstart)")
        d.add_argument("--agents", nargs="+", default=None,
                       help="recipes to compare, names or TOML paths (default: every preset recipe)")
        seed = d.add_mutually_exclusive_group()
        seed.add_argument("--seed", type=_seed_arg, default=None, help="overrides the scenario's seed")
        seed.add_argument("--seeds", type=_seed_arg, nargs="+", default=seeds,
                          help="run every seed and report mean ± std; each finished seed is kept, and a rerun "
                               "resumes" + (f" (default: {' '.join(map(str, seeds))})" if seeds else " (e.g. --seeds 0 1 2)"))
        d.add_argument("--out", default=out, help=f"output folder (default: ./{out})")
        d.add_argument("--overwrite", action="store_true",
                       help="replace an output folder that holds other files (a folder this command wrote, "
                            "unchanged since, is replaced without it)")
        d.add_argument("--no-logs", action="store_true", help="do not keep the simulated logs")
        closed = d.add_argument_group("closed loop", "the closed_loop column: every row deployed for a few "
                                      "rounds after the logs (unset flags keep ClosedLoopConfig's defaults)")
        closed.add_argument("--rollout-rounds", type=int, default=None, metavar="H",
                            help="rounds each policy is deployed for (default: 5; 0 leaves the column out)")
        closed.add_argument("--rollout-seeds", type=_seed_arg, nargs="+", default=None, metavar="S",
                            help="rollout seeds, the column is their mean (default: 0 1)")
        closed.add_argument("--rollout-users", type=int, default=None, metavar="N",
                            help="cohort of N users drawn at random (default: 250; 0 = every user)")
        closed.add_argument("--rollout-slate", choices=["topk", "sample"], default=None,
                            help="trained policies and popularity show their top k, or sample k from their softmax (default: topk)")
        settings(d)
        common(d)

    story_parser("demo", _doc(cmd_demo), "recsim-post-demo", None)
    story_parser("compare", "The demo over several seeds: every recipe, mean ± std of each column; each finished "
                 "seed is written at once, and rerunning the command resumes.", "recsim-post-compare", [0, 1, 2])

    s = command("simulate", cmd_simulate)
    s.add_argument("--scenario", default="quickstart", help="preset name or TOML path")
    s.add_argument("--seed", type=_seed_arg, default=None, help="overrides the scenario's seed")
    s.add_argument("--out", required=True, help="log folder to write (new or empty)")
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    s.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: this process; ray: the users in shards on Ray actors (pip install ray), for a "
                        "scenario with simulation.streams = \"per-user\"; the same files either way")
    s.add_argument("--shards", type=_positive_int, default=None, metavar="N",
                   help="--backend ray: user shards, one Ray actor each (default: the CPUs Ray sees)")
    settings(s)
    common(s)

    w = command("sweep", cmd_sweep)
    w.add_argument("--dial", required=True, metavar="SECTION.KEY=V1,V2,...",
                   help="the scenario knob to turn and its values, e.g. feedback.noise_std=0,0.5,1,2")
    w.add_argument("--scenario", default="quickstart", help="preset name or TOML path (default: quickstart)")
    w.add_argument("--agents", nargs="+", default=["bc", "exp-rsft", "ipo"], help="recipes (default: bc exp-rsft ipo)")
    w.add_argument("--baseline", default="bc", help="recipe the paired differences are taken to (default: bc)")
    w.add_argument("--seeds", type=_seed_arg, nargs="+", default=[0, 1, 2], help="seeds per value (default: 0 1 2)")
    w.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: cells one after another; ray: cells as Ray tasks (pip install ray)")
    w.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="local cells run at once in a process pool (default: 1, one after another)")
    w.add_argument("--out", default="recsim-post-sweep",
                   help="output folder; each finished cell is kept there, and rerunning the command resumes "
                        "(default: ./recsim-post-sweep)")
    w.add_argument("--overwrite", action="store_true",
                   help="start over in an output folder that holds other files or cells of another grid")
    settings(w)
    common(w)

    st = command("study", cmd_study)
    st.add_argument("study", help="a shipped study's name (see studies/) or a path to a study TOML file")
    st.add_argument("--small", action="store_true", help="the study's [small] size: seconds to minutes, as CI runs it")
    st.add_argument("--backend", choices=["local", "ray"], default="local",
                    help="local: cells in this machine's processes; ray: cells as Ray tasks (pip install ray)")
    st.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                    help="local cells run at once in a process pool (default: 1, one after another)")
    st.add_argument("--out", default=None,
                    help="output folder; finished cells are kept and a rerun resumes (default: ./recsim-post-study-NAME)")
    st.add_argument("--overwrite", action="store_true",
                    help="start over in an output folder that holds other files or cells of another grid")
    st.add_argument("--report-only", action="store_true",
                    help="compute nothing: write the tables and report again from the finished cells in --out, also "
                         "cells an earlier code version computed with these settings (every cell must be finished)")
    common(st)

    t = command("train", cmd_train)
    t.add_argument("--logs", required=True, help="log folder written by 'simulate' (only its public files are read)")
    t.add_argument("--agent", required=True, nargs="+", metavar="AGENT",
                   help="recipe names or TOML paths; several share their pi_ref (and reward model) where they can")
    t.add_argument("--out", default=None,
                   help="policy file of one recipe, or the folder that receives NAME.pt per recipe with several "
                        "(default: LOGS/policies/NAME.pt)")
    t.add_argument("--seed", type=_seed_arg, default=None, help="training seed (default: the logs' seed)")
    t.add_argument("--overwrite", action="store_true", help="replace existing policy files")
    t.add_argument("--no-cache", action="store_true",
                   help="pre-train pi_ref afresh and keep it nowhere (default: reuse and keep it in LOGS/cache/, "
                        "a folder you may delete at any time)")
    common(t)

    e = command("evaluate", cmd_evaluate)
    e.add_argument("--logs", required=True, help="log folder written by 'simulate' (with sealed/)")
    e.add_argument("--policy", nargs="+", required=True, help="policy files written by 'train'")
    e.add_argument("--k", type=int, default=10, help="cut-off of NDCG@k, HR@k and the top-k value")
    e.add_argument("--users", type=int, default=5000, metavar="N",
                   help="the exact ground truth over N users drawn at random (default: 5000; 0 = every user); "
                        "the offline metrics always use every user's held-out click")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: this process; ray: the exact ground-truth passes with the users in shards on Ray "
                        "tasks (pip install ray); the same numbers either way")
    e.add_argument("--shards", type=_positive_int, default=None, metavar="N",
                   help="user shards of the exact passes, whole chunks of users each (default: ray, one per CPU "
                        "Ray sees; local, none)")

    r = command("rollout", cmd_rollout)
    r.add_argument("--logs", required=True, help="log folder written by 'simulate' or 'demo' (with sealed/)")
    r.add_argument("--policy", nargs="+", required=True, help="policy files written by 'train'")
    r.add_argument("--rounds", type=int, default=10, metavar="H", help="rounds each policy is deployed for (default: 10)")
    r.add_argument("--seeds", type=_seed_arg, nargs="+", default=[0, 1, 2],
                   help="rollout seeds: mean ± std over them (default: 0 1 2)")
    r.add_argument("--users", type=int, default=0, metavar="N", help="cohort of N users drawn at random (default: 0 = every user)")
    r.add_argument("--slate", choices=["topk", "sample"], default="topk",
                   help="trained policies and popularity show their top k, or sample k from their softmax; the logger "
                        "always samples as in the logs, the oracle always shows its top k (default: topk)")
    r.add_argument("--slate-size", type=int, default=None, metavar="K", help="items per slate (default: the logging slate size)")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    common(r)

    o = command("ope", cmd_ope)
    where = o.add_mutually_exclusive_group(required=True)
    where.add_argument("--logs", default=None, help="log folder written by 'simulate' (with sealed/)")
    where.add_argument("--scenario", default=None,
                       help="a study instead: simulate this preset / TOML per seed, train --agents, score them")
    o.add_argument("--policy", nargs="*", default=None, help="with --logs: policy files written by 'train' (uniform is always included)")
    o.add_argument("--agents", nargs="+", default=None, help="with --scenario: recipes to train and evaluate (default: bc)")
    o.add_argument("--seeds", type=_seed_arg, nargs="+", default=None,
                   help="with --scenario: seeds, one resumable cell each (default: the scenario's)")
    o.add_argument("--out", default=None, help="with --scenario: output folder (default: ./recsim-post-ope)")
    o.add_argument("--overwrite", action="store_true",
                   help="with --scenario: start over in an output folder that holds other files")
    o.add_argument("--propensity", choices=["bc", "frequency"], default="bc",
                   help="how propensities are estimated from the public logs (default: bc)")
    o.add_argument("--reward", choices=["true", *REWARDS], default="true",
                   help="what to estimate: the true reward r* (with its exact value, default) or a logged "
                        "feedback signal (with --logs)")
    o.add_argument("--q-model", choices=["item", "sequence", "both"], default="both",
                   help="reward model of DM / DR / Switch-DR: item means, a personalised sequence model, or both (default)")
    o.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per interval")
    o.add_argument("--seed", type=_seed_arg, default=None, help="with --logs: seed of the bootstrap and the models (default: 0)")
    o.add_argument("--json", action="store_true", help="machine-readable output")
    o.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="with --logs: score the logged rows in this process, or in shards as Ray tasks (the same "
                        "numbers, bit for bit)")
    o.add_argument("--shards", type=_positive_int, default=None, metavar="N",
                   help="--backend ray: row shards, one Ray task each (default: the CPUs Ray sees)")
    settings(o)
    common(o)

    z = command("tokenize", cmd_tokenize)
    z.add_argument("--logs", required=True, help="log folder written by 'simulate' (its public items.parquet is read)")
    z.add_argument("--method", default=None, help="rkmeans (residual k-means, default) or rqvae (RQ-VAE)")
    z.add_argument("--levels", type=int, default=None, metavar="L", help="semantic code levels, 1 .. 8 (default: 3)")
    z.add_argument("--codebook-size", type=int, default=None, metavar="K",
                   help="codes per level, 2 .. min(4096, n_items); 0 = auto, the smallest power of two with "
                        "K^L >= 4 n_items (default: 0)")
    z.add_argument("--genre-onehot", action="store_true", help="append the public genre, one-hot, to the features")
    z.add_argument("--seed", type=_seed_arg, default=None, help="tokenizer seed (default: the logs' seed)")
    z.add_argument("--overwrite", action="store_true", help="replace an existing LOGS/semantic_ids.parquet")
    z.add_argument("--json", action="store_true", help="machine-readable output")
    common(z)

    command("envs", cmd_envs)
    command("agents", cmd_agents)
    return p


RETRY_SECONDS = 0.05
"""How soon a SIGTERM that arrived inside a foreign callback is raised again."""


def _in_foreign_callback(frame) -> bool:  # noqa: ANN001
    """Whether the interrupted Python code runs inside a C library's callback (llvmlite's, while
    Numba compiles): an exception raised there is printed as "Exception ignored" and swallowed."""
    while frame is not None:
        if "llvmlite" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def _terminate(signum: int, frame) -> None:  # noqa: ANN001
    """SIGTERM (and its retry on SIGALRM): raise Terminated where the run is, or, inside a foreign
    callback that would swallow it, again in RETRY_SECONDS (a SIGTERM during Numba's first
    compilation used to be ignored and the run went on to finish)."""
    if _in_foreign_callback(frame):
        signal.signal(signal.SIGALRM, _terminate)
        signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
        return
    raise Terminated(signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recsim-post`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "k", 1) < 1:
        parser.error(f"--k = {args.k} is out of range: must be >= 1")
    if getattr(args, "bootstrap", 1) < 1:
        parser.error(f"--bootstrap = {args.bootstrap} is out of range: must be >= 1")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _terminate)  # clean-up runs as for Ctrl-C
    except ValueError:  # not the main thread (main() called from a worker thread): leave it be
        previous = None
    try:
        return int(args.func(args) or 0)
    except RecsimError as err:
        print(f"recsim-post: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recsim-post: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("recsim-post: terminated", file=sys.stderr)
        return 143
    except OSError as err:  # the disk, not the input: one line and status 1, no traceback
        what = err.strerror or str(err)
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        print(f"recsim-post: error: {what}{where}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if signal.getsignal(signal.SIGALRM) is _terminate:  # a deferred SIGTERM the run outlived
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
