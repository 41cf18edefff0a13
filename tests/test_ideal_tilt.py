"""Study 2's ideal tilt (theory/ideal.py): the rating map by hand, the tilt's logits, and noise that
is the same for every λ and whatever the batch of users."""

from __future__ import annotations

import numpy as np
import pytest

from recsim_post.policy import Context, UniformPolicy
from recsim_post.seeding import SeedTree
from recsim_post.theory.ideal import IdealTilt, rating_map
from recsim_post.world.config import FeedbackConfig


class _Truth:
    """r*(u, i) = u - i on 3 items: enough truth for a tilt."""

    n_items = 3

    def true_reward(self, users):
        return np.asarray(users, np.float64)[:, None] - np.arange(3.0)[None, :]


def test_rating_map_by_hand():
    fb = FeedbackConfig(rating_center=1.5, rating_scale=1.0, noise_std=0.5, quantize=True)
    # 1.5 + r*: 0.5 -> clipped to 1; 2.0 + 0.5 = 2.5 -> rounded half up to 3; 5.6 -> clipped to 5
    assert rating_map(fb, np.array([-1.0, 1.0, 4.1])).tolist() == [1.0, 3.0, 5.0]
    fb_c = FeedbackConfig(rating_center=1.5, rating_scale=2.0, noise_std=0.5, quantize=False)
    # 1.5 + 2·0.5 + 0.5·1.0 = 3.0; 1.5 + 2·0 + 0.5·(-1) = 1.0
    assert rating_map(fb_c, np.array([0.5, 0.0]), np.array([1.0, -1.0])).tolist() == [3.0, 1.0]


def test_ideal_tilt_adds_the_rating_over_lambda():
    fb = FeedbackConfig(rating_center=1.5, rating_scale=1.0, noise_std=0.0, quantize=False)
    base = UniformPolicy(3)
    tilt = IdealTilt(base, _Truth(), fb, lam=0.5)
    hist = np.full((2, 4), -1, np.int64)
    got = tilt.logits(hist, Context.of([2, 3]))
    ratings = np.clip(1.5 + np.array([[2.0, 1.0, 0.0], [3.0, 2.0, 1.0]]), 1, 5)  # [[3.5, 2.5, 1.5], [4.5, 3.5, 2.5]]
    np.testing.assert_allclose(got - base.logits(hist, Context.of([2, 3])), ratings / 0.5)
    with pytest.raises(ValueError, match="lam"):
        IdealTilt(base, _Truth(), fb, lam=0.0)


def test_noisy_tilt_draws_per_user_shared_by_every_lambda():
    fb = FeedbackConfig(rating_center=1.5, rating_scale=1.0, noise_std=1.0, quantize=False)
    base = UniformPolicy(3)
    hist = np.full((3, 4), -1, np.int64)
    a = IdealTilt(base, _Truth(), fb, lam=1.0, noise=SeedTree(7))
    b = IdealTilt(base, _Truth(), fb, lam=2.0, noise=SeedTree(7))
    la, lb = a.logits(hist, Context.of([1, 2, 3])), b.logits(hist, Context.of([1, 2, 3]))
    np.testing.assert_allclose(la, 2.0 * lb)  # the same noisy ratings, divided by λ = 1 and 2
    alone = a.logits(hist[:1], Context.of([3]))  # user 3 alone gets the row it got in a batch
    np.testing.assert_array_equal(alone[0], la[2])
    clean = IdealTilt(base, _Truth(), fb, lam=1.0).logits(hist, Context.of([1, 2, 3]))
    assert not np.allclose(la, clean)  # σ = 1 moves the ratings
    other = IdealTilt(base, _Truth(), fb, lam=1.0, noise=SeedTree(8)).logits(hist, Context.of([1, 2, 3]))
    assert not np.allclose(la, other)
