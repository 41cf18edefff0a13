"""Numba kernels equal their plain-numpy references, and their outputs obey the model's laws."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_post.world import kernels

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def slate_problems(draw):
    B = draw(st.integers(1, 12))
    n = draw(st.integers(1, 40))
    K = draw(st.integers(1, n))
    seed = draw(st.integers(0, 2**32 - 1))
    eps = draw(st.sampled_from([0.0, 0.1, 1.0]))
    peaky = draw(st.booleans())
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 6 if peaky else 1, (B, n))
    w = np.exp(logits - logits.max(axis=1, keepdims=True)).astype(np.float32)
    return w, eps, rng.random((B, K))


@SETTINGS
@given(slate_problems())
def test_sample_slates_matches_reference(problem):
    w, eps, u = problem
    cum = np.empty(w.shape)
    got = kernels.sample_slates(w, eps, u, cum)
    ref = kernels.sample_slates_ref(w, eps, u)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-12)
    np.testing.assert_allclose(got[2], ref[2], rtol=1e-12)


@SETTINGS
@given(slate_problems())
def test_slates_have_no_duplicates_and_valid_propensities(problem):
    w, eps, u = problem
    slates, prop, p_item = kernels.sample_slates(w, eps, u, np.empty(w.shape))
    for row in slates:
        assert len(set(row.tolist())) == len(row)
    assert ((prop > 0) & (prop <= 1 + 1e-9)).all()
    # PL: P(k | earlier) = p_k / (mass of the items not yet shown)
    p = (1 - eps) * w / w.sum(axis=1, keepdims=True, dtype=np.float64) + eps / w.shape[1]
    for b, row in enumerate(slates):
        np.testing.assert_allclose(p_item[b], p[b, row], rtol=1e-6)
        left = np.array([p[b, np.setdiff1d(np.arange(w.shape[1]), row[:k])].sum() for k in range(len(row))])
        np.testing.assert_allclose(prop[b], p[b, row] / left, rtol=1e-5)


def test_sample_slates_frequencies_match_probabilities():
    """The first slot is drawn from p = (1-eps) softmax + eps/n: empirical frequencies agree."""
    rng = np.random.default_rng(3)
    n, B, eps = 6, 200_000, 0.2
    w = np.exp(rng.normal(size=n)).astype(np.float32)
    W = np.tile(w, (B, 1))
    slates, _, _ = kernels.sample_slates(W, eps, rng.random((B, 2)), np.empty(W.shape))
    p = (1 - eps) * w / w.sum() + eps / n
    freq = np.bincount(slates[:, 0], minlength=n) / B
    np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(p * (1 - p) / B).max())
    # second slot, conditional on the first being item 0: p_j / (1 - p_0)
    first0 = slates[:, 0] == 0
    freq2 = np.bincount(slates[first0, 1], minlength=n) / first0.sum()
    expected = np.where(np.arange(n) == 0, 0, p / (1 - p[0]))
    np.testing.assert_allclose(freq2, expected, atol=0.01)


@st.composite
def choice_problems(draw):
    B = draw(st.integers(1, 10))
    K = draw(st.integers(1, 6))
    n = draw(st.integers(K, 20))
    d = draw(st.integers(1, 5))
    G = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    slates = np.stack([rng.permutation(n)[:K] for _ in range(B)]).astype(np.int32)
    # kernels.CHOICE_PARAMS: reward_weight, trend_pull, hype_pull, no_click_utility, satiation, cascade
    params = np.array([rng.uniform(0, 3), rng.uniform(0, 2), rng.uniform(0, 1), rng.normal(1, 2), rng.uniform(0, 1),
                       float(draw(st.booleans()))])
    penalty = rng.uniform(0, 1) * np.log2(1 + np.arange(K))
    return (
        slates, rng.normal(size=(B, d)), rng.uniform(size=B), rng.exponential(size=(B, G)),
        rng.normal(size=(n, d)), rng.normal(size=n), rng.normal(size=n), rng.integers(0, G, n),
        rng.normal(size=n), params, penalty, rng.random(B),
    )


@SETTINGS
@given(choice_problems())
def test_choose_matches_reference(args):
    got = kernels.choose(*args)
    ref = kernels.choose_ref(*args)
    np.testing.assert_array_equal(got[0], ref[0])  # choices
    np.testing.assert_array_equal(got[1], ref[1])  # r*: the same sums in the same order, bit for bit
    np.testing.assert_allclose(got[2], ref[2], rtol=1e-9)


@SETTINGS
@given(choice_problems())
def test_choices_are_in_bounds(args):
    choice, rstar, cprob = kernels.choose(*args)
    K = args[0].shape[1]
    assert ((choice >= -1) & (choice < K)).all()
    assert rstar.shape == args[0].shape and np.isfinite(rstar).all()
    assert ((cprob > 0) & (cprob <= 1)).all()


def test_choice_probabilities_sum_to_one_with_no_click():
    """Empirical choice frequencies match the MNL formula including the no-click option."""
    rng = np.random.default_rng(0)
    B, K = 100_000, 3
    slates = np.tile(np.array([[0, 1, 2]], dtype=np.int32), (B, 1))
    theta = np.tile([[1.0, 0.0]], (B, 1))
    vecs = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    zeros3 = np.zeros(3)
    params = np.array([1.0, 0.0, 0.0, 0.5, 0.0, 0.0])
    penalty = np.zeros(K)
    choice, rstar, cprob = kernels.choose(
        slates, theta, np.zeros(B), np.zeros((B, 1)), vecs, zeros3, zeros3, np.zeros(3, dtype=np.int64), zeros3,
        params, penalty, rng.random(B),
    )
    util = np.array([1.0, 0.0, -1.0, 0.5])  # r* of the three items, then the no-click utility
    p = np.exp(util) / np.exp(util).sum()
    assert abs(p.sum() - 1) < 1e-12
    freq = np.bincount(np.where(choice < 0, 3, choice), minlength=4) / B
    np.testing.assert_allclose(freq, p, atol=0.006)
    np.testing.assert_allclose(cprob, p[np.where(choice < 0, 3, choice)], rtol=1e-12)
    np.testing.assert_allclose(rstar[0], [1.0, 0.0, -1.0])


@SETTINGS
@given(
    st.integers(1, 9), st.integers(1, 40), st.integers(1, 8), st.integers(0, 2**32 - 1),
    st.sampled_from([0.25, 1.0, 3.0]),
)
def test_logger_logits_match_reference_bit_for_bit(B, n, d, seed, temperature):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(B + 3, d))
    users = rng.integers(0, B + 3, B).astype(np.int64)
    vt = np.ascontiguousarray(rng.normal(size=(d, n)).astype(np.float32))
    bias = rng.normal(size=n).astype(np.float32)
    args = (theta, users, vt, np.float32(0.8), bias, np.float32(1 / temperature), np.float32(-80.0))
    got = kernels.logger_logits(*args, np.empty((B, n), np.float32))
    np.testing.assert_array_equal(got, kernels.logger_logits_ref(*args))
    assert (got.max(axis=1) == 0).all() and (got >= -80).all()


@st.composite
def pair_problems(draw):
    """Rows (theta, satiation) with one item each, over a catalogue of n items in G genres."""
    B = draw(st.integers(0, 12))
    n = draw(st.integers(1, 30))
    d = draw(st.integers(1, 9))
    G = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    strength = draw(st.sampled_from([0.0, 0.2, 1.7]))
    return (
        rng.normal(size=(B, d)), rng.exponential(size=(B, G)) * (rng.random((B, G)) < 0.7), rng.normal(size=(n, d)),
        rng.normal(size=n), rng.integers(0, G, n), strength, rng.integers(0, n, B),
    )


@SETTINGS
@given(pair_problems())
def test_true_reward_pairs_matches_reference_bit_for_bit(args):
    got = kernels.true_reward_pairs(*args)
    np.testing.assert_array_equal(got, kernels.true_reward_pairs_ref(*args))
    theta, sat, v, q, g, s, items = args
    if len(items):  # and the formula, by hand for one row
        b = len(items) // 2
        i = items[b]
        assert abs(got[b] - (theta[b] @ v[i] + q[i] - s * sat[b, g[i]])) < 1e-12


@SETTINGS
@given(choice_problems())
def test_true_reward_pairs_is_the_choice_kernels_rstar(args):
    """r* of each shown item, one (row, item) pair at a time, is bit for bit what choose returns."""
    slates, theta, _, sat, vecs, quality, _, genre, _, params = args[:10]
    K = slates.shape[1]
    _, rstar, _ = kernels.choose(*args)
    pairs = kernels.true_reward_pairs(
        np.repeat(theta, K, axis=0), np.repeat(sat, K, axis=0), vecs, quality, genre, params[4], slates.ravel()
    )
    np.testing.assert_array_equal(pairs.reshape(rstar.shape), rstar)


def test_true_reward_pairs_rejects_bad_rows_and_items():
    theta, sat, v, q, g = np.zeros((2, 3)), np.zeros((2, 1)), np.zeros((4, 3)), np.zeros(4), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="items for"):
        kernels.true_reward_pairs(theta, sat, v, q, g, 0.1, np.array([0]))
    with pytest.raises(ValueError, match="items must be in"):
        kernels.true_reward_pairs(theta, sat, v, q, g, 0.1, np.array([0, 4]))


@st.composite
def satiation_problems(draw):
    """S (N, G) >= 0 and a round's clicks (users, genres), repeats of one (u, g) included."""
    N = draw(st.integers(1, 12))
    G = draw(st.integers(1, 4))
    m = draw(st.integers(0, 3 * N))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    decay = draw(st.sampled_from([0.0, 0.7, 0.999])) if draw(st.booleans()) else float(rng.random())
    S = rng.exponential(size=(N, G)) * (rng.random((N, G)) < 0.6)
    return S, rng.integers(0, N, m), rng.integers(0, G, m), decay


@SETTINGS
@given(satiation_problems())
def test_satiation_step_matches_reference_bit_for_bit(problem):
    S, users, genres, decay = problem
    got, ref = S.copy(), S.copy()
    assert kernels.satiation_step(got, users, genres, decay) is None  # in place
    kernels.satiation_step_ref(ref, users, genres, decay)
    np.testing.assert_array_equal(got, ref)
    # the law: decay everything, then one unit per click
    counts = np.zeros_like(S)
    np.add.at(counts, (users, genres), 1.0)
    np.testing.assert_allclose(got, decay * S + counts, rtol=1e-12, atol=1e-12)


@st.composite
def replay_problems(draw):
    """Clicks over T rounds (user, genre, round) in any order, and (user, round) requests, t = T included."""
    N = draw(st.integers(1, 8))
    G = draw(st.integers(1, 4))
    T = draw(st.integers(0, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m = draw(st.integers(0, 30)) if T else 0
    n = draw(st.integers(0, 20))
    decay = float(draw(st.sampled_from([0.0, 0.5, 0.7])))
    return (
        N, G, decay, T, rng.integers(0, N, m), rng.integers(0, G, m), rng.integers(0, max(T, 1), m),
        rng.integers(0, N, n), rng.integers(0, T + 1, n),
    )


@SETTINGS
@given(replay_problems())
def test_replay_satiation_matches_reference_and_the_world_step(args):
    N, G, decay, T, cu, cg, ct, au, at = args
    rows, S_T = kernels.replay_satiation(*args)
    ref_rows, ref_S = kernels.replay_satiation_ref(*args)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_array_equal(S_T, ref_S)
    # the world's own step, round by round (a round's clicks in the order given)
    S = np.zeros((N, G))
    for t in range(T + 1):
        ask = at == t
        np.testing.assert_array_equal(rows[ask], S[au[ask]])
        if t < T:
            kernels.satiation_step(S, cu[ct == t], cg[ct == t], decay)
    np.testing.assert_array_equal(S_T, S)


def test_replay_satiation_rejects_rounds_out_of_range():
    one = np.array([0])
    with pytest.raises(ValueError, match="click_rounds"):
        kernels.replay_satiation(2, 2, 0.5, 3, one, one, np.array([3]), one, one)
    with pytest.raises(ValueError, match="at_rounds"):
        kernels.replay_satiation(2, 2, 0.5, 3, one, one, one, one, np.array([4]))
    with pytest.raises(ValueError, match="click_genres"):
        kernels.replay_satiation(2, 2, 0.5, 3, one, np.array([2]), one, one, one)
