"""Experiment ``gradient``: robustness curves of the monitor-aware attacks (beyond the paper).

For each goal (Attack 1 "dos", Attack 2 "intrude", "intrude-any", "combined"), each norm (L1, L2,
Linf) and each attack, the success rate as a function of the perturbation budget, on MNIST test
digits of the 10-class MLP with the paper's monitor (one box per class, tolerance 0):

- ``gradient``: :class:`~boxhack.attacks.gradient.MonitorAttack` in minimal mode: one run gives
  every sample's smallest successful perturbation, so the whole curve (a step curve);
- ``orthogonal``: :class:`~boxhack.attacks.orthogonal.OrthogonalAttack` in minimal mode;
- ``pgd``: ``MonitorAttack`` in budget mode (PGD inside the ball) at a grid of budgets (points).

Samples: a seeded, class-balanced draw of test digits per goal from the digits the goal starts
from: correctly classified and accepted ones for "dos" (Attack 1), rejected ones for "intrude" /
"intrude-any", correctly classified ones for "combined" (true labels as the reference). Every
success is verified by the exact model and monitor; success rates and norm medians are over the
digits actually attacked (a digit whose goal already held at x0 is counted apart). One job per
(goal, norm, attack[, budget]) runs its samples as one batch; the rows carry per-sample norms
and verdicts, and the successful inputs exactly (``"attacks"``: attack records that ``boxhack
verify`` re-checks), so the summary and the figures (:mod:`boxhack.report.gradient`) come from
the JSONL alone.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from boxhack.attacks.gradient import MonitorAttack
from boxhack.attacks.orthogonal import OrthogonalAttack
from boxhack.attacks.records import OUTCOMES, attack_record, file_ref
from boxhack.data.sampling import sample_balanced
from boxhack.errors import BoxhackError
from boxhack.experiments.prepared import (
    PAPER_NETWORKS,
    load_prepared,
    monitor_path,
    prepare_monitor,
)
from boxhack.experiments.spec import Experiment, Option, RunContext, Settings, option_values
from boxhack.infra.campaign import Job

__all__ = ["EXPERIMENT", "budget_at", "cell", "job"]

NAME = "gradient"
TITLE = "Monitor-aware gradient attacks: robustness curves (beyond the paper)"

KEY = "mnist10"
GOALS = ("dos", "intrude", "intrude-any", "combined")
NORMS = ("l1", "l2", "linf")
ATTACKS = ("gradient", "orthogonal", "pgd")
# PGD budgets per norm (MNIST pixel scale)
EPS_GRID = {
    "l1": (1.0, 2.5, 5.0, 10.0, 20.0),
    "l2": (0.1, 0.25, 0.5, 1.0, 2.0),
    "linf": (0.01, 0.025, 0.05, 0.1, 0.2),
}
QUICK_EPS = {"l1": (2.5, 10.0), "l2": (0.25, 1.0), "linf": (0.025, 0.1)}
N_EXAMPLES = 3
# the digits each goal starts from (the goal's own starting condition)
POOLS = {
    "dos": "correctly classified and accepted (Attack 1)",
    "intrude": "rejected",
    "intrude-any": "rejected",
    "combined": "correctly classified",
}

OPTIONS = (
    Option("n", int, 100, "digits per goal", quick=12, minimum=1),
    Option("key", str, KEY, "network", quick="mnist3", choices=tuple(PAPER_NETWORKS)),
    Option("goals", "list", GOALS, "goals", quick=("dos", "intrude", "combined"), choices=GOALS),
    Option("norms", "list", NORMS, "norms", choices=NORMS),
    Option("attacks", "list", ATTACKS, "attacks: gradient (minimal, FMN-style), orthogonal "
           "(minimal, Orthogonal-PGD-style), pgd (fixed budgets)", choices=ATTACKS),
    *(Option(f"eps_{norm}", "list", EPS_GRID[norm], f"PGD budgets in {norm.upper()}",
             quick=QUICK_EPS[norm], item=float, minimum=0) for norm in NORMS),
    Option("n_clusters", int, 1, "boxes per class of the monitor", minimum=1),
    Option("tolerance", float, 0.0, "tolerance of the monitor", minimum=0),
)  # fmt: skip


# ------------------------------------------------------------------------------ jobs
def job(params: dict) -> dict:
    """One (goal, norm, attack[, eps]) cell on its samples, as one batch."""
    torch.set_num_threads(1)
    model, _info, dataset, monitor = load_prepared(params["root"], params["key"], params["n_clusters"],
                                                  params["tolerance"])  # fmt: skip
    idx = np.asarray(params["indices"], dtype=np.int64)
    x, y = dataset.x_test[idx], dataset.y_test[idx]
    attack, goal, norm = params["attack"], params["goal"], params["norm"]
    cls = OrthogonalAttack if attack == "orthogonal" else MonitorAttack
    if attack == "pgd":
        atk = cls(goal=goal, norm=norm, mode="budget", epsilon=params["eps"], seed=params["seed"])
    else:
        atk = cls(goal=goal, norm=norm, mode="minimal", seed=params["seed"])
    t0 = time.perf_counter()
    # true labels for every goal: Attack 1 then starts only from correct (and accepted) digits
    res = atk(model, monitor, x, labels=y)
    wall = time.perf_counter() - t0
    budget = {"norm": norm, "eps": float(params["eps"])} if attack == "pgd" else None
    n_ok = int(res.success.sum())
    return {
        "indices": idx.tolist(),
        "labels": y.tolist(),
        "eligible": res.eligible.astype(int).tolist(),
        "already": res.already.astype(int).tolist(),
        "success": res.success.astype(int).tolist(),
        "pred0": res.pred0.tolist(),
        "pred": res.pred.tolist(),
        "accepted0": res.accepted0.astype(int).tolist(),
        "accepted": res.accepted.astype(int).tolist(),
        "l1": res.l1.tolist(),
        "l2": res.l2.tolist(),
        "linf": res.linf.tolist(),
        "wall_s": wall,
        "row_steps": int(res.info.get("row_steps", 0)),
        # the successes, exactly (float32 bits), with the model and monitor they hold against
        "attacks": [attack_record(res, model=params["model_ref"], monitor=params["monitor_ref"],
                                  budget=budget, select=res.success,
                                  outcomes={k: k for k in OUTCOMES})] if n_ok else [],
        # which of them the examples figure shows (positions in the record above)
        "examples": list(range(min(N_EXAMPLES, n_ok))) if attack == "gradient" else [],
    }


# ------------------------------------------------------------------------------ run
def configure(settings: Settings, options: dict) -> dict:
    """The configuration of one run (pure: nothing is trained or read)."""
    o = option_values(OPTIONS, settings, options)
    return {
        "key": o["key"],
        "n": o["n"],
        "seed": int(settings.seed),
        "mode": "quick" if settings.quick else "full",
        "goals": o["goals"],
        "norms": o["norms"],
        "attacks": o["attacks"],
        "eps": {norm: o[f"eps_{norm}"] for norm in NORMS},
        "n_clusters": o["n_clusters"],
        "tolerance": o["tolerance"],
    }


def samples(model, monitor, dataset, n: int, seed: int) -> dict:
    """Test indices per goal (see :data:`POOLS`): a seeded, class-balanced sample of up to
    ``n`` digits each (:func:`boxhack.data.sampling.sample_balanced`)."""
    pred, acc = monitor.predict(model, dataset.x_test)
    correct = pred == dataset.y_test
    masks = {"dos": correct & acc, "intrude": ~acc, "intrude-any": ~acc, "combined": correct}
    return {goal: sample_balanced(dataset.y_test, n, seed, mask).tolist()
            for goal, mask in masks.items()}  # fmt: skip


def plan(config: dict, ctx: RunContext) -> tuple[dict, list[Job]]:
    """Train / fit what is not cached, draw the digits per goal, one job per (goal, norm,
    attack[, PGD budget])."""
    root, seed = ctx.models_root, config["seed"]
    model, monitor, info, dataset = prepare_monitor(
        config["key"], root, n_clusters=config["n_clusters"], tolerance=config["tolerance"])
    drawn = samples(model, monitor, dataset, config["n"], seed)
    tag = (f"{config['mode']}/{config['key']}/n{config['n']}/s{seed}/k{config['n_clusters']}-"
           f"tol{config['tolerance']:g}")
    config = {**config, "tag": tag, "samples": drawn, "layer": info["default_layer"],
              "network": PAPER_NETWORKS[config["key"]][0]}  # fmt: skip
    mon_path = monitor_path(root, config["key"], config["n_clusters"], config["tolerance"],
                            info["default_layer"])  # fmt: skip
    base = {"root": str(root), "key": config["key"], "n_clusters": config["n_clusters"],
            "tolerance": config["tolerance"], "seed": seed,
            "model_ref": file_ref(root / "models" / config["key"], base=ctx.out_dir,
                                  sha256=info["sha256"]),
            "monitor_ref": file_ref(mon_path, base=ctx.out_dir)}  # fmt: skip
    jobs = []
    for goal in config["goals"]:
        if not drawn[goal]:
            continue
        for norm in config["norms"]:
            for attack in config["attacks"]:
                for eps in config["eps"].get(norm, []) if attack == "pgd" else [None]:
                    key = f"{NAME}/{tag}/{goal}/{norm}/{attack}" + ("" if eps is None else f"/{eps:g}")
                    jobs.append(Job(key, {**base, "goal": goal, "norm": norm, "attack": attack,
                                          "eps": eps, "indices": drawn[goal]}))  # fmt: skip
    return config, jobs


# ------------------------------------------------------------------------------ summary
def budget_at(norms, success, rate: float) -> float:
    """Smallest budget at which a minimal attack reaches success ``rate`` (``inf`` if never)."""
    r = np.sort(np.where(np.asarray(success, bool), np.asarray(norms, float), np.inf))
    if len(r) == 0:
        return math.inf
    k = math.ceil(rate * len(r)) - 1
    return float(r[max(k, 0)])


def _fmt(v, digits=4):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return None
    return round(float(v), digits)


def cell(row: dict) -> dict:
    """Per-sample arrays of one row, restricted to the inputs actually attacked."""
    p, res = row["params"], row["result"]
    att = np.asarray(res["eligible"], bool)
    succ = np.asarray(res["success"], bool)
    norms = np.asarray(res[p["norm"]], float)
    return {"goal": p["goal"], "norm": p["norm"], "attack": p["attack"], "eps": p.get("eps"),
            "n": len(succ), "attacked": int(att.sum()),
            "already": int(np.sum(res["already"])), "success": succ[att], "norms": norms[att],
            "ms": 1000 * float(res["wall_s"]) / max(len(succ), 1)}  # fmt: skip


def _numbers(c: dict) -> dict:
    """One cell's summary numbers (JSON-able): counts, rate, median norm of the successes,
    the budgets for 50% / 90% success (minimal attacks), milliseconds per sample."""
    minimal = c["attack"] != "pgd" and c["attacked"]
    ok = c["success"]
    return {
        "goal": c["goal"], "norm": c["norm"], "attack": c["attack"], "eps": c["eps"],
        "n": c["n"], "attacked": c["attacked"], "already": c["already"],
        "not_eligible": c["n"] - c["attacked"] - c["already"],
        "successes": int(ok.sum()),
        "rate": float(ok.mean()) if c["attacked"] else None,
        "median": float(np.median(c["norms"][ok])) if ok.any() else None,
        "budget50": _fmt(budget_at(c["norms"], ok, 0.5)) if minimal else None,
        "budget90": _fmt(budget_at(c["norms"], ok, 0.9)) if minimal else None,
        "ms": c["ms"],
    }  # fmt: skip


def order(row: dict) -> tuple:
    """Goal, norm, attack, budget: the order of the table and the figures."""
    p = row["params"]
    return (GOALS.index(p["goal"]) if p["goal"] in GOALS else 99,
            NORMS.index(p["norm"]) if p["norm"] in NORMS else 99,
            ATTACKS.index(p["attack"]) if p["attack"] in ATTACKS else 99,
            p.get("eps") or 0.0)  # fmt: skip


def summarise(config: dict, rows: list[dict], ctx: RunContext) -> dict:
    """Summary data: per (goal, norm, attack[, budget]) the verified successes over the
    attacked digits, the median norm, the budgets for 50% / 90% success; the table; timing."""
    ok = sorted((r for r in rows if r.get("status") == "ok"), key=order)
    if not ok:
        raise BoxhackError(f"{ctx.exp_dir(NAME) / 'rows.jsonl'} has no finished rows of this "
                           f"configuration; run the experiment first")  # fmt: skip
    cells = [_numbers(cell(r)) for r in ok]
    names = {"l1": "L1", "l2": "L2", "linf": "Linf"}
    table = [[c["goal"], names[c["norm"]],
              f"pgd @ {c['eps']:g}" if c["attack"] == "pgd" else f"{c['attack']} (minimal)",
              c["attacked"], c["successes"], _fmt(c["rate"], 3), c["already"], c["not_eligible"],
              _fmt(c["median"]), c["budget50"], c["budget90"], _fmt(c["ms"], 2)]
             for c in cells]  # fmt: skip
    goals = {c["goal"] for c in cells}
    return {
        "name": NAME,
        "config": {k: v for k, v in config.items() if k not in ("samples", "keys")},
        "digits": {g: len(v) for g, v in (config.get("samples") or {}).items() if g in goals},
        "cells": cells,
        "tables": [{
            "title": "Success and perturbation size per goal, norm and attack (verified, over "
                     "the attacked digits); budget for 50% / 90% success from the minimal "
                     "attacks; median norm over the successes",
            "columns": ["goal", "norm", "attack", "attacked", "successes", "success",
                        "already met", "not eligible", "median norm", "budget 50%",
                        "budget 90%", "ms/sample"],
            "rows": table,
        }],
        "timing": {"wall_s": float(sum(r["result"]["wall_s"] for r in ok)), "jobs": len(ok),
                   "errors": len(rows) - len(ok)},
    }  # fmt: skip


EXPERIMENT = Experiment(
    name=NAME,
    title=TITLE,
    description=(
        "For each goal (dos, intrude, intrude-any, combined), norm (L1, L2, Linf) and attack "
        "(gradient = minimal FMN-style, orthogonal = Orthogonal-PGD-style, pgd = fixed "
        "budgets), the success rate against the perturbation budget on MNIST test digits "
        "(quick: 12 digits per goal on the 3-class network, 3 goals, 2 PGD budgets)."
    ),
    options=OPTIONS,
    configure=configure,
    plan=plan,
    job=job,
    summarise=summarise,
)
