"""Compiled kernels for the abstraction family: numba with a serial twin, and a plain-Python
fallback.

Every kernel is compiled twice, parallel (``prange`` over rows) and serial. The parallel one
runs only on batches large enough to pay for waking the threads and when at least two cores
are free (load average, less this process, at most usable cores - 2), on as many threads as
cores are free: on shared cores a parallel region waits for descheduled threads and a
20k-row batch takes a whole scheduler slice (measured: ~20 ms for work of ~2 ms; the box
kernel on 100k rows at load average 1.7 on 2 cores: 13 M decisions/s parallel, 40 M/s
serial). Rows are computed independently, so both give identical results.
``BOXHACK_KERNEL_THREADS=1`` forces the serial twin.

numba is a dependency; should it fail to import, the kernels run as ordinary (slow) Python
functions with the same results, so a broken install never changes a decision.
"""

from __future__ import annotations

import os
import time
import types

try:  # pragma: no cover - depends on the installation
    from numba import get_num_threads, prange, set_num_threads
    from numba import njit as _njit

    HAVE_NUMBA = True
except Exception:  # noqa: BLE001 # pragma: no cover - a broken numba install
    HAVE_NUMBA = False
    prange = range

    def _njit(*args, **kwargs):
        if args and callable(args[0]):
            return args[0]
        return lambda fn: fn


PARALLEL_MIN_ROWS = 50_000
_LOAD_CHECK_SECONDS = 1.0
_load = [0.0, 1.0]  # [time of the last check, free cores]


def njit(*, parallel: bool = False):
    """Compile with numba (cached, no fast-math so IEEE results are exact) when available."""
    return _njit(parallel=parallel, cache=True, nogil=True, fastmath=False)


def free_cores() -> float:
    """Usable cores not busy with other work: usable cores - (load average - 1), the 1 being
    this process (checked at most once a second)."""
    now = time.monotonic()
    if now - _load[0] > _LOAD_CHECK_SECONDS:
        try:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            _load[1] = (cpus or 1) - max(0.0, os.getloadavg()[0] - 1.0)
        except OSError:
            _load[1] = 1.0
        _load[0] = now
    return float(_load[1])


def contended() -> bool:
    """True when fewer than two cores are free: a parallel region would wait on threads that
    other processes keep off the cores."""
    return free_cores() < 2


def _twin(fn, suffix: str):
    """A copy of ``fn`` under another name: numba's on-disk cache keys entries by the
    function's qualified name and line, not by the compile options, so without it the
    parallel and the serial compilation would load each other's cached code."""
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix,
                              fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + suffix
    twin.__module__ = fn.__module__
    twin.__doc__ = fn.__doc__
    return twin


class Kernel:
    """A row-parallel kernel and its serial twin; call ``kernel(rows, *args)``."""

    def __init__(self, fn):
        self.parallel = njit(parallel=True)(_twin(fn, "__parallel"))
        self.serial = njit(parallel=False)(fn)
        self.__doc__ = fn.__doc__

    def __call__(self, rows: int, *args):
        if (rows < PARALLEL_MIN_ROWS or os.environ.get("BOXHACK_KERNEL_THREADS") == "1"
                or contended()):
            return self.serial(*args)
        if not HAVE_NUMBA:  # pragma: no cover - the plain-Python fallback
            return self.parallel(*args)
        threads = get_num_threads()
        use = min(threads, max(2, int(free_cores())))
        if use < 2:  # numba itself runs on one thread
            return self.serial(*args)
        set_num_threads(use)
        try:
            return self.parallel(*args)
        finally:
            set_num_threads(threads)


@njit()
def count_nonfinite_f32(bits):  # pragma: no cover - compiled
    """How many of the float32 values (given as their uint32 bits) are NaN or infinite: all
    exponent bits set. An integer reduction, so it vectorises without fast-math."""
    count = 0
    for i in range(bits.size):
        count += (bits[i] & 0x7F800000) == 0x7F800000
    return count


def kernel(fn) -> Kernel:
    """Decorator: compile ``fn`` (which loops over rows with ``prange``) as a :class:`Kernel`."""
    return Kernel(fn)


__all__ = ["HAVE_NUMBA", "PARALLEL_MIN_ROWS", "Kernel", "contended", "count_nonfinite_f32",
           "free_cores", "kernel", "njit", "prange"]
