"""Convex-hull monitor: per cluster, the convex hull of its training vectors (LP membership).

Semantics (docs/abstractions.md): per class, the correctly classified training vectors are
clustered (fixed k or the elbow rule) and cluster b is abstracted by ``H_b = conv(points)``.
The tolerance:

- relative eps: ``H_b`` scaled by ``1 + eps`` about the cluster's centroid c (the mean of its
  distinct points): v is tested as ``v' = c + (v - c) / (1 + eps)`` against ``H_b`` (a flat
  hull stays flat, as a flat box side does);
- absolute eps: an L-inf slack, ``dist_inf(v, H_b) <= eps``.

Membership is decided by the L-inf distance LP ``min t s.t. |P^T lam - v'| <= t, sum lam = 1,
lam >= 0`` solved by SciPy's HiGHS (dual simplex, in the cluster's scaled coordinates): the
row is accepted when ``t* <= eps_abs + tau_b`` with ``tau_b = lp_tolerance * max(1, max|p|)``
(HiGHS' feasibility tolerance is 1e-7 in scaled units; tau absorbs it). So hull decisions are
exact up to tau, not to the float32 bit as the other abstractions: a point within tau of a
hull may be accepted. Before any LP, exact checks decide most rows: a row equal to a training
vector is accepted; a row outside the cluster's bounding box or outside its slab along a
principal axis (widened by ``eps_abs + tau``) is rejected.

Cost: one LP per (row, cluster) that survives the checks, ~5-100 ms each for 32 dims and
200-2000 points on one core (measured in benchmarks/monitor.py); margins need one more LP
(the exit facet along the ray from the centroid) for accepted rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from boxhack.errors import BoxhackError
from boxhack.monitor.base import (
    ClusteredMonitor,
    array_problem,
    cast_keep_sign,
    check_param,
    fix_margin_sign,
    is_real,
)
from boxhack.monitor.jit import kernel, prange
from boxhack.monitor.registry import register

__all__ = ["ConvexHullMonitor"]

_TINY = float(np.nextafter(0.0, 1.0))
_LP_OPTIONS = {"presolve": False}
GILBERT_ITERATIONS = 64
SIMPLEX_CACHE = 32  # point sets of earlier LP solutions kept per hull (exact accepts, no LP)
SIMPLEX_ITERATIONS = 20  # dual simplex iterations per LP variable + constraint, then the IPM
IPM_ITERATIONS = 1000


@kernel
def _gilbert(p, v, threshold, iters, gap, normal):  # pragma: no cover - compiled
    """Gilbert's algorithm towards the point of conv(p) nearest to each v[r]: every step's
    direction a = v - x (x in the hull) certifies ``dist_inf(v, H) >= (a.v - max_p a.p) /
    ||a||_1``; gap[r] is the best such bound (normal[r] its a), stopping once it exceeds
    ``threshold`` (the row is then outside without an LP)."""
    n, d = v.shape
    m = p.shape[0]
    for r in prange(n):
        x = np.empty(d)
        a = np.empty(d)
        near, dn = 0, np.inf
        for k in range(m):
            s = 0.0
            for i in range(d):
                t = p[k, i] - v[r, i]
                s += t * t
            if s < dn:
                near, dn = k, s
        for i in range(d):
            x[i] = p[near, i]
        best = -np.inf
        for _ in range(iters):
            nn = 0.0
            l1 = 0.0
            av = 0.0
            for i in range(d):
                a[i] = v[r, i] - x[i]
                nn += a[i] * a[i]
                l1 += abs(a[i])
                av += a[i] * v[r, i]
            if nn == 0.0:
                break
            smax, ks = -np.inf, 0
            for k in range(m):
                s = 0.0
                for i in range(d):
                    s += p[k, i] * a[i]
                if s > smax:
                    smax, ks = s, k
            lb = (av - smax) / l1
            if lb > best:
                best = lb
                for i in range(d):
                    normal[r, i] = a[i]
            if best > threshold:
                break
            # x <- the point nearest to v on the segment [x, p_ks]
            num, den = 0.0, 0.0
            for i in range(d):
                e = p[ks, i] - x[i]
                num += e * a[i]
                den += e * e
            if den == 0.0 or num <= 0.0:
                break
            t = min(1.0, num / den)
            for i in range(d):
                x[i] += t * (p[ks, i] - x[i])
        gap[r] = best


def _linprog(cluster: _Cluster, cost, **problem):
    """SciPy's HiGHS on one hull LP, bounded by iterations (never a clock): the dual simplex
    first (warm, exact vertex duals), and when it hits :data:`SIMPLEX_ITERATIONS` per
    constraint (HiGHS' dual simplex can cycle on the degenerate LP of a row inside the hull:
    measured, a 400-point, 32-dimensional hull ran for minutes) the interior-point method with
    crossover, which solves those in tens of iterations."""
    from scipy.optimize import linprog  # a heavy import, only for the hull's LPs

    rows = sum(len(problem[k]) for k in ("b_ub", "b_eq") if problem.get(k) is not None)
    limit = SIMPLEX_ITERATIONS * (rows + cost.shape[0])
    cluster.lp_calls += 1
    res = linprog(cost, method="highs-ds", options={**_LP_OPTIONS, "maxiter": limit}, **problem)
    if res.status == 1:  # the iteration limit
        cluster.lp_fallbacks += 1
        res = linprog(cost, method="highs-ipm", options={"maxiter": IPM_ITERATIONS}, **problem)
    return res


def _warm_model(cluster: _Cluster):
    """``(Highs, core, rows, lower)``: the distance LP of ``cluster`` as a persistent HiGHS
    model (quiet, no presolve, dual simplex, iteration-limited), or ``False`` without
    highspy."""
    try:
        from highspy import _core as core  # the bindings themselves: no banner on stdout
    except ImportError:  # pragma: no cover - highspy is a dependency
        return False
    from scipy import sparse

    m, d = cluster.m, cluster.d
    a_ub, a_eq, cost = cluster._matrices()
    matrix = sparse.csc_matrix(np.concatenate([a_ub, a_eq]))
    lp = core.HighsLp()
    lp.num_col_, lp.num_row_ = m + 1, 2 * d + 1
    lp.col_cost_ = cost
    lp.col_lower_ = np.zeros(m + 1)
    lp.col_upper_ = np.full(m + 1, np.inf)
    lp.row_lower_ = np.concatenate([np.full(2 * d, -np.inf), [1.0]])
    lp.row_upper_ = np.concatenate([np.zeros(2 * d), [1.0]])
    lp.a_matrix_.format_ = core.MatrixFormat.kColwise
    lp.a_matrix_.start_ = matrix.indptr
    lp.a_matrix_.index_ = matrix.indices
    lp.a_matrix_.value_ = matrix.data
    h = core._Highs()
    for name, value in (("output_flag", False), ("presolve", "off"), ("simplex_strategy", 1),
                        ("simplex_iteration_limit", SIMPLEX_ITERATIONS * (3 * d + m + 2)),
                        ("threads", 1)):
        h.setOptionValue(name, value)
    h.passModel(lp)
    return h, core, np.arange(2 * d, dtype=np.int32), np.full(2 * d, -np.inf)


class _Cluster:
    """Query-time structures of one hull (scaled coordinates: x / scale)."""

    def __init__(self, points: np.ndarray, tol: float, relative: bool, lp_tol: float):
        p64 = points.astype(np.float64)
        self.m, self.d = p64.shape
        self.scale = max(1.0, float(np.abs(p64).max()))
        self.points = p64 / self.scale
        self.center = self.points.mean(0)
        self.shrink = 1.0 + tol if relative else 1.0  # v' = c + (v - c) / shrink
        self.eps = 0.0 if relative else tol / self.scale  # absolute slack, scaled
        self.tau = lp_tol
        lo, hi = self.points.min(0), self.points.max(0)
        half = float((hi - lo).max()) / 2.0
        self.rho = half if half > 0 else 1.0  # L-inf half-width, for the graded score
        # exact rejection directions: the axes and the principal axes of the points
        centred = self.points - self.center
        axes = np.linalg.svd(centred, full_matrices=False)[2] if self.m > 1 else np.eye(self.d)
        self.dirs = np.concatenate([np.eye(self.d), axes])
        proj = self.points @ self.dirs.T
        self.sup_hi, self.sup_lo = proj.max(0), proj.min(0)
        self.l1 = np.abs(self.dirs).sum(1)
        self._lp = None
        self._simplices: list[tuple[np.ndarray, np.ndarray]] | None = None  # (support, pinv)
        self.lp_calls = 0  # LPs solved (distance and exit facet), for budgets and benchmarks
        self.lp_fallbacks = 0  # of them, solved by the interior-point method
        self._highs: Any = None  # the warm LP model (None: not built yet, False: unavailable)

    # ------------------------------------------------------------ exact accept without an LP
    def _add_simplex(self, support: np.ndarray) -> None:
        """Remember the points ``support`` (a convex combination of which an LP found): later
        rows inside their hull are accepted by a least-squares solve, no LP."""
        pts = self.points[support]
        if self._simplices is None:
            self._simplices = []
        if any(len(s) == len(support) and np.array_equal(s, support) for s, _ in self._simplices):
            return
        system = np.concatenate([pts.T, np.ones((1, len(support)))])  # (d + 1, |S|)
        self._simplices.append((support, np.linalg.pinv(system)))
        if len(self._simplices) > SIMPLEX_CACHE:
            self._simplices.pop(1)  # keep the centroid's, drop the oldest other

    def reset(self) -> None:
        """Forget what earlier calls left (the warm basis, the remembered point sets but the
        centroid's): every public call starts here, so its results depend on its input only,
        never on what was asked before (or on which job a worker ran first)."""
        if self._highs:
            self._highs[0].clearSolver()
        if self._simplices:
            del self._simplices[1:]

    def _seed(self) -> None:
        if self._simplices is None:
            self._simplices = []
            if self.m > 1:
                _, _, lam = self._solve_distance(self.center)
                self._add_simplex(np.flatnonzero(lam > 0))

    def inside(self, vp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(accept, resid)`` per row of ``vp``: an exact certificate that the row is within
        the acceptance slack of the hull, found without an LP. For each remembered point set S,
        the least-squares weights ``lam`` of ``v' = P_S^T lam, sum lam = 1``; when every weight
        is ``>= 0``, ``x = P_S^T (lam / sum lam)`` is a point of the hull, so
        ``dist_inf(v', H) <= resid = ||x - v'||_inf`` (float64 rounding, ~1e-16, is far below
        the LP tolerance tau). ``accept`` is ``resid <= eps + tau``, so the decision is the
        LP's: a row this accepts, the LP accepts too."""
        n = len(vp)
        resid = np.full(n, np.inf)
        if self.m == 1 or n == 0:
            return np.zeros(n, dtype=bool), resid
        self._seed()
        rhs = np.concatenate([vp, np.ones((n, 1))], axis=1)  # (n, d + 1)
        for support, pinv in self._simplices:
            lam = rhs @ pinv.T  # (n, |S|)
            ok = (lam >= 0).all(1) & (lam.sum(1) > 0)
            if not ok.any():
                continue
            w = lam[ok] / lam[ok].sum(1, keepdims=True)
            r = np.abs(w @ self.points[support] - vp[ok]).max(1)
            resid[ok] = np.minimum(resid[ok], r)
        return resid <= self.eps + self.tau, resid

    def prime(self, v: np.ndarray) -> np.ndarray:
        """Rows mapped into the unscaled hull's test space (scaled coordinates)."""
        v = v / self.scale
        return self.center + (v - self.center) / self.shrink if self.shrink != 1.0 else v

    def gaps(self, vp: np.ndarray, *, refine: bool = True):
        """Lower bounds on dist_inf(v', H) with the directions certifying them:
        ``(gap (N,), normal (N, d))`` where ``normal . v' - max_p normal . p >= gap *
        ||normal||_1``. From the axes and principal axes, then (``refine``) Gilbert's
        algorithm for the rows those leave undecided."""
        proj = vp @ self.dirs.T
        above = (proj - self.sup_hi) / self.l1
        below = (self.sup_lo - proj) / self.l1
        both = np.concatenate([above, below], axis=1)
        k = both.argmax(1)
        gap = both[np.arange(len(vp)), k]
        normal = self.dirs[k % len(self.dirs)] * np.where(k < len(self.dirs), 1.0, -1.0)[:, None]
        open_ = np.flatnonzero(gap <= self.eps + self.tau)
        if refine and len(open_) and self.m > 1:
            g2 = np.empty(len(open_))
            n2 = np.zeros((len(open_), self.d))
            _gilbert(len(open_), self.points, np.ascontiguousarray(vp[open_]),
                     self.eps + self.tau, GILBERT_ITERATIONS, g2, n2)
            better = g2 > gap[open_]
            gap[open_[better]] = g2[better]
            normal[open_[better]] = n2[better]
        return gap, normal

    def directions(self, vp: np.ndarray) -> np.ndarray:
        """Per row, the direction of Gilbert's best distance bound after all its iterations
        (close to the direction from the nearest hull point to v')."""
        g2 = np.empty(len(vp))
        n2 = np.zeros((len(vp), self.d))
        if self.m > 1 and len(vp):
            _gilbert(len(vp), self.points, np.ascontiguousarray(vp), np.inf,
                     GILBERT_ITERATIONS, g2, n2)
        return n2

    def _matrices(self):
        if self._lp is None:
            m, d = self.m, self.d
            pt = self.points.T
            a_ub = np.block([[pt, -np.ones((d, 1))], [-pt, -np.ones((d, 1))]])
            a_eq = np.concatenate([np.ones(m), [0.0]])[None]
            cost = np.zeros(m + 1)
            cost[-1] = 1.0
            self._lp = (a_ub, a_eq, cost)
        return self._lp

    def _solve_distance(self, vp: np.ndarray, *, warm: bool = True):
        """The L-inf distance LP: ``(t*, a, lam)`` (see :meth:`distance`; ``lam`` the weights).

        Solved warm: one HiGHS model per hull (``highspy``) whose right-hand side is set to
        each row in turn, so the dual simplex starts from the last row's basis (3-4x fewer
        iterations than a cold start, measured). When that model is not at hand, or stops at
        its iteration limit, :func:`_linprog` solves the row from scratch."""
        solved = self._warm_solve(vp) if warm else None
        if solved is not None:
            return solved
        a_ub, a_eq, cost = self._matrices()
        res = _linprog(self, cost, A_ub=a_ub, b_ub=np.concatenate([vp, -vp]), A_eq=a_eq,
                       b_eq=[1.0], bounds=(0, None))
        if res.status != 0:
            raise BoxhackError(f"the hull LP failed ({res.message}); features may be degenerate")
        marg = res.ineqlin.marginals
        a = np.asarray(marg[: self.d] - marg[self.d:], dtype=np.float64)  # d t* / d v'
        return self._oriented(float(res.fun), a, vp, np.asarray(res.x[: self.m]))

    def _oriented(self, t: float, a: np.ndarray, vp: np.ndarray, lam: np.ndarray):
        if a @ vp - (self.points @ a).max() < 0:  # orient it to separate v' from H
            a = -a
        return t, a, lam

    def _warm_solve(self, vp: np.ndarray):
        """The distance LP on the hull's persistent HiGHS model, or ``None`` (no highspy, or
        the dual simplex reached its iteration limit)."""
        if self._highs is None:
            self._highs = _warm_model(self)
        if self._highs is False:
            return None
        h, core, rows, lower = self._highs
        h.changeRowsBounds(len(rows), rows, lower, np.concatenate([vp, -vp]))
        self.lp_calls += 1
        h.run()
        if h.getModelStatus() != core.HighsModelStatus.kOptimal:
            self.lp_calls -= 1  # counted again by the cold solve
            h.clearSolver()  # the next row starts from a fresh basis
            return None
        sol = h.getSolution()
        dual = np.asarray(sol.row_dual, dtype=np.float64)
        lam = np.asarray(sol.col_value, dtype=np.float64)[: self.m]
        t = float(h.getInfo().objective_function_value)
        return self._oriented(t, dual[: self.d] - dual[self.d: 2 * self.d], vp, lam)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_highs"] = None  # a solver handle: rebuilt where it is used
        return state

    def distance(self, vp: np.ndarray, *, warm: bool = True):
        """(t*, a): the L-inf distance of v' to the hull and the dual direction (||a||_1 = 1
        when t* > 0) of the separating hyperplane ``a.x <= max_p a.p``. A row the LP finds
        within the acceptance slack leaves its support (the points it combines) for
        :meth:`inside`."""
        if self.m == 1:
            diff = vp - self.points[0]
            i = int(np.abs(diff).argmax())
            a = np.zeros(self.d)
            a[i] = 1.0 if diff[i] >= 0 else -1.0
            return float(np.abs(diff).max()), a
        t, a, lam = self._solve_distance(vp, warm=warm)
        if t <= self.eps + self.tau:
            self._seed()
            self._add_simplex(np.flatnonzero(lam > 0))
        return t, a

    def exit_facet(self, vp: np.ndarray):
        """Unit normal a of a supporting hyperplane of H where the ray from the centroid
        through v' leaves H (None if the LP cannot give one)."""
        w = vp - self.center
        if self.m == 1 or not np.any(w):
            return None
        m, d = self.m, self.d
        a_eq = np.block([[self.points.T, -w[:, None]], [np.ones((1, m)), np.zeros((1, 1))]])
        cost = np.zeros(m + 1)
        cost[-1] = -1.0
        bounds = [(0, None)] * m + [(0, 1e9)]
        res = _linprog(self, cost, A_eq=a_eq, b_eq=np.concatenate([self.center, [1.0]]),
                       bounds=bounds)
        if res.status != 0:
            return None
        a = np.asarray(res.eqlin.marginals[:d], dtype=np.float64)
        if a @ w < 0:
            a = -a
        norm = np.linalg.norm(a)
        return a / norm if norm > 0 and np.isfinite(norm) else None

    def support(self, a: np.ndarray) -> float:
        """The bound of the test ``a.v' <= support`` implied by the hull and the absolute
        slack (scaled coordinates): ``max_p a.p + eps ||a||_1``."""
        return float((self.points @ a).max()) + self.eps * float(np.abs(a).sum())


@register
class ConvexHullMonitor(ClusteredMonitor):
    """Convex hulls of each cluster's training vectors; membership by LP (see module doc)."""

    abstraction: ClassVar[str] = "hull"
    PARAMS: ClassVar[tuple[str, ...]] = ClusteredMonitor.PARAMS + ("lp_tolerance",)

    def __init__(self, n_clusters: int | None = None, *, lp_tolerance: float = 1e-6,
                 **params: Any) -> None:
        super().__init__(n_clusters, **params)
        self.lp_tolerance = lp_tolerance

    def _validate_params(self) -> None:
        super()._validate_params()
        t = self.lp_tolerance
        check_param(type(self).__name__, "lp_tolerance", t, is_real(t) and 1e-12 <= t <= 1e-2,
                    "give a number in [1e-12, 1e-2] (default 1e-6; HiGHS works to 1e-7)")

    # ------------------------------------------------------------------ fit / derive
    def _fit_layer(self, layer: str, x: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
        rows, cls, cnt = self._cluster_rows(x, starts)
        pts = [np.unique(r + np.float32(0.0), axis=0) for r in rows]  # -0.0 -> 0.0, distinct
        return {"cluster_class": cls, "cluster_count": cnt,
                "point_count": np.asarray([len(p) for p in pts], dtype=np.int64).reshape(-1),
                "points": (np.concatenate(pts) if pts
                           else np.zeros((0, x.shape[1]), np.float32))}  # fmt: skip

    def _derive(self, layer: str, state: dict[str, np.ndarray]) -> dict[str, Any]:
        start, count = self.cluster_layout(state["cluster_class"], self.n_classes_)
        offsets = np.concatenate([[0], np.cumsum(state["point_count"])])
        tol, rel, lp = float(self.tolerance), bool(self.relative_tolerance), float(self.lp_tolerance)
        clusters = [_Cluster(state["points"][offsets[b]:offsets[b + 1]], tol, rel, lp)
                    for b in range(len(state["cluster_class"]))]
        known: list[set[bytes]] = [set() for _ in range(self.n_classes_)]
        for b, c in enumerate(state["cluster_class"]):
            for row in state["points"][offsets[b]:offsets[b + 1]]:
                known[c].add(row.tobytes())
        return {"start": start, "count": count, "clusters": clusters, "known": known}

    # ------------------------------------------------------------------ the solver
    def _solve(self, layer: str, x: np.ndarray, pred: np.ndarray, *, full: bool,
               graded: bool = True):
        """Per row: accepted, the best cluster, its scaled test point, and (``full``) the
        graded values. ``full=False`` stops at the first accepting cluster. ``graded=False``
        (the margin's use): the graded values of rows certainly outside every hull are left
        as bounds, and their separating direction is the certificate's, not an LP's."""
        der = self.derived_[layer]
        # graded values (novelty, decision function) come from cold LPs: exact and the same
        # whatever the batch; decisions and margins use the warm model and the cache
        graded_values = full and graded
        for cl in der["clusters"]:
            cl.reset()
        n = len(x)
        x64 = x.astype(np.float64)
        accepted = np.zeros(n, dtype=bool)
        nov = np.full(n, np.inf)
        dec = np.full(n, -np.inf)
        best_b = np.full(n, -1, dtype=np.int64)
        best_a: list[np.ndarray | None] = [None] * n
        xz = x + np.float32(0.0)
        for c in np.unique(pred):
            rows = np.flatnonzero(pred == c)
            s, k = int(der["start"][c]), int(der["count"][c])
            if k == 0:
                continue
            known = der["known"][c]
            hit = np.fromiter((xz[r].tobytes() in known for r in rows), bool, len(rows))
            if not full:
                accepted[rows[hit]] = True
                rows = rows[~hit]
            per = []
            for b in range(s, s + k):
                cl = der["clusters"][b]
                vp = cl.prime(x64[rows])
                gap, normal = cl.gaps(vp)
                inside = np.zeros(len(rows), dtype=bool)
                resid = np.full(len(rows), np.inf)
                open_ = np.flatnonzero(gap <= cl.eps + cl.tau)
                if len(open_) and not graded_values:
                    inside[open_], resid[open_] = cl.inside(vp[open_])
                per.append((b, cl, vp, gap, normal, inside, resid))
            for idx, r in enumerate(rows):
                order = sorted(range(k), key=lambda j, i=idx: per[j][3][i])
                for j in order:
                    if accepted[r]:
                        break
                    b, cl, vp, gap, normal, inside, resid = per[j]
                    factor = cl.shrink * cl.scale / cl.rho
                    lower = max(0.0, gap[idx] - cl.eps) * factor
                    if gap[idx] > cl.eps + cl.tau:  # certainly outside this hull: no LP
                        if best_b[r] < 0:
                            best_b[r], best_a[r] = b, normal[idx]
                            if not graded:  # the margin's: Gilbert's direction, all its steps
                                best_a[r] = cl.directions(vp[idx:idx + 1])[0]
                        if not (full and graded) or lower >= nov[r]:
                            continue
                    if inside[idx]:  # a convex combination within the slack: no LP
                        t, a = float(resid[idx]), None
                    else:
                        t, a = cl.distance(vp[idx], warm=not graded_values)
                    if t <= cl.eps + cl.tau:
                        accepted[r], nov[r] = True, 0.0
                        dec[r] = (cl.eps + cl.tau - t) * factor
                        best_b[r], best_a[r] = b, None
                    else:
                        score = (t - cl.eps) * factor
                        if score < nov[r]:
                            nov[r], best_b[r], best_a[r] = score, b, a
                            dec[r] = -score
            if full:
                for r in rows[hit]:
                    if not accepted[r]:  # a training vector: inside its own hull
                        accepted[r], nov[r] = True, 0.0
                        dec[r] = max(dec[r], 0.0)
        nov = np.where(accepted, 0.0, np.maximum(nov, _TINY))
        dec = np.where(accepted, np.maximum(dec, 0.0), np.minimum(dec, -_TINY))
        return accepted, nov, dec, best_b, best_a

    # ------------------------------------------------------------------ LP work
    @property
    def lp_calls(self) -> int:
        """LPs solved so far by this monitor (every hull, every layer; 0 before fitting)."""
        derived = getattr(self, "derived_", None) or {}
        return sum(cl.lp_calls for der in derived.values() for cl in der["clusters"])

    def _accept_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        return self._solve(layer, x, pred, full=False)[0]

    def _decision_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        return self._solve(layer, x, pred, full=True)[2]

    def _novelty_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        return self._solve(layer, x, pred, full=True)[1]

    def _margin_layer(self, layer: str, z: torch.Tensor, cl: torch.Tensor,
                      preactivation: bool) -> torch.Tensor:
        """A local linear margin: the signed distance of v to one hyperplane bounding the
        (widened) hull of the deciding cluster: for a rejected row the LP's separating
        hyperplane of the nearest hull; for an accepted row the tightest of the exit facet
        along the ray from the centroid and the exact rejection directions. Its sign is
        made equal to the decision."""
        n, d = z.shape
        pred = cl.detach().cpu().numpy().astype(np.int64)
        zn = z.detach().cpu().to(torch.float32).numpy()
        accepted, _, _, best_b, best_a = self._solve(layer, zn, pred, full=True, graded=False)
        der = self.derived_[layer]
        normals = np.zeros((n, d))
        offsets = np.full(n, -np.inf)
        for r in range(n):
            b = best_b[r]
            if b < 0:
                continue
            h = der["clusters"][b]
            vp = h.prime(zn[r].astype(np.float64))
            cands = []
            if accepted[r]:
                facet = h.exit_facet(vp)
                if facet is not None:
                    cands.append(facet)
                slack_hi = h.sup_hi + (h.eps + h.tau) * h.l1 - h.dirs @ vp
                slack_lo = (h.eps + h.tau) * h.l1 - h.sup_lo + h.dirs @ vp
                i = int(np.argmin(np.concatenate([slack_hi, slack_lo])))
                cands.append(h.dirs[i % len(h.dirs)] * (1.0 if i < len(h.dirs) else -1.0))
            else:
                cands.append(np.asarray(best_a[r], dtype=np.float64))
            best = None
            for a in cands:
                norm = np.linalg.norm(a)
                if not (norm > 0 and np.isfinite(norm)):
                    continue
                a = a / norm
                # in v (unscaled) coordinates: a.v' <= sup  <=>  a.v <= rhs
                sup = h.support(a)
                ac = float(h.center @ a)
                rhs = h.scale * (ac + (sup - ac) * h.shrink) if h.shrink != 1.0 else h.scale * sup
                slack = rhs - float(a @ zn[r].astype(np.float64))
                if best is None or slack < best[0]:
                    best = (slack, a, rhs)
            if best is None:
                offsets[r] = 0.0
                continue
            normals[r], offsets[r] = best[1], best[2]
        z64 = z.to(torch.float64)
        a_t = torch.from_numpy(normals).to(z.device)
        rhs_t = torch.from_numpy(offsets).to(z.device)
        m = torch.where(torch.isfinite(rhs_t), rhs_t - (z64 * a_t).sum(1),
                        torch.full((n,), -math.inf, dtype=torch.float64, device=z.device))
        m = fix_margin_sign(m, torch.from_numpy(accepted))
        return cast_keep_sign(m, z.dtype)

    # ------------------------------------------------------------------ files
    def _check_layer_state(self, layer: str, state: Mapping[str, np.ndarray], d: int,
                           n_classes: int) -> str | None:
        problem = self._cluster_problem(state, n_classes)
        if problem:
            return problem
        n_sets = len(state["cluster_class"])
        problem = (array_problem(state, "point_count", np.int64, (n_sets,))
                   or array_problem(state, "points", np.float32, (-1, d)))
        if problem:
            return problem
        pc = state["point_count"]
        if n_sets and pc.min() < 1:
            return "point_count has a hull without points"
        if int(pc.sum()) != len(state["points"]):
            return f"point_count sums to {int(pc.sum())} but there are {len(state['points'])} points"
        if (pc > state["cluster_count"]).any():
            return "a hull has more points than training vectors"
        extra = set(state) - {"cluster_class", "cluster_count", "point_count", "points"}
        if extra:
            return f"unexpected arrays {sorted(extra)} for a hull monitor"
        return None

    def _describe_layer(self, layer: str) -> dict[str, Any]:
        out = super()._describe_layer(layer)
        out["points"] = len(self.state_[layer]["points"])
        return out
