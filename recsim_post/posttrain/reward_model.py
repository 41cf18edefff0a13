"""Reward models: what post-training methods believe a recommendation is worth.

A reward model predicts the *observed* reward (the 1-5 rating) of recommending item y after a
history x, for every item at once: ``member_scores(inputs)`` maps left-padded windows ``(B, L)`` to
``(E, B, L, n_items)`` -- one prediction per ensemble member, for the next item after every
position. Methods use the member mean as R̂(x, y) and the member spread as its uncertainty.

Learned from public logs only (it lives on the training side of the boundary); how well it tracks
the *true* reward is for evaluation to find out.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class RewardModel(Protocol):
    """Predicted observed reward of every item after every position of a batch of windows."""

    n_members: int
    n_items: int

    def member_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs`` (B, L) int64 item ids, PAD = -1 on the left -> (E, B, L, n_items) float32.

        Runs without gradients, on the device of ``inputs``.
        """
        ...


def mean_std(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ensemble mean and (population) standard deviation over members: (E, ...) -> (...), (...)."""
    return scores.mean(dim=0), scores.std(dim=0, unbiased=False)


class TableRewardModel:
    """R̂(x, y) = table[y] for every history x: a known reward, for tests and tiny bandit worlds.

    ``member_noise`` gives each of ``n_members`` members a fixed offset per item (drawn from
    ``generator``), so the ensemble has a spread to build confidence intervals from.
    """

    def __init__(
        self,
        table: torch.Tensor,
        n_members: int = 5,
        member_noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        table = torch.as_tensor(table, dtype=torch.float32)
        noise = torch.randn((n_members, len(table)), generator=generator) if member_noise > 0 else torch.zeros(n_members, len(table))
        self.members = table[None, :] + member_noise * noise
        self.n_members, self.n_items = n_members, len(table)

    @torch.no_grad()
    def member_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        B, L = inputs.shape
        m = self.members.to(inputs.device)
        return m[:, None, None, :].expand(self.n_members, B, L, self.n_items)


__all__ = ["RewardModel", "TableRewardModel", "mean_std"]
