"""Benchmark: BoxMonitor fit time and decisions per second.

For N in {10k, 100k} query vectors x d in {32, 512} dims x k in {1, 3} boxes per class,
10 classes, float32, it times in the same run:

- ``fit``: BoxMonitor(n_clusters=k).fit_features on N training vectors;
- ``boxhack``: BoxMonitor.accepts_features on N query vectors (best of several runs);
- ``torch_broadcast``: a plain batched torch broadcast (gather each row's boxes, compare,
  all/any), in 16k-row batches;
- ``python_loop``: a plain per-sample Python loop with numpy comparisons per box, timed on a
  subsample and extrapolated;
- ``reference_style``: pure Python loops over samples, boxes and dimensions (with early exit),
  as older research code does it, timed on a subsample and extrapolated.

All three must agree on every decision. Results go to ``benchmarks/results/monitor.json``
(or ``main(out_dir)``) and a table is printed. Run: ``python benchmarks/monitor.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from boxhack.monitor import BoxMonitor

N_CLASSES = 10
LOOP_SAMPLES = 2000
REFERENCE_SAMPLES = 1000


def _data(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Post-ReLU-like features: 10 classes, 3 Gaussian modes each, some dead units."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 2.0, size=(N_CLASSES, 3, d))
    labels = rng.integers(0, N_CLASSES, n)
    modes = rng.integers(0, 3, n)
    x = centers[labels, modes] + rng.normal(0.0, 1.0, size=(n, d))
    return np.maximum(x, 0.0).astype(np.float32), labels.astype(np.int64)


def _best(fn, repeats: int) -> tuple[float, object]:
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def torch_broadcast(monitor: BoxMonitor, x: np.ndarray, pred: np.ndarray, batch: int = 16384):
    """The plain batched torch way: gather the predicted class's boxes per row and compare."""
    layer = monitor.layers_[0]
    lo, hi, _ = monitor._padded(layer)
    xt, pt = torch.from_numpy(x), torch.from_numpy(pred)
    out = []
    for s in range(0, len(x), batch):
        v = xt[s : s + batch, None, :]
        p = pt[s : s + batch]
        out.append(((v >= lo[p]) & (v <= hi[p])).all(-1).any(-1))
    return torch.cat(out).numpy()


def python_loop(monitor: BoxMonitor, x: np.ndarray, pred: np.ndarray):
    """The plain per-sample loop: for each row, for each box of its class, compare."""
    layer = monitor.layers_[0]
    per_class = [monitor.boxes(layer, c) for c in range(monitor.n_classes_)]
    out = np.zeros(len(x), dtype=bool)
    for i in range(len(x)):
        v = x[i]
        lo, hi = per_class[pred[i]]
        for b in range(len(lo)):
            if np.all(lo[b] <= v) and np.all(v <= hi[b]):
                out[i] = True
                break
    return out


def reference_style_loop(monitor: BoxMonitor, x: np.ndarray, pred: np.ndarray):
    """Pure Python, as older research code does it: per sample, per box, per dimension."""
    layer = monitor.layers_[0]
    per_class = [
        [(lo.tolist(), hi.tolist()) for lo, hi in zip(*monitor.boxes(layer, c))]
        for c in range(monitor.n_classes_)
    ]
    out = np.zeros(len(x), dtype=bool)
    for i, v in enumerate(x.tolist()):
        for lo, hi in per_class[pred[i]]:
            inside = True
            for j, vj in enumerate(v):
                if not lo[j] <= vj <= hi[j]:
                    inside = False
                    break
            if inside:
                out[i] = True
                break
    return out


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def run(sizes=(10_000, 100_000), dims=(32, 512), ks=(1, 3), repeats: int = 5) -> dict:
    rows = []
    # warm-up: imports (scikit-learn's k-means) and first-call costs stay out of the timings
    xw, yw = _data(200, 8, seed=0)
    BoxMonitor(n_clusters=2).fit_features(xw, yw).accepts_features(xw, yw)
    for d in dims:
        for n in sizes:
            x_fit, y_fit = _data(n, d, seed=1)
            x_q, _ = _data(n, d, seed=2)
            pred = np.random.default_rng(3).integers(0, N_CLASSES, n).astype(np.int64)
            for k in ks:
                t0 = time.perf_counter()
                monitor = BoxMonitor(n_clusters=k, seed=0).fit_features(x_fit, y_fit)
                fit_s = time.perf_counter() - t0
                t_fast, acc = _best(lambda m=monitor, q=x_q, p=pred: m.accepts_features(q, p), repeats)
                t_torch, acc_t = _best(
                    lambda m=monitor, q=x_q, p=pred: torch_broadcast(m, q, p), max(1, repeats // 2)
                )
                m = min(LOOP_SAMPLES, n)
                t0 = time.perf_counter()
                acc_l = python_loop(monitor, x_q[:m], pred[:m])
                t_loop = (time.perf_counter() - t0) * (n / m)
                m_ref = min(REFERENCE_SAMPLES, n)
                t0 = time.perf_counter()
                acc_r = reference_style_loop(monitor, x_q[:m_ref], pred[:m_ref])
                t_ref = (time.perf_counter() - t0) * (n / m_ref)
                if not (np.array_equal(acc, acc_t) and np.array_equal(acc[:m], acc_l)
                        and np.array_equal(acc[:m_ref], acc_r)):
                    raise SystemExit(f"decisions disagree at n={n} d={d} k={k}")
                rows.append({
                    "n": n, "d": d, "k": k, "classes": N_CLASSES,
                    "boxes": len(monitor.box_class_[monitor.layers_[0]]),
                    "fit_s": round(fit_s, 4),
                    "boxhack_s": t_fast,
                    "boxhack_decisions_per_s": n / t_fast,
                    "torch_broadcast_decisions_per_s": n / t_torch,
                    "python_loop_decisions_per_s": n / t_loop,
                    "python_loop_samples_timed": m,
                    "reference_style_decisions_per_s": n / t_ref,
                    "reference_style_samples_timed": m_ref,
                    "speedup_vs_reference_style": t_ref / t_fast,
                    "speedup_vs_torch_broadcast": t_torch / t_fast,
                    "speedup_vs_python_loop": t_loop / t_fast,
                    "accepted_fraction": float(acc.mean()),
                })  # fmt: skip
    return {"machine": machine_info(), "rows": rows}


def print_table(result: dict) -> None:
    head = f"{'n':>7} {'d':>4} {'k':>2} {'fit s':>7} {'boxhack M/s':>12} {'torch M/s':>10} " \
           f"{'loop M/s':>9} {'ref M/s':>8} {'x torch':>8} {'x loop':>7} {'x ref':>6}"
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        print(f"{r['n']:>7} {r['d']:>4} {r['k']:>2} {r['fit_s']:>7.2f} "
              f"{r['boxhack_decisions_per_s'] / 1e6:>12.2f} "
              f"{r['torch_broadcast_decisions_per_s'] / 1e6:>10.2f} "
              f"{r['python_loop_decisions_per_s'] / 1e6:>9.3f} "
              f"{r['reference_style_decisions_per_s'] / 1e6:>8.3f} "
              f"{r['speedup_vs_torch_broadcast']:>8.1f} {r['speedup_vs_python_loop']:>7.0f} "
              f"{r['speedup_vs_reference_style']:>6.0f}")
    m = result["machine"]
    print(f"({m['cpu']}, {m['usable_cpus'] or m['cpu_count']} usable cores, torch {m['torch']} "
          f"with {m['torch_threads']} threads, load average {m.get('load_average_at_start')})")


def main(out_dir: str | Path | None = None, *, quick: bool = False) -> dict:
    out_dir = Path(out_dir) if out_dir is not None else Path(__file__).resolve().parent / "results"
    result = run(sizes=(10_000,) if quick else (10_000, 100_000), repeats=3 if quick else 5)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "monitor.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    parser.add_argument("--quick", action="store_true", help="10k vectors only")
    args = parser.parse_args()
    main(args.out, quick=args.quick)
