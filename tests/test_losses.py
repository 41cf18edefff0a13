"""Closed-form and limit-case tests of the post-training losses (no trainer involved)."""

from __future__ import annotations

import math

import pytest
import torch

from recsim_post.posttrain import bc_loss, exp_rsft_loss

# One window of three positions over a catalogue of V = 3 items; the last position is padding.
#   position 0: logits log([1, 1, 1]) -> softmax [1/3, 1/3, 1/3]; target 0 -> nll = ln 3
#   position 1: logits log([1, 2, 1]) -> softmax [1/4, 1/2, 1/4]; target 1 -> nll = ln 2
#   position 2: padding (target -1, mask False), logits arbitrary
NLL0, NLL1 = math.log(3.0), math.log(2.0)


def tiny_batch():
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0], [5.0, -3.0, 1.0]]])
    targets = torch.tensor([[0, 1, -1]])
    mask = torch.tensor([[True, True, False]])
    rewards = torch.tensor([[5.0, 1.0, float("nan")]])
    return logits, targets, rewards, mask


def test_bc_loss_hand_computed():
    logits, targets, _, mask = tiny_batch()
    loss, metrics = bc_loss(logits, targets, mask)
    assert loss.item() == pytest.approx((NLL0 + NLL1) / 2, rel=1e-6)  # ln(6)/2 = 0.895880
    assert metrics["n"].item() == 2
    # argmax at position 0 is a three-way tie resolved to item 0 (the target); position 1 is right.
    assert metrics["acc"].item() == pytest.approx(1.0)


def test_exp_rsft_loss_hand_computed_batch_normalised():
    logits, targets, rewards, mask = tiny_batch()
    loss, metrics = exp_rsft_loss(logits, targets, rewards, mask, lam=1.0, r_max=5.0, normalize="batch")
    w0, w1 = math.exp((5 - 5) / 1.0), math.exp((1 - 5) / 1.0)  # 1 and e^-4 = 0.0183156
    expected = (w0 * NLL0 + w1 * NLL1) / (w0 + w1)  # = 1.091319
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["ess"].item() == pytest.approx((w0 + w1) ** 2 / (w0**2 + w1**2), rel=1e-6)
    assert metrics["mean_w"].item() == pytest.approx((w0 + w1) / 2, rel=1e-6)
    assert metrics["nll"].item() == pytest.approx((NLL0 + NLL1) / 2, rel=1e-6)


def test_exp_rsft_loss_hand_computed_unnormalised():
    logits, targets, rewards, mask = tiny_batch()
    loss, _ = exp_rsft_loss(logits, targets, rewards, mask, lam=2.0, r_max=5.0, normalize="shifted")
    w0, w1 = 1.0, math.exp((1 - 5) / 2.0)  # e^-2 = 0.135335
    assert loss.item() == pytest.approx((w0 * NLL0 + w1 * NLL1) / 2, rel=1e-6)  # = 0.596209


def _loss_and_grad(fn):
    logits = torch.randn(4, 6, 11, generator=torch.Generator().manual_seed(3), requires_grad=True)
    loss = fn(logits)
    (grad,) = torch.autograd.grad(loss, logits)
    return loss.detach(), grad


def test_large_lambda_equals_bc_in_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 11, (4, 6), generator=g)
    mask = torch.rand(4, 6, generator=g) > 0.3
    targets[~mask] = -1
    rewards = torch.randint(1, 6, (4, 6), generator=g).float()
    for normalize in ("batch", "shifted"):
        exp_value, exp_grad = _loss_and_grad(
            lambda lg: exp_rsft_loss(lg, targets, rewards, mask, lam=1e9, normalize=normalize)[0]
        )
        bc_value, bc_grad = _loss_and_grad(lambda lg: bc_loss(lg, targets, mask)[0])
        torch.testing.assert_close(exp_value, bc_value, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(exp_grad, bc_grad, rtol=1e-5, atol=1e-8)


def test_nan_rewards_are_excluded():
    logits, targets, rewards, mask = tiny_batch()
    rewards_nan = rewards.clone()
    rewards_nan[0, 1] = float("nan")  # position 1 loses its rating -> only position 0 counts
    for normalize in ("batch", "shifted"):
        loss, metrics = exp_rsft_loss(logits, targets, rewards_nan, mask, lam=1.0, normalize=normalize)
        assert loss.item() == pytest.approx(NLL0, rel=1e-6)
        assert metrics["n"].item() == 1
    # All rewards missing: a zero loss with zero (finite) gradient, not NaN.
    lg = logits.clone().requires_grad_(True)
    loss, _ = exp_rsft_loss(lg, targets, torch.full_like(rewards, float("nan")), mask, lam=1.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(lg.grad).all() and (lg.grad == 0).all()


def test_small_lambda_weights_stay_finite():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 5, 7, generator=g, requires_grad=True)
    targets = torch.randint(0, 7, (8, 5), generator=g)
    mask = torch.ones(8, 5, dtype=torch.bool)
    rewards = torch.randint(1, 6, (8, 5), generator=g).float()
    for normalize in ("batch", "shifted"):
        loss, metrics = exp_rsft_loss(logits, targets, rewards, mask, lam=1e-3, normalize=normalize)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        assert all(torch.isfinite(v) for v in metrics.values())
    # Batch-normalised with tiny λ: only the rating-5 targets carry weight.
    top = rewards == 5
    expected, _ = bc_loss(logits, targets, top)
    loss, metrics = exp_rsft_loss(logits, targets, rewards, mask, lam=1e-3)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert metrics["ess"].item() == pytest.approx(top.sum().item(), rel=1e-6)
    # Even when no target in the batch has the top rating (all weights underflow in float32).
    low = torch.ones_like(rewards)
    loss, _ = exp_rsft_loss(logits, targets, low, mask, lam=1e-3)
    assert loss.item() == pytest.approx(bc_loss(logits, targets, mask)[0].item(), rel=1e-6)


def test_lambda_must_be_positive():
    from recsim_post.errors import ConfigError

    logits, targets, rewards, mask = tiny_batch()
    with pytest.raises(ConfigError, match="lam"):
        exp_rsft_loss(logits, targets, rewards, mask, lam=0.0)
