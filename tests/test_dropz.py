"""Issue 11, "dropping Z(x)": the two-context counter-example in closed form, checked against a
solver; the per-user rating bias knob; exp-RSFT's per-user normalisation; the world study."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsim_post.theory.dropz import (
    TwoContext, context_weights, numeric_fit, shared_fit, tabular_fit, tilt, true_value,
)

# ------------------------------------------------------------------ the counter-example, by hand


def test_two_context_hand_computed_values():
    """α = ½, logger (0.9, 0.1), r(A) = (1, 0), r(B) = (c, c), λ = 1, worked out on paper:
    Z(A) = 0.9e + 0.1, π_λ(1|A) = 0.9e / Z(A), p_ctx = (π_λ(1|A) + 0.9)/2,
    p_none = 0.9 (e + e^c) / (Z(A) + e^c)."""
    t, e = TwoContext(), math.e
    z_a = 0.9 * e + 0.1
    assert t.z_a(1.0) == pytest.approx(2.546453645613141, abs=1e-12)
    assert t.tilt_a(1.0) == pytest.approx(0.9 * e / z_a, abs=1e-14)
    assert t.p_context(1.0) == pytest.approx(0.5 * (0.9 * e / z_a + 0.9), abs=1e-14)
    assert t.p_context(1.0) == pytest.approx(0.93036485, abs=1e-8)
    assert t.p_none(1.0, 0.0) == pytest.approx(0.9 * (e + 1) / (z_a + 1), abs=1e-14)
    assert t.p_none(1.0, 0.0) == pytest.approx(0.94360564, abs=1e-8)
    assert t.p_none(1.0, 2.0) == pytest.approx(0.9 * (e + e**2) / (z_a + e**2), abs=1e-14)
    assert t.p_none(1.0, 2.0) == pytest.approx(0.91556491, abs=1e-8)
    assert t.c_star(1.0) == pytest.approx(math.log(z_a), abs=1e-14)
    # true values: V(p) = p/2 + c/2; regret (p = 1 is the best shared policy) = (1 - p)/2
    assert t.value(t.p_none(1.0, 2.0), 2.0) == pytest.approx(0.5 * 0.91556491 + 1.0, abs=1e-8)
    assert t.regret(t.p_context(1.0)) == pytest.approx(0.5 * (1 - 0.93036485), abs=1e-8)


LAMS = (0.3, 1.0, 3.0)
CS = (-2.0, 0.0, 0.5, 2.0, 5.0)


@pytest.mark.parametrize("lam", LAMS)
@pytest.mark.parametrize("c", CS)
def test_closed_form_matches_the_general_fit_and_the_numeric_optimum(lam, c):
    t = TwoContext()
    p_x, logger, r = t.problem(c)
    for norm, closed in (("none", t.p_none(lam, c)), ("context", t.p_context(lam))):
        assert shared_fit(p_x, logger, r, lam, norm)[0] == pytest.approx(closed, abs=1e-12)
        p, grad = numeric_fit(p_x, logger, r, lam, norm, policy="shared")
        assert grad < 1e-7
        assert p[0] == pytest.approx(closed, abs=1e-7), (norm, p, closed)
        assert true_value(p_x, p, r) == pytest.approx(t.value(closed, c), abs=1e-7)


@pytest.mark.parametrize("lam", LAMS)
def test_normalised_fit_ignores_c_the_unnormalised_one_does_not(lam):
    t = TwoContext()
    p_ctx = t.p_context(lam)
    p_none = [t.p_none(lam, c) for c in CS]
    assert all(a > b for a, b in zip(p_none, p_none[1:]))  # strictly decreasing in c: B's vote grows
    assert max(p_none) - min(p_none) > 0.01  # and it moves by a margin that matters
    assert t.p_none(lam, -60.0) == pytest.approx(t.tilt_a(lam), abs=1e-9)  # B's vote vanishes
    assert t.p_none(lam, 60.0) == pytest.approx(0.9, abs=1e-9)  # A's preference is washed out
    cs = t.c_star(lam)
    assert t.p_none(lam, cs) == pytest.approx(p_ctx, abs=1e-12)  # Z(A) = Z(B): the factors cancel
    assert t.p_none(lam, cs + 0.1) < p_ctx < t.p_none(lam, cs - 0.1)  # dropping Z hurts iff c > c*
    assert t.regret(t.p_none(lam, cs + 0.1)) > t.regret(p_ctx)


@pytest.mark.parametrize("norm", ["none", "context"])
def test_tabular_class_gives_the_tilt_for_either_weighting(norm):
    t = TwoContext()
    for lam, c in ((0.5, 2.0), (1.0, -1.0), (2.0, 0.0)):
        p_x, logger, r = t.problem(c)
        exact = tilt(logger, r, lam)
        np.testing.assert_allclose(tabular_fit(p_x, logger, r, lam, norm), exact, atol=1e-14)
        pi, grad = numeric_fit(p_x, logger, r, lam, norm, policy="tabular")
        assert grad < 1e-7
        np.testing.assert_allclose(pi, exact, atol=1e-7)
        assert exact[0, 0] == pytest.approx(t.tilt_a(lam), abs=1e-14) and exact[1, 0] == pytest.approx(0.9)


def test_shared_fit_is_a_mixture_of_tilts_weighted_by_p_x_z_x_on_random_problems():
    """The general statement: dropping Z weights context x by P(x) Z(x); a per-context reward
    shift moves the unnormalised fit and leaves the normalised one unchanged."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        k, a = 4, 3
        p_x = rng.dirichlet(np.ones(k))
        logger = rng.dirichlet(np.ones(a), size=k)
        r = rng.normal(size=(k, a))
        lam = float(rng.uniform(0.3, 2.0))
        z = (logger * np.exp(r / lam)).sum(axis=1)
        np.testing.assert_allclose(context_weights(p_x, logger, r, lam, "none"), p_x * z / (p_x * z).sum(), rtol=1e-12)
        for norm in ("none", "context"):
            pi, _ = numeric_fit(p_x, logger, r, lam, norm)
            np.testing.assert_allclose(pi, shared_fit(p_x, logger, r, lam, norm), atol=1e-7)
        shifted = r + rng.normal(scale=2.0, size=(k, 1))  # each context's rewards shifted by its own constant
        np.testing.assert_allclose(shared_fit(p_x, logger, shifted, lam, "context"),
                                   shared_fit(p_x, logger, r, lam, "context"), atol=1e-12)
        assert np.abs(shared_fit(p_x, logger, shifted, lam, "none") - shared_fit(p_x, logger, r, lam, "none")).max() > 1e-4


def test_theory_rejects_bad_inputs_in_one_line():
    t = TwoContext()
    p_x, logger, r = t.problem(0.0)
    with pytest.raises(ValueError, match="normalise = 'batch' is not allowed"):
        shared_fit(p_x, logger, r, 1.0, "batch")
    with pytest.raises(ValueError, match="lam = 0.0 is out of range"):
        shared_fit(p_x, logger, r, 0.0, "none")
    with pytest.raises(ValueError, match="alpha = 1.0 is out of range"):
        TwoContext(alpha=1.0)
    with pytest.raises(ValueError, match="shapes do not match"):
        shared_fit(p_x, logger[:1], r, 1.0, "none")


# ------------------------------------------------------------------ the per-user rating bias knob

import dataclasses  # noqa: E402 - grouped with the part of the file that needs it

import pandas as pd  # noqa: E402

from recsim_post.config import from_dict  # noqa: E402
from recsim_post.errors import ConfigError  # noqa: E402
from recsim_post.logs.simulate import _sealed_users, simulate  # noqa: E402
from recsim_post.truth.ground_truth import GroundTruth  # noqa: E402
from recsim_post.world.config import FeedbackConfig, ScenarioConfig  # noqa: E402

from .conftest import tiny_scenario  # noqa: E402


def _biased_pair(std: float, **fb):  # noqa: ANN001, ANN202
    """Two simulations with the same seed that differ only in feedback.user_bias_std (0 vs std)."""
    base = FeedbackConfig(quantize=False, rating_center=0.8, **fb)  # r* of clicks is ~2.2: ratings near 3, few clipped
    a = simulate(tiny_scenario(feedback=base))
    b = simulate(tiny_scenario(feedback=dataclasses.replace(base, user_bias_std=std)))
    return a, b


def test_user_bias_shifts_each_users_ratings_by_one_constant():
    a, b = _biased_pair(0.8)
    ia, ib = a.public.interactions, b.public.interactions
    # everything but the rating is the same: choices follow r*, never the rating
    pd.testing.assert_frame_equal(ia.drop(columns="rating"), ib.drop(columns="rating"))
    clicked = ia["click"].to_numpy() == 1
    ra, rb = ia["rating"].to_numpy(np.float64)[clicked], ib["rating"].to_numpy(np.float64)[clicked]
    users = ia["user_id"].to_numpy()[clicked]
    inside = (ra > 1) & (ra < 5) & (rb > 1) & (rb < 5)  # neither was clipped: the difference is b_u
    assert inside.mean() > 0.5
    bias = _sealed_users(b)["rating_bias"].to_numpy()
    diff = rb[inside] - ra[inside]
    np.testing.assert_allclose(diff, bias[users[inside]], atol=2e-6)  # float32 ratings: ~1e-6 rounding
    per_user = pd.Series(diff).groupby(users[inside]).agg(lambda d: d.max() - d.min())
    assert (per_user < 4e-6).all()  # one constant within each user
    assert pd.Series(diff).groupby(users[inside]).mean().std() > 0.3  # and it differs between users
    # clipped ratings move toward the clip, never past it, and never the wrong way
    moved = rb - ra
    assert np.all(np.sign(moved[np.abs(moved) > 1e-5]) == np.sign(bias[users][np.abs(moved) > 1e-5]))


def test_user_bias_leaves_the_ground_truth_and_every_other_table_unchanged():
    a, b = _biased_pair(1.5)
    pd.testing.assert_frame_equal(a.sealed_impressions, b.sealed_impressions)  # r* of every impression
    ua, ub = _sealed_users(a), _sealed_users(b)
    assert "rating_bias" not in ua.columns  # off: the sealed table is exactly as before the knob
    pd.testing.assert_frame_equal(ua, ub.drop(columns="rating_bias"))
    ta, tb = GroundTruth.from_simulation(a), GroundTruth.from_simulation(b)
    users = np.arange(ta.n_users)
    np.testing.assert_array_equal(ta.true_reward(users), tb.true_reward(users))  # r* at T, every pair
    np.testing.assert_array_equal(a.world.users.theta, b.world.users.theta)


def test_user_bias_is_std_times_one_fixed_draw_per_user():
    one = simulate(tiny_scenario(feedback=FeedbackConfig(user_bias_std=0.5))).world.users.rating_bias
    two = simulate(tiny_scenario(feedback=FeedbackConfig(user_bias_std=1.0))).world.users.rating_bias
    np.testing.assert_allclose(two, 2.0 * one, rtol=1e-15)  # the same z_u: studies compare like with like
    assert one.shape == (80,) and 0.3 < one.std() < 0.7
    assert simulate(tiny_scenario()).world.users.rating_bias is None


def test_user_bias_knob_range_is_checked_in_one_line():
    with pytest.raises(ConfigError, match=r"user_bias_std = -0.5 is out of range: must be .*>= 0.*<= 100"):
        from_dict(ScenarioConfig, {"feedback": {"user_bias_std": -0.5}})
    with pytest.raises(ConfigError, match=r"user_bias_std = 101"):
        from_dict(ScenarioConfig, {"feedback": {"user_bias_std": 101.0}})
    assert from_dict(ScenarioConfig, {"feedback": {"user_bias_std": 2.0}}).feedback.user_bias_std == 2.0


# ------------------------------------------------------------------ exp-RSFT, normalize = "user"

import torch  # noqa: E402

from recsim_post.models import SASRecConfig, SequencePolicy, build_model  # noqa: E402
from recsim_post.posttrain import exp_rsft  # noqa: E402
from recsim_post.posttrain.data import PostTrainData  # noqa: E402
from recsim_post.posttrain.exp_rsft import ExpRSFTConfig, exp_rsft_loss, user_log_normalizer  # noqa: E402
from recsim_post.posttrain.loop import TrainConfig  # noqa: E402
from recsim_post.seeding import SeedTree  # noqa: E402

from .conftest import clicks_frame  # noqa: E402


def test_user_log_normalizer_hand_computed():
    """λ = 2, r_max = 5. User 0 rated 5, 3 and one click unrated; user 2 rated 4 and 7 (clipped to
    5); user 1 has no click. Shifted log-weights (r − 5)/2: user 0 → 0, −1; user 2 → −0.5, 0."""
    users = np.array([0, 0, 0, 2, 2])
    r = np.array([5.0, 3.0, np.nan, 4.0, 7.0])
    table, fallback = user_log_normalizer(users, r, lam=2.0, r_max=5.0)
    assert table.shape == (3,)
    assert table[0] == pytest.approx(math.log((1 + math.exp(-1)) / 2), abs=1e-15)
    assert table[2] == pytest.approx(math.log((math.exp(-0.5) + 1) / 2), abs=1e-15)
    assert fallback == pytest.approx(math.log((1 + math.exp(-1) + math.exp(-0.5) + 1) / 4), abs=1e-15)
    assert table[1] == fallback  # no rated click: the global value (it weighs no target)
    # the weights exp((r − 5)/2 − table[u]) average exactly 1 over each user's rated clicks
    w0 = np.exp(np.array([0.0, -1.0]) - table[0])
    assert w0 == pytest.approx([2 / (1 + math.exp(-1)), 2 * math.exp(-1) / (1 + math.exp(-1))], abs=1e-15)
    assert w0.sum() == pytest.approx(2.0, abs=1e-15)
    # a tiny λ loses nothing: the weights are still the user's softmax of her ratings
    t_small, _ = user_log_normalizer(users, r, lam=1e-6, r_max=5.0)
    assert np.isfinite(t_small).all() and t_small[0] == pytest.approx(-math.log(2.0), abs=1e-12)


def test_user_normalisation_cancels_a_per_user_rating_offset_exactly():
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(5), 6)
    r = rng.integers(1, 4, len(users)).astype(np.float64)  # 1..3: room to shift up without clipping
    offset = np.array([0.0, 1.0, 2.0, -0.5, 1.5])[users]
    for lam in (0.3, 1.0):
        t0, _ = user_log_normalizer(users, r, lam, 5.0)
        t1, _ = user_log_normalizer(users, r + offset, lam, 5.0)
        w0 = np.exp((r - 5.0) / lam - t0[users])
        w1 = np.exp((r + offset - 5.0) / lam - t1[users])
        np.testing.assert_allclose(w1, w0, rtol=1e-12)
        # the unnormalised weights of user 2 (offset 2) moved by e^{2/λ}
        assert np.exp((r + offset - 5.0) / lam)[users == 2].sum() / np.exp((r - 5.0) / lam)[users == 2].sum() \
            == pytest.approx(math.exp(2.0 / lam), rel=1e-12)


def test_exp_rsft_user_loss_hand_computed():
    """One window per user, two rated positions each (and a padded one). λ = 2, r_max = 5.
    Window 0 (user 0): ratings 5, 3 → log Ẑ' = log((1 + e^{-1})/2); window 1 (user 1): 4, 4 →
    log Ẑ' = −0.5. Loss = (1/4) Σ w·nll with w = exp((r − 5)/2 − log Ẑ')."""
    logits = torch.zeros((2, 3, 3))
    logits[0, 1, 1] = math.log(2.0)  # position 1: softmax [1/4, 1/2, 1/4]
    targets = torch.tensor([[0, 1, -1], [2, 2, -1]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    rewards = torch.tensor([[5.0, 3.0, 4.0], [4.0, 4.0, float("nan")]])
    lz0 = math.log((1 + math.exp(-1)) / 2)
    log_z = torch.tensor([[lz0], [-0.5]], dtype=torch.float64)
    loss, m = exp_rsft_loss(logits, targets, rewards, mask, lam=2.0, r_max=5.0, normalize="user", log_z=log_z)
    nll = [math.log(3), math.log(2), math.log(3), math.log(3)]
    w = [math.exp(0 - lz0), math.exp(-1 - lz0), 1.0, 1.0]
    assert loss.item() == pytest.approx(sum(a * b for a, b in zip(w, nll)) / 4, rel=1e-6)
    assert m["mean_w"].item() == pytest.approx(1.0, rel=1e-6) and m["n"].item() == 4
    with pytest.raises(ConfigError, match="normalize = 'user' needs log_z"):
        exp_rsft_loss(logits, targets, rewards, mask, lam=2.0, normalize="user")
    with pytest.raises(ConfigError, match="normalize = 'users' is not allowed"):
        ExpRSFTConfig(normalize="users")


def test_exp_rsft_user_training_hands_the_loss_each_users_normaliser(monkeypatch):
    clicks = clicks_frame(np.repeat([0, 3], 4), [0, 1, 2, 3, 5, 4, 3, 2], [5, 5, 3, 1, 2, 1, 2, 1])
    model = SASRecConfig(dim=16, n_layers=1, n_heads=2, max_len=8, dropout=0.0)
    ref = SequencePolicy(build_model(model, 6, torch.Generator().manual_seed(0)), 6)
    seen, real = [], exp_rsft.exp_rsft_nll_loss

    def spy(nll, rewards, mask, lam, r_max, normalize, log_z):  # noqa: ANN001, ANN202
        seen.append(log_z.clone())
        return real(nll, rewards, mask, lam, r_max, normalize, log_z)

    monkeypatch.setattr(exp_rsft, "exp_rsft_nll_loss", spy)
    data = PostTrainData(clicks, 6)  # no reward model: 'user' needs none
    out = exp_rsft.train(ref, data, ExpRSFTConfig(lam=1.0, normalize="user"),
                         TrainConfig(epochs=1, batch_size=8, device="cpu"), SeedTree(0), progress=False)
    table, _ = user_log_normalizer(np.repeat([0, 3], 4), np.array([5, 5, 3, 1, 2, 1, 2, 1.0]), 1.0, 5.0)
    assert sorted(seen[0][:, 0].tolist()) == pytest.approx(sorted([table[0], table[3]]), abs=1e-12)
    assert any(h.get("stage") == "exp-rsft" for h in out.history)


# ------------------------------------------------------------------ the world study, end to end


@pytest.mark.slow
def test_dropz_study_on_a_tiny_world(tmp_path):
    """studies/dropz.toml at its small size, end to end through the study runner."""
    from recsim_post.experiments.study import load_study, run_study

    long = run_study(load_study("dropz", small=True), tmp_path / "dropz")
    trained = long[long["kind"] == "trained"]
    assert set(trained["method"]) == {"bc", "exp-rsft[lam=1,normalize=batch]", "exp-rsft[lam=1,normalize=user]",
                                      "exp-rsft[lam=1e+12,normalize=batch]", "exp-rsft[lam=1e+12,normalize=user]"}
    num = trained[["true_value", "true_value_norm", "entropy"]].to_numpy(np.float64)
    assert np.isfinite(num).all() and (trained["entropy"] > 0).all()
    assert (trained["kl_ref"].dropna() >= -1e-9).all()
    ref = long[long["method"] == "logging policy"].set_index("feedback.user_bias_std")
    # the offset touches the ratings only: the same world and logger for every s
    assert ref.loc["0.0", "true_value"] == ref.loc["1.0", "true_value"]
    bc = trained[trained["method"] == "bc"].set_index("feedback.user_bias_std")
    assert bc.loc["0.0", "true_value"] == bc.loc["1.0", "true_value"]  # BC reads no rating
    # λ → ∞: every rated target weighs 1 under either normalisation, so both train the same model
    big = trained[trained["method"].str.startswith("exp-rsft[lam=1e+12")]
    wide = big.pivot_table(index="feedback.user_bias_std", columns="method", values="true_value")
    np.testing.assert_allclose(wide.iloc[:, 0], wide.iloc[:, 1], rtol=0, atol=1e-6)
    assert "Paired difference to **bc**" in (tmp_path / "dropz" / "report.md").read_text()
