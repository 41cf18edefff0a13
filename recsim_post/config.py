"""Typed, validated configuration: frozen dataclasses loaded from TOML.

Every knob is declared with :func:`knob`, which records its documentation and allowed range.
Construction validates (so a config built in Python is checked as strictly as one read from a
file), and :func:`from_dict` rejects unknown keys with a message that names the key and the keys
that are allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from .errors import ConfigError

T = TypeVar("T")


def knob(
    default: Any,
    doc: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A config field with its documentation and allowed range (bounds are inclusive for ge/le).

    A numeric knob needs both ends (a test holds every config to it); on a list knob
    (``tuple[float, ...]``) the range applies to each value. NaN and infinities are always refused.
    """
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


SHOW_CHARS = 60
"""Longest value quoted in an error message (a longer one is cut and ends in '...')."""


def show(value: Any) -> str:
    """``repr(value)`` for an error message: at most SHOW_CHARS characters, and safe for an int too
    long for Python to print (over 4,300 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"a {'negative ' if value < 0 else ''}whole number of about {digits} digits"
    if isinstance(value, (list, tuple, dict)) and len(value) > SHOW_CHARS:
        return f"a {type(value).__name__} of {len(value)} values"
    try:
        text = repr(value)
    except ValueError:  # an int nested in a list, too long to print
        return f"a {type(value).__name__} too large to print"
    return text if len(text) <= SHOW_CHARS else text[: SHOW_CHARS - 3] + "..."


def _bound_text(bound: float) -> str:
    if isinstance(bound, int):
        return str(bound)
    return str(int(bound)) if bound.is_integer() and abs(bound) < 1e16 else f"{bound:g}"


def _range_text(meta: typing.Mapping[str, Any]) -> str:
    parts = []
    for key, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(key) is not None:
            parts.append(f"{op} {_bound_text(meta[key])}")
    return " and ".join(parts) or "a finite number"


def _in_range(value: float, meta: typing.Mapping[str, Any]) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    checks = (
        ("ge", lambda b: value >= b),
        ("gt", lambda b: value > b),
        ("le", lambda b: value <= b),
        ("lt", lambda b: value < b),
    )
    return all(meta.get(k) is None or ok(meta[k]) for k, ok in checks)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Config:
    """Mixin for frozen config dataclasses: validates types and ranges on construction."""

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            coerced = _coerce(value, hints[f.name], f.name)
            if coerced is not value:
                object.__setattr__(self, f.name, coerced)
                value = coerced
            if _is_number(value):
                if not _in_range(value, f.metadata):
                    raise ConfigError(
                        f"{f.name} = {show(value)} is out of range: must be {_range_text(f.metadata)}"
                    )
            elif isinstance(value, tuple) and any(_is_number(v) for v in value):
                if not all(_in_range(v, f.metadata) for v in value if _is_number(v)):
                    raise ConfigError(
                        f"{f.name} = {show(list(value))} is out of range: "
                        f"every value must be {_range_text(f.metadata)}"
                    )
        self.check()

    def check(self) -> None:
        """Cross-field checks; override in subclasses and raise ConfigError."""

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(name, default, doc) for each knob, for help texts and the README."""
        rows = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            default = f.default if f.default is not dataclasses.MISSING else "(section)"
            rows.append((f.name, repr(default), f.metadata.get("doc", "")))
        return rows


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples and ints to floats."""
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{name} = {show(value)} is not allowed: must be {_type_name(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, name)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{name} = {show(value)} has the wrong type")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} = {show(value)} must be a list")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        out = tuple(_coerce(v, item_tp, f"{name}[{i}]") for i, v in enumerate(value))
        return value if isinstance(value, tuple) and out == value else out
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return from_dict(tp, value, prefix=name)
        raise ConfigError(f"{name} must be a table of settings, not {show(value)}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} = {show(value)} must be a number")
        try:
            return float(value) if isinstance(value, int) else value
        except OverflowError:  # an int beyond float's range: out of every knob's range anyway
            raise ConfigError(f"{name} = {show(value)} is out of range: too large for a number") from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} = {show(value)} must be a whole number")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} = {show(value)} must be true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} = {show(value)} must be a string")
        return value
    return value


def from_dict(cls: type[T], data: typing.Mapping[str, Any], prefix: str = "") -> T:
    """Build config ``cls`` from a (TOML) mapping; unknown keys and bad values raise ConfigError."""
    if not isinstance(data, typing.Mapping):
        raise ConfigError(f"{prefix or cls.__name__} must be a table of settings")
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown key '{where}'; allowed keys: {', '.join(names)}")
    hints = get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, typing.Mapping):
            kwargs[key] = from_dict(hints[key], value, prefix=f"{prefix}.{key}" if prefix else key)
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if prefix and not str(err).startswith(prefix):
            msg = str(err)
            # Prefix the offending key with its section so the message names the full path.
            raise ConfigError(f"{prefix}.{msg}" if not msg.startswith("unknown") else msg) from None
        raise


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (tuples as lists), ready for TOML or JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file raises ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte at offset {err.start} cannot be decoded): TOML files must be UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"{path} cannot be read: {err.strerror or err}") from None
    try:
        return tomllib.loads(text)
    except ValueError as err:  # TOMLDecodeError, or an integer too long for Python to read
        raise ConfigError(f"{path} is not valid TOML: {err}") from None


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\u{ord(ch):04x}"))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key: Any) -> str:
    key = str(key)
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def dumps_toml(data: typing.Mapping[str, Any]) -> str:
    """A small TOML writer for plain config data (tables, numbers, strings, bools, lists).

    None is left out (TOML has no null); inside a list it raises ValueError. NaN and infinities are
    written as TOML's ``nan`` / ``inf``, so reading the text back gives the same data.
    """

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return _toml_string(v)
        if isinstance(v, float):
            if math.isnan(v):
                return "nan"
            return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, typing.Mapping):
            return "{" + ", ".join(f"{_toml_key(k)} = {scalar(x)}" for k, x in v.items() if x is not None) + "}"
        if v is None:
            raise ValueError("None cannot be written inside a TOML list")
        return str(v)

    lines: list[str] = []

    def table(d: typing.Mapping[str, Any], name: str) -> None:
        simple = {k: v for k, v in d.items() if not isinstance(v, typing.Mapping)}
        nested = {k: v for k, v in d.items() if isinstance(v, typing.Mapping)}
        if name and (simple or not d):  # an empty table keeps its header, so it reads back as one
            lines.append(f"[{name}]")
        for k, v in simple.items():
            if v is not None:
                lines.append(f"{_toml_key(k)} = {scalar(v)}")
        if simple or (name and not d):
            lines.append("")
        for k, v in nested.items():
            table(v, f"{name}.{_toml_key(k)}" if name else _toml_key(k))

    table(data, "")
    return "\n".join(lines).rstrip() + "\n"


def parse_value(text: str) -> Any:
    """A command-line value read as a TOML value (``1``, ``0.5``, ``true``, ``[1, 2]``, ``"mnl"``);
    anything that is not valid TOML is taken as a bare string (so ``cascade`` needs no quotes)."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except ValueError:  # TOMLDecodeError, or an integer too long for Python to read
        return text
    # "1\nx = 2" parses as two keys: that is not one value, so it stays a string
    return parsed["v"] if len(parsed) == 1 else text


def split_assignment(text: str) -> tuple[str, str]:
    """``"section.key=value"`` -> ``("section.key", "value")``; a malformed one raises ConfigError."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"setting '{text}' must look like section.key=value (e.g. feedback.noise_std=1.0)")
    return key, value.strip()


def override(cfg: T, assignments: typing.Iterable[str | tuple[str, Any]]) -> T:
    """A copy of ``cfg`` with dotted keys replaced: ``override(scenario, ["feedback.noise_std=1.0"])``.

    Each assignment is ``"a.b=value"`` (the value read by :func:`parse_value`) or a ``(key, value)``
    pair. The result is rebuilt through :func:`from_dict`, so an unknown key or a value out of range
    raises the same one-line ConfigError as a TOML file would.
    """
    data = to_dict(cfg)
    for item in assignments:
        key, value = split_assignment(item) if isinstance(item, str) else item
        if isinstance(item, str):
            value = parse_value(value)
        *sections, leaf = key.split(".")
        node, path = data, []
        for name in sections:
            path.append(name)
            child = node.get(name) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                allowed = ", ".join(k for k, v in node.items() if isinstance(v, dict))
                raise ConfigError(f"unknown section '{'.'.join(path)}' in setting '{key}'; sections: {allowed}")
            node = child
        if leaf not in node:
            where = ".".join(sections) or type(cfg).__name__
            raise ConfigError(f"unknown key '{key}'; allowed keys in {where}: {', '.join(node)}")
        if isinstance(node[leaf], dict):
            raise ConfigError(f"'{key}' is a section, not a setting; set one of its keys, e.g. {key}.{next(iter(node[leaf]))}")
        node[leaf] = value
    return from_dict(type(cfg), data)


__all__ = [
    "Config", "knob", "from_dict", "to_dict", "read_toml", "dumps_toml", "override", "parse_value",
    "split_assignment", "show",
]
