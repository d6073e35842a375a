"""Compare two campaign ``rows.jsonl`` files, timing aside: "did the same command give the
same results?"

Each file is read strictly (:func:`boxhack.infra.jsonl.read_rows`) and reduced to its newest
row per key (what every reader of a campaign uses). Two rows are the same when they are equal
after the *timing fields* are removed at every depth: the values that come from a clock or
from which process ran the job, never from the computation itself (:data:`TIMING_FIELDS`).

Command line (what ``scripts/diff-rows`` runs)::

    python -m boxhack.infra.rowdiff A/rows.jsonl B/rows.jsonl

prints one line per difference and exits 1 if there is any, 0 if the rows are identical (2 on
bad usage or an unreadable file).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boxhack.errors import BoxhackError
from boxhack.infra.jsonl import latest_by_key, read_rows

__all__ = ["TIMING_FIELDS", "Difference", "diff_files", "diff_rows", "main", "strip_timing"]

#: Keys whose values are measured by a clock or name the process that ran the job; ignored at
#: any depth of a row. ``wall_s``: a job's or a solve's elapsed seconds (campaign rows and
#: solver results); ``solve_s``: a solve's elapsed seconds; ``train_s``, ``attack_s``,
#: ``repair_s``: elapsed seconds of a training or an attack stage; ``worker``: host:pid of the
#: campaign worker (or the sandbox worker's number); ``time``: a wall-clock timestamp.
TIMING_FIELDS = frozenset({"wall_s", "solve_s", "train_s", "attack_s", "repair_s", "worker",
                           "time"})  # fmt: skip


@dataclass(frozen=True)
class Difference:
    """One difference: the row ``key``, where inside the row (``path``, ``""`` for a missing
    row), and the two values (``None`` for a missing row or field)."""

    key: str
    path: str
    a: Any
    b: Any

    def __str__(self) -> str:
        if self.path == "":
            side = "A" if self.b is None else "B"
            return f"{self.key}: only in {side}"
        return f"{self.key}: {self.path}: {_short(self.a)} != {_short(self.b)}"


def _short(value: Any, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def strip_timing(value: Any, ignore: Iterable[str] = TIMING_FIELDS) -> Any:
    """``value`` with every mapping key in ``ignore`` removed, at any depth."""
    ignore = frozenset(ignore)
    if isinstance(value, Mapping):
        return {k: strip_timing(v, ignore) for k, v in value.items() if k not in ignore}
    if isinstance(value, list):
        return [strip_timing(v, ignore) for v in value]
    return value


_MISSING = object()


def _walk(a: Any, b: Any, path: str, out: list[tuple[str, Any, Any]]) -> None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in sorted(set(a) | set(b), key=str):
            _walk(a.get(k, _MISSING), b.get(k, _MISSING), f"{path}.{k}" if path else str(k), out)
        return
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{path}[{i}]", out)
        return
    if a is _MISSING or b is _MISSING or type(a) is not type(b) or a != b:
        out.append((path, None if a is _MISSING else a, None if b is _MISSING else b))


def diff_rows(
    rows_a: Iterable[Mapping[str, Any]],
    rows_b: Iterable[Mapping[str, Any]],
    ignore: Iterable[str] = TIMING_FIELDS,
) -> list[Difference]:
    """The differences between two lists of rows (newest row per key), timing fields aside.

    Keys are compared in sorted order; within a row every differing leaf is listed with its
    path (``result.nfev``, ``result.attacks[0].x``).
    """
    ignore = frozenset(ignore)
    a, b = latest_by_key(rows_a), latest_by_key(rows_b)
    out: list[Difference] = []
    for key in sorted(set(a) | set(b)):
        if key not in b:
            out.append(Difference(key, "", a[key], None))
        elif key not in a:
            out.append(Difference(key, "", None, b[key]))
        else:
            leaves: list[tuple[str, Any, Any]] = []
            _walk(strip_timing(a[key], ignore), strip_timing(b[key], ignore), "", leaves)
            out.extend(Difference(key, p, x, y) for p, x, y in leaves)
    return out


def diff_files(
    path_a: str | Path, path_b: str | Path, ignore: Iterable[str] = TIMING_FIELDS
) -> list[Difference]:
    """:func:`diff_rows` of two JSONL files (a missing file raises :class:`BoxhackError`)."""
    for p in (path_a, path_b):
        if not Path(p).is_file():
            raise BoxhackError(f"{p}: no such rows file")
    return diff_rows(read_rows(path_a), read_rows(path_b), ignore)


def replace_text(value: Any, old: str, new: str) -> Any:
    """``value`` with ``old`` replaced by ``new`` in every string, at any depth."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, Mapping):
        return {k: replace_text(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_text(v, old, new) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    roots: tuple[str, str] | None = None
    if len(args) == 4 and args[0] == "--roots" and args[1].count(",") == 1:
        old, new = args[1].split(",")
        roots = (old.rstrip("/"), new.rstrip("/"))
        args = args[2:]
    if len(args) != 2 or args[0].startswith("-"):
        print("usage: diff-rows [--roots DIR_A,DIR_B] A.jsonl B.jsonl\n"
              "Compares the newest row per key, ignoring the timing fields "
              f"{', '.join(sorted(TIMING_FIELDS))}; exit 0 if identical, 1 if not.\n"
              "--roots: the two runs' directories; A's is read as B's in every string "
              "(rows that record absolute paths).",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        if roots is None:
            diffs = diff_files(args[0], args[1])
        else:
            rows_a = [replace_text(r, roots[0], roots[1]) for r in read_rows(args[0])]
            diffs = diff_rows(rows_a, read_rows(args[1]))
        n_a = len(latest_by_key(read_rows(args[0])))
        n_b = len(latest_by_key(read_rows(args[1])))
    except BoxhackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for d in diffs:
        print(d)
    keys = len({d.key for d in diffs})
    print(f"{n_a} rows in A, {n_b} in B; {keys} keys differ ({len(diffs)} differences), "
          f"ignoring {', '.join(sorted(TIMING_FIELDS))}")  # fmt: skip
    return 1 if diffs else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
