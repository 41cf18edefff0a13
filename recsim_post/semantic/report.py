"""How good a set of semantic IDs is, from public data only.

* **collision rate**: the share of items whose L semantic codes are shared with another item
  (those items are told apart only by the disambiguation token);
* **codebook usage** per level: the share of the K codes used, and the perplexity exp(H) of the
  code distribution (H in nats): K when every code is used equally often, 1 when one code takes all;
* **reconstruction error**: the mean over items of ||x - x_hat||^2, x the (standardised) features
  and x_hat the sum of the item's L centroids (rkmeans) or the RQ-VAE decoder's output; the
  relative error divides it by the features' total variance (mean ||x - mean x||^2), so 0 is
  perfect and 1 is no better than the mean item.

How well the codes recover the true genres (NMI) is evaluation: :mod:`recsim_post.metrics.semantic`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .ids import SemanticIds
from .tokenizer import TokenizerFit


def collision_rate(prefixes: np.ndarray) -> float:
    """The share of rows whose codes equal another row's."""
    if len(prefixes) == 0:
        return 0.0
    _, group, counts = np.unique(prefixes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[group.reshape(-1)] > 1).mean())


def perplexity(codes: np.ndarray) -> float:
    """exp of the entropy (nats) of the empirical distribution of ``codes``."""
    if len(codes) == 0:
        return 0.0
    p = np.bincount(codes) / len(codes)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def codebook_usage(ids: SemanticIds) -> pd.DataFrame:
    """One row per column of the IDs (levels 1 .. L, then the disambiguation token ``dis``): codebook
    size, codes used, share used, perplexity."""
    rows = []
    for j, size in enumerate(ids.codebook_sizes):
        col = ids.codes[:, j]
        used = len(np.unique(col))
        rows.append({"level": str(j + 1) if j < ids.levels else "dis", "codes": size, "used": used,
                     "usage": used / size, "perplexity": perplexity(col)})
    return pd.DataFrame(rows)


def reconstruction_error(features: np.ndarray, reconstruction: np.ndarray) -> float:
    """Mean over items of the squared distance between features and reconstruction."""
    return float(((features - reconstruction) ** 2).sum(axis=1).mean()) if len(features) else 0.0


@dataclass(frozen=True)
class TokenizerReport:
    n_items: int
    levels: int
    collision_rate: float
    max_collisions: int  # the largest group of items sharing their L codes (= the token's codebook size)
    reconstruction_mse: float
    relative_error: float
    usage: pd.DataFrame

    def summary(self) -> dict[str, float | int]:
        return {"n_items": self.n_items, "levels": self.levels, "collision_rate": self.collision_rate,
                "max_collisions": self.max_collisions, "reconstruction_mse": self.reconstruction_mse,
                "relative_error": self.relative_error}


def tokenizer_report(fit: TokenizerFit) -> TokenizerReport:
    ids, x = fit.ids, fit.features
    mse = reconstruction_error(x, fit.reconstruction)
    total = reconstruction_error(x, np.broadcast_to(x.mean(axis=0), x.shape)) if len(x) else 0.0
    return TokenizerReport(
        n_items=ids.n_items, levels=ids.levels, collision_rate=collision_rate(ids.prefixes),
        max_collisions=ids.codebook_sizes[-1], reconstruction_mse=mse,
        relative_error=mse / total if total > 0 else 0.0, usage=codebook_usage(ids),
    )


__all__ = ["TokenizerReport", "codebook_usage", "collision_rate", "perplexity", "reconstruction_error",
           "tokenizer_report"]
