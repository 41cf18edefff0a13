"""Reward models: the table model, the learned ensemble on π_ref's backbone, and the mean baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsim_post.config import from_dict
from recsim_post.errors import ConfigError, LogError
from recsim_post.models import SASRecConfig
from recsim_post.posttrain.data import PostTrainData
from recsim_post.posttrain.reward_model import (
    EnsembleHead,
    GlobalMeanReward,
    ItemMeanReward,
    RewardModel,
    RewardModelConfig,
    TableRewardModel,
    UserMeanReward,
    bootstrap_weights,
    candidate_member_scores,
    ensemble_mean_scores,
    fit_reward_model,
    mean_std,
    reward_mse_loss,
)
from recsim_post.seeding import SeedTree

from .bandit import GOOD, N_ITEMS, draw_bandit, reference
from .conftest import clicks_frame

PAD = -1
MAX_LEN = 8
FAST = RewardModelConfig(members=5, epochs=30, batch_size=128, lr=1e-2, device="cpu")


@pytest.fixture(scope="module")
def world():
    """π_ref pre-trained briefly by BC on the clicks of the tiny bandit (tests/bandit.py: items 0..9
    good, 10..19 bad), rated 1 + 4·[item is good] + N(0, 0.5²), and the ensemble fitted on them."""
    clicks = draw_bandit(100, 12, noise=0.5).clicks
    model = SASRecConfig(dim=16, n_layers=1, n_heads=2, max_len=MAX_LEN, dropout=0.0)
    ref = reference(clicks, model, epochs=2, batch_size=32)
    ens = fit_reward_model(ref, PostTrainData(clicks, N_ITEMS), FAST, SeedTree(1), progress=False)
    return clicks, ref, ens


# ---------------------------------------------------------------- table model and protocol


def test_table_reward_model_shapes_and_noise():
    table = torch.arange(N_ITEMS, dtype=torch.float32)
    model = TableRewardModel(table, n_members=3, member_noise=0.1, generator=torch.Generator().manual_seed(0))
    assert isinstance(model, RewardModel)
    s = model.member_scores(torch.full((4, 6), PAD))
    assert s.shape == (3, 4, 6, N_ITEMS)
    mean, std = mean_std(s)
    assert mean.shape == std.shape == (4, 6, N_ITEMS)
    assert torch.allclose(mean, table.expand(4, 6, N_ITEMS), atol=0.3) and (std > 0).all()
    exact = TableRewardModel(table, n_members=2).member_scores(torch.zeros(1, 1, dtype=torch.long))
    assert torch.equal(exact[0, 0, 0], table) and torch.equal(exact[1, 0, 0], table)


def test_mean_std_is_the_population_std():
    s = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    mean, std = mean_std(s)
    assert torch.allclose(mean, torch.tensor([2.0, 4.0])) and torch.allclose(std, torch.tensor([1.0, 2.0]))


# ---------------------------------------------------------------- the loss, by hand


def test_reward_mse_loss_hand_computed():
    pred = torch.tensor([[2.0, 0.0, 3.5], [1.0, 9.0, 2.0]])  # (E=2, N=3)
    ratings = torch.tensor([1.0, float("nan"), 3.0])  # the middle target is unrated
    weights = torch.tensor([[1.0, 5.0, 2.0], [0.0, 1.0, 3.0]])
    loss, m = reward_mse_loss(pred, ratings, None, weights)
    # member 0: (1·(2-1)² + 2·(3.5-3)²)/2 = (1 + 0.5)/2 = 0.75; member 1: (0·0 + 3·(2-3)²)/2 = 1.5
    assert loss.item() == pytest.approx(0.75 + 1.5)
    # unweighted: member 0 (1 + 0.25)/2, member 1 (0 + 1)/2 -> mean over members 0.5625
    assert m["mse"].item() == pytest.approx((0.625 + 0.5) / 2)
    # member mean: [1.5, ·, 2.75] -> ((0.5)² + (0.25)²)/2
    assert m["ensemble_mse"].item() == pytest.approx((0.25 + 0.0625) / 2)
    assert m["spread"].item() == pytest.approx((0.5 + 0.75) / 2)
    assert m["bias"].item() == pytest.approx((0.5 - 0.25) / 2)
    assert m["n"].item() == 2
    # A mask removes positions too; without weights every member counts once.
    loss2, _ = reward_mse_loss(pred, ratings, torch.tensor([True, True, False]))
    assert loss2.item() == pytest.approx((2 - 1) ** 2 + (1 - 1) ** 2)
    assert all(torch.isfinite(v) for v in m.values())


def test_reward_mse_loss_gradient_ignores_unrated_targets():
    pred = torch.tensor([[2.0, 0.0]], requires_grad=True)
    loss, _ = reward_mse_loss(pred, torch.tensor([1.0, float("nan")]))
    loss.backward()
    assert pred.grad.tolist() == [[2.0, 0.0]]  # d/dp (p - 1)² = 2 at p = 2; nothing for the NaN


def test_bootstrap_weights():
    g = torch.Generator().manual_seed(0)
    p = bootstrap_weights(2000, 4, "poisson", g)
    assert p.shape == (4, 2000) and (p >= 0).all() and torch.equal(p, p.round())
    assert abs(p.mean().item() - 1.0) < 0.05 and abs(p.var().item() - 1.0) < 0.1
    m = bootstrap_weights(50, 3, "multinomial", g)
    assert m.shape == (3, 50) and torch.equal(m.sum(1), torch.full((3,), 50.0))
    assert not torch.equal(m[0], m[1])


# ---------------------------------------------------------------- shapes


def test_head_full_catalogue_matches_per_item_scores():
    g = torch.Generator().manual_seed(0)
    for kind in ("bilinear", "mlp"):
        bias = torch.tensor([1.0, 2.0, 3.0])
        head = EnsembleHead(3, 8, N_ITEMS, kind, hidden=5, init_std=0.5, init_bias=bias, generator=g)
        with torch.no_grad():
            head.b.normal_(generator=g)
            head.g.normal_(generator=g)
        h = torch.randn(2, 4, 8, generator=g)
        vecs = torch.randn(N_ITEMS, 8, generator=g)
        full = head(h, vecs)
        assert full.shape == (3, 2, 4, N_ITEMS)
        items = torch.randint(0, N_ITEMS, (2, 4), generator=g)
        picked = head(h, vecs, items)
        assert picked.shape == (3, 2, 4)
        assert torch.allclose(full.gather(-1, items.expand(3, 2, 4).unsqueeze(-1)).squeeze(-1), picked, atol=1e-5)


def test_ensemble_shapes_and_protocol(world):
    _, _, ens = world
    assert isinstance(ens, RewardModel)
    assert (ens.n_members, ens.n_items, ens.max_len) == (5, N_ITEMS, MAX_LEN)
    inputs = torch.tensor([[PAD, PAD, 3, 4], [1, 2, 3, 4], [PAD, PAD, PAD, 7]])
    s = ens.member_scores(inputs)
    assert s.shape == (5, 3, 4, N_ITEMS) and s.dtype == torch.float32 and not s.requires_grad
    assert torch.isfinite(s).all()
    # predict() is member_scores at the last position, for the given items.
    items = np.array([0, 11, 19])
    mean, std = ens.predict(inputs.numpy(), items)
    m, sd = mean_std(s[:, :, -1])
    np.testing.assert_allclose(mean, m[np.arange(3), items].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, sd[np.arange(3), items].numpy(), rtol=1e-4, atol=1e-5)
    # Longer histories are truncated to max_len, shorter ones left-padded: extra PAD changes nothing.
    long = np.c_[np.zeros((3, 5), np.int64), inputs.numpy()]
    np.testing.assert_allclose(ens.predict(long[:, -MAX_LEN:], items)[0], ens.predict(long, items)[0], atol=1e-6)
    np.testing.assert_allclose(ens.predict(inputs.numpy()[:, 2:], items[[0, 1, 2]])[0][[0, 2]], mean[[0, 2]], atol=1e-5)
    with pytest.raises(ValueError):
        ens.predict(inputs.numpy(), np.array([0, 1]))
    with pytest.raises(ValueError):
        ens.predict(inputs.numpy(), np.array([0, 1, N_ITEMS]))


def test_mean_and_candidate_scores_equal_the_full_member_scores(world):
    """What DPO/IPO (K candidates) and PPO/GRPO/exp-RSFT (the member mean) read off the ensemble
    without scoring every item E times: the numbers of member_scores, to float rounding; the table
    model (no shortcuts) goes through the generic fallback."""
    _, _, ens = world
    g = torch.Generator().manual_seed(3)
    inputs = torch.tensor([[PAD, PAD, 3, 4], [1, 2, 3, 4], [PAD, PAD, PAD, 7]])
    cand = torch.randint(0, N_ITEMS, (3, 4, 6), generator=g)
    table = TableRewardModel(torch.arange(N_ITEMS, dtype=torch.float32), member_noise=1.0, generator=g)
    for model in (ens, table):
        full = model.member_scores(inputs)
        mean = ensemble_mean_scores(model, inputs)
        assert mean.shape == (3, 4, N_ITEMS)
        assert torch.allclose(mean, full.mean(0), atol=1e-5)
        picked = candidate_member_scores(model, inputs, cand)
        assert picked.shape == (5, 3, 4, 6)
        assert torch.allclose(picked, full.gather(-1, cand.expand(5, 3, 4, 6)), atol=1e-5)
    # by hand for the table model: member m's score of item y is its table entry, whatever the history
    picked = candidate_member_scores(table, inputs, cand)
    assert torch.equal(picked[2, 1, 3], table.members[2, cand[1, 3]])
    for kind in ("bilinear", "mlp"):  # both heads are linear in their user factor
        head = EnsembleHead(3, 8, N_ITEMS, kind, hidden=5, init_std=0.5, init_bias=torch.tensor([1.0, 2.0, 3.0]), generator=g)
        with torch.no_grad():
            head.b.normal_(generator=g)
            head.g.normal_(generator=g)
        h, vecs = torch.randn(2, 4, 8, generator=g), torch.randn(N_ITEMS, 8, generator=g)
        assert torch.allclose(head.mean_forward(h, vecs), head(h, vecs).mean(0), atol=1e-5)
        c = torch.randint(0, N_ITEMS, (2, 4, 3), generator=g)
        assert torch.allclose(head.candidate_forward(h, vecs, c), head(h, vecs).gather(-1, c.expand(3, 2, 4, 3)), atol=1e-5)


# ---------------------------------------------------------------- learning


def test_ensemble_learns_good_items_and_beats_the_global_mean(world):
    clicks, _, ens = world
    rng = np.random.default_rng(123)
    hist = rng.integers(0, N_ITEMS, (400, MAX_LEN))  # fresh histories: held-out pairs
    items = rng.integers(0, N_ITEMS, 400)
    truth = 1 + 4 * GOOD[items]  # expected rating
    mean, std = ens.predict(hist, items)
    rmse = np.sqrt(np.mean((mean - truth) ** 2))
    rmse_global = np.sqrt(np.mean((clicks["rating"].mean() - truth) ** 2))  # ≈ 2
    assert rmse < 0.5 * rmse_global, (rmse, rmse_global)
    # Every good item is ranked above every bad item by the ensemble mean (averaged over histories).
    per_item = mean_std(ens.member_scores(torch.from_numpy(hist[:100])))[0].mean(dim=(0, 1)).numpy()
    assert per_item[GOOD].min() > per_item[~GOOD].max(), per_item
    assert (std >= 0).all() and std.mean() < 1.0


def test_members_differ_but_agree_in_sign(world):
    _, _, ens = world
    hist = np.random.default_rng(1).integers(0, N_ITEMS, (50, MAX_LEN))
    s = ens.member_scores(torch.from_numpy(hist))[:, :, -1]  # (E, 50, n_items)
    gap = s[..., GOOD].mean(-1) - s[..., ~GOOD].mean(-1)  # (E, 50): good minus bad, per member
    assert (gap > 0).all()
    for a in range(ens.n_members):
        for b in range(a + 1, ens.n_members):
            assert not torch.allclose(s[a], s[b], atol=1e-3), (a, b)


def test_members_differ_by_seed_alone_without_bootstrap(world):
    clicks, ref, _ = world
    cfg = RewardModelConfig(members=3, epochs=2, batch_size=128, lr=1e-2, bootstrap=False, device="cpu")
    ens = fit_reward_model(ref, PostTrainData(clicks, N_ITEMS), cfg, SeedTree(0), progress=False)
    s = ens.member_scores(torch.tensor([[1, 2, 3]]))
    assert not torch.allclose(s[0], s[1])
    assert ens.head.a[0].item() == pytest.approx(ens.head.a[1].item(), abs=0.2)


def test_same_seed_same_ensemble_different_seed_different(world):
    clicks, ref, _ = world
    cfg = RewardModelConfig(members=3, epochs=3, batch_size=64, lr=1e-2, head="mlp", hidden=8, device="cpu")
    data = PostTrainData(clicks, N_ITEMS)
    state = torch.random.get_rng_state()
    a = fit_reward_model(ref, data, cfg, SeedTree(3), progress=False)
    b = fit_reward_model(ref, data, cfg, SeedTree(3), progress=False)
    c = fit_reward_model(ref, data, cfg, SeedTree(4), progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)  # no global RNG used
    x = torch.tensor([[PAD, 1, 2, 3], [4, 5, 6, 7]])
    assert torch.equal(a.member_scores(x), b.member_scores(x))
    assert not torch.allclose(a.member_scores(x), c.member_scores(x))
    assert a.history == b.history and len(a.history) == 3
    assert {"loss", "mse", "ensemble_mse", "spread", "bias", "n", "epoch"} <= set(a.history[0])


def test_fit_leaves_pi_ref_alone_and_initialises_a_at_the_mean_rating(world):
    clicks, ref, _ = world
    before = {k: v.clone() for k, v in ref.model.state_dict().items()}
    cfg = RewardModelConfig(members=2, epochs=1, batch_size=64, lr=1e-6, device="cpu")
    ens = fit_reward_model(ref, PostTrainData(clicks, N_ITEMS), cfg, SeedTree(0), progress=False)
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not p.requires_grad for p in ens.backbone.parameters())
    # With a tiny learning rate the predictions stay near the mean training rating (≈ 3).
    mean, _ = ens.predict(np.array([[1, 2, 3]]), np.array([0]))
    assert mean[0] == pytest.approx(clicks["rating"].mean(), abs=0.3)


def test_fit_rejects_a_mismatched_catalogue_and_unrated_clicks(world):
    clicks, ref, _ = world
    with pytest.raises(ConfigError, match="n_items"):
        fit_reward_model(ref, PostTrainData(clicks, N_ITEMS + 1), FAST, SeedTree(0), progress=False)
    unrated = clicks.assign(rating=np.float32("nan"))
    with pytest.raises(LogError, match="rated"):
        fit_reward_model(ref, PostTrainData(unrated, N_ITEMS), FAST, SeedTree(0), progress=False)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "data, key",
    [
        ({"members": 1}, "members"),
        ({"head": "linear"}, "head"),
        ({"resampling": "jackknife"}, "resampling"),
        ({"bootstrap": "yes"}, "bootstrap"),
        ({"lr": 0.0}, "lr"),
        ({"epochs": 0}, "epochs"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"device": "tpu"}, "device"),
        ({"width": 3}, "width"),
    ],
)
def test_config_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as info:
        from_dict(RewardModelConfig, data)
    assert key in str(info.value) and "\n" not in str(info.value)


def test_config_defaults():
    cfg = RewardModelConfig()
    assert cfg.members >= 5 and cfg.head == "bilinear" and cfg.bootstrap and cfg.device == "auto"
    assert {name for name, _, doc in RewardModelConfig.describe() if doc} == {f for f in cfg.__dataclass_fields__}


# ---------------------------------------------------------------- baselines


def test_mean_baselines_by_hand():
    # user 0 rates 1 and 3, user 2 rates 5 (and once nothing), user 1 has no rated click.
    clicks = clicks_frame([0, 0, 2, 2, 1], [4, 5, 4, 6, 5], [1, 3, 5, np.nan, np.nan])
    mu = (1 + 3 + 5) / 3  # 3.0
    g = GlobalMeanReward.fit(clicks)
    assert g.mean == pytest.approx(mu)
    np.testing.assert_allclose(g.predict(np.array([0, 9]), np.array([1, 2])), [mu, mu])

    users, items = np.array([0, 2, 1, 7, -1]), np.array([4, 5, 6, 0, 99])
    raw = UserMeanReward.fit(clicks)
    np.testing.assert_allclose(raw.predict(users, items), [2.0, 5.0, mu, mu, mu])
    k = 2.0
    shrunk = UserMeanReward.fit(clicks, pseudo_count=k)
    # (Σ r_u + k μ) / (n_u + k): user 0 (1 + 3 + 2·3)/(2 + 2) = 2.5; user 2 (5 + 6)/(1 + 2) = 11/3
    np.testing.assert_allclose(shrunk.predict(users, items), [2.5, 11 / 3, mu, mu, mu])

    item_raw = ItemMeanReward.fit(clicks)
    # item 4: ratings 1, 5 -> 3; item 5: 3 (the NaN skipped); item 6 unrated -> μ; 0, 99 unseen -> μ
    np.testing.assert_allclose(item_raw.predict(users, items), [3.0, 3.0, mu, mu, mu])
    item_shrunk = ItemMeanReward.fit(clicks, pseudo_count=1.0)
    # item 4: (1 + 5 + 3)/(2 + 1) = 3; item 5: (3 + 3)/(1 + 1) = 3; give item 5 a rating of 5 instead:
    clicks2 = clicks_frame([0, 0, 2], [4, 5, 4], [1, 5, 5])  # μ = 11/3
    np.testing.assert_allclose(
        ItemMeanReward.fit(clicks2, pseudo_count=1.0).predict(np.zeros(2), np.array([4, 5])),
        [(1 + 5 + 11 / 3) / 3, (5 + 11 / 3) / 2],
    )
    np.testing.assert_allclose(item_shrunk.predict(users, items)[:2], [3.0, 3.0])


def test_baselines_reject_bad_input():
    clicks = clicks_frame([0], [1], [3.0])
    with pytest.raises(ConfigError, match="pseudo_count"):
        UserMeanReward.fit(clicks, pseudo_count=-1.0)
    with pytest.raises(LogError, match="rated"):
        ItemMeanReward.fit(clicks.assign(rating=np.nan))
    with pytest.raises(LogError, match="rating"):
        GlobalMeanReward.fit(clicks.drop(columns="rating"))
    # a huge pseudo-count shrinks every user to the global mean 3 (finite: no overflow on the way)
    two = clicks_frame([0, 1], [1, 2], [1.0, 5.0])
    shrunk = UserMeanReward.fit(two, pseudo_count=1e9).predict(np.array([0, 1]), np.array([1, 2]))
    np.testing.assert_allclose(shrunk, [3.0, 3.0], rtol=1e-8)
