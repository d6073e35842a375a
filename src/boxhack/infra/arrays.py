"""Arrays stored exactly inside JSON rows: float32 bits, not rounded text.

A stored attack input must re-check exactly as it was found: an input one float32 step inside
a box and the same input rounded to 4 decimals can get different verdicts. So arrays are stored
as their raw little-endian bytes, base64-encoded, with dtype and shape::

    {"__array__": "float32", "shape": [1, 28, 28], "b64": "AACAPwAA..."}

which :func:`decode_array` turns back into the identical array (``np.array_equal`` and equal
bits). :func:`to_jsonable` is the numpy-aware JSON conversion used for every row.
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from boxhack.errors import BoxhackError

__all__ = ["decode_array", "encode_array", "is_encoded_array", "to_jsonable"]

_DTYPES = ("float32", "float64", "int64", "int32", "uint8", "bool")


def encode_array(a: Any, dtype: str = "float32") -> dict[str, Any]:
    """``a`` as a JSON-able dict holding its exact bytes (cast to ``dtype`` first)."""
    if dtype not in _DTYPES:
        raise BoxhackError(f"cannot store arrays of dtype {dtype!r}; use one of {_DTYPES}")
    arr = np.ascontiguousarray(np.asarray(a), dtype=np.dtype(dtype).newbyteorder("<"))
    return {
        "__array__": dtype,
        "shape": [int(s) for s in arr.shape],
        "b64": base64.b64encode(arr.tobytes()).decode("ascii"),
    }


def is_encoded_array(value: Any) -> bool:
    return isinstance(value, Mapping) and "__array__" in value and "b64" in value


def decode_array(value: Mapping[str, Any]) -> np.ndarray:
    """The array :func:`encode_array` stored (a fresh, writable native-order array)."""
    if not is_encoded_array(value):
        raise BoxhackError(f"not a stored array: {str(value)[:80]!r}")
    dtype = value["__array__"]
    if dtype not in _DTYPES:
        raise BoxhackError(f"stored array has unknown dtype {dtype!r}")
    try:
        shape = tuple(int(s) for s in value["shape"])
        raw = base64.b64decode(value["b64"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise BoxhackError(f"stored array is damaged ({exc})") from None
    dt = np.dtype(dtype).newbyteorder("<")
    if len(raw) != dt.itemsize * math.prod(shape):
        raise BoxhackError(
            f"stored array is damaged: {len(raw)} bytes for shape {shape} of {dtype}"
        )
    return np.frombuffer(raw, dtype=dt).reshape(shape).astype(np.dtype(dtype), copy=True)


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types: numpy scalars -> Python numbers, arrays -> nested lists,
    tuples -> lists, paths -> strings, non-finite floats -> ``None``.

    Raises ``TypeError`` for anything else (sets, arbitrary objects), naming the type.
    """
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if not isinstance(k, str):  # like json: 1 -> "1", True -> "true", None -> "null"
                k = to_jsonable(k)
                if isinstance(k, (list, dict)):
                    raise TypeError("a list or dict cannot be a JSON object key")
                k = k if isinstance(k, str) else json.dumps(k)
            out[k] = to_jsonable(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (np.generic, np.ndarray)):
        return to_jsonable(obj.tolist())
    raise TypeError(f"object of type {type(obj).__name__} is not JSON-serialisable")
