"""The results table, the multi-seed aggregate and the plot."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pandas as pd
import pytest

from recsim_post.experiments.report import (
    MISSING,
    ResultRow,
    aggregate_seeds,
    format_aggregate,
    format_mean_std,
    format_table,
    plot_results,
    results_frame,
    write_csv,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rows(shift: float = 0.0) -> list[ResultRow]:
    return [
        ResultRow("uniform", "reference", 0.10, 0.0, 0.10, 0.0),
        ResultRow("logging", "reference", 0.50 + shift, 0.40 + shift, 0.60, 0.45),
        ResultRow("oracle", "reference", 1.10, 1.0, 1.50, 1.0),
        ResultRow("bc", "trained", 0.60 + shift, 0.50 + shift, 0.70, 0.55, 0.12 + shift, 0.20, 0.08),
        ResultRow("dpo", "trained", 0.80, 0.70, 0.90, 0.70, 0.10, 0.18, 0.07),
    ]


def test_frame_columns_and_missing_values() -> None:
    df = results_frame(rows())
    assert list(df.columns) == [
        "method", "kind", "true_value", "true_value_norm", "top10_true_value", "top10_norm",
        "ndcg@10", "hr@10", "mrr",
    ]
    assert df["method"].tolist() == ["uniform", "logging", "oracle", "bc", "dpo"]
    assert df.loc[df["kind"] == "reference", ["ndcg@10", "hr@10", "mrr"]].isna().all().all()
    assert df.loc[df["method"] == "bc", "ndcg@10"].item() == pytest.approx(0.12)
    assert all(df[c].dtype == np.float64 for c in df.columns[2:])


def test_frame_uses_k_in_names_and_accepts_no_rows() -> None:
    names = list(results_frame(rows(), k=20).columns)[4:8]
    assert names == ["top20_true_value", "top20_norm", "ndcg@20", "hr@20"]
    empty = results_frame([])
    assert len(empty) == 0 and "ndcg@10" in empty.columns


def test_result_row_is_frozen_and_checks_kind() -> None:
    row = rows()[0]
    with pytest.raises(AttributeError):
        row.value = 2.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="kind"):
        ResultRow("x", "baseline", 0, 0, 0, 0)  # type: ignore[arg-type]


def test_table_shows_every_method_numbers_and_dashes() -> None:
    text = format_table(results_frame(rows()))
    lines = text.splitlines()
    assert len(lines) == 2 + 5
    for method in ("uniform", "logging", "oracle", "bc", "dpo"):
        assert any(line.startswith(method) for line in lines)
    uniform = next(line for line in lines if line.startswith("uniform"))
    assert uniform.count(MISSING) == 3  # ndcg, hr, mrr undefined for a reference row
    bc = next(line for line in lines if line.startswith("bc"))
    assert "0.120" in bc and MISSING not in bc
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule are the same width


def test_aggregate_by_hand() -> None:
    frames = [results_frame(rows(shift)) for shift in (0.0, 0.1, 0.2)]
    agg = aggregate_seeds(frames)
    assert agg["method"].tolist() == ["uniform", "logging", "oracle", "bc", "dpo"]
    bc = agg.set_index("method").loc["bc"]
    assert bc["kind"] == "trained" and bc["n_seeds"] == 3
    # 0.5, 0.6, 0.7: mean 0.6, sample std sqrt(((-.1)^2 + 0 + .1^2) / 2) = 0.1
    assert bc["true_value_norm_mean"] == pytest.approx(0.6)
    assert bc["true_value_norm_std"] == pytest.approx(0.1)
    assert bc["ndcg@10_mean"] == pytest.approx(0.22)
    assert bc["mrr_std"] == pytest.approx(0.0)
    oracle = agg.set_index("method").loc["oracle"]
    assert math.isnan(oracle["ndcg@10_mean"]) and math.isnan(oracle["ndcg@10_std"])

    # The long form with a seed column gives the same numbers.
    long = pd.concat([f.assign(seed=s) for s, f in zip((7, 8, 9), frames)], ignore_index=True)
    pd.testing.assert_frame_equal(aggregate_seeds(long), agg)


def test_mean_std_formatter() -> None:
    assert format_mean_std(0.5123, 0.0314) == "0.512 ± 0.031"
    assert format_mean_std(0.5123, float("nan")) == "0.512"
    assert format_mean_std(float("nan"), float("nan")) == MISSING
    agg = aggregate_seeds([results_frame(rows(s)) for s in (0.0, 0.1, 0.2)])
    text = format_table(format_aggregate(agg))
    assert "0.600 ± 0.100" in text and "n_seeds" in text
    oracle = next(line for line in text.splitlines() if line.startswith("oracle"))
    assert oracle.count(MISSING) == 3


def test_aggregate_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="seed"):
        aggregate_seeds(results_frame(rows()))
    with pytest.raises(ValueError, match="no frames"):
        aggregate_seeds([])


@pytest.mark.parametrize("aggregated", [False, True])
def test_plot_writes_a_png_and_no_temp_file(tmp_path, aggregated) -> None:
    df = results_frame(rows())
    if aggregated:
        df = aggregate_seeds([results_frame(rows(s)) for s in (0.0, 0.1)])
    path = plot_results(df, tmp_path / "figs" / "results.png")
    assert path == tmp_path / "figs" / "results.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert os.listdir(path.parent) == ["results.png"]


def test_plot_leaves_global_matplotlib_state_alone(tmp_path) -> None:
    import matplotlib

    backend = matplotlib.get_backend()
    plot_results(results_frame(rows()), tmp_path / "a.png")
    assert matplotlib.get_backend() == backend


def test_plot_failure_leaves_nothing(tmp_path) -> None:
    with pytest.raises(ValueError, match="ndcg"):
        plot_results(results_frame(rows()).drop(columns=["ndcg@10"]), tmp_path / "a.png")
    assert os.listdir(tmp_path) == []


def test_csv_round_trip_and_overwrite(tmp_path) -> None:
    df = results_frame(rows())
    path = tmp_path / "results.csv"
    write_csv(df.iloc[:2], path)
    assert write_csv(df, path) == path
    back = pd.read_csv(path)
    assert back["method"].tolist() == df["method"].tolist()
    np.testing.assert_allclose(back["ndcg@10"].to_numpy(), df["ndcg@10"].to_numpy())
    assert os.listdir(tmp_path) == ["results.csv"]


def closed_rows(shift: float = 0.0) -> list[ResultRow]:
    """rows() with a closed-loop value on every row and a reward model's belief on some."""
    out = []
    for i, r in enumerate(rows(shift)):
        out.append(dataclasses.replace(r, closed_loop=1.0 + i + shift, rm_value=3.0 if r.kind == "trained" else None))
    return out


def test_closed_loop_column_sits_before_rm_value_and_only_when_present() -> None:
    df = results_frame(closed_rows())
    assert list(df.columns)[-2:] == ["closed_loop", "rm_value"]
    assert df["closed_loop"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert df["closed_loop"].dtype == np.float64
    assert "closed_loop" not in results_frame(rows()).columns
    # a row without a closed-loop value shows a dash, like any missing value
    mixed = closed_rows()[:4] + [rows()[4]]
    assert np.isnan(results_frame(mixed).loc[4, "closed_loop"])
    assert format_table(results_frame(mixed)).splitlines()[-1].split()[-2] == MISSING
    agg = aggregate_seeds([results_frame(closed_rows(s)) for s in (0.0, 0.5)])
    assert agg.set_index("method").loc["bc", "closed_loop_mean"] == pytest.approx(4.25)
    assert "4.250 ± 0.354" in format_table(format_aggregate(agg))


@pytest.mark.parametrize("aggregated", [False, True])
def test_plot_gains_a_closed_loop_panel(tmp_path, aggregated) -> None:
    df = results_frame(closed_rows())
    if aggregated:
        df = aggregate_seeds([results_frame(closed_rows(s)) for s in (0.0, 0.1)])
    with_panel = plot_results(df, tmp_path / "three.png")
    without = plot_results(results_frame(rows()), tmp_path / "two.png")
    from matplotlib.image import imread

    assert imread(with_panel).shape[1] > imread(without).shape[1]  # a wider figure: the third panel
