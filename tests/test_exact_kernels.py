"""The row kernels of the exact ground truth equal their plain-numpy references (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_post.truth import kernels
from recsim_post.world import kernels as world_kernels

SETTINGS = settings(max_examples=80, deadline=None)


@st.composite
def rows(draw, ties: bool = False):
    """(scores, values): float32 or float64 scores (coarse grids give ties), -inf entries, float64 values."""
    B = draw(st.integers(1, 9))
    n = draw(st.integers(1, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 30.0]))
    z = rng.normal(0.0, scale, (B, n))
    if ties or draw(st.booleans()):
        z = np.round(z * draw(st.sampled_from([1.0, 4.0])))  # few distinct values: many ties
    if draw(st.booleans()):  # items with probability 0 (a deficient support), never a whole row
        z[rng.random((B, n)) < 0.3] = -np.inf
        z[:, rng.integers(n)] = 0.0
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return z.astype(dtype), rng.normal(0.0, 2.0, (B, n))


@SETTINGS
@given(rows())
def test_softmax_dot_matches_reference(problem):
    z, x = problem
    np.testing.assert_allclose(kernels.softmax_dot(z, x), kernels.softmax_dot_ref(z, x), rtol=1e-12, atol=1e-12)


def test_softmax_dot_by_hand():
    z = np.array([[0.0, np.log(3.0), -np.inf]], np.float64)  # probabilities 1/4, 3/4, 0
    x = np.array([[4.0, 8.0, 1e9]])
    assert abs(kernels.softmax_dot(z, x)[0] - 7.0) < 1e-15


@SETTINGS
@given(rows(), st.integers(1, 70))
def test_topk_mean_matches_argpartition(problem, k):
    z, x = problem
    # exactly argpartition's pick, ties included (those rows go to argpartition itself)
    np.testing.assert_allclose(kernels.topk_mean(z, x, k), kernels.topk_mean_ref(z, x, k), rtol=1e-14, atol=1e-14)


@SETTINGS
@given(rows(ties=True), st.integers(1, 12))
def test_topk_mean_without_ties_is_the_mean_of_the_k_best(problem, k):
    z, x = problem
    # distinct scores (no -inf ties either): the top k is a set, whoever picks it
    z = np.where(np.isinf(z), -1e6, z).astype(np.float64) + np.arange(z.shape[1]) * 1e-3
    k = min(k, z.shape[1])
    best = np.argsort(-z, axis=1, kind="stable")[:, :k]
    np.testing.assert_allclose(kernels.topk_mean(z, x, k), np.take_along_axis(x, best, 1).mean(1), rtol=1e-14, atol=1e-14)


@SETTINGS
@given(st.integers(1, 7), st.integers(1, 50), st.integers(1, 9), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_true_reward_rows_is_bit_for_bit_the_dense_formula(B, n, d, G, seed):
    rng = np.random.default_rng(seed)
    theta, sat = rng.normal(size=(B, d)), rng.exponential(size=(B, G))
    v, q, g = rng.normal(size=(n, d)), rng.normal(size=n), rng.integers(0, G, n)
    out = np.full((B, n), np.nan)
    got = world_kernels.true_reward_rows(theta, sat, v, q, g, 0.35, out=out)
    assert got is out and got.flags.c_contiguous
    np.testing.assert_array_equal(got, world_kernels.true_reward_rows_ref(theta, sat, v, q, g, 0.35))
    # and by hand for one cell
    b, i = rng.integers(B), rng.integers(n)
    assert abs(got[b, i] - (theta[b] @ v[i] + q[i] - 0.35 * sat[b, g[i]])) < 1e-12


def test_exp_nonpositive_is_within_two_ulp_of_numpy():
    rng = np.random.default_rng(0)
    x = np.concatenate([-rng.exponential(30.0, 3000), -rng.random(1000), [0.0, -0.0, -1e-300, -np.log(2) / 2,
                        -700.0, -707.9]])
    got = np.array([kernels.exp_nonpositive(float(v)) for v in x])
    want = np.exp(x)
    assert (np.abs(got - want) <= 2 * np.spacing(want)).all()
    # below -708 (e^x < 3.1e-308, invisible next to the row's largest term, e^0 = 1) and at -inf: 0
    assert [kernels.exp_nonpositive(v) for v in (-708.5, -1e4, -np.inf)] == [0.0, 0.0, 0.0]


def test_softmax_dot_degenerate_rows_are_nan_as_in_the_reference():
    z = np.array([[0.0, np.nan, 1.0], [-np.inf, -np.inf, -np.inf], [0.0, np.inf, 1.0], [3.0, -np.inf, 3.0]])
    x = np.array([[1.0, 2.0, 3.0]] * 4)
    with np.errstate(invalid="ignore"):
        want = kernels.softmax_dot_ref(z, x)
    got = kernels.softmax_dot(z, x)
    np.testing.assert_array_equal(np.isnan(got), [True, True, True, False])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert got[3] == 2.0  # two items at probability 1/2


@SETTINGS
@given(rows(), st.integers(1, 70), st.booleans())
def test_policy_sums_are_the_separate_reductions_in_one_pass(problem, k, with_belief):
    z, x = problem
    belief = np.cos(x) if with_belief else None
    value, topk, believed = kernels.policy_sums(z, x, k, belief)
    np.testing.assert_allclose(value, kernels.softmax_dot_ref(z, x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(topk, kernels.topk_mean_ref(z, x, k), rtol=1e-14, atol=1e-14)
    if with_belief:
        np.testing.assert_allclose(believed, kernels.softmax_dot_ref(z, belief), rtol=1e-12, atol=1e-12)
    else:
        assert believed is None


@SETTINGS
@given(st.integers(1, 7), st.integers(1, 50), st.integers(1, 5), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_true_reward_stats_are_r_star_and_its_row_statistics(B, n, G, k, seed):
    rng = np.random.default_rng(seed)
    theta, sat = rng.normal(size=(B, 4)), rng.exponential(size=(B, G))
    v, q, g = rng.normal(size=(n, 4)), np.round(rng.normal(size=n)), rng.integers(0, G, n)  # ties in r*
    product = world_kernels.true_reward_product(theta, sat, v, q, g)
    mean, best, top = kernels.true_reward_stats(product, 0.5, k)
    r = product[0]
    ref = world_kernels.true_reward_rows_ref(theta, sat, v, q, g, 0.5)
    np.testing.assert_array_equal(r, ref)
    np.testing.assert_allclose(mean, ref.mean(axis=1), rtol=1e-13, atol=1e-14)
    np.testing.assert_array_equal(best, ref.max(axis=1))
    kk = min(k, n)
    np.testing.assert_allclose(top, -np.partition(-ref, kk - 1, axis=1)[:, :kk].mean(axis=1), rtol=1e-13, atol=1e-14)


TAUS = st.lists(st.sampled_from([1 / 64, 0.1, 0.5, 1.0, 2.0, 7.3, 64.0]), min_size=1, max_size=5)


@SETTINGS
@given(rows(), TAUS, st.booleans())
def test_tempered_softmax_matches_reference(problem, taus, with_entropy):
    z, _ = problem
    lse, ent = kernels.tempered_softmax(z, np.array(taus), entropy=with_entropy)
    lse_ref, ent_ref = kernels.tempered_softmax_ref(z, np.array(taus), entropy=with_entropy)
    np.testing.assert_allclose(lse, lse_ref, rtol=1e-12, atol=1e-12)
    if with_entropy:
        np.testing.assert_allclose(ent, ent_ref, rtol=1e-11, atol=1e-11)
        assert (ent >= -1e-12).all() and (ent <= np.log(z.shape[1]) + 1e-12).all()  # 0 <= H <= log n
    else:
        assert ent is None and ent_ref is None


def test_tempered_softmax_by_hand():
    # probabilities 1/4, 3/4, 0 at τ = 1; at τ = 1/2 the odds square: 1/10, 9/10
    z = np.array([[0.0, np.log(3.0), -np.inf]])
    lse, ent = kernels.tempered_softmax(z, np.array([1.0, 0.5]))
    assert abs(lse[0, 0] - np.log(4 / 3)) < 1e-15  # s = (-log 3, 0): Σ e^s = 1/3 + 1
    assert abs(lse[0, 1] - np.log(10 / 9)) < 1e-15
    h = lambda p: -sum(q * np.log(q) for q in p)  # noqa: E731
    assert abs(ent[0, 0] - h([0.25, 0.75])) < 1e-15
    assert abs(ent[0, 1] - h([0.1, 0.9])) < 1e-15
    # rows without a distribution are NaN, as in the reference
    bad = np.array([[0.0, np.nan], [-np.inf, -np.inf], [np.inf, 0.0]])
    lse, ent = kernels.tempered_softmax(bad, np.array([1.0]))
    assert np.isnan(lse).all() and np.isnan(ent).all()
