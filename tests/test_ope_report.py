"""OPE report: logged contexts, estimated propensities, exact truth, the report and its summary."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from recsim_post.errors import ConfigError, LogError
from recsim_post.truth.ground_truth import GroundTruth
from recsim_post.ope.estimators import bandit_data_from_logs
from recsim_post.policy import FunctionPolicy, UniformPolicy
from recsim_post.truth.references import LoggerPolicy
from recsim_post.ope.data import click_histories_at, logged_contexts, policy_probabilities
from recsim_post.ope.exact import exact_reward
from recsim_post.ope.propensity import PropensityModelConfig, estimated_propensities, fit_logger_model
from recsim_post.ope.report import format_summary, ope_report, ope_report_from_simulation, summarise
from recsim_post.logs.public import PAD
from recsim_post.logs.simulate import simulate
from recsim_post.world.config import SatiationConfig

from tests.conftest import tiny_scenario

FAST_BC = PropensityModelConfig(dim=16, max_len=10, epochs=1, batch_size=512)


@pytest.fixture(scope="module")
def sim0():
    return simulate(tiny_scenario(seed=0, satiation=SatiationConfig(strength=0.0)))


def test_click_histories_are_strictly_before_the_round_and_truncated():
    clicks = pd.DataFrame({
        "user_id": [1, 1, 1, 0, 1],
        "timestamp": [0, 2, 2, 1, 5],
        "position": [0, 3, 1, 0, 0],
        "item_id": [10, 12, 11, 7, 13],
    })
    users = np.array([1, 1, 1, 0, 0, 2])
    ts = np.array([0, 2, 3, 1, 9, 4])
    h = click_histories_at(clicks, users, ts, max_len=2)
    expected = np.array([
        [PAD, PAD],  # nothing before round 0
        [PAD, 10],  # round-2 clicks are not yet seen in round 2
        [11, 12],  # last two, in (timestamp, position) order
        [PAD, PAD],
        [PAD, 7],
        [PAD, PAD],  # a user with no clicks
    ])
    np.testing.assert_array_equal(h, expected)


def test_estimated_propensities_are_probabilities(sim0):
    ctx = logged_contexts(sim0.public.interactions, max_len=10)
    model = fit_logger_model(ctx, sim0.world.n_items, FAST_BC, seed=0)
    probs = policy_probabilities(model, ctx)
    assert probs.shape == (len(ctx), sim0.world.n_items)
    assert np.all(probs > 0) and np.all(probs <= 1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    for method in ("bc", "frequency"):
        p = estimated_propensities(ctx, sim0.world.n_items, method, floor=1e-3, model=model)
        assert p.shape == (len(ctx),) and np.all(p >= 1e-3) and np.all(p <= 1)
    freq = estimated_propensities(ctx, sim0.world.n_items, "frequency", floor=1e-9)
    _, first = np.unique(ctx.action, return_index=True)
    assert np.isclose(freq[first].sum(), 1.0)  # one share per shown item, shares sum to one
    with pytest.raises(ValueError, match="floor"):
        estimated_propensities(ctx, sim0.world.n_items, "frequency", floor=0.0)


def test_logger_as_target_has_unit_ips_weights():
    cfg = tiny_scenario(seed=1, satiation=SatiationConfig(strength=0.0))
    cfg = dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, trend_weight=0.0))
    sim = simulate(cfg)
    truth = GroundTruth.from_simulation(sim)
    ctx = logged_contexts(sim.public.interactions)
    logger_pi = policy_probabilities(LoggerPolicy(truth.logger, truth.trend), ctx)
    data = bandit_data_from_logs(sim.public.interactions, sim.sealed_impressions).with_policy(pi_all=logger_pi)
    np.testing.assert_allclose(data.weight, 1.0, rtol=1e-5)


def test_exact_truth_rebuilds_satiation_and_matches_ground_truth_at_T():
    sim = simulate(tiny_scenario(seed=2))  # satiation on: r* moves over time
    truth = GroundTruth.from_simulation(sim)
    ctx = logged_contexts(sim.public.interactions)
    sealed = bandit_data_from_logs(sim.public.interactions, sim.sealed_impressions).reward
    ex = exact_reward(truth, sim.public, ctx, sealed)  # raises if the rebuild disagrees with sealed r*
    r = ex.rows(slice(0, len(ctx)))
    np.testing.assert_allclose(r[np.arange(len(ctx)), ctx.action], sealed, atol=1e-6)
    # with satiation off, r*(u, a, t) is r*(u, a, T)
    sim0 = simulate(tiny_scenario(seed=2, satiation=SatiationConfig(strength=0.0)))
    t0 = GroundTruth.from_simulation(sim0)
    c0 = logged_contexts(sim0.public.interactions)
    s0 = bandit_data_from_logs(sim0.public.interactions, sim0.sealed_impressions).reward
    e0 = exact_reward(t0, sim0.public, c0, s0)
    np.testing.assert_allclose(e0.rows(slice(0, len(c0))), t0.true_reward(c0.user), atol=1e-9)


def test_report_rows_and_ips_error_within_bootstrap_noise(sim0):
    n = sim0.world.n_items
    rep = ope_report_from_simulation(
        sim0, {"uniform": UniformPolicy(n)}, n_bootstrap=200, seed=0, propensity="frequency"
    )
    assert len(rep) == 1 * 5 * 2
    assert {"policy", "estimator", "pscore", "estimate", "ci_low", "ci_high", "truth", "error", "covered"} <= set(rep.columns)
    assert set(rep["estimator"]) == {"ips", "snips", "dm", "dr", "switch-dr"}
    assert set(rep["pscore"]) == {"true", "estimated"}
    assert rep["truth"].nunique() == 1 and np.isfinite(rep["truth"]).all()
    np.testing.assert_allclose(rep["error"], rep["estimate"] - rep["truth"])
    assert (rep["ci_low"] <= rep["ci_high"]).all()
    ips = rep[(rep.estimator == "ips") & (rep.pscore == "true")].iloc[0]
    se = (ips.ci_high - ips.ci_low) / (2 * 1.96)
    assert abs(ips.error) < 4 * se
    # the truth of the uniform policy is the mean of r* over items and logged contexts
    truth = GroundTruth.from_simulation(sim0)
    ctx = logged_contexts(sim0.public.interactions)
    assert np.isclose(ips.truth, truth.true_reward(ctx.user).mean())


def test_summary_by_hand():
    rep = pd.DataFrame({
        "policy": ["a", "b", "a", "b"],
        "estimator": ["ips", "ips", "ips", "ips"],
        "pscore": ["true", "true", "estimated", "estimated"],
        "estimate": [1.0, 3.0, 2.0, 2.0],
        "ci_low": [0.0, 2.5, 1.5, 1.0],
        "ci_high": [2.0, 3.5, 1.8, 3.0],
        "truth": [1.5, 2.0, 1.0, 2.0],
        "error": [-0.5, 1.0, 1.0, 0.0],
        "covered": [True, False, False, True],
    })
    s = summarise(rep).set_index("pscore")
    assert np.isclose(s.loc["true", "bias"], 0.25)
    assert np.isclose(s.loc["true", "rmse"], np.sqrt((0.25 + 1.0) / 2))
    assert np.isclose(s.loc["true", "coverage"], 0.5)
    assert np.isclose(s.loc["estimated", "bias"], 0.5)
    assert np.isclose(s.loc["estimated", "rmse"], np.sqrt(0.5))
    assert np.isclose(s.loc["estimated", "ci_width"], (0.3 + 2.0) / 2)
    lines = format_summary(summarise(rep)).splitlines()
    assert lines[0].split() == ["estimator", "bias", "(true)", "bias", "(esti)", "rmse", "(true)", "rmse", "(esti)",
                                "coverage", "(true)", "coverage", "(esti)"]
    assert set(lines[1]) == {"-"} and len(lines) == 3
    assert lines[2].split() == ["ips", "0.2500", "0.5000", f"{np.sqrt(0.625):.4f}", f"{np.sqrt(0.5):.4f}", "0.50", "0.50"]


@pytest.mark.slow
def test_end_to_end_with_bc_propensities(sim0):
    n = sim0.world.n_items
    truth = GroundTruth.from_simulation(sim0)
    rep = ope_report(
        sim0.public, truth, {"uniform": UniformPolicy(n), "logger@T": LoggerPolicy(truth.logger, truth.trend)},
        n_bootstrap=50, seed=1, propensity="bc", model_cfg=FAST_BC, max_len=10,
    )
    assert len(rep) == 2 * 5 * 2
    assert np.isfinite(rep[["estimate", "ci_low", "ci_high", "truth"]].to_numpy()).all()
    assert len(summarise(rep)) == 10


def test_past_q_uses_earlier_rounds_only():
    from recsim_post.ope.data import LoggedContexts
    from recsim_post.ope.qtable import past_q

    ctx = LoggedContexts(
        user=np.zeros(4, np.int64), timestamp=np.array([0, 1, 1, 2]), action=np.array([0, 0, 1, 0]),
        slate_id=np.arange(4), hist=np.full((4, 1), PAD),
    )
    q = past_q(ctx, np.array([2.0, 4.0, 6.0, 8.0]), n_items=2, shrinkage=1.0)
    np.testing.assert_allclose(q[0], [0.0, 0.0])  # nothing before round 0
    np.testing.assert_allclose(q[1], [(2 + 2) / 2, 2 / 1])  # round 1 sees round 0 only: rbar = 2
    np.testing.assert_allclose(q[1], q[2])
    np.testing.assert_allclose(q[3], [(2 + 4 + 4) / 3, (6 + 4) / 2])  # rbar = 4


# ---------------------------------------------------------------- deficient support, by hand
# One context, four actions; the logger never takes actions 2 and 3 (pi0 = 0 there).
#   a    pi0    r    q^
#   0   0.25    1   0.5
#   1   0.75    2   0.5
#   2   0       3   1.0
#   3   0       4   1.0
# The log holds a = 0 once and a = 1 three times: its empirical distribution IS pi0, so every
# estimate below equals its expectation over logs.
SUPPORT_PI0 = np.array([0.25, 0.75, 0.0, 0.0])
SUPPORT_R = np.array([1.0, 2.0, 3.0, 4.0])
SUPPORT_Q = np.array([0.5, 0.5, 1.0, 1.0])


def _support_data(pi: np.ndarray, actions=np.array([0, 1, 1, 1]), q=SUPPORT_Q):
    from recsim_post.ope.estimators import BanditData

    n = len(actions)
    return BanditData(
        context=np.zeros(n, np.int64), action=actions, reward=SUPPORT_R[actions], pscore=SUPPORT_PI0[actions],
        pi_all=np.tile(pi, (n, 1)), q_hat_all=np.tile(q, (n, 1)),
    )


def test_ips_is_exact_when_the_target_stays_on_the_logger_support():
    from recsim_post.ope.estimators import IPS

    pi = np.array([0.6, 0.4, 0.0, 0.0])  # V = 0.6 * 1 + 0.4 * 2 = 1.4
    # IPS = (1/4) (0.6/0.25 * 1 + 3 * 0.4/0.75 * 2) = (2.4 + 3.2) / 4 = 1.4
    assert IPS().estimate(_support_data(pi)) == pytest.approx(1.4, abs=1e-12)


def test_deficient_support_bias_is_the_off_support_reward():
    from recsim_post.ope.estimators import DM, DR, IPS, SNIPS

    pi = np.full(4, 0.25)  # V = 2.5; pi puts 0.5 of its mass where pi0 = 0
    d = _support_data(pi)
    assert np.all(np.isfinite(d.weight))
    v = float(pi @ SUPPORT_R)
    off = SUPPORT_PI0 == 0
    # E[IPS] = V - sum_{off} pi r = 2.5 - 0.75 - 1 = 0.75;  by hand (1 + 3 * 1/3 * 2) / 4 = 0.75
    assert IPS().estimate(d) == pytest.approx(v - float(pi[off] @ SUPPORT_R[off]), abs=1e-12)
    assert IPS().estimate(d) == pytest.approx(0.75, abs=1e-12)
    # E[DR] = V - sum_{off} pi (r - q^) = 2.5 - 0.5 - 0.75 = 1.25;  by hand DM 0.75 + (0.5 + 1.5) / 4
    assert DR().estimate(d) == pytest.approx(v - float(pi[off] @ (SUPPORT_R - SUPPORT_Q)[off]), abs=1e-12)
    assert DR().estimate(d) == pytest.approx(1.25, abs=1e-12)
    assert DM().estimate(d) == pytest.approx(0.75, abs=1e-12)
    # SNIPS rescales the on-support part to the whole mass: (0.25 * 1 + 0.25 * 2) / 0.5 = 1.5
    assert SNIPS().estimate(d) == pytest.approx(1.5, abs=1e-12)


def test_deficient_support_bias_over_sampled_logs():
    """The same world sampled: 300 logs of 400 rows (seed 2024); mean IPS within 3 SE of
    V - sum_off pi r = 0.75, and more than 20 SE away from V = 2.5."""
    from recsim_post.ope.estimators import IPS

    rng = np.random.default_rng(2024)
    pi = np.full(4, 0.25)
    est = np.array([IPS().estimate(_support_data(pi, rng.choice(4, size=400, p=SUPPORT_PI0))) for _ in range(300)])
    se = est.std(ddof=1) / np.sqrt(len(est))
    assert abs(est.mean() - 0.75) < 3 * se
    assert abs(est.mean() - 2.5) > 20 * se


def test_snips_interval_skips_resamples_without_weight():
    """Weights 0, 0, 0, 1: a resample with no row of weight > 0 has no SNIPS value; it is left out
    (no NaN, no warning), and a target with no mass on any logged action gives NaN, not a crash."""
    import warnings

    from recsim_post.ope.estimators import SNIPS, BanditData

    d = BanditData(np.zeros(4, np.int64), np.array([0, 0, 0, 1]), np.array([1.0, 1.0, 1.0, 3.0]),
                   np.full(4, 0.5), pi_on_action=np.array([0.0, 0.0, 0.0, 0.5]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lo, hi = SNIPS().interval(d, 200, 0.05, np.random.default_rng(0))
    assert lo == hi == 3.0  # every defined resample holds row 3 only among the weighted rows


@pytest.fixture(scope="module")
def partial():
    from recsim_post.world.config import LoggingConfig

    sim = simulate(tiny_scenario(seed=3, logging=LoggingConfig(slate_size=5, support=0.8)))
    return sim, GroundTruth.from_simulation(sim)


def test_report_under_deficient_support_is_finite_and_its_bias_is_exact(partial):
    sim, truth = partial
    n = truth.n_items
    off = np.ones(n, bool)
    off[truth.logger.support_idx] = False
    assert 0 < off.sum() < n
    off_only = np.where(off, 0.0, -np.inf).astype(np.float32)
    policies = {
        "uniform": UniformPolicy(n),
        "logger@T": LoggerPolicy(truth.logger, truth.trend),  # -inf off the support
        "off-support": FunctionPolicy(n, lambda h, c: np.tile(off_only, (len(h), 1))),  # lives where the logger never goes
    }
    rep = ope_report(sim.public, truth, policies, n_bootstrap=50, seed=0, propensity="frequency")
    r = rep.set_index(["policy", "estimator", "pscore"])
    defined = ~((rep.policy == "off-support") & (rep.estimator == "snips"))
    assert np.isfinite(rep.loc[defined, ["estimate", "ci_low", "ci_high", "truth", "max_weight", "error_norm"]].to_numpy()).all()
    assert rep.loc[~defined, ["estimate", "ci_low", "ci_high", "covered"]].isna().all().all()  # undefined, not a crash
    # uniform: the share of items off the support; the logger: none
    assert r.loc[("uniform", "ips", "true"), "off_support"] == pytest.approx(off.mean())
    assert r.loc[("logger@T", "ips", "true"), "off_support"] == pytest.approx(0.0, abs=1e-12)
    assert r.loc[("logger@T", "ips", "true"), "support_bias"] == pytest.approx(0.0, abs=1e-12)
    # a target that lives off the support: every weight is 0, IPS = 0, so its error is exactly the
    # deficient-support bias -(1/n) sum_i sum_{a off} pi r* = -V; DR = DM (no correction survives)
    ips = r.loc[("off-support", "ips", "true")]
    assert ips["estimate"] == 0.0 and ips["max_weight"] == 0.0
    assert ips["error"] == pytest.approx(ips["support_bias"], rel=1e-12)
    assert ips["support_bias"] == pytest.approx(-ips["truth"], rel=1e-12)
    assert r.loc[("off-support", "dr", "true"), "estimate"] == pytest.approx(r.loc[("off-support", "dm", "true"), "estimate"])


def test_report_without_sealed_propensities_uses_estimated_ones_and_says_so(sim0):
    truth = GroundTruth.from_simulation(sim0)
    cols = [c for c in ("propensity", "propensity_item") if c in truth.impressions.columns]
    blind = dataclasses.replace(truth, impressions=truth.impressions.drop(columns=cols))
    with pytest.raises(LogError, match="no propensities"):
        bandit_data_from_logs(sim0.public.interactions, blind.impressions)
    said = []
    rep = ope_report(sim0.public, blind, {"uniform": UniformPolicy(truth.n_items)}, n_bootstrap=20,
                     propensity="frequency", say=said.append)
    assert set(rep["pscore"]) == {"estimated"} and len(rep) == 5
    assert len(said) == 1 and "no propensities" in said[0] and "estimated propensities (frequency) only" in said[0]
    assert rep.attrs["notes"] == said
    full = ope_report(sim0.public, truth, {"uniform": UniformPolicy(truth.n_items)}, n_bootstrap=20, propensity="frequency")
    est = full[full.pscore == "estimated"].reset_index(drop=True)
    pd.testing.assert_frame_equal(rep.reset_index(drop=True), est)  # same numbers as the estimated half
    lines = format_summary(summarise(rep)).splitlines()  # a table with one pscore column
    assert lines[0].split() == ["estimator", "bias", "(esti)", "rmse", "(esti)", "coverage", "(esti)"]
    assert [line.split()[0] for line in lines[2:]] == ["ips", "snips", "dm", "dr", "switch-dr"]


# ---------------------------------------------------------------- the personalised q^
SMALL_Q = dict(dim=8, n_layers=1, n_heads=1, max_len=5, epochs=1, batch_size=64, device="cpu")


def test_user_folds_keep_users_together_and_balance():
    from recsim_post.ope.qmodel import user_folds

    users = np.array([5, 5, 7, 9, 7, 5, 11])
    f = user_folds(users, 2, np.random.default_rng(0))
    for u in np.unique(users):
        assert len(set(f[users == u])) == 1
    per_fold = [len(set(users[f == k])) for k in (0, 1)]
    assert sorted(per_fold) == [2, 2]
    np.testing.assert_array_equal(f, user_folds(users, 2, np.random.default_rng(0)))


def test_item_features_are_standardised_and_one_hot():
    from recsim_post.ope.qmodel import item_features

    items = pd.DataFrame({"item_id": [2, 0, 1], "genre": [1, 0, 1], "f1": [0.0, 0.0, 0.0], "f0": [3.0, 1.0, 2.0]})
    phi = item_features(items, 3)
    s = np.sqrt(2 / 3)  # std of (1, 2, 3)
    np.testing.assert_allclose(phi, [[-1 / s, 0, 1, 0], [0, 0, 0, 1], [1 / s, 0, 0, 1]], atol=1e-6)


def test_sequence_q_computes_its_formula():
    import torch

    from recsim_post.ope.qmodel import SequenceQ, SequenceQConfig

    cfg = SequenceQConfig(**SMALL_Q)
    phi = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    m = SequenceQ(cfg, 6, phi, init_bias=0.7, generator=torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():
        for p in m.head.parameters():  # make every term count
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        hist = torch.tensor([[-1, -1, 0, 3, 2], [-1, -1, -1, -1, 5]])
        s = m.backbone.encode(hist)[:, -1]
        h = m.head
        e = m.backbone.item_emb.weight[1:] + torch.from_numpy(phi) @ m.proj
        expected = h.a[0] + h.b[0][None, :] + (s @ h.g[0])[:, None] + (s @ h.W[0].T + h.c[0]) @ e.T
        torch.testing.assert_close(m(hist), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m(hist, torch.tensor([4, 1])), expected[[0, 1], [4, 1]], rtol=1e-5, atol=1e-5)


def _synthetic_rows(n: int, seed: int):
    """Users click within one genre; r = 1 if the action's genre is the last click's genre, else 0."""
    rng = np.random.default_rng(seed)
    genre = np.arange(12) % 3
    users = rng.integers(0, 60, n)
    g_user = users % 3
    hist = np.stack([rng.choice(np.flatnonzero(genre == g), 4) for g in g_user])
    action = rng.integers(0, 12, n)
    reward = (genre[action] == g_user).astype(float)
    return users, hist, action, reward, genre


def test_crossfitted_q_never_sees_the_rows_it_scores():
    """Changing the rewards of fold-0 users leaves q^ on fold-0 rows bit for bit unchanged (their
    model was trained on the other fold only) and changes it on the other fold's rows."""
    from recsim_post.ope.qmodel import SequenceQConfig, sequence_q, user_folds
    from recsim_post.seeding import SeedTree

    users, hist, action, reward, _ = _synthetic_rows(300, 0)
    cfg = SequenceQConfig(**SMALL_Q)
    seed = SeedTree(3)
    q = sequence_q(hist, users, action, reward, 12, None, cfg, seed)
    fold = user_folds(users, 2, seed.generator("folds"))
    changed = np.where(fold == 0, 1.0 - reward, reward)
    q2 = sequence_q(hist, users, action, changed, 12, None, cfg, seed)
    np.testing.assert_array_equal(q[fold == 0], q2[fold == 0])
    assert not np.allclose(q[fold == 1], q2[fold == 1])
    assert q.shape == (300, 12) and np.isfinite(q).all()


def test_sequence_q_learns_what_the_item_mean_cannot():
    """r depends on the user's history (genre match), not on the item: out of fold, the sequence
    q^ has a lower squared error than item means (which can only predict ~1/3 for every item)."""
    from recsim_post.ope.qmodel import SequenceQConfig, sequence_q
    from recsim_post.seeding import SeedTree

    users, hist, action, reward, genre = _synthetic_rows(3000, 1)
    phi = np.eye(3, dtype=np.float32)[genre]
    cfg = SequenceQConfig(**{**SMALL_Q, "epochs": 5, "dim": 16})
    q = sequence_q(hist, users, action, reward, 12, phi, cfg, SeedTree(0))
    mse_seq = np.mean((q[np.arange(len(action)), action] - reward) ** 2)
    item = np.bincount(action, weights=reward, minlength=12) / np.bincount(action, minlength=12)
    mse_item = np.mean((item[action] - reward) ** 2)  # in-sample, which only flatters the item mean
    assert mse_item > 0.2 and mse_seq < 0.5 * mse_item


def test_report_with_both_q_models_keeps_the_item_rows(sim0):
    from recsim_post.ope.qmodel import SequenceQConfig

    n = sim0.world.n_items
    kw = dict(n_bootstrap=30, seed=0, propensity="frequency")
    item = ope_report_from_simulation(sim0, {"uniform": UniformPolicy(n)}, **kw)
    both = ope_report_from_simulation(sim0, {"uniform": UniformPolicy(n)}, q_model=("item", "sequence"),
                                      q_cfg=SequenceQConfig(**SMALL_Q), **kw)
    assert len(both) == 2 * (2 + 3 * 2)  # per source: IPS, SNIPS once, DM / DR / Switch-DR per q^
    assert set(both.loc[both.estimator.isin(["ips", "snips"]), "q_model"]) == {"none"}
    assert set(both.loc[both.estimator == "dr", "q_model"]) == {"item", "sequence"}
    same = both[both.q_model.isin(["none", "item"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(same, item)  # the default report is unchanged by adding a q^
    seq = both[both.q_model == "sequence"]
    assert np.isfinite(seq[["estimate", "ci_low", "ci_high", "q_mse"]].to_numpy()).all()
    s = summarise(both)
    assert len(s) == 2 * 8 and {"bias_norm", "rmse_norm"} <= set(s.columns)
    text = format_summary(s)
    assert "dr [sequence]" in text and "dm [item]" in text
    with pytest.raises(ConfigError, match="q_fit = 'past' is not allowed for q_model = 'sequence'"):
        ope_report_from_simulation(sim0, {"u": UniformPolicy(n)}, q_model="sequence", q_fit="past", **kw)
    with pytest.raises(ConfigError, match="q_model"):
        ope_report_from_simulation(sim0, {"u": UniformPolicy(n)}, q_model="user", **kw)


def test_summary_by_policy_and_normalised_errors():
    rep = pd.DataFrame({
        "policy": ["a", "a", "b", "b"],
        "estimator": ["dm"] * 4,
        "pscore": ["true"] * 4,
        "q_model": ["item", "sequence", "item", "sequence"],
        "estimate": [1.0, 2.0, 3.0, 4.0],
        "ci_low": [0.0, 1.0, 2.0, 3.0],
        "ci_high": [2.0, 3.0, 4.0, 5.0],
        "truth": [1.5, 1.5, 2.0, 2.0],
        "error": [-0.5, 0.5, 1.0, 2.0],
        "covered": [True, True, False, False],
        "error_norm": [-0.25, 0.25, 0.5, 1.0],
    })
    s = summarise(rep).set_index("q_model")
    assert s.loc["item", "bias"] == pytest.approx(0.25) and s.loc["sequence", "bias"] == pytest.approx(1.25)
    assert s.loc["item", "bias_norm"] == pytest.approx(0.125)
    assert s.loc["sequence", "rmse_norm"] == pytest.approx(np.sqrt((0.0625 + 1.0) / 2))
    by = summarise(rep, by=("policy",)).set_index(["policy", "q_model"])
    assert by.loc[("b", "sequence"), "bias"] == pytest.approx(2.0) and by.loc[("a", "item"), "coverage"] == 1.0
    assert len(by) == 4


@pytest.mark.slow
def test_selection_estimates_read_no_truth(sim0):
    """Study 6's OPE criteria: the report's estimated-propensity rows of a logged signal, and the
    sealed r* and propensities never enter them (scrambling both changes nothing)."""
    from recsim_post.ope.report import selection_estimates

    n = sim0.world.n_items
    truth = GroundTruth.from_simulation(sim0)
    pols = {"uniform": UniformPolicy(n), "logger@T": LoggerPolicy(truth.logger, truth.trend)}
    kw = dict(reward="rating", seed=1, model_cfg=FAST_BC, max_len=10)
    est = selection_estimates(sim0.public, truth, pols, **kw)
    assert list(est.columns) == ["method", "ope_ips", "ope_snips", "ope_dr"]
    assert list(est["method"]) == ["uniform", "logger@T"] and np.isfinite(est.iloc[:, 1:].to_numpy()).all()
    rep = ope_report(sim0.public, truth, pols, propensity="bc", q_model="item", interval="normal", **kw)
    row = rep[(rep["pscore"] == "estimated") & (rep["policy"] == "logger@T") & (rep["estimator"] == "dr")]
    assert est.loc[1, "ope_dr"] == row["estimate"].item()
    rng = np.random.default_rng(0)
    sealed = truth.impressions.copy()
    sealed["true_reward"] = rng.normal(size=len(sealed))
    sealed["propensity_item"] = rng.uniform(0.01, 1.0, size=len(sealed))
    scrambled = selection_estimates(sim0.public, dataclasses.replace(truth, impressions=sealed), pols, **kw)
    pd.testing.assert_frame_equal(est, scrambled)
    with pytest.raises(ConfigError, match="reads the sealed r"):
        selection_estimates(sim0.public, truth, pols, reward="true")
