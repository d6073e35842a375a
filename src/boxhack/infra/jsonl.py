"""Safe JSONL rows: one JSON object a line, appended durably, read back strictly.

A row counts only once its trailing newline is on disk. A writer killed mid-write can leave at
most one incomplete last line (no newline, or not valid JSON): readers ignore it and
:func:`repair_tail` cuts it off (saving it next to the file). A bad line anywhere else is real
damage and raises :class:`~boxhack.errors.BoxhackError` instead of being dropped.

Values are encoded numpy-aware: ``np.generic`` -> Python scalar, ``ndarray`` -> nested lists,
tuples -> lists, paths -> strings, and non-finite floats (NaN, +-inf) -> ``null``, so every file
is strict JSON that any reader can parse.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from boxhack.errors import BoxhackError
from boxhack.infra.arrays import to_jsonable

__all__ = [
    "append_row",
    "damaged_path",
    "encode_row",
    "latest_by_key",
    "read_rows",
    "repair_tail",
    "to_jsonable",
]


def encode_row(row: Mapping[str, Any]) -> bytes:
    """One row as a complete JSONL line (UTF-8, ending in a newline)."""
    value = to_jsonable(row)
    text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: escape it (\udxxx) rather than fail the row
        return (json.dumps(value, allow_nan=False, separators=(",", ":")) + "\n").encode("ascii")


def damaged_path(path: str | Path) -> Path:
    """Where :func:`repair_tail` saves a cut-off tail: ``<path>.damaged`` (``x.jsonl.damaged``)."""
    path = Path(path)
    return path.with_name(path.name + ".damaged")


def append_row(path: str | Path, row: Mapping[str, Any]) -> None:
    """Append one row with a single write, then flush and fsync, so it is on disk on return."""
    line = encode_row(row)
    with open(path, "ab") as f:
        write_line(f, line)


def write_line(f: Any, line: bytes) -> None:
    """Write a whole encoded line to a binary file opened for append, then flush and fsync."""
    view = memoryview(line)
    while view:  # one write() in practice; loop only guards a short write (e.g. disk nearly full)
        n = f.write(view)
        if n is None:  # non-blocking raw file that would block: cannot happen for regular files
            raise OSError(f"could not write to {getattr(f, 'name', f)!s}")
        view = view[n:]
    f.flush()
    os.fsync(f.fileno())


def _scan(data: bytes, path: Path) -> tuple[list[dict[str, Any]], int]:
    """Parse ``data``; return the complete rows and the byte offset where they end.

    Everything after the offset is an incomplete last line (a killed writer's leftover).
    """
    rows: list[dict[str, Any]] = []
    pos = 0
    lineno = 0
    size = len(data)
    while pos < size:
        nl = data.find(b"\n", pos)
        lineno += 1
        if nl < 0:  # no trailing newline: incomplete, whatever it contains
            return rows, pos
        raw = data[pos:nl]
        is_last = nl + 1 == size
        if raw.strip():
            try:
                row = json.loads(raw)
                if not isinstance(row, dict):
                    raise TypeError(f"a JSON {type(row).__name__}, not an object")
            except (ValueError, TypeError) as exc:  # incl. JSONDecodeError, UnicodeDecodeError
                if is_last:
                    return rows, pos
                raise BoxhackError(
                    f"{path}: line {lineno} is not a valid JSON row ({exc}); the lines after it "
                    f"are intact, so this is damage in the middle of the file, not a cut-off "
                    f"write. Inspect the line, then delete or fix it by hand (or move the file "
                    f"away to start over); rows are never dropped silently."
                ) from None
            rows.append(row)
        pos = nl + 1
    return rows, pos


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All complete rows of a JSONL file, in file order; ``[]`` if it does not exist.

    An incomplete last line is ignored (a writer may be mid-row or was killed); a bad line
    elsewhere raises :class:`BoxhackError` naming the file and line number.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    rows, _ = _scan(data, path)
    return rows


def repair_tail(path: str | Path) -> int:
    """Cut an incomplete last line off ``path``; return the number of bytes removed.

    The removed bytes are appended to :func:`damaged_path` first, so nothing is lost silently.
    Only call this while no other process is writing to ``path``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    _, end = _scan(data, path)
    tail = data[end:]
    if not tail:
        return 0
    with open(damaged_path(path), "ab") as f:
        write_line(f, tail if tail.endswith(b"\n") else tail + b"\n")
    with open(path, "r+b") as f:
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    return len(tail)


def latest_by_key(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Map each row's ``"key"`` to its newest (last) row; rows without a key are skipped."""
    out: dict[str, Any] = {}
    for row in rows:
        key = row.get("key")
        if isinstance(key, str):
            out[key] = row
    return out
