"""Windows, the training loop, the methods and the recipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_post.config import from_dict
from recsim_post.errors import ConfigError
from recsim_post.models import SASRecConfig, SequencePolicy, build_model
from recsim_post.posttrain import (
    METHODS,
    AgentConfig,
    BCConfig,
    ExpRSFTConfig,
    TrainConfig,
    load_agent,
    make_windows,
    post_train,
    pretrain,
)
from recsim_post.seeding import SeedTree

from . import bandit
from .bandit import draw_bandit, good_mass
from .conftest import clicks_frame

ROOT = Path(__file__).resolve().parents[1]
PAD = -1




# ---------------------------------------------------------------- windows


def test_windows_hand_example():
    # User 7 clicks 10..15 (6 clicks -> 5 targets), user 3 clicks 20 only (no target), user 9 clicks 30, 31.
    users = [7] * 6 + [3] + [9, 9]
    items = [10, 11, 12, 13, 14, 15, 20, 30, 31]
    ratings = [1, 2, 3, 4, 5, np.nan, 1, 2, 4]
    w = make_windows(clicks_frame(users, items, ratings), max_len=3)
    # User 7: windows from the most recent end, overlapping by one: [12 13 14 15] and [10 11 12].
    np.testing.assert_array_equal(w.inputs, [[PAD, 10, 11], [12, 13, 14], [PAD, PAD, 30]])
    np.testing.assert_array_equal(w.targets, [[PAD, 11, 12], [13, 14, 15], [PAD, PAD, 31]])
    np.testing.assert_array_equal(w.mask, w.targets != PAD)
    np.testing.assert_array_equal(w.rewards, [[np.nan, 2, 3], [4, 5, np.nan], [np.nan, np.nan, 4]])
    np.testing.assert_array_equal(w.users, [7, 7, 9])


def naive_windows(users, items, ratings, max_len):
    rows = []
    for u in dict.fromkeys(users):
        idx = [i for i, x in enumerate(users) if x == u]
        s, r = [items[i] for i in idx], [ratings[i] for i in idx]
        ends = list(range(len(s), 1, -max_len))[::-1]  # exclusive end of each window
        for end in ends:
            start = max(end - max_len - 1, 0)
            w, wr = s[start:end], r[start:end]
            pad = max_len + 1 - len(w)
            rows.append(([PAD] * pad + w[:-1], [PAD] * pad + w[1:], [np.nan] * pad + wr[1:], u))
    return rows


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    max_len=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_windows_match_a_plain_loop(lengths, max_len, seed):
    rng = np.random.default_rng(seed)
    users = np.repeat(rng.permutation(100)[: len(lengths)], lengths).tolist()
    items = rng.integers(0, 50, len(users)).tolist()
    ratings = rng.integers(1, 6, len(users)).astype(float).tolist()
    w = make_windows(clicks_frame(users, items, ratings), max_len=max_len)
    expected = naive_windows(users, items, ratings, max_len)
    assert len(w) == len(expected)
    for i, (inp, tgt, rew, u) in enumerate(expected):
        np.testing.assert_array_equal(w.inputs[i], inp)
        np.testing.assert_array_equal(w.targets[i], tgt)
        np.testing.assert_array_equal(w.rewards[i], np.asarray(rew, np.float32))
        assert w.users[i] == u
    # Every target appears exactly once.
    assert w.mask.sum() == sum(n - 1 for n in lengths)


def test_windows_reject_bad_input():
    from recsim_post.errors import LogError

    with pytest.raises(LogError, match="together"):
        make_windows(clicks_frame([1, 2, 1], [0, 1, 2]), max_len=4)
    with pytest.raises(LogError, match="catalogue"):
        make_windows(clicks_frame([1, 1], [0, 9]), max_len=4, n_items=5)


def test_batches_are_seeded():
    w = make_windows(clicks_frame(np.repeat(np.arange(20), 5), np.arange(100) % 17), max_len=4)
    order = lambda s: [b.inputs.tolist() for b in w.batches(6, torch.Generator().manual_seed(s))]  # noqa: E731
    assert order(1) == order(1) and order(1) != order(2)
    assert sum(len(b.inputs) for b in w.batches(6, torch.Generator().manual_seed(1))) == len(w)


# ---------------------------------------------------------------- training

N_ITEMS = 20
TINY = AgentConfig(
    name="tiny",
    model=SASRecConfig(dim=16, n_layers=1, n_heads=2, max_len=8, dropout=0.1),
    pretrain=TrainConfig(epochs=2, batch_size=16, lr=3e-3, device="cpu"),
    method=ExpRSFTConfig(lam=0.5),
    finetune=TrainConfig(epochs=2, batch_size=16, lr=3e-3, device="cpu"),
)


def random_clicks(n_users=40, n_clicks=10, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), n_clicks)
    items = rng.integers(0, N_ITEMS, len(users))
    return clicks_frame(users, items, rng.integers(1, 6, len(users)).astype(float))


def params(policy: SequencePolicy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.model.state_dict().items()}


def test_same_seed_same_parameters_different_seed_different():
    clicks = random_clicks()
    state = torch.random.get_rng_state()
    a = post_train(pretrain(clicks, N_ITEMS, TINY, SeedTree(5), progress=False), clicks, N_ITEMS, TINY, SeedTree(5), progress=False)
    b = post_train(pretrain(clicks, N_ITEMS, TINY, SeedTree(5), progress=False), clicks, N_ITEMS, TINY, SeedTree(5), progress=False)
    c = post_train(pretrain(clicks, N_ITEMS, TINY, SeedTree(6), progress=False), clicks, N_ITEMS, TINY, SeedTree(6), progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)  # no global RNG used
    pa, pb, pc = params(a), params(b), params(c)
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name
    assert any(not torch.equal(pa[n], pc[n]) for n in pa)
    assert a.history == b.history
    assert [h["stage"] for h in a.history] == ["bc", "bc", "exp-rsft", "exp-rsft"]


def test_fine_tuning_changes_parameters_and_leaves_reference_alone():
    clicks = random_clicks()
    ref = pretrain(clicks, N_ITEMS, TINY, SeedTree(0), progress=False)
    before = params(ref)
    for method in (BCConfig(), ExpRSFTConfig(lam=1.0)):
        cfg = AgentConfig(name="t", model=TINY.model, pretrain=TINY.pretrain, method=method, finetune=TINY.finetune)
        tuned = post_train(ref, clicks, N_ITEMS, cfg, SeedTree(0), progress=False)
        after = params(tuned)
        changed = [n for n in after if not torch.equal(after[n], before[n])]
        assert "item_emb.weight" in changed and len(changed) >= len(after) // 2, method
        for n, v in params(ref).items():
            assert torch.equal(v, before[n])  # π_ref untouched


def test_post_train_rejects_a_mismatched_model_section():
    clicks = random_clicks(n_users=5)
    ref = SequencePolicy(build_model(TINY.model, N_ITEMS), N_ITEMS)
    other = AgentConfig(model=SASRecConfig(dim=32, n_layers=1, n_heads=2, max_len=8), method=BCConfig())
    with pytest.raises(ConfigError, match="model"):
        post_train(ref, clicks, N_ITEMS, other, SeedTree(0), progress=False)


def test_exp_rsft_prefers_well_rated_items_over_bc():
    """Known optimum (the tiny bandit of tests/bandit.py): items 0..9 are always rated 5, items
    10..19 always 1, and every item is clicked equally often at random. BC should stay near 50 %
    mass on the good half; exp-RSFT with a small λ must move clearly more mass there."""
    world = draw_bandit(150, 12, hist_len=12)
    clicks, n_items = world.clicks, bandit.N_ITEMS
    base = dict(
        name="learn",
        model=SASRecConfig(dim=16, n_layers=1, n_heads=2, max_len=12, dropout=0.0),
        pretrain=TrainConfig(epochs=3, batch_size=32, lr=3e-3, device="cpu"),
        finetune=TrainConfig(epochs=8, batch_size=32, lr=3e-3, device="cpu"),
    )
    ref = pretrain(clicks, n_items, AgentConfig(method=BCConfig(), **base), SeedTree(0), progress=False)
    bc = post_train(ref, clicks, n_items, AgentConfig(method=BCConfig(), **base), SeedTree(0), progress=False)
    exp = post_train(ref, clicks, n_items, AgentConfig(method=ExpRSFTConfig(lam=0.5), **base), SeedTree(0), progress=False)

    m_bc, m_exp = good_mass(bc, world.histories), good_mass(exp, world.histories)
    assert 0.4 < m_bc < 0.6, m_bc
    assert m_exp > m_bc + 0.2, (m_bc, m_exp)


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "data, key",
    [
        ({"pretrain": {"epochz": 3}}, "pretrain.epochz"),
        ({"model": {"dim": 64, "width": 3}}, "model.width"),
        ({"method": {"name": "exp-rsft", "lam": 0.0}}, "method.lam"),
        ({"method": {"name": "exp-rsft", "lam": -1.0}}, "method.lam"),
        ({"method": {"name": "exp-rsft", "normalize": "sum"}}, "method.normalize"),
        ({"method": {"name": "telepathy"}}, "method.name"),
        ({"method": {"lam": 1.0}}, "method.name"),
        ({"finetune": {"device": "tpu"}}, "finetune.device"),
        ({"finetune": {"lr": 0}}, "finetune.lr"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_config_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as info:
        from_dict(AgentConfig, data)
    msg = str(info.value)
    assert key in msg and "\n" not in msg


def test_unknown_method_lists_known_ones():
    with pytest.raises(ConfigError) as info:
        from_dict(AgentConfig, {"method": {"name": "telepathy"}})
    for name in METHODS:
        assert repr(name) in str(info.value)


def test_agent_presets_load_and_share_pi_ref_sections():
    agents = {p.stem: load_agent(p) for p in sorted((ROOT / "agents").glob("*.toml"))}
    assert {"bc", "exp-rsft"} <= set(agents)
    assert agents["bc"].method == BCConfig()
    assert isinstance(agents["exp-rsft"].method, ExpRSFTConfig) and agents["exp-rsft"].method.lam == 1.0
    for cfg in agents.values():
        assert cfg.name and cfg.description
        # one π_ref for every SASRec recipe: same model and pre-training; same fine-tuning budget
        if cfg.model.kind == "sasrec":
            assert cfg.model == agents["bc"].model
        assert cfg.pretrain == agents["bc"].pretrain
        assert cfg.finetune.epochs == agents["bc"].finetune.epochs


def test_load_agent_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_agent(ROOT / "agents" / "nope.toml")
