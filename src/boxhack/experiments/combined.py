"""Experiment ``combined`` (paper section 4.2, figure 9): fool the classifier AND the monitor.

Stage 1, an off-the-shelf adversarial attack (FGSM at Linf 0.1 by default, Foolbox, criterion
"misclassify"): many samples are flipped and accepted at once. Stage 2, the repair: every
sample that does not yet meet the combined goal (flipped but rejected, or not flipped) gets
an Attack 2 WITHOUT the same-prediction constraint (goal ``"combined"``: prediction != true
label and accepted), started at its stage-1 adversarial sample and measured from the clean
input. The repair is pluggable:

- ``"gradient"`` (default): :class:`boxhack.attacks.gradient.MonitorAttack` (goal "combined",
  minimal mode, L1 by default) - the monitor-aware white-box attack; samples it leaves
  unsolved get one more try in the other norm (``fallback_norm``, default L2);
- ``"slsqp"`` / ``"shgo"``: the paper's SciPy optimisation attack
  (:func:`boxhack.attacks.optimisation.optimise_attack`, L1), bounded by an evaluation budget
  per sample (``max_evals``); its wall-clock limit is only a safety net far above that;
- ``"none"``: stage 1 only.

A sample whose repair fails keeps its stage-1 point. Every count is decided by
:func:`boxhack.attacks.verify.verify` on the final points against the clean inputs; the
stage-1 points stay within the stage-1 budget exactly (float32 included).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from boxhack.attacks.combined import REPAIRS, SAFETY_NET_S, combined_attack
from boxhack.attacks.verify import AttackResult
from boxhack.errors import BoxhackError

NAME = "combined"
TITLE = "Combined attack: adversarial samples repaired to pass the monitor (paper figure 9)"

KEY = "mnist10"
# SciPy repairs: evaluations per sample (the budget that decides the outcome), and the
# wall-clock safety net per sample (only against a solver stuck in C code)
MAX_EVALS = {"quick": 2000, "full": 5000}
CHUNK = 50  # samples per job
N_EXAMPLES = 2  # repaired samples per job whose images are stored in the rows


# ------------------------------------------------------------------------------ experiment
def _job(params: dict) -> dict:
    import torch

    from boxhack.attacks.records import attack_record
    from boxhack.experiments.prepared import load_prepared
    from boxhack.infra.arrays import encode_array
    from boxhack.models.layers import collect

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

    def verdicts(r: AttackResult) -> dict:
        return {"pred": r.pred.tolist(), "accepted": r.accepted.astype(int).tolist(),
                "l1": r.l1.tolist(), "l2": r.l2.tolist(), "linf": r.linf.tolist()}

    refs = {"model": params["model_ref"], "monitor": params["monitor_ref"]}
    records = []
    if res.first.success.any():  # stage 1 (flipped), within its budget
        records.append(attack_record(res.first, **refs, budget=res.first.info["budget"],
                                     select=res.first.success))
    if res.final.success.any():  # the final points: misclassified and accepted
        records.append(attack_record(res.final, **refs, select=res.final.success))
    return {
        "indices": idx.tolist(),
        "labels": y.tolist(),
        "accepted0": res.first.accepted0.astype(int).tolist(),
        "eligible": res.final.eligible.astype(int).tolist(),
        "already": res.final.already.astype(int).tolist(),
        "adv": verdicts(res.first),
        "final": {**verdicts(res.final), "success": res.final.success.astype(int).tolist()},
        "stage": res.stage.tolist(),
        "extra_l1": np.abs(extra).sum(1).tolist(),
        "extra_l2": np.sqrt((extra**2).sum(1)).tolist(),
        "features": feats,
        "layer": layer,
        "attacks": records,
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


def _root(out_dir, models_root) -> Path:
    return Path(models_root) if models_root is not None else Path(out_dir) / "models"


def _config(quick: bool, seed: int, options: dict) -> dict:
    known = {"n", "repair", "attack", "epsilon", "norm", "fallback_norm", "time_limit",
             "max_evals", "n_clusters", "tolerance", "key", "repair_options", "chunk"}  # fmt: skip
    unknown = set(options) - known
    if unknown:
        raise BoxhackError(f"experiment {NAME!r} has no option(s) {sorted(unknown)}")
    repair = options.get("repair") or "gradient"
    if repair not in REPAIRS:
        raise BoxhackError(f"unknown repair {repair!r}; choose one of: {', '.join(REPAIRS)}")
    n = int(options.get("n") or (30 if quick else 300))
    if n < 1:
        raise BoxhackError(f"n must be >= 1, got {n}")
    from boxhack.attacks.adversarial import get_spec

    attack = get_spec(options.get("attack") or "fgsm").name
    fallback = options.get("fallback_norm", "l2")
    return {
        "key": options.get("key") or KEY,
        "n": n,
        "seed": int(seed),
        "mode": "quick" if quick else "full",
        "attack": attack,
        "epsilon": float(options.get("epsilon") if options.get("epsilon") is not None else 0.1),
        "repair": repair,
        "norm": options.get("norm") or "l1",
        "fallback_norm": None if fallback in (None, "none") else fallback,
        # SciPy repairs: the evaluation budget per sample decides; the time limit is a safety
        # net far above it (reproduce's --solve-timeout sets it)
        "max_evals": int(options.get("max_evals") or MAX_EVALS["quick" if quick else "full"]),
        "time_limit": float(options.get("time_limit") or SAFETY_NET_S),
        "n_clusters": int(options.get("n_clusters") or 1),
        "tolerance": float(options.get("tolerance") or 0.0),
        # SciPy repairs search a 20-dimensional PCA subspace of the training digits by default:
        # SLSQP there solved every FGSM-rejected digit tried, in the 784-pixel space few
        # (docs/reproduction.md); pass repair_options={"space": "input"} for the paper's space
        "repair_options": dict(options.get("repair_options")
                               or ({"space": "pca:20"} if repair in ("slsqp", "shgo") else {})),
        "chunk": int(options.get("chunk") or CHUNK),
    }


def run(out_dir, *, quick=False, n_jobs=None, scheduler=None, seed=0, progress=True,
        models_root=None, solve_timeout=None, **options) -> dict:
    """Run the combined attack on ``n`` (300) correctly classified MNIST test digits, in chunks
    of 50 per job, into ``out_dir/combined/rows.jsonl``; return the summary.

    Options: ``n``, ``repair`` ("gradient", "slsqp", "shgo", "none"), ``attack`` ("fgsm"),
    ``epsilon`` (0.1), ``norm`` ("l1"), ``fallback_norm`` ("l2"), ``max_evals`` (evaluations
    per sample of the SciPy repairs: 2000 quick, 5000 full), ``time_limit`` (their wall-clock
    safety net per sample, 600 s; ``solve_timeout`` from ``boxhack reproduce`` sets it too),
    ``n_clusters`` / ``tolerance`` of the monitor (1 / 0), ``repair_options``, ``chunk``."""
    from boxhack.attacks.records import file_ref
    from boxhack.experiments.adversarial import select_correct
    from boxhack.experiments.prepared import monitor_path, prepare_model, prepare_monitor
    from boxhack.infra.campaign import Job, run_campaign
    from boxhack.infra.files import atomic_write_json, check_output_dir
    from boxhack.infra.locks import exclusive

    start = time.perf_counter()
    if solve_timeout is not None and options.get("time_limit") is None:
        options["time_limit"] = solve_timeout
    cfg = _config(quick, seed, options)
    check_output_dir(out_dir)
    exp_dir = Path(out_dir) / NAME
    with exclusive(exp_dir, f"experiment {NAME!r} directory"):
        root = _root(out_dir, models_root)
        model, info, dataset = prepare_model(cfg["key"], root)
        mon_path = monitor_path(root, cfg["key"], cfg["n_clusters"], cfg["tolerance"],
                                info["default_layer"])  # fmt: skip
        if not mon_path.is_file():
            prepare_monitor(cfg["key"], root, n_clusters=cfg["n_clusters"],
                            tolerance=cfg["tolerance"])  # fmt: skip
        indices = select_correct(model, dataset, cfg["n"], seed).tolist()
        tag = (f"{cfg['mode']}/n{cfg['n']}/s{seed}/{cfg['attack']}{cfg['epsilon']:g}/"
               f"{cfg['repair']}-{cfg['norm']}-{cfg['fallback_norm']}/"
               f"k{cfg['n_clusters']}-tol{cfg['tolerance']:g}"
               + (f"/e{cfg['max_evals']}" if cfg["repair"] in ("slsqp", "shgo") else ""))
        cfg["tag"] = tag
        atomic_write_json(exp_dir / "config.json", {**cfg, "indices": indices})
        refs = {"model_ref": file_ref(root / "models" / cfg["key"], base=out_dir,
                                      sha256=info["sha256"]),
                "monitor_ref": file_ref(mon_path, base=out_dir)}  # fmt: skip
        jobs = []
        for c0 in range(0, len(indices), cfg["chunk"]):
            params = {"root": str(root), **refs,
                      **{k: v for k, v in cfg.items() if k not in ("n", "mode", "chunk")},
                      "indices": indices[c0 : c0 + cfg["chunk"]]}  # fmt: skip
            jobs.append(Job(f"{NAME}/{tag}/{c0}", params))
        run_campaign(jobs, _job, exp_dir / "rows.jsonl", n_jobs=n_jobs, scheduler=scheduler,
                     progress=progress, desc=NAME)  # fmt: skip
        summary = summarise(out_dir, models_root=models_root, _keys={j.key for j in jobs})
        summary["timing"]["elapsed_s"] = time.perf_counter() - start
        atomic_write_json(exp_dir / "summary.json", summary)
    return summary


# ------------------------------------------------------------------------------ summary
def _med(a) -> float | None:
    a = np.asarray(a, dtype=float)
    return round(float(np.median(a)), 3) if len(a) else None


def summarise(out_dir, *, models_root=None, _keys=None) -> dict:
    """Tables, figures and summary.json from ``out_dir/combined/rows.jsonl`` (and the cached
    monitor, for the boxes in the projections). Counts are over the digits attacked."""
    from boxhack.infra.files import atomic_write_json
    from boxhack.infra.jsonl import latest_by_key, read_rows

    exp_dir = Path(out_dir) / NAME
    latest = latest_by_key(read_rows(exp_dir / "rows.jsonl"))
    cfg_path = exp_dir / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    if _keys is None and cfg.get("tag"):  # the rows of the configuration run last
        _keys = {k for k in latest if k.startswith(f"{NAME}/{cfg['tag']}/")} or None
    rows_all = [r for k, r in latest.items() if _keys is None or k in _keys]
    rows = [r for r in rows_all if r.get("status") == "ok"]
    if not rows:
        raise BoxhackError(f"{exp_dir / 'rows.jsonl'} has no finished rows; run the experiment first")
    rows.sort(key=lambda r: int(r["key"].rsplit("/", 1)[1]))
    res = [r["result"] for r in rows]

    def cat(path):
        out = []
        for r in res:
            v = r
            for p in path:
                v = v[p]
            out.extend(v)
        return np.asarray(out)

    labels = cat(["labels"])
    n = len(labels)
    att = cat(["eligible"]).astype(bool)
    stage = cat(["stage"])
    adv_pred, adv_acc = cat(["adv", "pred"]), cat(["adv", "accepted"]).astype(bool)
    fin_pred, fin_acc = cat(["final", "pred"]), cat(["final", "accepted"]).astype(bool)
    success = cat(["final", "success"]).astype(bool) & att
    flipped = (adv_pred != labels) & att
    adv_ok = flipped & adv_acc
    rep = np.isin(stage, ["repair", "fallback"])
    rejected = flipped & ~adv_acc
    extra_l1 = cat(["extra_l1"])
    fb = int((stage == "fallback").sum())
    n_att = int(att.sum())
    attack = cfg.get("attack", "fgsm")
    repair = cfg.get("repair", res[0]["info"].get("repair"))
    counts = {
        "samples": n,
        "attacked": n_att,
        "already misclassified and accepted (not attacked)": n - n_att,
        f"flipped by {attack}": int(flipped.sum()),
        f"flipped and accepted after {attack} alone": int(adv_ok.sum()),
        "flipped but rejected": int(rejected.sum()),
        "not flipped": int((att & ~flipped).sum()),
        "repaired (of flipped but rejected)": int((rep & rejected).sum()),
        "repaired (of not flipped)": int((rep & att & ~flipped).sum()),
        "  of which by the fallback norm": fb,
        "final: misclassified and accepted": int(success.sum()),
    }
    norm_name = {"linf": "Linf ", "l2": "L2 "}.get(_attack_norm(attack), "")
    attack_name = f"{attack} ({norm_name}{cfg.get('epsilon', 0.1):g})"
    table_counts = {
        "title": f"Combined attack over {n} correctly classified test digits: {attack_name}, then "
                 f"repair '{repair}' ({cfg.get('norm', 'l1').upper()}) of every sample that "
                 f"misses 'misclassified and accepted'; shares of the {n_att} attacked",
        "columns": ["", "samples", "share"],
        "rows": [[k, v, f"{v / n_att:.1%}" if n_att else None] for k, v in counts.items()],
    }  # fmt: skip
    l1_adv, l1_fin = cat(["adv", "l1"]), cat(["final", "l1"])
    l2_adv, l2_fin = cat(["adv", "l2"]), cat(["final", "l2"])
    li_adv, li_fin = cat(["adv", "linf"]), cat(["final", "linf"])
    table_norms = {
        "title": "Median perturbation from the clean digit (repaired samples only), and the "
                 "repair's own change from the attack's sample",
        "columns": ["", "L1", "L2", "Linf"],
        "rows": [
            ["attack's sample (repaired ones)", _med(l1_adv[rep]), _med(l2_adv[rep]), _med(li_adv[rep])],
            ["after the repair", _med(l1_fin[rep]), _med(l2_fin[rep]), _med(li_fin[rep])],
            ["repair: |final - attack's sample|", _med(extra_l1[rep]),
             _med(cat(["extra_l2"])[rep]), None],
            ["all successful samples, final", _med(l1_fin[success]), _med(l2_fin[success]),
             _med(li_fin[success])],
        ],
    }  # fmt: skip
    rate = success.sum() / n_att if n_att else float("nan")
    rate_flipped = success[flipped].mean() if flipped.any() else float("nan")
    paper = [{
        "claim": "FGSM then the L1 Attack 2 (SHGO) on the samples the monitor rejected, without "
                 "the same-prediction constraint: 100% attack success over 300 MNIST samples",
        "measured": f"{int(success.sum())}/{n_att} = {rate:.1%} misclassified and accepted "
                    f"({int(adv_ok.sum())} after {attack} alone, "
                    f"{int(rep.sum())} repaired by '{repair}'"
                    + (f", {fb} of them by the {cfg.get('fallback_norm')} fallback" if fb else "")
                    + f"); of the samples {attack} flipped: {rate_flipped:.1%}",
        "note": _note(repair, n_att, int((att & ~flipped).sum()), int(success.sum()), cfg),
    }]  # fmt: skip
    figures = _figures(exp_dir, res, labels, adv_pred, adv_acc, fin_pred, fin_acc, cfg,
                       models_root if models_root is not None else Path(out_dir) / "models")
    desc = (
        f"{attack} at {cfg.get('epsilon', 0.1):g} on {n} correctly classified test digits (a "
        f"seeded, class-balanced draw) of the {cfg.get('key', KEY)} MLP (monitor: "
        f"{cfg.get('n_clusters', 1)} box(es) per class, tolerance {cfg.get('tolerance', 0.0):g}, "
        f"layer relu2); every sample not yet misclassified-and-accepted then gets the "
        f"'{repair}' repair (goal 'combined', {cfg.get('norm', 'l1').upper()}, started at its "
        f"adversarial sample, distance measured from the clean digit)"
        + (f", bounded by {cfg.get('max_evals')} evaluations per sample"
           if repair in ("slsqp", "shgo") else "")
        + ". Success is verified on the final points."
    )
    summary = {
        "name": NAME,
        "title": TITLE,
        "description": desc,
        "config": {k: v for k, v in cfg.items() if k != "indices"},
        "tables": [table_counts, table_norms],
        "figures": figures,
        "paper": paper,
        "counts": counts,
        "timing": {"wall_s": float(sum(r["wall_s"] for r in rows_all)), "jobs": len(rows_all),
                   "errors": len(rows_all) - len(rows),
                   "attack_s": float(sum(r["attack_s"] for r in res)),
                   "repair_s": float(sum(r["repair_s"] for r in res))},
    }  # fmt: skip
    atomic_write_json(exp_dir / "summary.json", summary)
    return summary


def _attack_norm(attack: str) -> str | None:
    from boxhack.attacks.adversarial import ATTACKS

    spec = ATTACKS.get(attack)
    return None if spec is None else spec.norm


def _note(repair, n, not_flipped, ok, cfg) -> str:
    attack = cfg.get("attack", "fgsm")
    norm, fallback = cfg.get("norm", "l1").upper(), cfg.get("fallback_norm")
    parts = []
    if repair == "gradient":
        parts.append(
            f"The repair is boxhack's monitor-aware gradient attack (minimal {norm} from the "
            f"clean digit, started at the {attack} sample"
            + (f"; {fallback.upper()} for any it leaves" if fallback else "")
            + ") instead of the paper's SHGO, which is available as --repair shgo (SciPy, "
            "bounded by an evaluation budget per sample; see docs/reproduction.md for how it "
            "fares)."
        )
    elif repair in ("slsqp", "shgo"):
        space = (cfg.get("repair_options") or {}).get("space", "input")
        parts.append(f"Repair with SciPy {repair.upper()} (search space {space}; the paper used "
                     f"SHGO on the 784 pixels), at most {cfg.get('max_evals')} evaluations per "
                     f"sample.")
    if repair != "none":
        parts.append(
            f"All attacked samples count, also the {not_flipped} {attack} did not flip (repaired "
            f"too, since the goal 'combined' only asks for a wrong and accepted prediction); the "
            f"paper does not say how it counted those, nor its FGSM budget or network."
        )
    if ok < n:
        parts.append(f"{n - ok} of {n} sample(s) stayed unsolved"
                     + (" within the repair's budget." if repair != "none" else "."))
    return " ".join(parts)


def _figures(exp_dir, res, labels, adv_pred, adv_acc, fin_pred, fin_acc, cfg, root) -> list:
    from boxhack.infra.arrays import decode_array
    from boxhack.report.adversarial_figures import plot_figure9, plot_images
    from boxhack.report.curves import save_png

    figures = []
    attack = cfg.get("attack", "fgsm")
    feats = {k: np.concatenate([np.asarray(r["features"][k], dtype=np.float32) for r in res])
             for k in ("clean", "adv", "final")}  # fmt: skip
    monitor = None
    try:
        if cfg:
            from boxhack.experiments.prepared import monitor_path
            from boxhack.monitor import BoxMonitor

            path = monitor_path(root, cfg["key"], cfg["n_clusters"], cfg["tolerance"], res[0]["layer"])
            monitor = BoxMonitor.load(path) if path.is_file() else None
    except BoxhackError:
        monitor = None
    fig = plot_figure9(
        feats["adv"], adv_pred, adv_acc, feats["final"], fin_pred, fin_acc, monitor,
        features_clean=feats["clean"], layer=res[0]["layer"],
        titles=(f"(a) after {attack} (arrows from the clean digits)",
                f"(b) after the repair (arrows from the {attack} samples)"),
    )  # fmt: skip
    save_png(fig, exp_dir / "figure9.png")
    figures.append({
        "path": "figure9.png",
        "caption": f"Figure 9: PCA projection of the monitored layer ({res[0]['layer']})"
                   + (" with the boxes of the monitor" if monitor is not None else
                      " (the monitor file was not found: boxes not drawn)")
                   + f": stars are samples the monitor rejects, dots accepted ones, colour = "
                     f"predicted class. (a) the {attack} samples, (b) after the repair.",
    })  # fmt: skip
    ex = [r for r in res if r["examples"]["positions"]]
    if ex:
        clean, adv, fin, caps = [], [], [], [[], [], []]
        for r in ex:
            e = r["examples"]
            images = {k: decode_array(e[k]) for k in ("clean", "adv", "final")}
            for j, pos in enumerate(e["positions"]):
                clean.append(images["clean"][j])
                adv.append(images["adv"][j])
                fin.append(images["final"][j])
                caps[0].append(f"label {r['labels'][pos]}")
                caps[1].append(f"pred {r['adv']['pred'][pos]}, "
                               f"{'acc.' if r['adv']['accepted'][pos] else 'rejected'}")
                caps[2].append(f"pred {r['final']['pred'][pos]}, "
                               f"{'acc.' if r['final']['accepted'][pos] else 'rejected'}")
        k = min(8, len(clean))
        fig = plot_images([("clean", clean[:k]), (attack, adv[:k]), ("repaired", fin[:k])],
                          [c[:k] for c in caps])  # fmt: skip
        save_png(fig, exp_dir / "figure9_examples.png")
        figures.append({
            "path": "figure9_examples.png",
            "caption": f"{k} repaired samples: the clean digit, the {attack} sample (rejected by "
                       f"the monitor, or not flipped), and the repaired input (misclassified and "
                       f"accepted).",
        })  # fmt: skip
    return figures
