"""A fake experiment that holds its run open until told to finish (for the lock tests).

With the options ``ready=PATH, release=PATH`` it runs its jobs (config.json and rows written,
as the real experiments do, under the experiment directory's lock), then, while summarising,
creates ``ready`` and waits until ``release`` exists.
"""

from __future__ import annotations

import time
from pathlib import Path

from boxhack.experiments.spec import Option
from boxhack.infra.files import atomic_write
from report_fakes import fake


def configure(settings, options):
    return {**fake.configure(settings, {"n": 3}), "ready": options["ready"],
            "release": options["release"]}


def summarise(config, rows, ctx):
    if config["ready"] is not None:
        atomic_write(config["ready"], "ready\n")
        deadline = time.monotonic() + 600  # a safety net: the test releases it in seconds
        while not Path(config["release"]).exists():
            if time.monotonic() > deadline:
                raise TimeoutError("never released")
            time.sleep(0.02)
    return fake.summarise(config, rows, ctx)


EXPERIMENT, PRESENTER = fake.declare(
    "slow", "A slow fake experiment", configure=configure, summarise=summarise,
    options=(Option("ready", str, None, "file to create once the jobs ran"),
             Option("release", str, None, "file to wait for")))
