"""Read and write IDX files (the MNIST / Fashion-MNIST format), gzipped or plain.

The format: 2 zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
then one big-endian uint32 per dimension, then the data. Errors name the file and say
what is wrong, so a truncated download or a swapped file is caught before training.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from boxhack.errors import BoxhackError

_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}


def _open(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` detected by content, not name)."""
    path = Path(path)
    if not path.is_file():
        raise BoxhackError(f"IDX file not found: {path}")
    try:
        with _open(path) as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise BoxhackError(f"cannot read IDX file {path}: {exc} (corrupt or truncated gzip?)")
    if len(raw) < 4:
        raise BoxhackError(f"IDX file {path} is truncated: only {len(raw)} bytes")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise BoxhackError(
            f"IDX file {path} has a wrong magic number {raw[:4].hex()}; "
            "expected 0000 + type code + ndim (is this really an IDX file?)"
        )
    dtype = _DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise BoxhackError(f"IDX file {path} is truncated inside its header")
    shape = tuple(int(v) for v in np.frombuffer(raw[4:header], dtype=">u4"))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = len(raw) - header
    if body != expected:
        what = "truncated" if body < expected else "longer than its header says"
        raise BoxhackError(
            f"IDX file {path} is {what}: header says shape {shape} "
            f"({expected} data bytes), file has {body}; re-download or re-extract it"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).copy()


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` (uint8 or int8) as IDX; gzip when ``compress`` or the name ends in .gz."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    if array.dtype not in _CODES:
        raise BoxhackError(f"write_idx supports uint8/int8 arrays, got {array.dtype}")
    header = bytes([0, 0, _CODES[array.dtype], array.ndim]) + np.asarray(
        array.shape, dtype=">u4"
    ).tobytes()
    data = header + array.tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path
