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
