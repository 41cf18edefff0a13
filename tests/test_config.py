"""Typed configs: presets load, unknown keys and bad values are rejected with clear messages."""

from __future__ import annotations

import dataclasses

import pytest

from recsim_post.config import dumps_toml, from_dict, read_toml, to_dict
from recsim_post.errors import ConfigError
from recsim_post.posttrain.recipe import load_agent
from recsim_post.presets import preset_dir, preset_names, resolve
from recsim_post.world.config import FeedbackConfig, LoggingConfig, ScenarioConfig, load_scenario


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


def test_every_knob_is_documented():
    def walk(cls):
        for name, default, doc in cls.describe():
            assert doc, f"{cls.__name__}.{name} has no documentation"
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else None):
                walk(f.type)

    walk(ScenarioConfig)
    for f in dataclasses.fields(ScenarioConfig):
        value = getattr(ScenarioConfig(), f.name)
        if dataclasses.is_dataclass(value):
            walk(type(value))
    assert preset_dir("envs").name == "envs"
