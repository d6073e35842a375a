"""Task functions for tests/test_sandbox.py (test-only code, kept out of the package).

They live in their own module (not in the test file) so sandbox processes can import them by
name (``"sandbox_tasks:sleep_task"``): the tests put this directory on PYTHONPATH before a
pool starts its processes, whose environment is copied from the parent's.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from boxhack.infra.sandbox import TaskContext


def sleep_task(args: Any, ctx: TaskContext) -> str:
    """Sleep ``args`` seconds (a solver stuck in C code)."""
    time.sleep(float(args))
    return "slept"


def report_then_sleep_task(args: dict[str, Any], ctx: TaskContext) -> str:
    """Count to ``args["count"]`` (default 0) and report ``args["report"]``, then sleep
    ``args["sleep"]`` seconds (work done, then stuck in C code)."""
    for i in range(1, int(args.get("count", 0)) + 1):
        ctx.count(i)
    ctx.report(args["report"])
    time.sleep(float(args["sleep"]))
    return "slept"


def crash_task(args: Any, ctx: TaskContext) -> None:
    """Die abruptly (to test how crashes are reported)."""
    os.abort()


def allocate_task(args: Any, ctx: TaskContext) -> float:
    """Allocate ``args`` MiB and touch it (to test the memory limit)."""
    block = np.ones(int(args * 2**20 // 8))
    return float(block.sum())


def pid_task(args: Any, ctx: TaskContext) -> int:
    """This worker's process id."""
    return os.getpid()
