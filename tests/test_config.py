"""Typed configs: presets load, unknown keys and bad values are rejected with clear messages."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from recsim_post.config import Config, dumps_toml, from_dict, knob, read_toml, to_dict
from recsim_post.errors import ConfigError
from recsim_post.posttrain.recipe import load_agent
from recsim_post.presets import preset_dir, preset_names, resolve
from recsim_post.world.config import FeedbackConfig, LoggingConfig, ScenarioConfig, load_scenario

from .conftest import config_classes


def test_quickstart_preset_is_the_embedded_default():
    assert load_scenario(resolve("envs", "quickstart")) == ScenarioConfig()


@pytest.mark.parametrize("name", preset_names("envs"))
def test_every_scenario_preset_loads_and_has_a_description(name):
    cfg = load_scenario(resolve("envs", name))
    assert cfg.name == name and cfg.description


@pytest.mark.parametrize("name", preset_names("agents"))
def test_every_agent_preset_loads(name):
    assert load_agent(resolve("agents", name)).name == name


def test_round_trip_through_toml(tmp_path):
    cfg = dataclasses.replace(ScenarioConfig(), seed=7, feedback=FeedbackConfig(noise_std=1.25))
    path = tmp_path / "s.toml"
    path.write_text(dumps_toml(to_dict(cfg)))
    assert load_scenario(path) == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"feedback": {"noise_std": -0.1}}, "feedback.noise_std = -0.1 is out of range: must be >= 0"),
        ({"logging": {"temperature": 0}}, "logging.temperature = 0.0 is out of range: must be >= 0.001 and <= 100"),
        ({"catalog": {"n_items": 0}}, "catalog.n_items = 0 is out of range: must be >= 2"),
        ({"bogus": 1}, "unknown key 'bogus'; allowed keys: name, description, seed, catalog"),
        ({"users": {"n_user": 5}}, "unknown key 'users.n_user'; allowed keys: n_users"),
        ({"users": {"n_users": 2.5}}, "users.n_users = 2.5 must be a whole number"),
        ({"feedback": {"flip_rate": True}}, "feedback.flip_rate = True must be a number"),
        ({"logging": {"slate_size": 600}}, "logging.slate_size = 600 is out of range: must be <= catalog.n_items = 500"),
        ({"feedback": 3}, "feedback must be a table of settings"),
    ],
)
def test_bad_values_name_the_key_value_and_range(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(ScenarioConfig, data)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match="epsilon = 2.0 is out of range"):
        LoggingConfig(epsilon=2.0)
    assert LoggingConfig(temperature=1).temperature == 1.0  # ints become floats


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        read_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[catalog\nn_items = 3")
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML"):
        read_toml(bad)
    with pytest.raises(ConfigError, match="unknown scenario 'nowhere'"):
        resolve("envs", "nowhere")


def knob_classes(roots=None) -> list[type]:  # noqa: ANN001
    """``roots`` (default: every config class) and every dataclass their fields can hold (sections,
    the method and model unions), found through the type hints: a section that is no Config
    subclass counts too."""
    found: dict[type, None] = {}
    todo = list(config_classes() if roots is None else roots)[::-1]
    while todo:
        cls = todo.pop()
        if cls in found:
            continue
        found[cls] = None
        for tp in typing.get_type_hints(cls).values():
            todo += [t for t in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(t)]
    return list(found)


def undocumented(classes) -> list[str]:  # noqa: ANN001
    """``Class.knob`` for every knob whose documentation (what ``describe`` shows) is empty."""
    return [f"{cls.__name__}.{name}" for cls in classes for name, _, doc in Config.describe.__func__(cls)
            if not doc.strip()]


def test_every_knob_is_documented():
    classes = knob_classes()
    names = {c.__name__ for c in classes}
    # the sections of a scenario and of a recipe, every method's and model's config among them
    assert {"ScenarioConfig", "FeedbackConfig", "AgentConfig", "TrainConfig", "RewardModelConfig", "SASRecConfig",
            "HSTUConfig", "DPOConfig", "GRPOConfig", "PairMiningConfig", "ClosedLoopConfig"} <= names
    assert sum(len(dataclasses.fields(c)) for c in classes) > 150
    assert not undocumented(classes)
    assert preset_dir("envs").name == "envs"


@dataclasses.dataclass(frozen=True)
class _Inner:
    documented: float = knob(1.0, "a documented knob", ge=0, le=2)
    bare: int = 3


@dataclasses.dataclass(frozen=True)
class _Outer:
    blank: float = knob(0.5, "   ", ge=0, le=1)
    inner: _Inner = knob(_Inner(), "a section")


def test_an_undocumented_knob_is_found():
    """Negative control: a knob without a doc string, or with a blank one, is reported, in a nested
    section too (the former test never looked past the scenario's own sections)."""
    assert knob_classes([_Outer]) == [_Outer, _Inner]
    assert undocumented(knob_classes([_Outer])) == ["_Outer.blank", "_Inner.bare"]
