"""GFlowGR end to end (posttrain/gflowgr.py): slate ids in the windows, the picked contexts, bad
input, training on the tiny bandit and a tiny story scored by the ground truth.

The losses themselves (TB / DB at the analytic optimum, torchgfn parity, flow matching on a toy
trie) are tested in tests/test_gflownet.py; the token-method contract (π_ref untouched,
deterministic, where the mass goes) in tests/test_token_policy.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from recsim_post.errors import ConfigError
from recsim_post.models import SASRecConfig, SequencePolicy, build_model
from recsim_post.posttrain import gflowgr
from recsim_post.posttrain.data import PostTrainData, make_windows
from recsim_post.posttrain.gflownet import GFlowGRConfig
from recsim_post.posttrain.loop import TrainConfig
from recsim_post.posttrain.recipe import load_agent, post_train
from recsim_post.presets import resolve
from recsim_post.seeding import SeedTree

from .bandit import N_ITEMS
from .conftest import clicks_frame, tiny_scenario
from .test_token_policy import token_agent, token_world  # noqa: F401 - the module fixture
from .test_validation import one_line_error


# ---------------------------------------------------------------- slate ids in the windows


def test_windows_carry_each_targets_slate_id_hand_checked():
    # user 0 clicks items 5, 6, 7, 8 from slates 10, 11, 12, 13; user 1 clicks 1, 2 from slates 20, 21
    clicks = clicks_frame([0, 0, 0, 0, 1, 1], [5, 6, 7, 8, 1, 2])
    clicks["slate_id"] = np.array([10, 11, 12, 13, 20, 21], np.int64)
    w = make_windows(clicks, max_len=2)
    # user 0: targets 6, 7, 8 -> windows [PAD→6] and [6→7, 7→8]; user 1: [PAD→2]
    np.testing.assert_array_equal(w.targets, [[-1, 6], [7, 8], [-1, 2]])
    np.testing.assert_array_equal(w.slate_ids, [[-1, 11], [12, 13], [-1, 21]])
    batch = next(w.batches(3, shuffle=False)).trim()
    np.testing.assert_array_equal(batch.slate_ids.numpy(), [[-1, 11], [12, 13], [-1, 21]])
    assert make_windows(clicks.drop(columns="slate_id"), max_len=2).slate_ids is None


def test_pick_contexts_takes_k_real_positions_per_window():
    mask = np.array([[False, True, True, True], [False, False, False, True], [True, True, True, True]])
    rows, cols = gflowgr.pick_contexts(mask, 2, np.random.default_rng(0))
    assert mask[rows, cols].all()
    np.testing.assert_array_equal(np.bincount(rows, minlength=3), [2, 1, 2])
    assert len(set(zip(rows, cols))) == len(rows)
    np.testing.assert_array_equal(np.stack(gflowgr.pick_contexts(mask, 0, np.random.default_rng(0))),
                                  np.stack(np.nonzero(mask)))


# ---------------------------------------------------------------- bad input


def test_an_item_level_gflowgr_recipe_is_refused_in_one_line():
    agent = load_agent(resolve("agents", "gflowgr-tb"))
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(agent, generate="item")
    assert "'gflowgr' works on semantic-ID tokens only" in one_line_error(err.value)
    item_policy = SequencePolicy(build_model(SASRecConfig(dim=8, n_layers=1, n_heads=1, max_len=4), N_ITEMS), N_ITEMS)
    clicks = clicks_frame([0, 0, 0], [1, 2, 3])
    with pytest.raises(ConfigError) as err:
        gflowgr.train(item_policy, PostTrainData(clicks, N_ITEMS), GFlowGRConfig(), TrainConfig(epochs=1), SeedTree(0),
                      progress=False)
    assert "use it with generate = 'token'" in one_line_error(err.value)


def test_recipes_set_their_objective_and_state_it():
    for name, objective in (("gflowgr-tb", "tb"), ("gflowgr-db", "db")):
        agent = load_agent(resolve("agents", name))
        assert agent.generate == "token" and agent.method.name == "gflowgr" and agent.method.objective == objective
        assert f"N = {agent.method.n_augment}" in agent.description


# ---------------------------------------------------------------- training


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["tb", "db"])
def test_gflowgr_trains_its_residual_falls_and_the_heads_stay_behind(objective, token_world):  # noqa: F811
    bandit, ref, _ = token_world
    agent = token_agent(f"gflowgr-{objective}", epochs=4)
    policy = post_train(ref, bandit.clicks, N_ITEMS, agent, SeedTree(3), progress=False)
    rows = [r for r in policy.history if r["stage"] == "gflowgr"]
    assert len(rows) == 4
    residual = "tb_abs_residual" if objective == "tb" else "db_abs_residual"
    assert rows[-1][residual] < rows[0][residual]
    for key in ("sft", "gfn", "reward_outcome", "reward_collab", "reward_prefix", "log_reward", "share_clicked",
                "share_shown", "share_random", "share_curriculum", "share_on_policy",
                "log_z" if objective == "tb" else "log_f0"):
        assert np.isfinite(rows[-1][key]), key
    # five samplers of equal weight; the bandit has no slates, so "shown" falls back to random
    assert rows[-1]["share_shown"] == 0.0 and rows[-1]["share_random"] > rows[-1]["share_clicked"]
    # the saved policy is the token policy alone (no log Z / log F head)
    assert set(policy.model.state_dict()) == set(ref.model.state_dict())


@pytest.mark.slow
def test_gflowgr_with_slates_reads_the_shown_items():
    """Clicks with their slates (an impressions frame): the shown sampler draws from them."""
    rng = np.random.default_rng(0)
    users, items, slates, rows = [], [], [], []
    for u in range(30):
        for t in range(8):
            slate = rng.choice(N_ITEMS, 4, replace=False)
            sid = u * 100 + t
            users.append(u), items.append(slate[0]), slates.append(sid)
            rows += [(sid, p, int(i), int(p == 0)) for p, i in enumerate(slate)]
    clicks = clicks_frame(users, items, np.full(len(users), 4.0))
    clicks["slate_id"] = np.array(slates, np.int64)
    interactions = pd.DataFrame(rows, columns=["slate_id", "position", "item_id", "click"])
    from .test_token_policy import semantic_ids
    from recsim_post.posttrain.recipe import pretrain

    ids = semantic_ids(np.column_stack([np.arange(N_ITEMS) % 4, np.arange(N_ITEMS) // 4]), (4, 5))
    ref = pretrain(clicks, N_ITEMS, token_agent("sft-token", epochs=1), SeedTree(0), progress=False, semantic_ids=ids)
    policy = post_train(ref, clicks, N_ITEMS, token_agent("gflowgr-tb", epochs=1), SeedTree(0), progress=False,
                        interactions=interactions)
    row = policy.history[-1]
    assert row["share_shown"] > 0.1
    assert row["reward_outcome"] < 0.5 * (2.0 + 0.5)  # shown-not-clicked items pull the outcome term down


@pytest.mark.slow
def test_a_tiny_story_scores_token_recipes_and_gflowgr_through_the_ground_truth_deterministically():
    """One pair of tiny stories for every token recipe kind (it used to be two pairs, one per file)."""
    from recsim_post.experiments.story import run_story
    from recsim_post.models.token import TokenPolicy

    agents = [token_agent("sft-token", 1), token_agent("exp-rsft-token", 1), token_agent("gflowgr-tb", 1),
              token_agent("gflowgr-db", 1)]
    a = run_story(tiny_scenario(), agents, progress=False)
    b = run_story(tiny_scenario(), agents, progress=False)
    assert a.frame.equals(b.frame)
    rows = a.frame.set_index("method")
    for name in ("sft-token", "exp-rsft-token"):
        assert np.isfinite(rows.loc[name, "true_value"]) and np.isfinite(rows.loc[name, "ndcg@10"])
        assert isinstance(a.policies[name], TokenPolicy)
    assert a.semantic_ids is not None and a.semantic_ids.n_items == a.simulation.public.n_items
    np.testing.assert_array_equal(a.semantic_ids.codes, b.semantic_ids.codes)
    for name in ("gflowgr-tb", "gflowgr-db"):
        assert np.isfinite(rows.loc[name, "true_value"]) and np.isfinite(rows.loc[name, "ndcg@10"])
        history = a.policies[name].history[-1]
        assert history["share_shown"] > 0  # the story hands the impressions over: real slates
        for k, v in a.policies[name].model.state_dict().items():
            assert torch.equal(v, b.policies[name].model.state_dict()[k])
