"""Evaluation of semantic IDs against the truth: how well the level-1 codes recover the true genres.

Training never sees this number. (In these logs the genre is also a public column of
``items.parquet``; the truth read here is ``sealed/items.parquet``'s genre, the world's own label.
The default tokenizer does not use the public genre either, ``genre_onehot = false``.)

NMI is scikit-learn's ``normalized_mutual_info_score`` (arithmetic normalisation): 1 when the codes
determine the genre and vice versa, 0 when they are independent. With K codes and G genres, codes
that split each genre into K / G pure clusters score below 1 (the codes hold more information
than the genre), so read it beside the codebook size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import LogError
from ..logs.check import read_manifest, sha256_file
from ..logs.public import read_parquet


def genre_nmi(codes: np.ndarray, genres: np.ndarray) -> float:
    """Normalised mutual information between a code per item and its genre."""
    from sklearn.metrics import normalized_mutual_info_score

    codes, genres = np.asarray(codes).reshape(-1), np.asarray(genres).reshape(-1)
    if len(codes) != len(genres):
        raise ValueError(f"{len(codes)} codes for {len(genres)} genres")
    return float(normalized_mutual_info_score(genres, codes))


def true_genres(folder: str | Path) -> np.ndarray:
    """The true genre of every item (item-id order) from ``sealed/items.parquet``, checked against
    the manifest's SHA-256; a one-line LogError when it is missing or damaged."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    path = folder / "sealed" / "items.parquet"
    if not path.is_file():
        raise LogError(f"{folder} has no sealed/items.parquet: the true genres are not there")
    if sha256_file(path) != manifest["sha256"]["sealed/items.parquet"]:
        raise LogError(f"{path} does not match the sha256 in manifest.json: the file is damaged or was changed")
    items = read_parquet(path).sort_values("item_id", kind="stable")
    if len(items) != manifest["n_items"] or "genre" not in items.columns:
        raise LogError(f"{path} is corrupt: expected one row per item with a genre column")
    return items["genre"].to_numpy(np.int64)


def semantic_truth_report(codes: np.ndarray, folder: str | Path) -> dict[str, float]:
    """``{"nmi_genre_level1": NMI(level-1 codes, true genre)}`` for a log folder with ``sealed/``;
    ``codes`` is the (n_items, L + 1) matrix of :class:`~recsim_post.semantic.SemanticIds`."""
    return {"nmi_genre_level1": genre_nmi(np.asarray(codes)[:, 0], true_genres(folder))}


__all__ = ["genre_nmi", "semantic_truth_report", "true_genres"]
