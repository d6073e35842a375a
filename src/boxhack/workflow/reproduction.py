"""``boxhack reproduce``: every experiment of the paper, end to end, into one report; and
``boxhack report``: the report rebuilt from the rows.

:func:`reproduce` runs the registered experiments in order (:mod:`boxhack.workflow.registry`:
``novelty``, ``solvers``, ``adversarial``, ``combined``, ``gradient``) with
:func:`boxhack.workflow.runner.run` into one run directory, sharing the trained networks and
fitted monitors under ``out_dir/models``. Then it renders ``out_dir/report.html``
(:func:`boxhack.report.html.render_report`).

- The run directory is locked (:func:`boxhack.infra.locks.exclusive`) before anything is written
  into it and for the whole run: a second ``reproduce`` (or ``report``) on the same directory is
  refused at once and changes nothing. Each experiment's run locks its own sub-directory; the
  campaigns lock their ``rows.jsonl``: three different lock files, so they never conflict.
- Only registered experiments run; nothing named by data is ever imported. A registered module
  that cannot be imported is that experiment's error.
- An experiment that raises does not lose the others: its error and traceback go into
  ``run.json`` and the report, the next experiment runs, and ``reproduce`` returns normally;
  :func:`failed_experiments` (the CLI's exit code) tells afterwards.
- Running again into the same directory resumes: every grid is a campaign whose finished jobs
  are skipped (see :mod:`boxhack.infra.campaign`). SIGTERM stops it like Ctrl-C: the
  experiment is recorded as interrupted, its workers are killed, the report is rendered.

``run.json`` records the invocations (configuration, seeds, versions, machine, per-experiment
status). Clocks appear only under keys named ``"timing"`` (``{"started", "finished",
"wall_s"}``: of the run, of each experiment, of each invocation) and the machine only under
``"machine"``, so two run records compare equal apart from those (:func:`comparable`).
:func:`rebuild_report` re-computes every summary from the JSONL rows alone and renders the
report again (``boxhack report RUN_DIR``).
"""

from __future__ import annotations

import datetime as _dt
import platform
import socket
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from boxhack.errors import BoxhackError
from boxhack.experiments.spec import ROWS_FILE, Settings, check_settings
from boxhack.infra.campaign import _default_n_jobs as default_n_jobs
from boxhack.infra.files import atomic_write_json, check_output_dir
from boxhack.infra.locks import exclusive
from boxhack.infra.procs import sigterm_raises
from boxhack.report import html
from boxhack.report.browser import check_report as check_page
from boxhack.workflow import registry, runner

__all__ = [
    "RUN_FORMAT",
    "check_report",
    "comparable",
    "failed_experiments",
    "rebuild_report",
    "render_report",
    "reproduce",
    "resolve_only",
    "unknown_experiments",
    "versions",
]

RUN_FORMAT = "boxhack-run"
RUN_FORMAT_VERSION = 2  # 2: clocks moved under "timing"
_PACKAGES = ("boxhack", "torch", "numpy", "scipy", "scikit-learn", "matplotlib", "foolbox",
             "eagerpy", "dask", "distributed", "tqdm", "pillow")
TIMING = "timing"
MACHINE = "machine"


def resolve_only(
    only: str | Sequence[str] | None, known: Sequence[str] | None = None
) -> list[str]:
    """Validate an ``only`` selection (names or a comma-separated string) against ``known``
    (default: the registered experiments); returns the selection in run order."""
    known = registry.names() if known is None else tuple(known)
    if only is None:
        return list(known)
    items = [s.strip() for s in only.split(",")] if isinstance(only, str) else list(only)
    items = [s for s in items if s]
    if not items:
        raise BoxhackError(f"--only selects nothing; give one or more of: {', '.join(known)}")
    unknown = [s for s in items if s not in known]
    if unknown:
        raise BoxhackError(
            f"unknown experiment(s) {', '.join(map(repr, unknown))}; "
            f"choose from: {', '.join(known)}"
        )
    return [s for s in known if s in items]  # run order, not the order given


def versions() -> dict[str, str]:
    """Installed versions of boxhack, Python and the libraries the experiments use."""
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _machine(n_jobs: int | None, scheduler: str | None) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "usable cores": default_n_jobs(),
        "workers": scheduler if scheduler else (n_jobs or default_n_jobs()),
    }


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


def _write_run(path: Path, run: Mapping[str, Any]) -> None:
    atomic_write_json(path, run, indent=2)


def comparable(value: Any) -> Any:
    """``value`` (a run record, or any part of one) without its ``"timing"`` and ``"machine"``
    entries, at any depth: what two runs of the same command must agree on."""
    if isinstance(value, Mapping):
        return {k: comparable(v) for k, v in value.items() if k not in (TIMING, MACHINE)}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def _timing(started: str | None = None) -> dict[str, Any]:
    return {"started": started or _now(), "finished": None, "wall_s": None}


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"boxhack reproduce: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ rendering


def render_report(
    run_dir: str | Path, out: str | Path | None = None, *, errors: Mapping[str, str] | None = None
) -> Path:
    """:func:`boxhack.report.html.render_report` of the registered experiments."""
    return html.render_report(run_dir, out, registered=registry.names(), errors=errors)


def unknown_experiments(run_dir: str | Path) -> list[str]:
    """Names in ``run_dir`` that look like experiments but are not registered (ignored)."""
    return html.find_experiments(run_dir, registry.names())[1]


def check_report(
    report: str | Path, png: str | Path | None = None, *, browser: bool = True,
    width: int = 1400,
) -> dict[str, Any]:  # fmt: skip
    """:func:`boxhack.report.browser.check_report`, expecting as many figures as the run's
    summaries list when the report sits in its run directory."""
    report = Path(report)
    run_dir = report.parent
    expected = None
    if any((p / html.SUMMARY_FILE).is_file() for p in run_dir.iterdir() if p.is_dir()):
        expected = html.expected_figures(run_dir, registry.names())
    return check_page(report, png, width=width, browser=browser, expected_figures=expected)


# ------------------------------------------------------------------------------ reproduce


def reproduce(
    out_dir: str | Path,
    *,
    quick: bool = False,
    n_jobs: int | None = None,
    scheduler: str | None = None,
    solve_timeout: float | None = None,
    seed: int = 0,
    progress: bool = True,
    only: str | Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Run the paper's experiments into ``out_dir`` and render ``out_dir/report.html``.

    Args:
        out_dir: the run directory (created; re-using one resumes it).
        quick: small grids that finish in minutes (``--quick``); the full grids otherwise.
        n_jobs: local worker processes per campaign (default: all usable cores).
        scheduler: a Dask scheduler address (``tcp://host:8786``) to run the grids on.
        solve_timeout: per-solve wall-clock safety net in seconds for the experiments that run
            SciPy solves (solvers, combined; the others ignore it); results come from
            evaluation budgets; ``None`` keeps their defaults.
        seed: the seed every experiment gets (networks, monitors, sample draws).
        progress: progress bars with ETA and a line per experiment on stderr.
        only: run only these experiments (names, or a comma-separated string).
        options: each experiment's own options by name (its ``EXPERIMENT.options``), e.g.
            ``{"novelty": {"networks": ["mnist0-4"]}}``.

    Returns:
        The path of ``report.html``. Experiments that failed are recorded there and in
        ``run.json``; see :func:`failed_experiments`.

    Raises:
        BoxhackError: a bad argument, an unusable ``out_dir`` (a file, read-only), or
            ``out_dir`` in use by another run; in each case before anything is written.
    """
    names = list(registry.names())
    selected = set(resolve_only(only, names))
    settings = check_settings(Settings(quick=quick, seed=seed, n_jobs=n_jobs,
                                       scheduler=scheduler, progress=progress,
                                       solve_timeout=solve_timeout))  # fmt: skip
    options = {k: dict(v) for k, v in (options or {}).items()}
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise BoxhackError(f"options for unknown experiment(s) {unknown}; known: {names}")
    out_dir = check_output_dir(out_dir, "--out")
    with exclusive(out_dir, "run directory"), sigterm_raises():
        session = _open_run(out_dir, names, selected, settings, only, options)
        todo = [n for n in names if n in selected]
        for i, name in enumerate(todo, 1):
            _run_one(session, name, f"[{i}/{len(todo)}]", settings, options.get(name, {}))
        session.finish()
        report = render_report(out_dir)
        _log(progress, f"report: {report}")
        return report


@dataclass
class _Session:
    """One ``reproduce`` invocation: the run record it keeps writing, its own entry in it."""

    out_dir: Path
    run: dict[str, Any]
    invocation: dict[str, Any]
    t0: float

    def write(self) -> None:
        _write_run(self.out_dir / html.RUN_FILE, self.run)

    def record(self, name: str, record: dict[str, Any]) -> None:
        """Store ``record`` as experiment ``name``'s outcome in ``run.json``."""
        self.run["experiments"][name] = record
        self.invocation["experiments"].append(name)
        self.write()

    def finish(self) -> None:
        finished, wall = _now(), time.perf_counter() - self.t0
        for timing in (self.run[TIMING], self.invocation[TIMING]):
            timing.update(finished=finished, wall_s=wall)
        self.write()


def _open_run(out_dir: Path, names: list[str], selected: set[str], settings: Settings,
              only: Any, options: dict[str, dict[str, Any]]) -> _Session:  # fmt: skip
    """The run record (``run.json``) with this invocation added, written. Experiments an
    earlier run left "running" are marked interrupted."""
    previous = html.load_run(out_dir)
    if previous and previous.get("format_version") != RUN_FORMAT_VERSION:
        previous = _upgrade(previous)
    records: dict[str, Any] = {
        k: v for k, v in (previous.get("experiments") or {}).items() if isinstance(v, Mapping)}
    for name, record in records.items():  # a run killed mid-experiment left "running" behind
        if record.get("status") == "running":
            records[name] = {**record, "status": "interrupted", "error": (
                "an earlier run stopped while this experiment was running (killed?); run "
                "reproduce again to resume it")}
    config = {
        "out": str(out_dir),
        "quick": settings.quick,
        "n_jobs": settings.n_jobs,
        "scheduler": settings.scheduler,
        "solve_timeout": settings.solve_timeout,
        "seed": settings.seed,
        "only": sorted(selected, key=names.index) if only is not None else None,
        "options": options or None,
        "models_root": str(out_dir / "models"),
        "command": " ".join(sys.argv) if sys.argv and sys.argv[0] else None,
    }
    t0, timing = time.perf_counter(), _timing()
    invocation = {"config": config, "experiments": [], TIMING: dict(timing)}
    invocations = [*(previous.get("invocations") or []), invocation]
    run: dict[str, Any] = {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "name": out_dir.resolve().name,
        "config": config,
        "seeds": {"seed (networks, monitors, sample draws)": settings.seed,
                  "data split seed": 0},
        "versions": versions(),
        MACHINE: _machine(settings.n_jobs, settings.scheduler),
        "order": names,
        "experiments": records,
        "invocations": invocations,
        TIMING: timing,
    }  # fmt: skip
    session = _Session(out_dir=out_dir, run=run, invocation=invocation, t0=t0)
    session.write()
    return session


def _run_one(session: _Session, name: str, step: str, settings: Settings,
             options: dict[str, Any]) -> None:  # fmt: skip
    """Run one experiment, recording its outcome; only Ctrl-C / SIGTERM is raised (after the
    record and the report are written)."""
    progress = settings.progress
    record: dict[str, Any] = {"module": registry.EXPERIMENTS[name].experiment, "title": name,
                              TIMING: _timing()}  # fmt: skip
    start = time.perf_counter()
    try:
        record["title"] = registry.load(name).title
    except BoxhackError as exc:
        cause = exc.__cause__ or exc
        record.update(status="error", error=str(exc), traceback="".join(
            traceback.format_exception(type(cause), cause, cause.__traceback__)))
        _end(record)
        session.record(name, record)
        _log(progress, f"{step} {name}: FAILED ({exc})")
        return
    _log(progress, f"{step} {name}: {record['title']}")
    session.run["experiments"][name] = {**record, "status": "running"}
    session.write()
    out_dir = session.out_dir
    try:
        runner.run(name, out_dir, settings, options, models_root=out_dir / "models")
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (boxhack.infra.procs.Terminated)
        how = str(exc) or "interrupted (Ctrl-C)"
        record.update(status="interrupted", error=f"{how}; run the same command again to resume")
        _end(record, start)
        session.record(name, record)
        session.finish()
        render_report(out_dir)
        raise
    except Exception as exc:  # noqa: BLE001 - the other experiments must still run
        record.update(status="error", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc())
        _log(progress, f"{step} {name}: FAILED ({type(exc).__name__}: {exc})")
    else:
        record.update(status="ok")
    _end(record, start)
    if record["status"] == "ok":
        _log(progress, f"{step} {name}: done in {record[TIMING]['wall_s']:.1f} s")
    session.record(name, record)
    render_report(out_dir)  # a report to look at while the next experiment runs


def _end(record: dict[str, Any], start: float | None = None) -> None:
    """Close ``record``'s timing: finished now, after ``perf_counter() - start`` seconds."""
    timing = record.setdefault(TIMING, _timing())
    timing["finished"] = _now()
    timing["wall_s"] = 0.0 if start is None else time.perf_counter() - start


def _upgrade(run: dict[str, Any]) -> dict[str, Any]:
    """A version-1 run record (clocks beside the results) with its clocks under "timing"."""
    def move(d: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in d.items() if k not in ("started", "finished", "wall_s")}
        old = {k: d[k] for k in ("started", "finished", "wall_s") if k in d}
        if old and TIMING not in out:
            out[TIMING] = {"started": None, "finished": None, "wall_s": None, **old}
        return out

    run = move(run)
    exps = run.get("experiments")
    if isinstance(exps, Mapping):
        run["experiments"] = {k: move(v) if isinstance(v, Mapping) else v
                              for k, v in exps.items()}
    invs = run.get("invocations")
    if isinstance(invs, list):
        run["invocations"] = [move(v) if isinstance(v, Mapping) else v for v in invs]
    return run


def failed_experiments(out_dir: str | Path) -> dict[str, str]:
    """``{name: error}`` for the registered experiments whose latest run failed (``run.json``)."""
    records = html.load_run(out_dir).get("experiments") or {}
    return {
        name: str(r.get("error") or r.get("status"))
        for name, r in records.items()
        if registry.is_registered(name) and isinstance(r, Mapping)
        and r.get("status") in ("error", "interrupted", "running")
    }


# ------------------------------------------------------------------------------ report


def rebuild_report(
    run_dir: str | Path, *, out: str | Path | None = None
) -> tuple[Path, dict[str, str]]:
    """Re-compute every experiment's summary from its JSONL rows, then render the report.

    For each *registered* experiment whose sub-directory holds ``rows.jsonl``, calls
    :func:`boxhack.workflow.runner.summarise`, which rewrites ``summary.json`` and the
    figures. Nothing found in the directory is imported: a sub-directory whose name is not a
    registered experiment, and any ``"module"`` a ``run.json`` records, are only reported
    ("unknown experiment directory X: ignored"). A summarise that fails is reported (in the
    report and the returned dict), not raised. The run directory is locked meanwhile, and each
    experiment's sub-directory while it is re-summarised, so a running ``reproduce`` or
    ``boxhack experiment`` there is refused rather than overwritten.

    Returns:
        ``(report path, {experiment: error})``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BoxhackError(f"run directory {run_dir} does not exist")
    try:
        check_output_dir(run_dir, "RUN_DIR")
    except BoxhackError as exc:
        raise BoxhackError(
            f"{exc}; re-summarising rewrites RUN_DIR's summaries: to only render the report, "
            f"add --no-summarise --out FILE (FILE in a writable place)") from None
    out = html.check_report_out(out)
    with exclusive(run_dir, "run directory"):
        known, _unknown = html.find_experiments(run_dir, registry.names())
        names = [n for n in known if (run_dir / n / ROWS_FILE).is_file()]
        if not names:
            raise BoxhackError(
                f"{run_dir} holds no experiment rows (no <experiment>/rows.jsonl for any of "
                f"{', '.join(registry.names())}); run `boxhack reproduce --out {run_dir}` first"
            )
        errors: dict[str, str] = {}
        for name in names:
            try:
                runner.summarise(name, run_dir)
            except Exception as exc:  # noqa: BLE001 - one experiment's failure is shown, not fatal
                errors[name] = f"{type(exc).__name__}: {exc}"
        return render_report(run_dir, out, errors=errors), errors
