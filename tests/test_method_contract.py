"""One contract, run against every registered post-training method (with its own recipe's knobs).

On a tiny bandit world whose optimum is known -- half the items always rated 5, half always 1,
clicked equally often so that behaviour cloning is indifferent -- every method must move probability
mass toward the good items relative to π_ref, within a bounded number of steps, deterministically,
without touching π_ref.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from recsim_post.models.policy import SequencePolicy
from recsim_post.posttrain.loop import TrainConfig
from recsim_post.posttrain.recipe import METHODS, load_agent, needs_reward_model, post_train, pretrain
from recsim_post.posttrain.reward_model import TableRewardModel
from recsim_post.presets import preset_dir
from recsim_post.seeding import SeedTree

N_ITEMS = 20
GOOD = np.arange(N_ITEMS) % 2 == 0


def bandit_clicks(n_users: int = 60, per_user: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    items = rng.integers(0, N_ITEMS, n_users * per_user)
    return pd.DataFrame(
        {
            "user_id": np.repeat(np.arange(n_users), per_user),
            "timestamp": np.tile(np.arange(per_user), n_users),
            "position": 0,
            "item_id": items,
            "rating": np.where(GOOD[items], 5.0, 1.0).astype(np.float32),
        }
    )


def recipe_for(method: str):
    """The method's preset recipe (the first agents/*.toml using it), shrunk to a tiny model."""
    for path in sorted(preset_dir("agents").glob("*.toml")):
        agent = load_agent(path)
        if agent.method.name == method and agent.model.kind == "sasrec":
            break
    else:
        raise AssertionError(f"no preset recipe uses method {method!r}")
    small = TrainConfig(epochs=6, batch_size=16, lr=3e-3)
    return dataclasses.replace(
        agent,
        model=dataclasses.replace(agent.model, dim=16, n_layers=1, n_heads=1, max_len=8, dropout=0.0),
        pretrain=dataclasses.replace(small, epochs=3),
        finetune=small,
    )


def good_mass(policy: SequencePolicy) -> float:
    hist = np.random.default_rng(1).integers(0, N_ITEMS, (64, 8))
    logits = policy.logits(hist).astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return float(p[:, GOOD].sum(axis=1).mean())


@pytest.fixture(scope="module")
def world():
    clicks = bandit_clicks()
    agent = recipe_for("bc")
    ref = pretrain(clicks, N_ITEMS, agent, SeedTree(0), progress=False)
    table = torch.tensor(np.where(GOOD, 5.0, 1.0), dtype=torch.float32)
    rm = TableRewardModel(table, n_members=5, member_noise=0.1, generator=torch.Generator().manual_seed(0))
    return clicks, ref, rm


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_contract(method, world):
    clicks, ref, rm = world
    module = METHODS[method]
    assert module.CONFIG().name == method and callable(module.needs_reward_model)
    assert module.__doc__ and ("L" in module.__doc__ or "=" in module.__doc__), "objective formula in the docstring"
    agent = recipe_for(method)
    before = {k: v.clone() for k, v in ref.model.state_dict().items()}
    rm_arg = rm if needs_reward_model(agent) else None
    a = post_train(ref, clicks, N_ITEMS, agent, SeedTree(3), progress=False, reward_model=rm_arg)
    b = post_train(ref, clicks, N_ITEMS, agent, SeedTree(3), progress=False, reward_model=rm_arg)
    # π_ref untouched; the copy trained; the same seed gives the same policy
    assert all(torch.equal(before[k], v) for k, v in ref.model.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in a.model.state_dict().items())
    hist = np.random.default_rng(2).integers(0, N_ITEMS, (5, 8))
    np.testing.assert_array_equal(a.logits(hist), b.logits(hist))
    # mass moves toward the items with the higher reward -- except for BC, the control, which
    # imitates clicks that are spread evenly and so stays indifferent
    m_ref, m_new = good_mass(ref), good_mass(a)
    assert 0.3 < m_ref < 0.7, f"π_ref should be near-indifferent, got {m_ref:.3f}"
    if method == "bc":
        assert abs(m_new - m_ref) < 0.1, f"bc moved mass {m_ref:.3f} -> {m_new:.3f} without rewards"
    else:
        assert m_new > m_ref + 0.05, f"{method}: mass on good items {m_ref:.3f} -> {m_new:.3f}"
    assert a.history and all(np.isfinite(r["loss"]) for r in a.history)
