"""Item tokenizers: public item features (or given item embeddings) -> semantic IDs.

* ``rkmeans`` (default): residual k-means. Level 1 clusters the features into K groups; every item
  is replaced by its residual (features minus its centroid) and level 2 clusters the residuals, and
  so on for L levels. The sum of an item's L centroids is its reconstruction. k-means is
  scikit-learn's ``KMeans`` (k-means++ seeding, Lloyd iterations, ``n_init`` restarts).
* ``rqvae``: an RQ-VAE (:mod:`.rqvae`), trained with torch on CPU.

Then a last **disambiguation token**: the items that share all L codes get 0, 1, 2, ... in item-id
order, so every item's ID (L codes + token) is unique. Everything is deterministic for a seed:
``SeedTree(cfg.seed).child("semantic-ids")`` gives each k-means level and the RQ-VAE's weights and
batch order their own stream (integer seeds for scikit-learn, torch Generators for torch).
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..seeding import SeedTree
from .config import TokenizerConfig, resolve_codebook_size, resolve_threads
from .ids import SemanticIds, features_sha256


def item_features(items: pd.DataFrame, cfg: TokenizerConfig, n_genres: int | None = None) -> np.ndarray:
    """The public features of ``items`` (``items.parquet``) as an (n_items, d) float64 matrix in
    item-id order: ``f0 .. f{k-1}``, then, with ``cfg.genre_onehot``, a one-hot block of ``genre``
    (``n_genres`` columns; default: the largest genre + 1)."""
    items = items.sort_values("item_id", kind="stable")
    cols = sorted((c for c in items.columns if c.startswith("f") and c[1:].isdigit()), key=lambda c: int(c[1:]))
    blocks = [items[cols].to_numpy(np.float64)] if cols else []
    if cfg.genre_onehot:
        if "genre" not in items.columns:
            raise ConfigError("genre_onehot = true but items.parquet has no genre column")
        g = items["genre"].to_numpy(np.int64)
        width = int(n_genres) if n_genres is not None else int(g.max()) + 1 if len(g) else 0
        blocks.append(np.eye(width)[g])
    if not blocks:
        raise ConfigError("items.parquet has no feature columns f0, f1, ...: nothing to tokenize "
                          "(set genre_onehot = true, or pass item embeddings)")
    return np.concatenate(blocks, axis=1)


def standardize(x: np.ndarray) -> np.ndarray:
    """Each column to zero mean and unit variance (a constant column to zeros)."""
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)


def _kmeans_seed(tree: SeedTree, level: int) -> int:
    return tree.integer(f"kmeans-{level}") % 2**32  # scikit-learn takes seeds below 2^32


def residual_kmeans(
    x: np.ndarray, levels: int, k: int, tree: SeedTree, n_init: int = 3, max_iter: int = 300,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(codes (n, L) int64, the L codebooks (K, d)): level l clusters the residuals left by levels
    < l. Fewer distinct residuals than K (duplicated items) is fine: some codes stay unused."""
    from sklearn.cluster import KMeans

    r = np.array(x, dtype=np.float64, copy=True)
    codes, books = np.zeros((len(r), levels), np.int64), []
    for level in range(levels):
        km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=_kmeans_seed(tree, level))
        with warnings.catch_warnings():  # "Number of distinct clusters found smaller than n_clusters"
            warnings.simplefilter("ignore")
            labels = km.fit_predict(r)
        centers = km.cluster_centers_.astype(np.float64)
        codes[:, level] = labels
        books.append(centers)
        r -= centers[labels]
    return codes, books


def disambiguate(prefixes: np.ndarray) -> np.ndarray:
    """The last token: items sharing all their L codes get 0, 1, 2, ... in item-id (row) order."""
    n = len(prefixes)
    if n == 0:
        return np.zeros(0, np.int64)
    _, group = np.unique(prefixes, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")  # rows of a group stay in id order
    g = group[order]
    starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, n]))
    token = np.empty(n, np.int64)
    token[order] = np.arange(n) - first
    return token


@dataclass(frozen=True, eq=False)
class TokenizerFit:
    """The semantic IDs, and what the report needs: the (standardised) features that were
    tokenized, their reconstruction from the codes, and the RQ-VAE's loss per epoch."""

    ids: SemanticIds
    features: np.ndarray  # (n, d) what was tokenized, after standardisation
    reconstruction: np.ndarray  # (n, d) sum of the chosen centroids (rkmeans) or dec(z_q) (rqvae)
    codebooks: tuple[np.ndarray, ...]  # L arrays (K, d) in feature space (rkmeans) or latent space (rqvae)
    losses: tuple[float, ...] = ()  # rqvae: mean training loss per epoch


def tokenize(
    features: np.ndarray, cfg: TokenizerConfig | None = None, *, items_sha256: str = "", source: str = "features",
) -> TokenizerFit:
    """Semantic IDs of the items whose rows are ``features`` (n_items, d), item i in row i."""
    cfg = cfg or TokenizerConfig()
    raw = np.asarray(features, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] < 1:
        raise ConfigError(f"item features must be a matrix (n_items, d) with d >= 1, not shape {raw.shape}")
    if not np.isfinite(raw).all():
        raise ConfigError("item features must be finite numbers (found NaN or infinity)")
    k = resolve_codebook_size(cfg, len(raw))
    x = standardize(raw) if cfg.standardize else raw.copy()
    tree = SeedTree(cfg.seed).child("semantic-ids")
    with _threads(resolve_threads(cfg, len(raw)), torch_too=cfg.method == "rqvae"):
        codes, rec, books, losses = _fit(x, cfg, k, tree)
    token = disambiguate(codes)
    sizes = (k,) * cfg.levels + (int(token.max()) + 1,)
    ids = SemanticIds(np.column_stack([codes, token]), sizes, items_sha256, features_sha256(raw), source, cfg)
    return TokenizerFit(ids, x, np.asarray(rec, dtype=np.float64), tuple(books), losses)


@contextlib.contextmanager
def _threads(n: int | None, torch_too: bool) -> Iterator[None]:
    """At most ``n`` threads in scikit-learn's (OpenMP, BLAS) and, with ``torch_too``, torch's
    pools for the duration (None: as they are). Restored afterwards."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    torch = importlib.import_module("torch") if torch_too else None
    before = torch.get_num_threads() if torch is not None else None
    try:
        with threadpool_limits(limits=n):
            if torch is not None:
                torch.set_num_threads(n)
            yield
    finally:
        if torch is not None and before is not None:
            torch.set_num_threads(before)


def _fit(x: np.ndarray, cfg: TokenizerConfig, k: int, tree: SeedTree) -> tuple[np.ndarray, np.ndarray, list, tuple]:
    losses: tuple[float, ...] = ()
    if cfg.method == "rkmeans":
        codes, books = residual_kmeans(x, cfg.levels, k, tree, cfg.kmeans_n_init, cfg.kmeans_max_iter)
        rec = sum(book[codes[:, level]] for level, book in enumerate(books))
    elif cfg.method == "rqvae":
        from .rqvae import train_rqvae

        sub = tree.child("rqvae")
        result = train_rqvae(
            x, cfg.levels, k, hidden=cfg.rqvae_hidden, latent=cfg.rqvae_latent_dim, beta=cfg.rqvae_beta,
            epochs=cfg.rqvae_epochs, lr=cfg.rqvae_lr, batch_size=cfg.rqvae_batch_size,
            seed=sub,
            kmeans=lambda z: residual_kmeans(z, cfg.levels, k, sub.child("codebook-init"), cfg.kmeans_n_init,
                                             cfg.kmeans_max_iter)[1],
        )
        codes, rec, losses = result.codes, result.reconstruction, result.losses
        books = [b.detach().numpy().astype(np.float64) for b in result.model.codebooks]
    else:  # pragma: no cover - the config refuses other methods
        raise ConfigError(f"method = {cfg.method!r} is not allowed: must be one of 'rkmeans', 'rqvae'")
    return codes, rec, books, losses


def tokenize_logs(logs: Any, cfg: TokenizerConfig | None = None, embeddings: np.ndarray | None = None) -> TokenizerFit:
    """Semantic IDs of a :class:`~recsim_post.logs.public.PublicLogs`' catalogue: from its public
    item features, or from ``embeddings`` (n_items, d) given instead (e.g. π_ref's item embedding
    matrix, :func:`policy_item_embeddings`). The IDs carry the hash of the logs' items.parquet."""
    cfg = cfg or TokenizerConfig()
    # logs simulated in memory have no file hashes yet: "" (the feature hash still fingerprints them)
    sha = str(logs.manifest.get("sha256", {}).get("items.parquet", ""))
    if embeddings is not None:
        emb = np.asarray(embeddings)
        if emb.ndim != 2 or len(emb) != logs.n_items:
            raise ConfigError(f"item embeddings must have one row per item ({logs.n_items}), not shape {emb.shape}")
        return tokenize(emb, cfg, items_sha256=sha, source="embeddings")
    n_genres = logs.manifest.get("scenario", {}).get("catalog", {}).get("n_genres")
    return tokenize(item_features(logs.items, cfg, n_genres), cfg, items_sha256=sha, source="features")


def check_ids_match_logs(ids: SemanticIds, logs: Any, what: str) -> None:
    """A one-line LogError when ``ids`` (computed from item features) do not come from the items
    of ``logs``: their feature fingerprint must match the logs' features under the same config."""
    from ..errors import LogError

    if ids.n_items != logs.n_items:
        raise LogError(f"{what} has semantic IDs of {ids.n_items} items but the logs have {logs.n_items}")
    if ids.source != "features":
        return
    n_genres = logs.manifest.get("scenario", {}).get("catalog", {}).get("n_genres")
    try:
        feats = item_features(logs.items, ids.config, n_genres)
    except ConfigError:
        feats = None
    if feats is None or features_sha256(feats) != ids.features_sha256:
        raise LogError(f"{what} was trained on semantic IDs of other items (their features differ from these "
                       "logs' items.parquet): it does not belong to these logs")


def default_tokenizer(tree: SeedTree) -> TokenizerConfig:
    """The tokenizer a run uses when its logs carry no semantic IDs (a token recipe in ``demo``,
    ``compare``, ``sweep``, or ``train`` without ``semantic_ids.parquet``): the default config,
    seeded from the run's seed tree (scikit-learn takes seeds below 2^32)."""
    return TokenizerConfig(seed=tree.integer("semantic-ids") % 2**32)


def policy_item_embeddings(policy: Any) -> np.ndarray:
    """The item embedding matrix (n_items, dim) of a :class:`~recsim_post.models.SequencePolicy`
    (SASRec or HSTU; row 0 of the model's table is padding and is dropped)."""
    weight = policy.model.item_emb.weight
    return weight[1:].detach().cpu().double().numpy()


__all__ = [
    "TokenizerFit", "check_ids_match_logs", "default_tokenizer", "disambiguate", "item_features", "policy_item_embeddings", "residual_kmeans", "standardize",
    "tokenize", "tokenize_logs",
]
