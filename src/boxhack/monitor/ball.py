"""Mean-ball monitor: per cluster, the Euclidean ball around the cluster's mean.

Semantics (docs/abstractions.md): per class, the correctly classified training vectors are
clustered (fixed k or the elbow rule); cluster b's centre ``c_b`` is the float64 mean of its
float32 rows rounded to the nearest float32, and its squared radius ``R_b`` is the smallest
float32 at least the exact largest squared distance ``||x - c_b||^2`` of its rows (exact real
arithmetic on the float32 values, so every training vector is inside). The tolerance widens
the radius ``r = sqrt(R_b)``: relative ``r' = r (1 + eps)``, absolute ``r' = r + eps``; the
stored ``R'_b`` is the smallest float32 ``>= r'^2`` (exact). A prediction is accepted iff
``||v - c_b||^2 <= R'_b`` exactly (real arithmetic on the float32 values) for one of its
class's clusters.

The compiled kernel evaluates the squared distance in float64 with a rigorous error bound;
only a row within that bound of a sphere (relative 1e-14 or so) is re-decided in exact
rational arithmetic, so decisions are exact and independent of summation order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
import torch

from boxhack.errors import BoxhackError
from boxhack.monitor.base import (
    ClusteredMonitor,
    array_problem,
    cast_keep_sign,
    fix_margin_sign,
    round_up_f32,
)
from boxhack.monitor.jit import kernel, njit, prange
from boxhack.monitor.registry import register

__all__ = ["MeanBallMonitor"]

_TINY = float(np.nextafter(0.0, 1.0))


# ----------------------------------------------------------------------------- exact helpers
def exact_sq_dist(v: np.ndarray, c: np.ndarray) -> Fraction:
    """``||v - c||^2`` in exact rational arithmetic (any float values)."""
    return sum(((Fraction(float(a)) - Fraction(float(b))) ** 2 for a, b in zip(v, c)),
               Fraction(0))


def smallest_f32_at_least(q: Fraction) -> np.float32:
    """The smallest float32 that is ``>= q`` (exact); BoxhackError if none is finite."""
    try:
        approx = float(q)
    except OverflowError:
        approx = math.inf
    with np.errstate(over="ignore"):
        cand = round_up_f32(np.array([approx]))[0]
    if not np.isfinite(cand):
        raise BoxhackError("a squared radius exceeds the float32 range (features too large)")
    while Fraction(float(cand)) < q:
        cand = np.nextafter(cand, np.float32(np.inf))
    while True:
        prev = np.nextafter(cand, np.float32(-np.inf))
        if Fraction(float(prev)) >= q:
            cand = prev
        else:
            return np.float32(cand)


def _covers(f: np.float32, r2: np.float32, eps: Fraction) -> bool:
    """Exactly: ``sqrt(f) >= sqrt(r2) + eps`` (f, r2 >= 0, eps >= 0)."""
    big_f, a = Fraction(float(f)), Fraction(float(r2))
    if eps == 0:
        return big_f >= a
    left = big_f - a - eps * eps
    return left >= 0 and left * left >= 4 * eps * eps * a


def widen_radius2(r2: np.float32, tolerance: float, relative: bool) -> np.float32:
    """The smallest float32 ``>= r'^2`` for ``r = sqrt(r2)`` widened by the tolerance rule."""
    if tolerance == 0:
        return np.float32(r2)
    eps = Fraction(float(tolerance))
    if relative:
        return smallest_f32_at_least(Fraction(float(r2)) * (1 + eps) ** 2)
    approx = (math.sqrt(float(r2)) + float(tolerance)) ** 2
    with np.errstate(over="ignore"):
        cand = round_up_f32(np.array([approx]))[0]
    if not np.isfinite(cand):
        raise BoxhackError("a widened squared radius exceeds the float32 range")
    while not _covers(cand, r2, eps):
        cand = np.nextafter(cand, np.float32(np.inf))
    while True:
        prev = np.nextafter(cand, np.float32(-np.inf))
        if prev >= 0 and _covers(prev, r2, eps):
            cand = prev
        else:
            return np.float32(cand)


# ----------------------------------------------------------------------------- kernels
@njit()
def _sq(v, center, b):  # pragma: no cover - compiled
    """||v - center[b]||^2 in float64 (v: the row as float64), four partial sums: the error
    bound of ``_side`` holds for any order of a sum of non-negative terms."""
    d = v.shape[0]
    a0 = a1 = a2 = a3 = 0.0
    i = 0
    while i + 4 <= d:
        t0 = v[i] - center[b, i]
        t1 = v[i + 1] - center[b, i + 1]
        t2 = v[i + 2] - center[b, i + 2]
        t3 = v[i + 3] - center[b, i + 3]
        a0 += t0 * t0
        a1 += t1 * t1
        a2 += t2 * t2
        a3 += t3 * t3
        i += 4
    while i < d:
        t0 = v[i] - center[b, i]
        a0 += t0 * t0
        i += 1
    return (a0 + a1) + (a2 + a3)


@njit()
def _side(s, r2, d):  # pragma: no cover - compiled
    """1: certainly inside (s_exact <= r2), 0: certainly outside, 2: too close to call."""
    err = s * ((d + 8) * 2.0**-52) + d * 2.0**-1022
    if s + err <= r2:
        return 1
    if s - err > r2:
        return 0
    return 2


@kernel
def _ball_accept(z, pred, start, count, center, radius2, code):  # pragma: no cover - compiled
    """code[r]: 1 inside a ball of class pred[r], 0 outside all, 2 too close to call.
    ``center``: float64 (B, d)."""
    n, d = z.shape
    for chunk in prange((n + 255) // 256):  # one float64 row buffer per 256 rows
        v = np.empty(d)
        for r in range(chunk * 256, min(n, chunk * 256 + 256)):
            for i in range(d):
                v[i] = z[r, i]
            c = pred[r]
            out = 0
            for b in range(start[c], start[c] + count[c]):
                side = _side(_sq(v, center, b), np.float64(radius2[b]), d)
                if side == 1:
                    out = 1
                    break
                if side == 2:
                    out = 2
            code[r] = out


@kernel
def _ball_values(z, pred, start, count, center, radius2, code, val, nov,
                 arg):  # pragma: no cover - compiled
    """val: max over clusters of r' - ||z - c||; arg: that cluster; nov: min over clusters of
    (||z - c|| - r') / r' (r' = 0: ||z - c||), clipped at 0; code as in ``_ball_accept``."""
    n, d = z.shape
    for r in prange(n):
        c = pred[r]
        out = 0
        best, bb, low = -np.inf, -1, np.inf
        for b in range(start[c], start[c] + count[c]):
            s = _sq(z[r], center, b)
            r2 = np.float64(radius2[b])
            side = _side(s, r2, d)
            if side == 1:
                out = 1
            elif side == 2 and out == 0:
                out = 2
            dist = math.sqrt(s)
            rad = math.sqrt(r2)
            m = rad - dist
            if m > best:
                best, bb = m, b
            q = (dist - rad) / rad if rad > 0 else dist
            low = min(low, max(q, 0.0))
        code[r] = out
        val[r] = best
        nov[r] = low
        arg[r] = bb


# ----------------------------------------------------------------------------- monitor
@register
class MeanBallMonitor(ClusteredMonitor):
    """Mean-balls: per cluster, the smallest ball around the cluster's mean holding its rows."""

    abstraction: ClassVar[str] = "ball"

    def _fit_layer(self, layer: str, x: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
        rows, cls, cnt = self._cluster_rows(x, starts)
        d = x.shape[1]
        center = np.empty((len(rows), d), np.float32)
        radius2 = np.empty(len(rows), np.float32)
        for b, r in enumerate(rows):
            c = r.astype(np.float64).mean(0).astype(np.float32)
            center[b] = c
            s = ((r.astype(np.float64) - c.astype(np.float64)) ** 2).sum(1)
            # every row whose float64 value could be the exact maximum, decided exactly
            top = s.max()
            near = np.flatnonzero(s >= top * (1 - (d + 8) * 2.0**-51) - d * 2.0**-1021)
            exact = max(exact_sq_dist(r[i], c) for i in near)
            radius2[b] = smallest_f32_at_least(exact)
        return {"cluster_class": cls, "cluster_count": cnt, "center": center, "radius2": radius2}

    def _derive(self, layer: str, state: dict[str, np.ndarray]) -> dict[str, Any]:
        tol, rel = float(self.tolerance), bool(self.relative_tolerance)
        r2 = np.array([widen_radius2(v, tol, rel) for v in state["radius2"]], dtype=np.float32)
        start, count = self.cluster_layout(state["cluster_class"], self.n_classes_)
        return {"radius2": r2, "start": start, "count": count, "torch": {},
                "center64": state["center"].astype(np.float64)}

    # ------------------------------------------------------------------ exact decisions
    def _resolve(self, layer: str, z: np.ndarray, pred: np.ndarray, code: np.ndarray
                 ) -> np.ndarray:
        """Exact decisions from kernel codes: rows too close to a sphere to call in float64
        are decided in rational arithmetic."""
        accepted = code == 1
        center = self.state_[layer]["center"]
        der = self.derived_[layer]
        for r in np.flatnonzero(code == 2):
            c = pred[r]
            for b in range(der["start"][c], der["start"][c] + der["count"][c]):
                if exact_sq_dist(z[r], center[b]) <= Fraction(float(der["radius2"][b])):
                    accepted[r] = True
                    break
        return accepted

    def _values(self, layer: str, z: np.ndarray, pred: np.ndarray):
        z = np.ascontiguousarray(z, dtype=np.float64)
        n = len(z)
        der = self.derived_[layer]
        code = np.empty(n, np.int8)
        val, nov = np.empty(n), np.empty(n)
        arg = np.empty(n, np.int64)
        _ball_values(n, z, pred, der["start"], der["count"], der["center64"],
                     der["radius2"], code, val, nov, arg)
        return self._resolve(layer, z, pred, code), val, nov, arg

    def _accept_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        der = self.derived_[layer]
        code = np.empty(len(x), np.int8)
        _ball_accept(len(x), x, pred, der["start"], der["count"], der["center64"],
                     der["radius2"], code)
        return self._resolve(layer, x, pred, code)

    def _decision_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        accepted, val, _, _ = self._values(layer, x, pred)
        return np.where(accepted, np.maximum(val, 0.0), np.where(val >= 0, -_TINY, val))

    def _novelty_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        accepted, _, nov, _ = self._values(layer, x, pred)
        return np.where(accepted, 0.0, np.maximum(nov, _TINY))

    def _margin_layer(self, layer: str, z: torch.Tensor, cl: torch.Tensor,
                      preactivation: bool) -> torch.Tensor:
        pred = cl.detach().cpu().numpy().astype(np.int64)
        z64 = z.to(torch.float64)
        accepted, _, _, arg = self._values(layer, z64.detach().cpu().numpy(), pred)
        cache = self.derived_[layer]["torch"]
        key = str(z.device)
        if key not in cache:
            cache[key] = (
                torch.from_numpy(self.state_[layer]["center"].astype(np.float64)).to(z.device),
                torch.from_numpy(np.sqrt(self.derived_[layer]["radius2"].astype(np.float64)))
                .to(z.device),
            )
        center, radius = cache[key]
        b = torch.from_numpy(arg).to(z.device)
        has = b >= 0
        b = b.clamp(min=0)
        m = radius[b] - torch.linalg.vector_norm(z64 - center[b], dim=1)
        m = torch.where(has, m, torch.full_like(m, -math.inf))
        m = fix_margin_sign(m, torch.from_numpy(accepted))
        return cast_keep_sign(m, z.dtype)

    # ------------------------------------------------------------------ files
    def _check_layer_state(self, layer: str, state: Mapping[str, np.ndarray], d: int,
                           n_classes: int) -> str | None:
        problem = self._cluster_problem(state, n_classes)
        if problem:
            return problem
        n_sets = len(state["cluster_class"])
        problem = (array_problem(state, "center", np.float32, (n_sets, d))
                   or array_problem(state, "radius2", np.float32, (n_sets,)))
        if problem:
            return problem
        if (state["radius2"] < 0).any():
            return "radius2 has a negative squared radius"
        extra = set(state) - {"cluster_class", "cluster_count", "center", "radius2"}
        if extra:
            return f"unexpected arrays {sorted(extra)} for a ball monitor"
        return None

    def balls(self, layer: str | None = None, cls: int | None = None, *,
              tight: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(centres (B, d) float32, radii (B,) float64)`` of ``layer`` (default: the first),
        optionally of one class; radii are ``sqrt`` of the stored squared radii."""
        layer = self._resolve_layer(layer)
        st = self.state_[layer]
        r2 = st["radius2"] if tight else self.derived_[layer]["radius2"]
        sel = slice(None) if cls is None else st["cluster_class"] == int(cls)
        return st["center"][sel], np.sqrt(r2[sel].astype(np.float64))
