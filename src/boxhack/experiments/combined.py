"""Experiment ``combined`` (paper section 4.2, figure 9): fool the classifier AND the monitor.

The attack is :func:`boxhack.attacks.combined.combined_attack` (its docstring has the two
stages and the pluggable repair): an off-the-shelf adversarial attack (FGSM at Linf 0.1 by
default), then a repair of every sample that is not yet misclassified and accepted. Every
count is decided by :func:`boxhack.attacks.verify.verify` on the final points. One job per chunk of
50 digits; the rows carry the verdicts, norms, layer features and a few exact example images,
so the summary and the figures (:mod:`boxhack.report.combined`) come from the rows alone.
"""

from __future__ import annotations

import numpy as np
import torch

from boxhack.attacks.adversarial import get_spec
from boxhack.attacks.combined import REPAIRS, SAFETY_NET_S, combined_attack
from boxhack.attacks.records import attack_record, file_ref
from boxhack.attacks.verify import AttackResult
from boxhack.errors import BoxhackError
from boxhack.experiments.adversarial import select_correct
from boxhack.experiments.prepared import (
    PAPER_NETWORKS,
    load_prepared,
    monitor_path,
    prepare_model,
    prepare_monitor,
)
from boxhack.experiments.spec import Experiment, Option, RunContext, Settings, option_values
from boxhack.infra.arrays import encode_array
from boxhack.infra.campaign import Job
from boxhack.models.layers import collect

__all__ = ["EXPERIMENT", "job"]

NAME = "combined"
TITLE = "Combined attack: adversarial samples repaired to pass the monitor (paper figure 9)"

KEY = "mnist10"
SCIPY_REPAIRS = ("slsqp", "shgo")
N_EXAMPLES = 2  # repaired samples per job whose images are stored in the rows
# what a job's params hold of the configuration (with root, refs and its chunk of indices)
PARAM_KEYS = ("key", "seed", "attack", "epsilon", "repair", "norm", "fallback_norm", "max_evals",
              "time_limit", "n_clusters", "tolerance", "repair_options", "tag")  # fmt: skip

OPTIONS = (
    Option("n", int, 300, "correctly classified test digits", quick=30, minimum=1),
    Option("repair", str, "gradient", "gradient (the monitor-aware gradient attack), slsqp or "
           "shgo (SciPy, bounded by max_evals), none (stage 1 only)", choices=REPAIRS),
    Option("attack", str, "fgsm", "stage-1 Foolbox attack"),
    Option("eps", float, 0.1, "stage-1 budget in the attack's norm", minimum=0),
    Option("norm", str, "l1", "the repair's distance", choices=("l1", "l2")),
    Option("fallback_norm", str, "l2", "gradient repair: second try in this norm for the "
           "samples still failing (none: no second try)", choices=("l1", "l2", "linf", "none")),
    Option("max_evals", int, 5000, "slsqp/shgo: evaluations per sample, the budget that "
           "decides the result", quick=2000, minimum=1),
    Option("time_limit", float, None, "slsqp/shgo: wall-clock safety net per sample in seconds "
           f"(default: the run's solve timeout, else {SAFETY_NET_S:g}; only stops a solver "
           "stuck in C code)", minimum=0),
    # SciPy repairs search a 20-dimensional PCA subspace of the training digits by default:
    # SLSQP there solved every FGSM-rejected digit tried, in the 784-pixel space few
    # (docs/reproduction.md); space "input" is the paper's space
    Option("space", str, None, "slsqp/shgo: search space of the SciPy attack: pca:20 "
           "(default), input (the paper's 784 pixels), pca:K or blocks:B"),
    Option("n_clusters", int, 1, "boxes per class of the monitor", minimum=1),
    Option("tolerance", float, 0.0, "tolerance of the monitor", minimum=0),
    Option("key", str, KEY, "network", choices=tuple(PAPER_NETWORKS)),
    Option("chunk", int, 50, "digits per job", minimum=1),
)  # fmt: skip


# ------------------------------------------------------------------------------ worker side
def job(params: dict) -> dict:
    """The combined attack on one chunk of digits."""
    torch.set_num_threads(1)
    model, _info, dataset, monitor = load_prepared(params["root"], params["key"], params["n_clusters"],
                                                  params["tolerance"])  # fmt: skip
    idx = np.asarray(params["indices"], dtype=np.int64)
    x, y = dataset.x_test[idx], dataset.y_test[idx]
    repair_options = dict(params.get("repair_options") or {})
    if str(repair_options.get("space", "")).startswith("pca"):
        repair_options["train_inputs"] = dataset.x_train  # the SciPy attack's PCA subspace
    res = combined_attack(
        model, monitor, x, y, attack=params["attack"], epsilon=params["epsilon"],
        repair=params["repair"], norm=params["norm"], fallback_norm=params["fallback_norm"],
        max_evals=params["max_evals"], time_limit=params["time_limit"], seed=params["seed"],
        repair_options=repair_options or None,
    )  # fmt: skip
    layer = monitor.layers_[0]
    feats = {}
    for name, xs in (("clean", x), ("adv", res.first.x), ("final", res.final.x)):
        _, f = collect(model, [layer], xs)
        feats[name] = np.round(f[layer], 5).tolist()
    extra = (res.final.x - res.first.x).reshape(len(x), -1).astype(np.float64)
    repaired = np.flatnonzero(np.isin(res.stage, ["repair", "fallback"]))[:N_EXAMPLES]
    return {
        "indices": idx.tolist(),
        "labels": y.tolist(),
        "accepted0": res.first.accepted0.astype(int).tolist(),
        "eligible": res.final.eligible.astype(int).tolist(),
        "already": res.final.already.astype(int).tolist(),
        "adv": _verdicts(res.first),
        "final": {**_verdicts(res.final), "success": res.final.success.astype(int).tolist()},
        "stage": res.stage.tolist(),
        "extra_l1": np.abs(extra).sum(1).tolist(),
        "extra_l2": np.sqrt((extra**2).sum(1)).tolist(),
        "features": feats,
        "layer": layer,
        "attacks": _records(res, params),
        "examples": {  # exact float32 images of a few repaired samples
            "positions": repaired.tolist(),
            "clean": encode_array(x[repaired]),
            "adv": encode_array(res.first.x[repaired]),
            "final": encode_array(res.final.x[repaired]),
        },
        "info": {k: v for k, v in res.info.items() if k != "attack"},
        "attack_s": res.info["attack_s"],
        "repair_s": res.info["repair_s"],
    }


def _verdicts(r: AttackResult) -> dict:
    return {"pred": r.pred.tolist(), "accepted": r.accepted.astype(int).tolist(),
            "l1": r.l1.tolist(), "l2": r.l2.tolist(), "linf": r.linf.tolist()}  # fmt: skip


def _records(res, params: dict) -> list[dict]:
    """The stored successes: stage 1 (flipped) within its budget, and the final points
    (misclassified and accepted), each re-checked by ``boxhack verify``."""
    refs = {"model": params["model_ref"], "monitor": params["monitor_ref"]}
    records = []
    if res.first.success.any():
        records.append(attack_record(res.first, **refs, budget=res.first.info["budget"],
                                     select=res.first.success, at=("adv",),
                                     outcomes={k: k for k in ("pred", "accepted", "l1", "l2",
                                                              "linf")}))
    if res.final.success.any():
        records.append(attack_record(
            res.final, **refs, select=res.final.success, at=("final",),
            outcomes={k: k for k in ("success", "pred", "accepted", "l1", "l2", "linf")}))
    return records


# ------------------------------------------------------------------------------ parent side
def configure(settings: Settings, options: dict) -> dict:
    """The configuration of one run (pure). ``settings.solve_timeout`` sets the SciPy
    repairs' safety net unless the option ``time_limit`` does."""
    o = option_values(OPTIONS, settings, options)
    repair = o["repair"]
    if o["space"] is not None and repair not in SCIPY_REPAIRS:
        raise BoxhackError("option 'space' is for the SciPy repairs (repair slsqp or shgo)")
    time_limit = o["time_limit"] if o["time_limit"] is not None else settings.solve_timeout
    return {
        "key": o["key"],
        "n": o["n"],
        "seed": int(settings.seed),
        "mode": "quick" if settings.quick else "full",
        "attack": get_spec(o["attack"]).name,
        "epsilon": o["eps"],
        "repair": repair,
        "norm": o["norm"],
        "fallback_norm": None if o["fallback_norm"] == "none" else o["fallback_norm"],
        # SciPy repairs: the evaluation budget per sample decides; the time limit is a safety
        # net far above it (reproduce's --solve-timeout sets it)
        "max_evals": o["max_evals"],
        "time_limit": float(time_limit if time_limit is not None else SAFETY_NET_S),
        "n_clusters": o["n_clusters"],
        "tolerance": o["tolerance"],
        "repair_options": {"space": o["space"] or "pca:20"} if repair in SCIPY_REPAIRS else {},
        "chunk": o["chunk"],
    }


def plan(config: dict, ctx: RunContext) -> tuple[dict, list[Job]]:
    """Train / fit what is not cached, draw the digits, one job per chunk of them."""
    root = ctx.models_root
    model, info, dataset = prepare_model(config["key"], root)
    layer = info["default_layer"]
    mon_path = monitor_path(root, config["key"], config["n_clusters"], config["tolerance"], layer)
    if not mon_path.is_file():
        prepare_monitor(config["key"], root, n_clusters=config["n_clusters"],
                        tolerance=config["tolerance"])  # fmt: skip
    indices = select_correct(model, dataset, config["n"], config["seed"]).tolist()
    tag = (f"{config['mode']}/n{config['n']}/s{config['seed']}/{config['attack']}"
           f"{config['epsilon']:g}/{config['repair']}-{config['norm']}-{config['fallback_norm']}/"
           f"k{config['n_clusters']}-tol{config['tolerance']:g}"
           + (f"/e{config['max_evals']}" if config["repair"] in SCIPY_REPAIRS else ""))
    config = {**config, "tag": tag, "indices": indices, "layer": layer,
              "network": PAPER_NETWORKS[config["key"]][0]}  # fmt: skip
    base = {"root": str(root),
            "model_ref": file_ref(root / "models" / config["key"], base=ctx.out_dir,
                                  sha256=info["sha256"]),
            "monitor_ref": file_ref(mon_path, base=ctx.out_dir),
            **{k: config[k] for k in PARAM_KEYS}}  # fmt: skip
    jobs = [Job(f"{NAME}/{tag}/{c0}", {**base, "indices": indices[c0 : c0 + config["chunk"]]})
            for c0 in range(0, len(indices), config["chunk"])]
    return config, jobs


# ------------------------------------------------------------------------------ summary
def _med(a) -> float | None:
    a = np.asarray(a, dtype=float)
    return round(float(np.median(a)), 3) if len(a) else None


def _cat(results: list[dict], *path: str) -> np.ndarray:
    """One per-sample field of every row's result, concatenated in job order."""
    out = []
    for r in results:
        for p in path:
            r = r[p]
        out.extend(r)
    return np.asarray(out)


def counts(results: list[dict]) -> dict:
    """Per-sample outcome counts over the rows' digits (shares are over the attacked ones)."""
    labels = _cat(results, "labels")
    att = _cat(results, "eligible").astype(bool)
    stage = _cat(results, "stage")
    flipped = (_cat(results, "adv", "pred") != labels) & att
    adv_acc = _cat(results, "adv", "accepted").astype(bool)
    rep = np.isin(stage, ["repair", "fallback"])
    return {
        "samples": len(labels),
        "attacked": int(att.sum()),
        "already": int((~att).sum()),
        "flipped": int(flipped.sum()),
        "flipped_accepted": int((flipped & adv_acc).sum()),
        "flipped_rejected": int((flipped & ~adv_acc).sum()),
        "not_flipped": int((att & ~flipped).sum()),
        "repaired": int(rep.sum()),
        "repaired_rejected": int((rep & flipped & ~adv_acc).sum()),
        "repaired_not_flipped": int((rep & att & ~flipped).sum()),
        "fallback": int((stage == "fallback").sum()),
        "success": int((_cat(results, "final", "success").astype(bool) & att).sum()),
        "success_of_flipped": int((_cat(results, "final", "success").astype(bool)
                                   & flipped).sum()),
    }  # fmt: skip


def medians(results: list[dict]) -> dict:
    """Median perturbations: of the repaired samples (the attack's sample, the final one, the
    repair's own change) and of every successful final sample."""
    rep = np.isin(_cat(results, "stage"), ["repair", "fallback"])
    success = _cat(results, "final", "success").astype(bool) & _cat(results, "eligible").astype(bool)
    out = {}
    for which, mask in (("adv_repaired", rep), ("final_repaired", rep), ("final_success", success)):
        stage = "adv" if which.startswith("adv") else "final"
        out[which] = {n: _med(_cat(results, stage, n)[mask]) for n in ("l1", "l2", "linf")}
    out["repair_change"] = {"l1": _med(_cat(results, "extra_l1")[rep]),
                            "l2": _med(_cat(results, "extra_l2")[rep]), "linf": None}
    return out


def summarise(config: dict, rows: list[dict], ctx: RunContext) -> dict:
    """Summary data: the outcome counts, the median perturbations, the tables and the timing."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        raise BoxhackError(f"{ctx.exp_dir(NAME) / 'rows.jsonl'} has no finished rows of this "
                           f"configuration; run the experiment first")  # fmt: skip
    results = [r["result"] for r in ok]
    c, m = counts(results), medians(results)
    n_att = c["attacked"]
    attack = config["attack"]
    labels = [("samples", "samples"), ("attacked", "attacked"),
              ("already misclassified and accepted (not attacked)", "already"),
              (f"flipped by {attack}", "flipped"),
              (f"flipped and accepted after {attack} alone", "flipped_accepted"),
              ("flipped but rejected", "flipped_rejected"), ("not flipped", "not_flipped"),
              ("repaired (of flipped but rejected)", "repaired_rejected"),
              ("repaired (of not flipped)", "repaired_not_flipped"),
              ("  of which by the fallback norm", "fallback"),
              ("final: misclassified and accepted", "success")]  # fmt: skip
    rows_m = [("attack's sample (repaired ones)", "adv_repaired"),
              ("after the repair", "final_repaired"),
              ("repair: |final - attack's sample|", "repair_change"),
              ("all successful samples, final", "final_success")]  # fmt: skip
    norm = get_spec(attack).norm
    return {
        "name": NAME,
        "config": {k: v for k, v in config.items() if k not in ("indices", "keys")},
        "counts": c,
        "medians": m,
        "tables": [{
            "title": f"Combined attack over {c['samples']} correctly classified test digits: "
                     f"{attack} ({'Linf' if norm == 'linf' else norm.upper()} "
                     f"{config['epsilon']:g}), then repair '{config['repair']}' "
                     f"({config['norm'].upper()}) of every sample that misses 'misclassified "
                     f"and accepted'; shares of the {n_att} attacked",
            "columns": ["", "samples", "share"],
            "rows": [[label, c[k], f"{c[k] / n_att:.1%}" if n_att else None]
                     for label, k in labels],
        }, {
            "title": "Median perturbation from the clean digit (repaired samples only), and "
                     "the repair's own change from the attack's sample",
            "columns": ["", "L1", "L2", "Linf"],
            "rows": [[label, m[k]["l1"], m[k]["l2"], m[k]["linf"]] for label, k in rows_m],
        }],
        "timing": {"wall_s": float(sum(r["wall_s"] for r in rows)), "jobs": len(rows),
                   "errors": len(rows) - len(ok),
                   "attack_s": float(sum(r["attack_s"] for r in results)),
                   "repair_s": float(sum(r["repair_s"] for r in results))},
    }  # fmt: skip


EXPERIMENT = Experiment(
    name=NAME,
    title=TITLE,
    description=(
        "FGSM on correctly classified MNIST test digits (300; quick 30), then an Attack 2 "
        "without the same-prediction constraint (misclassified and accepted) on every sample "
        "that misses that goal: the monitor-aware gradient attack by default, or SciPy SLSQP / "
        "SHGO bounded by an evaluation budget per sample."
    ),
    options=OPTIONS,
    configure=configure,
    plan=plan,
    job=job,
    summarise=summarise,
)
