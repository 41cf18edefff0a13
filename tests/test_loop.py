"""The training loop (posttrain/loop.py): extra parameter groups, hand-checked optimiser steps,
known-optimum learning with a log Z head, determinism, and the limit cases (no epochs, no data)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from recsim_post.errors import ConfigError, LogError
from recsim_post.models import SASRecConfig, SequencePolicy, build_model
from recsim_post.posttrain import PostTrainData, TrainConfig, make_windows
from recsim_post.posttrain.bc import bc_loss
from recsim_post.posttrain.loop import Run, decay_groups, fit, param_group, train_copy, window_batches
from recsim_post.seeding import SeedTree

from .conftest import clicks_frame


def full_batch(item: torch.Tensor):  # noqa: ANN201
    """A batch source that yields ``item`` once per epoch."""
    return lambda run: [item.to(run.device)]


class Toy(nn.Module):
    """A matrix W (decayed by the default rule) and a vector v (not decayed)."""

    def __init__(self) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
        self.v = nn.Parameter(torch.tensor([0.25, -0.75]))


# ---------------------------------------------------------------- known optimum: trajectory balance


def test_policy_and_log_z_head_reach_the_trajectory_balance_optimum():
    """Three terminal items with rewards R = (1, 2, 5); policy π = softmax(θ), a scalar log Z with its
    own learning rate. Trajectory balance Σ_y (log Z + log π(y) − log R(y))² is 0 only where
    π(y) = R(y)/Z for every y, so Σπ = 1 gives Z = ΣR = 8: log Z* = log 8, π* = (1, 2, 5)/8."""
    log_r = torch.tensor([1.0, 2.0, 5.0]).log()
    heads = nn.ModuleDict({"policy": nn.Linear(1, 3, bias=False), "log_z": nn.Linear(1, 1, bias=False)})
    nn.init.zeros_(heads["policy"].weight)  # uniform π
    nn.init.zeros_(heads["log_z"].weight)  # log Z = 0
    groups = [*decay_groups(heads["policy"], 0.0), param_group(heads["log_z"].parameters(), lr=0.1)]
    x = torch.ones(1, 1)

    def tb_loss(m: nn.ModuleDict, items: torch.Tensor, run: Run) -> tuple[torch.Tensor, dict]:
        log_pi = torch.log_softmax(m["policy"](x)[0], dim=-1)[items]
        log_z = m["log_z"](x)[0, 0]
        return ((log_z + log_pi - log_r[items]) ** 2).sum(), {"log_z": log_z.detach()}

    forty_steps = lambda run: [torch.arange(3)] * 40  # noqa: E731
    history = fit(heads, forty_steps, tb_loss, groups=groups, epochs=10, lr=0.05, seed=SeedTree(0), device="cpu",
                  progress=False)

    log_z = heads["log_z"].weight.item()
    pi = torch.softmax(heads["policy"].weight[:, 0], dim=-1).detach().numpy()
    assert log_z == pytest.approx(math.log(8.0), abs=1e-4)
    np.testing.assert_allclose(pi, [1 / 8, 2 / 8, 5 / 8], atol=1e-4)
    assert history[-1]["loss"] < 1e-6 and history[-1]["log_z"] == pytest.approx(log_z, abs=1e-4)
    assert len(history) == 10 and 1.0 < history[0]["loss"] < 11.75  # Σ_y (log ⅓ − log R(y))² = 11.75 at step 1


# ---------------------------------------------------------------- one optimiser step by hand


def test_extra_group_has_its_own_lr_and_weight_decay_in_one_adamw_step():
    """AdamW's first step is p ← p(1 − ηλ) − η g/(|g| + ε) (bias-corrected m̂ = g, v̂ = g²). The default
    group of W uses the run's lr and decay, v none (a vector), and the extra scalar s its own."""
    toy = Toy()
    extra = nn.ParameterDict({"s": nn.Parameter(torch.tensor(2.0))})
    module = nn.ModuleDict({"toy": toy, "extra": extra})
    c_w, c_v, c_s = torch.tensor([[3.0, -1.0], [0.5, 2.0]]), torch.tensor([-4.0, 1.0]), -0.5
    lr, wd, lr_s, wd_s = 0.1, 0.2, 0.05, 0.5
    groups = [*decay_groups(toy, wd), param_group(extra.parameters(), lr=lr_s, weight_decay=wd_s)]

    def linear(m: nn.ModuleDict, batch: torch.Tensor, run: Run) -> tuple[torch.Tensor, dict]:
        return (m["toy"].W * c_w).sum() + (m["toy"].v * c_v).sum() + c_s * m["extra"]["s"], {}

    fit(module, full_batch(torch.zeros(1)), linear, groups=groups, epochs=1, lr=lr, seed=SeedTree(0),
        device="cpu", progress=False)

    def adamw(p0: np.ndarray, g: np.ndarray, lr: float, wd: float) -> np.ndarray:
        return p0 * (1 - lr * wd) - lr * g / (np.abs(g) + 1e-8)

    W0, v0 = np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([0.25, -0.75])
    np.testing.assert_allclose(toy.W.detach().numpy(), adamw(W0, c_w.numpy(), lr, wd), rtol=1e-6)
    np.testing.assert_allclose(toy.v.detach().numpy(), adamw(v0, c_v.numpy(), lr, 0.0), rtol=1e-6)
    assert extra["s"].item() == pytest.approx(adamw(np.array(2.0), np.array(c_s), lr_s, wd_s), rel=1e-6)
    # By hand: W[0,0] = 1·(1 − 0.02) − 0.1 = 0.88; s = 2·(1 − 0.025) + 0.05 = 2.0
    assert toy.W[0, 0].item() == pytest.approx(0.88, rel=1e-6) and extra["s"].item() == pytest.approx(2.0, rel=1e-6)


def test_grad_clip_scales_the_global_norm_over_every_group():
    """With SGD a step is p ← p − η · g · min(1, c/‖g‖), ‖g‖ over all groups together:
    g = (3, 4) on v and 12 on the extra scalar gives ‖g‖ = 13; clipping at 6.5 halves every gradient."""
    toy = Toy()
    extra = nn.ParameterDict({"s": nn.Parameter(torch.tensor(1.0))})
    module = nn.ModuleDict({"toy": toy, "extra": extra})
    toy.W.requires_grad_(False)  # frozen: in no group, and not clipped

    def linear(m: nn.ModuleDict, batch: torch.Tensor, run: Run) -> tuple[torch.Tensor, dict]:
        return 3.0 * m["toy"].v[0] + 4.0 * m["toy"].v[1] + 12.0 * m["extra"]["s"], {}

    groups = [param_group([toy.v]), param_group(extra.parameters(), lr=0.01)]
    fit(module, full_batch(torch.zeros(1)), linear, groups=groups, epochs=1, lr=0.1, grad_clip=6.5,
        seed=SeedTree(0), device="cpu", progress=False, optimizer=torch.optim.SGD)
    np.testing.assert_allclose(toy.v.detach().numpy(), [0.25 - 0.1 * 1.5, -0.75 - 0.1 * 2.0], rtol=1e-6)
    assert extra["s"].item() == pytest.approx(1.0 - 0.01 * 6.0, rel=1e-6)
    np.testing.assert_array_equal(toy.W.detach().numpy(), [[1.0, -2.0], [0.5, 3.0]])


def test_default_groups_decay_only_matrices_and_embeddings():
    model = build_model(SASRecConfig(dim=8, n_layers=1, n_heads=1, max_len=4), 10)
    decayed, plain = decay_groups(model, 0.3)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.3 and plain["weight_decay"] == 0.0
    assert "item_emb.weight" in {names[id(p)] for p in decayed["params"]}
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in plain["params"])
    assert any(names[id(p)].endswith("bias") for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(names)


# ---------------------------------------------------------------- hooks and metrics


def test_prepare_runs_once_per_batch_without_gradients_and_metrics_average_over_steps():
    toy = Toy()
    prepared, steps = [], []

    def prepare(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        prepared.append(torch.is_grad_enabled())
        return batch * 10

    def loss_fn(m: nn.Module, batch: torch.Tensor, run: Run) -> tuple[torch.Tensor, dict]:
        steps.append((run.epoch, float(batch)))
        return (m.v ** 2).sum() * 0.0 + m.W.sum() * 0.0, {"x": batch, "k": torch.tensor(float(len(steps)))}

    two = lambda run: [torch.tensor(1.0), torch.tensor(2.0)]  # noqa: E731
    history = fit(toy, two, loss_fn, epochs=2, lr=0.1, seed=SeedTree(0), device="cpu", progress=False,
                  prepare=prepare, inner_steps=3)
    assert prepared == [False] * 4
    assert steps == [(0, 10.0)] * 3 + [(0, 20.0)] * 3 + [(1, 10.0)] * 3 + [(1, 20.0)] * 3
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0]["x"] == pytest.approx(15.0) and history[0]["loss"] == 0.0
    assert history[0]["k"] == pytest.approx(3.5) and history[1]["k"] == pytest.approx(9.5)  # mean of 1..6, 7..12
    assert not toy.training  # eval mode on return


# ---------------------------------------------------------------- determinism


N_ITEMS = 15


def policy_and_windows(seed: int = 0) -> tuple[SequencePolicy, object]:
    rng = np.random.default_rng(seed)
    clicks = clicks_frame(np.repeat(np.arange(12), 9), rng.integers(0, N_ITEMS, 108), rng.integers(1, 6, 108))
    model = build_model(SASRecConfig(dim=8, n_layers=1, n_heads=2, max_len=6, dropout=0.3), N_ITEMS,
                        torch.Generator().manual_seed(0))
    return SequencePolicy(model, N_ITEMS), make_windows(clicks, 6, N_ITEMS)


def train_with_head(seed: SeedTree) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """A policy and a context-conditioned log Z(x) head (Linear on the sequence state) trained
    jointly on BC + a toy balance term, with dropout: every random draw comes from ``seed``."""
    policy, windows = policy_and_windows()
    head = nn.utils.skip_init(nn.Linear, 8, 1)  # no draw from the global RNG
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    heads = nn.ModuleDict({"policy": policy.model, "log_z": head})
    groups = [*decay_groups(policy.model, 0.01), param_group(head.parameters(), lr=0.05)]

    def loss_fn(m: nn.ModuleDict, batch, run: Run):  # noqa: ANN001, ANN202
        with run.autocast():
            h = m["policy"].encode(batch.inputs, run.dropout)
        logits = m["policy"].score(h).float()
        bc, metrics = bc_loss(logits, batch.targets, batch.mask)
        log_z = m["log_z"](h.float()).squeeze(-1)
        balance = ((log_z - 1.0) ** 2 * batch.mask).sum() / batch.mask.sum()
        return bc + balance, {**metrics, "balance": balance.detach()}

    history = fit(heads, window_batches(windows, 5), loss_fn, groups=groups, epochs=2, lr=3e-3, grad_clip=1.0,
                  seed=seed, device="cpu", progress=False)
    return {k: v.clone() for k, v in heads.state_dict().items()}, history


def test_two_runs_with_one_seed_are_bit_identical_and_leave_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, hist_a = train_with_head(SeedTree(3))
    b, hist_b = train_with_head(SeedTree(3))
    c, hist_c = train_with_head(SeedTree(4))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert hist_a == hist_b and hist_a != hist_c
    assert not torch.equal(a["log_z.weight"], c["log_z.weight"])  # batch order and dropout differ
    assert hist_a[-1]["balance"] < hist_a[0]["balance"]  # the head trains with the policy


# ---------------------------------------------------------------- limits and errors


def test_zero_epochs_train_nothing_and_never_read_the_batches():
    toy = Toy()
    toy.train()

    def never(run: Run):  # noqa: ANN202
        raise AssertionError("epochs = 0 must not ask for batches")

    assert fit(toy, never, None, epochs=0, lr=0.1, seed=SeedTree(0), progress=False) == []  # type: ignore[arg-type]
    assert not toy.training and toy.W[0, 0].item() == 1.0


def test_empty_batches_raise():
    with pytest.raises(LogError, match="no batch in epoch 1"):
        fit(Toy(), lambda run: iter(()), None, epochs=2, lr=0.1, seed=SeedTree(0), device="cpu",  # type: ignore[arg-type]
            progress=False, desc="toy")


def test_train_copy_without_windows():
    policy, _ = policy_and_windows()
    lonely = PostTrainData(clicks_frame([0, 1, 2], [3, 4, 5]), N_ITEMS)  # one click per user: no target

    def loss_fn(logits, batch):  # noqa: ANN001, ANN202
        return bc_loss(logits, batch.targets, batch.mask)

    with pytest.raises(LogError, match="no training windows"):
        train_copy(policy, lonely, loss_fn, TrainConfig(epochs=1, device="cpu"), SeedTree(0), False, "bc")
    same = train_copy(policy, lonely, loss_fn, TrainConfig(epochs=0, device="cpu"), SeedTree(0), False, "bc")
    assert same.history == [] and all(
        torch.equal(x, y) for x, y in zip(same.model.state_dict().values(), policy.model.state_dict().values())
    )


def test_groups_are_checked():
    toy, stray = Toy(), nn.Parameter(torch.zeros(2))
    kw = dict(epochs=1, lr=0.1, seed=SeedTree(0), device="cpu", progress=False)
    loss_fn = lambda m, b, run: (m.W.sum() + m.v.sum(), {})  # noqa: E731
    with pytest.raises(ConfigError, match="not in the trained module"):
        fit(toy, full_batch(torch.zeros(1)), loss_fn, groups=[param_group([toy.W, toy.v, stray])], **kw)
    with pytest.raises(ConfigError, match="in no optimizer group: v"):
        fit(toy, full_batch(torch.zeros(1)), loss_fn, groups=[param_group([toy.W])], **kw)
    with pytest.raises(ConfigError, match="weight_decay"):
        fit(toy, full_batch(torch.zeros(1)), loss_fn, groups=decay_groups(toy, 0.1), weight_decay=0.1, **kw)
    with pytest.raises(ConfigError, match="inner_steps"):
        fit(toy, full_batch(torch.zeros(1)), loss_fn, inner_steps=0, **kw)
