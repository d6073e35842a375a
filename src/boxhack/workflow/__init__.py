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

import importlib
from typing import Any

# The names below load on first use (PEP 562), so that importing boxhack.workflow.registry -
# as `boxhack --help` does - does not import torch, SciPy or matplotlib.
_LAZY = {
    "check_report": "reproduction", "comparable": "reproduction", "failed_experiments": "reproduction",
    "rebuild_report": "reproduction", "render_report": "reproduction", "reproduce": "reproduction",
    "resolve_only": "reproduction", "unknown_experiments": "reproduction", "run": "runner",
    "summarise": "runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"boxhack.workflow.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'boxhack.workflow' has no attribute {name!r}")


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
