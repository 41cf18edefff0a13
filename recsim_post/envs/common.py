"""What the single-user and the vector environment check alike: their constructor arguments, the
world's memory, and that an episode is running when ``step`` is called."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium.error import ResetNeeded

from ..config import Config, knob
from ..errors import ConfigError
from ..presets import resolve
from ..world.config import ScenarioConfig, check_memory, load_scenario


@dataclass(frozen=True)
class EnvArgs(Config):
    """Constructor arguments of :class:`~.recsim_env.RecSimEnv` and :class:`~.vector_env.RecSimVectorEnv`."""

    horizon: int = knob(50, "steps before an episode is truncated", ge=1, le=1_000_000_000)
    history_len: int = knob(10, "clicked items in an observation", ge=1, le=10_000)
    slate_size: int = knob(1, "items per recommendation (at most the catalogue)", ge=1, le=1000)
    num_envs: int = knob(1, "users stepped at once (memory is checked: each holds a shock per item)", ge=1,
                         le=10_000_000)


def env_setup(scenario: str | ScenarioConfig, **args: Any) -> tuple[ScenarioConfig, EnvArgs]:
    """The scenario (a preset name, a TOML path or a config) and the checked constructor arguments.

    Whole numbers are required (``horizon = 1.5`` is refused, numpy integers are accepted); the
    slate must fit the catalogue and the world, with ``num_envs`` users in flight, must fit in
    memory. Everything wrong raises a one-line ConfigError, before the world is built.
    """
    cfg = scenario if isinstance(scenario, ScenarioConfig) else load_scenario(resolve("envs", scenario))
    values = {k: int(v) if isinstance(v, np.integer) else v for k, v in args.items()}
    env_args = EnvArgs(**values)
    if env_args.slate_size > cfg.catalog.n_items:
        raise ConfigError(
            f"slate_size = {env_args.slate_size} is out of range: must be <= catalog.n_items = {cfg.catalog.n_items}"
        )
    check_memory(cfg, num_envs=env_args.num_envs, history_len=env_args.history_len)
    return cfg, env_args


def check_render_mode(render_mode: str | None, allowed: list[str]) -> None:
    """A render mode the environment does not have is a ConfigError naming the ones it has."""
    if render_mode is not None and render_mode not in allowed:
        names = ", ".join(["None"] + [repr(m) for m in allowed])
        raise ConfigError(f"render_mode = {render_mode!r} is not allowed: must be one of {names}")


def require_episode(started: bool, ended: bool, horizon: int) -> None:
    """Raise ResetNeeded (as Gymnasium's own environments do) when ``step`` comes before the first
    ``reset`` or after the episode was truncated."""
    if not started:
        raise ResetNeeded("step() called before reset(): call reset(seed=...) first")
    if ended:
        raise ResetNeeded(
            f"step() called after the episode was truncated (horizon = {horizon}): call reset() to start "
            "a new one"
        )


__all__ = ["EnvArgs", "check_render_mode", "env_setup", "require_episode"]
