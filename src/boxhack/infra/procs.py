"""Child processes that never outlive the run that started them.

Killing a campaign (SIGKILL or SIGTERM on the parent) must end every process it started: its
pool workers and, through them, their sandbox processes. Two mechanisms, both needed:

- :func:`die_with_parent`, called first thing in a child: on Linux ``PR_SET_PDEATHSIG``
  (SIGKILL) makes the kernel kill the child the moment its parent goes, however the parent
  goes, SIGKILL included. The kernel sends it when the *thread* that created the child exits,
  not the process: see :func:`boxhack.infra.campaign` for why that thread outlives the
  pool. A daemon thread also polls ``getppid()`` once a second and kills the child when it has
  been re-parented (a platform without ``prctl``, or a parent that died before ``prctl``).
  A child killed this way takes its own children with it when they use the same mechanism
  (the sandbox does).
- :func:`sigterm_raises`, in the parent: SIGTERM raises :class:`Terminated` (a
  ``KeyboardInterrupt``), so the code holding a pool shuts it down and kills its workers on
  the way out, and ``reproduce`` records the experiment as interrupted, exactly as for Ctrl-C.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Terminated", "die_with_parent", "sigterm_raises"]

_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stop like Ctrl-C (clean up, record the interruption, exit)."""


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int, interval: float) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent(parent_pid: int, *, poll_interval: float = 1.0) -> None:
    """Make this process die (SIGKILL) when process ``parent_pid``, its parent, goes away.

    Call it first thing in a child. If the parent is already gone, the child exits at once.
    """
    _set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(
        target=_watch_parent, args=(parent_pid, poll_interval), name="boxhack-parent-watch",
        daemon=True,
    ).start()


@contextmanager
def sigterm_raises() -> Iterator[bool]:
    """While the block runs, SIGTERM raises :class:`Terminated` in the main thread.

    Only installed from the main thread, and only over the default SIGTERM action: a handler
    the program (or C code) set itself is left alone, and so is an enclosing ``sigterm_raises`` (nesting is
    a no-op). A second SIGTERM, during the clean-up, kills the process at once. Yields whether
    the handler was installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, AttributeError):  # no SIGTERM on this platform
        yield False
        return
    if previous is not signal.SIG_DFL:
        yield False
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends us at once
        raise Terminated("terminated (SIGTERM)")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield True
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
