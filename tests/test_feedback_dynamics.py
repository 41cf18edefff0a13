"""Feedback signals (watch fraction, censoring, missing and continuous ratings), the cascade click
model and user dynamics (drift, satiation, leaving and returning, arrivals)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_post.logs.simulate import simulate
from recsim_post.world import kernels
from recsim_post.world.config import (
    ChoiceConfig, DynamicsConfig, FeedbackConfig, SatiationConfig, SimulationConfig,
)
from recsim_post.world.world import World

from .conftest import tiny_scenario

SETTINGS = settings(max_examples=40, deadline=None)


# ---------------------------------------------------------------------------------------------
# choose_and_rate with the cascade model and continuous ratings equals its numpy reference
# ---------------------------------------------------------------------------------------------


@st.composite
def choice_problems(draw):
    B = draw(st.integers(1, 10))
    n = draw(st.integers(1, 12))
    K = draw(st.integers(1, n))
    d = draw(st.integers(1, 5))
    G = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    cascade = draw(st.booleans())
    quantize = draw(st.booleans())
    rng = np.random.default_rng(seed)
    slates = np.stack([rng.permutation(n)[:K] for _ in range(B)]).astype(np.int32)
    params = np.array([
        rng.uniform(0, 2), rng.uniform(0, 2), rng.uniform(0, 1), rng.normal(0, 3), rng.uniform(0, 1),
        rng.normal(2, 1), rng.uniform(0, 2), rng.uniform(0, 2), rng.uniform(0, 1),
        float(cascade), float(quantize),
    ])
    args = (
        slates, rng.normal(size=(B, d)), rng.random(B), rng.exponential(size=(B, G)),
        rng.normal(size=(n, d)), rng.normal(size=n), rng.normal(size=n), rng.integers(0, G, n),
        rng.normal(size=n), params, rng.uniform(0, 2, K), rng.random(B), rng.standard_normal(B),
        rng.random(B),
    )
    return args


@SETTINGS
@given(choice_problems())
def test_choose_and_rate_cascade_and_continuous_match_reference(args):
    got = kernels.choose_and_rate(*args)
    ref = kernels.choose_and_rate_ref(*args)
    np.testing.assert_array_equal(got[0], ref[0])  # choices: bit-equal
    np.testing.assert_array_equal(np.isnan(got[1]), np.isnan(ref[1]))
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-6)
    np.testing.assert_allclose(got[2], ref[2], rtol=1e-12)
    np.testing.assert_allclose(got[3], ref[3], rtol=1e-12)
    clicked = got[0] >= 0
    assert ((got[1][clicked] >= 1) & (got[1][clicked] <= 5)).all()
    if args[9][10] == 1.0:  # quantised: whole stars
        np.testing.assert_array_equal(got[1][clicked], np.round(got[1][clicked]))


@SETTINGS
@given(choice_problems())
def test_choice_probabilities_with_no_click_sum_to_one(args):
    """One user, u_choice swept over a fine grid: each outcome (a slot or no click) takes a share
    of the grid equal to its probability, the probabilities the kernel reports sum to one."""
    reps = 2000
    one = list(args)
    for i in (0, 1, 2, 3):  # slates, theta, susceptibility, satiation: the first user, repeated
        one[i] = np.repeat(args[i][:1], reps, axis=0)
    one[11] = (np.arange(reps) + 0.5) / reps
    one[12], one[13] = np.zeros(reps), np.ones(reps)
    K = args[0].shape[1]
    choice, _, _, cprob = kernels.choose_and_rate(*one)
    outcome = np.where(choice < 0, K, choice)
    prob = np.zeros(K + 1)
    prob[outcome] = cprob
    unseen = np.bincount(outcome, minlength=K + 1) == 0
    assert 1.0 - (K + 1) / reps <= prob.sum() <= 1.0 + 1e-9  # unseen outcomes have p < 1 / reps
    freq = np.bincount(outcome, minlength=K + 1) / reps
    np.testing.assert_allclose(freq[~unseen], prob[~unseen], atol=1.0 / reps + 1e-9)


def test_cascade_click_probabilities_match_frequencies():
    """P(click k) = p_k prod_{j<k} (1 - p_j) with p_k = sigmoid(util_k - u_0): empirical check."""
    rng = np.random.default_rng(1)
    B, K, d = 100_000, 4, 3
    item_vecs = rng.normal(size=(K, d))
    theta = np.tile(rng.normal(size=d), (B, 1))
    quality = rng.normal(size=K)
    u0 = 1.0
    params = np.array([1.0, 0.0, 0.0, u0, 0.0, 1.5, 1.0, 0.5, 0.0, 1.0, 1.0])
    penalty = 0.3 * np.log2(1.0 + np.arange(K))
    slates = np.tile(np.arange(K, dtype=np.int32), (B, 1))
    zeros = np.zeros(K)
    choice, _, rstar, cprob = kernels.choose_and_rate(
        slates, theta, np.zeros(B), np.zeros((B, 1)), item_vecs, quality, zeros, np.zeros(K, np.int64),
        zeros, params, penalty, rng.random(B), rng.standard_normal(B), rng.random(B),
    )
    util = rstar[0] - penalty
    p = 1 / (1 + np.exp(u0 - util))
    exact = np.append(p * np.cumprod(np.append(1.0, 1 - p[:-1])), np.prod(1 - p))
    assert exact.sum() == pytest.approx(1.0)
    freq = np.bincount(np.where(choice < 0, K, choice), minlength=K + 1) / B
    np.testing.assert_allclose(freq, exact, atol=4 * np.sqrt(0.25 / B))
    outcome = np.where(choice < 0, K, choice)
    np.testing.assert_allclose(cprob, exact[outcome], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Watch fraction, censoring, missing and continuous ratings
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.floats(0.05, 1.0), st.floats(0.0, 2.0), st.floats(0, 1))
def test_watch_is_bounded_censored_and_nan_without_click(seed, censor, noise, missing):
    rng = np.random.default_rng(seed)
    B = 50
    clicked = rng.random(B) < 0.6
    rating = np.where(clicked, rng.integers(1, 6, B), np.nan).astype(np.float32)
    watch, rated = kernels.watch_and_missing(
        rng.normal(0, 3, B), clicked, rating, rng.normal(), rng.uniform(0, 2), noise, censor, missing,
        rng.standard_normal(B), rng.random(B),
    )
    assert np.isnan(watch[~clicked]).all() and np.isnan(rated[~clicked]).all()
    w = watch[clicked]
    assert ((w >= 0) & (w <= censor)).all()
    kept = clicked & ~np.isnan(rated)
    np.testing.assert_array_equal(rated[kept], rating[kept])  # a rating is dropped, never changed


def test_watch_formula_and_censoring():
    r = np.array([-10.0, 0.0, 0.5, 10.0])
    clicked = np.ones(4, bool)
    rating = np.full(4, 3.0, np.float32)
    watch, _ = kernels.watch_and_missing(r, clicked, rating, 0.2, 1.5, 0.0, 1.0, 0.0, np.zeros(4), np.ones(4))
    np.testing.assert_allclose(watch, 1 / (1 + np.exp(-(0.2 + 1.5 * r))), rtol=1e-6)
    censored, _ = kernels.watch_and_missing(r, clicked, rating, 0.2, 1.5, 0.0, 0.6, 0.0, np.zeros(4), np.ones(4))
    np.testing.assert_allclose(censored, np.minimum(watch, 0.6), rtol=1e-6)
    assert (censored[watch >= 0.6] == np.float32(0.6)).all()


def test_missing_rate_frequency_and_continuous_ratings():
    cfg = tiny_scenario(feedback=FeedbackConfig(missing_rate=0.3, quantize=False, noise_std=1.0))
    df = simulate(cfg).public.interactions
    c = df[df.click == 1]
    n = len(c)
    assert n > 300
    assert abs(c.rating.isna().mean() - 0.3) < 4 * np.sqrt(0.21 / n)
    assert c.watch.notna().all() and df[df.click == 0].watch.isna().all()
    r = c.rating.dropna()
    assert ((r >= 1) & (r <= 5)).all()
    assert (r != r.round()).mean() > 0.5  # continuous, not whole stars


# ---------------------------------------------------------------------------------------------
# Dynamics
# ---------------------------------------------------------------------------------------------


def test_drift_moves_preferences_toward_consumed_items(tiny):
    eta = 0.2
    w = World.create(dataclasses.replace(tiny, dynamics=DynamicsConfig(drift_rate=eta)))
    users, items = np.array([0, 4, 9]), np.array([3, 3, 17])
    before = w.users.theta[users].copy()
    v = w.catalog.vectors[items]
    other = w.users.theta[1].copy()
    w.advance(np.zeros((0, 5), np.int64), users, items, np.random.default_rng(0))
    after = w.users.theta[users]
    np.testing.assert_allclose(after, (1 - eta) * before + eta * v)
    np.testing.assert_allclose(
        np.linalg.norm(after - v, axis=1), (1 - eta) * np.linalg.norm(before - v, axis=1)
    )
    np.testing.assert_array_equal(w.users.theta[1], other)  # no click, no drift


def test_satiation_rises_with_repeats_and_decays(tiny):
    w = World.create(tiny)
    g, decay = w.catalog.genre[3], tiny.satiation.decay
    none = np.zeros(0, np.int64)
    shown = np.zeros((0, 5), np.int64)
    levels = []
    for _ in range(4):  # the same genre again and again
        w.advance(shown, np.array([2]), np.array([3]), np.random.default_rng(0))
        levels.append(w.state.satiation[2, g])
    assert np.all(np.diff(levels) > 0)
    r_tired = w.true_reward(np.array([2]), np.array([3]))[0, 0]
    for _ in range(5):
        w.advance(shown, none, none, np.random.default_rng(0))
    assert w.state.satiation[2, g] == pytest.approx(levels[-1] * decay**5)
    assert w.true_reward(np.array([2]), np.array([3]))[0, 0] > r_tired


def test_leaving_and_returning_follow_the_session_budget(tiny):
    cfg = dataclasses.replace(tiny, dynamics=DynamicsConfig(session_budget=2, return_prob=0.0))
    w = World.create(cfg)
    rng = np.random.default_rng(0)
    everyone = np.ones(w.n_users)  # u_activity = 0 < activity: all want a slate
    for t in range(2):
        users = w.active_users(0 * everyone)
        assert len(users) == w.n_users
        w.advance(np.zeros((0, 5), np.int64), users[:0], users[:0], rng, users, rng)
    assert len(w.active_users(0 * everyone)) == 0  # all left after two slates, none come back
    # with return_prob = 1 they are away exactly one round, then start a fresh session
    w = World.create(dataclasses.replace(cfg, dynamics=DynamicsConfig(session_budget=1, return_prob=1.0)))
    seen = []
    for t in range(4):
        users = w.active_users(0 * everyone)
        seen.append(len(users))
        w.advance(np.zeros((0, 5), np.int64), users[:0], users[:0], rng, users, rng)
    assert seen == [w.n_users, 0, w.n_users, 0]


def test_sessions_and_arrivals_in_simulation():
    n_rounds = 12
    cfg = tiny_scenario(dynamics=DynamicsConfig(arrival=0.5, session_budget=3, return_prob=0.5))
    sim = simulate(cfg)
    df = sim.public.interactions
    first = df.groupby("user_id").timestamp.min()
    late = sim.world.state.arrival_round > 0
    assert late.sum() == 40
    # nobody is seen before arriving; the late ones arrive over the rounds
    assert (first.to_numpy() >= sim.world.state.arrival_round[first.index]).all()
    assert set(np.unique(sim.world.state.arrival_round[late])) <= set(range(1, n_rounds))
    per_round = df.groupby("timestamp").user_id.nunique()
    assert per_round.iloc[0] <= 40
    # no user sees more than session_budget slates in a row
    slates = df.drop_duplicates("slate_id")[["user_id", "timestamp"]]
    for _, ts in slates.groupby("user_id").timestamp:
        t = ts.to_numpy()
        runs = np.split(t, np.flatnonzero(np.diff(t) != 1) + 1)
        assert max(len(r) for r in runs) <= 3


# ---------------------------------------------------------------------------------------------
# Compatibility and reproducibility
# ---------------------------------------------------------------------------------------------


def test_new_knobs_off_leave_the_logs_unchanged():
    base = tiny_scenario()
    off = tiny_scenario(
        choice=ChoiceConfig(click_model="mnl"),
        feedback=FeedbackConfig(quantize=True, missing_rate=0.0, watch_censor=1.0),
        dynamics=DynamicsConfig(drift_rate=0.0, session_budget=0, arrival=0.0, return_prob=0.9),
    )
    a, b = simulate(base), simulate(off)
    assert a.public.interactions.equals(b.public.interactions)
    assert a.sealed_impressions.equals(b.sealed_impressions)
    # the old columns do not depend on the watch knobs (they draw from their own stream)
    c = simulate(tiny_scenario(feedback=FeedbackConfig(watch_noise_std=0.5, watch_censor=0.5)))
    old = [col for col in a.public.interactions.columns if col != "watch"]
    assert a.public.interactions[old].equals(c.public.interactions[old])
    assert not a.public.interactions.watch.equals(c.public.interactions.watch)


def test_same_seed_reproduces_with_everything_on():
    cfg = tiny_scenario(
        choice=ChoiceConfig(click_model="cascade"),
        feedback=FeedbackConfig(missing_rate=0.2, quantize=False, watch_censor=0.8),
        satiation=SatiationConfig(strength=1.0),
        dynamics=DynamicsConfig(drift_rate=0.1, session_budget=4, arrival=0.3),
        simulation=SimulationConfig(n_rounds=8),
    )
    a, b = simulate(cfg), simulate(cfg)
    assert a.public.interactions.equals(b.public.interactions)
    assert a.sealed_impressions.equals(b.sealed_impressions)
    np.testing.assert_array_equal(a.world.users.theta, b.world.users.theta)
    other = simulate(dataclasses.replace(cfg, seed=1))
    assert not a.public.interactions.equals(other.public.interactions)
