"""Logging-policy knobs: deficient support, external suggestions, switching loggers, pscore."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from recsim_post.errors import ConfigError
from recsim_post.evaluation.ground_truth import GroundTruth
from recsim_post.logs.public import read_public
from recsim_post.logs.simulate import simulate, write_logs
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
    off = dict(support=1.0, suggestion_rate=0.0, switch_every=0, propensity_mode="hidden")
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
