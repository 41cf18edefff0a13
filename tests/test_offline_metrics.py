"""Offline ranking metrics: hand-computed cases, the tie and exclusion rules, a plain reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from recsim_post.metrics.offline import metrics_from_ranks, ranking_metrics, target_ranks
from recsim_post.logs.public import PAD
from .conftest import require


def reference_rank(scores: list[float], target: int, history: list[int]) -> int:
    """The rule as written, one row at a time: 1 + #{j not in history, j != target : s_j >= s_t}."""
    excluded = {h for h in history if h != PAD}
    return 1 + sum(
        1
        for j, s in enumerate(scores)
        if j != target and j not in excluded and s >= scores[target]
    )


# --- hand-computed cases ---------------------------------------------------------------------


def test_target_third_of_five() -> None:
    logits = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    targets = np.array([2])
    assert target_ranks(logits, targets).tolist() == [3]
    m10 = ranking_metrics(logits, targets, k=10)
    assert m10["ndcg@10"] == pytest.approx(1 / math.log2(4)) == pytest.approx(0.5)
    assert m10["hr@10"] == 1.0
    assert m10["mrr"] == pytest.approx(1 / 3)
    m2 = ranking_metrics(logits, targets, k=2)
    assert set(m2) == {"ndcg@2", "hr@2", "mrr"}
    assert m2["ndcg@2"] == 0.0 and m2["hr@2"] == 0.0
    assert m2["mrr"] == pytest.approx(1 / 3)  # MRR is not truncated at k


def test_rank_one_gives_perfect_scores() -> None:
    m = ranking_metrics(np.array([[0.1, 9.0, 0.2]]), np.array([1]), k=1)
    assert m == {"ndcg@1": 1.0, "hr@1": 1.0, "mrr": 1.0}


def test_ties_are_pessimistic() -> None:
    # All equal: the target goes behind every other item, rank = I.
    assert target_ranks(np.zeros((1, 6)), np.array([0])).tolist() == [6]
    # Two items tie with the target, one is above: rank = 1 + 1 + 2 = 4.
    logits = np.array([[1.0, 2.0, 1.0, 0.5, 1.0]])
    assert target_ranks(logits, np.array([2])).tolist() == [4]


def test_history_is_excluded_but_not_the_target() -> None:
    logits = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    # Items 0 and 1 were consumed before: the target (2) moves to the top.
    assert target_ranks(logits, np.array([2]), np.array([[0, 1]])).tolist() == [1]
    # The target itself in the history stays ranked; only item 0 goes.
    assert target_ranks(logits, np.array([2]), np.array([[2, 0]])).tolist() == [2]
    # Items below the target do not change its rank.
    assert target_ranks(logits, np.array([2]), np.array([[3, 4]])).tolist() == [3]


def test_pad_is_ignored_and_repeats_count_once() -> None:
    logits = np.array([[5.0, 4.0, 3.0, 2.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    targets = np.array([4, 4])
    exclude = np.array([[PAD, PAD, PAD, PAD], [PAD, 0, 0, 0]])  # left-padded, as public.histories
    assert target_ranks(logits, targets, exclude).tolist() == [5, 4]


def test_two_rows_means() -> None:
    logits = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    m = ranking_metrics(logits, np.array([0, 2]), k=2)
    assert m["ndcg@2"] == pytest.approx((1.0 + 0.0) / 2)
    assert m["hr@2"] == pytest.approx(0.5)
    assert m["mrr"] == pytest.approx((1 + 1 / 3) / 2)


def test_metrics_from_ranks_by_hand() -> None:
    m = metrics_from_ranks(np.array([1, 2, 4, 11]), k=10)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5) + 0) / 4)
    assert m["hr@10"] == pytest.approx(3 / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 11) / 4)


def test_float32_and_integer_logits() -> None:
    logits = np.array([[5, 4, 3, 2, 1]])
    assert target_ranks(logits, np.array([3])).tolist() == [4]
    assert target_ranks(logits.astype(np.float32), np.array([3])).tolist() == [4]


def test_infinite_scores() -> None:
    logits = np.array([[-np.inf, np.inf, 0.0, -np.inf]])
    assert target_ranks(logits, np.array([1])).tolist() == [1]
    assert target_ranks(logits, np.array([0])).tolist() == [4]  # tied with item 3: pessimistic


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("logits", "targets", "exclude", "match"),
    [
        (np.zeros(5), np.array([0]), None, r"logits must have shape \(B, I\)"),
        (np.zeros((2, 5)), np.array([0]), None, r"targets must have shape \(2,\)"),
        (np.zeros((1, 5)), np.array([5]), None, r"target 5 at row 0 is outside \[0, 5\)"),
        (np.zeros((1, 5)), np.array([-1]), None, r"target -1 at row 0 is outside"),
        (np.zeros((1, 5)), np.array([0.0]), None, "targets must be integers"),
        (np.zeros((1, 5)), np.array([0]), np.zeros((2, 3), int), r"exclude must have shape \(1, L\)"),
        (np.zeros((1, 5)), np.array([0]), np.array([[PAD, 7]]), "exclude holds item 7 at row 0"),
        (np.zeros((1, 5)), np.array([0]), np.array([[-2]]), "exclude holds item -2"),
        (np.array([[0.0, np.nan]]), np.array([0]), None, "logits hold NaN at row 0"),
    ],
)
def test_bad_inputs_raise_one_line_value_errors(logits, targets, exclude, match) -> None:
    with pytest.raises(ValueError, match=match) as info:
        ranking_metrics(logits, targets, exclude)
    assert "\n" not in str(info.value)


def test_bad_k_and_empty() -> None:
    with pytest.raises(ValueError, match="k must be a positive integer"):
        ranking_metrics(np.zeros((1, 3)), np.array([0]), k=0)
    with pytest.raises(ValueError, match="at least one row"):
        ranking_metrics(np.zeros((0, 3)), np.zeros(0, int))
    assert target_ranks(np.zeros((0, 3)), np.zeros(0, int)).shape == (0,)


# --- properties ------------------------------------------------------------------------------


@st.composite
def ranking_problems(draw):
    n_rows = draw(st.integers(1, 6))
    n_items = draw(st.integers(1, 12))
    # Few distinct values so that ties are frequent.
    logits = draw(
        hnp.arrays(np.float64, (n_rows, n_items), elements=st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0]))
    )
    targets = draw(hnp.arrays(np.int64, n_rows, elements=st.integers(0, n_items - 1)))
    hist_len = draw(st.integers(0, 5))
    exclude = draw(hnp.arrays(np.int64, (n_rows, hist_len), elements=st.integers(PAD, n_items - 1)))
    return logits, targets, exclude


@settings(max_examples=200, deadline=None)
@given(ranking_problems(), st.integers(1, 7))
def test_vectorised_ranks_equal_the_plain_reference(problem, chunk_rows) -> None:
    logits, targets, exclude = problem
    expected = [
        reference_rank(logits[b].tolist(), int(targets[b]), exclude[b].tolist())
        for b in range(len(targets))
    ]
    assert target_ranks(logits, targets, exclude, chunk_rows=chunk_rows).tolist() == expected
    assert target_ranks(logits, targets, None).tolist() == [
        reference_rank(logits[b].tolist(), int(targets[b]), []) for b in range(len(targets))
    ]


@settings(max_examples=100, deadline=None)
@given(ranking_problems(), st.integers(1, 15))
def test_metrics_are_bounded_and_ordered(problem, k) -> None:
    logits, targets, exclude = problem
    m = ranking_metrics(logits, targets, exclude, k=k)
    for value in m.values():
        assert 0.0 <= value <= 1.0
    # A hit within k is worth at most 1 and at least 1/log2(k+1): NDCG lies between those bounds.
    assert m[f"ndcg@{k}"] <= m[f"hr@{k}"] + 1e-12
    assert m[f"ndcg@{k}"] >= m[f"hr@{k}"] / math.log2(k + 1) - 1e-12
    ranks = target_ranks(logits, targets, exclude)
    assert ranks.min() >= 1 and ranks.max() <= logits.shape[1]


def test_result_does_not_depend_on_chunk_size() -> None:
    rng = np.random.default_rng(0)
    n_rows, n_items = 97, 300
    logits = rng.integers(0, 20, size=(n_rows, n_items)).astype(np.float32)  # many ties
    targets = rng.integers(0, n_items, size=n_rows)
    exclude = rng.integers(PAD, n_items, size=(n_rows, 25))
    base = target_ranks(logits, targets, exclude, chunk_rows=n_rows)
    for chunk_rows in (1, 2, 7, 32, 96, 1000):
        np.testing.assert_array_equal(target_ranks(logits, targets, exclude, chunk_rows=chunk_rows), base)
        assert ranking_metrics(logits, targets, exclude, chunk_rows=chunk_rows) == ranking_metrics(
            logits, targets, exclude
        )
    with pytest.raises(ValueError, match="chunk_rows"):
        target_ranks(logits, targets, exclude, chunk_rows=0)


def test_large_catalogue_is_fast_and_bounded() -> None:
    # I = 100,000: the default chunk holds ~4 M elements, so this runs in a handful of chunks.
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((64, 100_000)).astype(np.float32)
    targets = rng.integers(0, 100_000, size=64)
    logits[np.arange(64), targets] = 10.0  # every target on top...
    exclude = np.full((64, 20), PAD)
    exclude[:, -1] = targets  # ...and in its own history, which must not remove it
    m = ranking_metrics(logits, targets, exclude)
    assert m == {"ndcg@10": 1.0, "hr@10": 1.0, "mrr": 1.0}


# --- parity with torchmetrics, where it is installed -----------------------------------------


def test_parity_with_torchmetrics() -> None:
    retrieval = require("torchmetrics.functional.retrieval")  # first: skipping is cheap
    torch = require("torch")
    rng = np.random.default_rng(2)
    # Continuous scores: torchmetrics breaks ties by sort order, our rule is pessimistic, so parity
    # is only defined without ties. Positive scores: torchmetrics >= 1.x counts an item with a score
    # <= 0 as not relevant in its reciprocal rank, and a monotone shift changes none of our metrics.
    logits = rng.standard_normal((20, 50)) + 10.0
    targets = rng.integers(0, 50, size=20)
    ours = [ranking_metrics(logits[b : b + 1], targets[b : b + 1], k=10) for b in range(20)]
    for b in range(20):
        preds = torch.from_numpy(logits[b])
        rel = torch.zeros(50, dtype=torch.bool)
        rel[targets[b]] = True
        ndcg = retrieval.retrieval_normalized_dcg(preds, rel, top_k=10)
        assert ours[b]["ndcg@10"] == pytest.approx(float(ndcg))
        assert ours[b]["hr@10"] == pytest.approx(float(retrieval.retrieval_hit_rate(preds, rel, top_k=10)))
        assert ours[b]["mrr"] == pytest.approx(float(retrieval.retrieval_reciprocal_rank(preds, rel)))
