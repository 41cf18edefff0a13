"""RQ-VAE (Lee et al. 2022; TIGER, Rajput et al. 2023): an MLP auto-encoder whose latent is
quantised by L residual codebooks of K codes.

For an item's features x: z = enc(x); r_0 = z; at level l the nearest code e_l = C_l[c_l] to r_l
is chosen and r_{l+1} = r_l - e_l; z_q = sum_l e_l; the decoder sees z + sg(z_q - z) (straight-through:
the forward pass uses z_q, the gradient goes to z as if quantisation were the identity). The loss is

    L = ||x - dec(z + sg(z_q - z))||^2 + sum_l ( ||sg(r_l) - e_l||^2 + beta * ||r_l - sg(e_l)||^2 )

(the codebook term moves the codes, the commitment term, weighted by beta = 0.25, keeps the encoder
near them). The codebooks are initialised by residual k-means on the untrained encoder's latents.
Every random draw comes from torch Generators seeded from the SeedTree (no global RNG).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import skip_init

from ..posttrain.loop import Run, fit, param_group
from ..seeding import SeedTree


class RQVAE(nn.Module):
    """Encoder d -> hidden -> hidden -> latent, L codebooks (L, K, latent), mirrored decoder."""

    def __init__(self, n_features: int, hidden: int, latent: int, levels: int, k: int, beta: float,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.beta = beta

        def mlp(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(skip_init(nn.Linear, a, hidden), nn.ReLU(), skip_init(nn.Linear, hidden, hidden),
                                 nn.ReLU(), skip_init(nn.Linear, hidden, b))

        self.encoder = mlp(n_features, latent)
        self.decoder = mlp(latent, n_features)
        self.codebooks = nn.Parameter(torch.zeros(levels, k, latent))
        with torch.no_grad():  # PyTorch's default Linear init, drawn from our generator
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    bound = 1.0 / m.in_features**0.5
                    m.weight.uniform_(-bound, bound, generator=generator)
                    m.bias.uniform_(-bound, bound, generator=generator)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes (B, L), z_q (B, latent), codebook + commitment loss) for latents ``z``."""
        r, zq, loss, codes = z, torch.zeros_like(z), z.new_zeros(()), []
        for book in self.codebooks:
            dist = (r.detach() ** 2).sum(-1, keepdim=True) - 2 * r.detach() @ book.T + (book**2).sum(-1)
            c = dist.argmin(-1)
            e = book[c]
            loss = loss + ((r.detach() - e) ** 2).sum(-1).mean() + self.beta * ((r - e.detach()) ** 2).sum(-1).mean()
            zq = zq + e
            r = r - e.detach()
            codes.append(c)
        return torch.stack(codes, 1), zq, loss

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total loss, reconstruction loss, codes) of a batch."""
        z = self.encoder(x)
        codes, zq, q_loss = self.quantize(z)
        x_hat = self.decoder(z + (zq - z).detach())
        rec = ((x - x_hat) ** 2).sum(-1).mean()
        return rec + q_loss, rec, codes

    @torch.no_grad()
    def encode_items(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(codes (n, L) int64, reconstruction dec(z_q) (n, d)) of every item, in eval mode."""
        self.eval()
        codes, zq, _ = self.quantize(self.encoder(x))
        return codes.numpy().astype(np.int64), self.decoder(zq).numpy().astype(np.float64)


@dataclass(frozen=True)
class RQVAEResult:
    codes: np.ndarray  # (n, L) int64
    reconstruction: np.ndarray  # (n, d) float64: dec(z_q)
    losses: tuple[float, ...]  # mean training loss per epoch
    model: RQVAE


def train_rqvae(
    x: np.ndarray, levels: int, k: int, *, hidden: int, latent: int, beta: float, epochs: int, lr: float,
    batch_size: int, seed: SeedTree, kmeans: Callable[[np.ndarray], list[np.ndarray]],
) -> RQVAEResult:
    """Train an RQ-VAE on features ``x`` (n, d) by the one training loop (Adam, no decay);
    ``kmeans(latents)`` returns the L initial codebooks. Streams of ``seed``: ``init`` the weights,
    ``order`` the batch order. ``losses`` holds the mean loss over each epoch's steps."""
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    model = RQVAE(x.shape[1], hidden, latent, levels, k, beta, torch.Generator().manual_seed(seed.integer("init")))
    with torch.no_grad():
        model.codebooks.copy_(torch.as_tensor(np.stack(kmeans(model.encoder(xt).numpy().astype(np.float64))),
                                              dtype=torch.float32))
    n = len(xt)

    def batches(run: Run) -> Iterator[torch.Tensor]:
        perm = torch.randperm(n, generator=run.order)
        return (xt[perm[start : start + batch_size]] for start in range(0, n, batch_size))

    def loss(module: nn.Module, batch: torch.Tensor, run: Run) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, rec, _ = module(batch)
        return total, {"reconstruction": rec.detach()}

    # On the CPU: a catalogue-sized MLP, and its codes go straight to numpy.
    history = fit(model, batches, loss, epochs=epochs, lr=lr, seed=seed, groups=[param_group(model.parameters())],
                  device="cpu", optimizer=torch.optim.Adam, progress=False, desc="rq-vae", order_stream="order")
    codes, rec = model.encode_items(xt)
    return RQVAEResult(codes, rec, tuple(row["loss"] for row in history), model)


__all__ = ["RQVAE", "RQVAEResult", "train_rqvae"]
