"""Test helpers of the experiment tests: re-check every attack record an experiment stored in
its rows, independently of the experiment's own code (the models and monitors are loaded from
the records' references); run and present an experiment as the workflow does; check that an
experiment takes its directory's lock before it writes anything."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

from boxhack.attacks.records import Recheck, recheck, resolve_ref
from boxhack.errors import BoxhackError
from boxhack.experiments.spec import RunContext, Settings, load_config_and_rows, run_experiment
from boxhack.infra.jsonl import latest_by_key, read_rows
from boxhack.infra.locks import exclusive
from boxhack.models.io import load_model
from boxhack.monitor import BoxMonitor


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recheck_rows(run_dir, name: str) -> tuple[Recheck, int]:
    """``(totals, records)`` over every record in ``run_dir/name/rows.jsonl``.

    Asserts on the way that each reference is relative to the run directory when it lies inside
    it, and names a model (by its weights hash) and monitor (by its file hash) that exist.
    """
    run_dir = Path(run_dir)
    total, n_records, cache = Recheck(), 0, {}
    for row in latest_by_key(read_rows(run_dir / name / "rows.jsonl")).values():
        assert row["status"] == "ok", row.get("error")
        for record in row["result"].get("attacks", []):
            n_records += 1
            for ref in (record["model"], record["monitor"]):  # relative when inside the run
                inside = resolve_ref(ref, run_dir).resolve().is_relative_to(run_dir.resolve())
                assert Path(ref["path"]).is_absolute() != inside, ref
            model_dir = resolve_ref(record["model"], run_dir)
            monitor_file = resolve_ref(record["monitor"], run_dir)
            key = (str(model_dir), str(monitor_file))
            if key not in cache:
                model, info = load_model(model_dir)
                assert info["sha256"] == record["model"]["sha256"]
                assert _file_hash(monitor_file) == record["monitor"]["sha256"]
                cache[key] = (model, BoxMonitor.load(monitor_file))
            total.add(recheck(record, *cache[key]))
    return total, n_records


def run_and_present(name: str, out_dir, *, models_root=None, quick: bool = True, **options):
    """Run experiment ``name`` through :func:`boxhack.experiments.spec.run_experiment` (one
    worker, no progress bar) and present it with its report presenter, as the workflow does.

    Returns ``(summary, config, rows, figures, text)``: the summary data, the stored
    configuration and rows of this configuration, the figures drawn and the sentences."""
    exp = importlib.import_module(f"boxhack.experiments.{name}").EXPERIMENT
    presenter = importlib.import_module(f"boxhack.report.{name}").PRESENTER
    out_dir = Path(out_dir)
    summary = run_experiment(exp, out_dir, Settings(quick=quick, n_jobs=1, progress=False),
                             models_root=models_root, options=options)
    ctx = RunContext(out_dir=out_dir, models_root=Path(models_root or out_dir / "models"))
    config, rows = load_config_and_rows(exp, ctx)
    figures = presenter.draw(config, rows, summary, ctx.exp_dir(name))
    text = presenter.describe(config, summary)
    return summary, config, rows, figures, text


def assert_locked_before_writing(name: str, tmp_path) -> None:
    """A run whose experiment directory is in use is refused at once: no config, no model
    training, nothing written (the models root stays empty)."""
    exp = importlib.import_module(f"boxhack.experiments.{name}").EXPERIMENT
    with exclusive(tmp_path / name):
        try:
            run_experiment(exp, tmp_path, Settings(quick=True, n_jobs=1, progress=False),
                           models_root=tmp_path / "models")
        except BoxhackError as exc:
            assert "in use" in str(exc), exc
        else:
            raise AssertionError("a second run on a directory in use was not refused")
        assert [p.name for p in (tmp_path / name).iterdir()] == [".lock"]
        assert not (tmp_path / "models").exists()
