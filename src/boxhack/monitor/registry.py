"""The fixed registry of monitor abstractions, and reading any monitor file.

A monitor file names its abstraction (``"box"``, ``"ball"``, ...) in its header (version-1
files are boxes); the class that reads it is looked up here, in a table inside the package,
never imported by a name that came from a file. Every abstraction module registers its class
with :func:`register` when it is imported, and importing any ``boxhack.monitor`` module first
imports the package, which imports them all: the table is complete before user code runs.

This module sits below :mod:`boxhack.monitor.base` (it knows monitor classes only as values
in the table), so that ``Monitor.load`` can use it without an import cycle.
"""

from __future__ import annotations

import os
from typing import Any

from boxhack.errors import BoxhackError
from boxhack.monitor.io import abstraction_of, read_file

__all__ = ["MONITORS", "load_monitor", "monitor_class", "register"]

#: abstraction name -> monitor class (filled by the modules that define them, at import)
MONITORS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: add a monitor class to the registry under its ``abstraction``."""
    name = getattr(cls, "abstraction", "")
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} has no abstraction name")
    old = MONITORS.get(name, cls)
    same = (old.__module__, old.__qualname__) == (cls.__module__, cls.__qualname__)
    if not same:  # (the same class defined again, e.g. a module reloaded, replaces itself)
        raise TypeError(f"abstraction {name!r} is already registered by "
                        f"{MONITORS[name].__qualname__}")
    MONITORS[name] = cls
    return cls


def monitor_class(name: str) -> type:
    """The monitor class of abstraction ``name`` (clear error listing the known ones)."""
    if name not in MONITORS:
        raise BoxhackError(f"unknown abstraction {name!r}; choose one of: "
                           f"{', '.join(sorted(MONITORS))}")
    return MONITORS[name]


def load_monitor(path: str | os.PathLike) -> Any:
    """Read any monitor file written by boxhack (every abstraction, format versions 1 and 2),
    checking everything a hand edit or a corrupt file could garble."""
    meta, arrays = read_file(path)
    name = abstraction_of(meta, str(path))
    if name not in MONITORS:
        raise BoxhackError(f"{path} is not a valid boxhack monitor file: unknown abstraction "
                           f"{name!r} (this boxhack knows {', '.join(sorted(MONITORS))})")
    return MONITORS[name]._from_file(meta, arrays, str(path))
