"""Experiment ``adversarial`` (paper figure 8): do off-the-shelf adversarial samples pass the monitor?

The 10-class MNIST network (network key ``mnist10``) and ``n`` (100) correctly classified test
digits, a seeded class-balanced draw of the test split. Each Foolbox attack runs ONCE per
(attack, criterion) at several budgets (minimal and decision attacks: one run, clipped to each
budget); the verdicts of all the monitors (1, 2, 3 clusters per class x tolerance 0, 0.1,
0.25) are then measured on the same adversarial samples (an adversarial sample does not
depend on the monitor that judges it, so 9 attacks would be wasted work).

Two criteria: ``misclassify`` (the paper's setting: plain adversarial samples, the monitor
only judges) and ``combined`` (misclassified AND accepted by the default monitor, k = 1 and
tolerance 0, given to Foolbox as the criterion, so the attacks search for monitor-passing
samples directly; decision attacks start from training images, see
:mod:`boxhack.attacks.decision`).

One job per (attack, criterion); rows carry, per budget and sample, the prediction, the
perturbation norms and each monitor's verdict, so the summary (and the figures of
:mod:`boxhack.report.adversarial`) are recomputed from ``rows.jsonl`` alone.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from boxhack.attacks.adversarial import get_spec, run_adversarial_sweep
from boxhack.attacks.records import attack_record, file_ref
from boxhack.data.sampling import sample_balanced
from boxhack.errors import BoxhackError
from boxhack.experiments.prepared import (
    PAPER_NETWORKS,
    monitor_path,
    prepare_model,
    prepare_monitor,
)
from boxhack.experiments.spec import (
    Experiment,
    Option,
    RunContext,
    Settings,
    option_values,
    rows_record,
)
from boxhack.infra.campaign import Job
from boxhack.models.layers import collect
from boxhack.monitor import BoxMonitor

__all__ = ["EXPERIMENT", "job", "monitor_key", "select_correct"]

NAME = "adversarial"
TITLE = "Adversarial samples against classifier and monitor (paper figure 8)"

KEY = "mnist10"
CLUSTERS = (1, 2, 3)
TOLERANCES = (0.0, 0.1, 0.25)
DEFAULT_MONITOR = (1, 0.0)
EPS_LINF = (0.05, 0.1, 0.2, 0.3)
EPS_L2 = (0.5, 1.0, 2.0, 3.0)
FULL_ATTACKS = ("fgsm", "pgd-linf", "deepfool-linf", "fgm-l2", "pgd-l2", "deepfool-l2",
                "cw-l2", "boundary", "hsj")  # fmt: skip
QUICK_ATTACKS = ("fgsm", "pgd-linf", "deepfool-l2", "cw-l2", "boundary", "hsj")
CRITERIA = ("misclassify", "combined")
# Budgets of the full run (measured on 2 cores: see docs/reproduction.md).
FULL_PARAMS = {
    "boundary": {"steps": 8000},
    "hsj": {"steps": 40, "initial_gradient_eval_steps": 50, "max_gradient_eval_steps": 500},
}

OPTIONS = (
    Option("n", int, 100, "correctly classified test digits", quick=20, minimum=1),
    Option("attacks", "list", FULL_ATTACKS, "Foolbox attacks (names or aliases)",
           quick=QUICK_ATTACKS),
    Option("criteria", "list", CRITERIA, "what the attacks aim at: misclassify (the paper's "
           "setting) and/or combined (misclassified and accepted)", choices=CRITERIA),
    Option("eps_linf", "list", EPS_LINF, "budgets of the Linf attacks", quick=(0.1, 0.3),
           item=float, minimum=0),
    Option("eps_l2", "list", EPS_L2, "budgets of the L2 attacks", quick=(1.0, 3.0), item=float,
           minimum=0),
    # quick: the sweep's ends only (each monitor fit reloads the data set)
    Option("clusters", "list", CLUSTERS, "boxes per class of the judging monitors",
           quick=(1, 3), item=int, minimum=1),
    Option("tolerances", "list", TOLERANCES, "tolerances of the judging monitors",
           quick=(0.0, 0.25), item=float, minimum=0),
    Option("key", str, KEY, "network", choices=tuple(PAPER_NETWORKS)),
    Option("pool_size", int, 1000, "training images the decision attacks may start from",
           quick=200, minimum=1),
)  # fmt: skip


def monitor_key(k: int, tol: float) -> str:
    return f"k{int(k)}-tol{float(tol):g}"


def select_correct(model, dataset, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` correctly classified test inputs: a seeded, class-balanced draw
    (:func:`boxhack.data.sampling.sample_balanced`; the test split is ordered by class)."""
    pred, _ = collect(model, [], dataset.x_test)
    correct = pred == dataset.y_test
    if int(correct.sum()) < n:
        raise BoxhackError(
            f"only {int(correct.sum())} test inputs are classified correctly, {n} were asked for"
        )
    return sample_balanced(dataset.y_test, n, seed, correct)


# ------------------------------------------------------------------------------ worker side
_CACHE: dict = {}


def _load(root: str, key: str, monitors: list[list]):
    """Model, dataset and fitted monitors from the cache under ``root`` (once per process)."""
    ck = (root, key, json.dumps(monitors))
    if ck not in _CACHE:
        model, info, dataset = prepare_model(key, root)
        layer = info["default_layer"]
        mons = {
            monitor_key(k, t): BoxMonitor.load(monitor_path(root, key, int(k), float(t), layer))
            for k, t in monitors
        }
        _CACHE[ck] = (model, info, dataset, mons)
    return _CACHE[ck]


def job(params: dict) -> dict:
    """One (attack, criterion): the attack at every budget, judged by every monitor."""
    torch.set_num_threads(1)
    model, _info, dataset, monitors = _load(params["root"], params["key"], params["monitors"])
    idx = np.asarray(params["indices"], dtype=np.int64)
    x, y = dataset.x_test[idx], dataset.y_test[idx]
    spec = get_spec(params["attack"])
    target = monitors[params["target_monitor"]]
    kwargs = dict(params.get("attack_params") or {})
    if spec.kind == "decision":
        pool_idx = np.random.default_rng(params["seed"]).permutation(len(dataset.y_train))
        kwargs["pool"] = dataset.x_train[pool_idx[: params["pool_size"]]]
    t0 = time.perf_counter()
    results = run_adversarial_sweep(
        model, target, x, y, spec.name, params["epsilons"], goal=params["criterion"],
        budget=params["budget"], seed=params["seed"], **kwargs,
    )  # fmt: skip
    attack_s = time.perf_counter() - t0
    first = results[0].info
    return {
        "eligible": results[0].eligible.astype(int).tolist(),
        "already": results[0].already.astype(int).tolist(),
        "attack": spec.name,
        "norm": spec.norm,
        "kind": spec.kind,
        "criterion": params["criterion"],
        "target_monitor": params["target_monitor"],
        "n": len(y),
        "labels": y.tolist(),
        "accepted0": {name: mon.accepts(model, x).astype(int).tolist()
                      for name, mon in monitors.items()},
        "params": first.get("params", {}),
        "attack_s": attack_s,
        "queries": first.get("queries"),
        "has_start": first.get("has_start"),
        "per_eps": [_judged(model, target.layers_, monitors, r) for r in results],
        # per budget with a success, the successes exactly (the criterion against the target
        # monitor; each record names its budget), re-checked by `boxhack verify`
        "attacks": [attack_record(r, model=params["model_ref"], monitor=params["monitor_ref"],
                                  budget=r.info["budget"], select=r.success, at=("per_eps", i),
                                  outcomes={"pred": "pred", "success": "success", "l1": "l1",
                                            "l2": "l2", "linf": "linf",
                                            "accepted": ("accepted", params["target_monitor"])})
                    for i, r in enumerate(results) if r.success.any()],
    }  # fmt: skip


def _judged(model, layers, monitors: dict, r) -> dict:
    """One budget's adversarial samples: prediction, success, every monitor's verdict, norms."""
    pred, feats = collect(model, layers, r.x)
    return {
        "epsilon": r.info["epsilon"],
        "pred": r.pred.tolist(),
        "success": r.success.astype(int).tolist(),
        "accepted": {name: mon.accepts_features(feats, pred).astype(int).tolist()
                     for name, mon in monitors.items()},
        "l1": r.l1.tolist(),
        "l2": r.l2.tolist(),
        "linf": r.linf.tolist(),
    }  # fmt: skip


# ------------------------------------------------------------------------------ parent side
def configure(settings: Settings, options: dict) -> dict:
    """The configuration of one run (pure: nothing is trained or read)."""
    quick = settings.quick
    o = option_values(OPTIONS, settings, options)
    return {
        "key": o["key"],
        "n": o["n"],
        "seed": int(settings.seed),
        "mode": "quick" if quick else "full",
        "attacks": [get_spec(a).name for a in o["attacks"]],
        "criteria": o["criteria"],
        "eps": {"linf": o["eps_linf"], "l2": o["eps_l2"]},
        "clusters": o["clusters"],
        "tolerances": o["tolerances"],
        "default_monitor": monitor_key(*DEFAULT_MONITOR),
        "pool_size": o["pool_size"],
        "budget": "quick" if quick else "default",
        "attack_params": {} if quick else FULL_PARAMS,
    }


def plan(config: dict, ctx: RunContext) -> tuple[dict, list[Job]]:
    """Train / fit what is not cached (in the parent, before the workers start), draw the
    digits, and one job per (attack, criterion)."""
    root = ctx.models_root
    monitors = [[k, t] for k in config["clusters"] for t in config["tolerances"]]
    if list(DEFAULT_MONITOR) not in [[k, float(t)] for k, t in monitors]:
        monitors.insert(0, list(DEFAULT_MONITOR))
    model, info, dataset = prepare_model(config["key"], root)
    layer = info["default_layer"]
    for k, t in monitors:  # only what is not cached: each prepare_monitor reloads the data set
        if not monitor_path(root, config["key"], int(k), float(t), layer).is_file():
            prepare_monitor(config["key"], root, n_clusters=int(k), tolerance=float(t))
    indices = select_correct(model, dataset, config["n"], config["seed"]).tolist()
    tag = f"{config['key']}/{config['mode']}/n{config['n']}/s{config['seed']}"
    config = {**config, "indices": indices, "monitors": [monitor_key(k, t) for k, t in monitors],
              "tag": tag, "layer": layer, "network": PAPER_NETWORKS[config["key"]][0]}  # fmt: skip
    target = monitor_path(root, config["key"], *DEFAULT_MONITOR, layer)
    refs = {"model_ref": file_ref(root / "models" / config["key"], base=ctx.out_dir,
                                  sha256=info["sha256"]),
            "monitor_ref": file_ref(target, base=ctx.out_dir)}  # fmt: skip
    jobs = []
    for attack in config["attacks"]:
        spec = get_spec(attack)
        for criterion in config["criteria"]:
            params = {
                "root": str(root), "key": config["key"], "monitors": monitors,
                "target_monitor": config["default_monitor"], "indices": indices,
                "attack": attack, "criterion": criterion, "epsilons": config["eps"][spec.norm],
                "budget": config["budget"],
                "attack_params": config["attack_params"].get(attack, {}),
                "seed": config["seed"], "pool_size": config["pool_size"], **refs,
            }  # fmt: skip
            jobs.append(Job(f"{NAME}/{tag}/{attack}/{criterion}", params))
    return config, jobs


# ------------------------------------------------------------------------------ summary
def cells(rows: list[dict]) -> list[dict]:
    """One cell per (attack, criterion, epsilon) with the counts per monitor. Counts are over
    the digits actually attacked (all of them, unless one already met the criterion)."""
    out = []
    for row in rows:
        res = row["result"]
        labels = np.asarray(res["labels"])
        attacked = np.asarray(res.get("eligible", np.ones(len(labels))), dtype=bool)
        for pe in res["per_eps"]:
            pred = np.asarray(pe["pred"])
            flipped = (pred != labels) & attacked
            acc = {m: np.asarray(v, dtype=bool) for m, v in pe["accepted"].items()}
            success = np.asarray(pe["success"], dtype=bool) & attacked
            l2 = np.asarray(pe["l2"], dtype=float)
            linf = np.asarray(pe["linf"], dtype=float)
            out.append({
                "attack": res["attack"], "norm": res["norm"], "kind": res["kind"],
                "criterion": res["criterion"], "epsilon": pe["epsilon"], "n": len(labels),
                "attacked": int(attacked.sum()), "already": int(np.sum(res.get("already", 0))),
                "flipped": int(flipped.sum()),
                "accepted": {m: int((flipped & a).sum()) for m, a in acc.items()},
                "success": int(success.sum()),
                # medians over the successes (flipped; for 'combined' flipped and accepted)
                "median_l2": float(np.median(l2[success])) if success.any() else None,
                "median_linf": float(np.median(linf[success])) if success.any() else None,
                "attack_s": res["attack_s"], "queries": res.get("queries"),
                "has_start": (int(np.sum(res["has_start"])) if res.get("has_start") else None),
            })  # fmt: skip
    return out


def _fmt_eps(e) -> str:
    return "none" if e is None else f"{e:g}"


def _r(v, nd=3):
    return None if v is None else round(float(v), nd)


def _tables(plain: list[dict], comb: dict, monitors: list[str], attacked: int, dm: str,
            rows: list[dict]) -> list[dict]:
    table8 = {
        "title": f"Figure 8: flipped, and flipped AND accepted, over {attacked} correctly "
                 f"classified test digits (criterion 'misclassify'; kK-tolT = K clusters per "
                 f"class, tolerance T; medians over the flipped digits)",
        "columns": ["attack", "norm", "epsilon", "flipped", *monitors, "median L2", "median Linf"],
        "rows": [[c["attack"], c["norm"], _fmt_eps(c["epsilon"]), c["flipped"],
                  *[c["accepted"][m] for m in monitors],
                  _r(c["median_l2"]), _r(c["median_linf"])] for c in plain],
    }  # fmt: skip
    table_c = {
        "title": f"Attacks that target the monitor: Foolbox criterion 'misclassified and "
                 f"accepted by {dm}' vs the plain attack judged by the same monitor (median L2 "
                 f"over the digits that meet the criterion)",
        "columns": ["attack", "epsilon", "plain: flipped", f"plain: flipped & accepted ({dm})",
                    "criterion 'combined': flipped & accepted", "median L2 (combined)",
                    "attack s (combined)", "monitor queries"],
        "rows": [[c["attack"], _fmt_eps(c["epsilon"]), c["flipped"], c["accepted"].get(dm),
                  cc["accepted"].get(dm), _r(cc["median_l2"]), _r(cc["attack_s"], 1),
                  cc["queries"]]
                 for c in plain if (cc := comb.get((c["attack"], c["epsilon"]))) is not None],
    }  # fmt: skip
    times = {f"{r['result']['attack']}/{r['result']['criterion']}": _r(r["wall_s"], 1)
             for r in rows}  # fmt: skip
    return [table8, *([table_c] if table_c["rows"] else []),
            {"title": "Job wall times (s)", "columns": ["attack/criterion", "wall s"],
             "rows": [[k, v] for k, v in times.items()]}]  # fmt: skip


def summarise(config: dict, rows: list[dict], ctx: RunContext) -> dict:
    """Summary data from the rows of this configuration: the cells (per attack, criterion and
    budget: flips and acceptances per monitor), the tables, and the timing."""
    ok = [r for r in rows if r.get("status") == "ok"]
    timing, failed = rows_record(rows)
    if not ok:
        raise BoxhackError(f"{ctx.exp_dir(NAME) / 'rows.jsonl'} has no finished rows of this "
                           f"configuration; run the experiment first")  # fmt: skip
    order = {a: i for i, a in enumerate(FULL_ATTACKS)}
    all_cells = sorted(cells(ok), key=lambda c: (CRITERIA.index(c["criterion"]),
                                                 order.get(c["attack"], 99), c["epsilon"] or 0))
    monitors = list(ok[0]["result"]["per_eps"][0]["accepted"])
    attacked = min(c["attacked"] for c in all_cells)
    dm = monitor_key(*DEFAULT_MONITOR)
    plain = [c for c in all_cells if c["criterion"] == "misclassify"]
    comb = {(c["attack"], c["epsilon"]): c for c in all_cells if c["criterion"] == "combined"}
    summary = {
        "name": NAME,
        "config": {k: v for k, v in config.items() if k not in ("indices", "keys")},
        "n": ok[0]["result"]["n"],
        "attacked": attacked,
        "already": max(c["already"] for c in all_cells),
        "monitors": monitors,
        "default_monitor": dm,
        "cells": all_cells,
        "tables": _tables(plain, comb, monitors, attacked, dm, ok),
        "timing": timing,
    }  # fmt: skip
    if failed:
        summary["errors"] = failed
    return summary


EXPERIMENT = Experiment(
    name=NAME,
    title=TITLE,
    description=(
        "Foolbox attacks (FGSM, PGD, DeepFool, C&W, Boundary, HopSkipJump) on correctly "
        "classified MNIST test digits at several budgets; every adversarial sample judged by "
        "monitors with 1, 2, 3 boxes per class x tolerance 0, 0.1, 0.25 (quick: 20 digits, 6 "
        "attacks, 2 budgets, monitors k=1,3 x tolerance 0, 0.25)."
    ),
    options=OPTIONS,
    configure=configure,
    plan=plan,
    job=job,
    summarise=summarise,
)
