"""Run one registered experiment, or summarise it again from its rows: the declaration's data
and the presenter's figures and sentences, written together into ``summary.json``.

``summary.json`` holds, in this order: ``name``, ``title``, ``description``, ``config`` (what
the report shows as the configuration), the experiment's summary data (``tables`` and its own
numbers), ``figures`` (``[{"path", "caption"}]``, relative to the experiment's directory),
``paper`` (``[{"claim", "measured", "note"}]``), ``notes`` and ``timing`` (every clock of the
summary: the runs' wall time from ``timing.json``, the jobs' summed time, counts).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from boxhack.experiments.spec import (
    SUMMARY_FILE,
    RunContext,
    Settings,
    load_config_and_rows,
    load_timing,
    run_jobs,
    start_run,
)
from boxhack.infra.files import atomic_write_json
from boxhack.infra.locks import exclusive
from boxhack.workflow import registry
from boxhack.workflow.registry import Registered

__all__ = ["run", "summarise"]


def run(
    name: str,
    out_dir: str | Path,
    settings: Settings | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    models_root: str | Path | None = None,
) -> dict[str, Any]:
    """Run registered experiment ``name`` into ``out_dir/<name>/`` (resumable): its jobs as a
    campaign, then its summary, figures and sentences; returns the summary (as written to
    ``summary.json``).

    Settings and options are checked, and ``out_dir`` made sure to be writable, before
    anything is written; the experiment's directory is locked for the whole run, so a second
    run on it is refused at once and changes nothing.
    """
    reg = registry.load(name)
    config, ctx, settings = start_run(reg.experiment, out_dir, settings or Settings(),
                                      models_root=models_root, options=options)  # fmt: skip
    with exclusive(ctx.exp_dir(name), f"experiment {name!r} directory"):
        run_jobs(reg.experiment, config, ctx, settings)
        return _summarise_locked(reg, ctx)


def summarise(
    name: str, out_dir: str | Path, *, models_root: str | Path | None = None
) -> dict[str, Any]:
    """Rebuild ``summary.json`` and the figures of ``out_dir/<name>/`` from its stored
    ``config.json`` and ``rows.jsonl`` alone (nothing is run); returns the summary."""
    reg = registry.load(name)
    ctx = RunContext.of(out_dir, models_root)
    with exclusive(ctx.exp_dir(name), f"experiment directory ({name})"):
        return _summarise_locked(reg, ctx)


def _timing(exp_dir: Path, config: Mapping[str, Any], rows: list[dict]) -> dict[str, Any]:
    runs = load_timing(exp_dir)["runs"]
    return {
        "wall_s": float(sum(float(r.get("wall_s") or 0.0) for r in runs)) if runs else None,
        "job_s": float(sum(float(r.get("wall_s") or 0.0) for r in rows)),
        "jobs": len(config["keys"]),
        "rows": len(rows),
        "errors": sum(r.get("status") != "ok" for r in rows),
        "runs": runs,
    }


def _summarise_locked(reg: Registered, ctx: RunContext) -> dict[str, Any]:
    config, rows = load_config_and_rows(reg.experiment, ctx)
    data = reg.experiment.summarise(config, rows, ctx)
    exp_dir = ctx.exp_dir(reg.name)
    figures = reg.presenter.draw(config, rows, data, exp_dir)
    text = reg.presenter.describe(config, data)
    shown = data.get("config", {k: v for k, v in config.items() if k != "keys"})
    summary = {
        "name": reg.name,
        "title": reg.experiment.title,
        "description": text.get("description") or reg.experiment.description,
        "config": shown,
        **{k: v for k, v in data.items() if k not in ("config", "timing")},
        "figures": figures,
        "paper": text.get("paper") or [],
        "notes": text.get("notes") or [],
        "timing": _timing(exp_dir, config, rows),
    }
    atomic_write_json(exp_dir / SUMMARY_FILE, summary)
    return summary
