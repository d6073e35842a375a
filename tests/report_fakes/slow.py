"""A fake experiment that holds its run open until told to finish (for the lock tests).

``run(..., ready=PATH, release=PATH)`` locks and writes its own directory (config.json and
rows, as the real experiments do), then creates ``ready`` and waits until ``release`` exists.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from boxhack.infra.files import atomic_write
from boxhack.infra.locks import exclusive
from report_fakes import fake

NAME = "slow"
TITLE = "A slow fake experiment"


def run(out_dir, *, quick=False, n_jobs=None, scheduler=None, seed=0, progress=True,
        models_root=None, ready=None, release=None, n=3):
    d = Path(out_dir) / NAME
    with exclusive(d, "experiment directory"):
        atomic_write(d / "config.json", json.dumps({"n": n, "seed": seed}) + "\n")
        fake.write_rows(NAME, d, n, seed)
        if ready is not None:
            atomic_write(ready, "ready\n")
            deadline = time.monotonic() + 600  # a safety net: the test releases it in seconds
            while not Path(release).exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("never released")
                time.sleep(0.02)
    return summarise(out_dir)


def summarise(out_dir):
    return fake.summarise_as(NAME, out_dir)
