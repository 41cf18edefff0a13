"""Properties of the world, the logger and the logs: bounds, probabilities, seeds."""

from __future__ import annotations

import dataclasses
import filecmp
from pathlib import Path

import numpy as np
import pytest

from recsim_post.behavior.logging_policy import TrendLogger
from recsim_post.truth.ground_truth import GroundTruth
from recsim_post.logs.public import histories, read_public, split_leave_last_out
from recsim_post.logs.simulate import simulate, write_logs
from recsim_post.seeding import SeedTree
from recsim_post.world.config import FeedbackConfig, LoggingConfig, TrendConfig
from recsim_post.world import kernels
from recsim_post.world.world import World

from .conftest import tiny_scenario


def test_seed_tree_streams_are_reproducible_and_independent():
    a, b = SeedTree(5), SeedTree(5)
    assert np.array_equal(a.generator("x").random(4), b.generator("x").random(4))
    assert not np.array_equal(a.generator("x").random(4), a.generator("y").random(4))
    assert not np.array_equal(a.child("x").generator("z").random(4), a.child("y").generator("z").random(4))
    assert a.integer("torch") == b.integer("torch") != a.integer("other")


def test_world_reward_matches_definition(tiny):
    w = World.create(tiny)
    w.state.satiation[:] = np.random.default_rng(0).exponential(size=w.state.satiation.shape)
    users = np.array([0, 3, 7])
    r = w.true_reward(users)
    c, s = w.catalog, tiny.satiation.strength
    for row, u in enumerate(users):
        for i in (0, 5, 59):
            expected = w.users.theta[u] @ c.vectors[i] + c.quality[i] - s * w.state.satiation[u, c.genre[i]]
            assert r[row, i] == pytest.approx(expected)


def test_logger_probabilities_sum_to_one_and_mix_epsilon(tiny):
    w = World.create(tiny)
    logger = TrendLogger.create(tiny.logging, w, SeedTree(0).child("logging"))
    p = logger.probabilities(np.arange(10), w.trend())
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    assert (p >= tiny.logging.epsilon / w.n_items - 1e-15).all()
    # eps = 1 is the uniform policy
    uniform = TrendLogger(dataclasses.replace(tiny.logging, epsilon=1.0), logger.theta_hat,
                          logger.quality_hat, logger.vectors)
    np.testing.assert_allclose(uniform.probabilities(np.arange(3), w.trend()), 1 / w.n_items)


def test_trend_feeds_on_exposure(tiny):
    w = World.create(dataclasses.replace(tiny, trends=TrendConfig(shock_rate=0.0)))
    before = w.state.popularity.copy()
    shown = np.full((50, 5), 7, dtype=np.int64)
    w.advance(shown, np.zeros(0, np.int64), np.zeros(0, np.int64), np.random.default_rng(0))
    assert w.state.popularity[7] > before[7]
    assert w.state.popularity.sum() == pytest.approx(1.0)


def check_satiation_costs_reward(w: World) -> None:
    """A click on item 3 costs user 1 exactly strength * S of r* on every item of its genre (and on
    no other), S = 1 after the click and decay after one more round; user 0 is untouched."""
    g = w.catalog.genre[3]
    same, other = w.catalog.genre == g, w.catalog.genre != g
    assert same.sum() > 1 and other.any()
    strength, decay = w.cfg.satiation.strength, w.cfg.satiation.decay
    assert strength > 0
    rng = np.random.default_rng(0)
    none = np.zeros(0, np.int64)
    fresh = w.true_reward(np.array([0, 1]))  # (2, n_items) before any click
    w.advance(np.zeros((0, 5), np.int64), np.array([1]), np.array([3]), rng)
    assert w.state.satiation[1, g] == 1.0
    tired = w.true_reward(np.array([0, 1]))
    np.testing.assert_allclose(tired[1, same], fresh[1, same] - strength * 1.0, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(tired[1, other], fresh[1, other])
    np.testing.assert_array_equal(tired[0], fresh[0])
    w.advance(np.zeros((0, 5), np.int64), none, none, rng)
    assert w.state.satiation[1, g] == pytest.approx(decay)
    rested = w.true_reward(np.array([0, 1]))[1]  # the same batch shape: the same float sums
    np.testing.assert_allclose(rested[same], fresh[1, same] - strength * decay, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(rested[other], fresh[1, other])


def test_satiation_rises_with_clicks_and_decays(tiny):
    check_satiation_costs_reward(World.create(tiny))


def test_satiation_check_catches_a_reward_that_ignores_satiation(tiny, monkeypatch):
    """Negative control: r* that forgets the satiation term (or adds it with the wrong sign)
    fails the check above (the former check, user 1 below user 0 + 10, passed both)."""
    honest = World.true_reward

    def forgets(self, users, items=None):  # noqa: ANN001, ANN202
        items = np.arange(self.n_items) if items is None else np.asarray(items)
        sat = self.state.satiation[np.asarray(users)][:, self.catalog.genre[items]]
        return honest(self, users, items) + self.cfg.satiation.strength * sat

    def wrong_sign(self, users, items=None):  # noqa: ANN001, ANN202
        return 2 * forgets(self, users, items) - honest(self, users, items)

    for bug in (forgets, wrong_sign):
        monkeypatch.setattr(World, "true_reward", bug)
        with pytest.raises(AssertionError):
            check_satiation_costs_reward(World.create(tiny))


def test_satiation_replayed_from_public_clicks_is_the_worlds(tiny):
    """replay_satiation over the public clicks ends at the world's satiation, and true_reward_pairs at
    the replayed satiation gives every logged row's sealed r*: both bit for bit (what the OPE's exact
    truth rebuilds)."""
    sim = simulate(tiny)
    w, cfg = sim.world, sim.world.cfg
    assert cfg.dynamics.drift_rate == 0 and cfg.satiation.strength > 0
    rows = sim.public.interactions
    clicks = rows[rows["click"].to_numpy() == 1]
    users, rounds, items = (rows[c].to_numpy(np.int64) for c in ("user_id", "timestamp", "item_id"))
    sat_rows, S_T = kernels.replay_satiation(
        w.n_users, cfg.catalog.n_genres, cfg.satiation.decay, cfg.simulation.n_rounds,
        clicks["user_id"].to_numpy(), w.catalog.genre[clicks["item_id"].to_numpy()], clicks["timestamp"].to_numpy(),
        users, rounds,
    )
    assert S_T.any()
    np.testing.assert_array_equal(S_T, w.state.satiation)
    r = kernels.true_reward_pairs(
        w.users.theta[users], sat_rows, w.catalog.vectors, w.catalog.quality, w.catalog.genre,
        cfg.satiation.strength, items,
    )
    assert (sim.sealed_impressions["slate_id"].to_numpy() == rows["slate_id"].to_numpy()).all()
    np.testing.assert_array_equal(r, sim.sealed_impressions["true_reward"].to_numpy())


def test_simulation_is_reproducible_and_bounded(tiny):
    a, b = simulate(tiny), simulate(tiny)
    pd_a, pd_b = a.public.interactions, b.public.interactions
    assert pd_a.equals(pd_b)
    assert a.sealed_impressions.equals(b.sealed_impressions)
    df = pd_a
    assert (df.groupby("slate_id")["click"].sum() <= 1).all()
    assert df.groupby("slate_id")["item_id"].nunique().eq(tiny.logging.slate_size).all()
    ratings = df.loc[df.click == 1, "rating"]
    assert ratings.isin([1, 2, 3, 4, 5]).all()
    assert df.loc[df.click == 0, "rating"].isna().all()
    s = a.sealed_impressions
    assert ((s.propensity > 0) & (s.propensity <= 1)).all()
    assert not simulate(tiny_scenario(seed=1)).public.interactions.equals(df)


def test_noise_free_ratings_follow_true_reward(tiny):
    cfg = dataclasses.replace(tiny, feedback=FeedbackConfig(noise_std=0.0, flip_rate=0.0))
    sim = simulate(cfg)
    df, s = sim.public.interactions, sim.sealed_impressions
    clicked = df.click.to_numpy() == 1
    expected = np.clip(np.floor(cfg.feedback.rating_center + s.true_reward.to_numpy() + 0.5), 1, 5)
    np.testing.assert_array_equal(df.rating.to_numpy()[clicked], expected[clicked])


def test_label_flips_flip_ratings(tiny):
    clean = simulate(dataclasses.replace(tiny, feedback=FeedbackConfig(noise_std=0.0, flip_rate=0.0)))
    flipped = simulate(dataclasses.replace(tiny, feedback=FeedbackConfig(noise_std=0.0, flip_rate=1.0)))
    a, b = clean.public.interactions, flipped.public.interactions
    assert a.click.equals(b.click)  # flips change what is observed, not what happens
    np.testing.assert_array_equal(b.rating[b.click == 1], 6 - a.rating[a.click == 1])


def test_changing_logging_only_leaves_world_unchanged(tiny):
    """The world comes from its own stream: another logger does not change users or items."""
    a = simulate(tiny)
    b = simulate(dataclasses.replace(tiny, logging=LoggingConfig(slate_size=5, temperature=3.0)))
    np.testing.assert_array_equal(a.world.users.theta, b.world.users.theta)
    np.testing.assert_array_equal(a.world.catalog.vectors, b.world.catalog.vectors)
    np.testing.assert_array_equal(a.logger.theta_hat, b.logger.theta_hat)
    assert not a.public.interactions.equals(b.public.interactions)


def test_logs_are_byte_identical_and_round_trip(tmp_path: Path, tiny):
    write_logs(simulate(tiny), tmp_path / "a")
    write_logs(simulate(tiny), tmp_path / "b")
    names = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert {str(n) for n in names} >= {"manifest.json", "interactions.parquet", "items.parquet",
                                       "sealed/impressions.parquet", "sealed/items.parquet", "sealed/users.parquet"}
    for n in names:
        if n.name == ".recsim-post.json":  # the ownership marker records file times: not part of the logs
            continue
        assert filecmp.cmp(tmp_path / "a" / n, tmp_path / "b" / n, shallow=False), n
    assert len(names) == 1 + sum(1 for n in names if n.name != ".recsim-post.json")
    logs = read_public(tmp_path / "a")
    assert logs.n_items == tiny.catalog.n_items and logs.n_users == tiny.users.n_users
    assert set(logs.items.columns) >= {"item_id", "genre", "f0"}
    assert not any(c in logs.interactions.columns for c in ("true_reward", "propensity"))
    truth = GroundTruth.load(tmp_path / "a")
    sim = simulate(tiny)
    direct = GroundTruth.from_simulation(sim)
    np.testing.assert_allclose(truth.true_reward(np.arange(5)), direct.true_reward(np.arange(5)))
    np.testing.assert_allclose(truth.logger_logits(np.arange(5)), direct.logger_logits(np.arange(5)), rtol=1e-6)
    assert not list(tmp_path.glob(".*tmp*"))


def test_splits_are_leave_last_out(tiny):
    clicks = simulate(tiny).public.clicks()
    split = split_leave_last_out(clicks)
    assert len(split.train) + len(split.valid) + len(split.test) == len(clicks)
    last = clicks.groupby("user_id").tail(1)
    eligible = clicks.groupby("user_id").size() >= 3
    assert set(split.test.user_id) == set(eligible[eligible].index)
    merged = split.test.merge(last, on=["user_id", "timestamp", "position", "item_id"])
    assert len(merged) == len(split.test)
    h = histories(clicks, np.array([split.test.user_id.iloc[0]]), 4)
    u_clicks = clicks[clicks.user_id == split.test.user_id.iloc[0]].item_id.to_numpy()
    expected = np.concatenate([np.full(max(0, 4 - len(u_clicks)), -1), u_clicks[-4:]])
    np.testing.assert_array_equal(h[0], expected)


def test_optional_sealed_files_are_hashed_and_written_atomically(tmp_path: Path, tiny, monkeypatch):
    import hashlib
    import json

    from recsim_post.errors import OutputError
    from recsim_post.logs import simulate as sim_mod
    from recsim_post.world.config import DynamicsConfig

    base = {"manifest.json", "interactions.parquet", "items.parquet",
            "sealed/impressions.parquet", "sealed/items.parquet", "sealed/users.parquet",
            ".recsim-post.json"}  # the ownership marker (recsim_post.outputs)
    plain = write_logs(simulate(tiny), tmp_path / "plain")
    assert {str(p.relative_to(plain)) for p in plain.rglob("*") if p.is_file()} == base  # knobs off: no new files
    cfg = dataclasses.replace(
        tiny, dynamics=DynamicsConfig(drift_rate=0.2),
        logging=LoggingConfig(slate_size=5, switch_prob=0.3, extra_temperatures=(2.0,)),
    )
    a = write_logs(simulate(cfg), tmp_path / "a")
    b = write_logs(simulate(cfg), tmp_path / "b")
    extra = {"sealed/logger_rounds.parquet", "sealed/theta_updates.parquet"}
    files = {str(p.relative_to(a)) for p in a.rglob("*") if p.is_file()}
    assert files == base | extra
    manifest = json.loads((a / "manifest.json").read_text())
    assert set(manifest["sha256"]) == files - {"manifest.json", ".recsim-post.json"}
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((a / name).read_bytes()).hexdigest() == digest, name
        assert filecmp.cmp(a / name, b / name, shallow=False), name  # same seed, same bytes
    # a failure while writing the new tables leaves neither the folder nor a temporary behind
    orig = sim_mod._write_parquet

    def failing(df, path, schema=None):  # noqa: ANN001
        if path.name == "theta_updates.parquet":
            raise OSError("disk full")
        return orig(df, path, schema)

    monkeypatch.setattr(sim_mod, "_write_parquet", failing)
    with pytest.raises(OSError, match="disk full"):
        write_logs(simulate(cfg), tmp_path / "c")
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".*tmp*"))
    # ... and does not touch a folder it was asked to replace
    with pytest.raises(OSError, match="disk full"):
        write_logs(simulate(cfg), a, overwrite=True)
    assert json.loads((a / "manifest.json").read_text()) == manifest
    monkeypatch.undo()
    with pytest.raises(OutputError, match="is not empty: it holds the results of an earlier 'recsim-post simulate'"):
        write_logs(simulate(cfg), a)


def test_ground_truth_theta_without_drift_is_constant(tiny):
    truth = GroundTruth.from_simulation(simulate(tiny))
    assert truth.theta_history is None and truth.logger_rounds is None
    np.testing.assert_array_equal(truth.theta_at(0), truth.theta)
    np.testing.assert_array_equal(truth.user_theta(np.array([2, 2]), np.array([0, 12])), truth.theta[[2, 2]])
    with pytest.raises(ValueError, match="round 13 is out of range"):
        truth.theta_at(13)
