"""Agent recipes (``agents/*.toml``): model, BC pre-training of π_ref, a post-training method, fine-tuning.

A recipe file reads::

    name = "exp-rsft"
    description = "..."
    [model]      # SASRecConfig | HSTUConfig (dispatched on `kind`)
    [pretrain]   # TrainConfig of the BC pre-training that produces π_ref
    [method]     # name = "bc" | "exp-rsft", plus that method's knobs
    [finetune]   # TrainConfig of the post-training stage
    generate = "token"   # optional: emit the item's semantic-ID tokens (TIGER-style), not an item id
    [token_head] # TokenHeadConfig of the token head (generate = "token" only)

Recipes that share [model], [pretrain] and what they generate share π_ref, so a comparison
pre-trains once and fine-tunes each method from the same starting point with the same seed
(:class:`RecipeTrainer`; :func:`pretrain_key` says which recipes share).

A token recipe (``generate = "token"``) needs the catalogue's semantic IDs (``recsim_post.semantic``):
its [model] is the backbone over the item history, and π_ref is token-level BC (``sft-token``).
Only the methods that read log π(y|x) alone have a token-level version (a module flag ``TOKEN_LEVEL``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Mapping, Union

import pandas as pd
import torch

from ..config import Config, from_dict, knob, read_toml, show, to_dict
from ..errors import ConfigError
from ..models.load import TrainedPolicy
from ..models.policy import ModelConfig, SequencePolicy, build_model, model_config_from_dict
from ..models.sasrec import SASRecConfig
from ..models.token import TokenHeadConfig, TokenPolicy, is_token_model
from ..semantic.ids import SemanticIds
from ..seeding import SeedTree
from ..signals import check_reward
from . import asft, bc, cql, dpo, exp_rsft, gflowgr, grpo, ipo, linear_rsft, ppo
from .bc import BCConfig
from .data import PostTrainData
from .loop import TrainConfig
from .reward_model import RewardModel, RewardModelConfig, fit_reward_model

METHODS: dict[str, ModuleType] = {
    m.CONFIG().name: m for m in (bc, linear_rsft, exp_rsft, asft, dpo, ipo, cql, ppo, grpo, gflowgr)
}
"""Post-training methods by name; each module has ``CONFIG`` (its config class), ``train`` and
``needs_reward_model(cfg)``."""

MethodConfig = Union[tuple(m.CONFIG for m in METHODS.values())]  # type: ignore[valid-type]


def needs_reward_model(cfg: AgentConfig) -> bool:
    """Whether the recipe's method trains against a reward model."""
    method = METHODS[cfg.method.name]
    return bool(getattr(method, "needs_reward_model", lambda _: False)(cfg.method))


def needs_impressions(cfg: AgentConfig) -> bool:
    """Whether the recipe's method reads the unclicked impressions (the clicks' slates), not only
    the clicks: the command line then reads the public logs whole instead of clicks only."""
    method = METHODS[cfg.method.name]
    return bool(getattr(method, "needs_impressions", lambda _: False)(cfg.method))


def method_config_from_dict(data: Mapping[str, Any]) -> MethodConfig:
    """Read a [method] table, dispatching on its ``name`` key."""
    if not isinstance(data, Mapping):
        raise ConfigError("method must be a table of settings with a 'name' key")
    known = ", ".join(repr(n) for n in METHODS)
    if "name" not in data:
        raise ConfigError(f"method.name is missing: must be one of {known}")
    name = data["name"]
    if not isinstance(name, str) or name not in METHODS:  # a list or table is not hashable
        raise ConfigError(f"method.name = {show(name)} is not a known method: must be one of {known}")
    return from_dict(METHODS[name].CONFIG, data, prefix="method")


@dataclass(frozen=True)
class AgentConfig(Config):
    """A full recipe: architecture, pre-training, post-training method and its fine-tuning."""

    name: str = knob("agent", "short name of the recipe (used in result tables)")
    description: str = knob("", "one or two sentences on what the recipe does")
    model: ModelConfig = knob(SASRecConfig(), "sequence model architecture; dispatched on its 'kind' key")
    pretrain: TrainConfig = knob(TrainConfig(), "BC pre-training that produces π_ref")
    method: MethodConfig = knob(BCConfig(), "post-training method; dispatched on its 'name' key")
    finetune: TrainConfig = knob(TrainConfig(epochs=5), "optimisation of the post-training stage")
    reward_model: RewardModelConfig = knob(
        RewardModelConfig(), "ensemble fitted on the training clicks, for methods that need one"
    )
    reward: str = knob("rating", "the feedback signal the method and its reward model learn from: click, rating "
                       "or watch (recsim_post.signals)")
    generate: Literal["item", "token"] = knob(
        "item", "what the policy emits: 'item' (a softmax over the catalogue) or 'token' (the item's semantic-ID "
        "tokens level by level, TIGER-style, over the logs' semantic IDs)")
    token_head: TokenHeadConfig = knob(TokenHeadConfig(), "the token-level head (generate = 'token' only)")

    def __post_init__(self) -> None:
        # The generic union coercion would report the first failed member's error; dispatching on
        # the method's name gives a message that lists the known methods instead.
        if isinstance(self.method, Mapping):
            object.__setattr__(self, "method", method_config_from_dict(self.method))
        if isinstance(self.model, Mapping):
            object.__setattr__(self, "model", model_config_from_dict(self.model))
        super().__post_init__()

    def check(self) -> None:
        if not self.name.strip():
            raise ConfigError("name = '' is not allowed: must be a non-empty string")
        check_reward(self.reward)
        if self.generate == "token" and not getattr(METHODS[self.method.name], "TOKEN_LEVEL", False):
            token = ", ".join(repr(n) for n, m in METHODS.items() if getattr(m, "TOKEN_LEVEL", False))
            raise ConfigError(f"method.name = {self.method.name!r} has no token-level version (generate = 'token'): "
                              f"must be one of {token}")
        if self.generate == "item" and getattr(METHODS[self.method.name], "TOKEN_ONLY", False):
            raise ConfigError(f"method.name = {self.method.name!r} works on semantic-ID tokens only: set generate = "
                              "'token' (and a [token_head])")
        if self.generate == "token":
            for section, train in (("pretrain", self.pretrain), ("finetune", self.finetune)):
                if train.loss == "sampled":
                    raise ConfigError(f"{section}.loss = 'sampled' is for item policies: a token policy (generate = "
                                      "'token') has no softmax over the catalogue; must be 'full'")
        if self.finetune.loss == "sampled":
            module = METHODS[self.method.name]
            if not getattr(module, "SAMPLED_SOFTMAX", False):
                sampled = ", ".join(repr(n) for n, m in METHODS.items() if getattr(m, "SAMPLED_SOFTMAX", False))
                raise ConfigError(f"finetune.loss = 'sampled' does not fit method.name = {self.method.name!r}: the "
                                  f"sampled softmax estimates −log π(y|x) of the logged targets (methods {sampled}); "
                                  "must be 'full'")
            if hasattr(module, "check_sampled"):  # a variant that needs the whole catalogue
                module.check_sampled(self.method)
        check = getattr(METHODS[self.method.name], "check_for_reward", None)
        if check is not None:  # a method whose knobs depend on the reward's scale
            check(self.method, self.reward)


def load_agent(path: str | Path) -> AgentConfig:
    """Read and validate a recipe TOML file (unknown keys and bad values raise ConfigError)."""
    return from_dict(AgentConfig, read_toml(path))


def pretrain(
    train_clicks: pd.DataFrame, n_items: int, cfg: AgentConfig, seed: SeedTree, progress: bool = True,
    semantic_ids: SemanticIds | None = None,
) -> TrainedPolicy:
    """π_ref: a fresh model (initialised from ``seed``) trained by BC with ``cfg.pretrain``; a token
    recipe builds a :class:`TokenPolicy` over ``semantic_ids`` (required then)."""
    init = torch.Generator().manual_seed(seed.integer("init"))
    if cfg.generate == "token":
        if semantic_ids is None:
            raise ConfigError(f"recipe '{cfg.name}' generates semantic-ID tokens but no semantic IDs were given "
                              "(tokenize the logs first: recsim-post tokenize)")
        if semantic_ids.n_items != n_items:
            raise ConfigError(f"the semantic IDs list {semantic_ids.n_items} items but the catalogue has {n_items}")
        policy: TrainedPolicy = TokenPolicy.build(cfg.model, cfg.token_head, semantic_ids, init)
    else:
        policy = SequencePolicy(build_model(cfg.model, n_items, init), n_items, cfg.model.max_len)
    data = PostTrainData(train_clicks, n_items, reward=cfg.reward)
    return bc.train(policy, data, BCConfig(), cfg.pretrain, seed.child("pretrain"), progress)


def post_train(
    policy_ref: TrainedPolicy,
    train_clicks: pd.DataFrame,
    n_items: int,
    cfg: AgentConfig,
    seed: SeedTree,
    progress: bool = True,
    reward_model: RewardModel | None = None,
    interactions: pd.DataFrame | None = None,
) -> TrainedPolicy:
    """A copy of π_ref fine-tuned by ``cfg.method`` with ``cfg.finetune`` (π_ref is untouched).

    Every method draws its batch order and dropout from the same ``seed.child("finetune")``, so
    methods compared from one π_ref see the same batches (common random numbers). A method that
    needs a reward model gets ``reward_model``, or one fitted here with ``cfg.reward_model``.
    ``interactions`` are the public impressions the clicks come from (GFlowGR reads the slates
    shown beside each click there; other methods ignore them).
    """
    if dataclasses.asdict(policy_ref.config) != dataclasses.asdict(cfg.model):
        raise ConfigError(f"recipe '{cfg.name}': its [model] section does not match the pre-trained policy's")
    if ("token" if is_token_model(policy_ref.model) else "item") != cfg.generate:
        raise ConfigError(f"recipe '{cfg.name}' has generate = {cfg.generate!r}, but the pre-trained policy does not")
    method = METHODS[cfg.method.name]
    if needs_reward_model(cfg) and reward_model is None:
        reward_model = fit_reward(policy_ref, train_clicks, n_items, cfg, seed, progress)
    data = PostTrainData(train_clicks, n_items, reward_model, reward=cfg.reward, interactions=interactions)
    return method.train(policy_ref, data, cfg.method, cfg.finetune, seed.child("finetune"), progress)


def pretrain_spec(cfg: AgentConfig) -> dict[str, Any]:
    """What π_ref depends on in a recipe, as plain data: its [model], its [pretrain], what it
    generates and, for a token recipe, its [token_head]. Recipes with equal specs share π_ref (with
    the same clicks, semantic IDs and seed, :func:`pretrain` gives them the same policy)."""
    head = to_dict(cfg.token_head) if cfg.generate == "token" else None
    return {"model": to_dict(cfg.model), "pretrain": to_dict(cfg.pretrain), "generate": cfg.generate,
            "token_head": head}


def pretrain_key(cfg: AgentConfig) -> str:
    """:func:`pretrain_spec` as a string: equal keys, one π_ref."""
    return json.dumps(pretrain_spec(cfg), sort_keys=True, default=str)


def reward_model_key(cfg: AgentConfig) -> str:
    """Recipes with equal keys share one fitted reward-model ensemble: the same π_ref backbone, the
    same [reward_model] and the same reward signal."""
    return json.dumps({"ref": pretrain_key(cfg), "reward_model": to_dict(cfg.reward_model), "reward": cfg.reward},
                      sort_keys=True, default=str)


ReferenceSource = Callable[[AgentConfig, Callable[[], TrainedPolicy]], TrainedPolicy]
"""``source(agent, compute) -> π_ref``: where :class:`RecipeTrainer` gets a π_ref it has not yet
got in memory; ``compute()`` pre-trains it (a disk cache calls it on a miss only)."""


class RecipeTrainer:
    """Trains several recipes on one training split, pre-training each π_ref once.

    Recipes with equal :func:`pretrain_key` share one π_ref, and those with equal
    :func:`reward_model_key` share one reward-model ensemble; every recipe is fine-tuned from its
    π_ref with the same seed, so recipes compared side by side differ only by their method. The
    story (demo, compare) and ``recsim-post train --agent a b c`` both train through it;
    ``reference`` (e.g. the command line's pi_ref cache on disk) may supply a π_ref instead of
    pre-training it.
    """

    def __init__(
        self, train_clicks: pd.DataFrame, n_items: int, seed: SeedTree, *, progress: bool = True,
        semantic_ids: SemanticIds | None = None, interactions: pd.DataFrame | None = None,
        say: Callable[[str], None] = lambda _: None, reference: ReferenceSource | None = None,
    ) -> None:
        self.train_clicks, self.n_items, self.seed = train_clicks, n_items, seed
        self.progress, self.semantic_ids, self.interactions = progress, semantic_ids, interactions
        self.say, self.source = say, reference
        self.refs: dict[str, TrainedPolicy] = {}
        self.reward_models: dict[str, RewardModel] = {}

    def reference(self, agent: AgentConfig) -> TrainedPolicy:
        """The recipe's π_ref: pre-trained (or got from ``reference``) on its first request."""
        key = pretrain_key(agent)
        if key not in self.refs:
            def compute() -> TrainedPolicy:
                level = "token-level " if agent.generate == "token" else ""
                self.say(f"pre-training pi_ref by {level}behaviour cloning on {len(self.train_clicks):,} clicks "
                         f"({agent.pretrain.epochs} epochs)")
                return pretrain(self.train_clicks, self.n_items, agent, self.seed, progress=self.progress,
                                semantic_ids=self.semantic_ids)

            self.refs[key] = compute() if self.source is None else self.source(agent, compute)
        return self.refs[key]

    def reward_model(self, agent: AgentConfig) -> RewardModel | None:
        """The recipe's reward-model ensemble (fitted on its first request), or None when its
        method needs none."""
        if not needs_reward_model(agent):
            return None
        key = reward_model_key(agent)
        if key not in self.reward_models:
            ref = self.reference(agent)
            self.say(f"fitting a reward-model ensemble ({agent.reward_model.members} members) on pi_ref's backbone")
            self.reward_models[key] = fit_reward(ref, self.train_clicks, self.n_items, agent, self.seed, self.progress)
        return self.reward_models[key]

    def train(self, agent: AgentConfig) -> TrainedPolicy:
        """The recipe's policy: its π_ref fine-tuned by its method (:func:`post_train`)."""
        ref = self.reference(agent)
        rm = self.reward_model(agent)
        self.say(f"post-training '{agent.name}' ({agent.method.name}, {agent.finetune.epochs} epochs)")
        return post_train(ref, self.train_clicks, self.n_items, agent, self.seed, progress=self.progress,
                          reward_model=rm, interactions=self.interactions)


def fit_reward(
    policy_ref: TrainedPolicy,
    train_clicks: pd.DataFrame,
    n_items: int,
    cfg: AgentConfig,
    seed: SeedTree,
    progress: bool = True,
) -> RewardModel:
    """The recipe's reward-model ensemble, fitted on the training clicks over π_ref's backbone."""
    data = PostTrainData(train_clicks, n_items, reward=cfg.reward)
    return fit_reward_model(policy_ref, data, cfg.reward_model, seed.child("reward_model"), progress)


__all__ = [
    "AgentConfig",
    "fit_reward",
    "needs_reward_model",
    "METHODS",
    "MethodConfig",
    "load_agent",
    "method_config_from_dict",
    "post_train",
    "pretrain",
    "pretrain_key",
    "pretrain_spec",
    "RecipeTrainer",
    "ReferenceSource",
    "reward_model_key",
]
