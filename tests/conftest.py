"""Shared fixtures: tiny scenarios that simulate in well under a second."""

from __future__ import annotations

import dataclasses

import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import settings

# CI explores the same examples on every run (a red CI is then reproducible); locally hypothesis
# keeps drawing fresh ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

STRICT = bool(os.environ.get("RECSIM_POST_STRICT"))
"""Set by .ci/run: an outside library a parity test needs must be installed (a skip proves nothing)."""


def require(module: str):  # noqa: ANN201 - the imported module
    """Import ``module`` for a parity test: skipped where it is not installed, except under CI
    (RECSIM_POST_STRICT), where a missing library fails the test instead of hiding it."""
    if STRICT:
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module)


from recsim_post.world.config import (
    CatalogConfig, LoggingConfig, ScenarioConfig, SimulationConfig, UserConfig,
)


def config_classes() -> list[type]:
    """Every config class of the package (each subclass of ``recsim_post.config.Config``, after
    importing every module), sorted by qualified name."""
    import importlib
    import pkgutil

    import recsim_post
    from recsim_post.config import Config

    for info in pkgutil.walk_packages(recsim_post.__path__, "recsim_post."):
        importlib.import_module(info.name)
    found, todo = set(), [Config]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__name__}")


def tiny_scenario(seed: int = 0, **sections) -> ScenarioConfig:
    """A small world: 60 items, 80 users, 12 rounds, slates of 5."""
    base = ScenarioConfig(
        name="tiny",
        seed=seed,
        catalog=CatalogConfig(n_items=60, n_genres=4, latent_dim=8),
        users=UserConfig(n_users=80),
        logging=LoggingConfig(slate_size=5),
        simulation=SimulationConfig(n_rounds=12),
    )
    return dataclasses.replace(base, **sections) if sections else base


@pytest.fixture
def tiny() -> ScenarioConfig:
    return tiny_scenario()


def clicks_frame(users, items, ratings=None, timestamps=None) -> pd.DataFrame:  # noqa: ANN001
    """A clicks frame in history order (one click per timestamp), as the public logs give them."""
    n = len(users)
    return pd.DataFrame(
        {
            "user_id": np.asarray(users, np.int32),
            "timestamp": np.asarray(timestamps if timestamps is not None else np.arange(n), np.int32),
            "position": np.zeros(n, np.int16),
            "item_id": np.asarray(items, np.int32),
            "rating": np.asarray(ratings if ratings is not None else np.ones(n), np.float32),
        }
    )


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:  # noqa: ANN001
    """The CLI as the console script runs it: (exit status, stdout, stderr); argparse's own errors
    (SystemExit) count as an exit status too."""
    from recsim_post import cli

    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def small_row_chunks(monkeypatch):
    """Chunks of 7 logged rows in the off-policy pass (a tiny catalogue would put every row in one)."""
    import recsim_post.ope.propensity as propensity
    import recsim_post.ope.report as report

    monkeypatch.setattr(report, "chunk_rows", lambda n_items, arrays=1: 7)
    monkeypatch.setattr(propensity, "chunk_rows", lambda n_items, arrays=1: 7)
