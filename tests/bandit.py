"""The tiny bandit world of the learning tests, whose optimum is known.

20 items: items 0..9 are good (always rated 5), items 10..19 bad (always rated 1, or 1 and 5 plus
Gaussian noise). Users click items uniformly at random, so behaviour cloning is indifferent between
the two halves (about half its mass on the good items); a method that learns from the rewards must
move mass onto the good half. Mass is measured on fresh random histories, not the training clicks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from recsim_post.models import SASRecConfig, SequencePolicy
from recsim_post.posttrain import AgentConfig, BCConfig, TrainConfig, pretrain
from recsim_post.posttrain.reward_model import TableRewardModel
from recsim_post.seeding import SeedTree

from .conftest import clicks_frame

N_ITEMS = 20
GOOD = np.arange(N_ITEMS) < N_ITEMS // 2
"""Items 0..9."""
TABLE = torch.where(torch.from_numpy(GOOD), 5.0, 1.0)
"""The expected rating of every item: 5 for a good one, 1 for a bad one (float32)."""


@dataclass(frozen=True)
class Bandit:
    clicks: pd.DataFrame
    """The training clicks, in history order, rated 5 (good item) or 1 (bad item), plus noise."""
    histories: np.ndarray
    """(n_hist, hist_len) fresh random item histories to measure a policy's mass on."""


def draw_bandit(
    n_users: int, n_clicks: int, *, hist_len: int = 8, n_hist: int = 200, noise: float = 0.0,
    distinct: bool = False, seed: int = 0,
) -> Bandit:
    """``n_clicks`` uniform clicks per user (``distinct``: without repeats within a user); ratings
    5 or 1, plus N(0, noise²); then the histories, from the same seeded stream."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), n_clicks)
    if distinct:
        items = np.concatenate([rng.permutation(N_ITEMS)[:n_clicks] for _ in range(n_users)])
    else:
        items = rng.integers(0, N_ITEMS, len(users))
    ratings = np.where(GOOD[items], 5.0, 1.0)
    if noise:
        ratings = ratings + noise * rng.standard_normal(len(users))
    histories = rng.integers(0, N_ITEMS, (n_hist, hist_len))
    return Bandit(clicks_frame(users, items, ratings), histories)


def reference(clicks: pd.DataFrame, model: SASRecConfig, epochs: int, batch_size: int) -> SequencePolicy:
    """π_ref: ``model`` pre-trained briefly by BC on ``clicks`` (lr 3e-3, CPU, seed 0)."""
    agent = AgentConfig(
        name="ref", model=model, method=BCConfig(),
        pretrain=TrainConfig(epochs=epochs, batch_size=batch_size, lr=3e-3, device="cpu"),
    )
    return pretrain(clicks, N_ITEMS, agent, SeedTree(0), progress=False)


def good_mass(policy: SequencePolicy, histories: np.ndarray) -> float:
    """The policy's mean probability mass on the good items, over ``histories``."""
    p = torch.softmax(torch.from_numpy(policy.logits(histories)), dim=-1).numpy()
    return float(p[:, GOOD].sum(axis=1).mean())


def table_reward_model(n_members: int, member_noise: float, seed: int) -> TableRewardModel:
    """A reward ensemble that knows :data:`TABLE` up to a per-member offset of scale ``member_noise``."""
    return TableRewardModel(TABLE, n_members=n_members, member_noise=member_noise,
                            generator=torch.Generator().manual_seed(seed))
