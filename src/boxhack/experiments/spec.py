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

``configure`` receives every option of the experiment: the ones given, and each other one at
its default (:meth:`Option.default_for`: the ``quick`` default in quick mode). An experiment
whose job parameters name files relative to the run directory (so that the same command gives
the same rows in any ``--out``) sets ``job_in_run_dir=True``: its job is then called as
``job(params, run_dir=<the run directory, absolute>)``.

:func:`run_experiment` runs any of them the same way: lock the experiment's directory before
writing anything, configure, plan, write ``config.json`` (atomically), run the jobs as a
resumable campaign into ``rows.jsonl``, record the run's wall time in ``timing.json``, and
summarise the rows of *this* configuration. Figures and sentences are presentation: they live
in :mod:`boxhack.report`, and :mod:`boxhack.workflow` puts the two together (the registry,
``run``, ``reproduce``, ``report``).
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boxhack.errors import BoxhackError
from boxhack.infra.campaign import Job, check_scheduler_address, run_campaign
from boxhack.infra.files import atomic_write_json, check_output_dir
from boxhack.infra.jsonl import latest_by_key, read_rows
from boxhack.infra.locks import exclusive

__all__ = [
    "CONFIG_FILE",
    "ROWS_FILE",
    "SUMMARY_FILE",
    "TIMING_FILE",
    "Experiment",
    "Option",
    "RunContext",
    "Settings",
    "check_settings",
    "load_config_and_rows",
    "load_timing",
    "option_values",
    "rows_record",
    "run_experiment",
    "run_jobs",
    "start_run",
]

ROWS_FILE = "rows.jsonl"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
TIMING_FILE = "timing.json"

OPTION_KINDS = (int, float, str, bool, "list", "json")


@dataclass(frozen=True)
class Option:
    """One experiment-specific option; the CLI's ``boxhack experiment NAME`` flags are
    generated from these (:attr:`flag`: ``--name-with-dashes``).

    ``kind``: ``int``, ``float``, ``str``, ``bool``, ``"list"`` (comma-separated on the CLI,
    each item converted by ``item``; ``choices`` then limits the items) or ``"json"`` (a JSON
    value on the CLI, e.g. per-class budgets). ``quick`` is the default in quick mode
    (``None``: the same as ``default``). ``minimum`` bounds numbers (and list items).
    """

    name: str
    kind: Any
    default: Any
    help: str
    choices: Sequence[Any] | None = None
    quick: Any = None
    minimum: float | None = None
    item: Any = str

    def __post_init__(self) -> None:
        if self.kind not in OPTION_KINDS:
            raise TypeError(f"option {self.name!r}: kind must be one of {OPTION_KINDS}")

    def default_for(self, quick: bool) -> Any:
        return self.quick if quick and self.quick is not None else self.default

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def value(self, given: Any, quick: bool) -> Any:
        """``given`` (or, when it is ``None``, the default for the mode) converted to the
        option's kind and checked against ``choices`` and ``minimum``; one clear
        :class:`BoxhackError` otherwise."""
        value = self.default_for(quick) if given is None else given
        if value is None:
            return None
        if self.kind == "list":
            items = ([v.strip() for v in value.split(",") if v.strip()]
                     if isinstance(value, str) else value)  # fmt: skip
            if not isinstance(items, (list, tuple)) or not items:
                raise BoxhackError(f"option {self.name!r}: give one or more values (a list or "
                                   f"a comma-separated string), got {value!r}")  # fmt: skip
            return [self._check(self._convert(v, self.item)) for v in items]
        return self._check(self._convert(value, self.kind))

    def _convert(self, value: Any, kind: Any) -> Any:
        if kind is bool:
            words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in words:
                return words[value.lower()]
        elif kind is str:
            if isinstance(value, str):
                return value
        elif kind in (int, float):
            try:
                number = math.nan if isinstance(value, bool) else float(value)
            except (TypeError, ValueError):
                number = math.nan
            if math.isfinite(number) and (kind is float or number.is_integer()):
                return kind(number)
        else:
            return value
        raise BoxhackError(
            f"option {self.name!r}: {value!r} is not {'an' if kind is int else 'a'} "
            f"{getattr(kind, '__name__', kind)}"
        )

    def _check(self, value: Any) -> Any:
        if self.choices is not None and value not in self.choices:
            raise BoxhackError(f"option {self.name!r}: unknown value {value!r}; choose from: "
                               f"{', '.join(map(str, self.choices))}")  # fmt: skip
        if self.minimum is not None and not value >= self.minimum:
            raise BoxhackError(f"option {self.name!r} must be >= {self.minimum:g}, got {value!r}")
        return value


@dataclass(frozen=True)
class Settings:
    """What every experiment gets, whatever its grid. Experiments that run no SciPy solve
    ignore ``solve_timeout``."""

    quick: bool = False
    seed: int = 0
    n_jobs: int | None = None
    scheduler: str | None = None
    progress: bool = True
    solve_timeout: float | None = None  # a safety net for experiments that run SciPy solves
    client: Any = None  # an existing dask.distributed Client (not stored)


def check_settings(settings: Settings) -> Settings:
    """``settings`` with ``solve_timeout`` as a float, or one clear error for a bad value
    (before anything is written)."""
    n = settings.n_jobs
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise BoxhackError(f"n_jobs (--jobs) must be a positive integer, got {n!r}")
    seed = settings.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise BoxhackError(f"seed must be an integer >= 0, got {seed!r}")
    timeout = settings.solve_timeout
    if timeout is not None:
        try:
            timeout = float(timeout)
        except (TypeError, ValueError):
            raise BoxhackError(
                f"solve_timeout must be a number of seconds, got {timeout!r}") from None
        if not (timeout > 0 and math.isfinite(timeout)):
            raise BoxhackError(
                f"solve_timeout must be a positive number of seconds, got {timeout!r}")
    if settings.scheduler is not None:
        check_scheduler_address(settings.scheduler)
    return Settings(quick=bool(settings.quick), seed=seed, n_jobs=n,
                    scheduler=settings.scheduler, progress=bool(settings.progress),
                    solve_timeout=timeout, client=settings.client)  # fmt: skip

def option_values(
    options: Sequence[Option], settings: Settings, given: Mapping[str, Any]
) -> dict[str, Any]:
    """Every declared option's checked value (:meth:`Option.value`): the given one, else its
    default for the mode (``settings.quick``). Unknown names are refused."""
    known = {o.name for o in options}
    unknown = sorted(set(given) - known)
    if unknown:
        raise BoxhackError(f"no option(s) {', '.join(unknown)}; the options: "
                           f"{', '.join(o.name for o in options) or '(none)'}")  # fmt: skip
    return {o.name: o.value(given.get(o.name), settings.quick) for o in options}


@dataclass(frozen=True)
class RunContext:
    """Where an experiment runs: the run directory, its own sub-directory, the model cache."""

    out_dir: Path
    models_root: Path

    def exp_dir(self, name: str) -> Path:
        return self.out_dir / name

    @classmethod
    def of(cls, out_dir: str | Path, models_root: str | Path | None = None) -> RunContext:
        out = Path(out_dir)
        return cls(out_dir=out, models_root=Path(models_root) if models_root else out / "models")


@dataclass(frozen=True)
class Experiment:
    """An experiment's declaration (see the module docstring)."""

    name: str
    title: str
    description: str
    configure: Callable[[Settings, Mapping[str, Any]], dict]
    plan: Callable[[dict, RunContext], tuple[dict, list[Job]]]
    job: Callable[..., Mapping[str, Any]]
    summarise: Callable[[dict, list[dict], RunContext], dict]
    options: tuple[Option, ...] = field(default_factory=tuple)
    job_in_run_dir: bool = False

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

    def resolve_options(self, options: Mapping[str, Any], quick: bool) -> dict[str, Any]:
        """Every option: the given ones (checked), the others at their (quick) default."""
        given = self.check_options(options)
        return {o.name: given[o.name] if o.name in given else o.default_for(quick)
                for o in self.options}  # fmt: skip

    def job_function(self, ctx: RunContext) -> Callable[[dict], Mapping[str, Any]]:
        """What the campaign calls with each job's parameters (picklable)."""
        if self.job_in_run_dir:
            return functools.partial(self.job, run_dir=str(ctx.out_dir.resolve()))
        return self.job


def start_run(
    experiment: Experiment,
    out_dir: str | Path,
    settings: Settings,
    *,
    models_root: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[dict, RunContext, Settings]:
    """Check the settings and options, configure, and make sure ``out_dir`` is usable: every
    user error is raised here, before anything is written. Returns ``(config, ctx, settings)``.
    """
    settings = check_settings(settings)
    opts = experiment.resolve_options(options or {}, settings.quick)
    config = experiment.configure(settings, opts)
    ctx = RunContext.of(check_output_dir(out_dir), models_root)
    return config, ctx, settings


def run_jobs(experiment: Experiment, config: dict, ctx: RunContext, settings: Settings) -> dict:
    """Plan, write ``config.json``, run the campaign and append the run's wall time to
    ``timing.json``; returns the stored config. The caller holds the experiment directory's
    lock (:func:`boxhack.infra.locks.exclusive`)."""
    start = time.perf_counter()
    exp_dir = ctx.exp_dir(experiment.name)
    config, jobs = experiment.plan(config, ctx)
    config = {**config, "keys": [job.key for job in jobs]}
    atomic_write_json(exp_dir / CONFIG_FILE, config)
    run_campaign(jobs, experiment.job_function(ctx), exp_dir / ROWS_FILE,
                 n_jobs=settings.n_jobs, scheduler=settings.scheduler, client=settings.client,
                 progress=settings.progress, desc=f"{experiment.name} ({len(jobs)} jobs)")  # fmt: skip
    timing = load_timing(exp_dir)
    timing["runs"].append({"wall_s": time.perf_counter() - start, "jobs": len(jobs),
                           "n_jobs": settings.n_jobs, "scheduler": settings.scheduler,
                           "time": time.strftime("%Y-%m-%d %H:%M:%S")})  # fmt: skip
    atomic_write_json(exp_dir / TIMING_FILE, timing)
    return config


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
    directory is refused at once and leaves the first run's files untouched. (Figures and
    ``summary.json`` come from :func:`boxhack.workflow.run`, which adds the presentation.)
    """
    config, ctx, settings = start_run(experiment, out_dir, settings, models_root=models_root,
                                      options=options)  # fmt: skip
    with exclusive(ctx.exp_dir(experiment.name), f"experiment {experiment.name!r} directory"):
        run_jobs(experiment, config, ctx, settings)
        config, rows = load_config_and_rows(experiment, ctx)
        return experiment.summarise(config, rows, ctx)


def load_config_and_rows(experiment: Experiment, ctx: RunContext) -> tuple[dict, list[dict]]:
    """The stored configuration and the newest row of each of its jobs, in job order (rows of
    other configurations in the same file are left out)."""
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
    if not isinstance(config, dict):
        raise BoxhackError(f"{path} is not an experiment configuration (not a JSON object)")
    latest = latest_by_key(read_rows(exp_dir / ROWS_FILE))
    if "keys" not in config:  # written before configurations listed their jobs: every row
        return {**config, "keys": list(latest)}, list(latest.values())
    if not isinstance(config["keys"], list):
        raise BoxhackError(f"{path} is not an experiment configuration (its keys are not a list)")
    return config, [latest[k] for k in config["keys"] if k in latest]


def rows_record(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[dict]]:
    """The campaign's own numbers for a summary: ``({"wall_s", "jobs", "errors"}, [{"key",
    "error"} of every job that did not end ok])``."""
    failed = [{"key": r["key"], "error": r.get("error")} for r in rows if r.get("status") != "ok"]
    timing = {"wall_s": float(sum(r.get("wall_s") or 0 for r in rows)), "jobs": len(rows),
              "errors": len(failed)}
    return timing, failed


def load_timing(exp_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """``timing.json`` of an experiment directory: ``{"runs": [{"wall_s", "jobs", ...}]}``
    (no runs when it is missing or unreadable: timings are never results)."""
    try:
        value = json.loads((Path(exp_dir) / TIMING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"runs": []}
    runs = value.get("runs") if isinstance(value, dict) else None
    return {"runs": [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []}
