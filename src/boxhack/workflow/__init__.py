"""The top of the stack: the experiment registry (declaration + presentation), running and
summarising experiments, ``reproduce`` and ``report``. It may import every layer below it;
nothing below imports it.

- :mod:`boxhack.workflow.registry`: the one table of experiments (name -> ``EXPERIMENT`` and
  ``PRESENTER``), in run and report order;
- :func:`run` / :func:`summarise`: one experiment, run (resumable) or re-summarised from its
  rows, with its figures and sentences, into ``summary.json``;
- :func:`reproduce` / :func:`rebuild_report`: every experiment into one run directory and its
  HTML report, and the report rebuilt from the rows alone.
"""

from boxhack.workflow.reproduce import (
    check_report,
    comparable,
    failed_experiments,
    rebuild_report,
    render_report,
    reproduce,
    resolve_only,
    unknown_experiments,
)
from boxhack.workflow.runner import run, summarise

__all__ = [
    "check_report",
    "comparable",
    "failed_experiments",
    "rebuild_report",
    "render_report",
    "reproduce",
    "resolve_only",
    "run",
    "summarise",
    "unknown_experiments",
]
