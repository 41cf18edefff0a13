"""Inputs are validated before work starts: knobs, log folders, policy files, environment arguments.

Every bad input is a one-line RecsimError (ConfigError, LogError) naming what is wrong and what is
allowed, and on the command line: exit 2, one line on stderr, no traceback, nothing written.
Imports of the validation API sit inside the tests that use it, so that the rest of this file
also runs against code that predates it: every test here failed there, except three guards that
keep what already worked working under the stricter checks (marked "Guard" in their docstrings).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import pickle
import shutil
import tempfile
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsim_post import cli
from recsim_post.config import dumps_toml, from_dict, override, read_toml, to_dict
from recsim_post.errors import ConfigError, LogError
from recsim_post.truth.ground_truth import GroundTruth
from recsim_post.logs.public import read_public
from recsim_post.logs.simulate import simulate, write_logs
from recsim_post.models.policy import SequencePolicy, build_model
from recsim_post.models.sasrec import SASRecConfig
from recsim_post.posttrain.recipe import AgentConfig, load_agent
from recsim_post.presets import preset_names, resolve
from recsim_post.world.config import (
    CatalogConfig, ScenarioConfig, SimulationConfig, UserConfig, load_scenario,
)

from .conftest import config_classes, tiny_scenario

GB = 10**9


def one_line_error(err: BaseException) -> str:
    text = str(err)
    assert text and len(text.splitlines()) == 1, repr(text)
    return text


# ------------------------------------------------------------------------------------------------
# knobs: every numeric knob has a finite range
# ------------------------------------------------------------------------------------------------


def _dotted(data: dict, prefix: str = "") -> list[str]:
    """Every setting of a config as plain data, as ``section.key``."""
    out = []
    for k, v in data.items():
        out += _dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def test_every_numeric_knob_of_every_config_has_both_ends_of_its_range():
    classes = config_classes()
    assert len(classes) >= 25  # scenario sections, models, methods, training, OPE, closed loop, envs
    open_ended = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            parts = {tp, *typing.get_args(tp)}
            if parts & {int, float}:  # int, float, int | None, tuple[float, ...]
                m = f.metadata
                low = m.get("ge") is not None or m.get("gt") is not None
                high = m.get("le") is not None or m.get("lt") is not None
                if not (low and high):
                    open_ended.append(f"{cls.__name__}.{f.name}")
    assert not open_ended, f"numeric knobs without a finite range: {open_ended}"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # an infinite shock used to be accepted and wrote NaN propensities
        ({"trends": {"shock_size": math.inf}}, "trends.shock_size = inf is out of range: must be >= 0 and <= 100"),
        # a knob without any bound used to end its message in "must be "
        ({"feedback": {"watch_offset": math.nan}},
         "feedback.watch_offset = nan is out of range: must be >= -100 and <= 100"),
        ({"choice": {"no_click_utility": -math.inf}},
         "choice.no_click_utility = -inf is out of range: must be >= -100 and <= 100"),
        ({"users": {"preference_scale": 1e300}}, "users.preference_scale = 1e+300 is out of range"),
        ({"catalog": {"n_items": 10**29}},
         "catalog.n_items = 100000000000000000000000000000 is out of range: must be >= 2 and <= 1000000000"),
        ({"seed": 10**5000}, "seed = a whole number of about 5001 digits is out of range: must be >= 0 and <= 4294967295"),
        ({"users": {"activity": 10**400}}, "users.activity = a whole number of about 401 digits is out of range"),
        ({"logging": {"temperature": 1e-300}}, "logging.temperature = 1e-300 is out of range: must be >= 0.001"),
        ({"logging": {"switch_prob": 0.5, "extra_temperatures": [0.5, math.inf]}},
         "logging.extra_temperatures = [0.5, inf] is out of range: every value must be >= 0.001 and <= 100"),
        ({"simulation": {"n_rounds": 10**7}}, "simulation.n_rounds = 10000000 is out of range: must be >= 1 and <= 1000000"),
    ],
)
def test_out_of_range_knobs_name_the_key_the_value_and_a_finite_range(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(ScenarioConfig, data)
    assert message in one_line_error(err.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"method": {"name": "exp-rsft", "lam": math.inf}}, "method.lam = inf is out of range: must be > 0 and <= 1000000000000"),
        ({"method": {"name": "cql", "temperature": 1e-30}}, "method.temperature = 1e-30 is out of range: must be >= 0.001"),
        ({"finetune": {"grad_clip": math.inf}}, "finetune.grad_clip = inf is out of range: must be >= 0 and <= 1000000"),
        ({"model": {"kind": ["sasrec"]}}, "model.kind = ['sasrec'] is not allowed: must be one of sasrec, hstu"),
        ({"method": {"name": {"a": 1}}}, "method.name = {'a': 1} is not a known method"),
    ],
)
def test_recipe_knobs_are_checked_the_same_way(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(AgentConfig, data)
    assert message in one_line_error(err.value)


# the symbol a recipe's description uses -> the [method] knobs it may stand for
SYMBOLS = {"α": ("alpha",), "T": ("temperature",), "λ": ("lam", "gfn_weight"), "β": ("beta", "kl_coef", "reward_exponent"), "τ": ("tau",),
           "ε": ("clip_eps",), "G": ("group_size",)}


@pytest.mark.parametrize("name", preset_names("agents"))
def test_a_recipe_description_states_the_values_its_file_sets(name):
    import re

    agent = load_agent(resolve("agents", name))
    stated = re.findall(r"(α|T|λ|β|τ|ε|G) = (-?\d+(?:\.\d+)?)", agent.description)
    for symbol, number in stated:
        knobs = [k for k in SYMBOLS[symbol] if hasattr(agent.method, k)]
        assert knobs, f"{name}: the description names {symbol}, which is no knob of {agent.method.name}"
        assert getattr(agent.method, knobs[0]) == float(number), f"{name}: {symbol} = {number} in the description"
    if name == "cql":
        assert ("T", "1") in stated


def test_closed_loop_seeds_are_bounded_too():
    from recsim_post.truth.rollout import ClosedLoopConfig

    with pytest.raises(ConfigError, match=r"seeds = \[0, 4294967296\] is out of range: every value must be >= 0 and <= 4294967295"):
        ClosedLoopConfig(seeds=(0, 2**32))


def test_every_preset_still_loads_unchanged():
    """Guard: the new ranges admit every shipped scenario and recipe as it is."""
    for name in preset_names("envs"):
        cfg = load_scenario(resolve("envs", name))
        assert to_dict(cfg) == to_dict(from_dict(ScenarioConfig, to_dict(cfg)))
    for name in preset_names("agents"):
        assert load_agent(resolve("agents", name)).name == name


def test_the_ends_of_the_ranges_simulate_finite_logs():
    """Guard on the ranges chosen: every weight, std and offset at its largest value (100), the logger at its coldest
    temperature (1e-3), shocks every round that barely decay: the simulation stays finite."""
    data = to_dict(tiny_scenario())
    for section in ("catalog", "users", "trends", "satiation", "choice", "feedback"):
        cls = type(getattr(ScenarioConfig(), section))
        for f in dataclasses.fields(cls):
            if f.type in (float, "float") and f.metadata.get("le") == 100:
                data[section][f.name] = 100.0
    data["logging"].update(temperature=1e-3, trend_weight=100.0, relevance_weight=100.0, relevance_noise=100.0,
                           epsilon=0.0, suggestion_rate=1.0, suggestion_size=100.0)
    data["trends"].update(shock_rate=1.0, shock_decay=0.999999, memory=0.999999)
    sim = simulate(from_dict(ScenarioConfig, data))
    sealed, public = sim.sealed_impressions, sim.public.interactions
    assert np.isfinite(sealed["true_reward"]).all()
    for col in ("propensity", "propensity_item"):
        p = sealed[col].to_numpy()
        assert ((p > 0) & (p <= 1)).all(), col
    rated = public["rating"].dropna()
    assert len(rated) and rated.between(1, 5).all()


# ------------------------------------------------------------------------------------------------
# memory: a world that cannot fit is refused before anything is allocated
# ------------------------------------------------------------------------------------------------


def _world(n_items: int, n_users: int, n_rounds: int = 30) -> ScenarioConfig:
    return dataclasses.replace(
        ScenarioConfig(), catalog=CatalogConfig(n_items=n_items), users=UserConfig(n_users=n_users),
        simulation=SimulationConfig(n_rounds=n_rounds),
    )


def test_memory_estimate_refuses_a_huge_world_with_its_size_and_what_is_available():
    from recsim_post.world.config import check_memory, memory_estimate

    big = _world(10**9, 1000)
    # at least the item vectors alone: 1e9 items x 16 dims x 8 bytes
    assert memory_estimate(big) > 10**9 * 16 * 8
    with pytest.raises(ConfigError) as err:
        check_memory(big, available=24 * GB)
    text = one_line_error(err.value)
    assert text.startswith("catalog.n_items = 1000000000, users.n_users = 1000, simulation.n_rounds = 30 and "
                           "logging.slate_size = 10 need about ")
    assert " GB for the simulation; this machine has 24 GB available" in text
    with pytest.raises(ConfigError, match="users.n_users = 1000000000, .* for the simulation"):
        check_memory(_world(500, 10**9), available=24 * GB)


def test_every_preset_fits_a_24_gb_machine_with_room_to_spare():
    from recsim_post.world.config import check_memory, memory_estimate

    for name in preset_names("envs", large=False):
        cfg = load_scenario(resolve("envs", name))
        check_memory(cfg, available=24 * GB)  # raises if not
        assert memory_estimate(cfg) < 2 * GB, name
    large = load_scenario(resolve("envs", "large-catalog"))
    check_memory(large, num_envs=4096, available=24 * GB)  # a world of 4,096 users over 100,000 items


def test_large_presets_are_streamed_and_sized_for_their_machines():
    """million-users fits an 8 GB machine only because simulate streams its logs (in memory its
    8 x 10^7 rows would not); web-scale wants a machine with room and is refused on a laptop."""
    from recsim_post.world.config import check_memory, is_large, memory_estimate

    assert set(preset_names("envs")) - set(preset_names("envs", large=False)) == {"million-users", "web-scale"}
    million = load_scenario(resolve("envs", "million-users"))
    web = load_scenario(resolve("envs", "web-scale"))
    assert is_large(million) and is_large(web)
    check_memory(million, available=8 * GB, streamed=True)
    with pytest.raises(ConfigError, match="for the simulation"):
        check_memory(million, available=8 * GB)  # every row kept in memory
    assert memory_estimate(million, streamed=True) < memory_estimate(million) / 4
    check_memory(web, available=64 * GB, streamed=True)
    with pytest.raises(ConfigError, match=r"catalog.n_items = 1000000, users.n_users = 1000000"):
        check_memory(web, available=8 * GB, streamed=True)
    # streaming only shrinks the rows' term: a world without many rows is estimated the same
    small = load_scenario(resolve("envs", "quickstart"))
    assert memory_estimate(small, streamed=True) <= memory_estimate(small)


def test_memory_available_is_read_from_the_machine(monkeypatch):
    """On this machine: a positive number of bytes, at most its MemTotal. On a faked one:
    /proc/meminfo's MemAvailable, capped by a container's cgroup limit (v2 or v1) less its usage."""
    from recsim_post.world import config as world_config

    have = world_config.available_memory()
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        total = next(int(line.split()[1]) * 1024 for line in meminfo.read_text().splitlines()
                     if line.startswith("MemTotal:"))
        assert have is not None and 0 < have <= total
    files: dict[str, str] = {}

    class CgroupFiles:  # stands in for Path: only the cgroup files of ``files`` exist
        def __init__(self, name: str) -> None:
            self.name = name

        def read_text(self) -> str:
            if self.name not in files:
                raise FileNotFoundError(self.name)
            return files[self.name]

    monkeypatch.setattr(world_config, "Path", CgroupFiles)
    monkeypatch.setattr(world_config, "open", lambda name: io.StringIO("MemTotal: 9000000 kB\nMemAvailable: 8000000 kB\n"),
                        raising=False)  # a machine with 8,192,000,000 bytes available
    assert world_config.available_memory() == 8_192_000_000
    v2 = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current")
    v1 = ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")
    for limit_file, usage_file in (v2, v1):
        files.clear()
        files.update({limit_file: "4000000000\n", usage_file: "1000000000\n"})
        assert world_config.available_memory() == 3_000_000_000
        files[usage_file] = "5000000000\n"  # over the limit: nothing left
        assert world_config.available_memory() == 0
    files.clear()
    files.update({v2[0]: "max\n", v2[1]: "1000000000\n", v1[0]: str(2**63 - 4096), v1[1]: "1000000000"})  # no limit
    assert world_config.available_memory() == 8_192_000_000


def test_simulate_refuses_a_world_that_cannot_fit_before_allocating_it():
    with pytest.raises(ConfigError, match=r"need about [\d,]+ GB for the simulation; this machine has"):
        simulate(_world(10**9, 10**9))


def test_the_envs_refuse_a_world_that_cannot_fit():
    from recsim_post.envs.recsim_env import RecSimEnv
    from recsim_post.envs.vector_env import RecSimVectorEnv

    with pytest.raises(ConfigError, match="and num_envs = 100000000 need about .* for the environment"):
        RecSimVectorEnv(num_envs=10**8, scenario="large-catalog")  # a world of 10^8 users
    with pytest.raises(ConfigError, match="catalog.n_items = 1000000000, .* for the environment"):
        RecSimEnv(scenario=_world(10**9, 10**9))


# ------------------------------------------------------------------------------------------------
# TOML files and --set values
# ------------------------------------------------------------------------------------------------


def test_a_toml_file_that_is_not_utf8_is_one_line(tmp_path):
    from recsim_post.presets import preset_description

    path = tmp_path / "latin1.toml"
    path.write_bytes('description = "café"\n'.encode("latin-1"))
    for read in (read_toml, load_scenario, load_agent):
        with pytest.raises(ConfigError) as err:
            read(path)
        assert f"{path} is not UTF-8 text (byte at offset 18 cannot be decoded)" in one_line_error(err.value)
    assert preset_description(path).startswith("(unreadable: ")


def test_a_set_value_too_long_to_read_as_a_number_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        override(ScenarioConfig(), ["catalog.n_items=" + "9" * 5000])
    assert "catalog.n_items = '99999" in one_line_error(err.value) and "must be a whole number" in str(err.value)


def test_a_set_value_holding_a_second_assignment_is_not_half_read():
    with pytest.raises(ConfigError, match=r"feedback.noise_std = '1\\nseed = 3' must be a number"):
        override(ScenarioConfig(), ["feedback.noise_std=1\nseed = 3"])


def test_nan_from_the_command_line_names_the_range():
    with pytest.raises(ConfigError) as err:
        override(ScenarioConfig(), ["feedback.watch_offset=nan"])
    assert one_line_error(err.value).endswith("feedback.watch_offset = nan is out of range: must be >= -100 and <= 100")


def test_dumps_toml_writes_what_reads_back():
    import tomllib

    data = {"x": math.nan, "y": -math.inf, "s": 'two\nlines "quoted" \\ \x7f', "odd key": {"a.b": [1, {"c": 2.5}]},
            "empty": {}}
    back = tomllib.loads(dumps_toml(data))
    assert math.isnan(back.pop("x")) and back == {k: v for k, v in data.items() if k != "x"}


def test_every_recsim_error_message_is_one_line():
    err = LogError("folder\nwith a newline\u2028in its name")
    assert str(err) == "folder\\nwith a newline\\u2028in its name"
    assert str(pickle.loads(pickle.dumps(ConfigError("a\rb")))) == "a\\rb"


# ------------------------------------------------------------------------------------------------
# random configurations: every input loads or raises a one-line ConfigError, nothing else escapes
# ------------------------------------------------------------------------------------------------

JUNK = st.one_of(
    st.integers(-(10**40), 10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=6),
    st.sampled_from([0, 1, 2, -1, 0.5, 1e-3, 100.0, 100.5, 10**9, 10**10, 2**63, "mnl", "cascade", "hidden", "hstu"]),
)
VALUES = st.recursive(
    JUNK, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=5,
)


def _in_range(f: dataclasses.Field, tp: typing.Any) -> st.SearchStrategy:
    """Values a knob accepts (so that random configs load often enough to test loading too)."""
    m = f.metadata
    low = m.get("ge") if m.get("ge") is not None else m.get("gt")
    high = m.get("le") if m.get("le") is not None else m.get("lt")
    if tp is int and low is not None and high is not None:
        return st.integers(int(low), int(min(high, low + 1000)))
    if tp is float and low is not None and high is not None:
        return st.floats(low, high, exclude_min=m.get("gt") is not None, exclude_max=m.get("lt") is not None)
    if typing.get_origin(tp) is typing.Literal:
        return st.sampled_from(typing.get_args(tp))
    if f.default is not dataclasses.MISSING:
        return st.just(f.default)
    return st.nothing()


def _table(cls: type, depth: int = 0) -> st.SearchStrategy:
    """A random settings table for config ``cls``: real keys with good or junk values, unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}

    def value(name: str) -> st.SearchStrategy:
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and depth < 2:
            return st.one_of(_table(tp, depth + 1), _table(tp, depth + 1), VALUES)
        good = _in_range(fields[name], tp)
        if isinstance(fields[name].default, tuple):
            good = st.lists(_in_range(fields[name], float), max_size=3)
        return st.one_of(good, good, good, VALUES)  # mostly good values, so that many tables load

    real = st.sampled_from(sorted(fields)).flatmap(lambda k: st.tuples(st.just(k), value(k)))
    junk = st.tuples(st.text(max_size=5), VALUES)
    return st.tuples(st.lists(real, max_size=5), st.lists(junk, max_size=1) | st.just([]) | st.just([])).map(
        lambda parts: dict(parts[0] + parts[1]))


def _recipe() -> st.SearchStrategy:
    from recsim_post.models.policy import MODEL_CONFIGS
    from recsim_post.posttrain.loop import TrainConfig
    from recsim_post.posttrain.recipe import METHODS
    from recsim_post.posttrain.reward_model import RewardModelConfig

    method = st.sampled_from(sorted(METHODS)).flatmap(
        lambda n: _table(METHODS[n].CONFIG).map(lambda d, n=n: {**d, "name": n})) | VALUES
    model = st.sampled_from(sorted(MODEL_CONFIGS)).flatmap(
        lambda k: _table(MODEL_CONFIGS[k]).map(lambda d, k=k: {**d, "kind": k})) | VALUES
    return st.fixed_dictionaries({}, optional={
        "name": st.text(max_size=5) | VALUES, "model": model, "method": method,
        "pretrain": _table(TrainConfig), "finetune": _table(TrainConfig) | VALUES,
        "reward_model": _table(RewardModelConfig) | VALUES, "bogus": VALUES,
    })


def _load_or_config_error(fn, *args):  # noqa: ANN001, ANN202
    try:
        return fn(*args)
    except ConfigError as err:
        one_line_error(err)
        return err


def _via_file(loader, data: dict):  # noqa: ANN001, ANN202
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "random.toml"
        path.write_text(dumps_toml(data), encoding="utf-8")
        return _load_or_config_error(loader, path)


def _same_outcome(direct, from_file) -> None:  # noqa: ANN001
    if isinstance(direct, ConfigError):
        assert isinstance(from_file, ConfigError), (direct, from_file)
    else:
        assert not isinstance(from_file, ConfigError), (direct, from_file)
        assert to_dict(direct) == to_dict(from_file)


RANDOM = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RANDOM
@given(_table(ScenarioConfig))
def test_random_scenario_tables_load_or_raise_a_one_line_config_error(data):
    direct = _load_or_config_error(from_dict, ScenarioConfig, data)
    _same_outcome(direct, _via_file(load_scenario, data))


@RANDOM
@given(_recipe())
def test_random_recipes_load_or_raise_a_one_line_config_error(data):
    direct = _load_or_config_error(from_dict, AgentConfig, data)
    _same_outcome(direct, _via_file(load_agent, data))


DOTTED_KNOBS = sorted(k for k in _dotted(to_dict(ScenarioConfig())))
SET_VALUES = st.one_of(
    st.sampled_from(["0.5", "1", "2", "0", "true", "0.1"]),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "9" * 5000, "[1, 2]", "{a = 1}", "true", '"mnl"', "cascade",
                     "0", "-1", "0.5", "100", "1e-3", "1\nseed = 3", "", "=", "[[]]"]),
    st.text(max_size=10),
    st.integers(-(10**30), 10**30).map(str),
    st.floats().map(repr),
)
KEYS = st.one_of(st.sampled_from(DOTTED_KNOBS), st.sampled_from(DOTTED_KNOBS),
                 st.sampled_from(["bogus.x", "catalog", "catalog.n_items.x", "seed.x", ".x", "x..y", "x"]))
ASSIGNMENTS = st.lists(st.tuples(KEYS, SET_VALUES).map(lambda t: f"{t[0]}={t[1]}"), min_size=1, max_size=3) | \
    st.lists(st.text(max_size=12), min_size=1, max_size=2)


@RANDOM
@given(ASSIGNMENTS)
def test_random_set_assignments_load_or_raise_a_one_line_config_error(assignments):
    _load_or_config_error(override, ScenarioConfig(), assignments)
    _load_or_config_error(override, load_agent(resolve("agents", "dpo")), assignments)


# ------------------------------------------------------------------------------------------------
# log folders
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """A tiny log folder as simulate writes it (copied before each edit)."""
    return write_logs(simulate(tiny_scenario()), tmp_path_factory.mktemp("logs") / "logs")


@pytest.fixture
def logs(written, tmp_path) -> Path:
    out = tmp_path / "logs"
    shutil.copytree(written, out)
    return out


def _edit_table(folder: Path, name: str, edit, rehash: bool = True) -> None:  # noqa: ANN001
    """Rewrite table ``name`` with ``edit`` applied; ``rehash``: the manifest is updated to match,
    as if the tool itself had written the edited values (so only the value checks can catch it)."""
    import hashlib

    df = edit(pq.read_table(folder / name).to_pandas())
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), folder / name)
    if rehash:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["sha256"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        (folder / "manifest.json").write_text(json.dumps(manifest))


def _set(df, column: str, row: int, value):  # noqa: ANN001, ANN202
    df = df.copy()
    df.loc[row, column] = value
    return df


def test_an_edited_public_file_is_refused_by_the_public_reader(logs):
    _edit_table(logs, "interactions.parquet", lambda df: _set(df, "rating", int(df["click"].idxmax()), 1.0),
                rehash=False)
    with pytest.raises(LogError) as err:
        read_public(logs)
    assert one_line_error(err.value) == (
        f"{logs}/interactions.parquet does not match the sha256 in manifest.json: the file is damaged or was "
        "changed after simulate wrote it"
    )


def test_an_edited_sealed_file_is_refused_by_the_ground_truth(logs):
    _edit_table(logs, "sealed/users.parquet", lambda df: df.assign(theta0=df["theta0"] + 1), rehash=False)
    read_public(logs)  # the public side is intact
    with pytest.raises(LogError, match=r"sealed/users.parquet does not match the sha256 in manifest.json"):
        GroundTruth.load(logs)


def test_logs_without_sealed_folder_serve_training_but_not_the_truth(logs):
    shutil.rmtree(logs / "sealed")
    assert read_public(logs).n_items == 60
    with pytest.raises(LogError) as err:
        GroundTruth.load(logs)
    assert one_line_error(err.value) == (
        f"{logs} has no sealed/ folder: the ground truth (true rewards, propensities, latents) is not there; "
        "evaluate, ope and rollout need the folder as written by simulate"
    )


def test_a_listed_file_that_is_missing_is_named(logs):
    (logs / "sealed" / "impressions.parquet").unlink()
    with pytest.raises(LogError, match=r"logs is incomplete: sealed/impressions.parquet is missing \(manifest.json lists it\)"):
        GroundTruth.load(logs)
    (logs / "items.parquet").unlink()
    with pytest.raises(LogError, match=r"logs is incomplete: items.parquet is missing"):
        read_public(logs)


DELETE = object()


@pytest.mark.parametrize(
    ("keys", "value", "message"),
    [
        ((), None, "is corrupt: it must hold a JSON object, not list"),
        (("n_items",), "60", "is corrupt: n_items = '60' must be a positive whole number"),
        (("n_items",), 0, "is corrupt: n_items = 0 must be a positive whole number"),
        (("n_users",), 79.5, "is corrupt: n_users = 79.5 must be a positive whole number"),
        (("n_items",), 61, "is corrupt: n_items = 61 but its scenario has catalog.n_items = 60"),
        (("rows",), [1, 2], "is corrupt: rows must be a table of row counts, not [1, 2]"),
        (("rows", "items"), DELETE, "is corrupt: rows.items is missing"),
        (("rows", "interactions"), -5, "is corrupt: rows.interactions = -5 must be a whole number >= 0"),
        (("scenario",), "tiny", "is corrupt: scenario must be a table of settings, not 'tiny'"),
        (("scenario", "simulation"), DELETE, "is corrupt: scenario.simulation.n_rounds is missing"),
        (("seed",), -1, "is corrupt: seed = -1 must be a whole number >= 0"),
        (("sha256",), DELETE, "has no sha256 table: the logs cannot be verified"),
        (("sha256",), "abc", "is corrupt: sha256 must be a table of file -> hash, not 'abc'"),
        (("sha256", "items.parquet"), "xyz", "is corrupt: sha256 of items.parquet = 'xyz' must be 64 hex digits"),
        (("sha256", "../../etc/passwd"), "0" * 64, "is corrupt: sha256 lists '../../etc/passwd', which is not a file"),
        (("sha256", "interactions.parquet"), DELETE, "is corrupt: it has no sha256 of interactions.parquet"),
    ],
)
def test_a_manifest_of_the_wrong_shape_names_the_bad_key(logs, keys, value, message):
    path = logs / "manifest.json"
    manifest = json.loads(path.read_text())
    if not keys:
        manifest = [manifest]
    else:
        node = manifest
        for key in keys[:-1]:
            node = node[key]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    path.write_text(json.dumps(manifest))
    for reader in (read_public, GroundTruth.load):
        with pytest.raises(LogError) as err:
            reader(logs)
        assert message in one_line_error(err.value), reader


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("interactions.parquet", lambda df: _set(df, "item_id", 3, 60),
         "interactions.parquet is corrupt: item_id = 60 in row 3 (1 rows like it): must lie in 0 .. 59 (the catalogue)"),
        ("interactions.parquet", lambda df: _set(df, "user_id", 0, -1),
         "interactions.parquet is corrupt: user_id = -1 in row 0 (1 rows like it): must lie in 0 .. 79 (the population)"),
        ("interactions.parquet", lambda df: _set(df, "position", 2, 5),
         "position = 5 in row 2 (1 rows like it): must lie in 0 .. 4 (positions in a slate)"),
        ("interactions.parquet", lambda df: _set(df, "rating", int(df["click"].idxmax()), 7.0),
         "rating = 7.0 in row {click} (1 rows like it): must lie in [1, 5] (or be NaN)"),
        ("interactions.parquet", lambda df: _set(df, "rating", int(df["click"].idxmax()), np.nan),
         "a click must have a rating (the scenario's feedback.missing_rate is 0)"),
        ("interactions.parquet", lambda df: _set(df, "rating", int(df["click"].idxmin()), 3.0),
         "rating = 3.0 in row {noclick} (1 rows like it): must be NaN on a row without a click"),
        ("interactions.parquet", lambda df: _set(df, "watch", int(df["click"].idxmax()), 1.5),
         "watch = 1.5 in row {click} (1 rows like it): must lie in [0, 1] (or be NaN)"),
        ("interactions.parquet", lambda df: _set(df, "click", 0, 2), "click = 2 in row 0 (1 rows like it): must be 0 or 1"),
        ("items.parquet", lambda df: _set(df, "f0", 4, np.inf), "items.parquet is corrupt: f0 = inf in row 4"),
        ("items.parquet", lambda df: _set(df, "item_id", 1, 0), "item_id must list every item 0 .. 59 once"),
        ("sealed/impressions.parquet", lambda df: _set(df, "true_reward", 7, np.nan),
         "impressions.parquet is corrupt: true_reward = nan in row 7 (1 rows like it): must be a finite number"),
        ("sealed/impressions.parquet", lambda df: _set(df, "propensity", 1, 0.0),
         "propensity = 0.0 in row 1 (1 rows like it): a propensity must lie in (0, 1]"),
        ("sealed/impressions.parquet", lambda df: _set(df, "propensity_item", 2, 1.5),
         "propensity_item = 1.5 in row 2 (1 rows like it): a propensity must lie in (0, 1]"),
        ("sealed/users.parquet", lambda df: df.iloc[:-1], "users.parquet is corrupt: 79 rows, expected 80 (one per user: n_users in the manifest)"),
        ("sealed/users.parquet", lambda df: _set(df, "theta3", 5, np.nan), "theta3 = nan in row 5"),
        ("sealed/users.parquet", lambda df: _set(df, "satiation1", 5, -1.0), "satiation1 = -1.0 in row 5 (1 rows like it): satiation must be >= 0"),
        ("sealed/items.parquet", lambda df: _set(df, "genre", 0, 4), "genre = 4 in row 0 (1 rows like it): must lie in 0 .. 3"),
        ("sealed/items.parquet", lambda df: df.drop(columns="v7"), "7 columns v0.., the scenario's latent_dim is 8"),
        ("sealed/items.parquet", lambda df: _set(df, "quality", 9, -np.inf), "quality = -inf in row 9"),
    ],
)
def test_values_out_of_their_world_are_refused_even_with_matching_hashes(logs, name, edit, message):
    inter = pq.read_table(logs / "interactions.parquet").to_pandas()
    message = message.format(click=int(inter["click"].idxmax()), noclick=int(inter["click"].idxmin()))
    _edit_table(logs, name, edit)
    reader = GroundTruth.load if name.startswith("sealed/") else read_public
    with pytest.raises(LogError) as err:
        reader(logs)
    assert message in one_line_error(err.value)


PUBLIC_EDITS = [
    ("item_id", lambda df: _set(df, "item_id", 3, 60), 3, "item_id = 60 in row 3"),
    ("click", lambda df: _set(df, "click", 11, 2), 11, "click = 2 in row 11"),
    ("rating", lambda df: _set(df, "rating", int(df["click"].idxmin()), 3.0), None, "must be NaN on a row without a click"),
]


@pytest.mark.parametrize(("column", "edit", "row", "message"), PUBLIC_EDITS)
def test_a_clicks_only_read_checks_every_row_and_numbers_rows_in_the_file(logs, monkeypatch, column, edit, row, message):
    """The streamed read refuses what the whole read refuses, unclicked rows included (it checks a
    block before dropping its unclicked rows); with many blocks, rows are numbered in the file."""
    from recsim_post.logs import public

    inter = pq.read_table(logs / "interactions.parquet").to_pandas()
    row = int(inter["click"].idxmin()) if row is None else row
    _edit_table(logs, "interactions.parquet", edit)
    with pytest.raises(LogError) as whole:
        read_public(logs)
    with pytest.raises(LogError) as one_block:
        read_public(logs, clicks_only=True)
    assert one_line_error(one_block.value) == one_line_error(whole.value)  # one block: word for word
    monkeypatch.setattr(public, "READ_BLOCK_ROWS", 8)
    with pytest.raises(LogError) as blocks:
        read_public(logs, clicks_only=True)
    first = row - row % 8
    assert f"{column} = " in one_line_error(blocks.value)
    assert f"in row {row} (1 rows like it among rows {first} .. {first + 7}): " in one_line_error(blocks.value)


def test_a_clicks_only_read_holds_the_clicks_of_a_whole_read_and_refuses_to_pass_for_impressions(logs, monkeypatch):
    from recsim_post.logs import public

    whole = read_public(logs)
    n_clicks = int((whole.interactions["click"] == 1).sum())
    for block in (1 << 20, 7, 1):  # one block, blocks that split slates, a row at a time
        monkeypatch.setattr(public, "READ_BLOCK_ROWS", block)
        part = read_public(logs, clicks_only=True)
        assert part.clicks_only and len(part.rows) == n_clicks < len(whole.interactions)
        pd.testing.assert_frame_equal(part.clicks(), whole.clicks())
        pd.testing.assert_frame_equal(part.items, whole.items)
        assert part.manifest == whole.manifest and part.n_items == whole.n_items
    with pytest.raises(LogError, match=r"these logs were read clicks only .*read them whole for the impressions"):
        part.interactions  # noqa: B018 - the property is the test


def test_a_clicks_only_read_counts_every_row_against_the_manifest(logs, monkeypatch):
    from recsim_post.logs import public

    monkeypatch.setattr(public, "READ_BLOCK_ROWS", 16)
    n = len(pq.read_table(logs / "interactions.parquet"))
    _edit_table(logs, "interactions.parquet", lambda df: df.iloc[:-1])  # an unclicked or clicked row, gone
    with pytest.raises(LogError) as err:
        read_public(logs, clicks_only=True)
    assert one_line_error(err.value) == (
        f"{logs}/interactions.parquet is corrupt: {n - 1:,} rows, expected {n:,} (rows.interactions in the manifest)"
    )
    (logs / "interactions.parquet").write_bytes(b"PAR1 not parquet")
    with pytest.raises(LogError, match="does not match the sha256"):  # the hash is checked before any block
        read_public(logs, clicks_only=True)
    manifest = json.loads((logs / "manifest.json").read_text())
    manifest["sha256"]["interactions.parquet"] = hashlib.sha256(b"PAR1 not parquet").hexdigest()
    (logs / "manifest.json").write_text(json.dumps(manifest))  # as if simulate had written the garbage
    with pytest.raises(LogError, match=r"interactions.parquet is corrupt: "):
        read_public(logs, clicks_only=True)


def test_sha256_streams_in_blocks_and_matches_hashlib(tmp_path):
    import hashlib

    from recsim_post.logs.check import HASH_BLOCK, sha256_file

    data = np.random.default_rng(0).bytes(3 * HASH_BLOCK + 17)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------
# policy files
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> dict:
    """What SequencePolicy.save writes for a small untrained model over 60 items."""
    path = tmp_path_factory.mktemp("policy") / "p.pt"
    cfg = SASRecConfig(dim=16, n_layers=1, n_heads=1, max_len=12)
    SequencePolicy(build_model(cfg, 60, torch.Generator().manual_seed(0)), 60).save(path)
    return torch.load(path, weights_only=True)


def _nan_weight(p: dict) -> dict:
    state = dict(p["state_dict"])
    w = state["pos_emb.weight"].clone()
    w[3, 2] = float("nan")
    state["pos_emb.weight"] = w
    return {**p, "state_dict": state}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: {**p, "n_items": float("nan")}, "n_items = nan must be a whole number >= 1"),
        (lambda p: {**p, "n_items": "sixty"}, "n_items = 'sixty' must be a whole number >= 1"),
        (lambda p: {**p, "max_len": float("nan")}, "max_len = nan must be a whole number >= 1"),
        (lambda p: {**p, "logit_scale": float("nan")}, "logit_scale = nan must be a finite number > 0"),
        (lambda p: {**p, "logit_scale": float("inf")}, "logit_scale = inf must be a finite number > 0"),
        (lambda p: {**p, "logit_scale": "x"}, "logit_scale = 'x' must be a finite number > 0"),
        (lambda p: {**p, "model": {**p["model"], "kind": ["sasrec"]}}, "model.kind = ['sasrec'] is not allowed"),
        (_nan_weight, "weight 'pos_emb.weight' holds NaN or infinite values"),
        (lambda p: {**p, "state_dict": {**p["state_dict"], "pos_emb.weight": [1.0]}},
         "weight 'pos_emb.weight' is a list, not a tensor"),
        # a file claiming a billion items must not make the loader allocate a billion-row embedding
        (lambda p: {**p, "n_items": 10**9},
         "the item embedding item_emb.weight is of shape (61, 16); n_items = 1000000000 and model.dim = 16 need "
         "(1000000001, 16)"),
        (lambda p: {**p, "history": "lots"}, "history must be a list of tables"),
        (lambda p: {k: v for k, v in p.items() if k != "max_len"}, "field 'max_len' is missing"),
    ],
)
def test_a_corrupt_policy_file_names_the_bad_field(tmp_path, payload, edit, message):
    path = tmp_path / "bad.pt"
    torch.save(edit(payload), path)
    with pytest.raises(LogError) as err:
        SequencePolicy.load(path)
    text = one_line_error(err.value)
    assert text.startswith(f"{path} is a corrupt policy file: ") and message in text


class _RunsCode:
    def __reduce__(self):  # noqa: ANN204
        return (print, ("this would have run",))


@pytest.mark.parametrize("kind", ["random", "pickle", "zip", "empty"])
def test_a_file_that_is_no_policy_never_gets_weights_only_false_advice(tmp_path, kind, capsys):
    import zipfile

    path = tmp_path / f"{kind}.pt"
    if kind == "random":
        path.write_bytes(np.random.default_rng(1).bytes(4096))
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"format": "recsim-post/sequence-policy/1", "x": _RunsCode()}, protocol=4))
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes.txt", "hello")
    else:
        path.write_bytes(b"")
    with pytest.raises(LogError) as err:
        SequencePolicy.load(path)
    text = one_line_error(err.value)
    assert text.startswith(f"{path} is not a recsim-post policy file: ")
    assert "weights_only" not in text and "False" not in text
    out, errout = capsys.readouterr()
    assert "this would have run" not in out and errout == ""  # no code ran, no warning printed


# ------------------------------------------------------------------------------------------------
# Gymnasium environments
# ------------------------------------------------------------------------------------------------


def test_single_env_needs_a_reset_before_stepping_and_after_truncation():
    from gymnasium.error import ResetNeeded

    from recsim_post.envs.recsim_env import RecSimEnv

    env = RecSimEnv(tiny_scenario(), horizon=2)
    with pytest.raises(ResetNeeded, match=r"step\(\) called before reset\(\): call reset\(seed=...\) first"):
        env.step(0)
    env.reset(seed=0)
    flags = []
    while not (flags and flags[-1]):
        flags.append(env.step(0)[3])
    assert len(flags) > 2 and not any(flags[:-1])  # every request of two rounds, then truncated
    with pytest.raises(ResetNeeded, match=r"after the episode was truncated \(horizon = 2 rounds\): call reset\(\)"):
        env.step(0)
    env.reset(seed=1)
    assert env.step(0)[3] is False


def test_vector_env_needs_a_first_reset():
    from gymnasium.error import ResetNeeded

    from recsim_post.envs.vector_env import RecSimVectorEnv

    with pytest.raises(ResetNeeded, match="call reset"):
        RecSimVectorEnv(num_envs=2).step(np.zeros(2, dtype=np.int64))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"horizon": 1.5}, "horizon = 1.5 must be a whole number"),
        ({"horizon": 0}, "horizon = 0 is out of range: must be >= 1 and <= 1000000"),
        ({"history_len": 0}, "history_len = 0 is out of range: must be >= 1 and <= 10000"),
        ({"history_len": True}, "history_len = True must be a whole number"),
        ({"render_mode": "human"}, "render_mode = 'human' is not allowed: must be one of None"),
    ],
)
def test_both_envs_check_their_arguments_alike(kwargs, message):
    from recsim_post.envs.recsim_env import RecSimEnv
    from recsim_post.envs.vector_env import RecSimVectorEnv

    for make in (RecSimEnv, RecSimVectorEnv):
        with pytest.raises(ConfigError) as err:
            make(**kwargs)
        assert message in one_line_error(err.value), make


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"slate_size": 501}, "slate_size = 501 is out of range: must be <= catalog.n_items = 500"),
        ({"slate_size": 2.0}, "slate_size = 2.0 must be a whole number"),
        ({"num_envs": 0}, "num_envs = 0 is out of range: must be >= 1"),
    ],
)
def test_vector_env_arguments(kwargs, message):
    from recsim_post.envs.vector_env import RecSimVectorEnv

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RecSimVectorEnv(**kwargs)


def test_numpy_integers_are_whole_numbers_for_the_envs():
    """Guard: the stricter whole-number check still takes numpy integers (as the vector env did)."""
    from recsim_post.envs.recsim_env import RecSimEnv
    from recsim_post.envs.vector_env import RecSimVectorEnv

    assert RecSimEnv(horizon=np.int64(3)).horizon == 3
    assert RecSimVectorEnv(num_envs=np.int32(2), slate_size=np.int64(2)).slate_size == 2


# ------------------------------------------------------------------------------------------------
# the command line: exit 2, one line, no traceback, nothing written
# ------------------------------------------------------------------------------------------------


def _listing(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def refused(capsys, root: Path, *argv: str) -> str:  # noqa: ANN001
    """Run the CLI in-process; check exit 2, exactly one stderr line, no traceback, nothing written
    under ``root``; return that line."""
    before = _listing(root)
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("recsim-post: error: "), err
    assert _listing(root) == before
    return lines[0]


@pytest.fixture
def cli_root(tmp_path, monkeypatch, logs) -> Path:
    """A working folder holding the tiny logs (``logs/``), a small policy (``p.pt``) and small recipe."""
    root = tmp_path
    monkeypatch.chdir(root)
    cfg = SASRecConfig(dim=16, n_layers=1, n_heads=1, max_len=12)
    SequencePolicy(build_model(cfg, 60, torch.Generator().manual_seed(0)), 60).save(root / "p.pt")
    data = to_dict(load_agent(resolve("agents", "bc")))
    data["model"].update(dim=16, n_layers=1, n_heads=1, max_len=12)
    data["pretrain"]["epochs"] = 1
    data["finetune"]["epochs"] = 1
    (root / "small-bc.toml").write_text(dumps_toml(data))
    return root


def test_cli_evaluate_refuses_edited_logs(cli_root, capsys):
    _edit_table(cli_root / "logs", "interactions.parquet", lambda df: _set(df, "watch", 0, np.nan), rehash=False)
    line = refused(capsys, cli_root, "evaluate", "--logs", "logs", "--policy", "p.pt")
    assert line.endswith("logs/interactions.parquet does not match the sha256 in manifest.json: the file is damaged "
                         "or was changed after simulate wrote it")


def test_cli_logs_without_sealed_serve_train_but_not_evaluate_ope_or_rollout(cli_root, capsys):
    shutil.rmtree(cli_root / "logs" / "sealed")
    expected = ("recsim-post: error: logs has no sealed/ folder: the ground truth (true rewards, propensities, "
                "latents) is not there; evaluate, ope and rollout need the folder as written by simulate")
    for argv in (["evaluate", "--logs", "logs", "--policy", "p.pt"],
                 ["ope", "--logs", "logs", "--policy", "p.pt", "-q"],
                 ["rollout", "--logs", "logs", "--policy", "p.pt", "-q"]):
        assert refused(capsys, cli_root, *argv) == expected, argv
    assert cli.main(["train", "--logs", "logs", "--agent", "small-bc.toml", "--out", "bc.pt", "-q"]) == 0
    assert SequencePolicy.load(cli_root / "bc.pt").n_items == 60


def test_cli_reads_clicks_only_where_no_impression_is_needed(cli_root, capsys, monkeypatch):
    """train (but GFlowGR, which reads the clicks' slates), evaluate and rollout (it checks its
    re-simulation by the files' SHA-256) stream the interactions and keep the clicks."""
    from recsim_post.logs import public
    from recsim_post.posttrain.recipe import needs_impressions

    real, seen = public.read_public, []

    def spy(folder, clicks_only=False):  # noqa: ANN001, ANN202
        seen.append(clicks_only)
        return real(folder, clicks_only)

    monkeypatch.setattr(public, "read_public", spy)
    assert cli.main(["train", "--logs", "logs", "--agent", "small-bc.toml", "--out", "bc.pt", "-q"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--logs", "logs", "--policy", "bc.pt", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][-1]["method"] == "bc"
    assert cli.main(["rollout", "--logs", "logs", "--policy", "bc.pt", "--rounds", "1", "--seeds", "0", "-q"]) == 0
    assert seen == [True, True, True]
    assert [needs_impressions(load_agent(resolve("agents", n))) for n in ("gflowgr-tb", "gflowgr-db", "bc", "dpo")] == [
        True, True, False, False]


def test_cli_refuses_a_policy_file_that_is_not_one(cli_root, capsys):
    (cli_root / "junk.pt").write_bytes(np.random.default_rng(2).bytes(1000))
    line = refused(capsys, cli_root, "evaluate", "--logs", "logs", "--policy", "junk.pt")
    assert "junk.pt is not a recsim-post policy file" in line and "weights_only" not in line
    torch.save(_nan_weight(torch.load(cli_root / "p.pt", weights_only=True)), cli_root / "nan.pt")
    line = refused(capsys, cli_root, "evaluate", "--logs", "logs", "--policy", "nan.pt")
    assert line.endswith("nan.pt is a corrupt policy file: weight 'pos_emb.weight' holds NaN or infinite values")


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["trends.shock_size=inf"], "trends.shock_size = inf is out of range: must be >= 0 and <= 100"),
        (["feedback.watch_offset=nan"], "feedback.watch_offset = nan is out of range: must be >= -100 and <= 100"),
        (["catalog.n_items=100000000000000000000000000000"], "catalog.n_items = 100000000000000000000000000000 is out of range"),
        (["catalog.n_items=1000000000", "users.n_users=1000000000"], "GB for the simulation; this machine has"),
    ],
)
def test_cli_simulate_refuses_bad_knobs_before_any_work(cli_root, capsys, sets, message):
    line = refused(capsys, cli_root, "simulate", "--scenario", "quickstart", "--out", "out", "-q", "--set", *sets)
    assert message in line


def test_cli_refuses_toml_that_is_not_utf8(cli_root, capsys):
    (cli_root / "latin1.toml").write_bytes('name = "café"\n'.encode("latin-1"))
    for argv in (["simulate", "--scenario", "latin1.toml", "--out", "out", "-q"],
                 ["train", "--logs", "logs", "--agent", "latin1.toml", "-q"]):
        assert "latin1.toml is not UTF-8 text (byte at offset 11 cannot be decoded)" in refused(capsys, cli_root, *argv)
