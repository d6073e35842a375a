"""Experiment ``adversarial`` (paper figure 8): do off-the-shelf adversarial samples pass the monitor?

The 10-class MNIST network (zoo key ``mnist10``) and ``n`` (100) correctly classified test
digits, drawn by a seeded permutation of the test split. Each Foolbox attack runs ONCE per
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
perturbation norms and each monitor's verdict, so the tables and figures are recomputed from
``rows.jsonl`` alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from boxhack.errors import BoxhackError
from boxhack.infra.files import atomic_write_json

NAME = "adversarial"
TITLE = "Adversarial samples against classifier and monitor (paper figure 8)"

KEY = "mnist10"
CLUSTERS = (1, 2, 3)
TOLERANCES = (0.0, 0.1, 0.25)
DEFAULT_MONITOR = (1, 0.0)
EPS_LINF = (0.05, 0.1, 0.2, 0.3)
EPS_L2 = (0.5, 1.0, 2.0, 3.0)
HEADLINE = {"linf": 0.1, "l2": 2.0}  # the budget shown in the one-bar-per-attack figure
FULL_ATTACKS = ("fgsm", "pgd-linf", "deepfool-linf", "fgm-l2", "pgd-l2", "deepfool-l2",
                "cw-l2", "boundary", "hsj")  # fmt: skip
QUICK_ATTACKS = ("fgsm", "pgd-linf", "deepfool-l2", "cw-l2", "boundary", "hsj")
CRITERIA = ("misclassify", "combined")
# Budgets of the full run (measured on 2 cores: see docs/reproduction.md).
FULL_PARAMS = {
    "boundary": {"steps": 8000},
    "hsj": {"steps": 40, "initial_gradient_eval_steps": 50, "max_gradient_eval_steps": 500},
}
POOL_SIZE = {"full": 1000, "quick": 200}
NORM_NAMES = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def monitor_key(k: int, tol: float) -> str:
    return f"k{int(k)}-tol{float(tol):g}"


def select_correct(model, dataset, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` correctly classified test inputs: a seeded, class-balanced draw
    (:func:`boxhack.data.sampling.sample_balanced`; the test split is ordered by class)."""
    from boxhack.data.sampling import sample_balanced
    from boxhack.models.layers import collect

    pred, _ = collect(model, [], dataset.x_test)
    correct = pred == dataset.y_test
    if int(correct.sum()) < n:
        raise BoxhackError(
            f"only {int(correct.sum())} test inputs are classified correctly, {n} were asked for"
        )
    return sample_balanced(dataset.y_test, n, seed, correct)


def _root(out_dir, models_root) -> Path:
    return Path(models_root) if models_root is not None else Path(out_dir) / "models"


# ------------------------------------------------------------------------------ worker side
_CACHE: dict = {}


def _load(root: str, key: str, monitors: list[list]):
    """Model, dataset and fitted monitors from the cache under ``root`` (once per process)."""
    from boxhack.experiments.prepared import monitor_path, prepare_model
    from boxhack.monitor import BoxMonitor

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


def _job(params: dict) -> dict:
    import torch

    from boxhack.attacks.adversarial import get_spec, run_adversarial_sweep
    from boxhack.attacks.records import attack_record
    from boxhack.models.layers import collect

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
        model, target, x, y, spec.name, params["epsilons"], criterion=params["criterion"],
        budget=params["budget"], seed=params["seed"], **kwargs,
    )  # fmt: skip
    attack_s = time.perf_counter() - t0
    layers = target.layers_
    per_eps = []
    for r in results:
        pred, feats = collect(model, layers, r.x)
        accepted = {name: mon.accepts_features(feats, pred).astype(int).tolist()
                    for name, mon in monitors.items()}  # fmt: skip
        per_eps.append({
            "epsilon": r.info["epsilon"],
            "pred": r.pred.tolist(),
            "success": r.success.astype(int).tolist(),
            "accepted": accepted,
            "l1": r.l1.tolist(),
            "l2": r.l2.tolist(),
            "linf": r.linf.tolist(),
        })  # fmt: skip
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
        "per_eps": per_eps,
        # per budget with a success, the successes exactly (the criterion against the target
        # monitor; each record names its budget), re-checked by `boxhack verify`
        "attacks": [attack_record(r, model=params["model_ref"], monitor=params["monitor_ref"],
                                  budget=r.info["budget"], select=r.success)
                    for r in results if r.success.any()],
    }


# ------------------------------------------------------------------------------ parent side
def _config(quick: bool, seed: int, options: dict) -> dict:
    mode = "quick" if quick else "full"
    attacks = list(options.get("attacks") or (QUICK_ATTACKS if quick else FULL_ATTACKS))
    n = int(options.get("n") or (20 if quick else 100))
    eps_linf = list(options.get("eps_linf") or ((0.1, 0.3) if quick else EPS_LINF))
    eps_l2 = list(options.get("eps_l2") or ((1.0, 3.0) if quick else EPS_L2))
    criteria = list(options.get("criteria") or CRITERIA)
    unknown = set(options) - {"attacks", "n", "eps_linf", "eps_l2", "criteria", "key",
                              "pool_size", "clusters", "tolerances"}  # fmt: skip
    if unknown:
        raise BoxhackError(f"experiment {NAME!r} has no option(s) {sorted(unknown)}")
    from boxhack.attacks.adversarial import get_spec

    for a in attacks:
        get_spec(a)
    for c in criteria:
        if c not in CRITERIA:
            raise BoxhackError(f"unknown criterion {c!r}; choose from {CRITERIA}")
    if n < 1:
        raise BoxhackError(f"n must be >= 1, got {n}")
    return {
        "key": options.get("key", KEY),
        "n": n,
        "seed": int(seed),
        "mode": mode,
        "attacks": [get_spec(a).name for a in attacks],
        "criteria": criteria,
        "eps": {"linf": eps_linf, "l2": eps_l2},
        # quick: the sweep's ends only (each monitor fit reloads the data set)
        "clusters": list(options.get("clusters") or ((1, 3) if quick else CLUSTERS)),
        "tolerances": list(options.get("tolerances") or ((0.0, 0.25) if quick else TOLERANCES)),
        "default_monitor": monitor_key(*DEFAULT_MONITOR),
        "pool_size": int(options.get("pool_size") or POOL_SIZE[mode]),
        "budget": "quick" if quick else "default",
        "attack_params": {} if quick else FULL_PARAMS,
    }


def run(out_dir, *, quick=False, n_jobs=None, scheduler=None, seed=0, progress=True,
        models_root=None, **options) -> dict:
    """Run the grid (one job per attack and criterion) into ``out_dir/adversarial/rows.jsonl``."""
    from boxhack.infra.files import check_output_dir
    from boxhack.infra.locks import exclusive

    start = time.perf_counter()
    cfg = _config(quick, seed, options)
    check_output_dir(out_dir)
    with exclusive(Path(out_dir) / NAME, f"experiment {NAME!r} directory"):
        summary = _run_locked(out_dir, cfg, n_jobs, scheduler, progress, models_root)
        summary["timing"]["elapsed_s"] = time.perf_counter() - start
        atomic_write_json(Path(out_dir) / NAME / "summary.json", summary)
    return summary


def _run_locked(out_dir, cfg, n_jobs, scheduler, progress, models_root) -> dict:
    from boxhack.attacks.adversarial import get_spec
    from boxhack.attacks.records import file_ref
    from boxhack.experiments.prepared import monitor_path, prepare_model, prepare_monitor
    from boxhack.infra.campaign import Job, run_campaign

    seed = cfg["seed"]
    root = _root(out_dir, models_root)
    exp_dir = Path(out_dir) / NAME
    monitors = [[k, t] for k in cfg["clusters"] for t in cfg["tolerances"]]
    if list(DEFAULT_MONITOR) not in [[k, float(t)] for k, t in monitors]:
        monitors.insert(0, list(DEFAULT_MONITOR))
    # train / fit once, in the parent, before the workers start (only what is not cached:
    # each prepare_monitor call reloads the data set)
    model, info, dataset = prepare_model(cfg["key"], root)
    for k, t in monitors:
        path = monitor_path(root, cfg["key"], int(k), float(t), info["default_layer"])
        if not path.is_file():
            prepare_monitor(cfg["key"], root, n_clusters=int(k), tolerance=float(t))
    indices = select_correct(model, dataset, cfg["n"], seed).tolist()
    cfg["indices"] = indices
    cfg["monitors"] = [monitor_key(k, t) for k, t in monitors]
    cfg["tag"] = f"{cfg['key']}/{cfg['mode']}/n{cfg['n']}/s{seed}"
    atomic_write_json(exp_dir / "config.json", cfg)
    target = monitor_path(root, cfg["key"], *DEFAULT_MONITOR, info["default_layer"])
    refs = {"model_ref": file_ref(root / "models" / cfg["key"], base=out_dir, sha256=info["sha256"]),
            "monitor_ref": file_ref(target, base=out_dir)}  # fmt: skip
    jobs = []
    for attack in cfg["attacks"]:
        spec = get_spec(attack)
        for criterion in cfg["criteria"]:
            params = {
                "root": str(root), "key": cfg["key"], "monitors": monitors,
                "target_monitor": cfg["default_monitor"], "indices": indices,
                "attack": attack, "criterion": criterion, "epsilons": cfg["eps"][spec.norm],
                "budget": cfg["budget"], "attack_params": cfg["attack_params"].get(attack, {}),
                "seed": cfg["seed"], "pool_size": cfg["pool_size"], **refs,
            }  # fmt: skip
            key = f"{NAME}/{cfg['tag']}/{attack}/{criterion}"
            jobs.append(Job(key, params))
    run_campaign(jobs, _job, exp_dir / "rows.jsonl", n_jobs=n_jobs, scheduler=scheduler,
                 progress=progress, desc=NAME)  # fmt: skip
    return summarise(out_dir, models_root=models_root)


# ------------------------------------------------------------------------------ summary
def _cells(rows: list[dict]) -> list[dict]:
    """One cell per (attack, criterion, epsilon) with the counts per monitor. Counts are over
    the digits actually attacked (all of them, unless one already met the criterion)."""
    cells = []
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
            cells.append({
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
    return cells


def _fmt_eps(e) -> str:
    return "none" if e is None else f"{e:g}"


def summarise(out_dir, *, models_root=None) -> dict:
    """Tables, figures and summary.json from ``out_dir/adversarial/rows.jsonl`` only."""
    from boxhack.infra.jsonl import latest_by_key, read_rows

    exp_dir = Path(out_dir) / NAME
    cfg_path = exp_dir / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    latest = latest_by_key(read_rows(exp_dir / "rows.jsonl"))
    if cfg.get("tag"):  # only the configuration run last (a file may hold quick and full rows)
        wanted = {f"{NAME}/{cfg['tag']}/{a}/{c}" for a in cfg["attacks"] for c in cfg["criteria"]}
        latest = {k: r for k, r in latest.items() if k in wanted}
    rows_all = list(latest.values())
    rows = [r for r in rows_all if r.get("status") == "ok"]
    errors = [r for r in rows_all if r.get("status") != "ok"]
    if not rows:
        raise BoxhackError(f"{exp_dir / 'rows.jsonl'} has no finished rows; run the experiment first")
    order = {a: i for i, a in enumerate(FULL_ATTACKS)}
    cells = sorted(_cells(rows), key=lambda c: (CRITERIA.index(c["criterion"]),
                                                order.get(c["attack"], 99), c["epsilon"] or 0))
    monitors = list(rows[0]["result"]["per_eps"][0]["accepted"])
    n = rows[0]["result"]["n"]
    attacked = min(c["attacked"] for c in cells)
    dm = monitor_key(*DEFAULT_MONITOR)

    plain = [c for c in cells if c["criterion"] == "misclassify"]
    comb = {(c["attack"], c["epsilon"]): c for c in cells if c["criterion"] == "combined"}
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
        "rows": [],
    }  # fmt: skip
    for c in plain:
        cc = comb.get((c["attack"], c["epsilon"]))
        if cc is None:
            continue
        table_c["rows"].append([
            c["attack"], _fmt_eps(c["epsilon"]), c["flipped"], c["accepted"].get(dm),
            cc["accepted"].get(dm), _r(cc["median_l2"]), _r(cc["attack_s"], 1), cc["queries"],
        ])  # fmt: skip
    head = _pick(plain)
    figures = _figures(exp_dir, plain, comb, monitors, attacked)
    paper = _paper_claims(plain, head, monitors, dm, cfg.get("key", KEY))
    times = {r["result"]["attack"] + "/" + r["result"]["criterion"]: _r(r["wall_s"], 1)
             for r in rows}  # fmt: skip
    tables = [table8]
    if table_c["rows"]:
        tables.append(table_c)
    tables.append({"title": "Job wall times (s)", "columns": ["attack/criterion", "wall s"],
                   "rows": [[k, v] for k, v in times.items()]})
    eps_text = "; ".join(f"{NORM_NAMES.get(norm, norm)} {', '.join(_fmt_eps(e) for e in eps)}"
                         for norm, eps in (cfg.get("eps") or {}).items()
                         if any(c["norm"] == norm for c in cells))
    ks = sorted({int(m.split("-")[0][1:]) for m in monitors})
    tols = sorted({float(m.split("-tol")[1]) for m in monitors})
    already = max(c["already"] for c in cells)
    desc = (
        f"Foolbox attacks ({', '.join(dict.fromkeys(c['attack'] for c in cells))}) on the "
        f"{cfg.get('key', KEY)} MLP (monitored layer relu2) over {n} correctly classified test "
        f"digits (a seeded, class-balanced draw), at the budgets {eps_text} (Linf for "
        f"fgsm/pgd-linf/deepfool-linf, L2 otherwise; minimal and decision attacks run once and "
        f"are clipped to each budget; every budget holds exactly in float32); every adversarial "
        f"sample judged by monitors with {', '.join(map(str, ks))} box(es) per class x "
        f"tolerance {', '.join(f'{t:g}' for t in tols)}. 'combined' = the attack is given "
        f"'misclassified and accepted by {dm}' as its Foolbox criterion."
        + (f" {already} digit(s) already met a criterion and were not counted." if already else "")
    )
    summary = {
        "name": NAME,
        "title": TITLE,
        "description": desc,
        "config": {k: v for k, v in cfg.items() if k != "indices"} | {"n": n},
        "tables": tables,
        "figures": figures,
        "paper": paper,
        "timing": {"wall_s": float(sum(r["wall_s"] for r in rows_all)), "jobs": len(rows_all),
                   "errors": len(errors)},
    }  # fmt: skip
    if errors:
        summary["errors"] = [{"key": r["key"], "error": r.get("error")} for r in errors]
    atomic_write_json(exp_dir / "summary.json", summary)
    return summary


def _r(v, nd=3):
    return None if v is None else round(float(v), nd)


def _pick(cells):
    """Per attack, the cell at the headline budget of its norm (:data:`HEADLINE`) when it ran,
    else at its largest budget."""
    out = {}
    for c in cells:
        want = HEADLINE[c["norm"]]
        cur = out.get(c["attack"])
        if cur is None or (c["epsilon"] == want) or (cur["epsilon"] != want and
                                                     (c["epsilon"] or 0) > (cur["epsilon"] or 0)):
            out[c["attack"]] = c
    return out


def _budgets_text(head: dict) -> str:
    """The budgets the headline cells really are at, e.g. 'Linf 0.1, L2 3'."""
    by_norm: dict = {}
    for c in head.values():
        by_norm.setdefault(c["norm"], set()).add(_fmt_eps(c["epsilon"]))
    return ", ".join(f"{NORM_NAMES.get(k, k)} {'/'.join(sorted(v))}" for k, v in by_norm.items())


def _compare(a: float, b: float) -> int:
    """-1, 0 or 1: is ``a`` below, equal to or above ``b`` (NaN compares as equal)."""
    if not (np.isfinite(a) and np.isfinite(b)) or a == b:
        return 0
    return -1 if a < b else 1


def _paper_claims(plain, head, monitors, dm, key) -> list[dict]:
    if not plain:
        return []
    frac = [c["accepted"][dm] / c["flipped"] for c in head.values() if c["flipped"]]
    lines = ", ".join(f"{a} {c['accepted'][dm]}/{c['flipped']}" for a, c in head.items())
    if not frac:
        verdict = "Nothing flipped at these budgets, so nothing to compare. "
    elif min(frac) > 0.5:
        verdict = "Same trend: most flipped samples are accepted. "
    elif max(frac) > 0.5:
        verdict = "Partly: most flipped samples are accepted for some attacks, not for all. "
    else:
        verdict = "Differs: at these budgets most flipped samples are rejected. "
    claims = [{
        "claim": "One box per class, tolerance 0: most adversarial samples that flip the "
                 "prediction are accepted by the monitor",
        "measured": (f"flipped and accepted / flipped at {_budgets_text(head)}: {lines}; "
                     f"accepted share {min(frac):.0%}-{max(frac):.0%}" if frac else
                     f"no flips at {_budgets_text(head)}"),
        "note": (verdict + _budget_note(plain, dm)
                 + f"The paper states neither its budgets nor its network; ours is the zoo's "
                 f"{key} MLP, trained on 80% of the embedded 5,000-digit MNIST sample."),
    }]  # fmt: skip

    def mean_acc(m):
        vals = [c["accepted"][m] for c in plain if m in c["accepted"]]
        return float(np.mean(vals)) if vals else float("nan")

    def trend(ms):
        return ", ".join(f"{m}: {mean_acc(m):.1f}" for m in ms)

    ks = sorted({int(m.split("-")[0][1:]) for m in monitors if m.endswith("-tol0")})
    tols = sorted({float(m.split("-tol")[1]) for m in monitors if m.startswith("k1-")})
    if len(ks) > 1:
        k_ms = [monitor_key(k, 0.0) for k in ks]
        lo_k, hi_k = k_ms[0], k_ms[-1]
        fewer = sum(c["accepted"][hi_k] <= c["accepted"][lo_k] for c in plain)
        cmp = _compare(mean_acc(hi_k), mean_acc(lo_k))
        claims.append({
            "claim": "2 or 3 clusters per class reject more adversarial samples than 1",
            "measured": f"mean flipped-and-accepted per (attack, budget) cell, tolerance 0: "
                        f"{trend(k_ms)}; k={ks[-1]} accepts no more than k={ks[0]} in "
                        f"{fewer}/{len(plain)} cells",
            "note": {
                -1: "Same direction: smaller boxes cover less of the layer space, so fewer "
                    "adversarial vectors fall inside one of the predicted class's boxes.",
                0: f"No difference measured: k={ks[-1]} and k={ks[0]} accepted as many on "
                   f"average.",
                1: f"Differs: k={ks[-1]} accepted more adversarial samples than k={ks[0]} here.",
            }[cmp],
        })  # fmt: skip
    if len(tols) > 1:
        t_ms = [monitor_key(1, t) for t in tols]
        lo_t, hi_t = t_ms[0], t_ms[-1]
        more = sum(c["accepted"][hi_t] >= c["accepted"][lo_t] for c in plain)
        cmp = _compare(mean_acc(hi_t), mean_acc(lo_t))
        claims.append({
            "claim": "Tolerance 0.1 or 0.25 accepts more adversarial samples than tolerance 0",
            "measured": f"mean flipped-and-accepted per cell, k=1: {trend(t_ms)}; tolerance "
                        f"{tols[-1]:g} accepts at least as many as {tols[0]:g} in "
                        f"{more}/{len(plain)} cells",
            "note": ("Same direction (it must be: a widened box contains the tight one)."
                     if cmp > 0 else
                     "No increase measured (a widened box contains the tight one, so acceptance "
                     "cannot fall)."),
        })  # fmt: skip
    return claims


def _budget_note(plain, dm) -> str:
    """Where acceptance falls as the budget grows (a sample pushed further leaves the boxes)."""
    drops = []
    for attack in dict.fromkeys(c["attack"] for c in plain):
        mine = [c for c in plain if c["attack"] == attack and c["epsilon"] is not None]
        if len(mine) < 2:
            continue
        best = max(mine, key=lambda c: c["accepted"][dm])
        last = max(mine, key=lambda c: c["epsilon"])
        if last["accepted"][dm] < best["accepted"][dm] and last["flipped"] >= best["flipped"]:
            drops.append(f"{attack} {best['accepted'][dm]} at {best['epsilon']:g} -> "
                         f"{last['accepted'][dm]} at {last['epsilon']:g}")
    if not drops:
        return ""
    return ("Acceptance falls at larger budgets although at least as many samples flip ("
            + "; ".join(drops) + "): the samples are pushed out of the boxes, so a larger step is "
            "not a better attack on the monitor. ")


def _figures(exp_dir: Path, plain, comb, monitors, n) -> list[dict]:
    from boxhack.report.adversarial_figures import figure8_monitors, plot_figure8, plot_headline
    from boxhack.report.curves import save_png

    figures = []
    if plain:
        fig = plot_figure8(plain, monitors, n)
        save_png(fig, exp_dir / "figure8.png")
        shown = "; ".join(label for _, label, _ in figure8_monitors(monitors))
        figures.append({
            "path": "figure8.png",
            "caption": f"Figure 8: per attack and budget, how many of {n} digits were flipped "
                       f"(grey) and how many of those each monitor accepted ({shown}; k = boxes "
                       f"per class, tol = tolerance).",
        })  # fmt: skip
        head = _pick(plain)
        comb_head = {a: comb[(a, c["epsilon"])] for a, c in head.items()
                     if (a, c["epsilon"]) in comb}
        fig = plot_headline(head, comb_head, monitor_key(*DEFAULT_MONITOR), n)
        save_png(fig, exp_dir / "figure8_headline.png")
        figures.append({
            "path": "figure8_headline.png",
            "caption": f"Flipped vs flipped-and-accepted (k=1, tol 0) per attack at "
                       f"{_budgets_text(head)}"
                       + ("; hatched: the same attack at the same budget given the criterion "
                          "'misclassified and accepted'." if comb_head else "."),
        })  # fmt: skip
    return figures
