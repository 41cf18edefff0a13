"""Feedback signals (watch fraction, censoring, missing and continuous ratings), the cascade click
model and user dynamics (drift, satiation, leaving and returning, arrivals)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_post.logs.simulate import simulate
from recsim_post.world import feedback, kernels
from recsim_post.world.config import (
    ChoiceConfig, DynamicsConfig, FeedbackConfig, SatiationConfig, SimulationConfig,
)
from recsim_post.world.world import World

from .conftest import tiny_scenario

SETTINGS = settings(max_examples=40, deadline=None)


# ---------------------------------------------------------------------------------------------
# the choice kernel with the cascade model equals its numpy reference
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
    rng = np.random.default_rng(seed)
    slates = np.stack([rng.permutation(n)[:K] for _ in range(B)]).astype(np.int32)
    params = np.array([
        rng.uniform(0, 2), rng.uniform(0, 2), rng.uniform(0, 1), rng.normal(0, 3), rng.uniform(0, 1), float(cascade),
    ])
    args = (
        slates, rng.normal(size=(B, d)), rng.random(B), rng.exponential(size=(B, G)),
        rng.normal(size=(n, d)), rng.normal(size=n), rng.normal(size=n), rng.integers(0, G, n),
        rng.normal(size=n), params, rng.uniform(0, 2, K), rng.random(B),
    )
    return args


@SETTINGS
@given(choice_problems())
def test_choose_cascade_and_mnl_match_reference(args):
    got = kernels.choose(*args)
    ref = kernels.choose_ref(*args)
    np.testing.assert_array_equal(got[0], ref[0])  # choices: bit-equal
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_allclose(got[2], ref[2], rtol=1e-12)


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
    K = args[0].shape[1]
    choice, _, cprob = kernels.choose(*one)
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
    params = np.array([1.0, 0.0, 0.0, u0, 0.0, 1.0])
    penalty = 0.3 * np.log2(1.0 + np.arange(K))
    slates = np.tile(np.arange(K, dtype=np.int32), (B, 1))
    zeros = np.zeros(K)
    choice, rstar, cprob = kernels.choose(
        slates, theta, np.zeros(B), np.zeros((B, 1)), item_vecs, quality, zeros, np.zeros(K, np.int64),
        zeros, params, penalty, rng.random(B),
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
# Watch fraction, censoring, missing and continuous ratings (world/feedback.py)
# ---------------------------------------------------------------------------------------------


def _draws(rng: np.random.Generator, n: int, **fixed) -> dict[str, np.ndarray]:  # noqa: ANN003
    d = {"z_rating": rng.standard_normal(n), "u_flip": rng.random(n), "z_watch": rng.standard_normal(n),
         "u_missing": rng.random(n)}
    d.update({k: np.broadcast_to(np.asarray(v, float), n) for k, v in fixed.items()})
    return d


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.floats(0.05, 1.0), st.floats(0.0, 2.0), st.floats(0, 1))
def test_watch_is_bounded_censored_and_nan_without_click(seed, censor, noise, missing):
    rng = np.random.default_rng(seed)
    B = 50
    clicked = rng.random(B) < 0.6
    fb = FeedbackConfig(watch_offset=float(rng.normal()), watch_scale=float(rng.uniform(0, 2)), watch_noise_std=noise,
                        watch_censor=censor, missing_rate=missing)
    r, draws = rng.normal(0, 3, B), _draws(rng, B)
    out = feedback.observe(fb, r, clicked, draws)
    watch, rated = out["watch"], out["rating"]
    assert np.isnan(watch[~clicked]).all() and np.isnan(rated[~clicked]).all()
    w = watch[clicked]
    assert ((w >= 0) & (w <= censor)).all()
    kept = clicked & ~np.isnan(rated)
    full = feedback.observe(dataclasses.replace(fb, missing_rate=0.0), r, clicked, draws)["rating"]
    np.testing.assert_array_equal(rated[kept], full[kept])  # a rating is dropped, never changed
    assert (np.isnan(rated[clicked]) == (draws["u_missing"][clicked] < missing)).all()


def test_watch_formula_and_censoring():
    r = np.array([-10.0, 0.0, 0.5, 10.0])
    clicked = np.ones(4, bool)
    fb = FeedbackConfig(watch_offset=0.2, watch_scale=1.5, watch_noise_std=0.0)
    watch = feedback.watch(fb, r, clicked, _draws(np.random.default_rng(0), 4, z_watch=0.0))
    np.testing.assert_allclose(watch, 1 / (1 + np.exp(-(0.2 + 1.5 * r))), rtol=1e-6)
    censored = feedback.watch(dataclasses.replace(fb, watch_censor=0.6), r, clicked,
                             _draws(np.random.default_rng(0), 4, z_watch=0.0))
    np.testing.assert_allclose(censored, np.minimum(watch, 0.6), rtol=1e-6)
    assert (censored[watch >= 0.6] == np.float32(0.6)).all()


def test_rating_by_hand():
    """rating = clip(round(center + scale r* + sigma z), 1, 5), flipped to 6 - rating."""
    fb = FeedbackConfig(rating_center=3.0, rating_scale=1.0, noise_std=0.5, flip_rate=0.5)
    r = np.array([0.2, 0.6, 5.0, -9.0, 0.4, 0.0])
    z = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    u_flip = np.array([0.9, 0.9, 0.9, 0.9, 0.1, 0.9])
    clicked = np.array([True, True, True, True, True, False])
    got = feedback.rating(fb, r, clicked, _draws(np.random.default_rng(0), 6, z_rating=z, u_flip=u_flip, u_missing=1.0))
    # 3.2 -> 3; 3.6 -> 4; 8 -> 5 (clipped); -6 -> 1 (clipped); 3.4 + 0.5 = 3.9 -> 4, flipped -> 2; no click
    np.testing.assert_array_equal(got[:5], [3.0, 4.0, 5.0, 1.0, 2.0])
    assert np.isnan(got[5]) and got.dtype == np.float32
    cont = feedback.rating(dataclasses.replace(fb, quantize=False, flip_rate=0.0), r[:2], clicked[:2],
                          _draws(np.random.default_rng(0), 2, z_rating=0.0, u_missing=1.0))
    np.testing.assert_allclose(cont, [3.2, 3.6], rtol=1e-6)


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


# ---------------------------------------------------------------------------------------------
# Exact OPE truth under preference drift: theta_u(t) is sealed round by round
# ---------------------------------------------------------------------------------------------

DRIFT = dict(
    dynamics=DynamicsConfig(drift_rate=0.3, session_budget=4, arrival=0.2),
    satiation=SatiationConfig(strength=0.5),
)


def _top_rows(sim):
    """Position-0 rows: logged contexts and the sealed r* there."""
    from recsim_post.ope.estimators import bandit_data_from_logs
    from recsim_post.ope.data import logged_contexts

    ctx = logged_contexts(sim.public.interactions)
    return ctx, bandit_data_from_logs(sim.public.interactions, sim.sealed_impressions).reward


def test_sealed_theta_history_replays_the_drift(tmp_path):
    from recsim_post.truth.ground_truth import GroundTruth
    from recsim_post.logs.simulate import write_logs

    cfg = tiny_scenario(seed=3, **DRIFT)
    sim = simulate(cfg)
    T, eta = cfg.simulation.n_rounds, cfg.dynamics.drift_rate
    truth = GroundTruth.from_simulation(sim)
    loaded = GroundTruth.load(write_logs(sim, tmp_path / "logs"))
    theta0 = World.create(cfg).users.theta
    np.testing.assert_array_equal(truth.theta_at(0), theta0)
    np.testing.assert_array_equal(truth.theta_at(T), sim.world.users.theta)
    clicks = sim.public.clicks()
    v = sim.world.catalog.vectors
    moved_total = 0
    for t in range(T):
        before, after = truth.theta_at(t), truth.theta_at(t + 1)
        np.testing.assert_array_equal(loaded.theta_at(t), before)
        c = clicks[clicks.timestamp == t]
        u, i = c.user_id.to_numpy(), c.item_id.to_numpy()
        expect = before.copy()
        expect[u] = (1.0 - eta) * before[u] + eta * v[i]  # the drift rule, replayed from public clicks
        np.testing.assert_array_equal(after, expect)
        moved_total += len(u)
    assert moved_total > 100
    # per-row lookups agree with the per-round matrices
    users = np.array([0, 5, 5, 79, 3])
    rounds = np.array([0, 0, 7, T, 11])
    np.testing.assert_array_equal(
        truth.user_theta(users, rounds), np.stack([truth.theta_at(r)[u] for u, r in zip(users, rounds)])
    )
    # the sealed history is float64 and written only when drift is on
    assert sim.theta_updates["theta0"].dtype == np.float64
    assert simulate(tiny_scenario(seed=3)).theta_updates is None


def test_exact_ope_truth_under_drift_matches_sealed_rewards():
    from recsim_post.truth.ground_truth import GroundTruth
    from recsim_post.ope.exact import exact_reward

    sim = simulate(tiny_scenario(seed=4, **DRIFT))
    truth = GroundTruth.from_simulation(sim)
    ctx, sealed_r = _top_rows(sim)
    ex = exact_reward(truth, sim.public, ctx, sealed_r)  # raises if any row is off by > 1e-4
    r = ex.rows(slice(0, len(ctx)))
    np.testing.assert_allclose(r[np.arange(len(ctx)), ctx.action], sealed_r, rtol=0, atol=1e-12)
    # the final preferences would not do: drift moves r* by far more than the tolerance
    stale = truth.theta[ctx.user] @ truth.vectors.T
    moved = truth.user_theta(ctx.user, ctx.timestamp) @ truth.vectors.T
    assert np.abs(stale - moved).max() > 0.5


def test_exact_ope_truth_without_sealed_history_fails_clearly(tmp_path):
    import json

    from recsim_post.errors import LogError
    from recsim_post.truth.ground_truth import GroundTruth
    from recsim_post.ope.exact import exact_reward
    from recsim_post.logs.simulate import write_logs

    sim = simulate(tiny_scenario(seed=4, **DRIFT))
    folder = write_logs(sim, tmp_path / "logs")
    # a folder written before the history existed: neither the file nor its hash in the manifest
    (folder / "sealed" / "theta_updates.parquet").unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["sha256"]["sealed/theta_updates.parquet"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    truth = GroundTruth.load(folder)
    ctx, sealed_r = _top_rows(sim)
    with pytest.raises(LogError, match="no sealed theta history") as err:
        exact_reward(truth, sim.public, ctx, sealed_r)
    assert "\n" not in str(err.value)


def test_ips_with_true_propensities_is_unbiased_under_drift():
    """IPS on position-0 rows of 60 tiny drifting worlds (seeds 0-59; drift 0.3, satiation 0.5,
    sessions, arrivals) against the exact V = mean_i sum_a pi(a | u_i) r*(u_i, a, t_i), r* with
    theta_u(t_i) from the sealed history. Given the past, w_i r_i - V_i is a martingale difference,
    so D_s = IPS_s - V_s has mean zero; we require |mean D| < 3 standard errors over the 60 worlds.
    """
    import math

    from recsim_post.truth.ground_truth import GroundTruth
    from recsim_post.ope.estimators import IPS, bandit_data_from_logs
    from recsim_post.ope.data import logged_contexts
    from recsim_post.ope.exact import exact_reward

    diffs, shifts = [], []
    for seed in range(60):
        sim = simulate(tiny_scenario(seed=seed, **DRIFT))
        truth = GroundTruth.from_simulation(sim)
        d = bandit_data_from_logs(sim.public.interactions, sim.sealed_impressions, n_actions=truth.n_items)
        ctx = logged_contexts(sim.public.interactions)
        ex = exact_reward(truth, sim.public, ctx, d.reward)
        m = np.random.default_rng(1000 + seed).normal(size=(truth.n_users, truth.n_items))
        z = m[d.context] - m[d.context].max(axis=1, keepdims=True)
        pi = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        d = d.with_policy(pi_all=pi)
        r_all = ex.rows(slice(0, len(ctx)))
        v = float((pi * r_all).sum(axis=1).mean())
        diffs.append(IPS().estimate(d) - v)
        shifts.append(v - float((pi * truth.true_reward(d.context)).sum(axis=1).mean()))
    diffs = np.array(diffs)
    se = diffs.std(ddof=1) / math.sqrt(len(diffs))
    assert abs(diffs.mean()) < 3 * se, f"mean IPS - V = {diffs.mean():.4f}, 3 SE = {3 * se:.4f}"
    # the truth at T (final theta and satiation) is a different estimand, consistently so
    shifts = np.array(shifts)
    assert abs(shifts.mean()) > 5 * shifts.std(ddof=1) / math.sqrt(len(shifts))
