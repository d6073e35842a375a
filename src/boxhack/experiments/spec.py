"""The experiment contract, as data: what an experiment declares, and the one way to run it.

An experiment is a grid of independent jobs whose rows are summarised into tables and numbers.
Each experiment module declares one :class:`Experiment`::

    EXPERIMENT = Experiment(
        name="gradient", title="...", description="...",
        options=(Option("n", int, 100, "samples per goal", quick=12), ...),
        configure=configure,   # (settings, options) -> config: a JSON-able dict, pure
        plan=plan,             # (config, ctx) -> (config, [Job]): prepare networks, draw samples
        job=job,               # params -> row result (a top-level function, picklable)
        summarise=summarise,   # (config, rows, ctx) -> summary data (tables, numbers)
    )

and :func:`run_experiment` runs any of them the same way: lock the experiment's directory
before writing anything, configure, plan, write ``config.json`` (atomically), run the jobs as a
resumable campaign into ``rows.jsonl``, and summarise the rows of *this* configuration.
Figures and sentences are presentation: they live in :mod:`boxhack.report`, and
:mod:`boxhack.workflow` puts the two together (the registry, ``reproduce``, ``report``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boxhack.errors import BoxhackError
from boxhack.infra.campaign import Job, run_campaign
from boxhack.infra.files import atomic_write_json, check_output_dir
from boxhack.infra.jsonl import latest_by_key, read_rows
from boxhack.infra.locks import exclusive

__all__ = [
    "CONFIG_FILE",
    "ROWS_FILE",
    "SUMMARY_FILE",
    "Experiment",
    "Option",
    "RunContext",
    "Settings",
    "load_config_and_rows",
    "run_experiment",
]

ROWS_FILE = "rows.jsonl"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class Option:
    """One experiment-specific option; the CLI's ``boxhack experiment NAME`` flags are
    generated from these (``--name-with-dashes``).

    ``kind``: ``int``, ``float``, ``str``, ``bool`` or ``"list"`` (comma-separated strings;
    ``choices`` then limits the items). ``quick`` is the default in quick mode (``None``: same
    as ``default``).
    """

    name: str
    kind: Any
    default: Any
    help: str
    choices: Sequence[Any] | None = None
    quick: Any = None
    minimum: float | None = None

    def default_for(self, quick: bool) -> Any:
        return self.quick if quick and self.quick is not None else self.default


@dataclass(frozen=True)
class Settings:
    """What every experiment gets, whatever its grid."""

    quick: bool = False
    seed: int = 0
    n_jobs: int | None = None
    scheduler: str | None = None
    progress: bool = True
    solve_timeout: float | None = None  # a safety net for experiments that run SciPy solves
    client: Any = None  # an existing dask.distributed Client (not stored)


@dataclass(frozen=True)
class RunContext:
    """Where an experiment runs: the run directory, its own sub-directory, the model cache."""

    out_dir: Path
    models_root: Path

    def exp_dir(self, name: str) -> Path:
        return self.out_dir / name


@dataclass(frozen=True)
class Experiment:
    """An experiment's declaration (see the module docstring)."""

    name: str
    title: str
    description: str
    configure: Callable[[Settings, Mapping[str, Any]], dict]
    plan: Callable[[dict, RunContext], tuple[dict, list[Job]]]
    job: Callable[[dict], Mapping[str, Any]]
    summarise: Callable[[dict, list[dict], RunContext], dict]
    options: tuple[Option, ...] = field(default_factory=tuple)

    def option_names(self) -> list[str]:
        return [o.name for o in self.options]

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` with unknown names refused (one clear error)."""
        unknown = sorted(set(options) - set(self.option_names()))
        if unknown:
            known = ", ".join(self.option_names()) or "(none)"
            raise BoxhackError(
                f"experiment {self.name!r} has no option(s) {', '.join(unknown)}; its options: "
                f"{known}"
            )
        return dict(options)


def run_experiment(
    experiment: Experiment,
    out_dir: str | Path,
    settings: Settings = Settings(),
    *,
    models_root: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict:
    """Run ``experiment`` into ``out_dir/<name>/`` (resumable); return its summary data.

    The experiment directory is locked before anything is written: a second run on the same
    directory is refused at once and leaves the first run's files untouched.
    """
    start = time.perf_counter()
    opts = experiment.check_options(options or {})
    config = experiment.configure(settings, opts)
    out = check_output_dir(out_dir)
    ctx = RunContext(out_dir=out, models_root=Path(models_root) if models_root else out / "models")
    exp_dir = ctx.exp_dir(experiment.name)
    with exclusive(exp_dir, f"experiment {experiment.name!r} directory"):
        config, jobs = experiment.plan(config, ctx)
        config = {**config, "keys": [job.key for job in jobs]}
        atomic_write_json(exp_dir / CONFIG_FILE, config)
        run_campaign(jobs, experiment.job, exp_dir / ROWS_FILE, n_jobs=settings.n_jobs,
                     scheduler=settings.scheduler, client=settings.client,
                     progress=settings.progress, desc=experiment.name)  # fmt: skip
        config, rows = load_config_and_rows(experiment, ctx)
        summary = experiment.summarise(config, rows, ctx)
    summary.setdefault("timing", {})["elapsed_s"] = time.perf_counter() - start
    return summary


def load_config_and_rows(experiment: Experiment, ctx: RunContext) -> tuple[dict, list[dict]]:
    """The stored configuration and the newest row of each of its jobs, in job order (rows of
    other configurations in the same file are left out)."""
    import json

    exp_dir = ctx.exp_dir(experiment.name)
    path = exp_dir / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BoxhackError(
            f"{path} is missing; run the experiment first (boxhack experiment "
            f"{experiment.name} --out {ctx.out_dir})"
        ) from None
    except (OSError, ValueError) as exc:
        raise BoxhackError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("keys"), list):
        raise BoxhackError(f"{path} is not an experiment configuration (no job keys)")
    latest = latest_by_key(read_rows(exp_dir / ROWS_FILE))
    return config, [latest[k] for k in config["keys"] if k in latest]
