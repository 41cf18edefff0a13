"""Feedback signals as rewards: the registry, and a recipe trained and evaluated on ``watch`` end
to end (its windows, its reward model, its report and its scores), and on ``click``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recsim_post import signals
from recsim_post.errors import ConfigError
from recsim_post.logs.simulate import simulate
from recsim_post.posttrain.data import make_windows, reward_column
from recsim_post.posttrain.recipe import AgentConfig
from recsim_post.experiments.story import run_story
from recsim_post.world import feedback

from .conftest import tiny_scenario
from .test_story import small_agent


def test_the_registry_and_the_worlds_kernels_name_the_same_signals():
    assert list(signals.SIGNALS) == list(feedback.KERNELS) == ["rating", "watch"]
    assert signals.REWARDS == ("click", "rating", "watch")
    assert signals.reward_range("rating") == (1.0, 5.0)
    assert signals.reward_range("watch") == (0.0, 1.0) and signals.reward_range("click") == (0.0, 1.0)
    with pytest.raises(ConfigError, match=r"^reward = 'stars' is not a feedback signal: must be one of click, rating, watch$"):
        signals.check_reward("stars")
    with pytest.raises(ConfigError, match="reward = 'likes' is not a feedback signal"):
        AgentConfig(reward="likes")
    # every signal is a column of the logs, NaN exactly where there was no click (or it went missing)
    logs = simulate(tiny_scenario()).public.interactions
    for name in signals.SIGNALS:
        assert name in logs.columns
        assert logs.loc[logs.click == 0, name].isna().all()
    assert logs.loc[logs.click == 1, "watch"].between(0, 1).all()


def test_windows_carry_the_chosen_signal():
    clicks = simulate(tiny_scenario()).public.clicks()
    for reward in signals.REWARDS:
        w = make_windows(clicks, 8, 60, reward=reward)
        values = reward_column(clicks, reward)
        got = np.sort(w.rewards[w.mask])
        # every click but each user's first is a target, with its own signal
        first = ~clicks.duplicated("user_id").to_numpy()
        np.testing.assert_array_equal(got, np.sort(values[~first]))
    assert (reward_column(clicks, "click") == 1).all()


@pytest.fixture(scope="module")
def watch_story():
    """exp-RSFT and A-SFT (user-mean baseline) and DPO trained on the watch fraction, beside the
    same recipes on the rating."""
    agents = []
    for name in ("exp-rsft", "asft", "dpo"):
        a = small_agent(name, 1)
        agents += [dataclasses.replace(a, name=f"{name}-rating"), dataclasses.replace(a, name=f"{name}-watch", reward="watch")]
    return run_story(tiny_scenario(), agents, progress=False)


def test_training_on_watch_reads_the_watch_column(watch_story):
    pol = watch_story.policies
    hist = np.random.default_rng(0).integers(0, 60, (16, 12))
    for name in ("exp-rsft", "asft", "dpo"):  # same π_ref, same seed: only the signal differs
        assert not np.allclose(pol[f"{name}-watch"].logits(hist), pol[f"{name}-rating"].logits(hist), atol=1e-5), name
    frame = watch_story.frame.set_index("method")
    assert frame.loc[["exp-rsft-watch", "asft-watch", "dpo-watch"], "true_value"].notna().all()


def test_the_reward_model_of_a_watch_recipe_predicts_watch(watch_story):
    models = list(watch_story.reward_models.values())
    assert sorted(m.reward for m in models) == ["rating", "watch"]
    watch = next(m for m in models if m.reward == "watch")
    rating = next(m for m in models if m.reward == "rating")
    hist = np.random.default_rng(1).integers(0, 60, (200, 12))
    items = np.random.default_rng(2).integers(0, 60, 200)
    w_mean, _ = watch.predict(hist, items)
    r_mean, _ = rating.predict(hist, items)
    assert 0.0 <= np.mean(w_mean) <= 1.0 and 1.0 <= np.mean(r_mean) <= 5.0  # each on its signal's scale
    report = watch_story.evaluator.reward_report(watch, watch.max_len)
    assert report.attrs["n_observed"] == report.attrs["n_heldout"]  # a click's watch is never missing
    # the global-mean baseline is the mean training watch, scored on the held-out clicks' watch
    ev, key = watch_story.evaluator, ["user_id", "timestamp", "position"]
    held = ev.clicks[~ev.clicks.set_index(key).index.isin(ev.train.set_index(key).index)]
    assert len(held) == report.attrs["n_heldout"]
    err = held["watch"].to_numpy(np.float64) - ev.train["watch"].to_numpy(np.float64).mean()
    assert report.set_index("model").loc["global mean", "rmse_observed"] == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-6)


def test_a_click_reward_weighs_every_click_alike_so_exp_rsft_is_bc():
    bc = small_agent("bc", 1)
    clicks = dataclasses.replace(small_agent("exp-rsft", 1), name="exp-rsft-click", reward="click")
    story = run_story(tiny_scenario(), [bc, clicks], progress=False)
    hist = np.random.default_rng(0).integers(0, 60, (16, 12))
    np.testing.assert_allclose(story.policies["exp-rsft-click"].logits(hist), story.policies["bc"].logits(hist), atol=1e-5)


def test_ope_estimates_a_logged_signal():
    """OPE on ``watch``: the logger evaluated on its own logs has weights 1, so IPS is exactly the
    mean logged watch on top (0 where the top item was not clicked); no exact truth exists."""
    from recsim_post.ope.report import ope_report
    from recsim_post.policy import UniformPolicy
    from recsim_post.truth.ground_truth import GroundTruth
    from recsim_post.truth.references import LoggerPolicy
    from recsim_post.world.config import SatiationConfig

    cfg = tiny_scenario(seed=0, satiation=SatiationConfig(strength=0.0))
    # a logger that ignores the trend is the same policy in every round: LoggerPolicy reproduces it
    sim = simulate(dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, trend_weight=0.0)))
    truth = GroundTruth.from_simulation(sim)
    n = sim.world.n_items
    rep = ope_report(sim.public, truth, {"logger": LoggerPolicy(truth.logger, truth.trend), "uniform": UniformPolicy(n)},
                     reward="watch", n_bootstrap=20, propensity="frequency", q_model="item")
    top = sim.public.interactions.query("position == 0")
    logged = np.where(top["click"] == 1, np.nan_to_num(top["watch"].to_numpy(np.float64)), 0.0).mean()
    ips = rep.query("policy == 'logger' and estimator == 'ips' and pscore == 'true'")["estimate"].item()
    assert ips == pytest.approx(logged, rel=1e-5) and 0 < logged < 1
    assert rep["truth"].isna().all()
    # the uniform target's estimate differs from the logger's: the estimator reads the target
    assert rep.query("policy == 'uniform' and estimator == 'ips' and pscore == 'true'")["estimate"].item() != pytest.approx(ips)
    with pytest.raises(ConfigError, match="reward = 'likes' is not allowed: must be one of true, click, rating, watch"):
        ope_report(sim.public, truth, {"uniform": UniformPolicy(n)}, reward="likes")
