"""The one boundary that matters most: training code never sees the world or the sealed tables."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import recsim_post

PACKAGE = Path(recsim_post.__file__).parent
TRAINING = ("models", "posttrain", "semantic")
FORBIDDEN = (
    "recsim_post.world",
    "recsim_post.behavior",
    "recsim_post.truth",
    "recsim_post.metrics",
    "recsim_post.ope",
    "recsim_post.experiments",
    "recsim_post.theory",
    "recsim_post.envs",
    "recsim_post.logs.simulate",
)


def _imports(path: Path) -> set[str]:
    module = "recsim_post." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    package = module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def test_training_code_imports_nothing_that_holds_the_truth():
    files = [p for d in TRAINING for p in (PACKAGE / d).rglob("*.py")]
    assert len(files) >= 6
    for path in files:
        bad = sorted(m for m in _imports(path) if m.startswith(FORBIDDEN))
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_importing_training_code_loads_no_world_module():
    code = (
        "import sys, recsim_post.posttrain, recsim_post.models, recsim_post.semantic, recsim_post.logs.public\n"
        f"bad = [m for m in sys.modules if m.startswith({FORBIDDEN!r}) and m != 'recsim_post.envs.registration' and m != 'recsim_post.envs']\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


KEYS = {"user_id", "item_id", "slate_id", "position", "genre"}
"""Columns a sealed table shares with the public ones to join on: ids, and the genre, which is public."""


def leaked_columns(folder: Path) -> dict[str, list[str]]:
    """{public parquet file: its columns that hold sealed information}, read back from ``folder``:
    a column named like a sealed one (keys aside), or one whose values equal a sealed column of the
    same rows (a sealed column under another name)."""
    import numpy as np
    import pyarrow.parquet as pq

    sealed = {p.stem: pq.read_table(p).to_pandas() for p in sorted((folder / "sealed").glob("*.parquet"))}
    assert {"impressions", "items", "users"} <= set(sealed)
    sealed_names = {c for df in sealed.values() for c in df.columns} - KEYS
    twins = {"interactions.parquet": (sealed["impressions"], ["slate_id", "position"]),
             "items.parquet": (sealed["items"], ["item_id"])}
    public = sorted(p for p in folder.glob("*.parquet"))
    assert [p.name for p in public] == sorted(twins)
    leaks = {}
    for path in public:
        df = pq.read_table(path).to_pandas()
        bad = sorted(set(df.columns) & sealed_names)
        twin, on = twins[path.name]
        hidden = [c for c in twin.columns if c not in KEYS]
        joined = df.merge(twin[on + hidden].rename(columns={c: f"sealed:{c}" for c in hidden}), on=on,
                          how="left", validate="one_to_one")
        for col in df.columns:
            if col in KEYS or col in bad or not np.issubdtype(df[col].dtype, np.number):
                continue
            mine = joined[col].to_numpy(float)
            if any(np.array_equal(mine, joined[f"sealed:{c}"].to_numpy(float), equal_nan=True) for c in hidden):
                bad.append(col)
        if bad:
            leaks[path.name] = bad
    return leaks


@pytest.fixture(scope="module")
def written_logs(tmp_path_factory) -> Path:
    """Logs as ``write_logs`` writes them, with every optional sealed table (drift, a logger mixture)."""
    import dataclasses

    from recsim_post.logs.simulate import simulate, write_logs
    from recsim_post.world.config import DynamicsConfig, LoggingConfig

    from .conftest import tiny_scenario

    cfg = dataclasses.replace(
        tiny_scenario(), dynamics=DynamicsConfig(drift_rate=0.2),
        logging=LoggingConfig(slate_size=5, switch_prob=0.3, extra_temperatures=(2.0,)),
    )
    assert cfg.logging.propensity_mode == "hidden"
    return write_logs(simulate(cfg), tmp_path_factory.mktemp("logs") / "logs")


def test_public_logs_hold_no_sealed_column(written_logs):
    from recsim_post.logs.public import INTERACTION_SCHEMA

    assert {"logger_rounds.parquet", "theta_updates.parquet"} <= {p.name for p in (written_logs / "sealed").iterdir()}
    assert leaked_columns(written_logs) == {}
    sealed = {"true_reward", "propensity", "propensity_item", "theta", "quality", "hype"}
    assert not sealed & set(INTERACTION_SCHEMA.names)


def test_a_sealed_column_in_the_public_files_is_found(written_logs, tmp_path):
    """Negative controls: the folder written above, edited so that the public files carry a sealed
    column, under its own name or another (the former test read no file and passed all three)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    def leak(name: str, column: str, sealed_table: str, sealed_column: str) -> Path:
        folder = tmp_path / f"{name}-{column}"
        shutil.copytree(written_logs, folder)
        public = pq.read_table(folder / name).to_pandas()
        values = pq.read_table(folder / "sealed" / sealed_table).column(sealed_column).to_numpy()
        pq.write_table(pa.Table.from_pandas(public.assign(**{column: values}), preserve_index=False), folder / name)
        return folder

    assert leaked_columns(leak("interactions.parquet", "true_reward", "impressions.parquet", "true_reward")) == {
        "interactions.parquet": ["true_reward"]}
    assert leaked_columns(leak("interactions.parquet", "pscore", "impressions.parquet", "propensity_item")) == {
        "interactions.parquet": ["pscore"]}
    assert leaked_columns(leak("items.parquet", "f_extra", "items.parquet", "quality")) == {
        "items.parquet": ["f_extra"]}
