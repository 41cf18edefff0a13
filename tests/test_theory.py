"""Theorems 4.3 / 4.4 of arXiv:2603.10279 (recsim_post.theory): the tilt by hand, its limits, the
bounds' deterministic core (they hold whenever max|ξ| <= ε), and the study table on a tiny world."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_post.theory import COLUMNS, bound_eps, bound_rows, tilt, tilt_bound_study, tilt_bounds, truth_for, values
from recsim_post.world.config import UserConfig

from .conftest import tiny_scenario

# --- one context, three items, by hand ------------------------------------------------------------
# π_β = (0.5, 0.3, 0.2), r* = (1, 2, -1), ξ = (0.1, -0.2, 0.3), λ = 0.5, so r̂ = (1.1, 1.8, -0.7) and
# r̂/λ = (2.2, 3.6, -1.4). Unnormalised weights π_β e^{r̂/λ}:
#   0.5 e^{2.2} = 0.5 * 9.0250134994 = 4.5125067497
#   0.3 e^{3.6} = 0.3 * 36.598234444 = 10.979470333
#   0.2 e^{-1.4} = 0.2 * 0.2465969639 = 0.0493193928      Z = 15.541296476
# π_λ = (0.29035587583051357, 0.70647068282463304, 0.003173441344853398)   (30-digit mpmath)
# exact tilt, weights 0.5 e^{2}, 0.3 e^{4}, 0.2 e^{-2}:
# π*_λ = (0.18379785464505797, 0.81485559530126085, 0.0013465500536811744)
# V(π_β) = 0.5 + 0.6 - 0.2 = 0.9;  V(π_λ) = 1.7001238001349262;  V(π*_λ) = 1.8121624951938985
# ε (σ = 0.2, |A| = 3, δ = 0.1) = 0.2 √(2 log 60) = 0.2 √(2 * 4.0943445622221007) = 0.57231771331819536
# e^{2ε/λ} = e^{2.28927...} = 9.867740027073323;  R_max = max|r*| = 2;  R_half = (2 - (-1))/2 = 1.5
# bound 4.3 = -2ε = -1.1446354266363907;  bound 4.4 = -2 (9.8677... - 1) = -17.735480054146646
# centred 4.4 = -1.5 (9.8677... - 1) = -13.301610040609984

P_BETA = np.array([[0.5, 0.3, 0.2]])
R_STAR = np.array([[1.0, 2.0, -1.0]])
XI = np.array([[0.1, -0.2, 0.3]])
LAM = 0.5


def test_tilt_by_hand() -> None:
    noisy = tilt(np.log(P_BETA), R_STAR + XI, LAM)
    exact = tilt(np.log(P_BETA), R_STAR, LAM)
    np.testing.assert_allclose(noisy[0], [0.29035587583051357, 0.70647068282463304, 0.003173441344853398], rtol=0, atol=1e-12)
    np.testing.assert_allclose(exact[0], [0.18379785464505797, 0.81485559530126085, 0.0013465500536811744], rtol=0, atol=1e-12)
    assert values(noisy, R_STAR)[0] == pytest.approx(1.7001238001349262, abs=1e-12)
    assert values(exact, R_STAR)[0] == pytest.approx(1.8121624951938985, abs=1e-12)


def test_eps_by_hand() -> None:
    assert bound_eps(0.2, 3, 0.1) == pytest.approx(0.57231771331819536, abs=1e-14)
    assert bound_eps(1.0, 1000, 0.05) == pytest.approx(math.sqrt(2 * math.log(40000)), abs=1e-14)
    assert bound_eps(0.0, 10, 0.1) == 0.0
    for bad in [(-1.0, 3, 0.1), (1.0, 0, 0.1), (1.0, 3, 0.0), (1.0, 3, 1.0)]:
        with pytest.raises(ValueError):
            bound_eps(*bad)


def test_bounds_by_hand() -> None:
    eps = bound_eps(0.2, 3, 0.1)
    b = tilt_bounds(np.log(P_BETA), R_STAR, XI, LAM, eps)
    assert b.gap[0] == pytest.approx(1.7001238001349262 - 0.9, abs=1e-12)
    assert b.exact_gap[0] == pytest.approx(1.8121624951938985 - 0.9, abs=1e-12)
    assert b.noise_cost[0] == pytest.approx(1.8121624951938985 - 1.7001238001349262, abs=1e-12)
    assert b.bound1[0] == pytest.approx(-1.1446354266363907, abs=1e-12)
    assert b.bound2[0] == pytest.approx(-17.735480054146646, abs=1e-11)
    assert b.bound2_centred[0] == pytest.approx(-13.301610040609984, abs=1e-11)
    assert b.r_max[0] == 2.0
    assert not (b.violates1[0] or b.violates2[0] or b.violates2_centred[0] or b.noise_exceeds[0])  # max|ξ| = 0.3 <= ε


def test_lambda_infinity_is_the_logger() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 40)) * 3
    p_beta = np.exp(logits - logits.max(1, keepdims=True))
    p_beta /= p_beta.sum(1, keepdims=True)
    rhat = rng.normal(size=(5, 40)) * 10
    np.testing.assert_allclose(tilt(logits, rhat, math.inf), p_beta, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(tilt(logits, rhat, 1e15), p_beta, rtol=1e-12, atol=1e-300)
    b = tilt_bounds(logits, rhat, rng.normal(size=(5, 40)), math.inf, 1.0)
    assert np.all(b.gap == 0) and np.all(b.bound2 == 0) and not b.violates2.any()


def test_small_lambda_is_the_argmax_with_ties_shared_by_the_logger() -> None:
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]]))
    reward = np.array([[0.0, 1.0, 1.0, -5.0], [3.0, -1.0, 2.0, 2.9]])
    want = np.array([[0, 0.4, 0.6, 0], [1, 0, 0, 0]])  # row 0: a tie, split 0.2 : 0.3 as π_β does
    for lam in (0.0, 1e-300, 1e-6):
        got = tilt(logits, reward, lam)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, atol=1e-12)
    with pytest.raises(ValueError):
        tilt(logits, reward, -1.0)


def test_off_support_actions_get_no_mass() -> None:
    with np.errstate(divide="ignore"):  # item 2 outside the logger's support: logit -inf
        logits = np.log(np.array([[0.5, 0.5, 0.0]]))
    reward = np.array([[0.0, 1.0, 100.0]])
    p = tilt(logits, reward, 0.1)
    assert p[0, 2] == 0 and p.sum() == pytest.approx(1.0)
    b = tilt_bounds(logits, reward, np.zeros((1, 3)), 0.1, 0.0)
    assert b.r_max[0] == 1.0  # R_max over the support, where π*_λ can put mass


def test_sigma_to_zero_the_noisy_tilt_is_the_exact_tilt() -> None:
    rng = np.random.default_rng(1)
    logits, r, z = rng.normal(size=(3, 6, 50))
    exact = tilt(logits, r, 0.2)
    np.testing.assert_array_equal(tilt(logits, r + 0.0 * z, 0.2), exact)
    np.testing.assert_allclose(tilt(logits, r + 1e-10 * z, 0.2), exact, atol=1e-8)
    b = tilt_bounds(logits, r, 0.0 * z, 0.2, bound_eps(0.0, 50, 0.1))
    np.testing.assert_array_equal(b.gap, b.exact_gap)
    assert not (b.violates1.any() or b.violates2.any())  # ε = 0 and gap = exact gap >= 0


contexts = st.integers(2, 12).flatmap(
    lambda a: st.tuples(
        st.lists(st.floats(-6, 6), min_size=a, max_size=a),
        st.lists(st.floats(-5, 5), min_size=a, max_size=a),
        st.lists(st.floats(-1, 1), min_size=a, max_size=a),
    )
)


@settings(max_examples=200, deadline=None)
@given(ctx=contexts, log_lam=st.floats(-3, 3))
def test_exact_tilt_never_lowers_the_value(ctx, log_lam: float) -> None:  # noqa: ANN001
    logits, r, _ = (np.array([c]) for c in ctx)
    lam = 10.0**log_lam
    gain = values(tilt(logits, r, lam), r) - values(tilt(logits, r, math.inf), r)
    assert gain[0] >= -1e-12 * (1 + np.abs(r).max())


@settings(max_examples=200, deadline=None)
@given(ctx=contexts, log_lam=st.floats(-2, 2), eps=st.floats(0.0, 2.0))
def test_both_bounds_hold_whenever_the_noise_is_within_eps(ctx, log_lam: float, eps: float) -> None:  # noqa: ANN001
    """The deterministic core of both theorems: any ξ with max|ξ| <= ε (not only Gaussian) keeps the
    gap above -2ε and above -R_max (e^{2ε/λ} - 1), and above the centred R_half variant."""
    logits, r, u = (np.array([c]) for c in ctx)
    b = tilt_bounds(logits, r, eps * u, 10.0**log_lam, eps)  # |ξ_a| = eps |u_a| <= eps
    assert not b.noise_exceeds[0]
    assert not (b.violates1[0] or b.violates2[0] or b.violates2_centred[0])


def test_flags_fire_outside_the_event() -> None:
    """Noise larger than ε can break both bounds, and the flags say so: the logger almost always shows
    item 0 (r* = 1); ξ = +5 on item 1 (r* = 0) makes the tilt move all its mass there."""
    logits = np.log(np.array([[0.99, 0.01]]))
    r = np.array([[1.0, 0.0]])
    b = tilt_bounds(logits, r, np.array([[0.0, 5.0]]), 0.1, 0.01)
    assert b.gap[0] == pytest.approx(-0.99, abs=1e-3)
    assert b.noise_exceeds[0] and b.violates1[0] and b.violates2[0] and b.violates2_centred[0]


# --- a simulated world --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world():  # noqa: ANN201 - GroundTruth of a tiny world with 300 users, 60 items
    return truth_for(dataclasses.replace(tiny_scenario(), users=UserConfig(n_users=300)), 60)


@pytest.mark.parametrize("lam", [0.05, 0.3, 2.0])
def test_violations_on_a_simulated_world_only_outside_the_event(world, lam: float) -> None:  # noqa: ANN001
    """δ = 0.1 over 300 contexts: each bound fails in at most a δ share of them. Deterministically
    (the derivation in theory/tilt.py), a context can violate a bound only if max|ξ| > ε there, so
    the violations are a subset of the noise-exceeding contexts, whose share is <= δ in expectation."""
    users = np.arange(world.n_users)
    logits, r = world.logger_logits(users), world.true_reward(users)
    delta = 0.1
    z = np.random.default_rng(7).standard_normal(r.shape)
    for sigma in (0.5, 1.0, 3.0):
        b = tilt_bounds(logits, r, sigma * z, lam, bound_eps(sigma, world.n_items, delta))
        for flags in (b.violates1, b.violates2, b.violates2_centred):
            assert flags.mean() <= delta
            assert np.all(b.noise_exceeds[flags])  # every violation lies outside {max|ξ| <= ε}
        assert b.noise_exceeds.mean() <= delta
        assert np.all(b.exact_gap >= -1e-12)


def test_study_end_to_end_on_a_tiny_world() -> None:
    scenario = tiny_scenario()
    sigmas, lambdas, delta = [0.1, 1.0], [0.05, 1.0, math.inf], 0.1
    table = tilt_bound_study(scenario, [20, 60], sigmas, lambdas, delta, seed=3)
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == 2 * len(sigmas) * len(lambdas)
    assert set(table["n_items"]) == {20, 60} and (table["n_contexts"] == 80).all()
    # the bounds hold (shares <= δ), and where no context violates, the worst gap is above the bound
    assert (table[["viol1", "viol2", "viol2_centred", "noise_exceed"]] <= delta).all().all()
    ok1 = table["viol1"] == 0
    assert (table.loc[ok1, "gap_min"] >= table.loc[ok1, "bound1"] - 1e-12).all()
    assert (table.loc[ok1, "loose1"] >= 0).all()
    for n in (20, 60):
        np.testing.assert_allclose(table.loc[table["n_items"] == n, "eps"], [bound_eps(s, n, delta) for s in sigmas for _ in lambdas])
    np.testing.assert_allclose(table["bound1"], -2 * table["eps"])
    np.testing.assert_allclose(table["loose1"], table["gap_mean"] - table["bound1"])
    np.testing.assert_allclose(table["noise_cost"], table["exact_gap_mean"] - table["gap_mean"], atol=1e-12)
    np.testing.assert_allclose(table["noise_cost_per_sqrtlog"], table["noise_cost"] / np.sqrt(np.log(table["n_items"])))
    assert (table["exact_gap_mean"] >= 0).all()
    # λ = ∞ is the logger: no gap, no noise cost, bound 4.4 is 0
    inf = table[np.isinf(table["lambda"])]
    assert (inf["gap_mean"] == 0).all() and (inf["noise_cost"] == 0).all() and (inf["bound2_mean"] == 0).all()
    # common random numbers: ξ = σ Z with one Z, so whether max|ξ| > ε (ε ∝ σ) does not depend on σ,
    # and the exact tilt (no noise) is the same in every σ row
    for (n, lam), g in table.groupby(["n_items", "lambda"]):
        assert g["noise_exceed"].nunique() == 1 and g["exact_gap_mean"].nunique() == 1
    # more noise costs the sharp tilt more
    sharp = table[table["lambda"] == 0.05].set_index(["n_items", "sigma"])["noise_cost"]
    assert (sharp.xs(1.0, level="sigma") > sharp.xs(0.1, level="sigma")).all()
    # the same seed gives the same table, and the chunk size changes only float summation order
    again = tilt_bound_study(scenario, [20, 60], sigmas, lambdas, delta, seed=3, chunk=7)
    np.testing.assert_allclose(again.to_numpy(float), table.to_numpy(float), rtol=1e-9, atol=1e-12)


def test_study_rows_validate_their_inputs(world) -> None:  # noqa: ANN001
    with pytest.raises(ValueError):
        bound_rows(world, [0.1], [1.0], 0.1, seed=0, users=0)
    with pytest.raises(ValueError):
        tilt_bound_study(tiny_scenario(), [20], [], [1.0])
    rows = bound_rows(world, [0.1], [1.0], 0.1, seed=0, users=np.array([5, 9, 11]))
    assert rows["n_contexts"].tolist() == [3]
