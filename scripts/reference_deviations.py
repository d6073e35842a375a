"""Measure where the reference Outside-the-Box abstractions deviate from their intended
semantics, next to boxhack's implementation (docs/abstractions.md).

One class, 4-d standard Gaussian training vectors (200, sigma 1.0), 2,000 fresh vectors with
sigma 1.3 (some novel), one cluster, tolerance 0 and 0.5, relative and absolute. For each
abstraction it prints the share of fresh (and training) vectors accepted by

- ``boxhack``: the monitors of this package (the intended semantics of ABSTRACTIONS.md);
- ``reference rule``: the acceptance rule of the reference implementation, re-implemented
  here from its described behaviour (not its code): relative pair tolerance
  ``|max + min| / 2 * eps`` instead of ``(max - min) / 2 * eps`` (the zone's box sides too,
  which it stores in the same matrix); absolute-mode octagon pair checks with the lower
  bound's sign flipped (``-min - eps <= value``).

Run: ``PYTHONPATH=src python scripts/reference_deviations.py [--seed N]``. Pure computation,
a few seconds; prints a table and, with ``--json PATH``, writes the numbers (atomically).
"""

from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np

from boxhack.monitor import BoxMonitor, MeanBallMonitor, OctagonMonitor, ZoneMonitor


def data(seed: int, d: int = 4, n_train: int = 200, n_fresh: int = 2000):
    rng = np.random.default_rng(seed)
    train = rng.normal(0.0, 1.0, size=(n_train, d)).astype(np.float32)
    fresh = rng.normal(0.0, 1.3, size=(n_fresh, d)).astype(np.float32)
    return train, fresh


def _intervals(train: np.ndarray, op):
    d = train.shape[1]
    x = train.astype(np.float64)
    return {(i, j): (op(x[:, i], x[:, j]).min(), op(x[:, i], x[:, j]).max())
            for i, j in itertools.combinations(range(d), 2)}


def reference_rule(kind: str, train: np.ndarray, q: np.ndarray, eps: float,
                   relative: bool) -> np.ndarray:
    """Acceptance by the reference implementation's rules (box, zone, octagon; one set)."""
    x = train.astype(np.float64)
    v = q.astype(np.float64)
    lo, hi = x.min(0), x.max(0)
    diffs = _intervals(train, np.subtract)
    sums = _intervals(train, np.add)

    def widen_box(a, b):  # correct in every abstraction but the zone (relative)
        pad = (b - a) / 2 * eps if relative else eps
        return a - pad, b + pad

    def pair_ok(values, a, b, sign_bug=False):
        if relative:  # the deviation: |max + min| instead of (max - min)
            pad = abs(b + a) / 2 * eps
            return (a - pad <= values) & (values <= b + pad)
        if sign_bug:  # absolute octagon: lower bound written as -min - eps
            return (-a - eps <= values) & (values <= b + eps)
        return (a - eps <= values) & (values <= b + eps)

    if kind == "zone" and relative:  # box sides live in the DBM: same |max + min| rule
        pad = np.abs(hi + lo) / 2 * eps
        ok = ((lo - pad <= v) & (v <= hi + pad)).all(1)
    else:
        blo, bhi = widen_box(lo, hi)
        ok = ((blo <= v) & (v <= bhi)).all(1)
    if kind == "box":
        return ok
    octagon = kind == "octagon"  # its absolute-mode pair checks (differences and sums)
    for (i, j), (a, b) in diffs.items():
        ok &= pair_ok(v[:, i] - v[:, j], a, b, sign_bug=octagon)
    if octagon:
        for (i, j), (a, b) in sums.items():
            ok &= pair_ok(v[:, i] + v[:, j], a, b, sign_bug=True)
    return ok


def ours(kind: str, train: np.ndarray, q: np.ndarray, eps: float, relative: bool):
    cls = {"box": BoxMonitor, "zone": ZoneMonitor, "octagon": OctagonMonitor,
           "ball": MeanBallMonitor}[kind]
    m = cls(n_clusters=1, tolerance=eps, relative_tolerance=relative)
    m.fit_features(train, np.zeros(len(train), np.int64))
    return m.accepts_features(q, np.zeros(len(q), np.int64))


def ball_reference(train: np.ndarray, q: np.ndarray, eps: float, relative: bool):
    x = train.astype(np.float64)
    c = x.mean(0)
    r = np.sqrt(((x - c) ** 2).sum(1)).max()
    r = r * (1 + eps) if relative else r + eps
    return np.sqrt(((q.astype(np.float64) - c) ** 2).sum(1)) <= r


def run(seed: int) -> list[dict]:
    train, fresh = data(seed)
    rows = []
    for relative, eps, kind in itertools.product((True, False), (0.0, 0.5),
                                                 ("box", "ball", "zone", "octagon")):
        if kind == "ball":
            ref_f, ref_t = (ball_reference(train, q, eps, relative) for q in (fresh, train))
        else:
            ref_f, ref_t = (reference_rule(kind, train, q, eps, relative) for q in (fresh, train))
        our_f, our_t = (ours(kind, train, q, eps, relative) for q in (fresh, train))
        rows.append({
            "abstraction": kind, "tolerance": "relative" if relative else "absolute",
            "eps": eps, "boxhack_fresh": float(our_f.mean()), "reference_fresh": float(ref_f.mean()),
            "boxhack_train": float(our_t.mean()), "reference_train": float(ref_t.mean()),
            "decisions_differ": int((our_f != ref_f).sum()),
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = run(args.seed)
    print(f"one class, 4-d Gaussian: 200 training vectors (sigma 1.0), 2,000 fresh (sigma 1.3), "
          f"seed {args.seed}; share accepted")
    head = (f"{'abstraction':<9} {'tolerance':<9} {'eps':>4} | {'fresh: boxhack':>14} "
            f"{'reference':>9} | {'train: boxhack':>14} {'reference':>9} | {'differ':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['abstraction']:<9} {r['tolerance']:<9} {r['eps']:>4} | "
              f"{r['boxhack_fresh']:>14.1%} {r['reference_fresh']:>9.1%} | "
              f"{r['boxhack_train']:>14.1%} {r['reference_train']:>9.1%} | "
              f"{r['decisions_differ']:>6}")
    if args.json:
        from boxhack.infra.files import atomic_write_json

        atomic_write_json(args.json, {"seed": args.seed, "rows": rows}, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
