"""The networks' accuracy and the monitor's novelty detection (the premise the paper attacks).

Before attacking Outside-the-Box monitors, check that they do what they are for: a network
trained on MNIST digits 0-4 is monitored at its ``relu2`` layer by box monitors with k = 1, 2, 3
boxes per class and tolerance 0, 0.1, 0.25; each is evaluated (:func:`boxhack.monitor.evaluation.
evaluate_novelty`) on the held-out known digits 0-4 and on novel digits 5-9: acceptance of correct
predictions (1 - false-warning rate), detection of misclassifications, novelty detection rate and
AUROC of the graded score. The full run adds the elbow-rule monitor (threshold 0.07, as in the
Outside-the-Box experiments). The same experiment records the test accuracy of every network
the paper's experiments use.

Declared as :data:`EXPERIMENT` (:mod:`boxhack.experiments.spec`): one campaign job per network
(accuracy) and per monitor configuration (novelty metrics, graded scores for the ROC curves, and
a few novel digits the monitor accepts or rejects), so the figures
(:mod:`boxhack.report.novelty`) are redrawn from ``rows.jsonl`` alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from boxhack.data import load_dataset
from boxhack.errors import BoxhackError
from boxhack.experiments.prepared import (
    PAPER_NETWORKS,
    monitor_path,
    prepare_model,
    prepare_monitor,
)
from boxhack.experiments.spec import Experiment, Option, RunContext, Settings
from boxhack.infra.campaign import Job
from boxhack.models.train import accuracy
from boxhack.models.zoo import net_spec
from boxhack.monitor import BoxMonitor
from boxhack.monitor.evaluation import evaluate_novelty

__all__ = ["EXPERIMENT", "KNOWN_NETWORK", "NAME", "NETWORKS", "job", "k_label", "make_jobs"]

NAME = "novelty"
TITLE = "The networks and the monitor's novelty detection (Outside the Box)"

NETWORKS = ("xor", "tanh", "mnist2", "mnist3", "mnist10", "mnist0-4")
KNOWN_NETWORK = "mnist0-4"
CLUSTERS: tuple[int | None, ...] = (1, 2, 3)
TOLERANCES = (0.0, 0.1, 0.25)
ELBOW_THRESHOLD = 0.07  # the elbow rule's threshold (k = None), as in Outside the Box
N_EXAMPLES = 8  # novel digits shown accepted / rejected (k = 1, tolerance 0)

_CACHE: dict[tuple, Any] = {}  # per worker process: loaded models / monitors / data


def k_label(k: int | None) -> str:
    return "elbow" if k is None else str(k)


# ------------------------------------------------------------------------------ configuration


def _check_grid(networks, clusters, tolerances) -> tuple[list[str], list[int | None], list[float]]:
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


def configure(settings: Settings, options: Mapping[str, Any]) -> dict[str, Any]:
    """The grid: accuracy of ``networks`` (the digits 0-4 network always), monitors of every
    (k, tolerance), plus the elbow-rule monitor with ``elbow`` (default: not in quick mode)."""
    networks, clusters, tols = _check_grid(options["networks"], options["clusters"],
                                           options["tolerances"])  # fmt: skip
    if KNOWN_NETWORK not in networks:
        networks.append(KNOWN_NETWORK)
    monitors: list[list] = [[k, t] for k in clusters for t in tols]
    if options["elbow"] and [None, 0.0] not in monitors:
        monitors.append([None, 0.0])
    return {
        "quick": settings.quick,
        "seed": settings.seed,
        "networks": networks,
        "monitors": monitors,
        "layer": net_spec(PAPER_NETWORKS[KNOWN_NETWORK][0]).default_layer,
    }


def make_jobs(
    models_root: str | Path,
    *,
    seed: int = 0,
    networks: Sequence[str] = NETWORKS,
    monitors: Sequence[Sequence] = (),
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
            f"{NAME}/monitor/{KNOWN_NETWORK}/{layer}/k{k_label(k)}/tol{tol:g}/seed{seed}",
            {"task": "monitor", "network": KNOWN_NETWORK, "layer": layer, "n_clusters": k,
             "tolerance": tol, "models_root": root, "seed": seed, "examples": examples},
        ))
    return jobs


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with one torch thread and one BLAS/OpenMP thread, then restore them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def plan(config: dict[str, Any], ctx: RunContext) -> tuple[dict[str, Any], list[Job]]:
    """Train / fit once here, in the parent; the jobs only load from the cache.

    What is cached already is not loaded here (loading the embedded MNIST sample takes
    seconds). One thread, as in the campaign's workers: the weights then do not depend on which
    process trained them, and small networks train much faster than with threads competing for
    2 cores.
    """
    root, seed, layer = ctx.models_root, config["seed"], config["layer"]
    with single_thread():
        for net in config["networks"]:
            if not (root / "models" / net / "model.json").is_file():
                prepare_model(net, root, seed=seed)
        for k, tol in config["monitors"]:
            if not monitor_path(root, KNOWN_NETWORK, k, tol, layer).is_file():
                prepare_monitor(KNOWN_NETWORK, root, n_clusters=k, tolerance=tol, layer=layer,
                                seed=seed)
    jobs = make_jobs(root, seed=seed, networks=config["networks"], monitors=config["monitors"],
                     layer=layer)  # fmt: skip
    return config, jobs


# ------------------------------------------------------------------------------ the job


def _model(net: str, root: str, seed: int):
    key = ("model", net, root, seed)
    if key not in _CACHE:
        _CACHE[key] = prepare_model(net, root, seed=seed)
    return _CACHE[key]


def _monitor(net: str, root: str, k, tol: float, layer: str, seed: int):
    key = ("monitor", net, root, k, tol, layer, seed)
    if key not in _CACHE:
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
        novel = [d for d in range(10) if d not in set(classes)]
        ds = load_dataset("mnist", novel, split_seed=split_seed)
        digits = np.asarray(ds.classes, dtype=np.int64)[ds.y_test]
        _CACHE[key] = (ds.x_test, digits, novel)
    return _CACHE[key]


def _parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _accuracy_job(p: dict[str, Any]) -> dict[str, Any]:
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
        out["examples"] = _examples(n, x_novel, novel_digits, novel_classes, ds.classes, pred_n,
                                    acc_n, score_n)  # fmt: skip
    return out


def _examples(n, x_novel, novel_digits, novel_classes, classes, pred_n, acc_n, score_n) -> list:
    """Up to ``n`` accepted and ``n`` rejected novel digits, spread over the digits (the first
    of each digit, then the second, ...), with their pixels as 0-255 integers (compact, and
    exactly what the figure draws)."""
    shown = []
    for accepted in (True, False):
        idx = np.flatnonzero(acc_n == accepted)
        rank = np.zeros(len(idx), np.int64)
        for dg in novel_classes:
            sel = novel_digits[idx] == dg
            rank[sel] = np.arange(int(sel.sum()))
        idx = idx[np.lexsort((novel_digits[idx], rank))][:n]
        for i in idx:
            shown.append({
                "digit": int(novel_digits[i]),
                "predicted": int(classes[int(pred_n[i])]),
                "accepted": bool(accepted),
                "score": _round([score_n[i]])[0],
                "pixels": np.rint(x_novel[i].reshape(-1) * 255).astype(np.int64).tolist(),
                "shape": list(x_novel[i].shape[-2:]),
            })
    return shown


def job(params: dict[str, Any]) -> dict[str, Any]:
    """The campaign's job function (top level, so worker processes can import it)."""
    task = params.get("task")
    if task == "accuracy":
        return _accuracy_job(params)
    if task == "monitor":
        return _monitor_job(params)
    raise BoxhackError(f"novelty: unknown task {task!r}")


# ------------------------------------------------------------------------------ summary data


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _monitor_order(row: dict[str, Any]) -> tuple:
    k = row["params"]["n_clusters"]
    return (k is None, k or 0, row["params"]["tolerance"])


def split_rows(rows: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """``(accuracy rows, monitor rows)`` of the successful jobs, in display order (networks
    as in :data:`NETWORKS`; monitors by k, the elbow rule last, then tolerance)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    order = {n: i for i, n in enumerate(NETWORKS)}
    acc = sorted((r for r in ok if r["params"].get("task") == "accuracy"),
                 key=lambda r: order.get(r["params"]["network"], 99))  # fmt: skip
    mon = sorted((r for r in ok if r["params"].get("task") == "monitor"), key=_monitor_order)
    return acc, mon


def _classes_text(res: dict[str, Any]) -> str:
    cls = res.get("classes") or []
    if res.get("dataset") != "mnist":
        return f"{res.get('dataset')} ({len(cls)} classes)"
    if cls == list(range(cls[0], cls[-1] + 1)) and len(cls) > 2:
        return f"digits {cls[0]}-{cls[-1]}"
    return "digits " + ",".join(map(str, cls))


def _accuracy_table(acc_rows: list[dict]) -> dict[str, Any]:
    return {
        "title": "The networks (embedded data, seeded 80/20 split)",
        "columns": ["network", "architecture", "classes", "parameters", "train inputs",
                    "test inputs", "train accuracy", "test accuracy", "training time (s)"],
        "rows": [[r["params"]["network"], r["result"]["architecture"],
                  _classes_text(r["result"]), r["result"]["parameters"],
                  r["result"]["n_train"], r["result"]["n_test"],
                  _pct(r["result"]["train_accuracy"]), _pct(r["result"]["test_accuracy"]),
                  r["result"].get("train_s", r["result"].get("train_seconds"))]
                 for r in acc_rows],
    }  # fmt: skip


def _monitor_tables(mon_rows: list[dict]) -> list[dict[str, Any]]:
    layer = mon_rows[0]["result"]["layer"]
    first = mon_rows[0]["result"]["novel_accepted_by_digit"]
    return [{
        "title": f"Novelty detection: {KNOWN_NETWORK} network, layer {layer}, known digits "
                 f"0-4 (test split) vs novel digits 5-9",
        "columns": ["clusters k", "tolerance", "boxes", "accuracy", "correct accepted",
                    "false warnings", "misclassified rejected", "novel rejected",
                    "AUROC (novel vs correct)"],
        "rows": [[k_label(r["params"]["n_clusters"]), r["params"]["tolerance"],
                  r["result"]["n_boxes"], _pct(r["result"]["metrics"]["accuracy"]),
                  _pct(r["result"]["metrics"]["acceptance_rate"]),
                  _pct(r["result"]["metrics"]["false_warning_rate"]),
                  _pct(r["result"]["metrics"]["detection_rate"]),
                  _pct(r["result"]["metrics"]["novelty_detection_rate"]),
                  r["result"]["metrics"]["auroc"]] for r in mon_rows],
    }, {
        "title": "Novel digits accepted, per digit (tolerance 0)",
        "columns": ["clusters k", *[f"digit {dg}" for dg in first]],
        "rows": [[k_label(r["params"]["n_clusters"]),
                  *[f"{a}/{n}" for a, n in r["result"]["novel_accepted_by_digit"].values()]]
                 for r in mon_rows if r["params"]["tolerance"] == 0.0],
    }]  # fmt: skip


def _shown_config(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The grid as the rows record it (what the report shows as the configuration)."""
    params = [r.get("params") or {} for r in rows]
    mon = [p for p in params if p.get("task") == "monitor"]
    ks = sorted({p["n_clusters"] for p in mon}, key=lambda k: (k is None, k or 0))
    return {
        "seed": sorted({p.get("seed") for p in params}),
        "networks (accuracy)": [p["network"] for p in params if p.get("task") == "accuracy"],
        "known network": KNOWN_NETWORK,
        "known / novel classes": "digits 0-4 / digits 5-9 (test split)",
        "monitored layer": sorted({p["layer"] for p in mon}),
        "clusters per class": [k_label(k) for k in ks],
        "tolerances (relative)": sorted({p["tolerance"] for p in mon}),
        "elbow threshold (k = elbow)": ELBOW_THRESHOLD if None in ks else None,
        "jobs": len(rows),
    }


def summarise(config: dict[str, Any], rows: list[dict[str, Any]], ctx: RunContext) -> dict:
    """Tables and numbers from the rows alone: ``tables``, ``config`` (the grid the rows
    record), ``accuracy`` (``[{network, test_accuracy}]``) and ``monitors`` (``[{k,
    tolerance, metrics}]``, k ``None`` for the elbow rule), in display order."""
    if not rows:
        raise BoxhackError(f"{ctx.exp_dir(NAME) / 'rows.jsonl'} holds no rows of this "
                           f"configuration; run the novelty experiment first")
    acc_rows, mon_rows = split_rows(rows)
    tables = ([_accuracy_table(acc_rows)] if acc_rows else []) + (
        _monitor_tables(mon_rows) if mon_rows else [])
    return {
        "config": _shown_config(rows),
        "tables": tables,
        "accuracy": [{"network": r["params"]["network"],
                      "test_accuracy": r["result"]["test_accuracy"]} for r in acc_rows],
        "monitors": [{"k": r["params"]["n_clusters"], "tolerance": r["params"]["tolerance"],
                      "metrics": r["result"]["metrics"]} for r in mon_rows],
    }  # fmt: skip


EXPERIMENT = Experiment(
    name=NAME,
    title=TITLE,
    description=(
        "Test accuracy of every network the experiments use, and how well box monitors of "
        "the digits 0-4 network (k = 1, 2, 3 boxes per class x tolerance 0, 0.1, 0.25, plus "
        "the elbow rule outside quick mode) tell novel digits 5-9 from known ones. Writes "
        "OUT/novelty/rows.jsonl (resumable), summary.json, novelty_rates.png, novelty_roc.png "
        "and novelty_examples.png."
    ),
    options=(
        Option("networks", "list", list(NETWORKS), "networks whose accuracy is measured "
               f"({KNOWN_NETWORK}, the monitored one, is always added)",
               choices=tuple(PAPER_NETWORKS)),
        Option("clusters", "list", list(CLUSTERS), "boxes per class k of the monitors",
               item=int, minimum=1),
        Option("tolerances", "list", list(TOLERANCES), "relative tolerances of the monitors",
               item=float, minimum=0),
        Option("elbow", bool, True, "add the elbow-rule monitor (threshold "
               f"{ELBOW_THRESHOLD}, tolerance 0)", quick=False),
    ),
    configure=configure,
    plan=plan,
    job=job,
    summarise=summarise,
)
