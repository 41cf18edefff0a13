r"""Sampled softmax with the logQ correction: next-item cross-entropy without the catalogue-wide softmax.

The full softmax scores every item at every position: ``(B, L, n_items)`` logits, 2.6 GB of float32
for a batch of 128 windows of 50 clicks at 10^5 items (and their log-softmax and gradient as much
again each). The
sampled softmax scores each real position's target and ``N`` negatives shared by the whole batch,
``j_1 … j_N`` drawn with replacement from a proposal ``Q``. With ``o_j = <h_t, e_j>`` the logit of
item ``j`` at position ``t`` and ``y`` its target, the loss of the position is::

    ℓ_t = −o_y + log( exp(o_y) + Σ_{k : j_k ≠ y} exp(o_{j_k} − log(N·Q(j_k))) )

The sum is an unbiased estimate of ``Σ_{j ≠ y} exp(o_j)`` (each draw lands on ``j`` with probability
``Q(j)`` and is weighted by ``1/(N·Q(j))``), so the argument of the log estimates the full softmax's
normaliser ``Z = Σ_j exp(o_j)`` and ℓ_t tends to the full cross-entropy ``−o_y + log Z`` as N grows
(the log of an estimate is biased low by O(1/N): Jensen). Two choices make it so:

* the target is counted once, exactly, with its own logit ``o_y`` -- negatives that happen to be the
  target ("accidental hits") are masked out, since its mass is already in the sum. (TensorFlow's
  ``sampled_softmax_loss`` gives the target ``o_y − log(N·Q(y))`` as well; its loss is then
  ``−o_y + log(exp(o_y) + N·Q(y)·Σ_k …)``, the full cross-entropy up to a constant only where the
  target's own term is negligible -- large catalogues -- and biased where it is not: a small
  catalogue, a popular item.)
* the correction ``− log(N·Q(j))``: without it the sampled items are pushed down in proportion to
  how often Q draws them, and the model learns roughly ``p(j)/Q(j)`` instead of ``p(j)``
  (``tests/test_sampled_softmax.py`` measures both).

The proposal is ``Q(j) ∝ (c_j + 1)^α`` with ``c_j`` the clicks on item ``j`` as targets of the
training windows: α = 1 is the smoothed unigram, α = 0 uniform, 0.75 (word2vec's) in between. The
``+1`` keeps every item drawable, so an item never clicked is still pushed down as the full softmax
would push it. Draws come from a ``torch.Generator`` seeded from the run's SeedTree (no global RNG).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

ItemVectors = Callable[[torch.Tensor], torch.Tensor]
"""``item_vectors(ids (K,)) -> (K, dim)``: the output-layer vectors, so ``o_j = <h, item_vectors(j)>``."""


class Proposal:
    """The negatives' proposal ``Q(j) ∝ (counts_j + 1)^power`` over ``len(counts)`` items, and its draws."""

    def __init__(self, counts: np.ndarray, power: float) -> None:
        counts = np.asarray(counts, dtype=np.float64)
        if counts.ndim != 1 or len(counts) == 0 or (counts < 0).any():
            raise ValueError("counts must be a non-empty 1-d array of non-negative counts")
        weights = (counts + 1.0) ** power
        q = weights / weights.sum()
        self.log_q = torch.from_numpy(np.log(q))
        """``log Q(j)`` float64 ``(n_items,)`` on CPU."""
        # The CDF in float64: a float32 one loses the rarest items' mass at 10^6 items.
        self.cdf = torch.from_numpy(np.cumsum(q))

    @property
    def n_items(self) -> int:
        return len(self.log_q)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` item ids int64 ``(n,)`` drawn with replacement from Q (CPU ``generator``), by inverse CDF:
        O(n log n_items) per draw where ``torch.multinomial`` would sum the whole catalogue again."""
        u = torch.rand(n, generator=generator, dtype=torch.float64) * self.cdf[-1]
        return torch.searchsorted(self.cdf, u, right=True).clamp_(max=self.n_items - 1)


def target_counts(targets: np.ndarray, mask: np.ndarray, n_items: int) -> np.ndarray:
    """Clicks on each item as a target of the training windows (``targets``, ``mask`` ``(N, L)``)."""
    return np.bincount(targets[mask], minlength=n_items)


def sampled_softmax_nll(
    h: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    log_q: torch.Tensor,
    item_vectors: ItemVectors,
    correct: bool = True,
) -> torch.Tensor:
    """ℓ_t of the module docstring for each row: ``h`` ``(P, dim)`` hidden states of real positions,
    ``targets`` ``(P,)`` their next items, ``negatives`` ``(N,)`` item ids shared by every row,
    ``log_q`` ``(n_items,)`` the proposal's log-probabilities. ``correct=False`` drops the logQ
    correction (for tests that show its bias). Returns float32 ``(P,)``.

    Logits are computed in ``h``'s dtype (bf16 under autocast on CUDA) and the loss in float32.
    """
    n = len(negatives)
    pos = (h * item_vectors(targets)).sum(-1).float()  # (P,)
    neg = (h @ item_vectors(negatives).T).float()  # (P, N)
    if correct:
        neg = neg - (log_q[negatives] + np.log(n)).to(neg)
    neg = neg.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    return torch.logsumexp(torch.cat([pos[:, None], neg], dim=1), dim=1) - pos


__all__ = ["ItemVectors", "Proposal", "sampled_softmax_nll", "target_counts"]
