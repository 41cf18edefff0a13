"""SASRec and SequencePolicy: shapes, causality, padding, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsim_post.errors import ConfigError, LogError
from recsim_post.models import SASRec, SASRecConfig, SequencePolicy, build_model, pick_device

PAD = -1
N_ITEMS = 30
CFG = SASRecConfig(dim=16, n_layers=2, n_heads=2, max_len=8, dropout=0.1)


def make_model(seed: int = 0) -> SASRec:
    return build_model(CFG, N_ITEMS, torch.Generator().manual_seed(seed)).eval()


def hist_batch() -> torch.Tensor:
    return torch.tensor(
        [
            [PAD, PAD, PAD, 3, 7, 1, 0, 29],
            [4, 4, 5, 6, 7, 8, 9, 10],
            [PAD] * 8,
            [PAD] * 7 + [12],
        ]
    )


def test_logits_shape_and_finite_including_all_pad_row():
    logits = make_model()(hist_batch())
    assert logits.shape == (4, 8, N_ITEMS)
    assert torch.isfinite(logits).all()


def test_causal_later_items_do_not_change_earlier_positions():
    model = make_model()
    x = hist_batch()
    y = x.clone()
    y[:, 5] = torch.tensor([11, 12, 13, 14])  # rows 2 and 3 gain a real item at column 5
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=0)
    assert not torch.allclose(a[:2, 5:], b[:2, 5:])


def test_leading_padding_does_not_change_real_positions():
    # Right-aligned positions + masked padding keys: dropping all-padding columns is exact
    # (the training loop relies on it to trim batches).
    model = make_model()
    x = hist_batch()[:1]  # its first three columns are padding
    full = model(x)
    trimmed = model(x[:, 3:])
    torch.testing.assert_close(full[:, 3:], trimmed, rtol=1e-5, atol=1e-5)


def test_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = make_model(1), make_model(1), make_model(2)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.item_emb.weight, c.item_emb.weight)
    assert torch.equal(a.item_emb.weight[0], torch.zeros(CFG.dim))  # padding row


def test_policy_logits_last_position_truncation_and_padding():
    model = make_model()
    policy = SequencePolicy(model, N_ITEMS)
    hist = hist_batch().numpy()
    out = policy.logits(hist)
    assert out.shape == (4, N_ITEMS) and out.dtype == np.float32
    with torch.no_grad():
        expected = model(hist_batch())[:, -1].numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # Longer histories keep their last max_len columns; shorter ones are left-padded.
    longer = np.concatenate([np.full((4, 5), 2), hist], axis=1)
    np.testing.assert_allclose(policy.logits(longer), out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(policy.logits(hist[:, 4:]), policy.logits(np.pad(hist[:, 4:], ((0, 0), (4, 0)), constant_values=PAD)))
    # Batched internally: the batch size does not change the answer.
    policy.batch_size = 3
    np.testing.assert_allclose(policy.logits(hist), out, rtol=1e-5, atol=1e-6)


def test_policy_scores_short_histories_without_their_padding():
    """trim_padding drops the leading columns that are PAD in every row (one column at least), and
    the policy's logits of a batch of short histories are those of the full-width forward pass."""
    from recsim_post.models.policy import trim_padding

    h = np.array([[PAD, PAD, 3, 4], [PAD, PAD, PAD, 5]])
    np.testing.assert_array_equal(trim_padding(h), [[3, 4], [PAD, 5]])
    assert trim_padding(np.full((2, 4), PAD)).shape == (2, 1)
    assert torch.equal(trim_padding(torch.tensor(h)), torch.tensor([[3, 4], [PAD, 5]]))
    model = make_model()
    policy = SequencePolicy(model, N_ITEMS)
    short = np.array([[PAD] * 5 + [3, 7, 1], [PAD] * 7 + [12], [PAD] * 6 + [4, 9]])
    with torch.no_grad():
        full_width = model(torch.tensor(short))[:, -1].numpy()  # all 8 columns through the model
    np.testing.assert_allclose(policy.logits(short), full_width, rtol=1e-5, atol=1e-6)


def test_save_load_roundtrip_and_clone(tmp_path):
    policy = SequencePolicy(make_model(), N_ITEMS)
    policy.history.append({"stage": "bc", "epoch": 1, "loss": 1.5})
    path = tmp_path / "sub" / "policy.pt"
    policy.save(path)
    loaded = SequencePolicy.load(path)
    hist = hist_batch().numpy()
    np.testing.assert_array_equal(loaded.logits(hist), policy.logits(hist))
    assert loaded.config == CFG and loaded.n_items == N_ITEMS and loaded.history == policy.history
    twin = policy.clone()
    with torch.no_grad():
        twin.model.item_emb.weight.add_(1.0)
    assert not np.array_equal(twin.logits(hist), policy.logits(hist))


def test_missing_or_corrupt_file_raises_log_error(tmp_path):
    with pytest.raises(LogError, match="not found"):
        SequencePolicy.load(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(LogError) as info:
        SequencePolicy.load(bad)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)
    # A readable torch file of the wrong content is a LogError too.
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(LogError, match="not a recsim-post policy"):
        SequencePolicy.load(other)
    # A truncated policy file.
    good = tmp_path / "good.pt"
    SequencePolicy(make_model(), N_ITEMS).save(good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(LogError):
        SequencePolicy.load(cut)


def test_config_validation():
    with pytest.raises(ConfigError, match="n_heads"):
        SASRecConfig(dim=10, n_heads=4)
    with pytest.raises(ConfigError, match="dropout"):
        SASRecConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="device"):
        pick_device("tpu")  # type: ignore[arg-type]
    assert pick_device("cpu") == torch.device("cpu")
