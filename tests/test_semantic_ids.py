"""Semantic IDs: the tokenizers (residual k-means, RQ-VAE), the disambiguation token, the file
beside the logs and its checks, the report, NMI against the true genres, and `recsim-post tokenize`."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsim_post.config import from_dict
from recsim_post.errors import ConfigError, LogError
from recsim_post.logs.public import read_public
from recsim_post.metrics.semantic import genre_nmi, semantic_truth_report, true_genres
from recsim_post.semantic import (
    FILE_NAME, SemanticIds, TokenizerConfig, auto_codebook_size, codebook_usage, collision_rate, disambiguate,
    item_features, perplexity, read_semantic_ids, resolve_codebook_size, tokenize, tokenize_logs, tokenizer_report,
)

from .conftest import run_cli, tiny_scenario


def blobs(n_clusters: int = 4, per: int = 8, d: int = 3, spread: float = 0.01, seed: int = 0):  # noqa: ANN201
    """Well-separated clusters: (features, cluster of each row); rows are shuffled."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, d)) * 10
    labels = rng.permutation(np.repeat(np.arange(n_clusters), per))
    return centers[labels] + spread * rng.normal(size=(len(labels), d)), labels


FAST_RQVAE = dict(method="rqvae", rqvae_epochs=60, rqvae_lr=1e-2, rqvae_hidden=16, rqvae_latent_dim=4, rqvae_batch_size=32,
                  kmeans_n_init=1)


# --------------------------------------------------------------------------------------------- #
# the tokenizers
# --------------------------------------------------------------------------------------------- #


def test_four_separated_clusters_at_one_level_are_recovered_exactly():
    """L = 1, K = 4 on four tight clusters: the codes are the clusters up to renaming (NMI = 1), each
    item's reconstruction is its cluster's mean, and the disambiguation token numbers the members of
    each cluster 0, 1, 2, ... in item-id order."""
    x, labels = blobs()
    fit = tokenize(x, TokenizerConfig(levels=1, codebook_size=4, standardize=False))
    codes = fit.ids.codes
    assert codes.shape == (32, 2) and codes.dtype == np.int64
    assert len(set(zip(codes[:, 0], labels))) == 4  # a bijection between codes and clusters
    assert genre_nmi(codes[:, 0], labels) == pytest.approx(1.0)
    for c in range(4):
        members = np.flatnonzero(codes[:, 0] == c)
        assert np.array_equal(codes[members, 1], np.arange(len(members)))  # item-id order
        np.testing.assert_allclose(fit.reconstruction[members], np.broadcast_to(x[members].mean(0), (8, 3)), atol=1e-9)
    assert fit.ids.codebook_sizes == (4, 8)
    report = tokenizer_report(fit)
    assert report.collision_rate == 1.0 and report.max_collisions == 8
    assert report.reconstruction_mse == pytest.approx(((x - fit.reconstruction) ** 2).sum(1).mean())
    assert report.relative_error < 1e-5
    assert report.usage["usage"].tolist() == [1.0, 1.0] and report.usage["perplexity"].iloc[0] == pytest.approx(4.0)


def test_residual_levels_split_what_the_first_level_left():
    """Two levels of two codes on four clusters placed at (+-10, +-1): level 1 splits the far axis,
    level 2 the near one, so every cluster gets its own pair of codes."""
    rng = np.random.default_rng(1)
    corners = np.array([[10, 1], [10, -1], [-10, 1], [-10, -1]], float)
    labels = np.repeat(np.arange(4), 5)
    x = corners[labels] + 0.01 * rng.normal(size=(20, 2))
    fit = tokenize(x, TokenizerConfig(levels=2, codebook_size=2, standardize=False))
    pairs = [tuple(p) for p in fit.ids.prefixes]
    assert len(set(pairs)) == 4 and len(set(zip(pairs, labels))) == 4
    assert genre_nmi(fit.ids.codes[:, 0], corners[labels, 0] > 0) == pytest.approx(1.0)
    assert tokenizer_report(fit).relative_error < 1e-3


def test_the_same_seed_gives_the_same_ids_and_another_seed_may_not():
    x = np.random.default_rng(3).normal(size=(120, 5))
    cfg = TokenizerConfig(levels=3, codebook_size=4, seed=7)
    a, b = tokenize(x, cfg), tokenize(x, cfg)
    assert np.array_equal(a.ids.codes, b.ids.codes)
    assert np.array_equal(a.reconstruction, b.reconstruction)
    others = [tokenize(x, TokenizerConfig(levels=3, codebook_size=4, seed=s, kmeans_n_init=1)).ids.codes
              for s in range(4)]
    assert any(not np.array_equal(others[0], o) for o in others[1:])


def test_duplicated_rows_get_unique_ids_from_the_disambiguation_token():
    base = np.random.default_rng(4).normal(size=(6, 3))
    x = np.repeat(base, 5, axis=0)  # items 0-4 identical, 5-9 identical, ...
    fit = tokenize(x, TokenizerConfig(levels=2, codebook_size=4))
    codes = fit.ids.codes
    assert len(np.unique(codes, axis=0)) == 30
    for g in range(6):
        assert len(np.unique(codes[5 * g : 5 * g + 5, :2], axis=0)) == 1
    assert collision_rate(fit.ids.prefixes) == 1.0
    assert fit.ids.codebook_sizes[-1] == codes[:, -1].max() + 1 >= 5


def test_disambiguate_by_hand():
    prefixes = np.array([[0, 1], [1, 0], [0, 1], [0, 1], [1, 0], [2, 2]])
    assert disambiguate(prefixes).tolist() == [0, 0, 1, 2, 1, 0]
    assert disambiguate(np.zeros((0, 2), np.int64)).tolist() == []
    assert collision_rate(prefixes) == pytest.approx(5 / 6)
    assert perplexity(np.array([0, 0, 1, 1])) == pytest.approx(2.0)
    assert perplexity(np.array([3, 3, 3])) == pytest.approx(1.0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 40), d=st.integers(1, 3), levels=st.integers(1, 3), k=st.integers(2, 6),
    seed=st.integers(0, 2**32 - 1), data=st.data(),
)
def test_ids_are_unique_for_any_features(n, d, levels, k, seed, data):
    """Whatever the features (few distinct values, so many exact duplicates), every item's ID is
    unique, codes lie in their codebooks, and the last token numbers each collision group."""
    values = data.draw(st.lists(st.sampled_from([-1.0, 0.0, 0.5, 3.0]), min_size=n * d, max_size=n * d))
    x = np.array(values).reshape(n, d)
    fit = tokenize(x, TokenizerConfig(levels=levels, codebook_size=min(k, n), seed=seed, kmeans_n_init=1))
    codes = fit.ids.codes
    assert codes.shape == (n, levels + 1)
    assert len(np.unique(codes, axis=0)) == n
    assert all((codes[:, j] < s).all() and (codes[:, j] >= 0).all() for j, s in enumerate(fit.ids.codebook_sizes))
    _, group, counts = np.unique(codes[:, :levels], axis=0, return_inverse=True, return_counts=True)
    assert np.array_equal(np.sort(codes[:, -1]), np.sort(np.concatenate([np.arange(c) for c in counts])))


def test_rqvae_loss_decreases_and_its_ids_are_unique_and_reproducible():
    import torch

    x, labels = blobs(n_clusters=4, per=16, d=6, spread=0.5, seed=2)
    cfg = TokenizerConfig(levels=2, codebook_size=4, **FAST_RQVAE)
    rng_before, threads = torch.random.get_rng_state(), torch.get_num_threads()
    fit = tokenize(x, cfg)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # no draw from torch's global RNG
    assert torch.get_num_threads() == threads  # restored after the one-thread run
    assert len(fit.losses) == 60 and fit.losses[-1] < 0.3 * fit.losses[0]
    assert len(np.unique(fit.ids.codes, axis=0)) == 64
    assert fit.reconstruction.shape == x.shape and len(fit.codebooks) == 2 and fit.codebooks[0].shape == (4, 4)
    assert np.array_equal(tokenize(x, cfg).ids.codes, fit.ids.codes)
    assert genre_nmi(fit.ids.codes[:, 0], labels) > 0.8  # k-means initialised codebooks keep the clusters


def test_rqvae_straight_through_reaches_the_encoder():
    """The decoder's loss sends gradients through the quantiser to the encoder, and the codebook
    and commitment terms reach the codebooks."""
    import torch

    from recsim_post.semantic.rqvae import RQVAE

    model = RQVAE(5, 8, 3, 2, 4, 0.25, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.codebooks.normal_(generator=torch.Generator().manual_seed(1))
    loss, rec, codes = model(torch.randn(10, 5, generator=torch.Generator().manual_seed(2)))
    assert codes.shape == (10, 2)
    rec.backward(retain_graph=True)
    assert model.encoder[0].weight.grad.abs().sum() > 0
    assert model.codebooks.grad is None or model.codebooks.grad.abs().sum() == 0  # rec sees z + sg(z_q - z)
    model.zero_grad()
    (loss - rec).backward()
    assert model.codebooks.grad.abs().sum() > 0 and model.encoder[0].weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------- #
# the config
# --------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"levels": 0}, "levels = 0 is out of range: must be >= 1 and <= 8"),
    ({"levels": 9}, "levels = 9 is out of range: must be >= 1 and <= 8"),
    ({"codebook_size": 1}, "codebook_size = 1 is out of range: must be 0 (auto) or >= 2 and <= 4096"),
    ({"codebook_size": 5000}, "codebook_size = 5000 is out of range: must be >= 0 and <= 4096"),
    ({"method": "kmeans"}, "method = 'kmeans' is not allowed: must be one of 'rkmeans', 'rqvae'"),
    ({"rqvae_beta": -1.0}, "rqvae_beta = -1.0 is out of range"),
])
def test_bad_config_is_one_line_naming_the_key_and_the_range(kwargs, message):
    with pytest.raises(ConfigError) as err:
        TokenizerConfig(**kwargs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_codebook_larger_than_the_catalogue_is_refused():
    with pytest.raises(ConfigError, match=r"^codebook_size = 61 is larger than the catalogue \(60 items\): "
                                          r"must be >= 2 and <= 60, or 0 \(auto\)$"):
        resolve_codebook_size(TokenizerConfig(codebook_size=61), 60)
    with pytest.raises(ConfigError, match="larger than the catalogue"):
        tokenize(np.zeros((5, 2)), TokenizerConfig(codebook_size=6))
    with pytest.raises(ConfigError, match="unknown key 'k'; allowed keys: method, levels"):
        from_dict(TokenizerConfig, {"k": 3})
    with pytest.raises(ConfigError, match="finite"):
        tokenize(np.array([[0.0], [np.nan]]), TokenizerConfig(codebook_size=2))


@pytest.mark.parametrize(("n", "levels", "k"), [(500, 3, 16), (60, 3, 8), (2, 3, 2), (3, 1, 3), (100_000, 1, 4096),
                                                (100_000, 3, 128), (800, 2, 64)])
def test_auto_codebook_size(n, levels, k):
    assert auto_codebook_size(n, levels) == k == resolve_codebook_size(TokenizerConfig(levels=levels), n)
    assert k <= n and (k**levels >= 4 * n or k in (n, 4096)) and (k // 2) ** levels < 4 * n


# --------------------------------------------------------------------------------------------- #
# the file
# --------------------------------------------------------------------------------------------- #


def small_ids(items_sha256: str = "a" * 64) -> SemanticIds:
    x, _ = blobs(per=3)
    return tokenize(x, TokenizerConfig(levels=2, codebook_size=3, seed=5), items_sha256=items_sha256).ids


def test_save_load_round_trip(tmp_path):
    ids = small_ids()
    ids.write(tmp_path / FILE_NAME)
    back = SemanticIds.load(tmp_path / FILE_NAME, items_sha256="a" * 64, n_items=12)
    assert np.array_equal(back.codes, ids.codes) and back.codes.dtype == np.int64
    assert back.codebook_sizes == ids.codebook_sizes and back.config == ids.config
    assert (back.items_sha256, back.features_sha256, back.source) == (ids.items_sha256, ids.features_sha256, "features")
    frame = pq.read_table(tmp_path / FILE_NAME).to_pandas()
    assert list(frame.columns) == ["item_id", "c0", "c1", "c2"] and frame["item_id"].tolist() == list(range(12))


def _rewrite(path: Path, frame: pd.DataFrame | None = None, meta: dict | None = None) -> None:
    table = pq.read_table(path)
    if frame is not None:
        table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(table.schema.metadata)
    if meta is not None:
        import json

        table = table.replace_schema_metadata({b"recsim_post.semantic_ids": json.dumps(meta).encode()})
    pq.write_table(table, path)


def test_a_bad_file_is_one_line_log_error(tmp_path):
    path = tmp_path / FILE_NAME

    def fails(match: str, **kw) -> None:  # noqa: ANN003
        with pytest.raises(LogError, match=match) as err:
            SemanticIds.load(path, **kw)
        assert "\n" not in str(err.value)

    fails("not found: semantic IDs are missing; run 'recsim-post tokenize --logs")
    path.write_bytes(b"PAR1 not really parquet")
    fails("is corrupt")
    pq.write_table(pa.table({"item_id": [0, 1]}), path)
    fails("not a semantic-ID file")

    ids = small_ids()
    ids.write(path)
    fails(r"is stale: it was computed from another items.parquet \(sha256 aaaaaaaaaaaa..., the logs' is bbbbbbbbbbbb...\)",
          items_sha256="b" * 64)
    fails("holds 12 items but the logs have 13", n_items=13)
    frame = ids.to_frame()
    _rewrite(path, frame.drop(columns="c2"))
    fails("columns item_id, c0, c1; expected item_id, c0, c1, c2")
    ids.write(path)
    _rewrite(path, frame.assign(c2=0))
    fails("two items have the same semantic ID")
    ids.write(path)
    _rewrite(path, frame.assign(c0=frame["c0"] + 3))
    fails("c0 = 3 is out of range: codes of column c0 must lie in 0 .. 2")
    ids.write(path)
    _rewrite(path, frame.iloc[::-1])
    fails("item_id must be 0 .. 11 in order")
    ids.write(path)
    _rewrite(path, meta={**ids.metadata(), "config": {"levels": 99}})
    fails("metadata is malformed")
    _rewrite(path, meta={**ids.metadata(), "format": 7})
    fails("has format 7")


# --------------------------------------------------------------------------------------------- #
# on logs, and the command line
# --------------------------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def tiny_logs(tmp_path_factory) -> Path:
    from recsim_post.logs.simulate import simulate, write_logs

    return write_logs(simulate(tiny_scenario()), tmp_path_factory.mktemp("sid") / "logs")


@pytest.fixture
def logs_copy(tiny_logs, tmp_path) -> Path:
    folder = tmp_path / "logs"
    shutil.copytree(tiny_logs, folder)
    return folder


def test_tokenize_logs_from_features_or_embeddings(tiny_logs):
    logs = read_public(tiny_logs)
    fit = tokenize_logs(logs)
    assert fit.ids.items_sha256 == logs.manifest["sha256"]["items.parquet"] and fit.ids.source == "features"
    assert fit.ids.codebook_sizes[:3] == (8, 8, 8)  # auto: 8^3 >= 4 * 60
    x = item_features(logs.items, TokenizerConfig(genre_onehot=True), n_genres=4)
    assert x.shape == (60, len([c for c in logs.items.columns if c.startswith("f")]) + 4)
    assert np.array_equal(x[:, -4:].argmax(1), logs.items.sort_values("item_id")["genre"].to_numpy())

    from recsim_post.models import SASRecConfig, SequencePolicy, build_model
    import torch

    from recsim_post.semantic import policy_item_embeddings

    policy = SequencePolicy(build_model(SASRecConfig(dim=8, n_layers=1, n_heads=1, max_len=5), 60,
                                        torch.Generator().manual_seed(0)), 60, 5)
    emb = policy_item_embeddings(policy)
    assert emb.shape == (60, 8)
    fit_e = tokenize_logs(logs, TokenizerConfig(levels=2, codebook_size=4), embeddings=emb)
    assert fit_e.ids.source == "embeddings" and len(np.unique(fit_e.ids.codes, axis=0)) == 60
    with pytest.raises(ConfigError, match=r"one row per item \(60\), not shape \(59, 8\)"):
        tokenize_logs(logs, embeddings=emb[1:])


def test_true_genres_are_the_sealed_ones(tiny_logs):
    genres = true_genres(tiny_logs)
    sealed = pq.read_table(tiny_logs / "sealed" / "items.parquet").to_pandas()
    assert np.array_equal(genres, sealed.sort_values("item_id")["genre"].to_numpy())
    codes = np.column_stack([genres, np.zeros(60, np.int64)])
    assert semantic_truth_report(codes, tiny_logs) == {"nmi_genre_level1": pytest.approx(1.0)}


run = run_cli


def _hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".recsim-post.json")


def test_cli_tokenize_end_to_end(logs_copy, capsys):
    code, out, err = run(capsys, "tokenize", "--logs", str(logs_copy), "--seed", "3", "-q")
    assert code == 0, err
    path = logs_copy / FILE_NAME
    ids = read_semantic_ids(logs_copy)
    assert ids.config.seed == 3 and ids.levels == 3 and len(np.unique(ids.codes, axis=0)) == 60
    report = tokenizer_report(tokenize_logs(read_public(logs_copy), ids.config))
    assert f"collision rate        {report.collision_rate:.3f}" in out
    nmi = genre_nmi(ids.codes[:, 0], true_genres(logs_copy))
    assert f"NMI level 1 vs genre  {nmi:.3f}" in out
    usage = codebook_usage(ids)
    assert f"{usage['perplexity'].iloc[0]:.3f}" in out and f"wrote {path}" in out
    assert _hidden_leftovers(logs_copy) == []
    before = path.read_bytes()

    code, _, err = run(capsys, "tokenize", "--logs", str(logs_copy))
    assert code == 2 and err == f"recsim-post: error: output {path} already exists; pass --overwrite to replace it\n"
    code, _, err = run(capsys, "tokenize", "--logs", str(logs_copy), "--codebook-size", "61", "--overwrite")
    assert code == 2 and err == ("recsim-post: error: --codebook-size = 61 is larger than the catalogue (60 items): "
                                 "must be >= 2 and <= 60, or 0 (auto)\n")
    code, _, err = run(capsys, "tokenize", "--logs", str(logs_copy), "--levels", "0", "--overwrite")
    assert code == 2 and err == "recsim-post: error: --levels = 0 is out of range: must be >= 1 and <= 8\n"
    code, _, err = run(capsys, "tokenize", "--logs", str(logs_copy), "--method", "faiss")
    assert code == 2 and "--method = 'faiss' is not allowed: must be one of 'rkmeans', 'rqvae'" in err
    assert path.read_bytes() == before  # nothing was touched by the refusals

    # the same seed writes the same file; --overwrite replaces it
    code, _, _ = run(capsys, "tokenize", "--logs", str(logs_copy), "--seed", "3", "--overwrite", "-q")
    assert code == 0 and np.array_equal(read_semantic_ids(logs_copy).codes, ids.codes)
    code, out, _ = run(capsys, "tokenize", "--logs", str(logs_copy), "--levels", "2", "--codebook-size", "4",
                       "--overwrite", "--json", "-q")
    import json

    data = json.loads(out)
    assert code == 0 and data["levels"] == 2 and data["codebook_size"] == 4 and 0 <= data["nmi_genre_level1"] <= 1
    assert read_semantic_ids(logs_copy).levels == 2 and _hidden_leftovers(logs_copy) == []


def test_cli_tokenize_failure_leaves_nothing_half_written(logs_copy, capsys, monkeypatch):
    def broken(self, path):  # noqa: ANN001
        Path(path).write_bytes(b"half a parquet file")
        raise KeyboardInterrupt

    monkeypatch.setattr(SemanticIds, "write", broken)
    code, _, err = run(capsys, "tokenize", "--logs", str(logs_copy), "-q")
    assert code == 130 and "interrupted" in err
    assert not (logs_copy / FILE_NAME).exists() and _hidden_leftovers(logs_copy) == []


def test_cli_tokenize_bad_logs(tmp_path, capsys):
    code, _, err = run(capsys, "tokenize", "--logs", str(tmp_path / "nowhere"))
    assert code == 2 and err == f"recsim-post: error: log folder not found: {tmp_path / 'nowhere'}\n"
    assert not (tmp_path / "nowhere").exists()


def test_stale_codes_are_found(logs_copy, tmp_path, capsys):
    """Codes copied next to other logs (another seed: other items) are refused as stale; a changed
    items.parquet is caught by the logs' own check first."""
    from recsim_post.logs.simulate import simulate, write_logs

    assert run(capsys, "tokenize", "--logs", str(logs_copy), "-q")[0] == 0
    other = write_logs(simulate(tiny_scenario(seed=1)), tmp_path / "other")
    shutil.copy(logs_copy / FILE_NAME, other / FILE_NAME)
    with pytest.raises(LogError, match=rf"{other / FILE_NAME} is stale: it was computed from another items.parquet"):
        read_semantic_ids(other)
    items = pq.read_table(logs_copy / "items.parquet")
    pq.write_table(items.set_column(2, "f0", pa.array(np.zeros(60, np.float32))), logs_copy / "items.parquet")
    with pytest.raises(LogError, match="items.parquet does not match the sha256 in manifest.json"):
        read_semantic_ids(logs_copy)


@pytest.fixture
def tokenized_logs_and_policy(logs_copy, tmp_path, capsys) -> tuple[Path, Path]:
    import torch

    from recsim_post.models import SASRecConfig, SequencePolicy, build_model

    assert run(capsys, "tokenize", "--logs", str(logs_copy), "-q")[0] == 0
    policy = SequencePolicy(build_model(SASRecConfig(dim=8, n_layers=1, n_heads=1, max_len=5), 60,
                                        torch.Generator().manual_seed(0)), 60, 5)
    policy.save(tmp_path / "p.pt")
    return logs_copy, tmp_path / "p.pt"


def test_evaluate_reads_a_log_folder_holding_semantic_ids(tokenized_logs_and_policy, capsys):
    """The extra file breaks neither the folder's check nor evaluate."""
    from recsim_post.logs.check import check_log_folder

    logs, policy = tokenized_logs_and_policy
    check_log_folder(logs, "public")
    check_log_folder(logs, "sealed")
    code, out, err = run(capsys, "evaluate", "--logs", str(logs), "--policy", str(policy))
    assert code == 0 and "\np " in out, err


@pytest.mark.slow
def test_ope_reads_a_log_folder_holding_semantic_ids(tokenized_logs_and_policy, capsys):
    logs, policy = tokenized_logs_and_policy
    code, out, err = run(capsys, "ope", "--logs", str(logs), "--policy", str(policy), "--bootstrap", "2",
                         "--q-model", "item", "-q")
    assert code == 0 and "uniform" in out, err


def test_cli_tokenize_without_sealed_folder_shows_no_nmi(logs_copy, capsys):
    """Training-side logs (no sealed/): the codes are written, the NMI cell says why it is empty."""
    shutil.rmtree(logs_copy / "sealed")
    code, out, err = run(capsys, "tokenize", "--logs", str(logs_copy), "-q")
    assert code == 0, err
    assert "NMI level 1 vs genre  —  (no sealed/ folder: the true genres are not there)" in out
    assert read_semantic_ids(logs_copy).n_items == 60
