"""Shared fixtures: tiny scenarios that simulate in well under a second."""

from __future__ import annotations

import dataclasses

import pytest

from recsim_post.world.config import (
    CatalogConfig, LoggingConfig, ScenarioConfig, SimulationConfig, UserConfig,
)


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
