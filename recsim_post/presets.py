"""Scenario presets (``envs/*.toml``) and agent recipes (``agents/*.toml``), found by name.

In a source checkout they live at the repository root; an installed wheel carries a copy inside the
package (``recsim_post/_presets``), so the CLI finds them either way. A path to a TOML file works
wherever a preset name does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from .config import read_toml
from .errors import ConfigError, one_line

Kind = Literal["envs", "agents", "studies"]


def preset_dir(kind: Kind) -> Path:
    """The folder holding the presets of ``kind``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_presets" / kind, here.parent / kind):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"no '{kind}' preset folder found next to the package")  # broken install


def preset_names(kind: Kind, large: bool = True) -> list[str]:
    """Preset names of ``kind``, sorted. ``large=False`` leaves out the scenarios that take
    minutes to simulate (``world.config.is_large``: million-users, web-scale), as the per-preset
    tests do."""
    names = sorted(p.stem for p in preset_dir(kind).glob("*.toml"))
    if kind == "envs" and not large:
        from .world.config import is_large, load_scenario  # not at import: registration stays light

        names = [n for n in names if not is_large(load_scenario(preset_dir(kind) / f"{n}.toml"))]
    return names


def resolve_study(name_or_path: str | Path) -> Path:
    """A shipped study's name (``studies/NAME.toml``) or a path to a study file."""
    return resolve("studies", name_or_path)


def preset_description(path: Path) -> str:
    """The ``description`` line of a preset (empty if it has none), or why it cannot be read: a
    listing shows every preset, so one broken file does not stop it."""
    try:
        return one_line(read_toml(path).get("description", ""))
    except ConfigError as err:
        return f"(unreadable: {err})"


def resolve(kind: Kind, name_or_path: str | Path) -> Path:
    """A preset name or a path to a TOML file -> the file's path; anything else is a ConfigError.

    A preset name wins over a file or folder of the same name in the current folder (easy to make
    with ``simulate --out trending``); an argument that ends in ``.toml`` or contains a path
    separator is always a path.
    """
    text = os.fspath(name_or_path)
    what = {"envs": "scenario", "agents": "agent", "studies": "study"}[kind]
    is_path = text.endswith(".toml") or os.sep in text or (os.altsep is not None and os.altsep in text)
    if not is_path and text:
        candidate = preset_dir(kind) / f"{text}.toml"
        if candidate.is_file():
            return candidate
    path = Path(text)
    if is_path or path.is_file():
        if path.is_dir():
            raise ConfigError(f"{what} file {text} is a folder, not a TOML file")
        if not path.is_file():
            raise ConfigError(f"{what} file not found: {text}")
        return path
    raise ConfigError(
        f"unknown {what} '{text}': presets are {', '.join(preset_names(kind))} "
        f"(or give a path to a .toml file)"
    )
