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

import json
import math
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
    "option_values",
    "run_experiment",
]

ROWS_FILE = "rows.jsonl"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class Option:
    """One experiment-specific option; the CLI's ``boxhack experiment NAME`` flags are
    generated from these (``--name-with-dashes``).

    ``kind``: ``int``, ``float``, ``str``, ``bool`` or ``"list"`` (a sequence, or one
    comma-separated string; ``item`` is the type of each item: ``str``, ``int`` or ``float``;
    ``choices`` and ``minimum`` then apply to each item). ``quick`` is the default in quick mode
    (``None``: same as ``default``). A default of ``None`` means "not set" (the experiment's
    ``configure`` decides, e.g. from :class:`Settings`).
    """

    name: str
    kind: Any
    default: Any
    help: str
    choices: Sequence[Any] | None = None
    quick: Any = None
    minimum: float | None = None
    item: Any = str

    def default_for(self, quick: bool) -> Any:
        return self.quick if quick and self.quick is not None else self.default

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
    """What every experiment gets, whatever its grid."""

    quick: bool = False
    seed: int = 0
    n_jobs: int | None = None
    scheduler: str | None = None
    progress: bool = True
    solve_timeout: float | None = None  # a safety net for experiments that run SciPy solves
    client: Any = None  # an existing dask.distributed Client (not stored)


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
