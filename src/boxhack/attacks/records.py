"""Stored attacks that anyone can re-check: exact inputs plus what they were checked against.

An *attack record* is a JSON-able dict that an experiment puts into its JSONL row (under
``"attacks"``, a list) or that ``--save`` writes to a file. It holds everything needed to
re-run :func:`boxhack.attacks.verify.verify` later, on another machine, with nothing rounded::

    {"record": 1,
     "model":   {"path": "models/models/mnist10", "sha256": "<weights hash>"},
     "monitor": {"path": "models/monitors/mnist10-relu2-k1-tol0.npz", "sha256": "<file hash>"},
     "goal": "dos", "x0": <float32 array>, "x": <float32 array>,
     "labels": [..] | null, "targets": [..] | null,
     "success": [true, false, ...],            # what the attack claimed, per sample
     "budget": {"norm": "linf", "eps": 0.1} | null}

Arrays are stored as float32 bits (:mod:`boxhack.infra.arrays`). Paths are relative to the
run directory when the file lies inside it (so a run directory can be moved or copied), else
absolute. :func:`recheck` re-decides every sample with the exact model and monitor: a stored
success *holds* when ``verify`` says success again and the stored perturbation is within the
budget, computed exactly from the float32 values.

Files written by ``--save`` are ``.npz`` archives (``allow_pickle=False`` to read) with the
arrays ``x0``, ``x``, ``success``, ``labels``/``targets`` when present, and ``record``: the
record's JSON without its arrays; :func:`save_attack` / :func:`load_attack` write and read them.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from boxhack.attacks.verify import AttackResult, check_goal, goal_conditions, verify
from boxhack.errors import BoxhackError
from boxhack.infra.arrays import decode_array, encode_array
from boxhack.infra.files import atomic_path
from boxhack.models.domain import input_bounds

__all__ = [
    "CHECKS",
    "OUTCOMES",
    "RECORD_VERSION",
    "Recheck",
    "attack_record",
    "cross_check",
    "failure_reason",
    "file_ref",
    "fit_to_budget",
    "load_attack",
    "norm_of",
    "recheck",
    "resolve_ref",
    "save_attack",
    "within_budget",
]

RECORD_VERSION = 1
NORMS = ("l1", "l2", "linf")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_ref(path: str | os.PathLike, *, base: str | os.PathLike | None = None,
             sha256: str | None = None) -> dict[str, str]:
    """``{"path", "sha256"}`` for a model directory or monitor file.

    The path is stored relative to ``base`` (a run directory) when it lies inside it. For a
    file the hash is the file's SHA-256; for a boxhack model directory pass the weights' hash
    recorded in its ``model.json`` as ``sha256``.
    """
    p = Path(path)
    if sha256 is None:
        if not p.is_file():
            raise BoxhackError(f"cannot reference {p}: not a file (pass sha256= for a directory)")
        sha256 = _sha256(p)
    text = str(p)
    if base is not None:
        try:
            text = str(p.resolve().relative_to(Path(base).resolve()))
        except ValueError:
            text = str(p.resolve())
    return {"path": text, "sha256": str(sha256)}


def resolve_ref(ref: Mapping[str, Any], base: str | os.PathLike | None) -> Path:
    """The path a reference names (relative ones are taken relative to ``base``)."""
    if not isinstance(ref, Mapping) or not isinstance(ref.get("path"), str):
        raise BoxhackError(f"malformed file reference {ref!r} in a stored attack")
    p = Path(ref["path"])
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return p


def norm_of(x0: np.ndarray, x: np.ndarray, norm: str) -> np.ndarray:
    """Per-sample ``norm`` of ``x - x0``, computed exactly (float64 of float32 values)."""
    d = (np.asarray(x, np.float32).astype(np.float64)
         - np.asarray(x0, np.float32).astype(np.float64)).reshape(len(x), -1)  # fmt: skip
    if norm == "l1":
        return np.abs(d).sum(1)
    if norm == "l2":
        return np.sqrt((d * d).sum(1))
    if norm == "linf":
        return np.abs(d).max(1) if d.shape[1] else np.zeros(len(d))
    raise BoxhackError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


def within_budget(x0: np.ndarray, x: np.ndarray, budget: Mapping[str, Any] | None) -> np.ndarray:
    """Per sample: is ``x - x0`` within ``budget`` (``{"norm", "eps"}``; ``None`` = no budget)?"""
    n = len(x)
    if not budget or budget.get("eps") is None:
        return np.ones(n, dtype=bool)
    return norm_of(x0, x, str(budget["norm"])) <= float(budget["eps"])


def fit_to_budget(x0: np.ndarray, x: np.ndarray, norm: str, eps) -> np.ndarray:
    """``x`` moved towards ``x0`` just enough that every sample's perturbation, measured exactly
    as :func:`norm_of` does (float64 of float32 ``x`` minus float32 ``x0``), is ``<= eps`` (a
    number, or one per sample; ``inf`` = no budget). Every budgeted attack ends with it.

    Samples already within the budget are returned bit for bit. Linf: each pixel is clipped to
    ``x0 +- eps`` in float64 and rounded to float32; a pixel that rounding pushed over steps one
    float32 towards ``x0`` (``np.nextafter``). L1 / L2: the perturbation is scaled down to the
    budget, and a little further while float32 rounding keeps it over (at worst to ``x0``).
    """
    x0 = np.asarray(x0, dtype=np.float32)
    out = np.array(x, dtype=np.float32, copy=True)
    n = len(out)
    eps = np.broadcast_to(np.asarray(eps, dtype=np.float64), (n,))
    over = np.flatnonzero(norm_of(x0, out, norm) > eps)
    if not len(over):
        return out
    a32 = x0[over].reshape(len(over), -1)
    a = a32.astype(np.float64)
    b = out[over].reshape(len(over), -1).astype(np.float64)
    e = eps[over]
    if norm == "linf":
        y = (a + np.clip(b - a, -e[:, None], e[:, None])).astype(np.float32)
        while True:  # each pass moves offending pixels one float32 step towards x0
            bad = np.abs(y.astype(np.float64) - a) > e[:, None]
            if not bad.any():
                break
            y[bad] = np.nextafter(y[bad], a32[bad])
    else:
        t = e / norm_of(a32, b.astype(np.float32), norm)  # the scale that fits, before rounding
        shrink = np.full(len(over), 1e-7)
        y = np.empty_like(a32)
        todo = np.ones(len(over), dtype=bool)
        while todo.any():  # shrink reaches 1 (y = x0) after at most ~24 passes
            # between x0 and x (so inside any input bounds both respect), float64 rounding aside
            y[todo] = np.clip(a[todo] + t[todo, None] * (b[todo] - a[todo]),
                              np.minimum(a[todo], b[todo]),
                              np.maximum(a[todo], b[todo])).astype(np.float32)
            todo = norm_of(a32, y, norm) > e
            t[todo] *= 1 - shrink[todo]
            shrink[todo] = np.minimum(shrink[todo] * 4, 1.0)
    out[over] = y.reshape((len(over),) + out.shape[1:])
    return out


OUTCOMES = ("success", "pred0", "pred", "accepted0", "accepted", "eligible", "already",
            "l1", "l2", "linf")
_BOOLS = ("success", "accepted0", "accepted", "eligible", "already")

RowPath = Sequence[str | int]


def attack_record(
    result: AttackResult,
    *,
    model: Mapping[str, str],
    monitor: Mapping[str, str],
    budget: Mapping[str, Any] | None = None,
    select: np.ndarray | None = None,
    at: RowPath = (),
    outcomes: Mapping[str, str | RowPath] | None = None,
    counts: Mapping[str, str | RowPath] | None = None,
) -> dict[str, Any]:
    """A record of ``result`` (all samples, or the boolean/int selection ``select``).

    ``model`` and ``monitor`` are references from :func:`file_ref`; ``budget`` is
    ``{"norm": "l2"|"l1"|"linf", "eps": float}`` when the attack had one.

    ``outcomes`` / ``counts`` link the record to what its row says about it, so that
    ``boxhack verify`` can re-derive the row (:func:`cross_check`): ``at`` is where, in the
    row's result, the per-sample lists of ``result`` lie (keys and list positions; ``()`` = the
    result itself); ``outcomes`` maps an outcome of :data:`OUTCOMES` to the key (or key path)
    under ``at`` of its per-sample list, or of its value when ``result`` has one sample;
    ``counts`` maps ``"success"`` to the key of a count of ``result``'s successes.
    """
    idx = np.arange(len(result)) if select is None else np.asarray(select)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    if budget is not None:
        if budget.get("norm") not in NORMS:
            raise BoxhackError(f"budget norm must be one of {NORMS}, got {budget.get('norm')!r}")
        budget = {"norm": str(budget["norm"]),
                  "eps": None if budget.get("eps") is None else float(budget["eps"])}
    record = {
        "record": RECORD_VERSION,
        "model": dict(model),
        "monitor": dict(monitor),
        "goal": result.goal,
        "x0": encode_array(result.x0[idx]),
        "x": encode_array(result.x[idx]),
        "labels": None if result.labels is None else result.labels[idx].tolist(),
        "targets": None if result.targets is None else result.targets[idx].tolist(),
        "success": result.success[idx].astype(bool).tolist(),
        "budget": budget,
    }
    if outcomes or counts:
        unknown = sorted(set(outcomes or {}) - set(OUTCOMES)) + sorted(set(counts or {}) - {"success"})
        if unknown:
            raise BoxhackError(f"cannot link outcomes {unknown}; known: {', '.join(OUTCOMES)}")
        record["row"] = {"at": list(at), "positions": idx.tolist(),
                         "outcomes": {k: _as_path(v) for k, v in (outcomes or {}).items()},
                         "counts": {k: _as_path(v) for k, v in (counts or {}).items()}}
    return record


def _as_path(key: str | RowPath) -> list:
    return [key] if isinstance(key, str) else list(key)


_MISSING = object()


def _same(name: str, recorded: Any, value: bool | float) -> bool:
    """Does a row's recorded ``name`` equal the re-computed ``value`` (exactly)?"""
    if name in _BOOLS:
        return recorded in (0, 1) and bool(recorded) == value
    if name in ("pred0", "pred"):
        return type(recorded) is int and recorded == value
    return isinstance(recorded, (int, float)) and float(recorded) == value


def _follow(value: Any, path: Sequence[Any]) -> Any:
    for step in path:
        if isinstance(value, Mapping) and isinstance(step, str) and step in value or isinstance(value, list) and isinstance(step, int) and -len(value) <= step < len(value):
            value = value[step]
        else:
            return _MISSING
    return value


def cross_check(row_result: Mapping[str, Any], record: Mapping[str, Any],
                checked: Recheck) -> list[dict[str, Any]]:
    """Where the row disagrees with the re-computed outcomes of its record ``record``
    (``checked``, from :func:`recheck`), following the record's ``"row"`` link (see
    :func:`attack_record`). One dict per disagreement: ``field`` (its path in the row),
    ``sample`` (the position in that list, or ``None``), ``recorded``, ``recomputed``.

    The per-sample values must equal the re-computed ones exactly (norms too: both are the
    float64 norm of the same float32 arrays). A row that claims a success at a position the
    record does not store is a disagreement (a success without its input), and so is a count
    of successes other than the number that hold. A record without a link has nothing to
    check (``[]``).
    """
    link = record.get("row")
    res = checked.result
    if not isinstance(link, Mapping) or res is None:
        return []
    at = list(link.get("at") or [])
    positions = [int(p) for p in link.get("positions") or []]
    block = _follow(row_result, at)
    holds = res.success & checked.within
    recomputed = {"success": holds, **{k: getattr(res, k) for k in OUTCOMES if k != "success"}}
    out: list[dict[str, Any]] = []

    def disagree(path, sample, recorded, value):
        out.append({"field": ".".join(str(p) for p in path), "sample": sample,
                    "recorded": recorded, "recomputed": value})

    if block is _MISSING:
        disagree(at, None, "missing", "the per-sample outcomes the record links to")
        return out
    for name, path in (link.get("outcomes") or {}).items():
        values = _follow(block, path)
        where = at + list(path)
        if values is _MISSING:
            disagree(where, None, "missing", f"the {name} of the stored samples")
            continue
        if not isinstance(values, list):
            if positions != [0]:
                disagree(where, None, values, f"a list of the {name} of each sample")
                continue
            values = [values]
        for k, pos in enumerate(positions):
            value = recomputed[name][k]
            value = bool(value) if name in _BOOLS else (
                int(value) if name in ("pred0", "pred") else float(value))  # fmt: skip
            got = values[pos] if 0 <= pos < len(values) else _MISSING
            if got is _MISSING or not _same(name, got, value):
                disagree(where, pos, "missing" if got is _MISSING else got, value)
        if name == "success" and len(values) > 1:
            stored = set(positions)
            for pos, got in enumerate(values):
                if pos not in stored and got not in (0, False, None):
                    disagree(where, pos, got, "no stored input: a success must store its input")
    for name, path in (link.get("counts") or {}).items():
        got = _follow(block, path)
        if got != int(holds.sum()):
            disagree(at + list(path), None, "missing" if got is _MISSING else got,
                     int(holds.sum()))
    return out


@dataclass
class Recheck:
    """The outcome of re-checking one record: ``claimed`` successes, how many ``hold``.

    ``result`` is the re-computed :class:`~boxhack.attacks.verify.AttackResult` of the record's
    samples and ``within`` their budget check (both ``None`` once several are added up)."""

    claimed: int = 0
    hold: int = 0
    samples: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    result: AttackResult | None = None
    within: np.ndarray | None = None

    def add(self, other: Recheck) -> None:
        self.claimed += other.claimed
        self.hold += other.hold
        self.samples += other.samples
        self.failures.extend(other.failures)
        self.result = self.within = None


def _arrays(record: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    x0, x = record.get("x0"), record.get("x")
    x0 = decode_array(x0) if isinstance(x0, Mapping) else np.asarray(x0, np.float32)
    x = decode_array(x) if isinstance(x, Mapping) else np.asarray(x, np.float32)
    if x0.shape != x.shape or x0.ndim < 1:
        raise BoxhackError(f"stored attack has x0 {x0.shape} and x {x.shape}; they must match")
    return x0.astype(np.float32), x.astype(np.float32)


CHECKS = ("bounds", "budget", "eligibility", "prediction", "monitor")


def failure_reason(res: AttackResult, i: int, bounds: tuple[float, float],
                   budget: Mapping[str, Any] | None) -> tuple[str, str]:
    """``(check, sentence)``: the first of :data:`CHECKS` that sample ``i`` of the re-computed
    ``res`` fails, in that order, and why in words ("outside the input bounds [0, 1] at pixel
    17 (value 1.0000001)"). ``("", "")`` when it fails none."""
    goal, x = res.goal, res.x[i].reshape(-1)
    lo, hi = np.float32(bounds[0]), np.float32(bounds[1])
    bad = np.flatnonzero(~np.isfinite(x) | (x < lo) | (x > hi))
    if len(bad):
        j = int(bad[0])
        what = "not a finite number" if not np.isfinite(x[j]) else (
            f"outside the input bounds [{float(lo):g}, {float(hi):g}]")
        return "bounds", f"{what} at pixel {j} (value {x[j]!s})"  # float32's shortest
    if budget and budget.get("eps") is not None:
        norm, eps = str(budget["norm"]), float(budget["eps"])
        value = float(norm_of(res.x0[i:i + 1], res.x[i:i + 1], norm)[0])
        if value > eps:
            return "budget", f"over the budget: {norm} norm {value!r} > eps {eps!r}"
    c0, c = int(res.pred0[i]), int(res.pred[i])
    label = None if res.labels is None else int(res.labels[i])
    if res.already[i]:
        state = "accepted" if res.accepted0[i] else "rejected"
        return "eligibility", (f"not eligible: the original input already meets goal {goal} "
                               f"(class {c0}, {state}), so it was not attacked")
    if not res.eligible[i]:
        return "eligibility", (f"not eligible: goal {goal} starts from correctly classified "
                               f"inputs, the original is class {c0} with label {label}")
    targets = None if res.targets is None else res.targets[i:i + 1]
    labels = None if res.labels is None else res.labels[i:i + 1]
    prediction_ok, monitor_ok = goal_conditions(goal, res.pred0[i:i + 1], res.pred[i:i + 1],
                                                res.accepted[i:i + 1], labels, targets)
    if not prediction_ok[0]:
        if goal in ("dos", "intrude"):
            need = f"the original's class {c0}"
        elif goal == "intrude-target":
            need = f"the target class {int(res.targets[i])}"
        else:
            ref = "label" if label is not None else "original's class"
            need = f"a class other than the {ref} {label if label is not None else c0}"
        return "prediction", f"the model predicts class {c}; goal {goal} needs {need}"
    if not monitor_ok[0]:
        if goal == "dos":
            return "monitor", f"the monitor accepts it (class {c}); goal dos needs a rejection"
        return "monitor", f"the monitor rejects it (class {c}); goal {goal} needs an acceptance"
    return "", ""


def recheck(record: Mapping[str, Any], model, monitor) -> Recheck:
    """Re-decide every sample of ``record`` with ``model`` and ``monitor`` (exact float32).

    A claimed success holds when :func:`~boxhack.attacks.verify.verify` decides success again
    and the perturbation is within the record's budget. Samples the attack did not claim are
    re-checked too but do not count either way. Each failure names the first check it fails
    (:func:`failure_reason`: bounds, budget, eligibility, prediction, monitor).
    """
    if record.get("record") != RECORD_VERSION:
        raise BoxhackError(
            f"stored attack has record version {record.get('record')!r}; this boxhack reads "
            f"version {RECORD_VERSION}"
        )
    goal = check_goal(str(record.get("goal")))
    x0, x = _arrays(record)
    claimed = np.asarray(record.get("success"), dtype=bool).reshape(-1)
    if len(claimed) != len(x):
        raise BoxhackError(f"stored attack has {len(x)} inputs but {len(claimed)} success flags")
    labels = record.get("labels")
    targets = record.get("targets")
    res = verify(model, monitor, x0, x, goal, labels=labels, targets=targets)
    within = within_budget(x0, x, record.get("budget"))
    ok = res.success & within
    holds = claimed & ok
    out = Recheck(claimed=int(claimed.sum()), hold=int(holds.sum()), samples=len(x),
                  result=res, within=within)  # fmt: skip
    bounds = input_bounds(model)
    for i in np.flatnonzero(claimed & ~ok)[:20]:
        check, reason = failure_reason(res, int(i), bounds, record.get("budget"))
        in_bounds = check != "bounds"  # the verdicts of an invalid input are not its own
        out.failures.append({
            "sample": int(i), "goal": goal, "check": check, "reason": reason,
            "pred0": int(res.pred0[i]), "pred": int(res.pred[i]) if in_bounds else None,
            "accepted": bool(res.accepted[i]) if in_bounds else None,
            "within_budget": bool(within[i]),
        })  # fmt: skip
    return out


# ------------------------------------------------------------------------------ --save files


def save_attack(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as an ``.npz`` (arrays as arrays, the rest as JSON), atomically."""
    path = Path(path)
    x0, x = _arrays(record)
    meta = {k: v for k, v in record.items() if k not in ("x0", "x", "success", "labels",
                                                         "targets")}  # fmt: skip
    arrays: dict[str, np.ndarray] = {
        "record": np.array(json.dumps(meta)),
        "x0": x0,
        "x": x,
        "success": np.asarray(record["success"], dtype=bool),
    }
    for key in ("labels", "targets"):
        if record.get(key) is not None:
            arrays[key] = np.asarray(record[key], dtype=np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def load_attack(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :func:`save_attack` back into a record (arrays decoded)."""
    path = Path(path)
    if not path.is_file():
        raise BoxhackError(f"saved attack file {path} not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays["record"][()]))
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise BoxhackError(
            f"cannot read saved attack {path}: {exc or type(exc).__name__} (corrupt or not "
            f"written by boxhack --save?)"
        ) from None
    if not isinstance(meta, dict):
        raise BoxhackError(f"{path}: its record is not a JSON object")
    for key in ("x0", "x", "success"):
        if key not in arrays:
            raise BoxhackError(f"{path}: array {key!r} is missing")
    record = dict(meta)
    record["x0"] = encode_array(arrays["x0"])
    record["x"] = encode_array(arrays["x"])
    record["success"] = arrays["success"].astype(bool).tolist()
    for key in ("labels", "targets"):
        record[key] = arrays[key].tolist() if key in arrays else None
    return record
