"""richrep's own exceptions: every user-facing failure is one of these, with a message that
names what is wrong and how to fix it; and :func:`warn`, how richrep warns."""

from __future__ import annotations

import sys
import warnings


class RichrepError(Exception):
    """Base class of every error richrep raises on purpose."""


class ConfigError(RichrepError, ValueError):
    """An experiment file or argument is invalid (the message names the field)."""


class RegistryError(ConfigError):
    """A plug-in breaks its registry's contract (e.g. an encoder without ``feature_dim``): raised
    when it is registered or first built, naming the entry and what is wrong."""


class DataError(RichrepError, ValueError):
    """A dataset file or array is missing, corrupt or inconsistent."""


class StoreError(RichrepError, OSError):
    """The run store cannot be read or written (permissions, full disk, corrupt file, busy run)."""


class TrainingError(RichrepError, RuntimeError):
    """Training failed in a way the user should know about (e.g. a non-finite loss)."""


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside richrep: Python's own display
    (a script, a notebook) then points at the user's line, never at richrep's internals."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "richrep":
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)
