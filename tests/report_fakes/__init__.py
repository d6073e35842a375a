"""Tiny experiments following the experiment contract (``EXPERIMENT`` and ``PRESENTER`` in one
module each), for tests/test_report.py and tests/test_reproduce.py.

reproduce and report only ever run the experiments of :mod:`boxhack.workflow.registry`; the
tests register these fakes there in-process with :func:`use`, never through anything written
in a run directory.
"""

from __future__ import annotations

from typing import Any

FAKES = {
    "fake": "report_fakes.fake",
    "other": "report_fakes.other",
    "broken": "report_fakes.broken",
    "slow": "report_fakes.slow",
    "missing": "report_fakes.missing",  # no such module: a broken installation
}


def use(monkeypatch: Any, *names: str) -> dict[str, Any]:
    """Make the registry hold exactly the fakes ``names`` (in that order) for this test."""
    from boxhack.workflow import registry

    chosen = {name: registry.Entry(FAKES[name], FAKES[name]) for name in names}
    monkeypatch.setattr(registry, "EXPERIMENTS", chosen)
    return chosen
