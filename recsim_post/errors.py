"""Errors that carry a one-line message meant for the user (the CLI prints it and exits 2)."""

from __future__ import annotations

# Every character str.splitlines() breaks on: a message holding one (a path or a TOML key with a
# newline in it) would print as several lines, so they are shown escaped instead.
_LINE_BREAKS = {c: ascii(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
_ESCAPE = str.maketrans(_LINE_BREAKS)


def one_line(text: object) -> str:
    """``str(text)`` with every line break escaped (``\\n``, ``\\u2028`` ...), so it prints as one line."""
    return str(text).translate(_ESCAPE)


class RecsimError(Exception):
    """Base class: bad input the user can fix. The message is one line naming what is wrong."""

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(one_line(message), *args)


class ConfigError(RecsimError, ValueError):
    """A configuration key that does not exist, or a value out of its allowed range."""


class LogError(RecsimError, OSError):
    """A log folder that is missing, incomplete or corrupt."""


class ActionError(RecsimError, ValueError):
    """An action outside the action space."""


class OutputError(RecsimError, OSError):
    """An output that must not or cannot be written: the current folder, a folder holding the
    user's own files, an unwritable path, a folder another run is writing."""
