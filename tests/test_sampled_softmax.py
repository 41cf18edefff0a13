"""Issue 12, scale: the sampled softmax with the logQ correction (recsim_post.posttrain.sampled).

A hand-computed loss; the same optimum as the full softmax on a small catalogue (and, without the
correction, a measurable bias away from the proposal); BC with ``loss = "sampled"`` never builds
the catalogue-wide logits, is seeded, and leaves the global RNG alone; config errors are one line."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsim_post.config import from_dict
from recsim_post.errors import ConfigError
from recsim_post.models import SASRecConfig
from recsim_post.posttrain import (AgentConfig, ASFTConfig, BCConfig, CQLConfig, ExpRSFTConfig, LinearRSFTConfig, TrainConfig,
                                  cql, exp_rsft, post_train, pretrain)
from recsim_post.posttrain.data import PostTrainData
from recsim_post.posttrain.sampled import Proposal, sampled_softmax_nll
from recsim_post.seeding import SeedTree

from .conftest import clicks_frame


@contextlib.contextmanager
def one_thread():
    """Tiny ops on 2 threads of a loaded machine spend most of their time waiting on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def table_vectors(theta: torch.Tensor):  # noqa: ANN201
    """A logit table as a model: h = [1] everywhere, item j's vector is [θ_j], so o_j = θ_j."""
    return lambda ids: theta[ids][:, None]


def test_hand_computed_loss_on_three_items():
    # o = (1, 2, 0) for h = +1 and (−1, −2, 0) for h = −1; Q = (1/4, 1/2, 1/4), N = 4 draws (1, 0, 2, 1):
    # N·Q = (1, 2, 1), so the draws' weights 1/(N·Q) add up to one copy of every non-target item.
    vectors = torch.tensor([[1.0], [2.0], [0.0]])
    h = torch.tensor([[1.0], [-1.0]])
    targets = torch.tensor([0, 2])
    negatives = torch.tensor([1, 0, 2, 1])
    log_q = torch.tensor([0.25, 0.5, 0.25]).log()
    nll = sampled_softmax_nll(h, targets, negatives, log_q, lambda ids: vectors[ids])
    e = math.e
    # row 0: target 0 exact, draw of 0 masked, 1 twice at e^2/2, 2 once at e^0/1
    # row 1: target 2 exact, draw of 2 masked, 1 twice at e^-2/2, 0 once at e^-1/1
    expected = [-1 + math.log(e + e**2 + 1), math.log(1 + e**-2 + e**-1)]
    torch.testing.assert_close(nll, torch.tensor(expected), rtol=0, atol=1e-6)
    # here the draws hit every item exactly N·Q times: the full softmax's value
    full = F.cross_entropy(h @ vectors.T, targets, reduction="none")
    torch.testing.assert_close(nll, full, rtol=0, atol=1e-6)
    # without the correction every draw counts once, the repeated item twice
    raw = sampled_softmax_nll(h, targets, negatives, log_q, lambda ids: vectors[ids], correct=False)
    expected_raw = [-1 + math.log(e + 2 * e**2 + 1), math.log(1 + 2 * e**-2 + e**-1)]
    torch.testing.assert_close(raw, torch.tensor(expected_raw), rtol=0, atol=1e-6)


def test_proposal_is_smoothed_unigram_to_a_power_and_draws_follow_it():
    counts = np.array([0, 3, 8, 99])
    q = Proposal(counts, 0.5).log_q.exp().numpy()
    np.testing.assert_allclose(q, np.sqrt(counts + 1) / np.sqrt(counts + 1).sum())
    np.testing.assert_allclose(Proposal(counts, 0.0).log_q.exp().numpy(), 0.25)
    draws = Proposal(counts, 1.0).draw(200_000, torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / len(draws), (counts + 1) / 114, atol=0.004)
    state = torch.random.get_rng_state()
    a = Proposal(counts, 1.0).draw(50, torch.Generator().manual_seed(3))
    assert torch.equal(a, Proposal(counts, 1.0).draw(50, torch.Generator().manual_seed(3)))
    assert torch.equal(torch.random.get_rng_state(), state)


def fit_table(p: torch.Tensor, mode: str, proposal: Proposal, negatives: int = 256, steps: int = 400) -> torch.Tensor:
    """softmax(θ) of a logit table fitted to the expected loss under p (every target, weighted by
    p: the only noise is the negatives'), Adam with a decaying rate, θ averaged over the last half."""
    n = len(p)
    theta = torch.zeros(n, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s / 30))
    draws = torch.Generator().manual_seed(1)
    targets, ones, avg = torch.arange(n), torch.ones(n, 1), torch.zeros(n)
    for step in range(steps):
        if mode == "full":
            nll = F.cross_entropy(theta.expand(n, n), targets, reduction="none")
        else:
            nll = sampled_softmax_nll(ones, targets, proposal.draw(negatives, draws), proposal.log_q.float(),
                                      table_vectors(theta), correct=mode == "sampled")
        opt.zero_grad()
        (p * nll).sum().backward()
        opt.step()
        sched.step()
        if step >= steps // 2:
            avg += theta.detach()
    return torch.softmax(avg.double() / (steps - steps // 2), 0)


def test_sampled_and_full_softmax_reach_the_same_optimum_and_logq_is_what_makes_it():
    n = 40
    g = torch.Generator().manual_seed(0)
    p = 1 / torch.arange(1, n + 1, dtype=torch.float64)  # Zipf, shuffled
    p = (p / p.sum())[torch.randperm(n, generator=g)]
    proposal = Proposal((p * 1000).numpy(), 1.0)  # the unigram of the clicks: Q ≈ p
    with one_thread():
        full = fit_table(p.float(), "full", proposal)
        sampled = fit_table(p.float(), "sampled", proposal)
        raw = fit_table(p.float(), "uncorrected", proposal)

    def tv(a: torch.Tensor, b: torch.Tensor) -> float:
        return 0.5 * float((a - b).abs().sum())

    assert tv(full, p) < 1e-4  # the full softmax's optimum is p itself
    assert tv(sampled, full) < 0.03  # measured 0.010 (0.016 with 64 negatives: the O(1/N) bias)
    assert float((sampled * (sampled / full).log()).sum()) < 2e-3
    assert tv(raw, full) > 0.25  # measured 0.41
    # without the correction popular (often drawn) items are pushed down: raw ≈ p / Q, near uniform
    ratio = (raw / full).log().numpy()
    assert np.corrcoef(ratio, proposal.log_q.numpy())[0, 1] < -0.9
    assert raw.max() / raw.min() < 0.2 * full.max() / full.min()


@pytest.mark.parametrize("kind", ["sasrec", "hstu"])
def test_item_vectors_are_the_output_layer_of_score(kind):
    from recsim_post.models.policy import build_model, model_config_from_dict

    model = build_model(model_config_from_dict({"kind": kind, "dim": 8, "n_layers": 1, "n_heads": 1, "max_len": 4}), 11)
    h = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([0, 10, 4, 4])
    torch.testing.assert_close(h @ model.item_vectors(ids).T, model.score(h)[:, ids])


# ---------------------------------------------------------------- in BC training

N_ITEMS = 30
SAMPLED = TrainConfig(epochs=2, batch_size=16, lr=3e-3, device="cpu", loss="sampled", negatives=8)


def agent(pretrain_cfg: TrainConfig, finetune_cfg: TrainConfig, method=None) -> AgentConfig:  # noqa: ANN001
    return AgentConfig(name="tiny", model=SASRecConfig(dim=16, n_layers=1, n_heads=2, max_len=8, dropout=0.1),
                       pretrain=pretrain_cfg, method=method or BCConfig(), finetune=finetune_cfg)


def random_clicks(n_users: int = 30, n_clicks: int = 10, seed: int = 0):  # noqa: ANN201
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), n_clicks)
    return clicks_frame(users, rng.integers(0, N_ITEMS, len(users)))


def test_bc_with_sampled_softmax_never_scores_the_catalogue_and_is_seeded(monkeypatch):
    from recsim_post.models.sasrec import SASRec

    def no_full_logits(self, h):  # noqa: ANN001, ANN202
        raise AssertionError("the sampled softmax must not compute (B, L, n_items) logits")

    monkeypatch.setattr(SASRec, "score", no_full_logits)
    clicks = random_clicks()
    cfg = agent(SAMPLED, SAMPLED)
    state = torch.random.get_rng_state()
    with one_thread():
        runs = [post_train(pretrain(clicks, N_ITEMS, cfg, SeedTree(s), progress=False), clicks, N_ITEMS, cfg,
                           SeedTree(s), progress=False) for s in (4, 4, 5)]
    assert torch.equal(torch.random.get_rng_state(), state)
    a, b, c = (r.model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert [h["stage"] for h in runs[0].history] == ["bc"] * 4
    assert {"loss", "sampled_nll", "n"} <= set(runs[0].history[0]) and "acc" not in runs[0].history[0]
    assert runs[0].history[-1]["loss"] < runs[0].history[0]["loss"]


def test_sampled_bc_with_many_negatives_learns_what_full_bc_learns():
    rng = np.random.default_rng(0)  # mostly "the next item is the previous one + 1": something to learn
    items = np.zeros((20, 10), dtype=np.int64)
    items[:, 0] = rng.integers(0, N_ITEMS, 20)
    for t in range(1, 10):
        step = rng.random(20) < 0.8
        items[:, t] = np.where(step, (items[:, t - 1] + 1) % N_ITEMS, rng.integers(0, N_ITEMS, 20))
    clicks = clicks_frame(np.repeat(np.arange(20), 10), items.ravel())
    full = TrainConfig(epochs=4, batch_size=16, lr=1e-2, device="cpu")
    hist = np.random.default_rng(1).integers(0, N_ITEMS, (16, 8))

    def probs(cfg: TrainConfig) -> torch.Tensor:
        policy = pretrain(clicks, N_ITEMS, agent(cfg, full), SeedTree(0), progress=False)
        return torch.softmax(torch.from_numpy(policy.logits(hist)), -1)

    with one_thread():
        p_full, p_init = probs(full), probs(TrainConfig(epochs=0))
        p_many = probs(TrainConfig(epochs=4, batch_size=16, lr=1e-2, device="cpu", loss="sampled", negatives=4096))
    moved = float(0.5 * (p_full - p_init).abs().sum(-1).mean())  # measured 0.23
    gap = float(0.5 * (p_full - p_many).abs().sum(-1).mean())  # measured 0.014 (0.08 with 8 negatives)
    assert moved > 0.15 and gap < 0.1 * moved


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"pretrain": {"loss": "approx"}}, "pretrain.loss = 'approx' is not allowed: must be one of 'full', 'sampled'"),
        ({"finetune": {"negatives": 0}}, "finetune.negatives = 0 is out of range"),
        ({"pretrain": {"proposal_power": 2.0}}, "pretrain.proposal_power = 2.0 is out of range"),
        ({"method": {"name": "cql"}, "finetune": {"loss": "sampled"}},
         "finetune.loss = 'sampled' does not fit method.name = 'cql'"),
        ({"method": {"name": "exp-rsft", "normalize": "context"}, "finetune": {"loss": "sampled"}},
         "does not fit method.normalize = 'context'"),
        ({"method": {"name": "asft", "baseline": "reward-model"}, "finetune": {"loss": "sampled"}},
         "does not fit method.baseline = 'reward-model'"),
    ],
)
def test_config_errors_are_one_line(data, needle):
    with pytest.raises(ConfigError) as info:
        from_dict(AgentConfig, data)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_full_is_the_default_and_a_method_without_it_refuses_sampled_in_code():
    assert TrainConfig().loss == "full"
    clicks = random_clicks(n_users=5)
    ref = pretrain(clicks, N_ITEMS, agent(SAMPLED, SAMPLED), SeedTree(0), progress=False)
    data = PostTrainData(clicks, N_ITEMS)
    with pytest.raises(ConfigError, match="does not fit method 'cql'"):  # the loop refuses without a recipe
        cql.train(ref, data, CQLConfig(), SAMPLED, SeedTree(0), progress=False)
    with pytest.raises(ConfigError, match="normalize = 'context'"):
        exp_rsft.train(ref, data, ExpRSFTConfig(normalize="context"), SAMPLED, SeedTree(0), progress=False)


@pytest.mark.parametrize("method", [ExpRSFTConfig(lam=0.5), ExpRSFTConfig(lam=0.5, normalize="user"),
                                    ASFTConfig(beta=0.5), LinearRSFTConfig()], ids=lambda m: f"{m.name}")
def test_sampled_weighted_sft_learns_what_full_weighted_sft_learns(method):
    """The weighted-SFT family reads only −log π(y|x), so the sampled softmax's estimate can stand in
    for it: with many negatives the post-trained policy lands where the full-softmax one does, and the
    weights matter (the post-trained policy moves away from π_ref, toward the well-rated clicks)."""
    rng = np.random.default_rng(0)  # half the users click "previous + 1" and rate it 5; the others click at random
    items = rng.integers(0, N_ITEMS, (24, 10))
    good = np.arange(24) < 12
    for t in range(1, 10):
        items[good, t] = (items[good, t - 1] + 1) % N_ITEMS
    clicks = clicks_frame(np.repeat(np.arange(24), 10), items.ravel())
    clicks["rating"] = np.where(np.repeat(good, 10), 5.0, rng.integers(1, 3, 240).astype(float))
    bc = TrainConfig(epochs=1, batch_size=16, lr=1e-2, device="cpu")
    full = TrainConfig(epochs=3, batch_size=16, lr=1e-2, device="cpu")
    many = TrainConfig(epochs=3, batch_size=16, lr=1e-2, device="cpu", loss="sampled", negatives=2048)
    hist = np.random.default_rng(1).integers(0, N_ITEMS, (16, 8))
    with one_thread():
        ref = pretrain(clicks, N_ITEMS, agent(bc, full), SeedTree(0), progress=False)
        p_ref = torch.softmax(torch.from_numpy(ref.logits(hist)), -1)
        p_full, p_many, p_bc = (torch.softmax(torch.from_numpy(post_train(
            ref, clicks, N_ITEMS, agent(bc, cfg, m), SeedTree(0), progress=False).logits(hist)), -1)
            for cfg, m in ((full, method), (many, method), (full, BCConfig())))

    def tv(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(0.5 * (a - b).abs().sum(-1).mean())

    # measured: moved 0.16–0.23, weighting 0.08–0.14 (how far the weights take π from BC's fine-tuning), gap 0.007–0.013
    moved, weighting, gap = tv(p_full, p_ref), tv(p_full, p_bc), tv(p_full, p_many)
    assert moved > 0.1 and gap < 0.15 * moved and gap < 0.5 * weighting


# ---------------------------------------------------------------- sparse item-embedding updates


def test_clip_gradients_with_a_sparse_gradient_is_torchs_clip_on_the_dense_equivalent():
    from recsim_post.posttrain.loop import clip_gradients

    dense, table = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(5, 2))
    dense.grad = torch.tensor([3.0, 4.0])
    # rows 1 and 3, row 3 twice: coalesced, row 3's gradient is [0, 12] -> global norm sqrt(25 + 0 + 144) = 13
    table.grad = torch.sparse_coo_tensor(torch.tensor([[1, 3, 3]]), torch.tensor([[0.0, 0.0], [0.0, 5.0], [0.0, 7.0]]), (5, 2),
                                         check_invariants=True)
    clip_gradients([dense, table], 1.3)  # scale 1.3 / 13 = 0.1
    torch.testing.assert_close(dense.grad, torch.tensor([0.3, 0.4]), atol=1e-6, rtol=1e-5)
    expected = torch.zeros(5, 2)
    expected[3, 1] = 1.2
    torch.testing.assert_close(table.grad.to_dense(), expected, atol=1e-6, rtol=1e-5)
    ref = torch.nn.Parameter(torch.zeros(5, 2))
    ref.grad = torch.zeros(5, 2)
    ref.grad[3, 1] = 12.0
    other = torch.nn.Parameter(torch.zeros(2))
    other.grad = torch.tensor([3.0, 4.0])
    torch.nn.utils.clip_grad_norm_([other, ref], 1.3)
    torch.testing.assert_close(ref.grad, table.grad.to_dense(), atol=1e-6, rtol=1e-5)


def test_sparse_rows_adam_moves_only_the_rows_a_step_touches():
    from recsim_post.posttrain.loop import SparseRowsAdam, param_group

    table, bias = torch.nn.Parameter(torch.ones(6, 2)), torch.nn.Parameter(torch.zeros(2))
    opt = SparseRowsAdam([param_group([table]), param_group([bias])], lr=0.1, sparse=[table])
    table.grad = torch.sparse_coo_tensor(torch.tensor([[2, 4]]), torch.tensor([[1.0, -2.0], [0.5, 0.0]]), (6, 2),
                                         check_invariants=True)
    bias.grad = torch.tensor([1.0, -1.0])
    opt.step()
    # Adam's first step moves a coordinate by lr·g/(|g| + eps) = ±0.1 where g ≠ 0, and not at all where g = 0
    expected = torch.ones(6, 2)
    expected[2] = torch.tensor([0.9, 1.1])
    expected[4] = torch.tensor([0.9, 1.0])
    torch.testing.assert_close(table.detach(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(bias.detach(), torch.tensor([-0.1, 0.1]), atol=1e-6, rtol=0)
    opt.zero_grad()
    table.grad = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.tensor([[1.0, 1.0]]), (6, 2), check_invariants=True)
    before = table.detach().clone()
    opt.step()  # lazy: rows 2 and 4 keep their momentum but do not move without a gradient
    torch.testing.assert_close(table.detach()[1:], before[1:], atol=0, rtol=0)
    with pytest.raises(ValueError, match="sparse group"):
        SparseRowsAdam([param_group([table, bias])], lr=0.1, sparse=[table])


def test_sparse_embeddings_train_what_dense_sampled_training_does():
    clicks = random_clicks()
    hist = np.random.default_rng(1).integers(0, N_ITEMS, (16, 8))
    seen = []

    def probs(cfg: TrainConfig) -> torch.Tensor:
        policy = pretrain(clicks, N_ITEMS, agent(cfg, cfg), SeedTree(0), progress=False)
        seen.append(policy.model.item_emb.sparse)
        return torch.softmax(torch.from_numpy(policy.logits(hist)), -1)

    base = dict(epochs=4, batch_size=16, lr=1e-2, device="cpu", loss="sampled", negatives=64)
    with one_thread():
        p_init = probs(TrainConfig(epochs=0))
        p_dense = probs(TrainConfig(**base))
        p_sparse = probs(TrainConfig(**base, sparse_embeddings=True))
    assert seen == [False, False, False]  # a trained policy's table is dense again: it scores the catalogue
    # SparseAdam refuses dense gradients, so finishing at all shows the table's gradients were sparse
    moved = float(0.5 * (p_dense - p_init).abs().sum(-1).mean())  # measured 0.17
    gap = float(0.5 * (p_dense - p_sparse).abs().sum(-1).mean())  # measured 0.006: lazy Adam barely differs here
    assert moved > 0.1 and gap < 0.1 * moved


@pytest.mark.parametrize("data, needle", [
    ({"sparse_embeddings": True}, "sparse_embeddings = true needs loss = 'sampled'"),
    ({"sparse_embeddings": True, "loss": "sampled", "weight_decay": 0.01}, "needs weight_decay = 0"),
])
def test_sparse_embeddings_config_errors_are_one_line(data, needle):
    with pytest.raises(ConfigError) as info:
        from_dict(TrainConfig, data)
    assert needle in str(info.value) and "\n" not in str(info.value)
