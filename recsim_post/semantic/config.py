"""The tokenizer's knobs, and the codebook size chosen from the catalogue when K = 0 (auto)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import Config, knob
from ..errors import ConfigError

MAX_LEVELS = 8
MAX_CODEBOOK = 4096
SEED_MAX = 2**32 - 1  # the world's seed range (world.config.SEED_MAX; training code may not import the world)


@dataclass(frozen=True)
class TokenizerConfig(Config):
    """How item features become semantic IDs: L levels of K codes, then a disambiguation token."""

    method: Literal["rkmeans", "rqvae"] = knob(
        "rkmeans", "rkmeans: L rounds of k-means, each on the residuals the previous left (fast); "
        "rqvae: an MLP auto-encoder whose latent is quantised by L residual codebooks")
    levels: int = knob(3, "L, the number of semantic code levels (a last disambiguation token comes on top)",
                       ge=1, le=MAX_LEVELS)
    codebook_size: int = knob(0, "K, codes per level; 0 = auto: the smallest power of two with K^L >= 4 n_items "
                                 "(at least 2, at most n_items and 4096)", ge=0, le=MAX_CODEBOOK)
    seed: int = knob(0, "root seed of the tokenizer's random streams (k-means inits, RQ-VAE weights and batches)",
                     ge=0, le=SEED_MAX)
    standardize: bool = knob(True, "scale each feature to zero mean and unit variance before tokenizing")
    genre_onehot: bool = knob(False, "append the public genre as a one-hot block to the float features")
    kmeans_n_init: int = knob(3, "k-means restarts per level (the best inertia is kept)", ge=1, le=100)
    kmeans_max_iter: int = knob(300, "k-means iterations per restart at most", ge=1, le=10_000)
    threads: int = knob(0, "CPU threads for k-means and the RQ-VAE; 0 = auto: 1 below 50,000 items (small problems "
                           "run fastest on one thread, and never oversubscribe a shared machine), else all", ge=0, le=1024)
    rqvae_epochs: int = knob(300, "RQ-VAE training epochs", ge=1, le=100_000)
    rqvae_lr: float = knob(3e-3, "RQ-VAE Adam learning rate", gt=0, le=1)
    rqvae_hidden: int = knob(64, "width of the RQ-VAE encoder's and decoder's hidden layers", ge=1, le=65_536)
    rqvae_latent_dim: int = knob(16, "dimension of the RQ-VAE latent the codebooks quantise", ge=1, le=4096)
    rqvae_beta: float = knob(0.25, "commitment weight beta: beta * ||r - sg(e)||^2 pulls the encoder "
                                   "towards its codes", ge=0, le=100)
    rqvae_batch_size: int = knob(256, "RQ-VAE mini-batch size (items per step)", ge=1, le=1_000_000)

    def check(self) -> None:
        if self.codebook_size == 1:
            raise ConfigError(f"codebook_size = 1 is out of range: must be 0 (auto) or >= 2 and <= {MAX_CODEBOOK}")


SLACK = 4
"""Auto K leaves room for SLACK times the catalogue in the K^L code combinations."""

AUTO_THREADS_BELOW = 50_000
"""threads = 0 runs catalogues smaller than this on one thread."""


def auto_codebook_size(n_items: int, levels: int) -> int:
    """K for ``codebook_size = 0``: the smallest power of two with K^L >= 4 n_items; at least 2, at
    most n_items and 4096. K^L = n_items would be enough in principle, but k-means codes are not
    spread evenly: on quickstart (500 items, L = 3) K = 8 leaves 63 % of the items sharing their
    three codes with another, K = 16 (the auto choice) 7 %, K = 32 1 %. The items that still
    collide are told apart by the disambiguation token."""
    k = 1
    while k**levels < SLACK * n_items:
        k *= 2
    return max(2, min(k, n_items, MAX_CODEBOOK))


def resolve_threads(cfg: TokenizerConfig, n_items: int) -> int | None:
    """Threads to use: ``cfg.threads``, or for 0 one thread below AUTO_THREADS_BELOW items, else
    None (the libraries' default, every core)."""
    if cfg.threads:
        return cfg.threads
    return 1 if n_items < AUTO_THREADS_BELOW else None


def resolve_codebook_size(cfg: TokenizerConfig, n_items: int) -> int:
    """The codebook size ``cfg`` asks for on a catalogue of ``n_items``; ConfigError when K exceeds it."""
    if n_items < 2:
        raise ConfigError(f"the catalogue has {n_items} item{'s' if n_items != 1 else ''}: tokenizing needs at least 2")
    if cfg.codebook_size == 0:
        return auto_codebook_size(n_items, cfg.levels)
    if cfg.codebook_size > n_items:
        raise ConfigError(
            f"codebook_size = {cfg.codebook_size} is larger than the catalogue ({n_items} items): "
            f"must be >= 2 and <= {n_items}, or 0 (auto)"
        )
    return cfg.codebook_size


__all__ = ["MAX_CODEBOOK", "MAX_LEVELS", "TokenizerConfig", "auto_codebook_size", "resolve_codebook_size", "resolve_threads"]
