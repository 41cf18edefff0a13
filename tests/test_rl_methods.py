"""CQL, PPO and GRPO: hand-computed losses, limit cases, configs and tiny known-optimum bandits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_post.config import from_dict
from recsim_post.errors import ConfigError
from recsim_post.models import SASRecConfig, SequencePolicy, build_model
from recsim_post.posttrain import cql, grpo, ppo
from recsim_post.posttrain.data import PostTrainData
from recsim_post.posttrain.loop import TrainConfig
from recsim_post.posttrain.policy_gradient import clipped_surrogate, exact_kl, k3_kl
from recsim_post.seeding import SeedTree

from .bandit import N_ITEMS, draw_bandit, good_mass, reference, table_reward_model
from .conftest import clicks_frame

NAN = float("nan")


# ---------------------------------------------------------------- CQL


def test_cql_loss_hand_computed():
    # Two contexts over 3 items, plus one padded and one unrated position that must not count.
    q = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 3.0], [9.0, 9.0, 9.0], [5.0, 0.0, 0.0]]])
    actions = torch.tensor([[1, 0, -1, 2]])
    rewards = torch.tensor([[4.0, 1.0, NAN, NAN]])
    mask = torch.tensor([[True, True, False, True]])
    lse1 = math.log(math.exp(1) + math.exp(2) + math.exp(0))
    lse2 = math.log(2 + math.exp(3))
    pen1, pen2 = lse1 - 2.0, lse2 - 0.0
    td1, td2 = 0.5 * (2.0 - 4.0) ** 2, 0.5 * (0.0 - 1.0) ** 2
    alpha = 0.7
    loss, m = cql.cql_loss(q, actions, rewards, mask, alpha)
    assert loss.item() == pytest.approx((alpha * (pen1 + pen2) + td1 + td2) / 2, rel=1e-6)
    assert m["penalty"].item() == pytest.approx((pen1 + pen2) / 2, rel=1e-6)
    assert m["td"].item() == pytest.approx((td1 + td2) / 2, rel=1e-6)
    assert m["q_data"].item() == pytest.approx(1.0)
    assert m["n"].item() == 2
    assert all(v.ndim == 0 and not v.requires_grad for v in m.values())


def test_cql_alpha_zero_is_plain_td_regression():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 6, generator=g, requires_grad=True)
    actions = torch.randint(0, 6, (3, 4), generator=g)
    rewards = torch.randint(1, 6, (3, 4), generator=g).float()
    mask = torch.ones(3, 4, dtype=torch.bool)
    loss, _ = cql.cql_loss(q, actions, rewards, mask, alpha=0.0)
    q_y = q.detach().numpy()[np.arange(3)[:, None], np.arange(4)[None, :], actions.numpy()]
    assert loss.item() == pytest.approx(float(np.mean(0.5 * (q_y - rewards.numpy()) ** 2)), rel=1e-6)
    loss.backward()  # only the logged actions get a gradient
    off = torch.ones_like(q, dtype=torch.bool).scatter_(-1, actions.unsqueeze(-1), False)
    assert torch.all(q.grad[off] == 0)


def test_cql_penalty_is_log_n_when_q_is_flat():
    n_items = 7
    q = torch.full((2, 3, n_items), 2.5)
    _, m = cql.cql_loss(q, torch.zeros(2, 3, dtype=torch.long), torch.full((2, 3), 3.0), torch.ones(2, 3, dtype=torch.bool))
    assert m["penalty"].item() == pytest.approx(math.log(n_items), rel=1e-6)


def test_cql_penalty_vanishes_when_the_logged_action_dominates():
    q = torch.zeros(1, 1, 10)
    q[0, 0, 3] = 50.0
    _, m = cql.cql_loss(q, torch.tensor([[3]]), torch.tensor([[5.0]]), torch.tensor([[True]]))
    assert 0.0 <= m["penalty"].item() < 1e-12 + 1e-6  # log(1 + 9 e^-50), float32 rounds it to 0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(0.01, 30.0))
def test_cql_penalty_is_never_negative(seed, scale):
    g = torch.Generator().manual_seed(seed)
    q = scale * torch.randn(2, 3, 5, generator=g)
    actions = torch.randint(0, 5, (2, 3), generator=g)
    _, m = cql.cql_loss(q, actions, torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool), alpha=1.0)
    assert m["penalty"].item() >= 0.0


def test_logit_scale_applies_saves_loads_and_clones(tmp_path):
    cfg = SASRecConfig(dim=16, n_layers=1, n_heads=2, max_len=6)
    policy = SequencePolicy(build_model(cfg, 9, torch.Generator().manual_seed(0)), 9)
    hist = np.array([[0, 1, 2], [3, 4, 5]])
    raw = policy.logits(hist)
    policy.logit_scale = 0.25
    np.testing.assert_allclose(policy.logits(hist), 0.25 * raw, rtol=1e-6)
    policy.save(tmp_path / "p.pt")
    loaded = SequencePolicy.load(tmp_path / "p.pt")
    assert loaded.logit_scale == 0.25
    np.testing.assert_allclose(loaded.logits(hist), 0.25 * raw, rtol=1e-6)
    assert policy.clone().logit_scale == 0.25


# ---------------------------------------------------------------- PPO


def test_clipped_surrogate_hand_computed():
    # ε = 0.2. Ratios inside and outside [0.8, 1.2], advantages of both signs:
    #   ρ=1.5, A=+2: min(3.0, 2.4) = 2.4   (clipped: gradient cut)
    #   ρ=1.5, A=-1: min(-1.5, -1.2) = -1.5 (pessimistic: unclipped)
    #   ρ=0.5, A=+1: min(0.5, 0.8) = 0.5   (unclipped)
    #   ρ=0.5, A=-2: min(-1.0, -1.6) = -1.6 (clipped)
    #   ρ=1.1, A=+3: 3.3                   (inside the range)
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1])
    adv = torch.tensor([2.0, -1.0, 1.0, -2.0, 3.0])
    old = torch.tensor([-1.0, -2.0, -0.5, -3.0, -1.2])
    logp = (old + ratio.log()).requires_grad_(True)
    mask = torch.ones(5, dtype=torch.bool)
    loss, m = clipped_surrogate(logp, old, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-(2.4 - 1.5 + 0.5 - 1.6 + 3.3) / 5, rel=1e-6)
    assert m["clip_frac"].item() == pytest.approx(2 / 5)
    expected_kl = np.mean([(r - 1) - math.log(r) for r in (1.5, 1.5, 0.5, 0.5, 1.1)])
    assert m["approx_kl"].item() == pytest.approx(expected_kl, rel=1e-5)
    loss.backward()
    # d/dlogp of -ρA/5 is -ρA/5 where unclipped, 0 where the clip binds.
    expected_grad = torch.tensor([0.0, 1.5, -0.5, 0.0, -3.3]) / 5
    torch.testing.assert_close(logp.grad, expected_grad)
    # Masked-out entries do not count.
    loss2, _ = clipped_surrogate(logp.detach(), old, adv, torch.tensor([True, True, False, False, False]), 0.2)
    assert loss2.item() == pytest.approx(-(2.4 - 1.5) / 2, rel=1e-6)


def test_ppo_at_ratio_one_is_the_plain_policy_gradient():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 6, generator=g, requires_grad=True)
    actions = torch.randint(0, 6, (2, 3), generator=g)
    adv = torch.randn(2, 3, generator=g)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    old = F.log_softmax(logits.detach(), -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    loss, m = ppo.ppo_loss(logits, actions, old, adv, logits.detach(), mask, clip_eps=0.2, kl_coef=0.0)
    assert loss.item() == pytest.approx(-(adv[mask]).mean().item(), rel=1e-6, abs=1e-7)
    assert m["clip_frac"].item() == 0 and m["approx_kl"].item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    ref_logits = logits.detach().clone().requires_grad_(True)
    logp = F.log_softmax(ref_logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    (-(adv * logp)[mask].mean()).backward()  # REINFORCE: −mean(A ∇ log π(y|x))
    torch.testing.assert_close(logits.grad, ref_logits.grad)


def test_exact_kl_hand_computed_and_zero_at_the_reference():
    p, q = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.25, 0.5])
    expected = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    assert exact_kl(p.log(), q.log()).item() == pytest.approx(expected, rel=1e-6)
    logits = torch.randn(4, 5, 11, generator=torch.Generator().manual_seed(2))
    assert torch.all(exact_kl(logits, logits + 3.0).abs() < 1e-6)  # a shift is the same policy
    assert torch.all(k3_kl(logits, logits) == 0)
    _, m = ppo.ppo_loss(logits, torch.zeros(4, 5, dtype=torch.long), torch.zeros(4, 5), torch.zeros(4, 5),
                        logits, torch.ones(4, 5, dtype=torch.bool))
    assert m["kl_ref"].item() == pytest.approx(0.0, abs=1e-6)


def test_ppo_exact_baseline_is_the_expected_reward_under_pi_old():
    old = torch.tensor([[[0.0, math.log(3.0)]]])  # π_old = (1/4, 3/4)
    table = torch.tensor([[[1.0, 5.0]]])
    reward, value, adv = ppo.advantages(table, old, torch.tensor([[0]]), torch.tensor([[True]]))
    assert value.item() == pytest.approx(0.25 * 1 + 0.75 * 5)
    assert reward.item() == 1.0 and adv.item() == pytest.approx(1.0 - 4.0)
    _, _, adv_none = ppo.advantages(table, old, torch.tensor([[0]]), torch.tensor([[True]]), baseline="none")
    assert adv_none.item() == 1.0


# ---------------------------------------------------------------- GRPO


def test_group_advantages_hand_computed():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    mean, std = 3.0, math.sqrt(((1 - 3) ** 2 + 1 + 0 + 9) / 3)  # Bessel: divide by G − 1
    adv = grpo.group_advantages(r, "group", eps=1e-4)
    torch.testing.assert_close(adv, (r - mean) / (std + 1e-4))
    torch.testing.assert_close(grpo.group_advantages(r, "none"), r - mean)


def test_grpo_equal_rewards_give_exactly_zero_policy_gradient():
    r = torch.full((2, 3, 5), 0.1)  # 0.1 is not exact in binary: the mean may round
    r[1, 2] = torch.tensor([1.0, 5.0, 1.0, 1.0, 5.0])  # one informative group
    adv = grpo.group_advantages(r)
    assert torch.all(adv[0] == 0) and torch.all(adv[1, :2] == 0) and adv[1, 2].abs().sum() > 0
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 8, generator=g, requires_grad=True)
    actions = torch.randint(0, 8, (2, 3, 5), generator=g)
    old = F.log_softmax(logits.detach(), -1).gather(-1, actions) + 0.3 * torch.randn(2, 3, 5, generator=g)
    mask = torch.ones(2, 3, dtype=torch.bool)
    loss, _ = grpo.grpo_loss(logits, actions, old, adv, logits.detach() + 1.0, mask, kl_coef=0.0)
    loss.backward()
    assert torch.all(logits.grad[0] == 0) and torch.all(logits.grad[1, :2] == 0)
    assert logits.grad[1, 2].abs().sum() > 0


def test_grpo_kl_estimators():
    g = torch.Generator().manual_seed(4)
    logits, ref = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    actions = torch.randint(0, 6, (3, 4), generator=g)
    mask, zeros = torch.ones(3, dtype=torch.bool), torch.zeros(3, 4)
    old = F.log_softmax(logits, -1).gather(-1, actions)
    _, m = grpo.grpo_loss(logits, actions, old, zeros, ref, mask, kl_estimator="exact")
    assert m["kl_ref"].item() == pytest.approx(exact_kl(logits, ref).mean().item(), rel=1e-6)
    _, m3 = grpo.grpo_loss(logits, actions, old, zeros, ref, mask, kl_estimator="k3")
    lp, lr = F.log_softmax(logits, -1).gather(-1, actions), F.log_softmax(ref, -1).gather(-1, actions)
    assert m3["kl_ref"].item() == pytest.approx((torch.exp(lr - lp) - (lr - lp) - 1).mean().item(), rel=1e-6)
    assert m3["kl_exact"].item() == pytest.approx(m["kl_ref"].item(), rel=1e-6)


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "cls, data, key",
    [
        (cql.CQLConfig, {"alpha": -0.1}, "alpha"),
        (cql.CQLConfig, {"temperature": 0.0}, "temperature"),
        (ppo.PPOConfig, {"clip_eps": 0.0}, "clip_eps"),
        (ppo.PPOConfig, {"clip_eps": 1.0}, "clip_eps"),
        (ppo.PPOConfig, {"kl_coef": -1.0}, "kl_coef"),
        (ppo.PPOConfig, {"ppo_epochs": 0}, "ppo_epochs"),
        (ppo.PPOConfig, {"baseline": "learned"}, "baseline"),
        (ppo.PPOConfig, {"advantage_norm": "group"}, "advantage_norm"),
        (grpo.GRPOConfig, {"group_size": 1}, "group_size"),
        (grpo.GRPOConfig, {"kl_estimator": "k1"}, "kl_estimator"),
        (grpo.GRPOConfig, {"scale_rewards": "batch"}, "scale_rewards"),
        (grpo.GRPOConfig, {"std_eps": 0.0}, "std_eps"),
        (grpo.GRPOConfig, {"surprise": 1}, "surprise"),
    ],
)
def test_config_errors_name_the_key(cls, data, key):
    with pytest.raises(ConfigError) as info:
        from_dict(cls, data)
    assert key in str(info.value) and "\n" not in str(info.value)


def test_module_contract():
    for module, name, needs in ((cql, "cql", False), (ppo, "ppo", True), (grpo, "grpo", True)):
        cfg = module.CONFIG()
        assert cfg.name == name and module.needs_reward_model(cfg) is needs
        assert module.__doc__ and "eq." in module.__doc__


def test_ppo_and_grpo_require_a_reward_model():
    policy = SequencePolicy(build_model(SASRecConfig(dim=16, n_layers=1, n_heads=2, max_len=4), 5), 5)
    clicks = clicks_frame([0, 0, 0], [1, 2, 3], [5, 5, 5])
    for module in (ppo, grpo):
        with pytest.raises(ConfigError, match="reward model"):
            module.train(policy, PostTrainData(clicks, 5), module.CONFIG(), TrainConfig(epochs=1), SeedTree(0), False)


# ---------------------------------------------------------------- tiny bandit world

MODEL = SASRecConfig(dim=16, n_layers=1, n_heads=2, max_len=8, dropout=0.1)
FINETUNE = TrainConfig(epochs=8, batch_size=16, lr=3e-3, device="cpu")  # ~56 steps


@pytest.fixture(scope="module")
def bandit():
    """The tiny bandit (tests/bandit.py: 100 users, 9 distinct clicks each), so BC is ~uniform;
    π_ref pre-trained briefly by BC; fresh random histories to measure the good items' mass on."""
    world = draw_bandit(100, 9, hist_len=MODEL.max_len, distinct=True)
    return world.clicks, reference(world.clicks, MODEL, epochs=2, batch_size=32), world.histories


def test_cql_learns_the_well_rated_items(bandit):
    clicks, ref, hist = bandit
    before = good_mass(ref, hist)
    tuned = cql.train(ref, PostTrainData(clicks, N_ITEMS), cql.CQLConfig(alpha=1.0, temperature=1.0), FINETUNE, SeedTree(1), False)
    after = good_mass(tuned, hist)
    assert 0.35 < before < 0.65, before
    assert after > before + 0.2, (before, after)
    assert tuned.logit_scale == 1.0 and ref.logit_scale == 1.0
    assert [h["stage"] for h in tuned.history][-1] == "cql"
    no_steps = TrainConfig(epochs=0, device="cpu")
    assert cql.train(ref, PostTrainData(clicks, N_ITEMS), cql.CQLConfig(temperature=4.0), no_steps, SeedTree(1), False).logit_scale == 0.25
    soft = tuned.clone()
    soft.logit_scale = 0.25  # softmax(Q/4): the same preference, softer
    assert before < good_mass(soft, hist) < after


def test_ppo_learns_the_rewarded_items(bandit):
    clicks, ref, hist = bandit
    data = PostTrainData(clicks, N_ITEMS, table_reward_model(3, 0.1, seed=0))
    cfg = ppo.PPOConfig(kl_coef=0.01, ppo_epochs=2)
    tuned = ppo.train(ref, data, cfg, FINETUNE, SeedTree(1), False)
    before, after = good_mass(ref, hist), good_mass(tuned, hist)
    assert after > before + 0.2, (before, after)
    rows = [h for h in tuned.history if h["stage"] == "ppo"]
    assert rows[-1]["reward"] > rows[0]["reward"] and rows[-1]["kl_ref"] > 0
    for key in ("clip_frac", "approx_kl", "kl_ref", "reward", "advantage", "entropy", "value"):
        assert key in rows[0]


def test_ppo_first_inner_step_has_ratio_one(bandit):
    # One update per sample batch: π_θ = π_old at the update (no dropout), so nothing is clipped.
    clicks, ref, _ = bandit
    data = PostTrainData(clicks, N_ITEMS, table_reward_model(3, 0.1, seed=0))
    tuned = ppo.train(ref, data, ppo.PPOConfig(ppo_epochs=1), TrainConfig(epochs=1, batch_size=64, device="cpu"), SeedTree(2), False)
    row = tuned.history[-1]
    assert row["clip_frac"] == 0 and abs(row["approx_kl"]) < 1e-6 and abs(row["ratio"] - 1) < 1e-6


def test_grpo_learns_the_rewarded_items(bandit):
    clicks, ref, hist = bandit
    data = PostTrainData(clicks, N_ITEMS, table_reward_model(3, 0.1, seed=0))
    tuned = grpo.train(ref, data, grpo.GRPOConfig(group_size=4, kl_coef=0.01), FINETUNE, SeedTree(1), False)
    before, after = good_mass(ref, hist), good_mass(tuned, hist)
    assert after > before + 0.2, (before, after)
    rows = [h for h in tuned.history if h["stage"] == "grpo"]
    assert rows[-1]["reward"] > rows[0]["reward"]
    for key in ("clip_frac", "approx_kl", "kl_ref", "kl_exact", "reward", "entropy", "flat_groups"):
        assert key in rows[0]


def test_same_seed_same_run(bandit):
    clicks, ref, hist = bandit
    data = PostTrainData(clicks, N_ITEMS, table_reward_model(3, 0.1, seed=0))
    cfg, tc = grpo.GRPOConfig(group_size=2), TrainConfig(epochs=1, batch_size=64, device="cpu")
    state = torch.random.get_rng_state()
    a = grpo.train(ref, data, cfg, tc, SeedTree(3), False)
    b = grpo.train(ref, data, cfg, tc, SeedTree(3), False)
    assert torch.equal(torch.random.get_rng_state(), state)  # no global RNG used
    np.testing.assert_array_equal(a.logits(hist), b.logits(hist))
    assert a.history == b.history
