"""Job functions for tests/test_campaign.py.

They live in their own module (not in the test file) so spawned worker processes and Dask
workers can import them: the tests put this directory on PYTHONPATH before starting workers.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from boxhack.infra.campaign import Job


def make_jobs(n: int, sleep: float = 0.0, prefix: str = "grid", **extra: Any) -> list[Job]:
    """``n`` jobs with keys ``prefix/x/<i>``; a deterministic result follows from the params."""
    return [Job(f"{prefix}/x/{i}", {"x": i, "sleep": sleep, **extra}) for i in range(n)]


def square(params: dict[str, Any]) -> dict[str, Any]:
    """Deterministic, with numpy values and a NaN to exercise the encoder."""
    time.sleep(params.get("sleep", 0.0))
    x = params["x"]
    return {
        "y": np.int64(x * x),
        "half": np.float32(x) / 2,
        "row": np.arange(3) * x,
        "nan": float("nan"),
        "label": f"x={x}",
    }


def flaky(params: dict[str, Any]) -> dict[str, Any]:
    """Raises for odd ``x`` until the file ``params["flag"]`` exists."""
    if params["x"] % 2 == 1 and not Path(params["flag"]).exists():
        raise ValueError(f"odd x={params['x']}")
    return square(params)


def returns_list(params: dict[str, Any]) -> Any:
    return [params["x"]]


def dies(params: dict[str, Any]) -> dict[str, Any]:
    """The worker process running ``x == params["die_at"]`` kills itself, as the OOM killer would."""
    if params["x"] == params["die_at"]:
        os.kill(os.getpid(), signal.SIGKILL)
    return square(params)


def torch_threads(params: dict[str, Any]) -> dict[str, Any]:
    """How many intra-op threads torch gets in a worker (torch is imported only here)."""
    import torch

    return {"threads": torch.get_num_threads()}


def sleeps_with_sandbox(params: dict[str, Any]) -> dict[str, Any]:
    """Record this worker's pid, then run a sandbox task that records its own pid and sleeps:
    a campaign job holding a worker process and a sandbox process (for the kill tests)."""
    from boxhack.infra.sandbox import run_task

    (Path(params["pids"]) / f"worker-{os.getpid()}").touch()
    outcome = run_task("campaign_jobs:sandbox_sleep",
                       {"pids": params["pids"], "sleep": params["sleep"]})
    return {"status": outcome.status}


def sandbox_sleep(args: dict[str, Any], ctx: Any) -> str:
    """A sandbox task (runs in the sandbox's own process): record the pid, sleep."""
    (Path(args["pids"]) / f"sandbox-{os.getpid()}").touch()
    time.sleep(float(args["sleep"]))
    return "slept"
