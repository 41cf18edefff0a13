"""DPO and IPO: hand-computed losses, limit cases, pair mining with a reward ensemble, learning."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from recsim_post.config import from_dict, read_toml
from recsim_post.errors import ConfigError
from recsim_post.models import SASRecConfig, SequencePolicy
from recsim_post.posttrain import TrainConfig
from recsim_post.posttrain import dpo, ipo
from recsim_post.posttrain.data import Batch, PostTrainData
from recsim_post.posttrain.dpo import DPOConfig, dpo_loss
from recsim_post.posttrain.ipo import IPOConfig, ipo_loss
from recsim_post.posttrain.pairs import (
    candidate_stats,
    gather_logp,
    make_prepare,
    mine_pairs,
    offline_candidates,
    online_candidates,
    pick_pairs,
)
from recsim_post.posttrain.reward_model import TableRewardModel
from recsim_post.seeding import SeedTree

from .bandit import N_ITEMS, draw_bandit, good_mass, reference, table_reward_model

ROOT = Path(__file__).resolve().parents[1]
LN2 = math.log(2.0)

# ---------------------------------------------------------------- losses, by hand
#
# One window, three positions, V = 4 items. π_ref is uniform (logits 0): log π_ref = log 1/4 everywhere.
#   position 0: π logits log([4, 2, 1, 1]) -> π = [1/2, 1/4, 1/8, 1/8]; pair y_w = 0, y_l = 1
#               chosen log-ratio log((1/2)/(1/4)) = ln 2, rejected log((1/4)/(1/4)) = 0  -> h = +ln 2
#   position 1: π logits log([1, 1, 2, 4]) -> π = [1/8, 1/8, 1/4, 1/2]; pair y_w = 2, y_l = 3
#               chosen 0, rejected ln 2                                                   -> h = −ln 2
#   position 2: no pair (masked out); its values are arbitrary and must not count.


def hand_pairs():
    logits = torch.log(torch.tensor([[[4.0, 2, 1, 1], [1, 1, 2, 4], [9, 1, 1, 1]]]))
    logp = torch.log_softmax(logits, dim=-1)
    ref_logp = torch.log_softmax(torch.zeros(1, 3, 4), dim=-1)
    chosen, rejected = torch.tensor([[0, 2, 0]]), torch.tensor([[1, 3, 3]])
    mask = torch.tensor([[True, True, False]])
    return (
        gather_logp(logp, chosen), gather_logp(logp, rejected),
        gather_logp(ref_logp, chosen), gather_logp(ref_logp, rejected), mask,
    )


def test_log_probs_of_the_hand_example():
    pc, pr, rc, rr, _ = hand_pairs()
    torch.testing.assert_close(pc[0, :2], torch.log(torch.tensor([0.5, 0.25])))
    torch.testing.assert_close(pr[0, :2], torch.log(torch.tensor([0.25, 0.5])))
    torch.testing.assert_close(rc, torch.full_like(rc, math.log(0.25)))


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_dpo_loss_hand_computed(beta):
    loss, m = dpo_loss(*hand_pairs(), beta=beta)
    # −log σ(βh) = log(1 + e^{−βh}): h = +ln 2 gives log(1 + 2^{−β}), h = −ln 2 gives log(1 + 2^{β}).
    expected = (math.log(1 + 2.0**-beta) + math.log(1 + 2.0**beta)) / 2  # β=1: ln(4.5)/2; β=2: ln(6.25)/2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["margin"].item() == pytest.approx(0.0, abs=1e-6)  # (+ln 2 − ln 2) / 2
    assert m["accuracy"].item() == pytest.approx(0.5)
    assert m["chosen_logratio"].item() == pytest.approx(LN2 / 2, rel=1e-6)
    assert m["rejected_logratio"].item() == pytest.approx(LN2 / 2, rel=1e-6)
    assert m["logp_chosen"].item() == pytest.approx((math.log(0.5) + math.log(0.25)) / 2, rel=1e-6)
    assert m["n_pairs"].item() == 2


@pytest.mark.parametrize("tau", [0.25, 1.0])
def test_ipo_loss_hand_computed(tau):
    loss, m = ipo_loss(*hand_pairs(), tau=tau)
    target = 1 / (2 * tau)  # 2 and 1/2
    expected = ((LN2 - target) ** 2 + (-LN2 - target) ** 2) / 2  # = ln²2 + target²
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(LN2**2 + target**2, rel=1e-6)
    assert m["accuracy"].item() == pytest.approx(0.5)


def zero_margin(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    pc, pr = -3 * torch.rand(n, generator=g), -3 * torch.rand(n, generator=g)
    return pc, pr, pc.clone(), pr.clone(), torch.ones(n, dtype=torch.bool)  # π = π_ref: h = 0


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 30.0])
def test_dpo_at_zero_margin_is_log_2(beta):
    loss, m = dpo_loss(*zero_margin(), beta=beta)
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-7)
    assert m["margin"].item() == 0.0 and m["accuracy"].item() == 0.0


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_ipo_at_zero_margin_is_one_over_four_tau_squared(tau):
    loss, _ = ipo_loss(*zero_margin(), tau=tau)
    assert loss.item() == pytest.approx(1 / (4 * tau**2), rel=1e-6)


def _grads(fn, h_value):
    pc = torch.tensor([h_value - 1.0], requires_grad=True)
    pr = torch.tensor([-1.0], requires_grad=True)
    zeros, mask = torch.zeros(1), torch.ones(1, dtype=torch.bool)
    loss, _ = fn(pc, pr, zeros, zeros, mask)  # h = (h_value − 1) − (−1) = h_value
    return torch.autograd.grad(loss, (pc, pr))


@pytest.mark.parametrize("h", [-3.0, 0.0, 0.5, 4.0])
def test_dpo_gradient_always_pushes_the_margin_up(h):
    beta = 0.5
    g_chosen, g_rejected = _grads(lambda *a: dpo_loss(*a, beta=beta), h)
    # dL/dh = −β σ(−βh) < 0: gradient descent raises log π(y_w) and lowers log π(y_l), at any h.
    assert g_chosen.item() == pytest.approx(-beta / (1 + math.exp(beta * h)), rel=1e-6)
    assert g_rejected.item() == pytest.approx(beta / (1 + math.exp(beta * h)), rel=1e-6)


def test_ipo_gradient_points_at_its_target_margin():
    tau = 0.5  # target h = 1
    below, _ = _grads(lambda *a: ipo_loss(*a, tau=tau), 0.25)
    above, _ = _grads(lambda *a: ipo_loss(*a, tau=tau), 3.0)
    at, _ = _grads(lambda *a: ipo_loss(*a, tau=tau), 1.0)
    assert below.item() == pytest.approx(2 * (0.25 - 1.0)) and above.item() == pytest.approx(2 * (3.0 - 1.0))
    assert at.item() == 0.0  # unlike DPO, IPO stops pushing once h reaches 1/(2τ)


def test_masked_positions_do_not_leak_inf():
    pc, pr, rc, rr, mask = hand_pairs()
    pr = pr.clone()
    pr[0, 2] = -math.inf  # a masked-out slot with an infinite log-ratio
    for fn in (lambda *a: dpo_loss(*a, beta=1.0), lambda *a: ipo_loss(*a, tau=1.0)):
        loss, m = fn(pc, pr, rc, rr, mask)
        assert math.isfinite(loss.item()) and math.isfinite(m["margin"].item())
    loss, m = dpo_loss(pc, pr, rc, rr, torch.zeros_like(mask), beta=1.0)  # no pairs at all
    assert loss.item() == 0.0 and m["n_pairs"].item() == 0


# ---------------------------------------------------------------- pair mining


def test_three_candidates_by_hand():
    # Candidates (items 4, 0, 2) at one position, with ensemble mean / spread:
    #   item 4: μ = 1.0, s = 0.5     item 0: μ = 3.0, s = 0.2     item 2: μ = 2.0, s = 0.1
    # y_w = item 0 (highest μ), y_l = item 4 (lowest μ).
    #   z = 2: LCB_w = 3.0 − 0.4 = 2.6 > UCB_l = 1.0 + 1.0 = 2.0  -> strict keeps it
    #   z = 3: LCB_w = 3.0 − 0.6 = 2.4 < UCB_l = 1.0 + 1.5 = 2.5  -> strict drops it, loose keeps it
    cand = torch.tensor([[[4, 0, 2]]])
    mu, sd = torch.tensor([[[1.0, 3.0, 2.0]]]), torch.tensor([[[0.5, 0.2, 0.1]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    for z, rule, kept in [(2.0, "strict", True), (3.0, "strict", False), (3.0, "loose", True)]:
        p = pick_pairs(cand, mu, sd, mask, z, rule)
        assert (p.chosen.item(), p.rejected.item(), bool(p.keep)) == (0, 4, kept), (z, rule)
        assert p.gap.item() == pytest.approx(2.0)
    # A repeated item or a tie in μ is never a pair, whatever the rule; nor is a masked position.
    same = torch.tensor([[[2, 2, 2]]])
    assert not pick_pairs(same, torch.full((1, 1, 3), 2.0), torch.zeros(1, 1, 3), mask, 0.0, "loose").keep.any()
    tie = torch.tensor([[[1, 3]]])
    assert not pick_pairs(tie, torch.full((1, 1, 2), 9.0), torch.zeros(1, 1, 2), mask, 0.0, "loose").keep.any()
    assert not pick_pairs(cand, mu, sd, torch.zeros(1, 1, dtype=torch.bool), 0.0, "loose").keep.any()


def test_candidate_stats_are_the_member_mean_and_population_std():
    scores = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 7.0]]).view(2, 1, 1, 3)  # E = 2 members, V = 3
    mu, sd = candidate_stats(scores, torch.tensor([[[2, 0]]]))
    torch.testing.assert_close(mu, torch.tensor([[[5.0, 2.0]]]))
    torch.testing.assert_close(sd, torch.tensor([[[2.0, 1.0]]]))  # |7 − 3| / 2, |3 − 1| / 2


def test_offline_candidates_are_the_click_and_pi_ref_samples():
    # π_ref puts all its mass on item 5, so the candidates are exactly {logged click, 5}.
    V = 8
    ref_logp = torch.log_softmax(torch.where(torch.arange(V) == 5, 0.0, -math.inf).expand(2, 3, V), -1)
    scores = torch.arange(V, dtype=torch.float32).expand(3, 2, 3, V)  # 3 members agree: item i is worth i
    targets = torch.tensor([[2, 7, 5], [-1, 0, 6]])
    mask = targets >= 0
    cand = offline_candidates(ref_logp, targets, 3, torch.Generator().manual_seed(0))
    assert cand.shape == (2, 3, 4) and cand[..., 1:].eq(5).all() and cand[..., 0].tolist() == [[2, 7, 5], [0, 0, 6]]
    p = mine_pairs(cand, scores, mask, 1.0, "strict")
    assert p.keep.tolist() == [[True, True, False], [False, True, True]]  # click 5 = sample 5: no pair
    assert p.chosen[p.keep].tolist() == [5, 7, 5, 6]
    assert p.rejected[p.keep].tolist() == [2, 5, 0, 5]


def table_model(V=12, noise=0.5, seed=1):
    table = torch.linspace(1.0, 5.0, V)
    return TableRewardModel(table, n_members=5, member_noise=noise, generator=torch.Generator().manual_seed(seed))


def test_strict_pairs_have_disjoint_intervals_and_loose_yields_at_least_as_many():
    V, z = 12, 1.0
    rm = table_model(V)
    members = rm.members.numpy().astype(np.float64)  # (E, V): the intervals, recomputed independently
    mu_np, sd_np = members.mean(0), members.std(0)
    g = torch.Generator().manual_seed(0)
    ref_logp = torch.log_softmax(torch.randn(40, 6, V, generator=g), -1)
    targets = torch.randint(0, V, (40, 6), generator=g)
    mask = torch.rand(40, 6, generator=g) < 0.8
    cand = offline_candidates(ref_logp, targets, 2, torch.Generator().manual_seed(7))
    scores = rm.member_scores(torch.zeros(40, 6, dtype=torch.long))
    strict, loose = mine_pairs(cand, scores, mask, z, "strict"), mine_pairs(cand, scores, mask, z, "loose")
    assert not (strict.keep & ~mask).any() and not (loose.keep & ~mask).any()
    w, l = strict.chosen[strict.keep].numpy(), strict.rejected[strict.keep].numpy()
    assert len(w) > 0
    assert np.all(mu_np[w] - z * sd_np[w] > mu_np[l] + z * sd_np[l] - 1e-6)
    assert np.all(w != l)
    # Every strict pair is a loose pair, and the loose rule also keeps some the strict one drops.
    assert not (strict.keep & ~loose.keep).any()
    assert int(loose.keep.sum()) > int(strict.keep.sum())
    wl, ll = loose.chosen[loose.keep].numpy(), loose.rejected[loose.keep].numpy()
    assert np.all(mu_np[wl] > mu_np[ll])
    # y_w and y_l are the extremes of each position's candidates by ensemble mean.
    cand_mu = mu_np[cand.numpy()]
    rows = loose.keep.numpy()
    assert np.allclose(mu_np[wl], cand_mu.max(-1)[rows]) and np.allclose(mu_np[ll], cand_mu.min(-1)[rows])


class FixedLogits(nn.Module):
    """A stand-in sequence model whose next-item logits are the same after every history."""

    def __init__(self, logits: torch.Tensor, max_len: int = 4) -> None:
        super().__init__()
        self.register_buffer("v", logits)
        self.cfg, self.n_items = SASRecConfig(dim=8, n_layers=1, n_heads=1, max_len=max_len), len(logits)

    def forward(self, inputs, generator=None):  # noqa: ANN001, ANN201
        return self.v.expand(*inputs.shape, len(self.v)).clone()


def stub_batch(B=30, L=4, V=10):
    targets = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[:, 0] = False
    targets[:, 0] = -1
    inputs = torch.zeros(B, L, dtype=torch.long)
    return Batch(inputs, targets, torch.full((B, L), float("nan")), mask, torch.arange(B))


def test_online_pairs_come_from_the_current_policy_and_offline_from_pi_ref():
    V = 10
    ref = SequencePolicy(FixedLogits(torch.zeros(V)), V)  # uniform π_ref: log π_ref = −log 10
    current = FixedLogits(torch.where((torch.arange(V) == 3) | (torch.arange(V) == 7), 0.0, -math.inf))
    rm = TableRewardModel(torch.arange(V, dtype=torch.float32), n_members=3, member_noise=0.0)
    batch = stub_batch(V=V)
    for pairs, disable in [("online", True), ("offline", False)]:
        cfg = DPOConfig(pairs=pairs, z=1.0, rule="strict", n_candidates=4, disable_dropout=disable)
        x = make_prepare(ref, rm, cfg, SeedTree(0))(current, batch).extra
        keep = x["pair_mask"]
        assert current.training == (not disable)  # the update runs in the mode prepare leaves
        assert not keep[:, 0].any() and keep.any()
        torch.testing.assert_close(x["ref_chosen"], torch.full_like(x["ref_chosen"], -math.log(V)))
        assert x["pair_yield"].item() == pytest.approx(keep.sum().item() / batch.mask.sum().item())
        if pairs == "online":  # only π's two items, better one chosen (R̂(y) = y), ~half the draws differ
            assert x["chosen"][keep].eq(7).all() and x["rejected"][keep].eq(3).all()
            assert 0.3 < x["pair_yield"].item() < 0.7
            assert x["rm_gap"].item() == pytest.approx(4.0)
        else:  # offline candidates span π_ref's whole catalogue, not just π's items
            assert set(x["chosen"][keep].tolist()) - {3, 7}


def test_online_ties_give_no_pair():
    V = 6
    cand = online_candidates(torch.log_softmax(torch.zeros(20, 5, V), -1), torch.Generator().manual_seed(0))
    assert cand.shape == (20, 5, 2) and (cand[..., 0] != cand[..., 1]).any()
    scores = torch.ones(3, 20, 5, V)  # every item equally good: no preference to learn
    assert not mine_pairs(cand, scores, torch.ones(20, 5, dtype=torch.bool), 0.0, "loose").keep.any()


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "cls, data, key",
    [
        (DPOConfig, {"beta": 0.0}, "beta"),
        (DPOConfig, {"beta": -1.0}, "beta"),
        (DPOConfig, {"n_candidates": 0}, "n_candidates"),
        (DPOConfig, {"z": -0.5}, "z"),
        (DPOConfig, {"rule": "medium"}, "rule"),
        (DPOConfig, {"pairs": "replay"}, "pairs"),
        (DPOConfig, {"name": "ipo"}, "name"),
        (DPOConfig, {"tau": 1.0}, "tau"),
        (IPOConfig, {"tau": 0.0}, "tau"),
        (IPOConfig, {"n_candidates": 2.5}, "n_candidates"),
        (IPOConfig, {"beta": 0.1}, "beta"),
    ],
)
def test_config_errors_name_the_key(cls, data, key):
    with pytest.raises(ConfigError) as info:
        from_dict(cls, {"name": cls().name, **data} if "name" not in data else data, prefix="method")
    msg = str(info.value)
    assert key in msg and "\n" not in msg


def test_pure_losses_reject_bad_temperatures():
    with pytest.raises(ConfigError, match="beta"):
        dpo_loss(*zero_margin(), beta=0.0)
    with pytest.raises(ConfigError, match="tau"):
        ipo_loss(*zero_margin(), tau=-1.0)


@pytest.mark.parametrize("stem, method", [("dpo", "offline"), ("ipo", "offline"), ("dpo-online", "online")])
def test_recipes_parse_and_share_pi_ref_with_bc(stem, method):
    recipe, bc = read_toml(ROOT / "agents" / f"{stem}.toml"), read_toml(ROOT / "agents" / "bc.toml")
    assert recipe["model"] == bc["model"] and recipe["pretrain"] == bc["pretrain"]
    module = {"dpo": dpo, "ipo": ipo}[recipe["method"]["name"]]
    cfg = from_dict(module.CONFIG, recipe["method"])
    assert cfg.pairs == method and module.needs_reward_model(cfg)
    from_dict(TrainConfig, recipe["finetune"])
    assert recipe["name"] == stem and recipe["description"]


# ---------------------------------------------------------------- training

@pytest.fixture(scope="module")
def bandit():
    """The tiny bandit (tests/bandit.py: 60 users, 9 clicks each), so BC learns a ~uniform π_ref;
    the reward ensemble knows the table up to a small per-member offset."""
    world = draw_bandit(60, 9)
    ref = reference(world.clicks, SASRecConfig(dim=16, n_layers=1, n_heads=2, max_len=8, dropout=0.1),
                    epochs=2, batch_size=16)
    return ref, PostTrainData(world.clicks, N_ITEMS, table_reward_model(5, 0.1, seed=1)), world.histories


FINETUNE = TrainConfig(epochs=10, batch_size=16, lr=3e-3, device="cpu")  # 40 steps


@pytest.mark.parametrize(
    "module, cfg",
    [(dpo, DPOConfig(beta=0.5)), (ipo, IPOConfig(tau=0.5)), (dpo, DPOConfig(beta=0.5, pairs="online"))],
    ids=["dpo", "ipo", "dpo-online"],
)
def test_preference_methods_move_mass_to_the_good_items(bandit, module, cfg):
    ref, data, hist = bandit
    before = {k: v.clone() for k, v in ref.model.state_dict().items()}
    tuned = module.train(ref, data, cfg, FINETUNE, SeedTree(0), progress=False)
    m_ref, m_tuned = good_mass(ref, hist), good_mass(tuned, hist)
    assert 0.4 < m_ref < 0.6, m_ref
    assert m_tuned > m_ref + 0.15, (m_ref, m_tuned)
    last = tuned.history[-1]
    assert last["stage"] == cfg.name and last["accuracy"] > 0.9 and last["margin"] > 0
    assert 0 < last["pair_yield"] <= 1 and last["rm_gap"] > 3.0  # pairs are good-vs-bad items
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, before[k])  # π_ref untouched


def test_ipo_stops_near_its_target_margin_while_dpo_keeps_going(bandit):
    ref, data, _ = bandit
    ipo_run = ipo.train(ref, data, IPOConfig(tau=0.5), FINETUNE, SeedTree(0), progress=False)
    dpo_run = dpo.train(ref, data, DPOConfig(beta=0.5), FINETUNE, SeedTree(0), progress=False)
    assert ipo_run.history[-1]["margin"] == pytest.approx(1.0, abs=0.25)  # target 1/(2τ) = 1
    assert dpo_run.history[-1]["margin"] > 2.0


def test_first_step_starts_at_zero_margin(bandit):
    """π starts as a copy of π_ref; without dropout the first step sees h = 0 exactly (DPO loss log 2,
    IPO loss 1/(4τ²)); with dropout on, the masks perturb π and h is not 0."""
    ref, data, _ = bandit
    one_step = TrainConfig(epochs=1, batch_size=10_000, lr=1e-8, device="cpu")
    run = lambda module, cfg: module.train(ref, data, cfg, one_step, SeedTree(0), progress=False).history[-1]  # noqa: E731
    d, i = run(dpo, DPOConfig(beta=0.3)), run(ipo, IPOConfig(tau=0.4))
    assert d["loss"] == pytest.approx(math.log(2.0), abs=1e-6) and d["margin"] == pytest.approx(0.0, abs=1e-6)
    assert i["loss"] == pytest.approx(1 / (4 * 0.4**2), rel=1e-6)
    noisy = run(dpo, DPOConfig(beta=0.3, disable_dropout=False))
    assert abs(noisy["margin"]) > 1e-4


def test_same_seed_same_run_and_no_global_rng(bandit):
    ref, data, _ = bandit
    cfg, short = DPOConfig(beta=0.5, pairs="online"), TrainConfig(epochs=2, batch_size=16, device="cpu")
    state = torch.random.get_rng_state()
    a = dpo.train(ref, data, cfg, short, SeedTree(3), progress=False)
    b = dpo.train(ref, data, cfg, short, SeedTree(3), progress=False)
    c = dpo.train(ref, data, cfg, short, SeedTree(4), progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and a.history == b.history
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_training_needs_a_matching_reward_model(bandit):
    ref, data, _ = bandit
    for module, cfg in ((dpo, DPOConfig()), (ipo, IPOConfig())):
        with pytest.raises(ConfigError, match="reward_model") as info:
            module.train(ref, PostTrainData(data.clicks, N_ITEMS), cfg, FINETUNE, SeedTree(0), progress=False)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="reward model covers"):
        dpo.train(ref, PostTrainData(data.clicks, N_ITEMS, table_model(V=7)), DPOConfig(), FINETUNE, SeedTree(0), progress=False)
