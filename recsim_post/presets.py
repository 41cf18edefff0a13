"""Scenario presets (``envs/*.toml``) and agent recipes (``agents/*.toml``), found by name.

In a source checkout they live at the repository root; an installed wheel carries a copy inside the
package (``recsim_post/_presets``), so the CLI finds them either way. A path to a TOML file works
wherever a preset name does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from .config import read_toml
from .errors import ConfigError, one_line

Kind = Literal["envs", "agents"]


def preset_dir(kind: Kind) -> Path:
    """The folder holding the presets of ``kind``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_presets" / kind, here.parent / kind):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"no '{kind}' preset folder found next to the package")  # broken install


def preset_names(kind: Kind) -> list[str]:
    """Preset names of ``kind``, sorted."""
    return sorted(p.stem for p in preset_dir(kind).glob("*.toml"))


def preset_description(path: Path) -> str:
    """The ``description`` line of a preset (empty if it has none), or why it cannot be read: a
    listing shows every preset, so one broken file does not stop it."""
    try:
        return one_line(read_toml(path).get("description", ""))
    except ConfigError as err:
        return f"(unreadable: {err})"


def resolve(kind: Kind, name_or_path: str | Path) -> Path:
    """A preset name or a path to a TOML file -> the file's path; anything else is a ConfigError."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"{kind[:-1]} file not found: {path}")
        return path
    candidate = preset_dir(kind) / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    what = "scenario" if kind == "envs" else "agent"
    raise ConfigError(
        f"unknown {what} '{name_or_path}': presets are {', '.join(preset_names(kind))} "
        f"(or give a path to a .toml file)"
    )
