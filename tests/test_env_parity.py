"""Both Gymnasium envs, served by the logging policy, reproduce ``simulate``'s logs exactly.

The logger is built as ``simulate`` builds it (same world, same ``logging`` streams) and sits in
the agent's seat; the env runs the world underneath. Every public column, the sealed true reward
and propensities, and the world's state at the end must be equal, value for value, for every
preset: every knob of every scenario acts in the envs as it does in the logs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsim_post.behavior.logging_policy import LoggerServer, TrendLogger
from recsim_post.envs.recsim_env import RecSimEnv
from recsim_post.envs.vector_env import RecSimVectorEnv
from recsim_post.logs.simulate import simulate
from recsim_post.presets import preset_names, resolve
from recsim_post.seeding import SeedTree
from recsim_post.world.config import ScenarioConfig, SimulationConfig, load_scenario
from recsim_post.world.keyed import UserStreams
from recsim_post.signals import SIGNALS

from .conftest import tiny_scenario


def _logger(cfg: ScenarioConfig, world) -> LoggerServer:  # noqa: ANN001
    node = SeedTree(cfg.seed).child("logging")
    keyed = UserStreams.create(SeedTree(cfg.seed)) if cfg.simulation.streams == "per-user" else None
    return LoggerServer.create(TrendLogger.create(cfg.logging, world, node), world.n_items, node, keyed)


def _rows(t: int, users, slates, clicked_position, signals, observed, true_reward, extras) -> dict:  # noqa: ANN001
    """One round's requests as impression rows (the public columns and the sealed ones)."""
    n, K = slates.shape
    click = np.zeros((n, K), dtype=np.int8)
    hit = clicked_position >= 0
    click[np.flatnonzero(hit), clicked_position[hit]] = 1
    out = {"user_id": np.repeat(users, K).astype(np.int32), "timestamp": np.full(n * K, t, np.int32),
           "position": np.tile(np.arange(K, dtype=np.int16), n), "item_id": slates.ravel().astype(np.int32),
           "click": click.ravel()}
    for name in SIGNALS:
        full = np.full((n, K), np.nan, dtype=np.float32)
        ok = hit & observed[name]
        full[np.flatnonzero(ok), clicked_position[ok]] = signals[name][ok]
        out[name] = full.ravel()
    out["true_reward"] = true_reward.ravel()
    for name, v in extras.items():
        out[name] = v.ravel()
    return out


def _frame(parts: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    df["slate_id"] = df["position"].eq(0).cumsum().to_numpy(np.int64) - 1  # requests numbered in order
    return df


def _compare(df: pd.DataFrame, sim, env_world) -> None:  # noqa: ANN001
    logs = sim.public.interactions
    for col in logs.columns:
        if col == "pscore":
            continue
        np.testing.assert_array_equal(df[col].to_numpy(), logs[col].to_numpy(), err_msg=col)
    for col in ("true_reward", "propensity", "propensity_item"):
        if col in sim.sealed_impressions:
            np.testing.assert_array_equal(df[col].to_numpy(), sim.sealed_impressions[col].to_numpy(), err_msg=col)
    w, s = env_world, sim.world
    for a, b in ((w.state.popularity, s.state.popularity), (w.state.shock, s.state.shock),
                 (w.state.satiation, s.state.satiation), (w.users.theta, s.users.theta)):
        np.testing.assert_array_equal(a, b)


def single_env_logs(cfg: ScenarioConfig):  # noqa: ANN201
    env = RecSimEnv(cfg, slate_size=cfg.logging.slate_size)
    _, info = env.reset(seed=cfg.seed)
    server = _logger(cfg, env.world)
    parts, served_to, trunc = [], -1, False
    while not trunc:
        rnd = env.current_round
        for t in range(served_to + 1, rnd.t):  # rounds nobody asked in still move the logger
            server.set_round(t)
        slates, extras = server(env.world, rnd)
        served_to = rnd.t
        got: dict[str, list] = {k: [] for k in ("pos", "true", *SIGNALS, *(f"obs_{n}" for n in SIGNALS))}
        for b, user in enumerate(rnd.users):
            assert info["next_user"] == user and info["next_round"] == rnd.t
            _, _, _, trunc, info = env.step(slates[b])
            got["pos"].append(info["clicked_position"])
            got["true"].append(info["true_reward"])
            for name in SIGNALS:
                got[name].append(info[name])
                got[f"obs_{name}"].append(info["observed"][name])
        parts.append(_rows(
            rnd.t, rnd.users, slates, np.array(got["pos"]), {n: np.array(got[n], np.float32) for n in SIGNALS},
            {n: np.array(got[f"obs_{n}"]) for n in SIGNALS}, np.array(got["true"]), extras,
        ))
    return _frame(parts), env.world


def vector_env_logs(cfg: ScenarioConfig):  # noqa: ANN201
    N, K = cfg.users.n_users, cfg.logging.slate_size
    env = RecSimVectorEnv(num_envs=N, scenario=cfg, slate_size=K)
    _, info = env.reset(seed=cfg.seed)
    server = _logger(cfg, env.world)
    parts = []
    for t in range(cfg.simulation.n_rounds):
        rnd = env.current_round
        np.testing.assert_array_equal(np.flatnonzero(info["requesting"]), rnd.users)
        slates, extras = server(env.world, rnd)
        actions = np.tile(np.arange(K), (N, 1))
        actions[rnd.users] = slates
        _, _, _, trunc, info = env.step(actions)
        u = rnd.users
        parts.append(_rows(
            t, u, slates, info["clicked_position"][u], {n: info[n][u].astype(np.float32) for n in SIGNALS},
            {n: info[f"{n}_observed"][u] for n in SIGNALS}, info["true_reward"][u], extras,
        ))
    assert trunc.all()
    return _frame(parts), env.world


@pytest.mark.parametrize("env_logs", [single_env_logs, vector_env_logs], ids=["single", "vector"])
def test_envs_reproduce_the_logs_of_a_tiny_world(env_logs):
    cfg = tiny_scenario(seed=4)
    df, world = env_logs(cfg)
    _compare(df, simulate(cfg), world)


@pytest.mark.parametrize("env_logs", [single_env_logs, vector_env_logs], ids=["single", "vector"])
def test_envs_reproduce_the_logs_of_per_user_streams(env_logs):
    """An env of a scenario on per-user streams draws them too (Session: Streams.logging of the knob)."""
    cfg = tiny_scenario(seed=4, simulation=SimulationConfig(n_rounds=12, streams="per-user"))
    df, world = env_logs(cfg)
    _compare(df, simulate(cfg), world)


@pytest.mark.slow
@pytest.mark.parametrize("name", preset_names("envs", large=False))
@pytest.mark.parametrize("env_logs", [single_env_logs, vector_env_logs], ids=["single", "vector"])
def test_envs_reproduce_every_presets_logs(env_logs, name):
    cfg = load_scenario(resolve("envs", name))
    df, world = env_logs(cfg)
    _compare(df, simulate(cfg), world)
