"""Exclusive, non-blocking locks on run directories (POSIX ``flock``).

Take the lock *before* writing anything into a directory another process may be using: a
second campaign on the same ``--out`` must be refused before it rewrites ``config.json``.
The lock is released when the process exits, however it exits (the kernel drops ``flock``
locks with the file descriptor), so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from boxhack.errors import BoxhackError

__all__ = ["LOCK_NAME", "exclusive"]

LOCK_NAME = ".lock"


@contextmanager
def exclusive(directory: str | os.PathLike, what: str = "run directory") -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` (created if missing) while the block runs.

    Raises :class:`BoxhackError` at once, writing nothing else, when another process holds it.
    Re-entrant within a process is *not* supported: lock each directory once.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fh = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        try:
            import fcntl  # POSIX only
        except ImportError:  # not POSIX: no advisory locks; proceed unlocked
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise BoxhackError(
                    f"{what} {directory} is in use by {holder}; wait for that run to finish "
                    f"(or stop it), or choose another directory. Nothing was written."
                ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"boxhack process {os.getpid()}\n")
        fh.flush()
        yield directory
    finally:
        fh.close()
