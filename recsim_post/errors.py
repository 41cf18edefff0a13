"""Errors that carry a one-line message meant for the user (the CLI prints it and exits 2)."""

from __future__ import annotations


class RecsimError(Exception):
    """Base class: bad input the user can fix. The message is one line naming what is wrong."""


class ConfigError(RecsimError, ValueError):
    """A configuration key that does not exist, or a value out of its allowed range."""


class LogError(RecsimError, OSError):
    """A log folder that is missing, incomplete or corrupt."""


class ActionError(RecsimError, ValueError):
    """An action outside the action space."""


class OutputError(RecsimError, OSError):
    """An output that must not or cannot be written: the current folder, a folder holding the
    user's own files, an unwritable path, a folder another run is writing."""
