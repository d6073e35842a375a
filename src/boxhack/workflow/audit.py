"""``boxhack audit``: how easily is *my* monitor fooled? One resumable campaign on a user's
model and data.

::

    summary = audit("net.py:Net", data="mydata.npz", layer="fc1", out="audit/",
                    weights="net.pt")

:func:`audit` loads the target (:func:`boxhack.workflow.target.load_target`: any model and data
kind), fits the monitor when none is given (the paper's defaults: k-means boxes with the elbow
rule, threshold 0.07, or ``clusters``; tolerance 0; correctly classified training inputs only)
and saves it as ``out/monitor.npz``, then runs one job per measure through
:func:`boxhack.infra.campaign.run_campaign` into ``out/audit/rows.jsonl`` (in-process, one
row per finished measure, so an interrupted audit resumes where it stopped):

- ``monitor``: accuracy, acceptance of correct and of incorrect predictions, novelty
  detection of novel classes or ``x_ood`` with the graded score's AUROC;
- ``robustness/<goal>/<norm>``: the monitor-aware minimal-norm attack
  (:class:`boxhack.attacks.gradient.MonitorAttack`) for Attack 1 (``dos``: accepted inputs
  made rejected) and Attack 2 (``intrude``: rejected inputs made accepted), in L2 and Linf;
  the success-vs-budget curve is read off the verified minimal norms;
- ``adversarial/<attack>``: FGSM and PGD (Foolbox, :mod:`boxhack.attacks.adversarial`) at each
  budget, judged by monitors of clusters x tolerance (paper figure 8);
- ``combined``: FGSM, then the gradient repair of every rejected or unflipped sample
  (:mod:`boxhack.attacks.combined`).

Every count is decided by :func:`boxhack.attacks.verify.verify`; successes are stored exactly
(attack records in the rows), so ``boxhack verify out/`` re-checks them. Effort is bounded by
sample counts and step budgets, never by a clock; everything is seeded. ``out/summary.json``
and ``out/report.html`` are written from the rows (:mod:`boxhack.report.audit`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from boxhack.attacks.adversarial import get_spec, run_adversarial_sweep
from boxhack.attacks.combined import CombinedResult, combined_attack
from boxhack.attacks.gradient import MonitorAttack
from boxhack.attacks.records import attack_record, file_ref
from boxhack.attacks.verify import verify
from boxhack.data.sampling import sample_balanced
from boxhack.errors import BoxhackError
from boxhack.infra.campaign import Job, run_campaign
from boxhack.infra.files import atomic_write_json
from boxhack.infra.jsonl import latest_by_key, read_rows
from boxhack.infra.locks import exclusive
from boxhack.models.domain import input_bounds
from boxhack.models.layers import collect
from boxhack.monitor import BoxMonitor, abstraction_params, build_monitor
from boxhack.monitor.evaluation import evaluate_novelty
from boxhack.report.audit import render_audit, summarise
from boxhack.workflow.target import Target, load_target, model_ref, start_mask

__all__ = ["AuditSettings", "audit", "resummarise"]

EXPERIMENT = "audit"  # rows live in OUT/audit/rows.jsonl, where `boxhack verify OUT` looks
MONITOR_FILE = "monitor.npz"
CONFIG_FILE = "config.json"


UNIT_EPS_L2 = (0.5, 1.0, 2.0, 3.0)  # the default budgets for inputs in [0, 1]
UNIT_EPS_LINF = (0.05, 0.1, 0.2, 0.3)


@dataclass(frozen=True)
class AuditSettings:
    """What an audit measures and with how much effort (all bounded, all seeded)."""

    n: int = 100  # inputs per robustness measure and per adversarial attack
    n_combined: int = 50  # inputs of the combined attack
    clusters: int | None = None  # boxes per class of the fitted monitor; None: elbow rule
    threshold: float = 0.07  # elbow-rule threshold (the reference code's experiments)
    max_clusters: int = 10
    tolerance: float = 0.0
    abstraction: str = "box"  # of the fitted monitor: a registered name, or names joined by +
    gamma: int | None = None  # Hamming distance of a pattern monitor (None: its default)
    sweep_clusters: tuple[int, ...] = (1, 2, 3)  # figure 8's judging monitors
    sweep_tolerances: tuple[float, ...] = (0.0, 0.1, 0.25)
    goals: tuple[str, ...] = ("dos", "intrude")
    norms: tuple[str, ...] = ("l2", "linf")
    # budgets in input units; None: these defaults for inputs in [0, 1], scaled by the width
    # of the model's bounds (hi - lo) otherwise (Linf 0.1 of [0, 1] is 25.5 of [0, 255])
    eps_l2: tuple[float, ...] | None = None
    eps_linf: tuple[float, ...] | None = None
    attacks: tuple[str, ...] = ("fgsm", "pgd-linf")
    steps: int | None = None  # gradient steps per sample (default: the attack's)
    # LPs one attack measure may solve on a convex-hull monitor: inputs are attacked in chunks
    # until it is spent, the rest are not attacked (the summary says how many were)
    hull_lps: int | None = 1000
    combined_eps: float | None = None  # Linf budget of the combined attack's FGSM (0.1 x width)
    seed: int = 0
    batch_size: int = 512

    def __post_init__(self) -> None:
        if self.hull_lps is not None and (not isinstance(self.hull_lps, int)
                                          or self.hull_lps < 0):
            raise BoxhackError(f"hull_lps must be an integer >= 0 or None, got {self.hull_lps!r}")
        for name in ("n", "n_combined", "max_clusters", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise BoxhackError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if self.clusters is not None and self.clusters < 1:
            raise BoxhackError(f"clusters must be >= 1, got {self.clusters}")
        for name in ("sweep_clusters",):
            if any(int(k) < 1 for k in getattr(self, name)):
                raise BoxhackError(f"{name} must be >= 1")
        bad = [g for g in self.goals if g not in ("dos", "intrude", "intrude-any")]
        if bad:
            raise BoxhackError(f"unknown robustness goal {bad[0]!r}; use dos, intrude")
        bad = [n for n in self.norms if n not in ("l1", "l2", "linf")]
        if bad:
            raise BoxhackError(f"unknown norm {bad[0]!r}; use l1, l2, linf")
        for a in self.attacks:
            get_spec(a)

    def eps(self, norm: str) -> tuple[float, ...]:
        return self.eps_linf if norm == "linf" else self.eps_l2

    def for_bounds(self, lo: float, hi: float) -> AuditSettings:
        """These settings with every budget left unset filled in for inputs in ``[lo, hi]``."""
        w = float(hi) - float(lo)
        return replace(
            self,
            eps_l2=self.eps_l2 if self.eps_l2 is not None else tuple(w * e for e in UNIT_EPS_L2),
            eps_linf=(self.eps_linf if self.eps_linf is not None
                      else tuple(w * e for e in UNIT_EPS_LINF)),
            combined_eps=self.combined_eps if self.combined_eps is not None else w * 0.1)


# ------------------------------------------------------------------ the job side
@dataclass
class _Context:
    """What every job of one audit shares (loaded once, in this process)."""

    target: Target
    monitor: Any
    settings: AuditSettings
    refs: dict
    features: tuple | None = None  # (pred, feats) of the training inputs, for the sweep
    timings: dict = field(default_factory=dict)


_CONTEXT: dict[str, _Context] = {}


def _job(params: dict) -> dict:
    ctx = _CONTEXT[params["audit"]]
    measure = params["measure"]
    if measure == "monitor":
        return _measure_monitor(ctx)
    if measure == "robustness":
        return _measure_robustness(ctx, params["goal"], params["norm"])
    if measure == "adversarial":
        return _measure_adversarial(ctx, params["attack"])
    if measure == "combined":
        return _measure_combined(ctx)
    raise BoxhackError(f"unknown audit measure {measure!r}")


HULL_CHUNK = 5  # inputs per attack call while a hull measure is within its LP budget


def _hull_lps(monitor) -> int | None:
    """LPs solved so far by the convex-hull monitors in ``monitor`` (itself, or the members of
    a composite); ``None`` when it holds none."""
    members = getattr(monitor, "members", None) or [monitor]
    hulls = [m for m in members if hasattr(m, "lp_calls")]
    return sum(h.lp_calls for h in hulls) if hulls else None


def _within_hull_budget(ctx: _Context, n: int, attack_part) -> tuple[list, dict]:
    """Run ``attack_part(slice)`` on all ``n`` inputs, or, for a monitor with convex hulls
    and a ``settings.hull_lps`` budget, on chunks of :data:`HULL_CHUNK` inputs in order until
    the measure has solved that many LPs: the inputs not reached are not attacked (never
    counted as failures). The count of LPs is exact and the same on any machine, so the
    inputs attacked are too. Returns ``(parts, work)``; ``work`` (for the row and summary):
    ``hull_lps`` solved, ``hull_budget``, ``n_planned``, ``n_attacked_within_budget``."""
    start, budget = _hull_lps(ctx.monitor), ctx.settings.hull_lps
    if start is None:
        return [attack_part(slice(0, n))], {}
    if budget is None:
        parts = [attack_part(slice(0, n))]
    else:
        parts, done = [], 0
        while done < n and _hull_lps(ctx.monitor) - start < budget:
            parts.append(attack_part(slice(done, min(n, done + HULL_CHUNK))))
            done = min(n, done + HULL_CHUNK)
    reached = sum(len(p.stage) if hasattr(p, "stage") else len(p) for p in parts)
    return parts, {"hull_lps": _hull_lps(ctx.monitor) - start, "hull_budget": budget,
                   "n_planned": n, "n_attacked_within_budget": reached}


def _joined(ctx: _Context, parts: list, goal: str | None = None):
    """One result of several parts of the same attack, re-decided together by ``verify``."""
    if len(parts) == 1:
        return parts[0]
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])
    labels = None if parts[0].labels is None else cat("labels")
    info = {k: v for k, v in parts[0].info.items() if not isinstance(v, (list, np.ndarray))}
    info["wall_s"] = sum(float(p.info.get("wall_s") or 0.0) for p in parts)
    return verify(ctx.target.model, ctx.monitor, cat("x0"), cat("x"), goal or parts[0].goal,
                  labels=labels, pred0=cat("pred0"), accepted0=cat("accepted0"), info=info)


def _measure_monitor(ctx: _Context) -> dict:
    t = ctx.target
    ds = t.dataset
    novel_x = None if t.novel is None else t.novel.x_test
    m = evaluate_novelty(ctx.monitor, t.model, ds.x_test, ds.y_test, novel_x,
                         batch_size=ctx.settings.batch_size)  # fmt: skip
    m["novel_source"] = None if t.novel is None else t.novel.source
    return m


def _sample(ctx: _Context, goal: str, n: int) -> np.ndarray:
    ds = ctx.target.dataset
    pred, acc = ctx.monitor.predict(ctx.target.model, ds.x_test)
    mask = start_mask(goal, pred, acc, ds.y_test)
    return sample_balanced(ds.y_test, n, ctx.settings.seed, mask=mask)


def _norm_stats(values: np.ndarray) -> dict:
    if not len(values):
        return {"n": 0}
    q = np.quantile(values, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"n": len(values), "min": float(values.min()), "max": float(values.max()),
            "mean": float(values.mean()), "q10": float(q[0]), "q25": float(q[1]),
            "median": float(q[2]), "q75": float(q[3]), "q90": float(q[4])}  # fmt: skip


def _measure_robustness(ctx: _Context, goal: str, norm: str) -> dict:
    s, t = ctx.settings, ctx.target
    idx = _sample(ctx, goal, s.n)
    out: dict[str, Any] = {"goal": goal, "norm": norm, "indices": idx.tolist(),
                           "eps": list(s.eps(norm))}  # fmt: skip
    if not len(idx):
        return {**out, "n": 0, "attacked": 0, "success": 0, "norms": [], "curve": [],
                "attacks": []}  # fmt: skip
    ds = t.dataset
    attack = MonitorAttack(goal=goal, norm=norm, mode="minimal", steps=s.steps, seed=s.seed,
                           batch_size=s.batch_size, device=t.device)  # fmt: skip
    parts, work = _within_hull_budget(
        ctx, len(idx), lambda part: attack(t.model, ctx.monitor, ds.x_test[idx[part]],
                                           labels=ds.y_test[idx[part]]))  # fmt: skip
    r = _joined(ctx, parts)
    idx = idx[: len(r)]
    out["indices"] = idx.tolist()
    norms = getattr(r, norm)
    attacked = int(r.eligible.sum())
    ok = r.success
    curve = [{"eps": e, "success": int((ok & (norms <= e)).sum()),
              "rate": float((ok & (norms <= e)).sum() / attacked) if attacked else None}
             for e in s.eps(norm)]  # fmt: skip
    return {**out, "n": len(r), "attacked": attacked, "already": int(r.already.sum()),
            "success": int(ok.sum()), "success_rate": r.success_rate if attacked else None,
            "norms": [float(v) if o else None for v, o in zip(norms, ok)],
            "norm_stats": _norm_stats(norms[ok]), "curve": curve,
            "wall_s": r.info.get("wall_s"), **work,
            "attacks": [attack_record(r, select=ok, **ctx.refs, outcomes={norm: "norms"},
                                      counts={"success": "success"})]
                        if ok.any() else []}  # fmt: skip


def _sweep_monitors(ctx: _Context) -> dict:
    """The figure-8 monitors: ``k`` boxes per class x tolerance, on the training features
    (collected once; a tolerance is a copy, not a refit)."""
    s, t = ctx.settings, ctx.target
    layers = list(ctx.monitor.layers_)
    if ctx.features is None:
        ds = t.dataset
        pred, feats = collect(t.model, layers, ds.x_train, batch_size=s.batch_size)
        ctx.features = (pred, feats)
    pred, feats = ctx.features
    out = {}
    for k in s.sweep_clusters:
        base = BoxMonitor(n_clusters=int(k), tolerance=0.0, only_correct=True,
                          n_classes=t.dataset.n_classes, seed=s.seed)  # fmt: skip
        base.fit_features(feats, t.dataset.y_train, pred)
        for tol in s.sweep_tolerances:
            out[f"k{int(k)}-tol{float(tol):g}"] = base.with_tolerance(float(tol))
    return out


def _measure_adversarial(ctx: _Context, attack: str) -> dict:
    s, t = ctx.settings, ctx.target
    spec = get_spec(attack)
    idx = _sample(ctx, "misclassify", s.n)
    ds = t.dataset
    x, y = ds.x_test[idx], ds.y_test[idx]
    eps = list(s.eps(spec.norm))
    results = run_adversarial_sweep(t.model, ctx.monitor, x, y, spec.name, eps,
                                    goal="misclassify", seed=s.seed)  # fmt: skip
    judges = {"audited": ctx.monitor, **_sweep_monitors(ctx)}
    per_eps = []
    for r in results:
        flipped = (r.pred != y) & r.eligible
        p, f = collect(t.model, list(ctx.monitor.layers_), r.x, batch_size=s.batch_size)
        per_eps.append({
            "epsilon": r.info.get("epsilon"), "flipped": int(flipped.sum()),
            "accepted": {name: int((flipped & m.accepts_features(f, p)).sum())
                         for name, m in judges.items()},
            "median_l2_flipped": float(np.median(r.l2[flipped])) if flipped.any() else None,
        })  # fmt: skip
    return {"attack": spec.name, "norm": spec.norm, "n": len(idx), "indices": idx.tolist(),
            "attacked": int(results[0].eligible.sum()) if results else 0, "per_eps": per_eps,
            "monitors": list(judges),
            "attacks": [attack_record(r, budget=r.info["budget"], select=r.success, **ctx.refs,
                                      at=("per_eps", i), counts={"success": "flipped"})
                        for i, r in enumerate(results) if r.success.any()]}  # fmt: skip


def _measure_combined(ctx: _Context) -> dict:
    s, t = ctx.settings, ctx.target
    idx = _sample(ctx, "combined", s.n_combined)
    ds = t.dataset
    def part(sl):
        return combined_attack(t.model, ctx.monitor, ds.x_test[idx[sl]], ds.y_test[idx[sl]],
                               attack="fgsm", epsilon=s.combined_eps, repair="gradient",
                               seed=s.seed,
                               repair_options=None if s.steps is None else {"steps": s.steps},
                               )  # fmt: skip

    parts, work = _within_hull_budget(ctx, len(idx), part)
    res = parts[0] if len(parts) == 1 else CombinedResult(
        first=_joined(ctx, [p.first for p in parts]),
        final=_joined(ctx, [p.final for p in parts]),
        stage=np.concatenate([p.stage for p in parts]), info=dict(parts[0].info))
    idx = idx[: len(res.stage)]
    f = res.final
    ok = f.success
    return {"n": len(idx), "indices": idx.tolist(), "epsilon": s.combined_eps,
            **res.counts(), **work, "stage": [str(v) for v in res.stage],
            "success_rate": f.success_rate if f.eligible.any() else None,
            "norm_stats_l2": _norm_stats(f.l2[ok]),
            "attacks": [attack_record(f, select=ok, **ctx.refs, counts={"success": "final_success"})]
                        if ok.any() else []}


# ------------------------------------------------------------------ the parent side
def _jobs(key: str, s: AuditSettings) -> list[Job]:
    jobs = [Job(f"{key}/monitor", {"audit": key, "measure": "monitor"})]
    if s.n:
        jobs += [Job(f"{key}/robustness/{g}/{n}", {"audit": key, "measure": "robustness",
                                                   "goal": g, "norm": n})
                 for g in s.goals for n in s.norms]  # fmt: skip
        jobs += [Job(f"{key}/adversarial/{a}", {"audit": key, "measure": "adversarial",
                                                "attack": get_spec(a).name})
                 for a in s.attacks]  # fmt: skip
    if s.n_combined:
        jobs.append(Job(f"{key}/combined", {"audit": key, "measure": "combined"}))
    return jobs


def _fit_monitor(target: Target, layer: list[str], s: AuditSettings, path: Path,
                 progress: bool):
    ds = target.dataset
    if progress:
        print(f"boxhack audit: fitting the monitor on {len(ds.y_train)} training inputs "
              f"(layer {', '.join(layer)}, "
              f"{'elbow rule' if s.clusters is None else f'{s.clusters} boxes per class'}, "
              f"tolerance {s.tolerance:g})", file=sys.stderr)  # fmt: skip
    monitor = _new_monitor(s, ds.n_classes)
    meta = {"model": target.model_name, "model_sha256": target.info.get("sha256"),
            "dataset": ds.name, "classes": list(ds.classes), "split_seed": ds.split_seed}
    monitor.fit(target.model, layer, ds.x_train, ds.y_train, batch_size=s.batch_size,
                metadata=meta, progress=progress)  # fmt: skip
    monitor.save(path)
    return monitor


def _new_monitor(s: AuditSettings, n_classes: int):
    """The unfitted monitor of ``s.abstraction``: the paper's defaults for whatever parameters
    the abstraction takes (clusters, elbow rule, tolerance, correctly classified inputs only)."""
    wanted = {"n_clusters": s.clusters, "max_clusters": s.max_clusters,
              "clustering_threshold": s.threshold, "tolerance": s.tolerance,
              "only_correct": True, "n_classes": n_classes, "seed": s.seed, "gamma": s.gamma}
    takes = abstraction_params(s.abstraction)
    if s.gamma is not None and "gamma" not in takes:
        raise BoxhackError(f"gamma applies to the pattern abstraction, not {s.abstraction!r}")
    return build_monitor(s.abstraction, **{k: v for k, v in wanted.items()
                                           if k in takes and (v is not None or k == "n_clusters")})


def _monitor_description(monitor) -> dict:
    m = monitor.summary()
    state = m.get("layer_state", {})
    return {"abstraction": m.get("abstraction", "box"), "params": m.get("params"),
            "layers": m.get("layers"), "dims": m.get("dims"),
            "sets_per_class": {k: v.get("sets_per_class") for k, v in state.items()},
            "n_fit_per_class": m.get("n_fit_per_class")}  # fmt: skip


def _check_config(out: Path, config: dict) -> None:
    path = out / CONFIG_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict) and old.get("resume_key") != config["resume_key"]:
            raise BoxhackError(f"{out} holds an audit of another model, data or settings; give "
                               f"another --out (or delete {out})")  # fmt: skip
    atomic_write_json(path, config, indent=2)


def audit(model: str, data: str | None, layer: str | list[str] | None, out: str | Path, *,
          monitor: str | None = None, weights: str | None = None, classes=None,
          novel_classes=None, data_dir: str | None = None, split_seed: int | None = None,
          device: str = "cpu", settings: AuditSettings | None = None,
          progress: bool = True, model_args=None, bounds=None, preprocessing=None) -> dict:
    """Audit ``model`` (any model kind) and its monitor on ``data`` (any data kind); see the
    module docstring. Writes ``out/monitor.npz`` (when fitted here), ``out/audit/rows.jsonl``,
    ``out/summary.json`` and ``out/report.html``; returns the summary."""
    s = settings or AuditSettings()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BoxhackError(f"--out {out} is a file; give a directory")
    with exclusive(out, "audit directory"):
        t0 = time.perf_counter()
        mon_path = Path(monitor) if monitor is not None else out / MONITOR_FILE
        fitted_here = monitor is None
        target = load_target(model, weights=weights, data=data, classes=classes,
                             novel_classes=novel_classes, data_dir=data_dir,
                             split_seed=split_seed, device=device, model_args=model_args,
                             bounds=bounds, preprocessing=preprocessing,
                             monitor=None if fitted_here else str(mon_path))  # fmt: skip
        s = s.for_bounds(*input_bounds(target.model))
        layers = None if layer is None else ([layer] if isinstance(layer, str) else list(layer))
        if fitted_here and not layers:
            layers = [target.info["default_layer"]] if target.info.get("default_layer") else None
            if not layers:
                raise BoxhackError("give --layer NAME, the layer to monitor (see `boxhack monitor "
                                   "layers --model ...`)")  # fmt: skip
        ds = target.dataset
        config = {"model": str(model), "weights": weights, "data": ds.name,
                  "data_source": ds.source, "classes": list(ds.classes),
                  "class_names": list(ds.class_names), "split_seed": ds.split_seed,
                  "novel": None if target.novel is None else target.novel.source,
                  "n_train": len(ds.y_train), "n_test": len(ds.y_test),
                  "input_shape": list(ds.input_shape), "model_kind": target.kind,
                  "monitor_file": None if fitted_here else str(mon_path),
                  "layers": layers, "settings": asdict(s)}  # fmt: skip
        ref = model_ref(target, out)
        config["model_sha256"] = ref["sha256"]
        config["resume_key"] = json.dumps(
            {k: config[k] for k in ("model_sha256", "data", "classes", "split_seed", "novel",
                                    "n_train", "layers", "settings", "monitor_file")},
            sort_keys=True, default=str)  # fmt: skip
        _check_config(out, config)
        timings: dict[str, float] = {"load_s": time.perf_counter() - t0}
        t1 = time.perf_counter()
        if fitted_here:
            if mon_path.is_file():  # a resumed audit: the monitor its rows were measured with
                from boxhack.monitor.registry import load_monitor

                mon = load_monitor(mon_path)
            else:
                mon = _fit_monitor(target, layers, s, mon_path, progress)
            target.monitor = mon
            target.spec = replace(target.spec, monitor=str(mon_path))
        timings["fit_s"] = time.perf_counter() - t1
        refs = {"model": ref, "monitor": file_ref(mon_path, base=out)}
        key = f"{EXPERIMENT}/{ref['sha256'][:12]}"
        ctx = _Context(target, target.monitor, s, refs)
        _CONTEXT[key] = ctx
        torch.manual_seed(s.seed)
        try:
            rows = run_campaign(_jobs(key, s), _job, out / EXPERIMENT / "rows.jsonl", n_jobs=1,
                                progress=progress, desc="audit")  # fmt: skip
        finally:
            _CONTEXT.pop(key, None)
        timings["measure_s"] = time.perf_counter() - t1 - timings["fit_s"]
        config["monitor"] = _monitor_description(target.monitor)
        summary = summarise(rows, config, timings)
        atomic_write_json(out / "summary.json", summary, indent=2)
        render_audit(out, summary)
        return summary


def resummarise(out: str | Path, stored: Mapping[str, Any]) -> dict:
    """The summary of audit directory ``out`` computed again from its rows alone, for the
    configuration of its ``summary.json`` (``stored``): the newest row of each of its jobs, in
    job order, summarised as :func:`audit` does; its ``timing`` holds the rows' clocks only
    (the session's are not in the rows)."""
    config = stored.get("config")
    if not isinstance(config, Mapping) or not isinstance(config.get("settings"), Mapping):
        raise BoxhackError(f"{out}/summary.json has no audit configuration (config.settings)")
    fields = {f.name for f in dataclasses.fields(AuditSettings)}
    given = {k: tuple(v) if isinstance(v, list) else v
             for k, v in config["settings"].items() if k in fields}  # fmt: skip
    settings = AuditSettings(**given)
    key = f"{EXPERIMENT}/{str(config.get('model_sha256'))[:12]}"
    latest = latest_by_key(read_rows(Path(out) / EXPERIMENT / "rows.jsonl"))
    rows = [latest[job.key] for job in _jobs(key, settings) if job.key in latest]
    return summarise(rows, dict(config), {})
