"""Logging-policy knobs: deficient support, external suggestions, mixtures of K switching loggers
(on a schedule or at random), propensity modes (hidden, logged, none)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_post.behavior.logging_policy import TrendLogger, logger_sequence
from recsim_post.errors import ConfigError, LogError
from recsim_post.truth.ground_truth import GroundTruth
from recsim_post.logs.public import read_public
from recsim_post.logs.simulate import simulate, write_logs
from recsim_post.seeding import SeedTree
from recsim_post.world.config import LoggingConfig, ScenarioConfig
from tests.conftest import tiny_scenario


def _with_logging(**kw) -> ScenarioConfig:
    return tiny_scenario(logging=LoggingConfig(slate_size=5, **kw))


def test_deficient_support_never_shows_unsupported_items():
    cfg = _with_logging(support=0.5, epsilon=0.2)
    sim = simulate(cfg)
    lg = sim.logger
    assert len(lg.support_idx) == 30
    unsupported = np.setdiff1d(np.arange(60), lg.support_idx)
    shown = sim.public.interactions["item_id"].to_numpy()
    assert not np.isin(shown, unsupported).any()
    p = lg.probabilities(np.arange(20), sim.world.trend())
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    assert (p[:, unsupported] == 0).all()
    # eps spreads over the supported items only: every supported item has at least eps / |S|
    assert (p[:, lg.support_idx] >= 0.2 / 30 * (1 - 1e-9)).all()
    # the reference sampler agrees and also never picks unsupported items
    u = np.random.default_rng(1).random((20, 5))
    s_ref, pr_ref, pi_ref = lg.sample(np.arange(20), sim.world.trend(), u, reference=True)
    s, pr, pi = lg.sample(np.arange(20), sim.world.trend(), u)
    np.testing.assert_array_equal(s, s_ref)
    np.testing.assert_allclose(pr, pr_ref, rtol=1e-9)
    assert not np.isin(s, unsupported).any()
    np.testing.assert_allclose(pi, np.take_along_axis(p, s.astype(np.int64), axis=1), rtol=1e-10)
    # the ground truth at T knows the support (in memory and from the written folder)
    truth = GroundTruth.from_simulation(sim)
    assert np.isneginf(truth.logger_logits(np.arange(3))[:, unsupported]).all()


def test_deficient_support_ground_truth_roundtrip(tmp_path):
    sim = simulate(_with_logging(support=0.5, suggestion_rate=0.5, switch_every=3))
    folder = write_logs(sim, tmp_path / "logs")
    users = np.arange(10)
    a = GroundTruth.from_simulation(sim).logger_logits(users)
    b = GroundTruth.load(folder).logger_logits(users)
    np.testing.assert_array_equal(a, b)


def test_slate_larger_than_support_is_rejected():
    with pytest.raises(ConfigError, match="supports"):
        _with_logging(support=0.05)  # 3 supported items < slate of 5


def test_suggestions_raise_boosted_propensities_during_their_window():
    cfg = _with_logging(suggestion_rate=1.0, suggestion_size=4.0, suggestion_items=2, suggestion_duration=3)
    sim = simulate(cfg)
    lg = sim.logger
    from recsim_post.behavior.logging_policy import Suggestions
    from recsim_post.seeding import SeedTree

    sug = Suggestions.create(cfg.logging, 60, SeedTree(cfg.seed).child("logging"))
    for t in range(cfg.simulation.n_rounds):
        sug.draw(t)
    start, items = sug.campaigns[0]
    assert start == 0
    trend = sim.world.trend()
    users = np.arange(30)
    lg.set_round(0, sug.boost(0))
    p_on = lg.probabilities(users, trend)
    lg.set_round(0, np.zeros(60))
    p_off = lg.probabilities(users, trend)
    assert (p_on[:, items] > p_off[:, items]).all()
    # inside the window the boost is on, after it the campaign is gone
    assert (sug.boost(2)[items] >= 4.0).all()
    later = [b for s, b in sug.campaigns if s <= 3 < s + 3]
    expect = np.zeros(60)
    for b in later:
        expect[b] += 4.0
    np.testing.assert_array_equal(sug.boost(3), expect)
    # the logged items were shown more often than without suggestions
    base = simulate(tiny_scenario()).public.interactions
    shown = sim.public.interactions
    w0 = shown[shown["timestamp"] < 3]["item_id"].isin(items).mean()
    b0 = base[base["timestamp"] < 3]["item_id"].isin(items).mean()
    assert w0 > b0


def test_switching_loggers_on_schedule_with_exact_propensities():
    cfg = _with_logging(switch_every=4, alt_trend_weight=3.0, alt_temperature=2.0, epsilon=0.1)
    sim = simulate(cfg)
    imp = sim.public.interactions
    sealed = sim.sealed_impressions
    np.testing.assert_array_equal(sealed["logger_id"].to_numpy(), (imp["timestamp"].to_numpy() // 4) % 2)
    # replay the run: the logger's probabilities in each round match the logged propensities
    from recsim_post.behavior.logging_policy import TrendLogger
    from recsim_post.seeding import SeedTree
    from recsim_post.world.world import World

    tree = SeedTree(cfg.seed)
    world = World.create(cfg, tree.child("world"))
    lg = TrendLogger.create(cfg.logging, world, tree.child("logging"))
    # the trend in round 0 is the initial one: check round 0 (logger 0) against a fresh world
    first = imp["timestamp"] == 0
    rows = imp[first & (imp["position"] == 0)]
    lg.set_round(0, None)
    p = lg.probabilities(rows["user_id"].to_numpy(), world.trend())
    got = sealed.loc[rows.index, "propensity_item"].to_numpy()
    np.testing.assert_allclose(got, p[np.arange(len(rows)), rows["item_id"].to_numpy()], rtol=1e-10)
    # the other logger gives different probabilities for the same users
    lg.set_round(4, None)
    assert lg.active == 1
    p1 = lg.probabilities(rows["user_id"].to_numpy(), world.trend())
    assert not np.allclose(p, p1)
    # at T the ground-truth logger is the one active in round T
    assert sim.logger.active == cfg.logging.active_logger(cfg.simulation.n_rounds)


def test_switching_propensities_replayed_every_round():
    """Propensities match the active logger's probabilities exactly, round by round."""
    cfg = _with_logging(switch_every=2, alt_trend_weight=3.0, alt_temperature=2.0, suggestion_rate=0.5)
    sim = simulate(cfg)
    imp, sealed = sim.public.interactions, sim.sealed_impressions
    # rebuild the run's per-round state by simulating again and hooking the logger
    from recsim_post.behavior import logging_policy

    seen: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    orig = logging_policy.TrendLogger.sample

    def spy(self, users, trend, uniforms, reference=False):  # noqa: ANN001
        out = orig(self, users, trend, uniforms, reference)
        p = self.probabilities(users, trend)
        seen.append((self.active, users.copy(), out[0].copy(), p[np.arange(len(users))[:, None], out[0]]))
        return out

    logging_policy.TrendLogger.sample = spy
    try:
        simulate(cfg)
    finally:
        logging_policy.TrendLogger.sample = orig
    assert [a for a, *_ in seen] == [(t // 2) % 2 for t in range(cfg.simulation.n_rounds)]
    p_item = np.concatenate([p.ravel() for *_, p in seen])
    np.testing.assert_allclose(sealed["propensity_item"].to_numpy(), p_item, rtol=1e-10)
    np.testing.assert_array_equal(imp["item_id"].to_numpy(), np.concatenate([s.ravel() for _, _, s, _ in seen]))


def test_logged_propensity_mode_writes_public_pscore(tmp_path):
    sim = simulate(_with_logging(propensity_mode="logged"))
    imp = sim.public.interactions
    np.testing.assert_array_equal(imp["pscore"].to_numpy(), sim.sealed_impressions["propensity_item"].to_numpy())
    back = read_public(write_logs(sim, tmp_path / "logs")).interactions
    np.testing.assert_array_equal(back["pscore"].to_numpy(), imp["pscore"].to_numpy())
    hidden = simulate(tiny_scenario())
    assert "pscore" not in hidden.public.interactions.columns
    pd.testing.assert_frame_equal(imp.drop(columns="pscore"), hidden.public.interactions)


def test_defaults_equal_explicit_off_values():
    off = dict(support=1.0, suggestion_rate=0.0, switch_every=0, switch_prob=0.0, propensity_mode="hidden")
    a = simulate(tiny_scenario())
    b = simulate(_with_logging(**off))
    # the other knobs' values do not matter while their switch is off
    c = simulate(_with_logging(**off, alt_trend_weight=9.0, alt_temperature=3.0, suggestion_size=7.0))
    for other in (b, c):
        pd.testing.assert_frame_equal(a.public.interactions, other.public.interactions)
        pd.testing.assert_frame_equal(a.sealed_impressions, other.sealed_impressions)
    assert list(a.sealed_impressions.columns) == ["slate_id", "position", "true_reward", "propensity", "propensity_item"]
    assert a.logger.support_idx is None and a.logger.boost is None and a.logger.active == 0


def test_presets_load_and_simulate_small():
    from recsim_post.world.config import load_scenario

    cfg = load_scenario("envs/unknown-logger.toml")
    assert cfg.logging.switch_every > 0 and cfg.logging.suggestion_rate > 0 and cfg.logging.support < 1
    assert cfg.description
    big = load_scenario("envs/large-catalog.toml")
    assert big.catalog.n_items >= 100_000 and big.description
    small = dataclasses.replace(cfg, simulation=dataclasses.replace(cfg.simulation, n_rounds=3))
    sim = simulate(small)
    assert set(sim.sealed_impressions["logger_id"]) == {0}


# ---------------------------------------------------------------------------------------------
# mixtures of K >= 2 loggers: schedule and random (Markov) switching
# ---------------------------------------------------------------------------------------------

# four loggers that differ in every per-logger parameter
MIX = dict(alt_trend_weight=3.0, alt_temperature=2.0, extra_trend_weights=(0.0, 1.0),
           extra_temperatures=(0.3, 1.5), extra_epsilons=(0.3, 0.0), extra_relevance_weights=(2.0, 0.0))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6), st.floats(0, 1), st.integers(0, 2**32 - 1), st.integers(1, 60))
def test_logger_sequence_is_a_valid_chain(k, p, seed, n_rounds):
    extra = tuple(float(i) for i in range(k - 2))
    tree = SeedTree(seed).child("logging")
    if p == 0:  # switch_prob = 0 is "off": check the schedule instead
        cfg = LoggingConfig(switch_every=1, extra_trend_weights=extra)
        np.testing.assert_array_equal(logger_sequence(cfg, n_rounds, tree), np.arange(n_rounds + 1) % k)
        return
    cfg = LoggingConfig(switch_prob=p, extra_trend_weights=extra)
    a = logger_sequence(cfg, n_rounds, tree)
    assert a.shape == (n_rounds + 1,) and a[0] == 0 and a.min() >= 0 and a.max() < k
    # the first rounds do not depend on how long the run is
    np.testing.assert_array_equal(logger_sequence(cfg, n_rounds + 7, tree)[: n_rounds + 1], a)
    if p == 1.0:
        assert (np.diff(a) != 0).all()  # a jump goes to another logger, never the same one


def test_random_switching_has_the_right_statistics():
    """K = 4, switch_prob = 0.2, 40,000 rounds of the chain (fixed seed).

    Per round the chain jumps with probability p, independently: the jump rate lies within 4
    binomial standard errors of p. Jump targets are uniform over the 3 other loggers: each share
    of the (from, to) transitions of a logger is within 4 SE of 1/3. Stays are geometric: the mean
    run length is within 4 SE of 1/p (SE from the geometric variance (1-p)/p^2). The stationary
    law is uniform: each logger's share of rounds is within 0.02 of 1/4 (runs of mean length 5
    leave about 8,000 independent runs; the SE of a share is then about 0.005).
    """
    K, p, n = 4, 0.2, 40_000
    cfg = LoggingConfig(switch_prob=p, extra_trend_weights=(1.0, 2.0))
    a = logger_sequence(cfg, n, SeedTree(11).child("logging")).astype(np.int64)
    jumps = a[1:] != a[:-1]
    se = np.sqrt(p * (1 - p) / n)
    assert abs(jumps.mean() - p) < 4 * se, (jumps.mean(), p, se)
    trans = np.zeros((K, K))
    np.add.at(trans, (a[:-1][jumps], a[1:][jumps]), 1)
    assert np.trace(trans) == 0
    for i in range(K):
        row = trans[i] / trans[i].sum()
        se_row = np.sqrt((1 / 3) * (2 / 3) / trans[i].sum())
        others = np.delete(np.arange(K), i)
        assert np.all(np.abs(row[others] - 1 / 3) < 4 * se_row), (i, row)
    runs = np.diff(np.flatnonzero(np.r_[True, jumps, True]))
    se_run = np.sqrt((1 - p) / p**2 / len(runs))
    assert abs(runs[1:-1].mean() - 1 / p) < 4 * se_run  # inner runs: both ends are jumps
    share = np.bincount(a, minlength=K) / len(a)
    assert np.all(np.abs(share - 1 / K) < 0.02), share


def _spy_rounds(cfg: ScenarioConfig):
    """Simulate ``cfg`` and record, per round: active logger, users, trend, slates, p_item."""
    from recsim_post.behavior import logging_policy

    seen = []
    orig = logging_policy.TrendLogger.sample

    def spy(self, users, trend, uniforms, reference=False):  # noqa: ANN001
        out = orig(self, users, trend, uniforms, reference)
        seen.append((self.active, users.copy(), trend.copy(), out[0].copy(), out[2].copy()))
        return out

    logging_policy.TrendLogger.sample = spy
    try:
        sim = simulate(cfg)
    finally:
        logging_policy.TrendLogger.sample = orig
    return sim, seen


def _hand_probabilities(lg: TrendLogger, k: int, users: np.ndarray, trend: np.ndarray) -> np.ndarray:
    """pi_0 of logger k from the formula, in float64 numpy (independent of the kernels and _terms)."""
    tw, temp, eps, rw = lg.cfg.logger_params(k)
    z = rw * (lg.theta_hat[users] @ lg.vectors.T.astype(np.float64) + lg.quality_hat) + tw * trend
    if lg.boost is not None:
        z = z + lg.boost
    sup = lg.support_idx if lg.support_idx is not None else np.arange(lg.n_items)
    zs = z[:, sup] / temp
    w = np.exp(zs - zs.max(axis=1, keepdims=True))
    p = np.zeros_like(z)
    p[:, sup] = (1 - eps) * w / w.sum(axis=1, keepdims=True) + eps / len(sup)
    return p


@pytest.mark.parametrize("switch", [dict(switch_every=2), dict(switch_prob=0.7)], ids=["schedule", "random"])
def test_mixture_of_four_loggers_logs_exact_propensities(switch):
    cfg = _with_logging(**switch, **MIX, support=0.8)
    sim, seen = _spy_rounds(cfg)
    T = cfg.simulation.n_rounds
    seq = logger_sequence(cfg.logging, T, SeedTree(cfg.seed).child("logging"))
    if "switch_every" in switch:
        np.testing.assert_array_equal(seq, (np.arange(T + 1) // 2) % 4)
    assert len(set(seq[:T])) >= 3  # the run really mixes loggers
    # the sealed logger_id of every row and the sealed per-round table follow the sequence
    imp, sealed = sim.public.interactions, sim.sealed_impressions
    np.testing.assert_array_equal(sealed["logger_id"].to_numpy(), seq[imp["timestamp"].to_numpy()])
    np.testing.assert_array_equal(sim.logger_rounds["logger_id"].to_numpy(), seq)
    np.testing.assert_array_equal(sim.logger_rounds["round"].to_numpy(), np.arange(T + 1))
    assert [a for a, *_ in seen] == list(seq[:T])
    # propensities are the active logger's exact probabilities, recomputed by hand every round
    lg = sim.logger
    p_hand = []
    for k, users, trend, slates, _ in seen:
        p = _hand_probabilities(lg, k, users, trend)
        p_hand.append(np.take_along_axis(p, slates.astype(np.int64), axis=1).ravel())
    np.testing.assert_allclose(sealed["propensity_item"].to_numpy(), np.concatenate(p_hand), rtol=2e-5)
    np.testing.assert_array_equal(sealed["propensity_item"].to_numpy(), np.concatenate([pi.ravel() for *_, pi in seen]))
    # at T the logger is the one the sequence names for round T
    assert lg.active == seq[T]


def test_random_switching_ground_truth_at_T_roundtrip(tmp_path):
    cfg = _with_logging(switch_prob=0.5, **MIX, suggestion_rate=0.5)
    sim = simulate(cfg)
    T = cfg.simulation.n_rounds
    seq = sim.logger_rounds["logger_id"].to_numpy()
    folder = write_logs(sim, tmp_path / "logs")
    a, b = GroundTruth.from_simulation(sim), GroundTruth.load(folder)
    assert a.logger.active == b.logger.active == seq[T]
    np.testing.assert_array_equal(b.logger_rounds, seq)
    users = np.arange(12)
    np.testing.assert_array_equal(a.logger_logits(users), b.logger_logits(users))
    # what evaluate reads: the truth without the sealed impressions (only OPE needs them), the same
    # world, logger and exact values
    c = GroundTruth.load(folder, impressions=False)
    assert c.impressions is None and b.impressions is not None
    np.testing.assert_array_equal(c.logger_logits(users), b.logger_logits(users))
    np.testing.assert_array_equal(c.true_reward(users), b.true_reward(users))
    with pytest.raises(LogError, match="no sealed impressions"):
        c.impression_rewards(b.impressions[["slate_id", "position"]])
    # and it is the formula of logger seq[T] with the boost of round T
    with np.errstate(divide="ignore"):
        expect = np.log(_hand_probabilities(b.logger, int(seq[T]), users, b.trend))
    np.testing.assert_allclose(np.exp(b.logger_logits(users)), np.exp(expect), rtol=2e-5, atol=1e-15)
    # without the sealed sequence, the active logger at T is unknown
    (folder / "sealed" / "logger_rounds.parquet").unlink()
    with pytest.raises(LogError, match="logger_rounds.parquet"):
        GroundTruth.load(folder)


def test_switching_stream_leaves_every_other_stream_unchanged():
    """The chain draws from logging/switching only: with identical loggers the logs are the logs
    without switching (bit for bit), and other switching knobs leave world and users unchanged."""
    same = dict(alt_trend_weight=0.5, alt_temperature=0.5, extra_trend_weights=(0.5,))
    off = simulate(_with_logging())
    on = simulate(_with_logging(switch_prob=0.9, **same))
    assert on.sealed_impressions["logger_id"].nunique() == 3  # it really switched
    pd.testing.assert_frame_equal(off.public.interactions, on.public.interactions)
    pd.testing.assert_frame_equal(off.sealed_impressions, on.sealed_impressions.drop(columns="logger_id"))
    a = simulate(_with_logging(switch_prob=0.2, **MIX))
    b = simulate(_with_logging(switch_prob=0.9, **MIX))
    assert not a.sealed_impressions["logger_id"].equals(b.sealed_impressions["logger_id"])
    for x in (a, b):
        np.testing.assert_array_equal(x.world.catalog.vectors, off.world.catalog.vectors)
        np.testing.assert_array_equal(x.logger.theta_hat, off.logger.theta_hat)
        np.testing.assert_array_equal(x.world.state.shock, off.world.state.shock)  # world/shocks
        # users/activity: who asked for a slate in which round does not depend on the logger
        keys = ["timestamp", "user_id", "slate_id"]
        pd.testing.assert_frame_equal(x.public.interactions[keys], off.public.interactions[keys])


def test_mixture_knobs_are_validated():
    with pytest.raises(ConfigError, match="both on"):
        LoggingConfig(switch_every=3, switch_prob=0.1)
    with pytest.raises(ConfigError, match="switching is off"):
        LoggingConfig(extra_temperatures=(1.0,))
    with pytest.raises(ConfigError, match="same length"):
        LoggingConfig(switch_every=1, extra_temperatures=(1.0,), extra_epsilons=(0.1, 0.2))
    with pytest.raises(ConfigError, match=r"extra_epsilons = \[0.1, 1.5\] is out of range: every value must be >= 0 and <= 1"):
        LoggingConfig(switch_prob=0.1, extra_epsilons=(0.1, 1.5))
    with pytest.raises(ConfigError, match="switch_prob = 1.5 is out of range"):
        LoggingConfig(switch_prob=1.5)
    cfg = LoggingConfig(switch_prob=0.1, extra_epsilons=(0.3,), extra_trend_weights=(4, 5)[:1])
    assert cfg.n_loggers == 3 and cfg.logger_params(2) == (4.0, 0.5, 0.3, 1.0)
    assert cfg.logger_params(1) == (2.0, 1.0, 0.05, 1.0)
    with pytest.raises(ValueError, match="drawn at random"):
        cfg.active_logger(3)
    assert LoggingConfig().n_loggers == 1 and LoggingConfig(switch_every=2).n_loggers == 2
    # the old two-logger knobs keep their meaning
    old = LoggingConfig(switch_every=5)
    assert [old.active_logger(t) for t in (0, 4, 5, 10)] == [0, 0, 1, 0]


# ---------------------------------------------------------------------------------------------
# propensity_mode = "none": a logger that never recorded propensities
# ---------------------------------------------------------------------------------------------


def test_propensity_mode_none_seals_no_propensities(tmp_path):
    none = simulate(_with_logging(propensity_mode="none", switch_every=3))
    hidden = simulate(_with_logging(propensity_mode="hidden", switch_every=3))
    assert "pscore" not in none.public.interactions.columns
    assert list(none.sealed_impressions.columns) == ["slate_id", "position", "true_reward", "logger_id"]
    # everything else is what the hidden logger wrote
    pd.testing.assert_frame_equal(none.public.interactions, hidden.public.interactions)
    pd.testing.assert_frame_equal(
        none.sealed_impressions, hidden.sealed_impressions.drop(columns=["propensity", "propensity_item"])
    )
    folder = write_logs(none, tmp_path / "logs")
    import pyarrow.parquet as pq

    for name in ("interactions.parquet", "sealed/impressions.parquet"):
        assert not {"pscore", "propensity", "propensity_item"} & set(pq.read_schema(folder / name).names)
    truth = GroundTruth.load(folder)
    assert not truth.has_propensities and GroundTruth.from_simulation(hidden).has_propensities
    with pytest.raises(LogError, match="propensity_mode = 'none'") as err:
        truth.require_propensities("IPS with true propensities")
    assert "\n" not in str(err.value)
    # the truth itself is all there: r* of the logged rows and the logger at T
    np.testing.assert_array_equal(
        truth.impression_rewards(none.public.interactions), none.sealed_impressions["true_reward"].to_numpy()
    )
    np.testing.assert_array_equal(
        truth.logger_logits(np.arange(5)), GroundTruth.from_simulation(hidden).logger_logits(np.arange(5))
    )
    with pytest.raises(ConfigError, match="one of 'hidden', 'logged', 'none'"):
        LoggingConfig(propensity_mode="sometimes")
