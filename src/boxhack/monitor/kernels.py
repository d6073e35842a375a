"""Compiled query kernel: is each row inside one of its predicted class's boxes?

The decision needs no margin, so a compiled loop can stop at the first violated dimension
of a box and at the first box that contains the row. That early exit is what vectorised
array code cannot do: it always touches all N x k x d numbers. With numba the kernel makes
tens of millions of decisions per second on two cores (``benchmarks/monitor.py``); without
numba ``accept_rows`` returns None and the caller falls back to the torch broadcast path.
"""

from __future__ import annotations

import numpy as np

try:  # numba is a dependency, but a broken install must not break the monitor
    from numba import njit, prange
except Exception:  # pragma: no cover - exercised only without numba
    njit = None


if njit is not None:

    @njit(parallel=True, cache=True, nogil=True)
    def _accept_kernel(x, pred, lo, hi, start, count, out):  # pragma: no cover - compiled
        n, d = x.shape
        for i in prange(n):
            c = pred[i]
            inside = False
            for b in range(start[c], start[c] + count[c]):
                ok = True
                for j in range(d):
                    v = x[i, j]
                    if v < lo[b, j] or v > hi[b, j]:
                        ok = False
                        break
                if ok:
                    inside = True
                    break
            out[i] = inside


def accept_rows(
    x: np.ndarray, pred: np.ndarray, lo: np.ndarray, hi: np.ndarray, box_class: np.ndarray,
    n_classes: int,
) -> np.ndarray | None:
    """Boolean (N,): row i lies in a box of class ``pred[i]`` (bounds inclusive).

    ``lo``/``hi`` are (B, d) float32 boxes sorted by ``box_class`` (B,). NaN rows are never
    inside (every comparison with NaN is false, so the "violated" test must be written as
    ``not (lo <= v <= hi)``; callers reject NaN before this anyway). Returns None when numba
    is unavailable.
    """
    if njit is None:
        return None
    counts = np.bincount(box_class, minlength=n_classes).astype(np.int64)
    starts = np.zeros(n_classes, dtype=np.int64)
    starts[1:] = np.cumsum(counts)[:-1]
    out = np.empty(len(x), dtype=np.bool_)
    _accept_kernel(
        np.ascontiguousarray(x, dtype=np.float32),
        np.ascontiguousarray(pred, dtype=np.int64),
        np.ascontiguousarray(lo, dtype=np.float32),
        np.ascontiguousarray(hi, dtype=np.float32),
        starts, counts, out,
    )
    return out
