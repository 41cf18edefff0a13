"""Off-policy estimators: hand-computed values, limit cases, unbiasedness, bootstrap, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsim_post.errors import ConfigError
from recsim_post.ope.estimators import (
    DM, DR, IPS, SNIPS, BanditData, SwitchDR, bandit_data_from_logs, obp_action_dist,
    to_obp_bandit_feedback,
)

from .conftest import require

# ---------------------------------------------------------------- a 3-row example, by hand
# row  a  r    p     pi(.|x)     w      q^(x, .)
#  0   0  1   0.5   [0.8, 0.2]  1.6    [0.5, 1.0]
#  1   1  0   0.25  [0.5, 0.5]  2.0    [0.2, 0.4]
#  2   0  2   0.8   [0.2, 0.8]  0.25   [1.0, 0.0]
# IPS   = (1.6*1 + 2*0 + 0.25*2) / 3                    = 2.1 / 3
# SNIPS = 2.1 / (1.6 + 2 + 0.25)                        = 2.1 / 3.85
# DM    = (0.6 + 0.3 + 0.2) / 3                         = 1.1 / 3
# DR    = DM + (1.6*0.5 + 2*(-0.4) + 0.25*1) / 3        = 1.35 / 3
# Switch-DR(tau=1.6): rows 0 and 2 corrected            = (1.1 + 0.8 + 0.25) / 3 = 2.15 / 3


@pytest.fixture
def three() -> BanditData:
    return BanditData(
        context=np.array([0, 1, 2]),
        action=np.array([0, 1, 0]),
        reward=np.array([1.0, 0.0, 2.0]),
        pscore=np.array([0.5, 0.25, 0.8]),
        pi_all=np.array([[0.8, 0.2], [0.5, 0.5], [0.2, 0.8]]),
        q_hat_all=np.array([[0.5, 1.0], [0.2, 0.4], [1.0, 0.0]]),
    )


@pytest.mark.parametrize(
    "est, expected",
    [
        (IPS(), 2.1 / 3),
        (SNIPS(), 2.1 / 3.85),
        (DM(), 1.1 / 3),
        (DR(), 1.35 / 3),
        (SwitchDR(tau=1.6), 2.15 / 3),
        (SwitchDR(tau=2.0), 1.35 / 3),
        (SwitchDR(tau=0.0), 1.1 / 3),
    ],
)
def test_hand_computed(three, est, expected):
    assert est.estimate(three) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- a synthetic contextual bandit
N_CTX, N_ACT = 20, 5


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _world(seed: int = 0):
    """Fixed contexts, mean rewards mu(x, a), logger pi0 and target pi; exact V of pi."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(N_CTX, N_ACT))
    pi0 = _softmax(rng.normal(size=(N_CTX, N_ACT)))
    pi = _softmax(2.0 * rng.normal(size=(N_CTX, N_ACT)))
    v = float((pi * mu).sum(axis=1).mean())  # contexts are drawn uniformly
    return mu, pi0, pi, v


def _logs(rng: np.random.Generator, mu, pi0, pi, n: int, noise: float = 1.0, q_hat=None) -> BanditData:
    x = rng.integers(0, N_CTX, size=n)
    cdf = pi0[x].cumsum(axis=1)
    a = np.minimum((rng.random(n)[:, None] > cdf).sum(axis=1), N_ACT - 1)
    r = mu[x, a] + noise * rng.standard_normal(n)
    return BanditData(x, a, r, pi0[x, a], pi_all=pi[x], q_hat_all=None if q_hat is None else q_hat[x])


N_LOGS, N_ROWS = 200, 500


@pytest.fixture(scope="module")
def many_logs():
    mu, pi0, pi, v = _world(0)
    rng = np.random.default_rng(12345)
    q_wrong = mu + np.random.default_rng(7).normal(scale=1.0, size=mu.shape) + 0.5
    logs = [_logs(rng, mu, pi0, pi, N_ROWS) for _ in range(N_LOGS)]
    return mu, pi0, pi, v, q_wrong, logs


def _within_3_se(estimates: np.ndarray, v: float) -> tuple[float, float]:
    se = estimates.std(ddof=1) / math.sqrt(len(estimates))
    return abs(estimates.mean() - v), se


def test_ips_unbiased_with_true_propensities(many_logs):
    """Over 200 independent logs (seed 12345) mean IPS is within 3 standard errors of the exact V."""
    _, _, _, v, _, logs = many_logs
    est = np.array([IPS().estimate(d) for d in logs])
    gap, se = _within_3_se(est, v)
    assert gap < 3 * se, f"mean IPS {est.mean():.4f} vs exact V {v:.4f}: gap {gap:.4f} > 3 SE ({se:.4f})"


def test_dr_unbiased_with_wrong_reward_model(many_logs):
    """DR stays unbiased with exact propensities even when q^ is off by noise and a bias of 0.5."""
    _, _, _, v, q_wrong, logs = many_logs
    est = np.array([DR().estimate(d.with_reward_model(q_wrong[d.context])) for d in logs])
    gap, se = _within_3_se(est, v)
    assert gap < 3 * se, f"mean DR {est.mean():.4f} vs exact V {v:.4f}: gap {gap:.4f} > 3 SE ({se:.4f})"


def test_wrong_propensities_converge_to_their_own_biased_value(many_logs):
    """The harness measures the right expectation: IPS with uniform (wrong) propensities 1/A
    averages to its analytic expectation mean_x sum_a pi0(a|x) A pi(a|x) mu(x, a) (within 3 SE),
    which is not V."""
    mu, pi0, pi, v, _, logs = many_logs
    biased = float((pi0 * N_ACT * pi * mu).sum(axis=1).mean())
    est = np.array([IPS().estimate(BanditData(d.context, d.action, d.reward, np.full(len(d), 1 / N_ACT),
                                              pi_all=d.pi_all)) for d in logs])
    gap, se = _within_3_se(est, biased)
    assert gap < 3 * se
    assert abs(biased - v) > 0.01


def test_dr_with_true_q_has_lower_variance_than_ips(many_logs):
    mu, _, _, _, _, logs = many_logs
    ips = np.array([IPS().estimate(d) for d in logs])
    dr = np.array([DR().estimate(d.with_reward_model(mu[d.context])) for d in logs])
    assert dr.var(ddof=1) < ips.var(ddof=1)


# ---------------------------------------------------------------- limit cases
def test_pi_equal_pi0_gives_unit_weights_and_mean_reward():
    mu, pi0, _, _ = _world(1)
    d = _logs(np.random.default_rng(0), mu, pi0, pi0, 300)
    np.testing.assert_allclose(d.weight, 1.0)
    assert IPS().estimate(d) == pytest.approx(d.reward.mean(), rel=1e-12)
    assert SNIPS().estimate(d) == pytest.approx(d.reward.mean(), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_switch_dr_limits(seed):
    mu, pi0, pi, _ = _world(seed)
    rng = np.random.default_rng(seed)
    q = mu + rng.normal(size=mu.shape)
    d = _logs(rng, mu, pi0, pi, 400, q_hat=q)
    assert SwitchDR(tau=0.0).estimate(d) == DM().estimate(d)
    assert SwitchDR(tau=math.inf).estimate(d) == DR().estimate(d)
    big = float(d.weight.max())
    assert SwitchDR(tau=big).estimate(d) == pytest.approx(DR().estimate(d), rel=1e-12)


def test_snips_equals_ips_when_mean_weight_is_one():
    d = BanditData(
        context=np.arange(3), action=np.array([0, 1, 2]), reward=np.array([3.0, -1.0, 0.5]),
        pscore=np.array([0.4, 0.2, 0.5]), pi_on_action=np.array([0.2, 0.3, 0.5]),  # w = 0.5, 1.5, 1.0
    )
    assert d.weight.mean() == pytest.approx(1.0)
    assert SNIPS().estimate(d) == pytest.approx(IPS().estimate(d), rel=1e-12)


# ---------------------------------------------------------------- bootstrap interval
@pytest.mark.parametrize("est", [IPS(), SNIPS(), DM(), DR(), SwitchDR(tau=3.0)])
def test_interval_contains_estimate_and_narrows(est):
    mu, pi0, pi, _ = _world(3)
    rng = np.random.default_rng(0)
    q = mu + 0.3
    small = _logs(rng, mu, pi0, pi, 200, q_hat=q)
    large = _logs(rng, mu, pi0, pi, 5000, q_hat=q)
    widths = []
    for d in (small, large):
        lo, hi = est.interval(d, n_bootstrap=300, alpha=0.05, rng=np.random.default_rng(1))
        assert lo <= est.estimate(d) <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # sqrt(25) = 5 times narrower in expectation


def test_interval_is_seeded(three):
    a = IPS().interval(three, 100, 0.1, np.random.default_rng(5))
    b = IPS().interval(three, 100, 0.1, np.random.default_rng(5))
    assert a == b


# ---------------------------------------------------------------- validation
def _kw(**over):
    base = dict(context=np.arange(3), action=np.array([0, 1, 0]), reward=np.array([1.0, 0.0, 2.0]),
                pscore=np.array([0.5, 0.25, 0.8]), pi_on_action=np.array([0.5, 0.5, 0.5]))
    base.update(over)
    return base


@pytest.mark.parametrize(
    "over, match",
    [
        (dict(reward=np.array([1.0, np.nan, 2.0])), "NaN"),
        (dict(pscore=np.array([0.5, 0.0, 0.8])), r"pscore must lie in \(0, 1\]"),
        (dict(pscore=np.array([0.5, 1.2, 0.8])), r"pscore must lie in \(0, 1\]"),
        (dict(pscore=np.array([0.5, 0.2])), "pscore has 2 rows, expected 3"),
        (dict(reward=np.ones((3, 1))), "reward must be one-dimensional"),
        (dict(context=np.arange(4)), "context has shape"),
        (dict(action=np.array([0.0, 1.0, 0.0])), "integer"),
        (dict(action=np.array([0, -1, 0])), "action ids must lie"),
        (dict(pi_on_action=np.array([0.5, 1.5, 0.5])), "pi_on_action must lie"),
        (dict(pi_on_action=None), "give the target policy"),
        (dict(pi_on_action=None, pi_all=np.ones((3, 2))), "sum to 1"),
        (dict(pi_on_action=None, pi_all=np.full((2, 2), 0.5)), r"pi_all has shape \(2, 2\), expected \(3"),
        (dict(q_hat_all=np.zeros((3, 3)), n_actions=2), "q_hat_all has 3 actions, expected 2"),
        (dict(action=np.array([0, 2, 0]), n_actions=2), "action ids must lie"),
    ],
)
def test_bandit_data_validation(over, match):
    with pytest.raises(ValueError, match=match):
        BanditData(**_kw(**over))


def test_estimator_validation(three):
    with pytest.raises(ValueError, match="tau must be"):
        SwitchDR(tau=-0.1)
    with pytest.raises(ValueError, match="tau must be"):
        SwitchDR(tau=float("nan"))
    no_model = BanditData(**_kw())
    with pytest.raises(ValueError, match="DM needs pi_all and q_hat_all"):
        DM().estimate(no_model)
    with pytest.raises(ValueError, match="rng must be"):
        IPS().interval(three, 10, 0.05, rng=None)
    with pytest.raises(ValueError, match="alpha"):
        IPS().interval(three, 10, 1.5, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_bootstrap"):
        IPS().interval(three, 0, 0.05, rng=np.random.default_rng(0))
    zero = BanditData(**_kw(pi_on_action=np.zeros(3)))
    with pytest.raises(ValueError, match="every importance weight is zero"):
        SNIPS().estimate(zero)


# ---------------------------------------------------------------- Open Bandit Pipeline
def test_obp_bandit_feedback_keys(three):
    fb = to_obp_bandit_feedback(three)
    assert set(fb) == {"n_rounds", "n_actions", "action", "position", "reward", "pscore", "context", "action_context"}
    assert fb["n_rounds"] == 3 and fb["n_actions"] == 2
    assert fb["context"].shape == (3, 1) and fb["action_context"].shape == (2, 2)
    assert obp_action_dist(three.pi_all).shape == (3, 2, 1)


OBP_REL, OBP_ABS = 1e-12, 1e-12
"""Tolerance of the obp parity tests: both sides compute the same sums in a different order, so they
differ by float rounding only (observed: at most 6e-17 on values of order 0.1-1)."""


def _obp_switch_dr(obp_ope, tau: float, name: str):
    """obp's Switch-DR at weight threshold ``tau``: the keyword is ``lambda_`` from obp 0.5 on, ``tau`` in 0.4."""
    import dataclasses

    cls = obp_ope.SwitchDoublyRobust
    key = "lambda_" if "lambda_" in {f.name for f in dataclasses.fields(cls)} else "tau"
    return cls(**{key: tau}, estimator_name=name)


def _obp_parity(obp_ope, d: BanditData, taus) -> dict[str, tuple[float, float]]:
    """{estimator: (ours, obp's)} on ``to_obp_bandit_feedback(d)``, obp run through its own
    ``OffPolicyEvaluation``, which reads action, position, reward and pscore from the dict."""
    fb = to_obp_bandit_feedback(d)
    ours = {"ipw": IPS(), "snipw": SNIPS(), "dm": DM(), "dr": DR()}
    theirs = [obp_ope.InverseProbabilityWeighting(), obp_ope.SelfNormalizedInverseProbabilityWeighting(),
              obp_ope.DirectMethod(), obp_ope.DoublyRobust()]
    for i, tau in enumerate(taus):
        ours[f"switch-dr-{i}"] = SwitchDR(tau=tau)
        theirs.append(_obp_switch_dr(obp_ope, tau, f"switch-dr-{i}"))
    got = obp_ope.OffPolicyEvaluation(bandit_feedback=fb, ope_estimators=theirs).estimate_policy_values(
        action_dist=obp_action_dist(d.pi_all), estimated_rewards_by_reg_model=obp_action_dist(d.q_hat_all))
    assert set(got) == set(ours)
    return {k: (ours[k].estimate(d), float(got[k])) for k in ours}


def _assert_parity(res: dict[str, tuple[float, float]]) -> None:
    bad = {k: v for k, v in res.items() if v[0] != pytest.approx(v[1], rel=OBP_REL, abs=OBP_ABS)}
    assert not bad, f"ours vs obp disagree: {bad}"


def test_obp_estimators_agree():
    """Open Bandit Pipeline's own estimators, run unchanged on our export, give our numbers.

    Checked with obp 0.5.7 and 0.4.1 (relative and absolute tolerance 1e-12, see ``OBP_REL``) for
    IPS (obp's ``InverseProbabilityWeighting``), SNIPS (``SelfNormalizedInverseProbabilityWeighting``),
    DM (``DirectMethod``), DR (``DoublyRobust``) and Switch-DR (``SwitchDoublyRobust``) at thresholds
    0, 1, 2, a logged weight at the median (a tie), and inf. Like is compared with like:

    * obp's ``lambda_`` means different things: a clipping cap min(w, lambda_) in IPS and DR (left
      at its default inf here, i.e. no clipping, which is our IPS and DR), the switching threshold
      in ``SwitchDoublyRobust`` (keyword ``tau`` in obp 0.4). Both sides keep a row's correction
      when w <= threshold, so a threshold equal to a logged weight keeps that row in both; the test
      checks that such a tie is hit (the value moves when the threshold drops just below it).
    * action_dist and the reward model go to obp as (n, A, len_list=1) arrays, position 0 for every
      row (:func:`obp_action_dist`, ``bandit_feedback["position"]``).
    * obp's SNIPS is mean(w r / mean(w)) = sum(w r) / sum(w), ours exactly.
    * obp's DM and DR average q^ with weights pi (np.average, dividing by sum_a pi); ours sum
      pi q^. They agree when the rows of pi sum to 1; BanditData accepts rows off by up to
      PI_SUM_TOL = 1e-6, where the DM terms may differ by that relative amount (here the rows are
      softmax outputs, exact to rounding).
    """
    obp_ope = require("obp.ope")
    mu, pi0, pi, _ = _world(4)
    d = _logs(np.random.default_rng(0), mu, pi0, pi, 300, q_hat=mu + 0.2)
    w = np.sort(d.weight)
    tie = float(w[len(w) // 2])  # a logged weight: the row sits exactly at the threshold
    assert 0 < (d.weight <= 2.0).mean() < 1  # tau = 2 switches some rows off and keeps others
    assert SwitchDR(tau=tie).estimate(d) != SwitchDR(tau=float(np.nextafter(tie, 0))).estimate(d)
    _assert_parity(_obp_parity(obp_ope, d, taus=[0.0, 1.0, 2.0, tie, math.inf]))


def test_obp_estimators_agree_on_simulated_logs():
    """The same parity on the simulator's own logs: position-0 rows through bandit_data_from_logs,
    a softmax target per user, q^ = the ground truth's r*(u, a) plus N(0, 0.3^2) noise; Switch-DR at
    thresholds 0, the median weight and inf."""
    obp_ope = require("obp.ope")
    from recsim_post.truth.ground_truth import GroundTruth
    from recsim_post.logs.simulate import simulate
    from recsim_post.world.config import SatiationConfig
    from tests.conftest import tiny_scenario

    sim = simulate(tiny_scenario(seed=0, satiation=SatiationConfig(strength=0.0)))
    truth = GroundTruth.from_simulation(sim)
    d = bandit_data_from_logs(sim.public.interactions, sim.sealed_impressions, n_actions=truth.n_items)
    rng = np.random.default_rng(11)
    pi = _softmax(rng.normal(size=(truth.n_users, truth.n_items))[d.context])
    q = truth.true_reward(d.context) + rng.normal(scale=0.3, size=pi.shape)
    d = d.with_policy(pi_all=pi).with_reward_model(q)
    tau = float(np.median(d.weight))
    assert 0 < (d.weight <= tau).mean() < 1
    _assert_parity(_obp_parity(obp_ope, d, taus=[0.0, tau, math.inf]))


# ---------------------------------------------------------------- the simulator's logs
def test_bandit_data_from_logs_rows_and_rewards():
    from recsim_post.truth.ground_truth import GroundTruth
    from recsim_post.logs.simulate import simulate
    from recsim_post.world.config import SatiationConfig
    from tests.conftest import tiny_scenario

    cfg = tiny_scenario(seed=0, satiation=SatiationConfig(strength=0.0))
    sim = simulate(cfg)
    inter, sealed = sim.public.interactions, sim.sealed_impressions
    d = bandit_data_from_logs(inter, sealed, n_actions=sim.world.n_items)
    assert len(d) == inter["slate_id"].nunique()
    truth = GroundTruth.from_simulation(sim)
    # with satiation strength 0, the sealed r*(u, a, t) is the ground truth's r*(u, a)
    np.testing.assert_allclose(d.reward, truth.true_reward(d.context)[np.arange(len(d)), d.action], atol=1e-5)
    clicks = bandit_data_from_logs(inter, sealed, reward="click")
    assert set(np.unique(clicks.reward)) <= {0.0, 1.0}
    ratings = bandit_data_from_logs(inter, sealed, reward="rating")
    assert np.all((ratings.reward == 0) | (clicks.reward == 1))
    with pytest.raises(ValueError, match="position 0"):
        bandit_data_from_logs(inter, sealed, position=1)
    # any feedback signal is a reward: its value on a clicked top item, 0 elsewhere
    watch = bandit_data_from_logs(inter, sealed, reward="watch")
    top = inter[inter["position"] == 0]
    logged = np.nan_to_num(top["watch"].to_numpy(np.float64), nan=0.0)
    np.testing.assert_array_equal(watch.reward, np.where(clicks.reward == 1, logged, 0.0))
    assert watch.reward.max() > 0 and np.all((watch.reward >= 0) & (watch.reward <= 1))
    with pytest.raises(ConfigError, match="reward = 'dwell' is not allowed: must be one of true, click, rating, watch"):
        bandit_data_from_logs(inter, sealed, reward="dwell")
    with pytest.raises(ValueError, match="not aligned"):
        bandit_data_from_logs(inter, sealed.iloc[::-1].reset_index(drop=True))


def test_ips_unbiased_on_simulated_world():
    """IPS on position-0 rows of 60 tiny worlds (seeds 0-59, satiation 0) against GroundTruth's exact V.

    For each world s, the target pi(.|u) = softmax(M_s[u]) depends on the user only, and
    V_s = mean over logged rows of sum_a pi(a|u_i) r*(u_i, a) is exact. Given the logged contexts,
    w_i r_i - V(x_i) is a martingale difference, so D_s = IPS_s - V_s has mean zero; we require
    |mean D| < 3 standard errors of the mean over the 60 worlds.
    """
    from recsim_post.truth.ground_truth import GroundTruth
    from recsim_post.logs.simulate import simulate
    from recsim_post.world.config import SatiationConfig
    from tests.conftest import tiny_scenario

    diffs = []
    for seed in range(60):
        cfg = tiny_scenario(seed=seed, satiation=SatiationConfig(strength=0.0))
        sim = simulate(cfg)
        truth = GroundTruth.from_simulation(sim)
        d = bandit_data_from_logs(sim.public.interactions, sim.sealed_impressions, n_actions=truth.n_items)
        m = np.random.default_rng(1000 + seed).normal(size=(truth.n_users, truth.n_items))
        pi = _softmax(m[d.context])
        d = d.with_policy(pi_all=pi)
        v = float((pi * truth.true_reward(d.context)).sum(axis=1).mean())
        diffs.append(IPS().estimate(d) - v)
    diffs = np.array(diffs)
    se = diffs.std(ddof=1) / math.sqrt(len(diffs))
    assert abs(diffs.mean()) < 3 * se, f"mean IPS - V = {diffs.mean():.4f}, 3 SE = {3 * se:.4f}"
