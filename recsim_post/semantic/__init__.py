"""Semantic IDs: each item as a short sequence of discrete codes computed from its public features
(residual k-means or an RQ-VAE), plus a disambiguation token that makes every ID unique.

Training side: this package reads only public data (item features, or a given embedding matrix)
and never imports the world, the sealed tables or the metrics (tests/test_boundary.py).
"""

from .config import TokenizerConfig, auto_codebook_size, resolve_codebook_size
from .ids import FILE_NAME, SemanticIds, features_sha256, read_semantic_ids
from .report import (
    TokenizerReport, codebook_usage, collision_rate, perplexity, reconstruction_error, tokenizer_report,
)
from .tokenizer import (
    TokenizerFit, check_ids_match_logs, default_tokenizer, disambiguate, item_features, policy_item_embeddings, residual_kmeans, standardize, tokenize,
    tokenize_logs,
)

__all__ = [
    "FILE_NAME", "SemanticIds", "TokenizerConfig", "TokenizerFit", "TokenizerReport", "auto_codebook_size",
    "codebook_usage", "check_ids_match_logs", "collision_rate", "default_tokenizer", "disambiguate", "features_sha256", "item_features", "perplexity",
    "policy_item_embeddings", "read_semantic_ids", "reconstruction_error", "residual_kmeans",
    "resolve_codebook_size", "standardize", "tokenize", "tokenize_logs", "tokenizer_report",
]
