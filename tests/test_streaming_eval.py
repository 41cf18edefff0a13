"""Evaluation streams with bounded memory and gives the numbers of the plain implementations.

Ground truth: :func:`exact_sums` (chunked r*, one pass for many policies, row kernels) against
:func:`reference_sums` (dense r* per chunk, numpy reductions: the code it replaced). Histories:
the grouped index against the old regroup-everything implementation, kept here verbatim. The
reward model's belief: last-position scoring against the full (E, B, L, n_items) member scores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_post.experiments.evaluate import Evaluator
from recsim_post.policy import HISTORY_LEN, Context, FunctionPolicy, UniformPolicy
from recsim_post.truth.references import LoggerPolicy
from recsim_post.truth.ground_truth import (
    GroundTruth,
    chunk_users,
    exact_sums,
    policy_value,
    reference_sums,
    references,
)
from recsim_post.logs.public import PAD, HistoryIndex, histories, histories_reference
from recsim_post.logs.simulate import simulate
from recsim_post.posttrain.reward_model import TableRewardModel, next_item_scores

from .conftest import tiny_scenario

# ---------------------------------------------------------------- ground truth


@pytest.fixture(scope="module")
def sim():
    return simulate(tiny_scenario())


def _policies(truth: GroundTruth) -> dict:
    rng = np.random.default_rng(0)
    n = truth.n_items
    # one float32 logit table (a BLAS product per chunk could round differently for other chunk sizes)
    factors = rng.normal(size=(truth.n_users, 5)).astype(np.float32) @ rng.normal(size=(5, n)).astype(np.float32)
    ties = np.round(rng.normal(size=n)).astype(np.float32)  # few distinct scores: ties at the top k
    return {
        "logger": LoggerPolicy(truth.logger, truth.trend),  # float64, -inf outside a deficient support
        "factors": FunctionPolicy(n, lambda h, c: factors[c.users]),  # float32, a different row per user
        "ties": FunctionPolicy(n, lambda h, c: np.tile(ties, (len(h), 1))),
        "uniform": UniformPolicy(n),
    }


def test_exact_sums_match_the_plain_reference(sim):
    truth = GroundTruth.from_simulation(sim)
    users = np.arange(truth.n_users)
    pols = _policies(truth)
    uni, ora, ora_k, value, top = reference_sums(truth, pols, users, k=10)
    for chunk in (None, 1, 7):  # the default puts every user in one chunk here
        s = exact_sums(truth, users, pols, k=10, chunk=chunk)
        # (BLAS may round theta . v differently for another number of rows: 1 ulp)
        np.testing.assert_allclose(s.uniform, uni, rtol=1e-12)
        np.testing.assert_allclose(s.oracle, ora, rtol=1e-15)
        np.testing.assert_allclose(s.oracle_topk, ora_k, rtol=1e-12)
        for name in pols:
            np.testing.assert_allclose(s.value[name], value[name], rtol=1e-9, err_msg=name)
            np.testing.assert_allclose(s.topk[name], top[name], rtol=1e-12, err_msg=name)
    # uniform logits: the value is the mean reward; and the oracle's top 1 is its max
    np.testing.assert_allclose(s.value["uniform"], s.uniform, rtol=1e-12)
    np.testing.assert_allclose(exact_sums(truth, users, k=1).oracle_topk, ora, rtol=1e-15)


def test_a_policy_gets_the_same_numbers_alone_or_with_others(sim):
    truth = GroundTruth.from_simulation(sim)
    users = np.arange(0, truth.n_users, 3)
    pols = _policies(truth)
    together = exact_sums(truth, users, pols, k=5, chunk=4)
    for name, score in pols.items():
        alone = exact_sums(truth, users, {name: score}, k=5, chunk=4)
        assert np.array_equal(alone.value[name], together.value[name])
        assert np.array_equal(alone.topk[name], together.topk[name])
    refs = references(truth, users, k=5, chunk=4)
    assert refs == together.references()
    v = policy_value(truth, pols["logger"], users, refs, chunk=4)
    assert v.value == together.value["logger"].sum() / len(users)


def test_r_star_is_computed_once_per_chunk_for_all_policies(sim, monkeypatch):
    from recsim_post.truth import ground_truth

    truth = GroundTruth.from_simulation(sim)
    calls = []
    original = ground_truth.true_reward_product
    monkeypatch.setattr(ground_truth, "true_reward_product", lambda th, *a, **kw: calls.append(len(th)) or original(th, *a, **kw))
    s = exact_sums(truth, np.arange(truth.n_users), _policies(truth), chunk=30)
    assert calls == [30, 30, 20]  # 80 users in chunks of 30: once per chunk, not once per policy
    # and it is GroundTruth.true_reward's r*, bit for bit
    r = truth.true_reward(np.arange(30))
    np.testing.assert_array_equal(s.oracle[:30], r.max(axis=1))


def test_chunks_follow_the_byte_budget():
    assert chunk_users(100_000) == 256 * 2**20 // (32 * 100_000)  # 83 users: 256 MiB of 32-byte cells
    assert chunk_users(10**9) == 1  # never less than one user
    assert chunk_users(500, budget_bytes=32 * 500 * 7) == 7


# ---------------------------------------------------------------- the evaluator


def _old_believed(ev: Evaluator, policy) -> float:  # noqa: ANN001
    """The evaluator's former rm_value: full member scores at every position, keep the last."""
    rm = ev.reward_model
    hist = histories(ev.clicks, ev.users, HISTORY_LEN)
    logits = policy.logits(hist, Context(ev.users)).astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    with torch.no_grad():
        r_hat = rm.member_scores(torch.from_numpy(hist[:, -rm.max_len :])).double()[:, :, -1].mean(dim=0)
    return float((p * r_hat.numpy()).sum() / len(ev.users))


class _Factors:
    """A stand-in trained policy: history-dependent float32 logits."""

    max_len = 4

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        self.emb = np.random.default_rng(1).normal(size=(n_items + 1, 3)).astype(np.float32)

    def logits(self, hist: np.ndarray, context: Context | None = None) -> np.ndarray:
        h = self.emb[hist[:, -self.max_len :] + 1].sum(axis=1)
        return h @ self.emb[1:].T


def test_evaluator_rows_stream_and_agree_with_the_plain_computations(sim):
    truth = GroundTruth.from_simulation(sim)
    ev = Evaluator.prepare(sim.public, truth)
    table = torch.linspace(1.0, 5.0, truth.n_items)
    ev.reward_model = TableRewardModel(table, n_members=3, member_noise=0.2, generator=torch.Generator().manual_seed(0))
    ev.reward_model.max_len = 6
    pol = _Factors(truth.n_items)
    rows = ev.rows({"factors": pol})
    by = {r.method: r for r in rows}
    assert [r.method for r in rows] == ["uniform", "popularity", "logging policy", "oracle", "factors"]
    # ground truth against the dense reference
    uni, ora, ora_k, value, top = reference_sums(
        truth, {"f": pol}, ev.users, k=ev.k, histories=lambda u: histories(ev.clicks, u, HISTORY_LEN)
    )
    assert abs(by["uniform"].value - uni.mean()) < 1e-12
    assert abs(by["oracle"].topk_value - ora_k.mean()) < 1e-12
    assert abs(by["factors"].value - value["f"].mean()) <= 1e-9 * abs(value["f"].mean())
    assert abs(by["factors"].topk_value - top["f"].mean()) < 1e-12
    # rm_value against the full-position member scores
    assert abs(by["factors"].rm_value - _old_believed(ev, pol)) < 1e-9
    assert abs(by["uniform"].rm_value - _old_believed(ev, UniformPolicy(truth.n_items))) < 1e-9
    # the oracle's belief by hand: the table model ignores the history, so it is the ensemble mean
    # of the table at each user's best item
    members = ev.reward_model.members.double().mean(dim=0).numpy()
    best = truth.true_reward(ev.users).argmax(axis=1)
    assert abs(by["oracle"].rm_value - members[best].mean()) < 1e-12
    # the same numbers one row at a time
    assert rows == ev.reference_rows() + [ev.policy_row("factors", pol)]


def test_offline_metrics_stream_over_chunks_of_test_users(sim, monkeypatch):
    from recsim_post.experiments import evaluate
    from recsim_post.metrics.offline import ranking_metrics

    ev = Evaluator.prepare(sim.public, GroundTruth.from_simulation(sim))
    pol = _Factors(ev.truth.n_items)
    hist = histories(ev.before_test, ev.test_users, HISTORY_LEN)
    dense = ranking_metrics(pol.logits(hist), ev.test_targets, exclude=hist, k=ev.k)
    dense5 = ranking_metrics(pol.logits(hist), ev.test_targets, exclude=hist, k=5)
    whole = ev._offline(pol, tune=True)
    monkeypatch.setattr(evaluate, "chunk_users", lambda n_items: 3)
    chunked = ev._offline(pol, tune=True)
    assert chunked == whole  # the likelihood-tuned temperature too
    assert {k: chunked[k] for k in dense} == dense
    assert chunked["ndcg@5"] == dense5["ndcg@5"] and chunked["hr@5"] == dense5["hr@5"]


# ---------------------------------------------------------------- histories


@st.composite
def click_frames(draw):
    """Random clicks in history order (user, timestamp, position), and distinct users to ask for."""
    n = draw(st.integers(0, 60))
    n_users = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    df = pd.DataFrame({
        "user_id": rng.integers(0, n_users, n).astype(np.int32),
        "timestamp": rng.integers(0, 5, n).astype(np.int32),
        "position": rng.integers(0, 3, n).astype(np.int16),
        "item_id": rng.integers(0, 40, n).astype(np.int32),
    }).sort_values(["user_id", "timestamp", "position"], kind="stable").reset_index(drop=True)
    users = rng.permutation(n_users + 3)[: draw(st.integers(0, n_users + 3))]  # some have no clicks
    return df, users, draw(st.integers(1, 8))


@settings(max_examples=150, deadline=None)
@given(click_frames())
def test_history_index_equals_thehistories_reference(problem):
    clicks, users, max_len = problem
    want = histories_reference(clicks, users, max_len)
    np.testing.assert_array_equal(histories(clicks, users, max_len), want)
    index = HistoryIndex.build(clicks)
    np.testing.assert_array_equal(index.gather(users, max_len), want)
    # chunked gathers from one index are the same rows
    if len(users):
        parts = [index.gather(users[i : i + 2], max_len) for i in range(0, len(users), 2)]
        np.testing.assert_array_equal(np.concatenate(parts), want)


def test_history_index_by_hand():
    clicks = pd.DataFrame({"user_id": [0, 0, 0, 2, 2], "item_id": [5, 6, 7, 8, 9]})
    got = HistoryIndex.build(clicks).gather(np.array([2, 1, 0, 9, 0]), 2)
    np.testing.assert_array_equal(got, [[8, 9], [PAD, PAD], [6, 7], [PAD, PAD], [6, 7]])  # repeats too
    # a frame not grouped by user keeps each user's own order
    mixed = pd.DataFrame({"user_id": [1, 0, 1], "item_id": [3, 4, 5]})
    np.testing.assert_array_equal(HistoryIndex.build(mixed).gather(np.array([1, 0]), 3), [[PAD, 3, 5], [PAD, PAD, 4]])
    with pytest.raises(ValueError, match=">= 0"):
        HistoryIndex.build(clicks).gather(np.array([-1]), 2)


# ---------------------------------------------------------------- reward models: last position only


def test_next_item_scores_are_the_last_position_of_member_scores():
    from recsim_post.models.policy import build_model
    from recsim_post.models.sasrec import SASRecConfig
    from recsim_post.posttrain.reward_model import EnsembleHead, RewardEnsemble, item_vectors

    g = torch.Generator().manual_seed(0)
    model = build_model(SASRecConfig(dim=16, n_layers=2, n_heads=2, max_len=9), 30, g)
    head = EnsembleHead(4, 16, 30, init_std=0.3, generator=g)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    ens = RewardEnsemble(model, head, item_vectors(model), 9)
    x = torch.randint(-1, 30, (17, 9), generator=g)
    x[3] = -1  # an empty history
    assert torch.equal(next_item_scores(ens, x), ens.member_scores(x)[:, :, -1])
    table = TableRewardModel(torch.arange(30.0), n_members=3, member_noise=0.5, generator=g)
    assert torch.equal(next_item_scores(table, x), table.member_scores(x)[:, :, -1])

    class Plain:  # a RewardModel without last_scores: the fallback slices member_scores
        n_members, n_items = 3, 30

        def member_scores(self, inputs):  # noqa: ANN001, ANN202
            return table.member_scores(inputs)

    assert torch.equal(next_item_scores(Plain(), x), table.member_scores(x)[:, :, -1])


@pytest.mark.parametrize("kind", ["sasrec", "hstu"])
def test_next_item_logits_score_the_last_position_only(kind, monkeypatch):
    """SequencePolicy.logits (the evaluator's, the OPE propensity model's) multiplies one state per
    row by the catalogue, never L states: memory B x n_items, not B x L x n_items."""
    from recsim_post.models.hstu import HSTUConfig
    from recsim_post.models.policy import SequencePolicy, build_model
    from recsim_post.models.sasrec import SASRecConfig
    from recsim_post.posttrain.reward_model import EnsembleHead, RewardEnsemble, item_vectors

    cfg = SASRecConfig(dim=16, max_len=12) if kind == "sasrec" else HSTUConfig(dim=16, max_len=12)
    model = build_model(cfg, 40, torch.Generator().manual_seed(0))
    policy = SequencePolicy(model, 40)
    shapes = []
    score = model.score
    monkeypatch.setattr(model, "score", lambda h: shapes.append(tuple(h.shape)) or score(h))
    hist = np.random.default_rng(0).integers(-1, 40, (9, 12))
    assert policy.logits(hist).shape == (9, 40)
    assert shapes == [(9, 16)]
    head = EnsembleHead(3, 16, 40, generator=torch.Generator().manual_seed(1))
    ens = RewardEnsemble(model, head, item_vectors(model), 12)
    seen = []
    forward = head.forward
    monkeypatch.setattr(head, "forward", lambda h, v, items=None: seen.append(tuple(h.shape)) or forward(h, v, items))
    assert next_item_scores(ens, torch.from_numpy(hist)).shape == (3, 9, 40)
    assert seen == [(9, 16)]
