"""Sharpness is not skill: entropy, KL, greedy value and temperature-matched ground truth
(truth/sharpness.py), with hand-computed expectations, and the evaluator's columns."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_post.experiments.evaluate import Evaluator
from recsim_post.logs.simulate import simulate
from recsim_post.policy import Context
from recsim_post.truth.ground_truth import GroundTruth, exact_sums
from recsim_post.truth.sharpness import (
    TAU_GRID, Tempered, entropy, entropy_profile, kl, matching_tau, nll_profile,
)
from tests.conftest import tiny_scenario

LOG3 = math.log(3.0)


def test_entropy_and_kl_by_hand():
    z = np.array([[0.0, LOG3], [0.0, 0.0], [0.0, -np.inf]])
    # p = (1/4, 3/4): H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.562335144618...
    assert entropy(z) == pytest.approx([0.5623351446188083, math.log(2.0), 0.0], abs=1e-12)
    ref = np.zeros((3, 2))
    # KL((1/4, 3/4) || (1/2, 1/2)) = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.130812035941...
    assert kl(z, ref) == pytest.approx([0.13081203594113694, 0.0, math.log(2.0)], abs=1e-12)
    # mass where the reference has none: infinite
    assert kl(np.zeros((1, 2)), np.array([[0.0, -np.inf]]))[0] == np.inf
    # float32 logits are read in float64
    assert entropy(z[:2].astype(np.float32))[0] == pytest.approx(0.5623351446188083, abs=1e-7)


def test_nll_profile_by_hand():
    z = np.array([[0.0, LOG3]])
    out = nll_profile(z, np.array([1]), np.array([1.0, 0.5]))
    # τ = 1: -ln 3/4; τ = 1/2: logits (0, 2 ln 3) -> p = 9/10
    assert out[0] == pytest.approx([-math.log(0.75), -math.log(0.9)], abs=1e-12)


def test_tempered_divides_logits_and_refuses_bad_temperatures():
    class P:
        n_items, max_len = 2, 3

        def logits(self, hist, context=None):
            return np.array([[1.0, 3.0]])

    t = Tempered(P(), 0.5)
    assert t.n_items == 2 and t.max_len == 3
    assert t.logits(np.zeros((1, 3), np.int64)).tolist() == [[2.0, 6.0]]
    for bad in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="temperature"):
            Tempered(P(), bad)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.05, 3.0))
def test_matching_tau_finds_the_entropy_of_a_tempered_copy(seed, scale):
    """softmax((s·z)/τ) = softmax(z) at τ = s, so the τ that matches z's entropy is s; the
    interpolated τ must land within the grid's spacing."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(6, 20)) * 2.0
    target = entropy(z).mean()
    sharp = z * scale  # the same ranking, another spread
    tau = matching_tau(entropy_profile(sharp).mean(axis=0), target)
    if TAU_GRID[0] < scale < TAU_GRID[-1]:
        assert tau == pytest.approx(scale, rel=0.05)
        assert entropy(sharp / tau).mean() == pytest.approx(target, abs=0.02)


def test_matching_tau_clips_and_propagates_nan():
    prof = np.linspace(0.0, 3.0, len(TAU_GRID))
    assert matching_tau(prof, -1.0) == TAU_GRID[0]
    assert matching_tau(prof, 10.0) == TAU_GRID[-1]
    assert math.isnan(matching_tau(prof, float("nan")))


class _Table:
    """A stand-in trained policy: a fixed (users x items) logit table, optionally scaled."""

    max_len = 4

    def __init__(self, table: np.ndarray, scale: float = 1.0) -> None:
        self.table, self.scale, self.n_items = table, scale, table.shape[1]

    def logits(self, hist: np.ndarray, context: Context | None = None) -> np.ndarray:
        return self.table[context.users] * self.scale


@pytest.fixture(scope="module")
def world():
    sim = simulate(tiny_scenario())
    truth = GroundTruth.from_simulation(sim)
    # a reference that ranks by the true reward, noisily: sharpening it raises the sampled value
    r = truth.true_reward(np.arange(truth.n_users))
    table = r + np.random.default_rng(0).normal(scale=0.5, size=r.shape)
    return sim, truth, table


def test_exact_sums_sharpness_agrees_with_dense(world):
    sim, truth, table = world
    users = np.arange(truth.n_users)
    pols = {"ref": _Table(table), "sharp": _Table(table, 3.0)}
    s = exact_sums(truth, users, pols, sharpness=True, ref_of={"sharp": "ref"}, chunk=7)
    z_ref, z = table, table * 3.0
    assert np.allclose(s.entropy["ref"], entropy(z_ref), atol=1e-12)
    assert np.allclose(s.kl["sharp"], kl(z, z_ref), atol=1e-12)
    assert "ref" not in s.kl
    r = truth.true_reward(users)
    assert np.allclose(s.top1["sharp"], r[users, np.argmax(z, axis=1)], atol=1e-12)
    assert np.allclose(s.entropy_profile["sharp"], entropy_profile(z).mean(axis=0), atol=1e-12)
    # only a policy with a π_ref gets the 49-temperature profile; every policy's entropy is the
    # profile's τ = 1 column, to the bit
    assert set(s.entropy_profile) == {"sharp"}
    np.testing.assert_array_equal(s.entropy["sharp"], entropy_profile(z)[:, TAU_GRID.tolist().index(1.0)])
    with pytest.raises(ValueError, match="reference"):
        exact_sums(truth, users, {"sharp": pols["sharp"]}, ref_of={"sharp": "ref"})


def test_temperatures_of_one_policy_share_its_forward_pass(world):
    """Two temperatures of one policy: its logits are computed once per chunk, and every number is
    the one each Tempered copy gets alone."""
    sim, truth, table = world
    users = np.arange(truth.n_users)

    class Counting(_Table):
        calls = 0

        def logits(self, hist, context=None):  # noqa: ANN001, ANN202
            Counting.calls += 1
            return super().logits(hist, context)

    inner = Counting(table)
    both = exact_sums(truth, users, {"a": Tempered(inner, 0.5), "b": Tempered(inner, 2.0)}, chunk=7)
    n_chunks = -(-len(users) // 7)
    assert Counting.calls == n_chunks
    for key, tau in (("a", 0.5), ("b", 2.0)):
        alone = exact_sums(truth, users, {key: Tempered(_Table(table), tau)}, chunk=7)
        np.testing.assert_array_equal(both.value[key], alone.value[key])
        np.testing.assert_array_equal(both.topk[key], alone.topk[key])


def test_a_sharpened_copy_gains_raw_value_but_not_matched_value(world):
    """The point of the columns: π = softmax(3 z_ref) ranks exactly like π_ref, scores higher at
    temperature 1, and scores what π_ref scores once compared at π_ref's entropy."""
    sim, truth, table = world
    ev = Evaluator.prepare(sim.public, truth)
    ref, sharp = _Table(table), _Table(table, 3.0)
    rows = {r.method: r for r in ev.rows({"ref": ref, "sharp": sharp}, pi_refs={"sharp": ref})}
    a, b = rows["ref"], rows["sharp"]
    assert b.value_norm > a.value_norm + 0.05  # sharper scores higher raw
    assert b.entropy < a.entropy and b.kl_ref > 0 and a.kl_ref is None
    assert b.top1_norm == pytest.approx(a.top1_norm, abs=1e-12)  # same ranking, same greedy pick
    assert b.ndcg == a.ndcg and b.ndcg_small == a.ndcg_small
    assert b.tau_matched == pytest.approx(3.0, rel=0.03)
    assert b.matched_norm == pytest.approx(a.value_norm, abs=0.01)
    # the likelihood-tuned temperature sees the same logits up to the factor 3 (within the grid's 2^(1/4) steps)
    assert b.tau_nll == pytest.approx(3 * a.tau_nll, rel=0.2)
    ref_rows = {r.method: r for r in ev.rows({}, references=True)}
    assert ref_rows["uniform"].entropy == pytest.approx(math.log(truth.n_items))
    assert ref_rows["oracle"].top1_norm == 1.0 and ref_rows["uniform"].top1_norm == 0.0


def test_tau_nll_is_the_grid_argmin_over_every_k_th_held_out_click_beyond_the_cap(world, monkeypatch):
    """Up to TUNE_CLICKS test users every held-out click calibrates tau_nll; beyond, every k-th
    (k = ⌈n / cap⌉, counted across chunks), and the result is the argmin of exactly their NLL."""
    from recsim_post.experiments import evaluate

    sim, truth, table = world
    ev = Evaluator.prepare(sim.public, truth)
    users, targets = ev.test_users, ev.test_targets
    policy = _Table(table)

    def argmin_over(rows: np.ndarray) -> float:
        nll = nll_profile(table[users[rows]], targets[rows]).sum(axis=0)
        return float(TAU_GRID[int(np.argmin(nll))])

    n = len(users)
    assert n > 30
    assert ev._offline(policy, tune=True)["tau_nll"] == argmin_over(np.arange(n))
    for cap in (n // 3, 7):
        monkeypatch.setattr(evaluate, "TUNE_CLICKS", cap)
        k = -(-n // cap)
        rows = np.arange(0, n, k)
        assert len(rows) <= cap
        for chunk in (5, 64):  # chunks that do and do not line up with k
            monkeypatch.setattr(evaluate, "chunk_users", lambda n_items, c=chunk: c)
            assert ev._offline(policy, tune=True)["tau_nll"] == argmin_over(rows), (cap, chunk)
