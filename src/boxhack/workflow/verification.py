"""``boxhack verify``, whole: every stored success re-checked, every recorded outcome and every
summary re-derived.

:func:`verify_run` runs :func:`boxhack.experiments.recheck.verify_path` (each stored input
re-decided by the exact model and monitor, and each row's recorded per-sample outcomes and
counts compared with that re-decision), then re-computes each ``summary.json`` of the run from
its rows alone (an experiment's with its declaration's ``summarise``, an audit's with
:func:`boxhack.workflow.audit.resummarise`) and compares it with the stored one, field by field
(clocks and the presenter's sentences and figures aside). Any difference is a disagreement:
it is listed and the verdict is not ok.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from boxhack.errors import BoxhackError
from boxhack.experiments.recheck import ROWS, VerifySummary, verify_path
from boxhack.experiments.spec import SUMMARY_FILE, RunContext, load_config_and_rows
from boxhack.infra.arrays import to_jsonable
from boxhack.workflow import registry

__all__ = ["compare_summaries", "verify_run"]

# Not re-derived: clocks (the run's wall time is not in the rows), and what the presenter
# writes about the data (sentences, figure files) rather than the data.
UNCHECKED = ("timing", "figures", "paper", "notes", "description", "title", "name", "config")
MAX_LISTED = 20


def compare_summaries(stored: Any, recomputed: Any, path: str = "") -> list[dict[str, Any]]:
    """Leaf by leaf, where ``stored`` (read from ``summary.json``) differs from ``recomputed``
    (made JSON the way ``summary.json`` is written). ``[{"field", "recorded",
    "recomputed"}]``, at most :data:`MAX_LISTED`."""
    recomputed = json.loads(json.dumps(to_jsonable(recomputed), allow_nan=True))
    out: list[dict[str, Any]] = []
    _diff(stored, recomputed, path, out)
    return out[:MAX_LISTED]


def _diff(a: Any, b: Any, path: str, out: list) -> None:
    if len(out) >= MAX_LISTED:
        return
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in sorted(set(a) | set(b), key=str):
            here = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                out.append({"field": here, "recorded": a.get(k, "missing"),
                            "recomputed": b.get(k, "missing")})  # fmt: skip
            else:
                _diff(a[k], b[k], here, out)
        return
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", out)
        return
    if _same(a, b):
        return
    out.append({"field": path, "recorded": a, "recomputed": b})


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (math.isnan(a) and math.isnan(b))
    if a is None and isinstance(b, float) and math.isnan(b):  # NaN is written as null
        return True
    return type(a) is type(b) and a == b


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BoxhackError(f"cannot read {path}: {exc}; re-summarise it "
                           "(`boxhack report`) or run the experiment again") from None
    if not isinstance(value, dict):
        raise BoxhackError(f"{path} is not a summary (not a JSON object)")
    return value


def _recomputed(run_dir: Path, name: str, exp_dir: Path, stored: dict) -> dict | None:
    """The summary data of ``exp_dir`` from its rows, or ``None`` when nothing re-derives it."""
    if name == "audit" and (run_dir / SUMMARY_FILE).is_file() and exp_dir.parent == run_dir:
        from boxhack.workflow.audit import resummarise  # torch: only for an audit

        return resummarise(run_dir, stored)
    if not registry.is_registered(name):
        return None
    reg = registry.load(name)
    ctx = RunContext.of(run_dir)
    config, rows = load_config_and_rows(reg.experiment, ctx)
    return reg.experiment.summarise(config, rows, ctx)


def _check_summaries(summary: VerifySummary, run_dir: Path, exp_dirs: list[Path]) -> None:
    for exp_dir in exp_dirs:
        name = exp_dir.name
        audit = name == "audit" and (run_dir / SUMMARY_FILE).is_file()
        path = run_dir / SUMMARY_FILE if audit else exp_dir / SUMMARY_FILE
        if not path.is_file():
            continue
        stored = _read_json(path)
        try:
            data = _recomputed(run_dir, name, exp_dir, stored)
        except BoxhackError as exc:
            raise BoxhackError(f"{path}: cannot re-derive it from the rows: {exc}") from None
        if data is None:
            continue
        summary.summaries += 1
        keys = set(data) - set(UNCHECKED)
        for d in compare_summaries({k: stored.get(k, "missing") for k in keys},
                                   {k: data[k] for k in keys}):  # fmt: skip
            summary.disagreements.append({"experiment": name, "key": None, "record": None,
                                          "file": str(path), **d, "sample": None})


def verify_run(path: str | os.PathLike, *, model_loader: Callable | None = None
               ) -> VerifySummary:
    """Re-check a run directory or a ``--save`` file (see the module docstring)."""
    summary = verify_path(path, model_loader=model_loader)
    p = Path(path)
    if summary.kind == "run":
        if (p / ROWS).is_file():
            run_dir, exp_dirs = p.parent, [p]
        else:
            run_dir, exp_dirs = p, sorted(d.parent for d in p.glob(f"*/{ROWS}"))
        _check_summaries(summary, run_dir, exp_dirs)
    return summary
