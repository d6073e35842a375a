"""Files written so that a kill, a full disk or a crash never leaves half of one behind.

Every file boxhack writes (model, monitor, config, summary, report, saved attack inputs) goes
through :func:`atomic_write` or :func:`atomic_path`: the bytes go to a temporary file in the same
directory, are flushed and fsync'd, and only then renamed over the target (``os.replace`` is
atomic on POSIX). A reader therefore sees either the old file or the whole new one, never a
truncated one; an interrupted write leaves at most a ``*.tmp`` file, which is removed when the
write fails inside Python.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from boxhack.errors import BoxhackError

__all__ = ["atomic_path", "atomic_write", "atomic_write_json", "check_output_dir", "fsync_dir"]


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in directory ``path`` durable (best effort, POSIX only)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0666 minus the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit, fsync it and rename it to
    ``path``. On an exception the temporary file is removed and ``path`` is left untouched.

    For writers that want a file name (``torch.save``, ``np.savez``)::

        with atomic_path(out / "model.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, _file_mode())  # mkstemp makes 0600; files are created as open() would
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(raw)
    return path


def atomic_write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 1) -> Path:
    """Write ``value`` as strict JSON (no NaN) to ``path`` atomically."""
    from boxhack.infra.arrays import to_jsonable  # numpy: not needed by the other writers

    text = json.dumps(to_jsonable(value), indent=indent, allow_nan=False, ensure_ascii=False)
    return atomic_write(path, text + "\n")


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create directory ``path`` (and parents) or say clearly why it cannot be used.

    Raises :class:`BoxhackError` when ``path`` is an existing file, or the directory cannot be
    created or written to (read-only file system, no permission).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BoxhackError(f"{what} {path} is a file, not a directory; give a directory path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BoxhackError(
            f"cannot create {what} directory {path}: {exc.strerror or exc}; choose a writable "
            f"location"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise BoxhackError(f"{what} directory {path} is not writable; choose a writable location")
    try:
        fd, probe = tempfile.mkstemp(prefix=".boxhack-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BoxhackError(
            f"cannot write into {what} directory {path}: {exc.strerror or exc}; choose a "
            f"writable location"
        ) from None
    return path
