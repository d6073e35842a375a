"""Experiment ``abstractions``: which abstraction detects novel inputs best, which is hardest to fool?

Every abstraction of :mod:`boxhack.monitor` (box, mean-ball, zone, octagon, Boolean activation
pattern, convex hull, and a composite zone + pattern), fitted at comparable settings: the same
layer (the networks' default ``relu2``, 32 units), the same ``n_clusters`` per class where the
abstraction clusters (box, ball, zone, octagon, hull; the pattern has one set per class), the
correctly classified training digits only, and the same relative tolerances (0, and 0.1 in the
full run; the pattern's Hamming radius is ``gamma`` plus ``floor(tolerance * 32)``). For each
(abstraction, tolerance) the grid measures, one campaign job per cell:

- ``detect`` (10-class MNIST network): acceptance of the correct and of the incorrect test
  predictions, and the AUROC of the graded score (``novelty_score``) for incorrect vs correct;
- ``novelty`` (the digits 0-4 network, digits 5-9 as novel): correct predictions accepted,
  novel digits rejected, AUROC of the graded score for novel vs correct known digits;
- ``gradient`` (10-class network): Attack 1 (``dos``) and Attack 2 (``intrude``) with the
  monitor-aware gradient attack (:class:`~boxhack.attacks.gradient.MonitorAttack`) in L2 and
  Linf, minimal mode (every digit's smallest verified perturbation: the whole success-vs-budget
  curve and the median minimal norm) and budget mode (PGD at fixed budgets);
- ``fig8`` (10-class network): the paper's figure-8 table: FGSM and PGD (Foolbox adapter,
  criterion "misclassify") at several Linf budgets on correctly classified digits, how many
  flip the classifier and how many of those the monitor accepts;
- ``combined`` (10-class network): FGSM then the gradient repair
  (:func:`boxhack.attacks.combined.combined_attack`) on up to 300 correctly classified digits.

Digits are seeded, class-balanced draws (:func:`boxhack.data.sampling.sample_balanced`): for
``dos`` from the digits the monitor accepts and the network classifies correctly, for
``intrude`` from the digits it rejects (so these differ per monitor: each abstraction is
attacked where the goal can be attempted); ``fig8`` and ``combined`` use the same correctly
classified digits for every abstraction. Convex hulls cost an LP per attack step and row, so
their attack measures take at most ``hull_n`` digits (say so in the report).

Monitors are fitted once in :func:`plan` (the parent) and stored under
``<models>/monitors/abs-<network>-<layer>-<abstraction>-k<k>-g<gamma>-tol<t>.npz``; jobs read them
with :func:`boxhack.monitor.registry.load_monitor`. Every success is decided by
:func:`boxhack.attacks.verify.verify` with the exact monitor, and stored exactly
(:func:`boxhack.attacks.records.attack_record`) so that ``boxhack verify RUN`` re-checks it. The
summary (and :mod:`boxhack.report.abstractions`) is computed from ``rows.jsonl`` alone.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from boxhack.attacks.adversarial import run_adversarial_sweep
from boxhack.attacks.combined import combined_attack
from boxhack.attacks.gradient import MonitorAttack
from boxhack.attacks.records import attack_record, file_ref
from boxhack.attacks.verify import verify
from boxhack.data import load_dataset
from boxhack.data.sampling import sample_balanced
from boxhack.errors import BoxhackError
from boxhack.experiments.prepared import PAPER_NETWORKS, prepare_model
from boxhack.experiments.spec import (
    Experiment,
    Option,
    RunContext,
    Settings,
    option_values,
    rows_record,
)
from boxhack.infra.campaign import Job
from boxhack.models.io import load_model
from boxhack.models.layers import collect
from boxhack.monitor.evaluation import novelty_metrics
from boxhack.monitor.registry import load_monitor, monitor_class

__all__ = ["ABSTRACTIONS", "EXPERIMENT", "MEASURES", "budget_at", "build_monitor", "job",
           "monitor_file"]  # fmt: skip

NAME = "abstractions"
TITLE = "Abstractions compared: which detects novel inputs best, which is hardest to fool"

ABSTRACTIONS = ("box", "ball", "zone", "octagon", "pattern", "hull", "composite")
MEASURES = ("detect", "novelty", "gradient", "fig8", "combined")
ATTACK_KEY = "mnist10"  # accuracy, attacks
NOVELTY_KEY = "mnist0-4"  # novel digits 5-9
GOALS = ("dos", "intrude")
NORMS = ("l2", "linf")
EPS = {"l2": (0.25, 0.5, 1.0), "linf": (0.025, 0.05, 0.1)}
QUICK_EPS = {"l2": (0.5,), "linf": (0.05,)}
FIG8_METHODS = ("fgsm", "pgd-linf")
FIG8_EPS = (0.05, 0.1, 0.2, 0.3)
POOLS = {"dos": "correctly classified and accepted", "intrude": "rejected"}
COMPOSITE = "zone + pattern"

OPTIONS = (
    Option("abstractions", "list", ABSTRACTIONS, "abstractions compared", choices=ABSTRACTIONS),
    Option("measures", "list", MEASURES, "what is measured: detect (10-class network: correct / "
           "incorrect predictions accepted), novelty (0-4 network, digits 5-9 novel), gradient "
           "(dos / intrude, minimal and budget), fig8 (FGSM / PGD judged by the monitor), "
           "combined (FGSM + gradient repair)", choices=MEASURES),
    Option("n_clusters", int, 3, "clusters per class of every clustering abstraction",
           minimum=1),
    Option("gamma", int, 0, "Hamming radius of the pattern monitor (and the composite's "
           "pattern) at tolerance 0", minimum=0),
    Option("tolerances", "list", (0.0, 0.1), "relative tolerances of every monitor",
           quick=(0.0,), item=float, minimum=0),
    Option("norms", "list", NORMS, "norms of the gradient attacks", quick=("l2",),
           choices=NORMS),
    Option("n", int, 100, "digits per goal of the gradient attacks", quick=6, minimum=1),
    *(Option(f"eps_{norm}", "list", EPS[norm], f"budgets of the gradient attacks' budget mode "
             f"in {norm.upper()}", quick=QUICK_EPS[norm], item=float, minimum=0)
      for norm in NORMS),
    Option("fig8_n", int, 100, "correctly classified digits of the FGSM / PGD table",
           quick=10, minimum=1),
    Option("fig8_eps", "list", FIG8_EPS, "Linf budgets of FGSM / PGD", quick=(0.1, 0.3),
           item=float, minimum=0),
    Option("combined_n", int, 300, "correctly classified digits of the combined attack",
           quick=8, minimum=1),
    Option("hull_n", int, 20, "at most this many digits per attack job on the convex hull "
           "(an LP per row and step)", quick=3, minimum=1),
    Option("chunk", int, 100, "digits per combined-attack job", minimum=1),
)  # fmt: skip


# ------------------------------------------------------------------------------ monitors
def build_monitor(abstraction: str, n_clusters: int, gamma: int, seed: int):
    """An unfitted monitor of ``abstraction`` at the experiment's comparable settings
    (tolerance 0; the others are derived with ``with_tolerance``)."""
    if abstraction == "pattern":
        return monitor_class("pattern")(gamma=gamma)
    if abstraction == "composite":
        zone = monitor_class("zone")(n_clusters=n_clusters, seed=seed)
        return monitor_class("composite")([zone, monitor_class("pattern")(gamma=gamma)])
    return monitor_class(abstraction)(n_clusters=n_clusters, seed=seed)


def monitor_file(root: str | Path, key: str, layer: str, abstraction: str, n_clusters: int,
                 gamma: int, tolerance: float) -> Path:
    return Path(root) / "monitors" / (f"abs-{key}-{layer}-{abstraction}-k{n_clusters}-g{gamma}-"
                                      f"tol{tolerance:g}.npz")  # fmt: skip


def _cached_monitor(path: Path, sha256: str | None):
    """The monitor stored at ``path`` if it loads and was fitted on these weights, else None."""
    if not path.is_file():
        return None
    try:
        monitor = load_monitor(path)
    except BoxhackError as exc:
        warnings.warn(f"monitor cache {path} is damaged ({exc}); fitting it again", stacklevel=2)
        return None
    if (monitor.metadata_ or {}).get("model_sha256") not in (None, sha256):
        warnings.warn(f"monitor cache {path} was fitted on other weights; fitting it again",
                      stacklevel=2)
        return None
    return monitor


def prepare_monitors(key: str, root: Path, config: dict) -> tuple[dict, object, dict, object]:
    """``({(abstraction, tolerance): path}, model, info, dataset)``: every monitor of network
    ``key`` fitted (tolerance 0, once per abstraction) and stored with each tolerance."""
    model, info, dataset = prepare_model(key, root, seed=config["seed"])
    layer = info["default_layer"]
    paths = {}
    for name in config["abstractions"]:
        base = None
        for tol in config["tolerances"]:
            path = monitor_file(root, key, layer, name, config["n_clusters"], config["gamma"], tol)
            paths[(name, tol)] = path
            if _cached_monitor(path, info.get("sha256")) is not None:
                continue
            if base is None:
                base = build_monitor(name, config["n_clusters"], config["gamma"], config["seed"])
                base.fit(model, [layer], dataset.x_train, dataset.y_train,
                         model_sha256=info.get("sha256"))
            path.parent.mkdir(parents=True, exist_ok=True)
            base.with_tolerance(tol).save(path)
    return paths, model, info, dataset


# ------------------------------------------------------------------------------ worker side
@functools.lru_cache(maxsize=8)
def _model(root: str, key: str):
    model, info = load_model(Path(root) / "models" / key)
    return model, info


@functools.lru_cache(maxsize=4)
def _dataset(key: str, split_seed: int):
    _, data, classes = PAPER_NETWORKS[key]
    return load_dataset(data, classes, split_seed=split_seed)


@functools.lru_cache(maxsize=4)
def _novel(key: str, split_seed: int) -> np.ndarray:
    known = set(_dataset(key, split_seed).classes)
    return load_dataset("mnist", [d for d in range(10) if d not in known],
                        split_seed=split_seed).x_test  # fmt: skip


@functools.lru_cache(maxsize=32)
def _monitor(path: str):
    return load_monitor(path)


def _load(params: dict):
    model, info = _model(params["root"], params["key"])
    return model, info, _dataset(params["key"], info.get("split_seed", 0)), _monitor(params["monitor"])


def _round(values, digits: int = 6) -> list:
    return [None if not math.isfinite(v) else float(f"{v:.{digits}g}")
            for v in np.asarray(values, dtype=np.float64).tolist()]  # fmt: skip


def _detect_job(params: dict) -> dict:
    """Acceptance of the test predictions (and of novel digits); graded scores; AUROC."""
    model, info, ds, monitor = _load(params)
    layers = list(monitor.layers_)
    pred, feats = collect(model, layers, ds.x_test)
    acc = monitor.accepts_features(feats, pred)
    score = monitor.novelty_score(feats, pred)
    n_acc = n_score = None
    if params["measure"] == "novelty":
        npred, nfeats = collect(model, layers, _novel(params["key"], info.get("split_seed", 0)))
        n_acc = monitor.accepts_features(nfeats, npred)
        n_score = monitor.novelty_score(nfeats, npred)
    metrics = novelty_metrics(pred, ds.y_test, acc, score, n_acc, n_score)
    sets = monitor.summary()
    return {"metrics": metrics, "sets": _n_sets(sets, layers[0]),
            "score_correct": _round(score[pred == ds.y_test]),
            "score_other": _round(n_score if n_score is not None else score[pred != ds.y_test])}


def _n_sets(summary: dict, layer: str) -> str | None:
    """What the monitor holds at ``layer``: sets (clusters) or patterns, per member."""
    state = (summary.get("layer_state") or {}).get(layer) or {}
    parts = state.get("members") or [state]
    words = [f"{p['n_sets']} sets" if "n_sets" in p else
             f"{p['n_patterns']} patterns" if "n_patterns" in p else
             f"{p['n_boxes']} boxes" if "n_boxes" in p else None for p in parts]  # fmt: skip
    return " + ".join(w for w in words if w) or None


def _gradient_job(params: dict) -> dict:
    model, _info, ds, monitor = _load(params)
    idx = np.asarray(params["indices"], dtype=np.int64)
    x, y = ds.x_test[idx], ds.y_test[idx]
    goal, norm, eps = params["goal"], params["norm"], params["eps"]
    if eps is None:
        atk = MonitorAttack(goal=goal, norm=norm, mode="minimal", seed=params["seed"])
    else:
        atk = MonitorAttack(goal=goal, norm=norm, mode="budget", epsilon=eps, seed=params["seed"])
    t0 = time.perf_counter()
    res = atk(model, monitor, x, labels=y)
    wall = time.perf_counter() - t0
    budget = None if eps is None else {"norm": norm, "eps": float(eps)}
    return {
        "indices": idx.tolist(),
        "eligible": res.eligible.astype(int).tolist(),
        "already": res.already.astype(int).tolist(),
        "success": res.success.astype(int).tolist(),
        "l2": res.l2.tolist(),
        "linf": res.linf.tolist(),
        "attack_s": wall,
        "attacks": [attack_record(res, model=params["model_ref"], monitor=params["monitor_ref"],
                                  budget=budget, select=res.success,
                                  outcomes={k: k for k in ("success", "eligible", "already",
                                                           "l2", "linf")})]
                   if res.success.any() else [],
    }  # fmt: skip


def _fig8_job(params: dict) -> dict:
    """One Foolbox method at every budget; the monitor judges the adversarial samples. The
    records hold the flipped samples (goal "misclassify") and, re-decided with goal
    "combined", the flipped samples the monitor accepts."""
    model, _info, ds, monitor = _load(params)
    idx = np.asarray(params["indices"], dtype=np.int64)
    x, y = ds.x_test[idx], ds.y_test[idx]
    t0 = time.perf_counter()
    results = run_adversarial_sweep(model, monitor, x, y, params["method"], params["epsilons"],
                                    goal="misclassify", seed=params["seed"])  # fmt: skip
    wall = time.perf_counter() - t0
    refs = {"model": params["model_ref"], "monitor": params["monitor_ref"]}
    per_eps, records = [], []
    for r in results:
        both = verify(model, monitor, r.x0, r.x, "combined", labels=y, pred0=r.pred0,
                      accepted0=r.accepted0)  # fmt: skip
        budget = r.info["budget"]
        per_eps.append({"epsilon": r.info["epsilon"],
                        "flipped": r.success.astype(int).tolist(),
                        "accepted": r.accepted.astype(int).tolist(),
                        "flipped_accepted": both.success.astype(int).tolist(),
                        "l2": r.l2.tolist()})  # fmt: skip
        at = ("per_eps", len(per_eps) - 1)
        for res, flag in ((r, "flipped"), (both, "flipped_accepted")):
            if res.success.any():
                records.append(attack_record(res, **refs, budget=budget, select=res.success,
                                             at=at, outcomes={"success": flag, "l2": "l2"}))
    return {"indices": idx.tolist(), "eligible": results[0].eligible.astype(int).tolist(),
            "accepted0": results[0].accepted0.astype(int).tolist(), "per_eps": per_eps,
            "attack_s": wall, "attacks": records}  # fmt: skip


def _combined_job(params: dict) -> dict:
    model, _info, ds, monitor = _load(params)
    idx = np.asarray(params["indices"], dtype=np.int64)
    x, y = ds.x_test[idx], ds.y_test[idx]
    res = combined_attack(model, monitor, x, y, attack="fgsm", epsilon=params["epsilon"],
                          repair="gradient", norm="l1", fallback_norm="l2", seed=params["seed"])
    refs = {"model": params["model_ref"], "monitor": params["monitor_ref"]}
    records = []
    if res.first.success.any():
        records.append(attack_record(res.first, **refs, budget=res.first.info["budget"],
                                     select=res.first.success))  # fmt: skip
    if res.final.success.any():
        records.append(attack_record(res.final, **refs, select=res.final.success,
                                     outcomes={k: k for k in ("success", "eligible", "already",
                                                              "l2")}))
    adv_flipped = (res.first.pred != y) & res.final.eligible
    return {
        "indices": idx.tolist(),
        "eligible": res.final.eligible.astype(int).tolist(),
        "already": res.final.already.astype(int).tolist(),
        "flipped": adv_flipped.astype(int).tolist(),
        "flipped_accepted": (adv_flipped & res.first.accepted).astype(int).tolist(),
        "success": res.final.success.astype(int).tolist(),
        "stage": res.stage.tolist(),
        "l2": res.final.l2.tolist(),
        "attack_s": float(res.info["attack_s"]),
        "repair_s": float(res.info["repair_s"]),
        "attacks": records,
    }  # fmt: skip


JOBS = {"detect": _detect_job, "novelty": _detect_job, "gradient": _gradient_job,
        "fig8": _fig8_job, "combined": _combined_job}  # fmt: skip


def job(params: dict) -> dict:
    """One cell: (abstraction, tolerance, measure[, goal, norm, budget | method | chunk])."""
    torch.set_num_threads(1)
    measure = params.get("measure")
    if measure not in JOBS:
        raise BoxhackError(f"abstractions: unknown measure {measure!r}")
    return JOBS[measure](params)


# ------------------------------------------------------------------------------ parent side
def configure(settings: Settings, options: dict) -> dict:
    """The configuration of one run (pure: nothing is trained or read)."""
    o = option_values(OPTIONS, settings, options)
    return {
        "seed": int(settings.seed),
        "mode": "quick" if settings.quick else "full",
        "abstractions": [a for a in ABSTRACTIONS if a in o["abstractions"]],
        "measures": [m for m in MEASURES if m in o["measures"]],
        "n_clusters": o["n_clusters"],
        "gamma": o["gamma"],
        "tolerances": sorted(set(o["tolerances"])),
        "norms": [n for n in NORMS if n in o["norms"]],
        "n": o["n"],
        "eps": {norm: o[f"eps_{norm}"] for norm in NORMS},
        "fig8_n": o["fig8_n"],
        "fig8_eps": o["fig8_eps"],
        "fig8_methods": list(FIG8_METHODS),
        "combined_n": o["combined_n"],
        "combined_eps": 0.1,
        "hull_n": o["hull_n"],
        "chunk": o["chunk"],
        "composite": COMPOSITE,
    }


def _cap(indices: list[int], abstraction: str, hull_n: int) -> list[int]:
    """The hull's attack jobs take ``hull_n`` digits of the draw, evenly spaced (the draw is
    sorted by index, that is by class: every class keeps its share)."""
    if abstraction != "hull" or len(indices) <= hull_n:
        return list(indices)
    return [indices[i] for i in np.linspace(0, len(indices) - 1, hull_n).round().astype(int)]


def plan(config: dict, ctx: RunContext) -> tuple[dict, list[Job]]:
    """Train / fit what is not cached (the parent), draw the digits, one job per cell."""
    root, seed = ctx.models_root, config["seed"]
    measures = config["measures"]
    keys = ([ATTACK_KEY] if set(measures) - {"novelty"} else []) + (
        [NOVELTY_KEY] if "novelty" in measures else [])
    prepared = {key: prepare_monitors(key, root, config) for key in keys}
    jobs: list[Job] = []
    samples: dict = {}
    tag = f"{config['mode']}/s{seed}/k{config['n_clusters']}-g{config['gamma']}"
    if ATTACK_KEY in prepared:
        _paths, model, _info, ds = prepared[ATTACK_KEY]
        pred, _ = collect(model, [], ds.x_test)
        correct = pred == ds.y_test  # the same digits for every abstraction
        for what in ("fig8", "combined"):
            samples[what] = sample_balanced(ds.y_test, config[f"{what}_n"], seed, correct).tolist()
    for key, (paths, model, info, ds) in prepared.items():
        layer = info["default_layer"]
        config.setdefault("layers", {})[key] = layer
        model_ref = file_ref(root / "models" / key, base=ctx.out_dir, sha256=info["sha256"])
        for (name, tol), path in paths.items():
            base = {"root": str(root), "key": key, "monitor": str(path), "seed": seed,
                    "abstraction": name, "tolerance": tol, "model_ref": model_ref,
                    "monitor_ref": file_ref(path, base=ctx.out_dir)}  # fmt: skip
            cell = f"{NAME}/{tag}/{key}/{name}/tol{tol:g}"
            if key == NOVELTY_KEY:
                jobs.append(Job(f"{cell}/novelty", {**base, "measure": "novelty"}))
                continue
            jobs.extend(_attack_jobs(config, cell, base, model, ds, path, samples, name, tol))
    return {**config, "samples": samples}, jobs


def _attack_jobs(config, cell, base, model, ds, path, samples, name, tol) -> list[Job]:
    measures, seed = config["measures"], config["seed"]
    jobs = []
    if "detect" in measures:
        jobs.append(Job(f"{cell}/detect", {**base, "measure": "detect"}))
    if "gradient" in measures:
        pred, acc = _monitor(str(path)).predict(model, ds.x_test)
        pools = {"dos": (pred == ds.y_test) & acc, "intrude": ~acc}
        for goal in GOALS:
            drawn = _cap(sample_balanced(ds.y_test, config["n"], seed, pools[goal]).tolist(),
                         name, config["hull_n"])  # fmt: skip
            samples.setdefault("gradient", {}).setdefault(name, {})[f"{goal}/tol{tol:g}"] = drawn
            if not drawn:
                continue
            for norm in config["norms"]:
                for eps in [None, *config["eps"][norm]]:
                    key = f"{cell}/gradient/{goal}/{norm}/" + ("minimal" if eps is None else
                                                               f"{eps:g}")  # fmt: skip
                    jobs.append(Job(key, {**base, "measure": "gradient", "goal": goal,
                                          "norm": norm, "eps": eps, "indices": drawn}))  # fmt: skip
    if "fig8" in measures:
        for method in config["fig8_methods"]:
            jobs.append(Job(f"{cell}/fig8/{method}", {
                **base, "measure": "fig8", "method": method, "epsilons": config["fig8_eps"],
                "indices": _cap(samples["fig8"], name, config["hull_n"])}))  # fmt: skip
    if "combined" in measures:
        digits = _cap(samples["combined"], name, config["hull_n"])
        for c0 in range(0, len(digits), config["chunk"]):
            jobs.append(Job(f"{cell}/combined/{c0}", {
                **base, "measure": "combined", "epsilon": config["combined_eps"],
                "indices": digits[c0 : c0 + config["chunk"]]}))  # fmt: skip
    return jobs


# ------------------------------------------------------------------------------ summary
def budget_at(norms, success, rate: float = 0.5) -> float:
    """Smallest budget at which a minimal attack succeeds on ``rate`` of the attacked digits
    (``inf`` if it never does): a median that counts failures as infinitely robust."""
    r = np.sort(np.where(np.asarray(success, bool), np.asarray(norms, float), np.inf))
    if len(r) == 0:
        return math.inf
    return float(r[max(math.ceil(rate * len(r)) - 1, 0)])


def _r(v, nd: int = 4):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    return round(float(v), nd)


def _order(row: dict) -> tuple:
    p = row["params"]
    return (ABSTRACTIONS.index(p["abstraction"]), p["tolerance"], MEASURES.index(p["measure"]),
            p.get("goal") or "", p.get("norm") or "", -1 if p.get("eps") is None else p["eps"],
            p.get("method") or "", min(p.get("indices") or [0]))  # fmt: skip


def _gradient_cells(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        p, res = r["params"], r["result"]
        att = np.asarray(res["eligible"], bool)
        ok = np.asarray(res["success"], bool)[att]
        norms = np.asarray(res[p["norm"]], float)[att]
        minimal = p["eps"] is None
        out.append({"abstraction": p["abstraction"], "tolerance": p["tolerance"],
                    "goal": p["goal"], "norm": p["norm"], "eps": p["eps"],
                    "n": len(att), "attacked": int(att.sum()), "already": int(sum(res["already"])),
                    "successes": int(ok.sum()),
                    "rate": float(ok.mean()) if att.any() else None,
                    "median": float(np.median(norms[ok])) if ok.any() else None,
                    "budget50": _r(budget_at(norms, ok)) if minimal and att.any() else None,
                    "norms": _round(norms) if minimal else None,
                    "success": ok.astype(int).tolist() if minimal else None})  # fmt: skip
    return out


def _fig8_cells(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        p, res = r["params"], r["result"]
        att = np.asarray(res["eligible"], bool)
        for pe in res["per_eps"]:
            flipped = np.asarray(pe["flipped"], bool) & att
            both = np.asarray(pe["flipped_accepted"], bool) & att
            out.append({"abstraction": p["abstraction"], "tolerance": p["tolerance"],
                        "method": p["method"], "epsilon": pe["epsilon"], "attacked": int(att.sum()),
                        "clean_accepted": sum(res["accepted0"]),
                        "flipped": int(flipped.sum()), "flipped_accepted": int(both.sum())})
    return out


def _combined_cells(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        p = r["params"]
        groups.setdefault((p["abstraction"], p["tolerance"]), []).append(r["result"])
    out = []
    for (name, tol), results in groups.items():
        cat = {k: np.concatenate([np.asarray(x[k]) for x in results])
               for k in ("eligible", "flipped", "flipped_accepted", "success", "l2")}
        att = cat["eligible"].astype(bool)
        ok = cat["success"].astype(bool) & att
        out.append({"abstraction": name, "tolerance": tol, "digits": len(att),
                    "attacked": int(att.sum()), "flipped": int(cat["flipped"].sum()),
                    "flipped_accepted": int(cat["flipped_accepted"].sum()),
                    "success": int(ok.sum()),
                    "rate": float(ok.sum() / att.sum()) if att.any() else None,
                    "median_l2": _r(np.median(cat["l2"][ok])) if ok.any() else None})
    return out


def _detect_cells(rows: list[dict]) -> list[dict]:
    return [{"abstraction": r["params"]["abstraction"], "tolerance": r["params"]["tolerance"],
             "measure": r["params"]["measure"], "sets": r["result"].get("sets"),
             **{k: r["result"]["metrics"].get(k) for k in (
                 "n_correct", "n_misclassified", "acceptance_rate", "misclassified_accepted",
                 "detection_rate", "auroc_misclassified", "n_novel", "novel_rejected",
                 "novelty_detection_rate", "auroc")}}
            for r in rows]  # fmt: skip


def headline(cells: dict) -> list[dict]:
    """Per (abstraction, tolerance): the numbers the figure and the sentences compare."""
    out = []
    keys = sorted({(c["abstraction"], c["tolerance"]) for cs in cells.values() for c in cs},
                  key=lambda k: (ABSTRACTIONS.index(k[0]), k[1]))  # fmt: skip
    def find(kind: str, name: str, tol: float, **want) -> dict | None:
        for c in cells[kind]:
            if (c["abstraction"], c["tolerance"]) == (name, tol) and all(
                    c.get(k) == v for k, v in want.items()):
                return c
        return None

    for name, tol in keys:
        pick = functools.partial(find, name=name, tol=tol)
        h: dict = {"abstraction": name, "tolerance": tol}
        if (d := pick("detect", measure="detect")) is not None:
            h["correct_accepted"] = d["acceptance_rate"]
            n_mis = d["n_misclassified"] or 0
            h["incorrect_accepted"] = (d["misclassified_accepted"] / n_mis) if n_mis else None
            h["auroc_misclassified"] = d["auroc_misclassified"]
        if (d := pick("detect", measure="novelty")) is not None:
            h["novel_rejected"] = d["novelty_detection_rate"]
            h["auroc_novel"] = d["auroc"]
            h["novelty_correct_accepted"] = d["acceptance_rate"]
        for goal in GOALS:
            for norm in NORMS:
                if (g := pick("gradient", goal=goal, norm=norm, eps=None)) is not None:
                    h[f"{goal}_{norm}_rate"] = g["rate"]
                    h[f"{goal}_{norm}_budget50"] = g["budget50"]
                    h[f"{goal}_{norm}_attacked"] = g["attacked"]
        if (c := pick("combined")) is not None:
            h["combined_rate"] = c["rate"]
            h["combined_attacked"] = c["attacked"]
        out.append(h)
    return out


def _pct(v) -> str | None:
    return None if v is None else f"{100 * v:.1f}%"


def _tables(cells: dict, config: dict) -> list[dict]:
    det = {(c["abstraction"], c["tolerance"]): c for c in cells["detect"]
           if c["measure"] == "detect"}  # fmt: skip
    nov = {(c["abstraction"], c["tolerance"]): c for c in cells["detect"]
           if c["measure"] == "novelty"}  # fmt: skip
    tables = []
    keys = sorted(set(det) | set(nov), key=lambda k: (ABSTRACTIONS.index(k[0]), k[1]))
    if keys:
        rows = []
        for k in keys:
            d, n = det.get(k) or {}, nov.get(k) or {}
            mis = d.get("n_misclassified")
            rows.append([k[0], k[1], d.get("sets", n.get("sets")), _pct(d.get("acceptance_rate")),
                         _pct(d["misclassified_accepted"] / mis) if mis else None,
                         _r(d.get("auroc_misclassified")), _pct(n.get("acceptance_rate")),
                         _pct(n.get("novelty_detection_rate")), _r(n.get("auroc"))])
        tables.append({
            "title": f"Detection: the 10-class network's test predictions (correct / incorrect "
                     f"accepted, AUROC of the graded score for incorrect vs correct) and the "
                     f"digits 0-4 network with digits 5-9 as novel (novel rejected, AUROC novel "
                     f"vs correct); layer relu2, k = {config['n_clusters']} clusters per class, "
                     f"pattern gamma {config['gamma']}",
            "columns": ["abstraction", "tolerance", "sets", "10-class: correct accepted",
                        "10-class: incorrect accepted", "AUROC incorrect",
                        "0-4: correct accepted",
                        "0-4: novel rejected", "AUROC novel"],
            "rows": rows})  # fmt: skip
    names = {"l2": "L2", "linf": "Linf"}
    grad = [c for c in cells["gradient"] if c["eps"] is None]
    if grad:
        budgets = {c["norm"]: [] for c in cells["gradient"]}
        for c in cells["gradient"]:
            if c["eps"] is not None and c["eps"] not in budgets[c["norm"]]:
                budgets[c["norm"]].append(c["eps"])
        rate = {(c["abstraction"], c["tolerance"], c["goal"], c["norm"], c["eps"]): c["rate"]
                for c in cells["gradient"]}  # fmt: skip
        tables.append({
            "title": "Monitor-aware gradient attacks (verified successes over the attacked "
                     "digits): minimal mode (success rate, median minimal norm of the "
                     "successes, budget at which half the attacked digits fall: inf = never) "
                     "and budget mode (PGD success at each budget)",
            "columns": ["abstraction", "tolerance", "goal", "norm", "attacked", "already met",
                        "minimal: success", "median norm", "budget for 50%", "PGD success"],
            "rows": [[c["abstraction"], c["tolerance"], c["goal"], names[c["norm"]],
                      c["attacked"], c["already"], _pct(c["rate"]), _r(c["median"]),
                      c["budget50"] if c["budget50"] is not None else
                      ("inf" if c["attacked"] else None),
                      "; ".join(f"{e:g}: {_pct(rate.get((c['abstraction'], c['tolerance'], c['goal'], c['norm'], e)))}"
                                for e in budgets[c["norm"]])]
                     for c in grad]})  # fmt: skip
    if cells["fig8"]:
        tables.append({
            "title": "Figure 8 per abstraction: Foolbox FGSM / PGD (Linf, criterion "
                     "misclassify) on correctly classified digits; flipped, and flipped AND "
                     "accepted by the monitor",
            "columns": ["abstraction", "tolerance", "method", "epsilon", "digits",
                        "clean accepted", "flipped", "flipped & accepted", "share accepted"],
            "rows": [[c["abstraction"], c["tolerance"], c["method"], c["epsilon"], c["attacked"],
                      c["clean_accepted"], c["flipped"], c["flipped_accepted"],
                      _pct(c["flipped_accepted"] / c["flipped"]) if c["flipped"] else None]
                     for c in cells["fig8"]]})  # fmt: skip
    if cells["combined"]:
        tables.append({
            "title": f"Combined attack: FGSM (Linf {config['combined_eps']:g}) then the gradient "
                     f"repair (L1, fallback L2) of every sample that is not misclassified and "
                     f"accepted",
            "columns": ["abstraction", "tolerance", "digits", "attacked", "FGSM flipped",
                        "FGSM flipped & accepted", "final: misclassified & accepted",
                        "success", "median L2 (successes)"],
            "rows": [[c["abstraction"], c["tolerance"], c["digits"], c["attacked"], c["flipped"],
                      c["flipped_accepted"], c["success"], _pct(c["rate"]), c["median_l2"]]
                     for c in cells["combined"]]})  # fmt: skip
    return tables


def _headline_table(heads: list[dict]) -> dict:
    def budget(h: dict, goal: str, norm: str):
        if f"{goal}_{norm}_attacked" not in h:
            return None
        b = h.get(f"{goal}_{norm}_budget50")
        return f"{'inf' if b is None else f'{b:.3g}'} ({_pct(h.get(f'{goal}_{norm}_rate'))})"

    return {
        "title": "Headline: detection against robustness per abstraction (10-class network: "
                 "correct / incorrect predictions accepted; 0-4 network: novel digits 5-9 "
                 "rejected, AUROC; gradient attack, minimal mode: L2 budget at which half the "
                 "attacked digits fall, inf = never, with the success rate; combined attack: "
                 "success rate)",
        "columns": ["abstraction", "tolerance", "correct accepted", "incorrect accepted",
                    "novel rejected", "AUROC novel", "intrude: L2 budget 50% (success)",
                    "DoS: L2 budget 50% (success)", "combined: success"],
        "rows": [[h["abstraction"], h["tolerance"], _pct(h.get("correct_accepted")),
                  _pct(h.get("incorrect_accepted")), _pct(h.get("novel_rejected")),
                  _r(h.get("auroc_novel"), 3), budget(h, "intrude", "l2"),
                  budget(h, "dos", "l2"), _pct(h.get("combined_rate"))] for h in heads],
    }  # fmt: skip


def summarise(config: dict, rows: list[dict], ctx: RunContext) -> dict:
    """Summary data: per measure the cells, per (abstraction, tolerance) the headline
    numbers, the tables; timing."""
    ok = sorted((r for r in rows if r.get("status") == "ok"), key=_order)
    if not ok:
        raise BoxhackError(f"{ctx.exp_dir(NAME) / 'rows.jsonl'} has no finished rows of this "
                           f"configuration; run the experiment first")  # fmt: skip
    by = {m: [r for r in ok if r["params"]["measure"] == m] for m in MEASURES}
    cells = {"detect": _detect_cells(by["detect"] + by["novelty"]),
             "gradient": _gradient_cells(by["gradient"]), "fig8": _fig8_cells(by["fig8"]),
             "combined": _combined_cells(by["combined"])}  # fmt: skip
    timing, failed = rows_record(rows)
    heads = headline(cells)
    summary = {
        "name": NAME,
        "config": {k: v for k, v in config.items() if k not in ("samples", "keys")},
        "cells": cells,
        "headline": heads,
        "tables": [_headline_table(heads), *_tables(cells, config)],
        "timing": timing,
    }  # fmt: skip
    if failed:
        summary["errors"] = failed
    return summary


EXPERIMENT = Experiment(
    name=NAME,
    title=TITLE,
    description=(
        "Box, mean-ball, zone, octagon, activation pattern, convex hull and a zone + pattern "
        "composite at comparable settings (layer relu2, k = 3 clusters per class, relative "
        "tolerance 0 and 0.1): acceptance of correct / incorrect predictions, novel-digit "
        "detection and AUROC (0-4 network, digits 5-9 novel), monitor-aware DoS / intrusion "
        "(L2, Linf; minimal and budget), FGSM / PGD judged by each monitor (figure 8) and the "
        "combined attack on 300 digits (convex hulls: at most hull_n digits per attack job). "
        "Quick: tolerance 0, L2 only, a handful of digits."
    ),
    options=OPTIONS,
    configure=configure,
    plan=plan,
    job=job,
    summarise=summarise,
)
