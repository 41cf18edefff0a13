"""OPE at scale: per-row model terms instead of (n x A) matrices, the streamed Poisson bootstrap
(kernel against its reference, blocks against one dense product, thread count irrelevant), shared
resamples across estimators, the normal interval by hand, and coverage of both interval methods."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_post.ope import estimators as ope
from recsim_post.truth import kernels
from recsim_post.ope.estimators import DM, DR, IPS, SNIPS, BanditData, SwitchDR, intervals, poisson_bootstrap_sums
from recsim_post.policy import UniformPolicy

from .test_ope import _logs, _world, three  # noqa: F401 - the 3-row fixture of test_ope

ESTIMATORS = [IPS(), SNIPS(), DM(), DR(), SwitchDR(tau=2.0)]


# ---------------------------------------------------------------- per-row model terms


def test_per_row_model_terms_give_the_dense_estimates_bit_for_bit():
    mu, pi0, pi, _ = _world(1)
    dense = _logs(np.random.default_rng(0), mu, pi0, pi, 500, q_hat=mu + 0.2)
    rows = np.arange(len(dense))
    lean = BanditData(
        dense.context, dense.action, dense.reward, dense.pscore, dense.pi_on_action, n_actions=dense.n_actions,
        q_hat_pi=(dense.pi_all * dense.q_hat_all).sum(axis=1), q_hat_on_action=dense.q_hat_all[rows, dense.action],
    )
    for est in ESTIMATORS:
        assert est.estimate(lean) == est.estimate(dense), est.name


def test_per_row_model_terms_are_validated():
    base = dict(context=np.arange(2), action=np.array([0, 1]), reward=np.ones(2), pscore=np.full(2, 0.5),
                pi_on_action=np.full(2, 0.5))
    with pytest.raises(ValueError, match="together"):
        BanditData(**base, q_hat_pi=np.ones(2))
    with pytest.raises(ValueError, match="q_hat_pi has 3 rows"):
        BanditData(**base, q_hat_pi=np.ones(3), q_hat_on_action=np.ones(2))
    with pytest.raises(ValueError, match="disagrees"):
        BanditData(**base, q_hat_all=np.zeros((2, 2)), q_hat_pi=np.ones(2), q_hat_on_action=np.ones(2))
    with pytest.raises(ValueError, match="DR needs pi_all and q_hat_all"):
        DR().estimate(BanditData(**base))


# ---------------------------------------------------------------- the Poisson bootstrap


def _counts(u: np.ndarray) -> np.ndarray:
    """The kernel's counts of a row of uniforms: one row, one column of ones."""
    return kernels.poisson_accumulate(u[None, :], np.ones((1, 1)))[0]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 9), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_poisson_accumulate_matches_the_dense_reference(rows, B, k, seed):
    rng = np.random.default_rng(seed)
    u, x = rng.random((rows, B)), rng.normal(size=(rows, k))
    u[0, 0] = kernels.POISSON1_THRESHOLDS[min(rows, 10) - 1]  # on a threshold: counts it (u >= P(N <= m))
    u[-1, -1] = np.nextafter(1.0, 0.0)  # the largest count
    acc = np.full((k, B), 0.5)
    got = kernels.poisson_accumulate(u, x, acc)
    assert got is acc
    np.testing.assert_allclose(got, 0.5 + kernels.poisson_accumulate_ref(u, x), rtol=1e-12, atol=1e-12)


def test_poisson_counts_by_hand_and_in_distribution():
    t = kernels.POISSON1_THRESHOLDS
    u = np.array([0.0, math.exp(-1) - 1e-12, t[0], t[1], t[7], t[9], np.nextafter(1.0, 0.0)])
    np.testing.assert_array_equal(_counts(u), [0, 0, 1, 2, 8, 10, len(t)])
    np.testing.assert_array_equal(_counts(u), kernels.poisson_counts_ref(u))
    c = _counts(np.random.default_rng(0).random(400_000))
    # Poisson(1): mean 1, variance 1, P(0) = P(1) = 1/e (standard errors ~ 0.0016, 0.0035, 0.0008)
    assert abs(c.mean() - 1) < 0.008 and abs(c.var() - 1) < 0.02
    assert abs((c == 0).mean() - math.exp(-1)) < 0.004 and abs((c == 1).mean() - math.exp(-1)) < 0.004


def _dense_bootstrap_sums(x: np.ndarray, B: int, rng: np.random.Generator) -> np.ndarray:
    """The same resamples as one dense (B x n) count matrix and one product."""
    n = len(x)
    starts = range(0, n, ope.BOOTSTRAP_BLOCK_ROWS)
    children = np.random.SeedSequence(rng.integers(0, 2**63, size=4).tolist()).spawn(len(starts))
    u = np.concatenate(
        [np.random.default_rng(c).random((min(ope.BOOTSTRAP_BLOCK_ROWS, n - lo), B)) for c, lo in zip(children, starts)]
    )
    return kernels.poisson_accumulate_ref(u, x).T


@pytest.mark.parametrize("n", [1, 37, 1000])
def test_streamed_bootstrap_is_one_dense_product_and_ignores_the_thread_count(monkeypatch, n):
    monkeypatch.setattr(ope, "BOOTSTRAP_BLOCK_ROWS", 64)  # many blocks
    x = np.random.default_rng(1).normal(size=(n, 3))
    want = _dense_bootstrap_sums(x, 40, np.random.default_rng(7))
    got = poisson_bootstrap_sums(x, 40, np.random.default_rng(7))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = poisson_bootstrap_sums(x, 40, np.random.default_rng(7))
    finally:
        numba.set_num_threads(previous)
    np.testing.assert_array_equal(one, got)


def test_shared_resamples_give_each_estimator_its_own_interval():
    """One pass for five estimators = five passes with the same seed: the resampling weights depend
    on the rows and the seed only, not on the columns."""
    mu, pi0, pi, _ = _world(2)
    d = _logs(np.random.default_rng(3), mu, pi0, pi, 800, q_hat=mu)
    together = intervals(ESTIMATORS, d, 150, 0.1, np.random.default_rng(11))
    for est, ci in zip(ESTIMATORS, together):
        np.testing.assert_allclose(ci, est.interval(d, 150, 0.1, np.random.default_rng(11)), rtol=1e-12)
        assert ci[0] <= est.estimate(d) <= ci[1]


def test_ips_resample_is_the_poisson_weighted_mean():
    """With one row of weight 1 and the rest 0, an IPS resample is (N_0 x_0) / sum_i N_i."""
    x = np.array([[1.0, 2.0], [1.0, 0.0], [1.0, 0.0]])  # columns: ones, num
    s = poisson_bootstrap_sums(x, 5, np.random.default_rng(0))
    u_counts = _dense_bootstrap_sums(x[:, :1] * 0 + np.eye(3), 5, np.random.default_rng(0))  # the counts
    np.testing.assert_allclose(s[:, 0], u_counts.sum(axis=1))
    np.testing.assert_allclose(s[:, 1], 2.0 * u_counts[:, 0])


def test_normal_interval_by_hand(three):  # noqa: F811
    z = 1.6448536269514722  # the 95 % quantile of N(0, 1)
    num = three.weight * three.reward  # [1.6, 0, 0.5]
    lo, hi = IPS().interval(three, alpha=0.1, method="normal")
    se = np.std(num, ddof=1) / math.sqrt(3)
    assert lo == pytest.approx(num.mean() - z * se, abs=1e-12) and hi == pytest.approx(num.mean() + z * se, abs=1e-12)
    # SNIPS: the delta method, psi_i = (num_i - V w_i) / mean(w)
    w = three.weight
    v = num.sum() / w.sum()
    se = np.std((num - v * w) / w.mean(), ddof=1) / math.sqrt(3)
    lo, hi = SNIPS().interval(three, alpha=0.1, method="normal")
    assert lo == pytest.approx(v - z * se, abs=1e-12) and hi == pytest.approx(v + z * se, abs=1e-12)
    with pytest.raises(ValueError, match="interval method"):
        IPS().interval(three, method="exact")


@pytest.mark.parametrize("method", ["bootstrap", "normal"])
def test_intervals_cover_the_true_value_at_their_level(method):
    """300 independent logs of 1,000 rows: the 90 % intervals of IPS, SNIPS and DR contain the exact
    V about 90 % of the time (a binomial(300, 0.9) count lies in [255, 284] with probability 0.99).
    The target is halfway between the logger and a sharp policy, so weights stay below 16 and the
    estimators are close enough to normal at this n (a target with weights up to 150 under-covers
    with any bootstrap, the former multinomial one included: about 0.8 at 2,000 rows)."""
    mu, pi0, sharp, _ = _world(0)
    pi = 0.5 * sharp + 0.5 * pi0
    v = float((pi * mu).sum(axis=1).mean())
    rng = np.random.default_rng(12)
    hits = np.zeros(3)
    ests = [IPS(), SNIPS(), DR()]
    for rep in range(300):
        d = _logs(rng, mu, pi0, pi, 1000, q_hat=mu + 0.5)
        for j, (lo, hi) in enumerate(intervals(ests, d, 200, 0.1, np.random.default_rng(rep), method)):
            hits[j] += lo <= v <= hi
    assert ((hits >= 255) & (hits <= 284)).all(), hits


# ---------------------------------------------------------------- the report, streamed


def test_streamed_report_equals_the_dense_computation(monkeypatch):
    from recsim_post.ope import data as od, qtable, report as rp
    from recsim_post.truth.ground_truth import GroundTruth
    from recsim_post.logs.simulate import simulate

    from .conftest import tiny_scenario

    sim = simulate(tiny_scenario())
    truth = GroundTruth.from_simulation(sim)
    n = truth.n_items
    emb = np.random.default_rng(1).normal(size=(n + 1, 3)).astype(np.float32)

    class Factors:
        n_items, max_len = n, 4

        def logits(self, hist, context=None):  # noqa: ANN001, ANN202
            return emb[hist[:, -4:] + 1].sum(axis=1) @ emb[1:].T

    pols = {"uniform": UniformPolicy(n), "factors": Factors()}
    kw = dict(n_bootstrap=20, seed=0, propensity="frequency", max_len=10)
    rep = rp.ope_report(sim.public, truth, pols, **kw)
    # dense, as the report used to: pi_all and q_hat_all (n x A) in BanditData
    ctx = od.logged_contexts(sim.public.interactions, max_len=10)
    base = ope.bandit_data_from_logs(sim.public.interactions, truth.impressions, n_actions=n)
    q = qtable.past_q(ctx, base.reward, n, 1.0)
    est = {"ips": IPS(), "snips": SNIPS(), "dm": DM(), "dr": DR(), "switch-dr": SwitchDR(tau=10.0)}
    for name, pol in pols.items():
        pi_all = od.policy_probabilities(pol, ctx)
        d = BanditData(base.context, base.action, base.reward, base.pscore, None, pi_all, q, n)
        r = rep[(rep.policy == name) & (rep.pscore == "true")].set_index("estimator")
        for e, obj in est.items():
            assert r.loc[e, "estimate"] == obj.estimate(d), (name, e)
    # smaller chunks (a larger catalogue's budget) change nothing but float rounding of the truth
    monkeypatch.setattr(od, "CHUNK_ROWS", 7)
    small = rp.ope_report(sim.public, truth, pols, **kw)
    for col in ("estimate", "truth", "scale", "support_bias", "q_mse"):
        np.testing.assert_allclose(small[col], rep[col], rtol=1e-12, err_msg=col)
    normal = rp.ope_report(sim.public, truth, pols, **kw, interval="normal")
    np.testing.assert_array_equal(normal["estimate"], rep["estimate"])
    assert ((normal.ci_low <= normal.estimate) & (normal.estimate <= normal.ci_high)).all()
