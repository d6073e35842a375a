"""``boxhack verify``: re-check every stored attack success with the exact model and monitor.

:func:`verify_path` takes either

- a **run directory**: every ``<experiment>/rows.jsonl`` directly below it (or the directory
  itself when it holds a ``rows.jsonl``; its parent is then the run directory). Of each file
  the newest row per ``"key"`` counts (a resumed run appends newer rows), and every record in
  ``row["result"]["attacks"]`` is re-checked; or
- a **file written by** ``--save`` (an ``.npz`` of :func:`boxhack.attacks.records.save_attack`).

Each record names its model directory and monitor file (paths relative to the run directory,
or to the saved file's folder) with their SHA-256. Both are loaded (once each, cached), their
hashes compared with the record's (a changed file is an error, not a failure of the attack),
the monitor checked to fit the model (:func:`boxhack.monitor.check_compatible`), and the
record re-decided by :func:`boxhack.attacks.records.recheck`: a stored success *holds* when
:func:`boxhack.attacks.verify.verify` decides success again on the stored float32 input and the
perturbation is within the record's budget, computed exactly.

Nothing found in the files is imported or executed: experiment names are directory names read
as text, models are loaded only from boxhack model directories (``weights_only`` state dicts),
monitors with ``allow_pickle=False``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boxhack.attacks.records import cross_check, load_attack, recheck, resolve_ref
from boxhack.errors import BoxhackError
from boxhack.infra.jsonl import latest_by_key, read_rows
from boxhack.models.io import load_model, sha256_file
from boxhack.monitor import check_compatible
from boxhack.monitor.registry import load_monitor

__all__ = ["VerifySummary", "verify_path"]

ROWS = "rows.jsonl"


@dataclass
class VerifySummary:
    """What :func:`verify_path` re-checked: counts overall and per experiment, and failures."""

    path: str
    kind: str  # "run" or "file"
    records: int = 0
    samples: int = 0
    claimed: int = 0
    hold: int = 0
    experiments: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    linked: int = 0  # records whose row outcomes were cross-checked
    summaries: int = 0  # summary.json files re-derived from their rows (boxhack.workflow)
    disagreements: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every stored success holds and no recorded outcome or count disagrees."""
        return self.hold == self.claimed and not self.disagreements

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "records": self.records,
                "samples": self.samples, "claimed": self.claimed, "hold": self.hold,
                "ok": self.ok, "experiments": self.experiments,
                "failures": self.failures, "linked": self.linked, "summaries": self.summaries,
                "disagreements": self.disagreements}  # fmt: skip


class _Loader:
    """Loads each model directory and monitor file once; checks hashes against each record."""

    def __init__(self, model_loader: Callable | None = None) -> None:
        self.model_loader = model_loader
        self.models: dict[Any, tuple[Any, dict]] = {}
        self.monitors: dict[Path, tuple[Any, str]] = {}
        self.checked: set[tuple[Path, Path]] = set()

    def model(self, ref: Mapping[str, Any], base: Path, where: str):
        if ref.get("kind", "boxhack") != "boxhack":
            return self._other_model(ref, base, where)
        path = resolve_ref(ref, base)
        key = Path(os.path.abspath(path))
        if key not in self.models:
            if not key.is_dir():
                raise BoxhackError(f"{where}: the model directory {path} it was made with is "
                                   "missing (moved or deleted?)")  # fmt: skip
            self.models[key] = load_model(key)  # checks model.pt against model.json's hash
        model, info = self.models[key]
        want = ref.get("sha256")
        if want and info.get("sha256") != want:
            raise BoxhackError(
                f"{where}: model {path} has weights sha256 {str(info.get('sha256'))[:12]}..., "
                f"the stored attack was made with {str(want)[:12]}...: the model changed since "
                "the attack ran, so its results cannot be re-checked with it"
            )
        return key, model, info

    def _other_model(self, ref: Mapping[str, Any], base: Path, where: str):
        """A model that is not a boxhack directory (``module:Class``, TorchScript, ...):
        loaded by ``model_loader(ref, base)``, which checks its state hash."""
        key = (ref.get("kind"), ref.get("path"), ref.get("weights"), ref.get("sha256"), str(base))
        if key not in self.models:
            if self.model_loader is None:
                raise BoxhackError(f"{where}: the stored attack was made with a "
                                   f"{ref.get('kind')} model ({ref.get('path')}); re-check it "
                                   f"with `boxhack verify`")  # fmt: skip
            try:
                self.models[key] = self.model_loader(dict(ref), base)
            except BoxhackError as exc:
                raise BoxhackError(f"{where}: {exc}") from None
        model, info = self.models[key]
        return key, model, info

    def monitor(self, ref: Mapping[str, Any], base: Path, where: str):
        path = resolve_ref(ref, base)
        key = Path(os.path.abspath(path))
        if key not in self.monitors:
            if not key.is_file():
                raise BoxhackError(f"{where}: the monitor file {path} it was made with is "
                                   "missing (moved or deleted?)")  # fmt: skip
            self.monitors[key] = (load_monitor(key), sha256_file(key))
        monitor, digest = self.monitors[key]
        want = ref.get("sha256")
        if want and digest != want:
            raise BoxhackError(
                f"{where}: monitor {path} has sha256 {digest[:12]}..., the stored attack was "
                f"made with {str(want)[:12]}...: the monitor file changed since the attack ran"
            )
        return key, monitor

    def pair(self, record: Mapping[str, Any], base: Path, where: str):
        for name in ("model", "monitor"):
            if not isinstance(record.get(name), Mapping):
                raise BoxhackError(f"{where}: the stored attack has no {name} reference")
        model_key, model, info = self.model(record["model"], base, where)
        monitor_key, monitor = self.monitor(record["monitor"], base, where)
        if (model_key, monitor_key) not in self.checked:
            try:
                check_compatible(monitor, model, info, monitor_name=str(monitor_key),
                                 model_name=str(model_key))  # fmt: skip
            except BoxhackError as exc:
                raise BoxhackError(f"{where}: {exc}") from None
            self.checked.add((model_key, monitor_key))
        return model, monitor


def _recheck_into(summary: VerifySummary, experiment: str, record, base: Path, where: str,
                  loader: _Loader, label: dict[str, Any],
                  row_result: Mapping[str, Any] | None = None) -> None:
    if not isinstance(record, Mapping):
        raise BoxhackError(f"{where}: a stored attack is a {type(record).__name__}, not a record")
    model, monitor = loader.pair(record, base, where)
    try:
        out = recheck(record, model, monitor)
    except BoxhackError as exc:
        raise BoxhackError(f"{where}: {exc}") from None
    counts = summary.experiments.setdefault(
        experiment, {"records": 0, "samples": 0, "claimed": 0, "hold": 0})
    counts["records"] += 1
    counts["samples"] += out.samples
    counts["claimed"] += out.claimed
    counts["hold"] += out.hold
    summary.records += 1
    summary.samples += out.samples
    summary.claimed += out.claimed
    summary.hold += out.hold
    for failure in out.failures:
        summary.failures.append({"experiment": experiment, **label, **failure})
    if row_result is not None and isinstance(record.get("row"), Mapping):
        summary.linked += 1
        for d in cross_check(row_result, record, out):
            summary.disagreements.append({"experiment": experiment, **label, **d})


def _experiment_files(path: Path) -> tuple[Path, list[tuple[str, Path]]]:
    """``(run_dir, [(experiment, rows.jsonl), ...])`` for a run or experiment directory."""
    if (path / ROWS).is_file():
        return path.parent, [(path.name, path / ROWS)]
    found = sorted((p.parent.name, p) for p in path.glob(f"*/{ROWS}") if p.is_file())
    return path, found


def verify_path(path: str | os.PathLike, *, model_loader: Callable | None = None
                ) -> VerifySummary:
    """Re-check every stored attack success under ``path`` (see the module docstring).

    ``model_loader(ref, base) -> (model, info)`` loads models that are not boxhack model
    directories (records with a ``kind``; see :func:`boxhack.workflow.target.load_model_ref`).

    Returns a :class:`VerifySummary`; raises :class:`BoxhackError` for bad input: a path that
    is neither a run directory nor a saved attack, a run without stored attacks, a damaged
    row or record, a referenced model or monitor that is missing or whose hash changed.
    """
    p = Path(path)
    loader = _Loader(model_loader)
    if p.is_file():
        record = load_attack(p)
        summary = VerifySummary(path=str(p), kind="file")
        _recheck_into(summary, p.name, record, p.parent, str(p), loader, {"record": 0})
        return summary
    if not p.is_dir():
        raise BoxhackError(f"{p} not found: give a run directory or a file written by --save")
    run_dir, files = _experiment_files(p)
    if not files:
        raise BoxhackError(f"{p} holds no <experiment>/{ROWS}: give a run directory (e.g. the "
                           "--out of `boxhack reproduce`) or a file written by --save")  # fmt: skip
    summary = VerifySummary(path=str(p), kind="run")
    for experiment, rows_file in files:
        rows = latest_by_key(read_rows(rows_file))
        for key in sorted(rows):
            result = rows[key].get("result")
            attacks = result.get("attacks") if isinstance(result, Mapping) else None
            if attacks is None:
                continue
            if not isinstance(attacks, list):
                raise BoxhackError(f"{rows_file}, row {key!r}: 'attacks' is not a list of records")
            for i, record in enumerate(attacks):
                where = f"{rows_file}, row {key!r}, record {i}"
                _recheck_into(summary, experiment, record, run_dir, where, loader,
                              {"key": key, "record": i}, result)  # fmt: skip
    if summary.records == 0:
        raise BoxhackError(
            f"{p}: no row of {', '.join(str(f) for _, f in files)} stores attack records "
            "(result[\"attacks\"]); nothing to re-check (was the run made by an older boxhack?)"
        )
    return summary
