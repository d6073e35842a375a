"""The fixed registry of monitor abstractions, and reading any monitor file.

A monitor file names its abstraction (``"box"``, ``"ball"``, ...) in its JSON header; the class
that reads it is looked up here, in a table inside the package, never imported by a name that
came from a file.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from boxhack.errors import BoxhackError

__all__ = ["MONITORS", "load_monitor", "monitor_class", "register"]

#: abstraction name -> monitor class (filled by the modules that define them, at import)
MONITORS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: add a monitor class to the registry under its ``abstraction``."""
    name = getattr(cls, "abstraction", "")
    if not name:
        raise TypeError(f"{cls.__name__} has no abstraction name")
    MONITORS[name] = cls
    return cls


def _known() -> dict[str, type]:
    import boxhack.monitor  # noqa: F401 - importing the package registers every abstraction

    return MONITORS


def monitor_class(name: str) -> type:
    """The monitor class of abstraction ``name`` (clear error listing the known ones)."""
    known = _known()
    if name not in known:
        raise BoxhackError(f"unknown abstraction {name!r}; choose one of: {', '.join(sorted(known))}")
    return known[name]


def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if not path.is_file():
        hint = " (did you mean the same name with .npz?)" if path.with_suffix(".npz").is_file() else ""
        raise BoxhackError(f"monitor file {path} not found{hint}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BoxhackError(
            f"cannot read monitor file {path}: {text} (corrupt or truncated? refit it with "
            f"`boxhack monitor fit`)"
        ) from None
    if "meta" not in arrays:
        raise BoxhackError(f"{path} is not a valid boxhack monitor file: no metadata record")
    try:
        meta = json.loads(str(arrays["meta"][()]))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise BoxhackError(f"{path} is not a valid boxhack monitor file: metadata is not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != "boxhack-monitor":
        raise BoxhackError(f"{path} is not a boxhack monitor file (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    return meta, arrays


def load_monitor(path: str | os.PathLike):
    """Read any monitor file written by boxhack (every abstraction, every known version)."""
    from boxhack.monitor.base import FORMAT_VERSION

    path = Path(path)
    meta, arrays = _read(path)
    version = meta.get("format_version")
    if version == 1:  # box monitors before the abstraction family
        from boxhack.monitor.box import BoxMonitor

        return BoxMonitor.load(path)
    if version != FORMAT_VERSION:
        raise BoxhackError(
            f"{path} has monitor format version {version!r}; this boxhack reads versions 1 and "
            f"{FORMAT_VERSION}; refit the monitor with this version"
        )
    name = meta.get("abstraction")
    if not isinstance(name, str):
        raise BoxhackError(f"{path} is not a valid boxhack monitor file: no abstraction named")
    return monitor_class(name)._from_file(meta, arrays, str(path))
