"""HSTU backbone: pointwise attention by hand, shapes, causality, padding, seeding, BC, recipe."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsim_post.errors import ConfigError
from recsim_post.models import (
    HSTU,
    HSTUConfig,
    SequencePolicy,
    build_model,
    model_config_from_dict,
    pointwise_attention_weights,
)
from recsim_post.models.hstu import relative_position_buckets, time_gap_buckets
from recsim_post.posttrain.bc import bc_loss
from recsim_post.posttrain.data import PostTrainData
from recsim_post.posttrain.loop import TrainConfig
from recsim_post.posttrain.recipe import AgentConfig, load_agent, pretrain
from recsim_post.seeding import SeedTree

ROOT = Path(__file__).resolve().parents[1]
PAD = -1
N_ITEMS = 30
CFG = HSTUConfig(dim=16, n_layers=2, n_heads=2, max_len=8, dropout=0.1, n_pos_buckets=4)


def make_model(seed: int = 0, cfg: HSTUConfig = CFG) -> HSTU:
    return build_model(cfg, N_ITEMS, torch.Generator().manual_seed(seed)).eval()


def hist_batch() -> torch.Tensor:
    return torch.tensor(
        [
            [PAD, PAD, PAD, 3, 7, 1, 0, 29],
            [4, 4, 5, 6, 7, 8, 9, 10],
            [PAD] * 8,
            [PAD] * 7 + [12],
        ]
    )


def silu(x: float) -> float:
    return x / (1.0 + math.exp(-x))


# ---------------------------------------------------------------- pointwise attention, by hand


def test_attention_weights_hand_example_no_softmax():
    # Two tokens, one head of width 2: q1 = (1, 0), q2 = (0, 2); k1 = (1, 0), k2 = (1, 1).
    # Scores QKᵀ = [[1, 1], [0, 2]]; causal keeps (1,1), (2,1), (2,2); norm n = 2.
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    k = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    causal = torch.tensor([[True, False], [True, True]])
    w = pointwise_attention_weights(q, k, 0.0, causal, 2.0)
    expected = torch.tensor([[silu(1.0) / 2, 0.0], [silu(0.0) / 2, silu(2.0) / 2]])
    torch.testing.assert_close(w, expected)
    assert abs(w[0].sum().item() - 0.36553) < 1e-4 and abs(w[1].sum().item() - 0.88080) < 1e-4  # not 1
    # The bias enters before SiLU, and SiLU lets a weight go negative (softmax never would).
    bias = torch.tensor([[0.5, 9.0], [-1.0, 0.0]])
    w = pointwise_attention_weights(q, k, bias, causal, 2.0)
    expected = torch.tensor([[silu(1.5) / 2, 0.0], [silu(-1.0) / 2, silu(2.0) / 2]])
    torch.testing.assert_close(w, expected)
    assert w[1, 0] < 0
    # Scaling q scales no row back to a distribution: the weights change pointwise, not by a ratio.
    w2 = pointwise_attention_weights(3 * q, k, 0.0, causal, 2.0)
    torch.testing.assert_close(w2[1, 1], torch.tensor(silu(6.0) / 2))
    # A per-query norm (the "attended" count) and an all-masked row.
    none = torch.zeros(2, 2, dtype=torch.bool)
    assert torch.equal(pointwise_attention_weights(q, k, 0.0, none, 1.0), torch.zeros(2, 2))
    w = pointwise_attention_weights(q, k, 0.0, causal, torch.tensor([[1.0], [2.0]]))
    torch.testing.assert_close(w, torch.tensor([[silu(1.0), 0.0], [0.0, silu(2.0) / 2]]))


def test_relative_position_buckets_hand_values():
    d = torch.tensor([0, 1, 2, 3, 4, 7, 8, 15, 100])
    # 4 buckets up to distance 16: 0 and 1 exact, then 2 + floor(log(d/2) / log(8) * 2), at most 3:
    # d = 4 -> 2 + floor(0.67) = 2, d = 7 -> 2 + floor(1.20) = 3.
    np.testing.assert_array_equal(relative_position_buckets(d, 4, 16).numpy(), [0, 1, 2, 2, 2, 3, 3, 3, 3])
    # As many buckets as max_len: every distance exact.
    np.testing.assert_array_equal(relative_position_buckets(d[:6], 8, 8).numpy(), [0, 1, 2, 3, 4, 7])
    b = relative_position_buckets(torch.arange(50), 32, 50)
    assert (b.diff() >= 0).all() and b.min() == 0 and b.max() <= 31


def test_time_gap_buckets_hand_values():
    t = torch.tensor([[0, 6, 8, 10, 1000]])
    b = time_gap_buckets(t, 6)
    # floor(log2(1 + gap)): query t = 10 sees gaps 10, 4, 2, 0 -> 3, 2, 1, 0 (and a negative gap -> 0).
    np.testing.assert_array_equal(b[0, 3].numpy(), [3, 2, 1, 0, 0])
    # Query t = 1000: gaps of about 1000 -> floor(log2(1001)) = 9, clamped to the last bucket 5.
    np.testing.assert_array_equal(b[0, 4].numpy(), [5, 5, 5, 5, 0])


# ---------------------------------------------------------------- the model


def test_logits_shape_and_finite_including_all_pad_row():
    logits = make_model()(hist_batch())
    assert logits.shape == (4, 8, N_ITEMS)
    assert torch.isfinite(logits).all()
    assert make_model().encode(hist_batch()).shape == (4, 8, CFG.dim)
    assert torch.isfinite(make_model()(torch.full((2, 1), PAD))).all()


@pytest.mark.parametrize("attn_norm", ["max_len", "attended"])
def test_causal_later_items_do_not_change_earlier_positions(attn_norm):
    model = make_model(cfg=replace(CFG, attn_norm=attn_norm))
    x = hist_batch()
    y = x.clone()
    y[:, 5] = torch.tensor([11, 12, 13, 14])  # rows 2 and 3 gain a real item at column 5
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=0)
    assert not torch.allclose(a[:2, 5:], b[:2, 5:])


@pytest.mark.parametrize("attn_norm", ["max_len", "attended"])
def test_padding_does_not_change_real_positions(attn_norm):
    model = make_model(cfg=replace(CFG, attn_norm=attn_norm))
    x = hist_batch()[:1]  # its first three columns are padding
    full = model(x)
    trimmed = model(x[:, 3:])  # the training loop drops all-padding columns
    torch.testing.assert_close(full[:, 3:], trimmed, rtol=1e-5, atol=1e-5)
    short = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[PAD, PAD, PAD, PAD, 5, 6, 7]])  # extra left padding
    torch.testing.assert_close(model(padded)[:, 4:], model(short), rtol=1e-5, atol=1e-5)


def test_attn_norm_changes_the_model():
    x = hist_batch()
    a = make_model()(x)
    b = make_model(cfg=replace(CFG, attn_norm="attended"))(x)
    assert not torch.allclose(a[:2], b[:2])


def test_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = make_model(1), make_model(1), make_model(2)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.item_emb.weight, c.item_emb.weight)
    assert not torch.equal(a.layers[0].pos_bias, c.layers[0].pos_bias)
    assert torch.equal(a.item_emb.weight[0], torch.zeros(CFG.dim))  # padding row
    # Dropout masks come from the generator passed to forward.
    model = make_model(1).train()
    out = lambda s: model(hist_batch(), generator=torch.Generator().manual_seed(s))  # noqa: E731
    assert torch.equal(out(5), out(5)) and not torch.allclose(out(5), out(6))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_tied_output_embedding():
    model = make_model()
    h = torch.randn(3, CFG.dim, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.score(h), h @ model.item_emb.weight[1:].T)
    x = hist_batch()
    torch.testing.assert_close(model(x), model.score(model.encode(x)))


def test_time_bias_is_optional_and_used_when_given():
    x = hist_batch()[:2]
    t = torch.tensor([[0, 0, 0, 1, 2, 4, 8, 100], [0, 1, 2, 3, 50, 51, 52, 53]])
    with pytest.raises(ValueError, match="n_time_buckets"):
        make_model()(x, timestamps=t)
    model = make_model(cfg=replace(CFG, n_time_buckets=8))
    plain = model(x)
    assert torch.isfinite(plain).all()
    timed = model(x, timestamps=t)
    assert torch.isfinite(timed).all() and not torch.allclose(plain, timed)
    # Only gaps matter: shifting every timestamp of a row changes nothing.
    torch.testing.assert_close(model(x, timestamps=t + 1000), timed)
    with pytest.raises(ValueError, match="shape"):
        model(x, timestamps=t[:, 1:])


def test_config_validation_names_the_key():
    for bad, key in [
        ({"dim": 16, "n_heads": 3}, "n_heads"),
        ({"n_pos_buckets": 1}, "n_pos_buckets"),
        ({"n_time_buckets": -1}, "n_time_buckets"),
        ({"attn_norm": "softmax"}, "attn_norm"),
        ({"dropout": 1.0}, "dropout"),
        ({"abs_pos": 1}, "abs_pos"),
    ]:
        with pytest.raises(ConfigError) as info:
            HSTUConfig(**bad)
        assert key in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="hstu"):
        model_config_from_dict({"kind": "transformer"})
    with pytest.raises(ConfigError, match="model.n_heads"):
        model_config_from_dict({"kind": "hstu", "n_heads": 5})
    assert model_config_from_dict({"kind": "hstu", "dim": 32}) == HSTUConfig(dim=32)


def test_sequence_policy_save_load_roundtrip(tmp_path):
    policy = SequencePolicy(make_model(), N_ITEMS)
    path = tmp_path / "hstu.pt"
    policy.save(path)
    loaded = SequencePolicy.load(path)
    hist = hist_batch().numpy()
    assert loaded.config == CFG and isinstance(loaded.model, HSTU)
    np.testing.assert_array_equal(loaded.logits(hist), policy.logits(hist))


# ---------------------------------------------------------------- training and the recipe


def cyclic_clicks(n_users: int = 40, n_clicks: int = 12, n_items: int = 20) -> pd.DataFrame:
    """Every user walks the catalogue in order from a user-specific start: the next item is learnable."""
    users = np.repeat(np.arange(n_users), n_clicks)
    items = (users * 7 + np.tile(np.arange(n_clicks), n_users)) % n_items
    n = len(users)
    return pd.DataFrame(
        {
            "user_id": users.astype(np.int32),
            "timestamp": np.arange(n, dtype=np.int32),
            "position": np.zeros(n, np.int16),
            "item_id": items.astype(np.int32),
            "rating": np.ones(n, np.float32),
        }
    )


def window_nll(policy: SequencePolicy, data: PostTrainData) -> float:
    w = data.windows(policy.max_len)
    with torch.no_grad():
        logits = policy.model.eval()(torch.as_tensor(w.inputs))
        loss, _ = bc_loss(logits, torch.as_tensor(w.targets), torch.as_tensor(w.mask))
    return float(loss)


def test_bc_pretraining_reduces_nll():
    clicks = cyclic_clicks()
    agent = AgentConfig(
        name="tiny-hstu",
        model=HSTUConfig(dim=16, n_layers=1, n_heads=2, max_len=8, dropout=0.0),
        pretrain=TrainConfig(epochs=8, batch_size=16, lr=1e-2, device="cpu"),
    )
    seed = SeedTree(0)
    untrained = pretrain(clicks, 20, replace(agent, pretrain=TrainConfig(epochs=0)), seed, progress=False)
    trained = pretrain(clicks, 20, agent, seed, progress=False)
    data = PostTrainData(clicks, 20)
    before, after = window_nll(untrained, data), window_nll(trained, data)
    assert abs(before - math.log(20)) < 0.1  # near-uniform at initialisation
    assert after < 0.5 * before, (before, after)
    assert isinstance(trained.model, HSTU)
    assert [h["stage"] for h in trained.history] == ["bc"] * 8
    # Same seed, same weights.
    again = pretrain(clicks, 20, agent, seed, progress=False)
    for (name, a), b in zip(trained.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_recipe_loads_with_the_hstu_backbone():
    agent = load_agent(ROOT / "agents" / "bc-hstu.toml")
    bc = load_agent(ROOT / "agents" / "bc.toml")
    assert isinstance(agent.model, HSTUConfig) and agent.model.dim == 64
    assert agent.method == bc.method
    assert agent.pretrain == bc.pretrain and agent.finetune == bc.finetune
