"""The reward-model report: per-row held-out histories, metrics by hand, and an end-to-end run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_post.errors import LogError
from recsim_post.metrics.reward_report import (
    COLUMNS,
    ENSEMBLE,
    ORACLE,
    format_reward_report,
    heldout_histories,
    pearson,
    reward_model_report,
    spearman,
)
from recsim_post.logs.public import split_leave_last_out

from .conftest import clicks_frame

PAD = -1
MODELS = [ENSEMBLE, "user mean", "item mean", "user + item mean", "global mean", ORACLE]




class Lookup:
    """A fake ensemble: predicts ``table[item]``, with std ``spread[item]``; records what it saw."""

    def __init__(self, table, spread=None):
        self.table = np.asarray(table, np.float64)
        self.spread = np.zeros_like(self.table) if spread is None else np.asarray(spread, np.float64)

    def predict(self, hist, items):
        self.hist = hist
        return self.table[items], self.spread[items]


# ---------------------------------------------------------------- histories


def test_heldout_histories_hand_example():
    # User 5 clicks 10, 11, 12, 13; user 2 clicks 20, 21, 22 -- listed out of order on purpose.
    clicks = clicks_frame([5, 2, 5, 2, 5, 2, 5], [10, 20, 11, 21, 12, 22, 13])
    split = split_leave_last_out(clicks)
    held = pd.concat([split.valid, split.test], ignore_index=True)  # valid: 12, 21; test: 13, 22
    hist = heldout_histories(clicks, held, max_len=3)
    expected = {12: [PAD, 10, 11], 13: [10, 11, 12], 21: [PAD, PAD, 20], 22: [PAD, 20, 21]}
    for row, item in zip(hist, held["item_id"]):
        assert row.tolist() == expected[item], item
    assert heldout_histories(clicks, held, max_len=1)[:, 0].tolist() == [
        {12: 11, 13: 12, 21: 20, 22: 21}[i] for i in held["item_id"]
    ]


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=5), max_len=st.integers(1, 6), seed=st.integers(0, 999))
def test_heldout_histories_match_a_plain_loop(lengths, max_len, seed):
    rng = np.random.default_rng(seed)
    users = np.repeat(rng.permutation(50)[: len(lengths)], lengths)
    clicks = clicks_frame(users, rng.integers(0, 30, len(users)), timestamps=rng.integers(0, 4, len(users)))
    clicks = clicks.assign(position=rng.permutation(len(users)).astype(np.int16))  # unique keys
    order = clicks.sort_values(["user_id", "timestamp", "position"], kind="stable")
    held = clicks.sample(frac=0.5, random_state=seed)
    hist = heldout_histories(clicks, held, max_len)
    for row, (_, h) in zip(hist, held.iterrows()):
        mine = order[order.user_id == h.user_id]
        before = mine[(mine.timestamp < h.timestamp) | ((mine.timestamp == h.timestamp) & (mine.position < h.position))]
        want = before["item_id"].tolist()[-max_len:]
        assert row.tolist() == [PAD] * (max_len - len(want)) + want


def test_heldout_rows_must_be_clicks():
    clicks = clicks_frame([1, 1, 1], [0, 1, 2])
    with pytest.raises(LogError, match="not among the clicks"):
        heldout_histories(clicks, clicks_frame([1], [5], timestamps=[99]), 4)
    with pytest.raises(LogError, match="lack columns"):
        heldout_histories(clicks.drop(columns="timestamp"), clicks, 4)


# ---------------------------------------------------------------- metrics


def test_correlations_match_numpy_and_pandas():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert spearman(a, b) == pytest.approx(pd.Series(a).corr(pd.Series(b), method="spearman"))
    assert spearman([1, 2, 2, 3], [1, 3, 3, 4]) == pytest.approx(1.0)  # ties share ranks
    assert spearman(np.exp(a), a) == pytest.approx(1.0) and pearson(np.exp(a), a) < 1.0
    assert math.isnan(pearson([3.0, 3.0, 3.0], [1.0, 2.0, 3.0]))  # constant side
    assert math.isnan(pearson([1.0], [2.0])) and math.isnan(spearman([], []))
    assert pearson([1.0, np.nan, 3.0, 2.0], [1.0, 5.0, 3.0, 2.0]) == pytest.approx(1.0)  # NaN pairs skipped


def small_world():
    """Two users, items 0..5; held-out = each user's last two clicks."""
    clicks = clicks_frame([0] * 5 + [1] * 5, [0, 1, 2, 3, 4, 5, 4, 3, 1, 2], [1, 2, 3, 4, 5, 5, 4, 2, 2, 3])
    split = split_leave_last_out(clicks)
    held = pd.concat([split.valid, split.test], ignore_index=True)
    return clicks, split.train, held


def test_perfect_predictor_and_hand_computed_baselines():
    clicks, train, held = small_world()
    table = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    # Held-out: user 0 rates item 3 -> 4 and item 4 -> 5; user 1 rates item 1 -> 2, item 2 -> 3.
    held = held.assign(rating=table[held["item_id"]] * 1.0)
    truth = 2.0 * held["rating"].to_numpy() - 7.0  # another scale, same order
    fake = Lookup(table, spread=[0, 0, 0, 0, 0, 0])
    df = reward_model_report(clicks, train, held, truth, fake, max_len=4)
    assert list(df.columns) == COLUMNS and df["model"].tolist() == MODELS
    e = df.set_index("model").loc[ENSEMBLE]
    assert e["rmse_observed"] == 0 and e["mae_observed"] == 0
    for c in ("pearson_observed", "spearman_observed", "pearson_true", "spearman_true"):
        assert e[c] == pytest.approx(1.0), c
    assert e["mean_std"] == 0 and math.isnan(e["std_err_spearman"])  # constant spread: undefined
    # The ensemble saw each row's history strictly before it.
    assert sorted(map(tuple, fake.hist.tolist())) == sorted([(PAD, 0, 1, 2), (0, 1, 2, 3), (PAD, 5, 4, 3), (5, 4, 3, 1)])

    # Baselines fitted on train: user 0 rated 1, 2, 3; user 1 rated 5, 4, 2.
    rows = df.set_index("model")
    mu = (1 + 2 + 3 + 5 + 4 + 2) / 6  # 17/6
    g = rows.loc["global mean"]
    r = held["rating"].to_numpy()
    assert g["rmse_observed"] == pytest.approx(np.sqrt(np.mean((r - mu) ** 2)))
    assert g["mae_observed"] == pytest.approx(np.mean(np.abs(r - mu)))
    assert all(math.isnan(g[c]) for c in COLUMNS[3:])
    # user mean: user 0 -> 2, user 1 -> 11/3; rows in held order (valid then test) by user
    user_pred = np.where(held["user_id"].to_numpy() == 0, 2.0, 11 / 3)
    assert rows.loc["user mean", "rmse_observed"] == pytest.approx(np.sqrt(np.mean((r - user_pred) ** 2)))
    # item mean: user 0's training clicks are items 0, 1, 2 (rated 1, 2, 3), user 1's are 5, 4, 3
    # (rated 5, 4, 2) -> item 3 = 2, item 4 = 4, item 1 = 2, item 2 = 3.
    item_pred = np.array([{3: 2.0, 4: 4.0, 1: 2.0, 2: 3.0}[i] for i in held["item_id"]])
    assert rows.loc["item mean", "mae_observed"] == pytest.approx(np.mean(np.abs(r - item_pred)))
    both = user_pred + item_pred - mu
    assert rows.loc["user + item mean", "rmse_observed"] == pytest.approx(np.sqrt(np.mean((r - both) ** 2)))
    # The oracle maps the true reward back to the rating scale exactly (it is a linear function of it).
    assert rows.loc[ORACLE, "rmse_observed"] == pytest.approx(0.0, abs=1e-9)
    assert rows.loc[ORACLE, "spearman_true"] == pytest.approx(1.0)
    assert df.attrs["n_heldout"] == 4 and df.attrs["n_observed"] == 4


def test_informative_uncertainty_and_missing_ratings():
    clicks, train, held = small_world()
    rating = np.array([4.0, np.nan, 2.0, 3.0])
    held = held.assign(rating=rating, item_id=[0, 1, 2, 3])
    # Predictions 5, ·, 2.5, 3 -> errors 1, ·, 0.5, 0; spread grows with the error: rank correlation 1.
    fake = Lookup([5.0, 9.0, 2.5, 3.0], spread=[0.3, 0.0, 0.2, 0.1])
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    df = reward_model_report(clicks, train, held, truth, fake, max_len=2).set_index("model")
    e = df.loc[ENSEMBLE]
    assert e["std_err_spearman"] == pytest.approx(1.0)
    assert e["mean_std"] == pytest.approx(0.15)
    assert e["rmse_observed"] == pytest.approx(np.sqrt((1 + 0.25 + 0) / 3))
    # against the truth every row counts, the unrated one too: predictions 5, 9, 2.5, 3 vs 1, 2, 3, 4
    assert e["spearman_true"] == pytest.approx(spearman([5, 9, 2.5, 3], [1, 2, 3, 4]))
    assert df.attrs["n_observed"] == 3


def test_report_validates_and_skips_a_missing_ensemble():
    clicks, train, held = small_world()
    with pytest.raises(ValueError, match="true_reward"):
        reward_model_report(clicks, train, held, np.zeros(3), None, max_len=4)
    df = reward_model_report(clicks, train, held, np.arange(4.0), None, max_len=4)
    assert df["model"].tolist() == MODELS[1:]


def test_format_reward_report():
    clicks, train, held = small_world()
    table = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    held = held.assign(rating=table[held["item_id"]])
    df = reward_model_report(clicks, train, held, held["rating"].to_numpy() * 1.0, Lookup(table), max_len=4)
    text = format_reward_report(df)
    for name in MODELS + COLUMNS:
        assert name in text, name
    assert "4 held-out clicks" in text
    assert "ensemble vs best baseline" in text and "—" in text  # undefined cells
    verdict = text.splitlines()[-1]
    assert ORACLE not in verdict  # the oracle is a ceiling, not a baseline


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_end_to_end_on_a_tiny_world(tiny):
    from recsim_post.logs.simulate import simulate
    from recsim_post.models import SASRecConfig
    from recsim_post.posttrain import AgentConfig, BCConfig, TrainConfig, pretrain
    from recsim_post.posttrain.data import PostTrainData
    from recsim_post.posttrain.reward_model import RewardModelConfig, fit_reward_model
    from recsim_post.seeding import SeedTree

    sim = simulate(tiny)
    inter = sim.public.interactions.assign(true_reward=sim.sealed_impressions["true_reward"].to_numpy())
    clicks = sim.public.clicks()
    split = split_leave_last_out(clicks)
    held = pd.concat([split.valid, split.test], ignore_index=True)
    key = ["user_id", "timestamp", "position"]
    truth = held[key].merge(inter[inter["click"] == 1][key + ["true_reward"]], on=key, how="left")["true_reward"]
    agent = AgentConfig(
        name="t", model=SASRecConfig(dim=16, n_layers=1, n_heads=2, max_len=8, dropout=0.0),
        pretrain=TrainConfig(epochs=1, batch_size=32, device="cpu"), method=BCConfig(),
    )
    ref = pretrain(split.train, sim.public.n_items, agent, SeedTree(0), progress=False)
    cfg = RewardModelConfig(members=3, epochs=5, batch_size=128, lr=1e-2, device="cpu")
    ens = fit_reward_model(ref, PostTrainData(split.train, sim.public.n_items), cfg, SeedTree(0), progress=False)
    df = reward_model_report(clicks, split.train, held, truth.to_numpy(), ens, ref.max_len)
    assert df["model"].tolist() == MODELS
    e = df.set_index("model").loc[ENSEMBLE]
    assert np.isfinite(e[["rmse_observed", "mae_observed", "pearson_true", "mean_std"]].to_numpy(float)).all()
    assert e["mean_std"] > 0
    assert "reward-model ensemble" in format_reward_report(df)
