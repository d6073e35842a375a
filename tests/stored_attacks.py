"""Test helper: re-check every attack record an experiment stored in its rows, independently of
the experiment's own code (the models and monitors are loaded from the records' references)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from boxhack.attacks.records import Recheck, recheck, resolve_ref
from boxhack.infra.jsonl import latest_by_key, read_rows
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
