"""``njit``/``prange`` for the abstraction kernels, with a plain-Python fallback.

numba is a dependency; should it fail to import, the kernels run as ordinary (slow) Python
functions with the same results, so a broken install never changes a decision.
"""

from __future__ import annotations

try:  # pragma: no cover - depends on the installation
    from numba import njit as _njit
    from numba import prange

    HAVE_NUMBA = True
except Exception:  # noqa: BLE001 # pragma: no cover - a broken numba install
    HAVE_NUMBA = False
    prange = range

    def _njit(*args, **kwargs):
        if args and callable(args[0]):
            return args[0]
        return lambda fn: fn


def njit(*, parallel: bool = False):
    """Compile with numba (cached, no fast-math so IEEE results are exact) when available."""
    return _njit(parallel=parallel, cache=True, nogil=True, fastmath=False)


__all__ = ["HAVE_NUMBA", "njit", "prange"]
