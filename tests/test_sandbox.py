"""The sandbox (boxhack.infra.sandbox): tasks killed by their safety net keep what they
reported, memory limits give "out-of-memory", crashes and errors are outcomes, start-up is
outside the safety net; both start methods (zygote, plain subprocess).

The task functions live in tests/sandbox_tasks.py (no test-only code in the package); the
sandbox processes find them because this directory is put on PYTHONPATH, which they inherit.
No test asserts that something took less than N seconds; "did not hang" bounds are generous.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from boxhack.errors import BoxhackError
from boxhack.infra.sandbox import SandboxPool, Task, run_task

TESTS_DIR = Path(__file__).resolve().parent
NET = 300.0  # safety net of tasks that return by themselves


@pytest.fixture(autouse=True)
def _sandbox_finds_the_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sandbox processes copy this environment: they must import sandbox_tasks."""
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), *([old] if old else [])]))


def test_sandbox_kills_a_solve_stuck_in_c_code_and_keeps_its_best_point():
    """A task stuck in C code (like qhull) is killed by the safety net; the value it reported
    and the count it stored before come back; the pool carries on with a fresh worker."""
    with SandboxPool(1) as pool:
        out = pool.run([
            Task("sandbox_tasks:report_then_sleep_task",
                 {"report": [1.0, 2.0], "count": 1234, "sleep": 600}, time_limit=2.0),
            Task("sandbox_tasks:sleep_task", 0.01, time_limit=NET),
        ])  # fmt: skip
    assert out[0].status == "timeout"  # killed, not slept for 600 s (that would end "ok")
    assert "safety net" in out[0].message
    assert out[0].progress == [1.0, 2.0]
    assert out[0].count == 1234
    assert out[0].wall_s >= 2.0
    assert out[1].status == "ok" and out[1].value == "slept"
    assert out[1].count == 0  # the counter is reset for every task


@pytest.mark.parametrize("method", ["subprocess", "zygote"])
def test_sandbox_start_up_is_outside_the_safety_net(tmp_path, monkeypatch, method):
    """A worker whose start-up (imports) takes longer than the task's safety net still runs the
    task to its end: the clock starts when the task starts in the worker."""
    (tmp_path / "boxhack_test_slow_import.py").write_text("import time\ntime.sleep(3.0)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ["PYTHONPATH"]]))
    with SandboxPool(1, preload=("boxhack_test_slow_import",), method=method) as pool:
        out = pool.run([Task("sandbox_tasks:sleep_task", 0.2, time_limit=2.0)])
    assert out[0].status == "ok" and out[0].value == "slept"


def test_sandbox_memory_limit_gives_out_of_memory():
    with SandboxPool(1) as pool:
        out = pool.run([
            Task("sandbox_tasks:allocate_task", 1500, time_limit=NET, memory_limit_mb=300),
            Task("sandbox_tasks:allocate_task", 50, time_limit=NET, memory_limit_mb=300),
        ])  # fmt: skip
    assert out[0].status == "out-of-memory"
    assert out[1].status == "ok"


def test_sandbox_reports_errors_and_crashes():
    with SandboxPool(1) as pool:
        out = pool.run([
            Task("sandbox_tasks:no_such_task", None, time_limit=NET),
            Task("sandbox_tasks:crash_task", None, time_limit=NET),
            Task("sandbox_tasks:sleep_task", 0.01, time_limit=NET),
        ])  # fmt: skip
    assert out[0].status == "error" and "no_such_task" in out[0].message
    assert out[1].status == "error" and "crash" in out[1].message
    assert out[2].status == "ok"


def test_subprocess_method_works_too():
    with SandboxPool(1, method="subprocess") as pool:
        out = pool.run([Task("sandbox_tasks:sleep_task", 0.01, time_limit=NET)])
    assert out[0].status == "ok"


def test_workers_are_reused_and_outcomes_keep_their_order():
    with SandboxPool(2) as pool:
        out = pool.run([Task("sandbox_tasks:pid_task", None, time_limit=NET) for _ in range(6)])
    assert [o.status for o in out] == ["ok"] * 6
    assert len({o.value for o in out}) <= 2  # two workers, reused
    assert all(o.worker in (1, 2) for o in out)


def test_run_task_uses_the_shared_pool():
    out = run_task("sandbox_tasks:sleep_task", 0.01, time_limit=NET)
    assert out.status == "ok" and out.value == "slept"


def test_a_worker_that_cannot_start_is_a_clear_error():
    pool = SandboxPool(1, preload=("boxhack_no_such_module_anywhere",), method="subprocess")
    with pool, pytest.raises(BoxhackError, match="failed to start.*no_such_module_anywhere"):
        pool.run([Task("sandbox_tasks:sleep_task", 0.01, time_limit=NET)])


def test_bad_pool_settings():
    with pytest.raises(BoxhackError, match="size"):
        SandboxPool(0)
    with pytest.raises(BoxhackError, match="method"):
        SandboxPool(1, method="threads")
