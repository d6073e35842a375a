"""Experiment ``gradient``: robustness curves of the monitor-aware attacks (beyond the paper).

For each goal (Attack 1 "dos", Attack 2 "intrude", "intrude-any", "combined"), each norm (L1, L2,
Linf) and each attack, the success rate as a function of the perturbation budget, on MNIST test
digits of the 10-class MLP with the paper's monitor (one box per class, tolerance 0):

- ``gradient``: :class:`~boxhack.attacks.gradient.MonitorAttack` in minimal mode: one run gives
  every sample's smallest successful perturbation, so the whole curve (a step curve);
- ``orthogonal``: :class:`~boxhack.attacks.orthogonal.OrthogonalAttack` in minimal mode;
- ``pgd``: ``MonitorAttack`` in budget mode (PGD inside the ball) at a grid of budgets (points).

Samples: accepted test digits for "dos", rejected ones for "intrude" / "intrude-any", correctly
classified ones for "combined" (true labels as the reference). Every success is verified by the
exact model and monitor. One job per (goal, norm, attack[, budget]) runs its samples as one
batch; the rows carry per-sample norms and verdicts (and a few before/after images), so every
figure is redrawn from the JSONL alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from boxhack.errors import BoxhackError

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
GOAL_TITLES = {
    "dos": "Attack 1 (dos): keep the class, get rejected",
    "intrude": "Attack 2 (intrude): get accepted as the same class",
    "intrude-any": "Attack 2 (intrude-any): get accepted as any class",
    "combined": "Combined: misclassified and accepted",
}


# ------------------------------------------------------------------------------ jobs
def _job(params: dict) -> dict:
    """One (goal, norm, attack[, eps]) cell on its samples, as one batch."""
    import torch

    from boxhack.attacks.gradient import MonitorAttack
    from boxhack.attacks.orthogonal import OrthogonalAttack
    from boxhack.experiments.zoo import load_prepared

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
    res = atk(model, monitor, x, labels=y if goal == "combined" else None)
    wall = time.perf_counter() - t0
    ok = np.flatnonzero(res.success)[:N_EXAMPLES] if attack == "gradient" else np.zeros(0, int)
    return {
        "indices": idx.tolist(),
        "success": res.success.astype(int).tolist(),
        "pred0": res.pred0.tolist(),
        "pred": res.pred.tolist(),
        "accepted": res.accepted.astype(int).tolist(),
        "l1": np.round(res.l1, 5).tolist(),
        "l2": np.round(res.l2, 6).tolist(),
        "linf": np.round(res.linf, 6).tolist(),
        "wall_s": wall,
        "row_steps": int(res.info.get("row_steps", 0)),
        "examples": {
            "positions": ok.tolist(),
            "before": [np.round(x[i].ravel(), 4).tolist() for i in ok],
            "after": [np.round(res.x[i].ravel(), 4).tolist() for i in ok],
        },
    }


# ------------------------------------------------------------------------------ run
def _root(out_dir, models_root) -> Path:
    return Path(models_root) if models_root is not None else Path(out_dir) / "models"


def _config(quick: bool, seed: int, options: dict) -> dict:
    known = {"n", "key", "goals", "norms", "attacks", "eps", "n_clusters", "tolerance"}
    unknown = set(options) - known
    if unknown:
        raise BoxhackError(f"experiment {NAME!r} has no option(s) {sorted(unknown)}; "
                           f"options: {sorted(known)}")  # fmt: skip

    def names(key, allowed, default):
        v = options.get(key) or default
        v = [v] if isinstance(v, str) else list(v)
        bad = [a for a in v if a not in allowed]
        if bad:
            raise BoxhackError(f"unknown {key[:-1]} {bad[0]!r}; choose from: {', '.join(allowed)}")
        return v

    n = int(options.get("n") or (12 if quick else 100))
    if n < 1:
        raise BoxhackError(f"n must be >= 1, got {n}")
    eps = options.get("eps") or (QUICK_EPS if quick else EPS_GRID)
    return {
        "key": options.get("key") or ("mnist3" if quick else KEY),
        "n": n,
        "seed": int(seed),
        "mode": "quick" if quick else "full",
        "goals": names("goals", GOALS, ("dos", "intrude", "combined") if quick else GOALS),
        "norms": names("norms", NORMS, NORMS),
        "attacks": names("attacks", ATTACKS, ATTACKS),
        "eps": {k: [float(e) for e in v] for k, v in dict(eps).items()},
        "n_clusters": int(options.get("n_clusters") or 1),
        "tolerance": float(options.get("tolerance") or 0.0),
    }


def _samples(model, monitor, dataset, n: int, seed: int) -> dict:
    """Test indices per goal: accepted (dos), rejected (intrude*), correctly classified
    (combined); a seeded random choice of up to ``n`` each."""
    pred, acc = monitor.predict(model, dataset.x_test)
    rng = np.random.default_rng(seed)
    pools = {"dos": acc, "intrude": ~acc, "intrude-any": ~acc, "combined": pred == dataset.y_test}
    out = {}
    for goal, mask in pools.items():
        pool = np.flatnonzero(mask)
        if len(pool) == 0:
            out[goal] = []
            continue
        out[goal] = np.sort(rng.choice(pool, min(n, len(pool)), replace=False)).tolist()
    return out


def run(out_dir, *, quick=False, n_jobs=None, scheduler=None, seed=0, progress=True,
        models_root=None, **options) -> dict:
    """Run the grid into ``out_dir/gradient/rows.jsonl`` (resumable); return the summary.

    Options: ``n`` (samples per goal; 100, quick 12), ``key`` (network; mnist10, quick mnist3),
    ``goals``, ``norms``, ``attacks`` (subsets), ``eps`` ({norm: [budgets]} for PGD),
    ``n_clusters`` / ``tolerance`` of the monitor (1 / 0)."""
    from boxhack.experiments.campaign import Job, run_campaign
    from boxhack.experiments.zoo import prepare_monitor

    start = time.perf_counter()
    cfg = _config(quick, seed, options)
    root = _root(out_dir, models_root)
    exp_dir = Path(out_dir) / NAME
    exp_dir.mkdir(parents=True, exist_ok=True)
    model, monitor, _info, dataset = prepare_monitor(cfg["key"], root, n_clusters=cfg["n_clusters"],
                                                    tolerance=cfg["tolerance"])  # fmt: skip
    samples = _samples(model, monitor, dataset, cfg["n"], seed)
    tag = f"{cfg['mode']}/{cfg['key']}/n{cfg['n']}/s{seed}/k{cfg['n_clusters']}-tol{cfg['tolerance']:g}"
    cfg["tag"] = tag
    (exp_dir / "config.json").write_text(json.dumps({**cfg, "samples": samples}, indent=2) + "\n")
    base = {"root": str(root), "key": cfg["key"], "n_clusters": cfg["n_clusters"],
            "tolerance": cfg["tolerance"], "seed": seed}  # fmt: skip
    jobs = []
    for goal in cfg["goals"]:
        if not samples[goal]:
            continue
        for norm in cfg["norms"]:
            for attack in cfg["attacks"]:
                grid = cfg["eps"].get(norm, []) if attack == "pgd" else [None]
                for eps in grid:
                    key = f"{NAME}/{tag}/{goal}/{norm}/{attack}" + ("" if eps is None else f"/{eps:g}")
                    jobs.append(Job(key, {**base, "goal": goal, "norm": norm, "attack": attack,
                                          "eps": eps, "indices": samples[goal]}))
    run_campaign(jobs, _job, exp_dir / "rows.jsonl", n_jobs=n_jobs, scheduler=scheduler,
                 progress=progress, desc=NAME)  # fmt: skip
    summary = summarise(out_dir, models_root=models_root, _keys={j.key for j in jobs})
    summary["timing"]["elapsed_s"] = time.perf_counter() - start
    (exp_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ------------------------------------------------------------------------------ summary
def _fmt(v, digits=4):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return None
    return round(float(v), digits)


def summarise(out_dir, *, models_root=None, _keys=None) -> dict:
    """Tables, one robustness-curve figure per goal, an examples figure and summary.json,
    from ``out_dir/gradient/rows.jsonl`` alone."""
    from boxhack.infra.jsonl import latest_by_key, read_rows
    from boxhack.report.curves import budget_at, plot_before_after, plot_robustness_curves

    exp_dir = Path(out_dir) / NAME
    path = exp_dir / "rows.jsonl"
    if not path.is_file():
        raise BoxhackError(f"{path} does not exist; run the experiment first")
    latest = latest_by_key(read_rows(path))
    cfg_path = exp_dir / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    if _keys is None and cfg.get("tag"):
        _keys = {k for k in latest if k.startswith(f"{NAME}/{cfg['tag']}/")} or None
    rows = [r for k, r in latest.items() if (_keys is None or k in _keys) and r.get("status") == "ok"]
    if not rows:
        raise BoxhackError(f"{path} has no finished rows; run the experiment first")
    n_err = sum(1 for k, r in latest.items() if (_keys is None or k in _keys) and r.get("status") != "ok")

    curves: dict = {}
    table = []
    examples = []
    total_wall = 0.0
    def order(r):
        p = r["params"]
        return (GOALS.index(p["goal"]) if p["goal"] in GOALS else 99,
                NORMS.index(p["norm"]) if p["norm"] in NORMS else 99,
                ATTACKS.index(p["attack"]) if p["attack"] in ATTACKS else 99,
                p.get("eps") or 0.0)

    for r in sorted(rows, key=order):
        p, res = r["params"], r["result"]
        goal, norm, attack = p["goal"], p["norm"], p["attack"]
        succ = np.asarray(res["success"], bool)
        nr = np.asarray(res[norm], float)
        total_wall += float(res["wall_s"])
        c = curves.setdefault(goal, {}).setdefault(norm, {})
        if attack == "pgd":
            pts = c.setdefault("pgd", {"eps": [], "rate": []})
            pts["eps"].append(float(p["eps"]))
            pts["rate"].append(float(succ.mean()))
            table.append([goal, norm.upper(), f"pgd @ {p['eps']:g}", len(succ),
                          _fmt(succ.mean(), 3), _fmt(np.median(nr[succ]) if succ.any() else None),
                          None, None, _fmt(1000 * res["wall_s"] / max(len(succ), 1), 2)])
        else:
            c[attack] = {"norms": nr.tolist(), "success": succ.tolist()}
            table.append([goal, norm.upper(), f"{attack} (minimal)", len(succ),
                          _fmt(succ.mean(), 3), _fmt(np.median(nr[succ]) if succ.any() else None),
                          _fmt(budget_at(nr, succ, 0.5)), _fmt(budget_at(nr, succ, 0.9)),
                          _fmt(1000 * res["wall_s"] / max(len(succ), 1), 2)])
        if attack == "gradient" and norm == "l2":
            for before, after in zip(res["examples"]["before"], res["examples"]["after"]):
                examples.append((goal, np.asarray(before), np.asarray(after)))

    figures = []
    for goal in [g for g in GOALS if g in curves]:
        fig = plot_robustness_curves(curves[goal], title=GOAL_TITLES.get(goal, goal))
        name = f"curves_{goal}.png"
        fig.savefig(exp_dir / name, dpi=110)
        figures.append({"path": name, "caption": f"Success rate against the perturbation budget, "
                                                 f"{GOAL_TITLES.get(goal, goal)}; one panel per "
                                                 f"norm, minimal attacks as step curves, PGD at "
                                                 f"fixed budgets as points."})  # fmt: skip
    if examples:
        per_goal: dict = {}
        for goal, b, a in examples:
            per_goal.setdefault(goal, []).append((b, a))
        sel = [(g, b, a) for g, items in per_goal.items() for b, a in items[:2]]
        x0 = np.stack([b for _, b, _ in sel])
        x1 = np.stack([a for _, _, a in sel])
        fig = plot_before_after(x0, x1, titles=[g for g, _, _ in sel])
        fig.savefig(exp_dir / "examples.png", dpi=110)
        figures.append({"path": "examples.png",
                        "caption": "Before / after / change for a few successful L2 gradient "
                                   "attacks per goal (minimal perturbations)."})  # fmt: skip

    def rate(goal, norm, attack="gradient"):
        c = curves.get(goal, {}).get(norm, {}).get(attack)
        return None if c is None else float(np.mean(c["success"]))

    def ms_per_sample(goal, norm, attack="gradient"):
        for r in rows:
            p = r["params"]
            if (p["goal"], p["norm"], p["attack"]) == (goal, norm, attack):
                return 1000 * r["result"]["wall_s"] / max(len(r["result"]["success"]), 1)
        return None

    paper = []
    if rate("dos", "l2") is not None:
        others = "; ".join(f"{n.upper()}: {rate('dos', n):.0%}" for n in ("l1", "linf")
                           if rate("dos", n) is not None)
        paper.append({
            "claim": "Attack 1 on MNIST (784 dimensions): the local SciPy solvers (SLSQP, COBYLA) "
                     "failed; SHGO and DE succeeded more often; most solvers needed 10-15 hours "
                     "for the experiment (20 samples per setting)",
            "measured": f"monitor-aware gradient attack (L2, minimal): {rate('dos', 'l2'):.0%} "
                        f"verified success at {ms_per_sample('dos', 'l2'):.1f} ms per sample "
                        f"(one core)" + (f"; {others}" if others else ""),
            "note": "the attacker sees the boxes: the box margin is piecewise linear with exact "
                    "gradients, so a few dozen normalised gradient steps per sample suffice",
        })  # fmt: skip
    if rate("intrude", "l2") is not None:
        paper.append({
            "claim": "Attack 2 (invalid -> valid) on MNIST: solved by SHGO / DE, failed by the "
                     "local solvers",
            "measured": f"{rate('intrude', 'l2'):.0%} verified success (L2, minimal) at "
                        f"{ms_per_sample('intrude', 'l2'):.1f} ms per sample",
            "note": "benchmarks/attacks.py compares with SLSQP (margin encoding) and DE on the "
                    "same samples",
        })  # fmt: skip
    if rate("combined", "l1") is not None:
        paper.append({
            "claim": "combined (misclassified and accepted): 100% over 300 samples with FGSM + "
                     "SHGO L1 repair",
            "measured": f"{rate('combined', 'l1'):.0%} directly from the clean digits with the "
                        f"gradient attack (L1, minimal), no FGSM stage",
            "note": "experiment 'combined' reproduces the paper's FGSM + repair pipeline",
        })  # fmt: skip
    n_by_goal = {g: len(v) for g, v in (cfg.get("samples") or {}).items()}
    summary = {
        "name": NAME,
        "title": TITLE,
        "description": (
            f"Monitor-aware white-box attacks on the {cfg.get('key', KEY)} MLP and its monitor "
            f"({cfg.get('n_clusters', 1)} box(es) per class, tolerance {cfg.get('tolerance', 0.0):g}, "
            f"layer relu2): for each goal and norm, the minimal-perturbation attacks (gradient "
            f"= FMN-style MonitorAttack, orthogonal = Orthogonal-PGD-style) give every sample's "
            f"smallest verified perturbation, PGD gives the success rate at fixed budgets. "
            f"Samples per goal: {n_by_goal or cfg.get('n')}."
        ),
        "config": {k: v for k, v in cfg.items() if k != "samples"},
        "tables": [{
            "title": "Success and perturbation size per goal, norm and attack (verified); "
                     "budget for 50% / 90% success from the minimal attacks",
            "columns": ["goal", "norm", "attack", "samples", "success", "median norm",
                        "budget 50%", "budget 90%", "ms/sample"],
            "rows": table,
        }],
        "figures": figures,
        "paper": paper,
        "timing": {"wall_s": total_wall, "jobs": len(rows), "errors": n_err},
    }
    (exp_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
