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

__all__ = ["MONITORS", "SHARED_PARAMS", "abstraction_params", "build_monitor", "load_monitor",
           "monitor_class", "parse_abstraction", "register"]

#: abstraction name -> monitor class (filled by the modules that define them, at import)
MONITORS: dict[str, type] = {}

#: parameters every abstraction has; a composite applies its own to every member
SHARED_PARAMS = ("tolerance", "relative_tolerance", "only_correct", "n_classes")


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


def parse_abstraction(name: str) -> list[str]:
    """The abstraction names that ``name`` spells: ``"zone"`` -> ``["zone"]``, and members
    joined by ``+`` for a composite, ``"box+pattern"`` -> ``["box", "pattern"]`` (each a
    registered, non-composite abstraction, each at most once)."""
    if not isinstance(name, str) or not name.strip():
        raise BoxhackError(f"give an abstraction name, one of: {', '.join(sorted(MONITORS))} "
                           f"(or members joined by '+', e.g. box+zone)")
    parts = [p.strip() for p in name.split("+")]
    for part in parts:
        monitor_class(part)  # a clear error for an unknown name
    if len(parts) == 1:
        return parts
    if "composite" in parts:
        raise BoxhackError(f"{name!r}: join the member abstractions with '+' (e.g. box+zone); "
                           f"'composite' cannot be a member")
    if len(set(parts)) != len(parts):
        raise BoxhackError(f"{name!r}: name each member abstraction once")
    return parts


def abstraction_params(name: str) -> tuple[str, ...]:
    """The constructor parameters that :func:`build_monitor` accepts for ``name`` (for a
    ``+`` composite: the shared ones and every member's own; ``members`` is built)."""
    parts = parse_abstraction(name)
    if len(parts) == 1:
        return tuple(MONITORS[parts[0]].PARAMS)
    out = list(SHARED_PARAMS)
    for part in parts:
        out += [p for p in MONITORS[part].PARAMS if p not in out]
    return tuple(out)


def build_monitor(name: str, **params: Any) -> Any:
    """An unfitted monitor of abstraction ``name`` with ``params`` (the class's constructor
    parameters; the CLI's ``--abstraction`` and ``--gamma`` etc. come here).

    ``name`` is a registered abstraction (``"box"``, ``"ball"``, ``"zone"``, ``"octagon"``,
    ``"pattern"``, ``"hull"``, or ``"composite"`` with ``members=[...]``), or member names
    joined by ``+`` (``"box+zone"``): a :class:`~boxhack.monitor.composite.CompositeMonitor`
    whose members come in that order (put the hull last: later members see only the rows the
    earlier ones accepted). For a ``+`` composite the shared parameters (tolerance,
    relative_tolerance, only_correct, n_classes) go to the composite, every other parameter to
    each member that has it (``n_clusters=3`` to every clustered member, ``gamma`` to the
    pattern). A parameter that no part accepts is an error naming the ones it does accept.
    Parameters are validated on ``fit`` as usual.
    """
    parts = parse_abstraction(name)
    known = abstraction_params(name)
    unknown = [k for k in params if k not in known]
    if unknown:
        raise BoxhackError(f"the {name!r} abstraction takes no parameter "
                           f"{', '.join(map(repr, unknown))}; its parameters: {', '.join(known)}")
    if len(parts) == 1:
        return MONITORS[parts[0]](**params)
    shared = {k: v for k, v in params.items() if k in SHARED_PARAMS}
    members = [{"abstraction": part,
                "params": {k: v for k, v in params.items()
                           if k not in SHARED_PARAMS and k in MONITORS[part].PARAMS}}
               for part in parts]  # fmt: skip
    return MONITORS["composite"](members=members, **shared)
