"""A fake experiment whose plan always raises (after the options were checked)."""

from __future__ import annotations

from report_fakes import fake


def plan(config, ctx):
    raise RuntimeError("broken on purpose")


EXPERIMENT, PRESENTER = fake.declare("broken", "Broken on purpose", plan=plan)
