"""``boxhack reproduce``: every experiment of the paper, end to end, into one report.

:func:`reproduce` runs the experiment modules in order (``novelty``, ``solvers``,
``adversarial``, ``combined``, ``gradient``; each follows the experiment contract: ``NAME``,
``TITLE``, ``run(out_dir, ...)``, ``summarise(out_dir)``) into one run directory, sharing the
trained networks and fitted monitors under ``out_dir/models``. Then it renders
``out_dir/report.html`` (:func:`boxhack.report.html.render_report`).

- An experiment module that is not installed yet is skipped with a visible note in the report.
- An experiment that raises does not lose the others: its error and traceback go into
  ``run.json`` and the report, the next experiment runs, and ``reproduce`` returns normally;
  :func:`failed_experiments` (the CLI's exit code) tells afterwards.
- Running again into the same directory resumes: every grid is a campaign whose finished jobs
  are skipped (see :mod:`boxhack.experiments.campaign`).

``run.json`` records the invocations (configuration, seeds, versions, machine, start/finish,
per-experiment status and wall time); :func:`rebuild_report` re-computes every summary from the
JSONL rows alone and renders the report again (``boxhack report RUN_DIR``).
"""

from __future__ import annotations

import datetime as _dt
import importlib
import inspect
import json
import os
import platform
import socket
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from boxhack.errors import BoxhackError

__all__ = [
    "EXPERIMENTS",
    "failed_experiments",
    "rebuild_report",
    "reproduce",
    "resolve_only",
    "versions",
]

# Report / run order. Each is the module boxhack.experiments.<name>, whose NAME is <name>.
EXPERIMENTS: tuple[str, ...] = ("novelty", "solvers", "adversarial", "combined", "gradient")
# Titles shown for an experiment whose module is not there to say its own TITLE.
_TITLES = {
    "novelty": "The networks and the monitor's novelty detection (Outside the Box)",
    "solvers": "Optimisation solvers, images and projections (paper figures 5-7)",
    "adversarial": "Adversarial samples against classifier and monitor (paper figure 8)",
    "combined": "The combined attack: FGSM then SHGO Attack 2 (paper figure 9)",
    "gradient": "Monitor-aware gradient attacks (beyond the paper)",
}
RUN_FORMAT = "boxhack-run"
RUN_FORMAT_VERSION = 1
_PACKAGES = ("boxhack", "torch", "numpy", "scipy", "scikit-learn", "matplotlib", "foolbox",
             "eagerpy", "dask", "distributed", "tqdm", "pillow")


def _module_path(name: str) -> str:
    return name if "." in name else f"boxhack.experiments.{name}"


def _short(module_path: str) -> str:
    return module_path.rsplit(".", 1)[-1]


def resolve_only(only: str | Sequence[str] | None, known: Sequence[str] = EXPERIMENTS) -> list[str]:
    """Validate an ``only`` selection (names or a comma-separated string) against ``known``."""
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
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _machine(n_jobs: int | None, scheduler: str | None) -> dict[str, Any]:
    from boxhack.experiments.campaign import _default_n_jobs

    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "usable cores": _default_n_jobs(),
        "workers": scheduler if scheduler else (n_jobs or _default_n_jobs()),
    }


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


def _write_run(path: Path, run: Mapping[str, Any]) -> None:
    from boxhack.infra.jsonl import to_jsonable

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(run), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _accepts(fn: Any, name: str) -> bool:
    """Whether ``fn`` has a parameter literally called ``name`` (not merely ``**options``)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"boxhack reproduce: {message}", file=sys.stderr, flush=True)


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
    experiments: Sequence[str] | None = None,
) -> Path:
    """Run the paper's experiments into ``out_dir`` and render ``out_dir/report.html``.

    Args:
        out_dir: the run directory (created; re-using one resumes it).
        quick: small grids that finish in minutes (``--quick``); the full grids otherwise.
        n_jobs: local worker processes per campaign (default: all usable cores).
        scheduler: a Dask scheduler address (``tcp://host:8786``) to run the grids on.
        solve_timeout: per-solve time cap in seconds for the experiments whose ``run()`` takes
            ``solve_timeout`` (solvers, combined); ``None`` keeps their defaults.
        seed: the seed every experiment gets (networks, monitors, sample draws).
        progress: progress bars with ETA and a line per experiment on stderr.
        only: run only these experiments (names, or a comma-separated string).
        options: extra keyword arguments per experiment name, e.g.
            ``{"novelty": {"networks": ["mnist0-4"]}}``.
        experiments: the experiment modules (default :data:`EXPERIMENTS`); bare names are
            ``boxhack.experiments.<name>``, dotted paths are imported as given.

    Returns:
        The path of ``report.html``. Experiments that failed are recorded there and in
        ``run.json``; see :func:`failed_experiments`.
    """
    modules = [_module_path(m) for m in (experiments or EXPERIMENTS)]
    names = [_short(m) for m in modules]
    if len(set(names)) != len(names):
        raise BoxhackError(f"experiment names must be unique, got {names}")
    selected = set(resolve_only(only, names))
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int)
                               or n_jobs < 1):
        raise BoxhackError(f"n_jobs (--jobs) must be a positive integer, got {n_jobs!r}")
    if solve_timeout is not None:
        try:
            solve_timeout = float(solve_timeout)
        except (TypeError, ValueError):
            raise BoxhackError(
                f"solve_timeout must be a number of seconds, got {solve_timeout!r}") from None
        if not solve_timeout > 0 or solve_timeout == float("inf"):
            raise BoxhackError(
                f"solve_timeout must be a positive number of seconds, got {solve_timeout!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise BoxhackError(f"seed must be an integer >= 0, got {seed!r}")
    options = {k: dict(v) for k, v in (options or {}).items()}
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise BoxhackError(f"options for unknown experiment(s) {unknown}; known: {names}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models_root = out_dir / "models"
    run_path = out_dir / "run.json"
    from boxhack.report.html import load_run, render_report

    previous = load_run(out_dir)
    records: dict[str, Any] = dict(previous.get("experiments") or {})
    for name, record in records.items():  # a run killed mid-experiment left "running" behind
        if isinstance(record, Mapping) and record.get("status") == "running":
            records[name] = {**record, "status": "interrupted", "error": (
                "an earlier run stopped while this experiment was running (killed?); run "
                "reproduce again to resume it")}
    invocations: list[Any] = list(previous.get("invocations") or [])
    config = {
        "out": str(out_dir),
        "quick": bool(quick),
        "n_jobs": n_jobs,
        "scheduler": scheduler,
        "solve_timeout": solve_timeout,
        "seed": seed,
        "only": sorted(selected, key=names.index) if only is not None else None,
        "options": options or None,
        "models_root": str(models_root),
        "command": " ".join(sys.argv) if sys.argv and sys.argv[0] else None,
    }
    started, t0 = _now(), time.perf_counter()
    invocation = {"started": started, "config": config, "experiments": []}
    invocations.append(invocation)
    run: dict[str, Any] = {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "name": out_dir.resolve().name,
        "config": config,
        "seeds": {
            "seed (networks, monitors, sample draws)": seed,
            "data split seed": 0,
        },
        "started": started,
        "finished": None,
        "wall_s": None,
        "versions": versions(),
        "machine": _machine(n_jobs, scheduler),
        "order": names,
        "experiments": records,
        "invocations": invocations,
    }
    _write_run(run_path, run)

    todo = [(m, n) for m, n in zip(modules, names) if n in selected]
    for i, (module_path, name) in enumerate(todo, 1):
        record: dict[str, Any] = {"module": module_path, "title": _TITLES.get(name, name),
                                  "started": _now()}
        try:
            module = importlib.import_module(module_path)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing and (module_path == missing or module_path.startswith(missing + ".")):
                record.update(status="skipped", wall_s=None,
                              note=f"not run: module {module_path} is not available yet")
                _log(progress, f"[{i}/{len(todo)}] {name}: skipped ({module_path} not found)")
                records[name] = record
                continue
            record.update(status="error", wall_s=0.0, error=f"import failed: {exc}",
                          traceback=traceback.format_exc())
            records[name] = record
            continue
        except Exception as exc:  # noqa: BLE001 - a broken module is this experiment's error
            record.update(status="error", wall_s=0.0,
                          error=f"import failed: {type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc())
            records[name] = record
            continue
        record["title"] = getattr(module, "TITLE", name)
        if getattr(module, "NAME", None) != name or not callable(getattr(module, "run", None)):
            record.update(status="error", wall_s=0.0, error=(
                f"{module_path} does not follow the experiment contract: it needs NAME = "
                f"{name!r} (its sub-directory), run(out_dir, ...) and summarise(out_dir)"))
            records[name] = record
            _log(progress, f"[{i}/{len(todo)}] {name}: FAILED ({record['error']})")
            continue
        kwargs: dict[str, Any] = {"quick": quick, "n_jobs": n_jobs, "scheduler": scheduler,
                                  "seed": seed, "progress": progress, "models_root": models_root}
        if solve_timeout is not None and _accepts(module.run, "solve_timeout"):
            kwargs["solve_timeout"] = solve_timeout
            record["solve_timeout"] = solve_timeout
        kwargs.update(options.get(name, {}))
        _log(progress, f"[{i}/{len(todo)}] {name}: {record['title']}")
        start = time.perf_counter()
        records[name] = {**record, "status": "running"}
        _write_run(run_path, run)
        try:
            module.run(out_dir, **kwargs)
        except KeyboardInterrupt:
            record.update(status="interrupted", wall_s=time.perf_counter() - start,
                          error="interrupted (Ctrl-C); run the same command again to resume")
            records[name] = record
            _finish(run, invocation, run_path, t0)
            render_report(out_dir)
            raise
        except Exception as exc:  # noqa: BLE001 - the other experiments must still run
            record.update(status="error", wall_s=time.perf_counter() - start,
                          error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            _log(progress, f"[{i}/{len(todo)}] {name}: FAILED ({type(exc).__name__}: {exc})")
        else:
            record.update(status="ok", wall_s=time.perf_counter() - start)
            _log(progress, f"[{i}/{len(todo)}] {name}: done in {record['wall_s']:.1f} s")
        record["finished"] = _now()
        records[name] = record
        invocation["experiments"].append(name)
        _write_run(run_path, run)
        render_report(out_dir)  # a report to look at while the next experiment runs
    _finish(run, invocation, run_path, t0)
    report = render_report(out_dir)
    _log(progress, f"report: {report}")
    return report


def _finish(run: dict[str, Any], invocation: dict[str, Any], path: Path, t0: float) -> None:
    run["finished"] = invocation["finished"] = _now()
    run["wall_s"] = invocation["wall_s"] = time.perf_counter() - t0
    _write_run(path, run)


def failed_experiments(out_dir: str | Path) -> dict[str, str]:
    """``{name: error}`` for the experiments whose latest run failed (per ``run.json``)."""
    from boxhack.report.html import load_run

    records = load_run(out_dir).get("experiments") or {}
    return {
        name: str(r.get("error") or r.get("status"))
        for name, r in records.items()
        if isinstance(r, Mapping) and r.get("status") in ("error", "interrupted", "running")
    }


def rebuild_report(
    run_dir: str | Path, *, out: str | Path | None = None
) -> tuple[Path, dict[str, str]]:
    """Re-compute every experiment's summary from its JSONL rows, then render the report.

    For each experiment directory holding ``rows.jsonl``, imports its module (the one
    ``run.json`` recorded, else ``boxhack.experiments.<dir name>``) and calls
    ``summarise(run_dir)``, which rewrites ``summary.json`` and the figures. A summarise that
    fails is reported (in the report and the returned dict), not raised.

    Returns:
        ``(report path, {experiment: error})``.
    """
    from boxhack.report.html import ROWS_FILE, load_run, render_report

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BoxhackError(f"run directory {run_dir} does not exist")
    run = load_run(run_dir)
    records = run.get("experiments") or {}
    order = [n for n in (run.get("order") or []) if isinstance(n, str)]
    subdirs = sorted(p.name for p in run_dir.iterdir() if (p / ROWS_FILE).is_file())
    names = [n for n in order if n in subdirs] + [n for n in subdirs if n not in order]
    if not names:
        raise BoxhackError(
            f"{run_dir} holds no experiment rows (no <experiment>/rows.jsonl); run "
            f"`boxhack reproduce --out {run_dir}` first"
        )
    errors: dict[str, str] = {}
    for name in names:
        record = records.get(name) if isinstance(records.get(name), Mapping) else {}
        module_path = record.get("module") or _module_path(name)
        try:
            module = importlib.import_module(module_path)
            module.summarise(run_dir)
        except Exception as exc:  # noqa: BLE001 - one experiment's failure is shown, not fatal
            errors[name] = f"{type(exc).__name__}: {exc}"
    return render_report(run_dir, out, errors=errors), errors
