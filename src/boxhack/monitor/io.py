"""Monitor files: one ``.npz`` of arrays plus a JSON header, read with ``allow_pickle=False``.

Two layouts, both format ``boxhack-monitor``:

- **version 2** (every abstraction): ``meta`` is a 0-d unicode array holding JSON
  ``{"format", "format_version": 2, "abstraction", "params", "layers", "dims", "n_classes",
  "metadata", "state"}``; ``n_fit`` is int64 (n_classes,) training vectors per class; layer i's
  state arrays are stored as ``L<i>.<name>`` and listed in ``state[str(i)]``;
- **version 1** (box monitors, the layout from before the abstraction family, which boxes still
  write so that the SHA-256 of their files, recorded in experiment rows, never changes): the
  header has no ``abstraction`` and no ``state`` but ``n_boxes`` per layer; layer i's arrays
  are ``tight_lo_i``, ``tight_hi_i``, ``lo_i``, ``hi_i`` (float32, boxes x d), ``box_class_i``,
  ``box_count_i`` (int64, boxes) and ``n_clusters_i`` (int64, n_classes).

``metadata`` is free-form JSON; it records the model a monitor was fitted on:
``model_sha256`` (the weights-file hash of a boxhack model directory) and
``model_state_sha256`` (a hash of the model's ``state_dict``, recorded by ``fit``).

This module reads and writes the container and checks the header's field types; what the
arrays must hold is each abstraction's business (:meth:`boxhack.monitor.base.Monitor._from_file`).
Whether a monitor fits a given model is :func:`boxhack.monitor.compat.check_compatible`.
"""

from __future__ import annotations

import json
import numbers
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from boxhack.errors import BoxhackError
from boxhack.infra.files import atomic_path

__all__ = [
    "BOX_FORMAT_VERSION",
    "FORMAT",
    "FORMAT_VERSION",
    "HASH_KEYS",
    "Header",
    "abstraction_of",
    "parse_header",
    "read_file",
    "save_monitor",
    "write_file",
]

FORMAT = "boxhack-monitor"
FORMAT_VERSION = 2  # every abstraction
BOX_FORMAT_VERSION = 1  # box monitors: the layout from before the abstraction family
HASH_KEYS = ("model_sha256", "model_state_sha256")


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def read_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(header, arrays)`` of a monitor file; BoxhackError if it is missing, unreadable,
    not a boxhack monitor file, or of an unknown format version."""
    path = Path(path)
    if not path.is_file():
        hint = " (did you mean the same name with .npz?)" if path.with_suffix(".npz").is_file() else ""
        raise BoxhackError(f"monitor file {path} not found{hint}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise BoxhackError(f"cannot read monitor file {path}: {_first_line(exc)} (corrupt or "
                           f"truncated? refit it with `boxhack monitor fit`)") from None
    bad = file_error(str(path))
    raw = arrays.get("meta")
    if raw is None:
        raise bad("no metadata record")
    if raw.ndim != 0 or raw.dtype.kind != "U":
        raise bad(f"the metadata record is a {raw.dtype} array of shape {raw.shape}, not one "
                  f"JSON string")
    try:
        meta = json.loads(str(raw[()]))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise bad(f"metadata is not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise bad(f"format is {found!r}, not {FORMAT!r}")
    version = meta.get("format_version")
    if version not in (BOX_FORMAT_VERSION, FORMAT_VERSION) or isinstance(version, bool):
        raise BoxhackError(
            f"{path} has monitor format version {version!r}; this boxhack reads versions "
            f"{BOX_FORMAT_VERSION} and {FORMAT_VERSION}; refit the monitor with this version"
        )
    return meta, arrays


def abstraction_of(meta: Mapping[str, Any], source: str) -> str:
    """The abstraction a (read) header names: version-1 files are box monitors."""
    if meta.get("format_version") == BOX_FORMAT_VERSION:
        return "box"
    name = meta.get("abstraction")
    if not isinstance(name, str) or not name:
        raise file_error(source)("no abstraction named in the header")
    return name


def write_file(path: str | os.PathLike, meta: Mapping[str, Any],
               arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``meta`` (as the ``meta`` record, first) and ``arrays`` atomically, exactly at
    ``path`` (no suffix appended); BoxhackError for non-JSON metadata or an unwritable path."""
    path = Path(path)
    try:
        text = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BoxhackError(f"cannot save the monitor: its metadata is not plain JSON ({exc})") from None
    if path.is_dir():
        raise BoxhackError(f"cannot write the monitor to {path}: it is a directory; give a file "
                           f"name such as monitor.npz")
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(text), **arrays)
    except OSError as exc:
        raise BoxhackError(f"cannot write the monitor to {path}: {exc.strerror or exc}; choose "
                           f"a writable location") from None
    return path


def save_monitor(monitor: Any, path: str | os.PathLike) -> Path:
    """Write ``monitor`` (any abstraction) to ``path`` exactly; returns the path."""
    return monitor.save(path)


# ----------------------------------------------------------------------------- the header
def file_error(source: str) -> Callable[[str], BoxhackError]:
    """``bad(msg)``: the one-line error for a monitor file that does not hold what it must."""

    def bad(msg: str) -> BoxhackError:
        return BoxhackError(f"{source} is not a valid boxhack monitor file: {msg}")

    return bad


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


@dataclass(frozen=True)
class Header:
    """A header's fields, each of the type it must have."""

    params: dict[str, Any]
    layers: list[str]
    dims: list[int]
    n_classes: int
    metadata: dict[str, Any]


def parse_header(meta: Mapping[str, Any], bad: Callable[[str], BoxhackError]) -> Header:
    """Check every common header field's type (JSON gives floats, bools and strings where a
    hand edit puts them) and return them; ``bad(msg)`` builds the error."""
    params, layers, dims = meta.get("params"), meta.get("layers"), meta.get("dims")
    n_classes, user_meta = meta.get("n_classes"), meta.get("metadata")
    if not isinstance(params, dict):
        raise bad("'params' is not a JSON object")
    if (not isinstance(layers, list) or not layers
            or not all(isinstance(x, str) and x for x in layers)):
        raise bad("'layers' is not a non-empty list of layer names")
    if len(set(layers)) != len(layers):
        raise bad(f"'layers' repeats a name: {layers}")
    if not isinstance(dims, list) or not all(_is_int(x) and x >= 1 for x in dims):
        raise bad("'dims' is not a list of layer widths (integers >= 1)")
    if len(dims) != len(layers):
        raise bad(f"{len(layers)} layers but {len(dims)} widths in 'dims'")
    if not _is_int(n_classes) or n_classes < 1:
        raise bad(f"'n_classes' is {n_classes!r}, not an integer >= 1")
    if user_meta is None:
        user_meta = {}
    if not isinstance(user_meta, dict):
        raise bad("'metadata' is not a JSON object")
    for key in HASH_KEYS:
        value = user_meta.get(key)
        if value is not None and not isinstance(value, str):
            raise bad(f"metadata {key!r} is {value!r}, not a hash string")
    return Header(dict(params), list(layers), [int(d) for d in dims], int(n_classes),
                  dict(user_meta))
