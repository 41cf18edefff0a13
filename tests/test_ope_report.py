"""OPE report: logged contexts, estimated propensities, exact truth, the report and its summary."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from recsim_post.evaluation.ground_truth import GroundTruth
from recsim_post.evaluation.ope import bandit_data_from_logs
from recsim_post.evaluation.ope_report import (
    PropensityModelConfig, UniformPolicy, click_histories_at, estimated_propensities, exact_reward,
    fit_logger_model, format_summary, logged_contexts, ope_report, ope_report_from_simulation,
    policy_probabilities, summarise,
)
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
    logger_pi = policy_probabilities(lambda u, t, h: np.log(truth.logger.probabilities(u, truth.trend)), ctx)
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
    text = format_summary(summarise(rep))
    assert "ips" in text and "coverage" in text


@pytest.mark.slow
def test_end_to_end_with_bc_propensities(sim0):
    n = sim0.world.n_items
    truth = GroundTruth.from_simulation(sim0)
    rep = ope_report(
        sim0.public, truth, {"uniform": UniformPolicy(n), "logger@T": lambda u, t, h: truth.logger_logits(u)},
        n_bootstrap=50, seed=1, propensity="bc", model_cfg=FAST_BC, max_len=10,
    )
    assert len(rep) == 2 * 5 * 2
    assert np.isfinite(rep[["estimate", "ci_low", "ci_high", "truth"]].to_numpy()).all()
    assert len(summarise(rep)) == 10


def test_past_q_uses_earlier_rounds_only():
    from recsim_post.evaluation.ope_report import LoggedContexts, past_q

    ctx = LoggedContexts(
        user=np.zeros(4, np.int64), timestamp=np.array([0, 1, 1, 2]), action=np.array([0, 0, 1, 0]),
        slate_id=np.arange(4), hist=np.full((4, 1), PAD),
    )
    q = past_q(ctx, np.array([2.0, 4.0, 6.0, 8.0]), n_items=2, shrinkage=1.0)
    np.testing.assert_allclose(q[0], [0.0, 0.0])  # nothing before round 0
    np.testing.assert_allclose(q[1], [(2 + 2) / 2, 2 / 1])  # round 1 sees round 0 only: rbar = 2
    np.testing.assert_allclose(q[1], q[2])
    np.testing.assert_allclose(q[3], [(2 + 4 + 4) / 3, (6 + 4) / 2])  # rbar = 4
