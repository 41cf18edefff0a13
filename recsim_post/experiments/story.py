"""The whole story in one call: simulate -> log -> pre-train -> post-train -> score against the truth.

``recsim-post demo`` and the notebooks sit on top of :func:`run_story`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from .evaluate import Evaluator
from ..truth.ground_truth import GroundTruth
from .report import ResultRow, results_frame
from ..truth.rollout import ClosedLoop, ClosedLoopConfig
from ..logs.simulate import Simulation, simulate
from ..models.load import TrainedPolicy
from ..posttrain.recipe import AgentConfig, RecipeTrainer
from ..posttrain.reward_model import RewardModel
from ..seeding import SeedTree
from ..semantic import SemanticIds, default_tokenizer, tokenize_logs
from ..world.config import ScenarioConfig


@dataclass
class StoryResult:
    """The results table, the trained policies and the simulation they came from."""

    frame: pd.DataFrame
    policies: dict[str, TrainedPolicy]
    simulation: Simulation
    evaluator: Evaluator
    rows: list[ResultRow] = field(default_factory=list)
    reward_models: dict[str, RewardModel] = field(default_factory=dict)
    semantic_ids: SemanticIds | None = None
    """The catalogue's semantic IDs, when a token recipe ran (computed from the public item features)."""
    pi_refs: dict[str, TrainedPolicy] = field(default_factory=dict)
    """Each recipe's π_ref (shared by recipes with the same [model] and [pretrain])."""
    agents: dict[str, AgentConfig] = field(default_factory=dict)
    """Each recipe by name, as it was trained."""


def run_story(
    scenario: ScenarioConfig,
    agents: Sequence[AgentConfig],
    seed: int | None = None,
    progress: bool = True,
    say: Callable[[str], None] = lambda _: None,
    eval_users: int | None = 5000,
    closed_loop: ClosedLoopConfig | None = None,
) -> StoryResult:
    """Run the story for ``scenario`` (its seed replaced by ``seed`` if given) and ``agents``.

    Agents that share [model] and [pretrain] share one pre-trained pi_ref; each is fine-tuned from
    it with the same training seed, so the rows differ only by method. ``closed_loop`` (e.g.
    ``ClosedLoopConfig()``, what ``recsim-post demo`` passes by default) adds the ``closed_loop``
    column: every row, references included, rolled from the simulated world at T. None (the
    default here, so callers such as sweeps pay nothing unasked) or ``rounds = 0`` leaves it out.
    """
    if seed is not None:
        scenario = dataclasses.replace(scenario, seed=seed)
    tree = SeedTree(scenario.seed).child("training")
    say(f"simulating '{scenario.name}': {scenario.users.n_users} users, "
        f"{scenario.catalog.n_items} items, {scenario.simulation.n_rounds} rounds")
    sim = simulate(scenario, progress=progress)
    logs = sim.public
    evaluator = Evaluator.prepare(logs, GroundTruth.from_simulation(sim), max_users=eval_users, seed=tree)
    say(f"logged {len(logs.interactions):,} impressions, {len(evaluator.clicks):,} clicks; "
        f"training on {len(evaluator.train):,} clicks (leave-last-out)")

    ids = None
    if any(a.generate == "token" for a in agents):  # public item features -> semantic IDs, once per run
        cfg = default_tokenizer(tree)
        say(f"tokenizing {logs.n_items} items into semantic IDs ({cfg.method}, L = {cfg.levels}, seed {cfg.seed})")
        ids = tokenize_logs(logs, cfg).ids
    trainer = RecipeTrainer(evaluator.train, logs.n_items, tree, progress=progress, semantic_ids=ids,
                            interactions=logs.interactions, say=say)
    policies = {agent.name: trainer.train(agent) for agent in agents}
    # each recipe's π_ref (the trainer's shared one): its row's KL and matched-entropy columns
    pi_refs = {agent.name: trainer.reference(agent) for agent in agents}
    reward_models = trainer.reward_models
    # Every row is scored by the first reward model (when any method used one), so its beliefs
    # about all policies -- the logger and the oracle included -- sit on one scale.
    evaluator.reward_model = next(iter(reward_models.values()), None)
    if closed_loop is not None and closed_loop.rounds > 0:
        evaluator.closed_loop = ClosedLoop(sim.world, evaluator.clicks, closed_loop)
        say(f"closed-loop rollouts: {evaluator.closed_loop.describe()}")
    rows = evaluator.rows(policies, pi_refs=pi_refs)  # one pass over r* for the references and every policy
    if evaluator.closed_loop is not None:
        say(f"closed-loop rollouts took {evaluator.closed_loop.seconds:.1f} s")
    return StoryResult(results_frame(rows, k=evaluator.k), policies, sim, evaluator, rows, reward_models, ids, pi_refs,
                       {agent.name: agent for agent in agents})
