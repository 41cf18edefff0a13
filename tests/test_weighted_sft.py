"""The reward-weighted SFT family: linear RSFT, exponential RSFT (four normalisations) and A-SFT.

Tiers: hand-computed losses on a tiny batch, limit cases (λ → ∞ and β → ∞ are BC in value and
gradient), numerical guards (raw exp overflow), baselines checked by hand, config validation, and a
learning test on a tiny bandit world whose optimum is known.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recsim_post.config import from_dict, read_toml
from recsim_post.errors import ConfigError
from recsim_post.models import SASRecConfig, SequencePolicy, build_model
from recsim_post.posttrain import asft, exp_rsft, linear_rsft
from recsim_post.posttrain.asft import (
    ASFTConfig,
    asft_loss,
    batch_mean_baseline,
    reward_model_baseline,
    user_mean_baseline,
)
from recsim_post.posttrain.bc import bc_loss
from recsim_post.posttrain.data import PostTrainData
from recsim_post.posttrain.exp_rsft import ExpRSFTConfig, context_log_normalizer, exp_rsft_loss
from recsim_post.posttrain.linear_rsft import LinearRSFTConfig, linear_rsft_loss
from recsim_post.posttrain.loop import TrainConfig
from recsim_post.posttrain.recipe import AgentConfig
from recsim_post.posttrain.reward_model import TableRewardModel, UserMeanReward, mean_std
from recsim_post.seeding import SeedTree

from .bandit import N_ITEMS, draw_bandit, good_mass, reference, table_reward_model
from .conftest import clicks_frame

ROOT = Path(__file__).resolve().parents[1]

# One window of three positions over V = 3 items; the last position is padding.
#   position 0: logits log([1, 1, 1]) -> softmax [1/3, 1/3, 1/3]; target 0 -> nll = ln 3
#   position 1: logits log([1, 2, 1]) -> softmax [1/4, 1/2, 1/4]; target 1 -> nll = ln 2
#   position 2: padding (target -1, mask False; its finite reward 4 must be ignored)
NLL0, NLL1 = math.log(3.0), math.log(2.0)
R0, R1 = 5.0, 2.0


def tiny_batch():
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0], [5.0, -3.0, 1.0]]])
    targets = torch.tensor([[0, 1, -1]])
    mask = torch.tensor([[True, True, False]])
    rewards = torch.tensor([[R0, R1, 4.0]])
    return logits, targets, rewards, mask


def random_batch(seed=0, B=4, L=6, V=11):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, V, (B, L), generator=g)
    mask = torch.rand(B, L, generator=g) > 0.3
    targets[~mask] = -1
    rewards = torch.randint(1, 6, (B, L), generator=g).float()
    rewards[~mask] = float("nan")
    logits = torch.randn(B, L, V, generator=g)
    return logits, targets, rewards, mask


def value_and_grad(fn, logits):
    lg = logits.clone().requires_grad_(True)
    loss = fn(lg)
    (grad,) = torch.autograd.grad(loss, lg)
    return loss.detach(), grad


def assert_same_as_bc(fn, logits, targets, mask):
    value, grad = value_and_grad(fn, logits)
    bc_value, bc_grad = value_and_grad(lambda lg: bc_loss(lg, targets, mask)[0], logits)
    torch.testing.assert_close(value, bc_value, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, bc_grad, rtol=1e-5, atol=1e-8)


# ================================================================ linear RSFT


def test_linear_rsft_hand_computed():
    logits, targets, rewards, mask = tiny_batch()
    loss, m = linear_rsft_loss(logits, targets, rewards, mask, normalize="batch")
    assert loss.item() == pytest.approx((5 * NLL0 + 2 * NLL1) / 7, rel=1e-6)  # 0.982655
    loss, m = linear_rsft_loss(logits, targets, rewards, mask, normalize="none")
    assert loss.item() == pytest.approx((5 * NLL0 + 2 * NLL1) / 2, rel=1e-6)  # 3.439291
    assert m["n"].item() == 2 and m["mean_w"].item() == pytest.approx(3.5)
    assert m["ess"].item() == pytest.approx(49 / 29, rel=1e-6)
    assert m["nll"].item() == pytest.approx((NLL0 + NLL1) / 2, rel=1e-6)


def test_linear_rsft_with_equal_rewards_is_bc():
    logits, targets, _, mask = random_batch()
    fives = torch.full(targets.shape, 5.0)
    assert_same_as_bc(lambda lg: linear_rsft_loss(lg, targets, fives, mask, "batch")[0], logits, targets, mask)


def test_linear_rsft_rejects_negative_rewards_and_survives_empty_batches():
    logits, targets, rewards, mask = tiny_batch()
    with pytest.raises(ConfigError, match="rewards >= 0"):
        linear_rsft_loss(logits, targets, torch.tensor([[5.0, -1.0, 1.0]]), mask)
    # A negative reward at a padded position does not count.
    linear_rsft_loss(logits, targets, torch.tensor([[5.0, 1.0, -1.0]]), mask)
    for r in (torch.full_like(rewards, float("nan")), torch.zeros_like(rewards)):
        lg = logits.clone().requires_grad_(True)
        loss, _ = linear_rsft_loss(lg, targets, r, mask)
        loss.backward()
        assert loss.item() == 0.0 and (lg.grad == 0).all()


# ================================================================ exponential RSFT


@pytest.mark.parametrize(
    "normalize, expected",
    [
        ("raw", (math.exp(2.5) * NLL0 + math.exp(1.0) * NLL1) / 2),  # exp(r/λ), λ = 2
        ("shifted", (1.0 * NLL0 + math.exp(-1.5) * NLL1) / 2),  # exp((r - 5)/λ)
        ("batch", (math.exp(2.5) * NLL0 + math.exp(1.0) * NLL1) / (math.exp(2.5) + math.exp(1.0))),
        ("context", (math.exp(2.5 - 1.0) * NLL0 + math.exp(1.0 - 0.5) * NLL1) / 2),  # log Z = [1, .5]
    ],
)
def test_exp_rsft_variants_hand_computed(normalize, expected):
    logits, targets, rewards, mask = tiny_batch()
    log_z = torch.tensor([[1.0, 0.5, float("nan")]])  # the padded position's log Z must not leak
    loss, m = exp_rsft_loss(logits, targets, rewards, mask, lam=2.0, r_max=5.0, normalize=normalize, log_z=log_z)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["n"].item() == 2 and all(torch.isfinite(v) for v in m.values())
    # ESS depends only on the ratio of the two weights, e^{(5 - 2)/2} = e^1.5 (context: e^1).
    ratio = math.exp(1.0) if normalize == "context" else math.exp(1.5)
    assert m["ess"].item() == pytest.approx((ratio + 1) ** 2 / (ratio**2 + 1), rel=1e-6)


def test_exp_rsft_clips_rewards_at_r_max():
    logits, targets, _, mask = tiny_batch()
    above = torch.tensor([[9.0, 2.0, 1.0]])  # 9 is treated as 5
    at = torch.tensor([[5.0, 2.0, 1.0]])
    for normalize in ("raw", "shifted", "batch"):
        a = exp_rsft_loss(logits, targets, above, mask, lam=2.0, normalize=normalize)[0]
        b = exp_rsft_loss(logits, targets, at, mask, lam=2.0, normalize=normalize)[0]
        assert a.item() == pytest.approx(b.item(), rel=1e-6)


@pytest.mark.parametrize("normalize", ["raw", "shifted", "batch", "context"])
def test_exp_rsft_large_lambda_is_bc_in_value_and_gradient(normalize):
    logits, targets, rewards, mask = random_batch()
    lam = 1e9
    g = torch.Generator().manual_seed(1)
    ref_logits, r_hat = torch.randn(logits.shape, generator=g), 1 + 4 * torch.rand(logits.shape, generator=g)
    log_z = context_log_normalizer(ref_logits, r_hat, lam)  # -> logsumexp(log π_ref) = 0
    assert_same_as_bc(
        lambda lg: exp_rsft_loss(lg, targets, rewards, mask, lam=lam, normalize=normalize, log_z=log_z)[0],
        logits, targets, mask,
    )


def test_exp_rsft_raw_overflow_raises_a_clear_error():
    logits, targets, rewards, mask = tiny_batch()
    # exp(5 / 0.01) = exp(500) is inf in float32: refuse rather than train on inf.
    with pytest.raises(ConfigError, match="overflow") as info:
        exp_rsft_loss(logits, targets, rewards, mask, lam=0.01, normalize="raw")
    assert "shifted" in str(info.value) and "\n" not in str(info.value)
    # The shifted form of the same λ is finite, as is raw just below the float32 limit (5/0.06 = 83.3).
    assert torch.isfinite(exp_rsft_loss(logits, targets, rewards, mask, lam=0.01, normalize="shifted")[0])
    assert torch.isfinite(exp_rsft_loss(logits, targets, rewards, mask, lam=0.06, normalize="raw")[0])
    # The config refuses the combination up front, naming the key: with its r_max, or, where r_max
    # comes from the reward signal (None), in the recipe that names the signal.
    with pytest.raises(ConfigError, match=r"^lam = 0.01 overflows"):
        ExpRSFTConfig(lam=0.01, normalize="raw", r_max=5.0)
    raw = ExpRSFTConfig(lam=0.01, normalize="raw")
    for reward in ("rating", "watch"):  # exp(5 / 0.01) and exp(1 / 0.01) both overflow
        with pytest.raises(ConfigError, match=r"^lam = 0.01 overflows"):
            AgentConfig(method=raw, reward=reward)
    AgentConfig(method=ExpRSFTConfig(lam=0.02, normalize="raw"), reward="watch")  # exp(50) fits, exp(250) not:
    with pytest.raises(ConfigError, match=r"^lam = 0.02 overflows"):
        AgentConfig(method=ExpRSFTConfig(lam=0.02, normalize="raw"), reward="rating")
    ExpRSFTConfig(lam=0.06, normalize="raw", r_max=5.0)
    ExpRSFTConfig(lam=0.01, normalize="shifted")


def test_exp_rsft_context_needs_log_z():
    logits, targets, rewards, mask = tiny_batch()
    with pytest.raises(ConfigError, match="log_z"):
        exp_rsft_loss(logits, targets, rewards, mask, lam=1.0, normalize="context")


def test_context_normaliser_two_items_with_a_table_reward_model():
    # π_ref(·|x) = [1/4, 3/4] (logits [0, ln 3]); R̂ = [5, 1] for every history; λ = 2:
    #   Z = 1/4 e^{5/2} + 3/4 e^{1/2} = 3.045623 + 1.236541 = 4.282164
    rm = TableRewardModel(torch.tensor([5.0, 1.0]), n_members=3, member_noise=0.0)
    inputs = torch.tensor([[-1, 0, 1]])
    r_hat, _ = mean_std(rm.member_scores(inputs))
    ref_logits = torch.tensor([0.0, math.log(3.0)]).expand(1, 3, 2)
    log_z = context_log_normalizer(ref_logits, r_hat, lam=2.0)
    z = 0.25 * math.exp(2.5) + 0.75 * math.exp(0.5)
    torch.testing.assert_close(log_z, torch.full((1, 3), math.log(z)), rtol=1e-6, atol=1e-6)
    # The weights of item 0 and item 1 are e^{r/λ}/Z; under π_ref they average to exactly 1.
    w = torch.exp(torch.tensor([5.0, 1.0]) / 2.0 - log_z[0, 0])
    assert (0.25 * w[0] + 0.75 * w[1]).item() == pytest.approx(1.0, rel=1e-6)
    # R̂ is clipped at r_max like the observed rewards.
    clipped = context_log_normalizer(ref_logits, r_hat + 10.0 * (r_hat > 4), lam=2.0, r_max=5.0)
    torch.testing.assert_close(clipped, log_z)


def test_exp_rsft_context_training_uses_frozen_pi_ref_and_the_reward_model(monkeypatch):
    """The train() plumbing hands the loss log Z(x) from π_ref (not the model being trained) and R̂."""
    clicks = clicks_frame(np.repeat([0, 1], 4), [0, 1, 2, 3, 5, 4, 3, 2], [5, 5, 5, 1, 1, 1, 2, 1])
    ref = SequencePolicy(build_model(MODEL, 6, torch.Generator().manual_seed(0)), 6)
    table = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 1.0])
    seen, real = [], exp_rsft.exp_rsft_nll_loss

    def spy(nll, rewards, mask, lam, r_max, normalize, log_z):  # noqa: ANN001, ANN202
        seen.append((log_z.clone(), mask.clone()))
        return real(nll, rewards, mask, lam, r_max, normalize, log_z)

    monkeypatch.setattr(exp_rsft, "exp_rsft_nll_loss", spy)
    data = PostTrainData(clicks, 6, TableRewardModel(table, n_members=2))
    train_cfg = TrainConfig(epochs=2, batch_size=8, lr=0.1, device="cpu")  # big steps: π moves away from π_ref
    exp_rsft.train(ref, data, ExpRSFTConfig(lam=2.0, normalize="context"), train_cfg, SeedTree(0), progress=False)
    windows = data.windows(MODEL.max_len)
    with torch.no_grad():
        ref_logits = ref.model.eval()(torch.from_numpy(windows.inputs))
    expected = torch.logsumexp(torch.log_softmax(ref_logits, -1) + table / 2.0, dim=-1)
    for log_z, mask in seen:  # both epochs see π_ref's log Z, rows in either order
        got = sorted(log_z[mask].tolist())
        assert got == pytest.approx(sorted(expected[torch.from_numpy(windows.mask)].tolist()), rel=1e-5)


def test_context_normalisation_equalises_context_weights():
    """Two histories with the same relative preferences but rewards 2 apart: without Z(x) the
    generous one carries e^{2/λ} times the total weight; divided by Z(x) both carry exactly 1."""
    lam = 1.0
    p = torch.tensor([[0.5, 0.5], [0.5, 0.5]])  # π_β = π_ref in both contexts
    r = torch.tensor([[3.0, 2.0], [5.0, 4.0]])  # context 1 is rated 2 higher across the board
    log_z = context_log_normalizer(p.log(), r, lam)
    shifted_total = (p * torch.exp((r - 5.0) / lam)).sum(-1)
    context_total = (p * torch.exp(r / lam - log_z[:, None])).sum(-1)
    assert (shifted_total[1] / shifted_total[0]).item() == pytest.approx(math.exp(2.0), rel=1e-6)
    torch.testing.assert_close(context_total, torch.ones(2))


# ================================================================ A-SFT


def test_asft_hand_computed():
    logits, targets, rewards, mask = tiny_batch()
    value = torch.tensor([[3.0]])  # V̂ = 3 for the window: advantages +2 and -1
    w0, w1 = math.exp(2.0), math.exp(-1.0)  # β = 1
    loss, m = asft_loss(logits, targets, rewards, mask, value, beta=1.0, w_max=20.0, normalize="none")
    assert loss.item() == pytest.approx((w0 * NLL0 + w1 * NLL1) / 2, rel=1e-6)  # 4.186269
    assert m["adv_mean"].item() == pytest.approx(0.5) and m["adv_std"].item() == pytest.approx(1.5)
    assert m["value_mean"].item() == pytest.approx(3.0) and m["clip_frac"].item() == 0.0
    assert m["mean_w"].item() == pytest.approx((w0 + w1) / 2, rel=1e-6)
    loss, _ = asft_loss(logits, targets, rewards, mask, value, beta=1.0, w_max=20.0, normalize="batch")
    assert loss.item() == pytest.approx((w0 * NLL0 + w1 * NLL1) / (w0 + w1), rel=1e-6)
    # β = 2 halves the log-weights; a scalar V̂ broadcasts.
    loss, _ = asft_loss(logits, targets, rewards, mask, 3.0, beta=2.0)
    assert loss.item() == pytest.approx((math.exp(1.0) * NLL0 + math.exp(-0.5) * NLL1) / 2, rel=1e-6)


def test_asft_w_max_clips():
    logits, targets, rewards, mask = tiny_batch()
    loss, m = asft_loss(logits, targets, rewards, mask, 3.0, beta=1.0, w_max=5.0)  # e^2 = 7.39 -> 5
    assert loss.item() == pytest.approx((5.0 * NLL0 + math.exp(-1.0) * NLL1) / 2, rel=1e-6)
    assert m["clip_frac"].item() == 0.5 and m["max_w"].item() == pytest.approx(5.0)
    # Tiny β: weights would overflow, clipping keeps them at w_max (positive A) or 0 (negative A).
    lg = logits.clone().requires_grad_(True)
    loss, m = asft_loss(lg, targets, rewards, mask, 3.0, beta=1e-6, w_max=20.0)
    loss.backward()
    assert loss.item() == pytest.approx(20.0 * NLL0 / 2, rel=1e-6)
    assert torch.isfinite(lg.grad).all()


@pytest.mark.parametrize("normalize", ["none", "batch"])
def test_asft_large_beta_is_bc_in_value_and_gradient(normalize):
    logits, targets, rewards, mask = random_batch()
    value = 1 + 4 * torch.rand(targets.shape, generator=torch.Generator().manual_seed(2))
    assert_same_as_bc(
        lambda lg: asft_loss(lg, targets, rewards, mask, value, beta=1e12, w_max=20.0, normalize=normalize)[0],
        logits, targets, mask,
    )


def test_user_mean_baseline_hand_computed():
    users = np.array([0, 0, 2, 2, 2, 5])
    ratings = np.array([5.0, 3.0, 1.0, np.nan, 2.0, np.nan])
    clicks = clicks_frame(users, np.zeros(6), ratings)
    fit = UserMeanReward.fit(clicks)  # what A-SFT's user-mean baseline is built from
    assert fit.global_mean == pytest.approx(11 / 4)  # (5 + 3 + 1 + 2) / 4 = 2.75
    table = torch.from_numpy(fit.means).float()
    # user 0: 4; user 2: 1.5; user 5 (no rating) falls back to μ; 7 lies outside the table: μ too.
    looked_up = user_mean_baseline(torch.tensor([0, 2, 5, 7, 0]), table, fit.global_mean)
    np.testing.assert_allclose(looked_up.numpy(), [4.0, 1.5, 2.75, 2.75, 4.0], rtol=1e-6)
    # Shrinkage k = 2 pulls each mean toward μ by two pseudo-ratings.
    shrunk = UserMeanReward.fit(clicks, pseudo_count=2.0)
    looked_up = user_mean_baseline(torch.tensor([0, 2, 5]), torch.from_numpy(shrunk.means).float(), shrunk.global_mean)
    np.testing.assert_allclose(looked_up.numpy(), [(8 + 5.5) / 4, (3 + 5.5) / 4, 2.75], rtol=1e-6)
    assert user_mean_baseline(torch.tensor([3]), torch.zeros(0), 2.5).item() == 2.5  # empty table


def test_asft_user_mean_baseline_is_what_training_uses(monkeypatch):
    """The train() plumbing hands the loss V̂ = the mean rating of the window's user."""
    clicks = clicks_frame(np.repeat([0, 1], 4), [0, 1, 2, 3, 0, 1, 2, 3], [5, 5, 5, 1, 1, 1, 2, 1])
    ref = SequencePolicy(build_model(MODEL, 6, torch.Generator().manual_seed(0)), 6)
    seen, real = [], asft.asft_nll_loss

    def spy(nll, rewards, mask, value, *args):  # noqa: ANN001, ANN202
        seen.append((rewards.clone(), value.expand_as(rewards).clone()))
        return real(nll, rewards, mask, value, *args)

    monkeypatch.setattr(asft, "asft_nll_loss", spy)
    train_cfg = TrainConfig(epochs=1, batch_size=8, device="cpu")
    asft.train(ref, PostTrainData(clicks, 6), ASFTConfig(), train_cfg, SeedTree(0), progress=False)
    ((rewards, value),) = seen
    # One window per user. User 0 rated 5, 5, 5, 1 (mean 4; its targets hold a 5), user 1 rated
    # 1, 1, 2, 1 (mean 1.25); the first click's rating counts in the mean though it is no target.
    expected = torch.where((rewards == 5).any(1), 4.0, 1.25)[:, None].expand_as(rewards)
    torch.testing.assert_close(value, expected)


def test_batch_and_reward_model_baselines_hand_computed():
    _, _, rewards, mask = tiny_batch()
    assert batch_mean_baseline(rewards, mask).item() == pytest.approx(3.5)  # the padded 4 is ignored
    assert batch_mean_baseline(torch.full_like(rewards, float("nan")), mask).item() == 0.0
    # π_ref = [1/4, 3/4], R̂ = [5, 1]: V̂ = 5/4 + 3/4 = 2.
    rm = TableRewardModel(torch.tensor([5.0, 1.0]), n_members=2)
    r_hat, _ = mean_std(rm.member_scores(torch.tensor([[0]])))
    v = reward_model_baseline(torch.tensor([[[0.0, math.log(3.0)]]]), r_hat)
    assert v.item() == pytest.approx(2.0, rel=1e-6)


# ================================================================ configs


@pytest.mark.parametrize(
    "cls, data, key",
    [
        (LinearRSFTConfig, {"normalize": "sum"}, "method.normalize"),
        (ExpRSFTConfig, {"normalize": "none"}, "method.normalize"),  # renamed to "shifted"
        (ExpRSFTConfig, {"lam": 0.0}, "method.lam"),
        (ExpRSFTConfig, {"lam": 0.001, "normalize": "raw", "r_max": 5.0}, "method.lam"),
        (ASFTConfig, {"beta": 0.0}, "method.beta"),
        (ASFTConfig, {"beta": -1.0}, "method.beta"),
        (ASFTConfig, {"w_max": 0.0}, "method.w_max"),
        (ASFTConfig, {"shrinkage": -1.0}, "method.shrinkage"),
        (ASFTConfig, {"baseline": "median"}, "method.baseline"),
        (ASFTConfig, {"normalize": "shifted"}, "method.normalize"),
        (ASFTConfig, {"temperature": 1.0}, "method.temperature"),
    ],
)
def test_config_errors_name_the_key(cls, data, key):
    with pytest.raises(ConfigError) as info:
        from_dict(cls, data, prefix="method")
    assert key in str(info.value) and "\n" not in str(info.value)


def test_loss_functions_validate_their_knobs():
    logits, targets, rewards, mask = tiny_batch()
    with pytest.raises(ConfigError, match="beta"):
        asft_loss(logits, targets, rewards, mask, 3.0, beta=0.0)
    with pytest.raises(ConfigError, match="w_max"):
        asft_loss(logits, targets, rewards, mask, 3.0, beta=1.0, w_max=0.0)
    with pytest.raises(ConfigError, match="normalize"):
        exp_rsft_loss(logits, targets, rewards, mask, lam=1.0, normalize="none")
    with pytest.raises(ConfigError, match="normalize"):
        linear_rsft_loss(logits, targets, rewards, mask, normalize="shifted")


def test_needs_reward_model():
    assert not linear_rsft.needs_reward_model(LinearRSFTConfig())
    assert [exp_rsft.needs_reward_model(ExpRSFTConfig(normalize=n)) for n in ("raw", "shifted", "batch", "context")] == [
        False, False, False, True,
    ]
    assert [asft.needs_reward_model(ASFTConfig(baseline=b)) for b in ("user-mean", "reward-model", "batch-mean")] == [
        False, True, False,
    ]


def test_methods_without_their_reward_model_say_so():
    clicks = clicks_frame(np.repeat([0, 1], 3), [0, 1, 2, 3, 4, 5], np.ones(6))
    ref = SequencePolicy(build_model(MODEL, 6, torch.Generator().manual_seed(0)), 6)
    data = PostTrainData(clicks, 6)
    for module, cfg in ((exp_rsft, ExpRSFTConfig(normalize="context")), (asft, ASFTConfig(baseline="reward-model"))):
        with pytest.raises(ConfigError, match="reward model") as info:
            module.train(ref, data, cfg, FINETUNE, SeedTree(0), progress=False)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name, cls", [("exp-rsft", ExpRSFTConfig), ("linear-rsft", LinearRSFTConfig), ("asft", ASFTConfig)]
)
def test_recipes_parse_and_share_pi_ref_sections(name, cls):
    recipe, bc = read_toml(ROOT / "agents" / f"{name}.toml"), read_toml(ROOT / "agents" / "bc.toml")
    cfg = from_dict(cls, recipe["method"], prefix="method")
    assert cfg.name == name == recipe["name"]
    for section in ("model", "pretrain", "finetune"):
        assert recipe[section] == bc[section], section
    if name == "exp-rsft":  # defaults kept (r_max: the top of the reward signal, 5 for ratings)
        assert cfg == ExpRSFTConfig(lam=1.0, normalize="batch") and cfg.top("rating") == 5.0


# ================================================================ learning on a tiny bandit world
# 20 items: 0..9 always rated 5 ("good"), 10..19 always rated 1 ("bad"); clicks drawn uniformly, so
# BC is ~uniform (50 % mass on the good half). π_ref is pre-trained briefly by BC; each method must
# move clearly more mass onto the good items within a fixed budget.

MODEL = SASRecConfig(dim=16, n_layers=1, n_heads=2, max_len=8, dropout=0.0)
FINETUNE = TrainConfig(epochs=4, batch_size=32, lr=3e-3, device="cpu")


@pytest.fixture(scope="module")
def bandit():
    world = draw_bandit(150, 12, hist_len=MODEL.max_len)  # tests/bandit.py
    return world.clicks, reference(world.clicks, MODEL, epochs=3, batch_size=32), world.histories


@pytest.mark.parametrize(
    "module, cfg, with_rm, gain",
    [
        # Linear: the weighted click distribution puts 5/6 of the mass on the good half.
        (linear_rsft, LinearRSFTConfig(), False, 0.1),
        (exp_rsft, ExpRSFTConfig(lam=0.5, normalize="shifted"), False, 0.2),
        (exp_rsft, ExpRSFTConfig(lam=0.5, normalize="context"), True, 0.2),
        (asft, ASFTConfig(beta=1.0, baseline="user-mean"), False, 0.2),
        (asft, ASFTConfig(beta=1.0, baseline="reward-model"), True, 0.2),
        (asft, ASFTConfig(beta=1.0, baseline="batch-mean"), False, 0.2),
    ],
    ids=["linear", "exp-shifted", "exp-context", "asft-user-mean", "asft-reward-model", "asft-batch-mean"],
)
def test_method_moves_mass_to_well_rated_items(bandit, module, cfg, with_rm, gain):
    clicks, ref, hist = bandit
    rm = table_reward_model(3, 0.3, seed=0) if with_rm else None
    tuned = module.train(ref, PostTrainData(clicks, N_ITEMS, rm), cfg, FINETUNE, SeedTree(0), progress=False)
    m_ref, m_tuned = good_mass(ref, hist), good_mass(tuned, hist)
    assert 0.4 < m_ref < 0.6, m_ref
    assert m_tuned > m_ref + gain, (m_ref, m_tuned)
    assert [h["stage"] for h in tuned.history][-FINETUNE.epochs:] == [cfg.name] * FINETUNE.epochs
    last = tuned.history[-1]
    assert all(math.isfinite(last[k]) for k in ("loss", "nll", "ess", "mean_w"))
