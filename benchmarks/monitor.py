"""Benchmark: monitor fit time and decisions per second, boxes and the abstraction family.

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

All three must agree on every decision.

Every abstraction (box, zone, octagon, mean-ball, pattern at gamma 0 and 2, convex hull), at
32 dims, k = 3 clusters, 10 classes, fitted on 10k vectors, is timed in the same run against a
straightforward per-sample Python implementation of the same definition in the reference's
style: per sample and cluster, boxes as ``reference_style`` above, zones/octagons in pure Python loops over box sides and pairs
with early exit (as the reference's ``contains``), balls by SciPy's ``euclidean`` (as the
reference; a pure Python sum is reported beside it), patterns as Python ints (a set lookup at
gamma 0, popcounts else; the reference builds a BDD), hulls by one HiGHS LP feasibility test
per sample and hull (as the reference's ``_inhull``). Query mixes: ``random`` (a random
predicted class, mostly rejected early), ``own`` (the class the query was drawn from, mostly
accepted: the full O(d^2) work) and, for the hull, ``inside`` (midpoints of neighbouring
training vectors: the LP path). The Python side is timed on a subsample (best of 3 runs)
and extrapolated, boxhack on all queries (best of 7 runs), both in process CPU time (on cores
shared with other jobs wall-clock swings 2x; wall-clock ratios are stored too); both must make
the same decisions on the subsample (the hull: disagreements are counted, its decisions being
exact only up to its LP tolerance).

Results go to ``benchmarks/results/monitor.json`` (or ``main(out_dir)``, written atomically)
and tables are printed. Run: ``python benchmarks/monitor.py [--quick]``.
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

from boxhack.infra.files import atomic_write_json
from boxhack.monitor import (
    BoxMonitor,
    ConvexHullMonitor,
    MeanBallMonitor,
    OctagonMonitor,
    PatternMonitor,
    ZoneMonitor,
)

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



# ----------------------------------------------------------------------------- the family
FAMILY_D, FAMILY_K, FAMILY_FIT = 32, 3, 10_000


def zone_reference(monitor, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per sample, per cluster: box sides then every pair, pure Python, early exit."""
    layer = monitor.layers_[0]
    sums = monitor.families == 2
    per_class = []
    for c in range(monitor.n_classes_):
        b = monitor.bounds(layer, c)
        per_class.append([tuple(b[k][i].tolist() for k in sorted(b)) for i in
                          range(len(b["box_lo"]))])
    out = np.zeros(len(x), dtype=bool)
    for r, v in enumerate(x.tolist()):
        d = len(v)
        for cl in per_class[pred[r]]:
            if sums:
                box_hi, box_lo, diff_hi, diff_lo, sum_hi, sum_lo = cl
            else:
                box_hi, box_lo, diff_hi, diff_lo = cl
            inside = all(box_lo[i] <= v[i] <= box_hi[i] for i in range(d))
            k = 0
            for i in range(d):
                if not inside:
                    break
                for j in range(i + 1, d):
                    t = v[i] - v[j]
                    if not diff_lo[k] <= t <= diff_hi[k]:
                        inside = False
                        break
                    if sums and not sum_lo[k] <= v[i] + v[j] <= sum_hi[k]:
                        inside = False
                        break
                    k += 1
            if inside:
                out[r] = True
                break
    return out


def ball_reference(monitor, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per sample, per ball: ``euclidean(centre, v) <= r'`` with SciPy, as the reference."""
    from scipy.spatial.distance import euclidean

    layer = monitor.layers_[0]
    centres = monitor.state_[layer]["center"].astype(np.float64)
    radius = np.sqrt(monitor.derived_[layer]["radius2"].astype(np.float64)).tolist()
    per_class = [[] for _ in range(monitor.n_classes_)]
    for b, c in enumerate(monitor.state_[layer]["cluster_class"].tolist()):
        per_class[c].append((centres[b], radius[b]))
    out = np.zeros(len(x), dtype=bool)
    for r, v in enumerate(x.astype(np.float64)):
        for ct, rr in per_class[pred[r]]:
            if euclidean(ct, v) <= rr:
                out[r] = True
                break
    return out


def ball_python_loop(monitor, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per sample, per ball: the squared distance in a pure Python loop against r'^2."""
    layer = monitor.layers_[0]
    centres = monitor.state_[layer]["center"].tolist()
    r2 = monitor.derived_[layer]["radius2"].tolist()
    per_class = [[] for _ in range(monitor.n_classes_)]
    for b, c in enumerate(monitor.state_[layer]["cluster_class"].tolist()):
        per_class[c].append((centres[b], r2[b]))
    out = np.zeros(len(x), dtype=bool)
    for r, v in enumerate(x.tolist()):
        for ct, rr in per_class[pred[r]]:
            if sum((a - b) ** 2 for a, b in zip(v, ct)) <= rr:
                out[r] = True
                break
    return out


def pattern_reference(monitor, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per sample: its on/off pattern as an int; gamma 0: a set lookup, else a loop over the
    class's patterns with a popcount."""
    from boxhack.monitor.pattern import unpack_patterns

    layer = monitor.layers_[0]
    st = monitor.state_[layer]
    d = monitor.dims_[layer]
    gamma = monitor.derived_[layer]["gamma"]
    bits = unpack_patterns(st["patterns"], d)
    weights = [1 << i for i in range(d)]
    ints = [sum(w for w, on in zip(weights, row) if on) for row in bits.tolist()]
    per_class = [[] for _ in range(monitor.n_classes_)]
    for value, c in zip(ints, st["pattern_class"].tolist()):
        per_class[c].append(value)
    sets = [set(p) for p in per_class]
    out = np.zeros(len(x), dtype=bool)
    for r, v in enumerate(x.tolist()):
        key = sum(w for w, t in zip(weights, v) if t > 0)
        c = pred[r]
        if gamma == 0:
            out[r] = key in sets[c]
        else:
            out[r] = any((key ^ p).bit_count() <= gamma for p in per_class[c])
    return out


def hull_reference(monitor, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per sample, per hull: one LP feasibility test (lambda >= 0, sum 1, P^T lambda = v)."""
    from scipy.optimize import linprog

    layer = monitor.layers_[0]
    st = monitor.state_[layer]
    offsets = np.concatenate([[0], np.cumsum(st["point_count"])])
    hulls = [[] for _ in range(monitor.n_classes_)]
    for b, c in enumerate(st["cluster_class"]):
        pts = st["points"][offsets[b]:offsets[b + 1]].astype(np.float64)
        hulls[c].append(np.vstack([pts.T, np.ones(len(pts))]))
    out = np.zeros(len(x), dtype=bool)
    for r, v in enumerate(x.astype(np.float64)):
        for a_eq in hulls[pred[r]]:
            res = linprog(np.zeros(a_eq.shape[1]), A_eq=a_eq, b_eq=np.append(v, 1.0),
                          bounds=(0, None), method="highs")
            if res.status == 0:
                out[r] = True
                break
    return out


REFERENCE_REPEATS = 3


def _best_cpu(fn, repeats: int, warm: bool = True) -> tuple[float, float, object]:
    """``(best CPU seconds, best wall seconds, result)`` over ``repeats`` runs (after one
    warm-up run when ``warm``). CPU time is the process's: on cores shared with other jobs it
    counts only the time this process ran, which wall-clock does not (a 10 ms run loses
    whole scheduler slices); with parallel kernels it sums the threads (conservative)."""
    result = fn() if warm else None
    cpu = wall = float("inf")
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        result = fn()
        cpu = min(cpu, time.process_time() - c0)
        wall = min(wall, time.perf_counter() - w0)
    return cpu, wall, result


def _family_cases(quick: bool):
    """(name, monitor factory, reference-style loop, queries, reference samples, extra
    baselines {name: (loop, samples)})."""
    n = 20_000 if quick else 100_000
    return [
        ("box", lambda: BoxMonitor(n_clusters=FAMILY_K), reference_style_loop, n, 1000,
         {"python_loop": (python_loop, 2000)}),
        ("zone", lambda: ZoneMonitor(n_clusters=FAMILY_K), zone_reference, n, 300, {}),
        ("octagon", lambda: OctagonMonitor(n_clusters=FAMILY_K), zone_reference, n, 300, {}),
        ("ball", lambda: MeanBallMonitor(n_clusters=FAMILY_K), ball_reference, n, 1000,
         {"python_loop": (ball_python_loop, 2000)}),
        ("pattern (gamma 0)", lambda: PatternMonitor(gamma=0), pattern_reference, n, 2000, {}),
        ("pattern (gamma 2)", lambda: PatternMonitor(gamma=2), pattern_reference, n, 300, {}),
        ("hull", lambda: ConvexHullMonitor(n_clusters=FAMILY_K), hull_reference,
         200 if quick else 1000, 20 if quick else 40, {}),
    ]


def _midpoints(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Midpoints of training vectors and their nearest same-class neighbour (mostly inside a
    hull of their class), with that class."""
    rng = np.random.default_rng(4)
    idx = rng.integers(0, len(x), n)
    out = np.empty((n, x.shape[1]), np.float32)
    for r, i in enumerate(idx):
        same = np.flatnonzero(y == y[i])
        dist = ((x[same] - x[i]) ** 2).sum(1)
        dist[same == i] = np.inf
        out[r] = (x[i] + x[same[dist.argmin()]]) / 2
    return out, y[idx]


def run_family(quick: bool = False, repeats: int = 7, only: str | None = None) -> list[dict]:
    rows = []
    d = FAMILY_D
    cases = _family_cases(quick)
    x_all, y_all = _data(FAMILY_FIT + max(c[3] for c in cases), d, seed=1)
    if only is not None:
        cases = [c for c in cases if c[0] == only]
    # one draw, split: the queries come from the same classes and modes as the fitted vectors
    x_fit, y_fit = x_all[:FAMILY_FIT], y_all[:FAMILY_FIT]
    for name, make, reference, n, m_ref, extra in cases:
        t0 = time.perf_counter()
        monitor = make().fit_features(x_fit, y_fit)
        fit_s = time.perf_counter() - t0
        monitor.accepts_features(x_fit[:50], y_fit[:50])  # compiled kernels loaded
        x_q, y_q = x_all[FAMILY_FIT:FAMILY_FIT + n], y_all[FAMILY_FIT:FAMILY_FIT + n]
        mixes = {"random": (x_q, np.random.default_rng(3).integers(0, N_CLASSES, n)),
                 "own": (x_q, y_q)}
        if name == "hull":  # in 32 dims fresh vectors are outside every hull: add inside ones
            mixes["inside"] = _midpoints(x_fit, y_fit, n)
        for mix, (x_q, pred) in mixes.items():
            pred = np.asarray(pred, dtype=np.int64)
            # both sides best-of-N: on shared cores any single run may lose a scheduler slice
            reps = 1 if name == "hull" else repeats
            lps = getattr(monitor, "lp_calls", None)
            t_fast, w_fast, acc = _best_cpu(
                lambda m=monitor, q=x_q, p=pred: m.accepts_features(q, p), reps)
            t_ref, w_ref, acc_ref = _best_cpu(
                lambda m=monitor, q=x_q[:m_ref], p=pred[:m_ref], f=reference: f(m, q, p),
                REFERENCE_REPEATS, warm=False)
            t_ref, w_ref = t_ref * n / m_ref, w_ref * n / m_ref
            disagree = int((acc_ref != acc[:m_ref]).sum())
            if disagree and name != "hull":
                raise SystemExit(f"{name} ({mix}): {disagree} decisions disagree with the "
                                 f"reference-style implementation")
            others = {}
            for other, (loop, m_other) in extra.items():
                t_other, _, acc_o = _best_cpu(
                    lambda m=monitor, q=x_q[:m_other], p=pred[:m_other], f=loop: f(m, q, p),
                    REFERENCE_REPEATS, warm=False)
                t_other *= n / m_other
                if not np.array_equal(acc_o, acc[:m_other]):
                    raise SystemExit(f"{name} ({mix}): {other} disagrees")
                others[f"{other}_decisions_per_s"] = n / t_other
                others[f"speedup_vs_{other}"] = t_other / t_fast
            rows.append({
                **others,
                "abstraction": name, "mix": mix, "n": n, "d": d, "k": FAMILY_K,
                "classes": N_CLASSES, "fit_vectors": FAMILY_FIT, "fit_s": round(fit_s, 4),
                "clock": "process CPU time (best of runs)",
                "boxhack_s": t_fast, "boxhack_decisions_per_s": n / t_fast,
                "reference_style_decisions_per_s": n / t_ref,
                "boxhack_wall_decisions_per_s": n / w_fast,
                "reference_style_wall_decisions_per_s": n / w_ref,
                "speedup_wall_clock": w_ref / w_fast,
                "reference_style_samples_timed": m_ref,
                "speedup_vs_reference_style": t_ref / t_fast,
                "accepted_fraction": float(acc.mean()),
                "reference_disagreements": disagree,
                # the hull: LPs its decisions solved (the rest: exact checks without an LP)
                **({} if lps is None else {"lp_calls": monitor.lp_calls - lps}),
                "summary": monitor.summary()["layer_state"],
            })  # fmt: skip
            print(f"  {name:<18} {mix:<7} {n / t_fast:>12,.0f}/s vs {n / t_ref:>10,.0f}/s "
                  f"= {t_ref / t_fast:>7.0f}x (accepted {acc.mean():.2f}) {others}",
                  file=sys.stderr)
    return rows


def print_family(rows: list[dict]) -> None:
    head = (f"{'abstraction':<18} {'mix':<7} {'n':>7} {'fit s':>7} {'boxhack /s':>12} "
            f"{'reference /s':>13} {'speedup':>8} {'accepted':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['abstraction']:<18} {r['mix']:<7} {r['n']:>7} {r['fit_s']:>7.2f} "
              f"{r['boxhack_decisions_per_s']:>12,.0f} {r['reference_style_decisions_per_s']:>13,.0f} "
              f"{r['speedup_vs_reference_style']:>7.0f}x {r['accepted_fraction']:>8.2f}"
              + "".join(f"  ({k[len('speedup_vs_'):]}: {v:.0f}x)" for k, v in r.items()
                        if k.startswith("speedup_vs_") and k != "speedup_vs_reference_style"))


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
    result["abstractions"] = run_family(quick=quick, repeats=7)
    result["quick"] = quick
    out_dir.mkdir(parents=True, exist_ok=True)
    path = atomic_write_json(out_dir / "monitor.json", result, indent=2)
    print_table(result)
    print()
    print_family(result["abstractions"])
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    parser.add_argument("--quick", action="store_true", help="10k vectors only")
    parser.add_argument("--family-only", action="store_true",
                        help="only the abstraction family (the box rows are left out)")
    parser.add_argument("--only", default=None, metavar="NAME",
                        help="only this abstraction of the family (e.g. hull); its rows replace "
                             "those in OUT/monitor.json, the others are kept")
    args = parser.parse_args()
    if args.only:
        path = (Path(args.out) if args.out else Path(__file__).resolve().parent / "results")
        path = path / "monitor.json"
        result = json.loads(path.read_text())
        if bool(result.get("quick")) != args.quick:
            raise SystemExit(f"{path} was written with quick={result.get('quick')}; "
                             "rerun with the same --quick")
        new = run_family(quick=args.quick, only=args.only)
        result["abstractions"] = ([r for r in result["abstractions"]
                                   if r["abstraction"] != args.only] + new)
        atomic_write_json(path, result, indent=2)
        print_family(new)
    else:
        main(args.out, quick=args.quick)
