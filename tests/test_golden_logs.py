"""Every preset's logs, column by column, as they were when the golden file was written.

The world engine may be refactored, sped up or moved; what it simulates may not change by a bit
unless that is the point of a change. ``tests/golden/log_columns.json`` holds the SHA-256 of every
column of every table ``simulate`` produces (public and sealed) for each preset at its own seed,
and the shape of each table. Regenerate it (``python -m tests.test_golden_logs``) only in a commit
whose purpose is to change the simulation, and say so in that commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsim_post.logs.simulate import _sealed_items, _sealed_users, simulate
from recsim_post.presets import preset_names, resolve
from recsim_post.world.config import load_scenario

GOLDEN = Path(__file__).resolve().parent / "golden" / "log_columns.json"


def column_hashes(name: str) -> dict[str, dict[str, str]]:
    """{table: {column: sha256 of its values (and dtype)}} for the logs of preset ``name``."""
    sim = simulate(load_scenario(resolve("envs", name)))
    tables: dict[str, pd.DataFrame] = {
        "interactions": sim.public.interactions, "items": sim.public.items,
        "sealed/impressions": sim.sealed_impressions, "sealed/items": _sealed_items(sim),
        "sealed/users": _sealed_users(sim),
    }
    if sim.logger_rounds is not None:
        tables["sealed/logger_rounds"] = sim.logger_rounds
    if sim.theta_updates is not None:
        tables["sealed/theta_updates"] = sim.theta_updates
    out = {}
    for table, df in tables.items():
        cols = {"__shape__": f"{df.shape[0]}x{df.shape[1]}"}
        for c in df.columns:
            values = np.ascontiguousarray(df[c].to_numpy())
            cols[str(c)] = hashlib.sha256(str(values.dtype).encode() + values.tobytes()).hexdigest()
        out[table] = cols
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", preset_names("envs", large=False))
def test_preset_logs_are_unchanged(name):
    golden = json.loads(GOLDEN.read_text())
    assert name in golden, f"no golden hashes for preset {name}: regenerate {GOLDEN.name}"
    now = column_hashes(name)
    for table, cols in golden[name].items():
        assert table in now, f"{name}: table {table} is gone"
        changed = [c for c, h in cols.items() if now[table].get(c) != h]
        assert not changed, f"{name}: {table} columns changed: {changed}"
    assert set(now) == set(golden[name]), f"{name}: tables added: {set(now) - set(golden[name])}"


if __name__ == "__main__":  # regenerate: python -m tests.test_golden_logs
    names = sys.argv[1:] or preset_names("envs", large=False)
    data = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    for n in names:
        data[n] = column_hashes(n)
        print(f"{n}: {sum(len(c) for c in data[n].values())} columns")
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
