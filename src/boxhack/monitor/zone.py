"""Zone and octagon monitors: per-cluster boxes plus bounds on pairwise differences (and sums).

Semantics (docs/abstractions.md): for each class, the correctly classified training vectors
are clustered (fixed k or the elbow rule) and each cluster b is wrapped in

- its box: ``lo_i <= v_i <= hi_i`` (min / max of the float32 features), and
- for every pair i < j the interval of ``v_i - v_j`` (zone), and of ``v_i + v_j`` (octagon),

where pair values are computed in float64 from the float32 features (one IEEE operation, so
every implementation gets the same number) and the tight pair bounds are rounded outward to
float32. The tolerance widens every interval by the same rule (relative: each end by
``eps/2`` of the interval's width, a flat interval stays flat; absolute: by ``eps``), computed
in float64 from the stored float32 tight bounds and rounded outward to float32. Bounds are
inclusive; a prediction is accepted iff its vector satisfies every constraint of one of its
class's clusters. The reference implementation deviates (see docs/abstractions.md).

Cost: per cluster, the tight bounds as stored (float32, ``2d + F d(d-1)`` numbers, F = 1 zone,
2 octagon) plus the query form: the widened pair bounds as dense float64 d x d matrices (a
difference-bound matrix ``U[i, j] >= v_i - v_j`` over all ordered pairs; for sums
``S[i, j] * (v_i + v_j) <= M[i, j]`` with S = +1 above and -1 below the diagonal), so the
compiled decision loop runs over contiguous rows and vectorises. About ``12 F d^2`` bytes per
cluster; ``max_memory`` (default 1 GiB) caps it and :func:`max_width` says which layer width
fits. Decisions stop at the first violated row of constraints and the first containing
cluster; the margin's active constraint is found by a compiled kernel too and only that
constraint is recomputed in torch (O(N) autograd memory).
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
    is_int,
    round_down_f32,
    round_up_f32,
    widen_intervals,
)
from boxhack.monitor.jit import kernel, njit, prange
from boxhack.monitor.registry import register

__all__ = ["DEFAULT_MAX_MEMORY", "OctagonMonitor", "ZoneMonitor", "max_width", "pair_bytes"]

SQRT2 = math.sqrt(2.0)
DEFAULT_MAX_MEMORY = 1 << 30  # 1 GiB of bounds per monitored layer

# constraint kinds reported by the slack kernel (the active constraint of the margin)
K_BOX_LO, K_BOX_HI, K_DIFF_LO, K_DIFF_HI, K_SUM_LO, K_SUM_HI, K_BOX_HI_RELU = range(7)


def pair_bytes(d: int, n_sets: int, families: int) -> int:
    """Bytes a zone (``families=1``) or octagon (2) monitor holds for one layer of width ``d``
    with ``n_sets`` clusters: the stored float32 tight bounds (box and pairs, lower and upper),
    the widened float32 box and the dense float64 d x d matrices of the widened pair bounds."""
    tight = 4 * (2 * d + 2 * families * (d * (d - 1) // 2))
    query = 4 * 2 * d + 8 * families * d * d
    return n_sets * (tight + query)


def max_width(n_sets: int, families: int, budget: int = DEFAULT_MAX_MEMORY) -> int:
    """The widest layer whose bounds fit ``budget`` bytes with ``n_sets`` clusters."""
    lo, hi = 1, 1
    while pair_bytes(hi, n_sets, families) <= budget:
        hi *= 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if pair_bytes(mid, n_sets, families) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo if pair_bytes(lo, n_sets, families) <= budget else 0


# ----------------------------------------------------------------------------- kernels
@kernel
def _pair_bounds(x, use_sum, dlo, dhi, slo, shi):  # pragma: no cover - compiled
    """Tight float64 min / max of x_i - x_j (and x_i + x_j) over the rows, pairs i < j."""
    n, d = x.shape
    for i in prange(d - 1):
        k0 = i * (2 * d - i - 1) // 2
        for j in range(i + 1, d):
            k = k0 + j - i - 1
            dlo[k] = np.inf
            dhi[k] = -np.inf
            if use_sum:
                slo[k] = np.inf
                shi[k] = -np.inf
        for r in range(n):
            vi = np.float64(x[r, i])
            for j in range(i + 1, d):
                k = k0 + j - i - 1
                vj = np.float64(x[r, j])
                t = vi - vj
                dlo[k] = min(dlo[k], t)
                dhi[k] = max(dhi[k], t)
                if use_sum:
                    s = vi + vj
                    slo[k] = min(slo[k], s)
                    shi[k] = max(shi[k], s)


@kernel
def _accept(x, pred, start, count, blo, bhi, dbm, smat, sign, use_sum,
            out):  # pragma: no cover - compiled
    """out[r]: x[r] satisfies every constraint of one of class pred[r]'s clusters."""
    n, d = x.shape
    for chunk in prange((n + 255) // 256):  # one float64 row buffer per 256 rows
        v = np.empty(d)
        for r in range(chunk * 256, min(n, chunk * 256 + 256)):
            out[r] = _accept_row(x, r, pred[r], start, count, blo, bhi, dbm, smat, sign,
                                 use_sum, v)


@njit()
def _accept_row(x, r, c, start, count, blo, bhi, dbm, smat, sign, use_sum,
                v):  # pragma: no cover - compiled
    """Box sides first (most rejections end there); the row is widened to float64 only for
    a cluster whose box contains it, then the pair matrices row by row. (Features are finite:
    the caller rejects NaN.)"""
    d = x.shape[1]
    converted = False
    for b in range(start[c], start[c] + count[c]):
        out = 0  # branch-free (vectorised) box test: cheaper than an early exit's mispredicts
        for i in range(d):
            out += (x[r, i] < blo[b, i]) | (x[r, i] > bhi[b, i])
        if out:
            continue
        ok = True
        if not converted:
            for i in range(d):
                v[i] = x[r, i]
            converted = True
        for i in range(d):
            vi = v[i]
            bad = 0
            for j in range(d):
                bad += (vi - v[j]) > dbm[b, i, j]
            if use_sum:
                for j in range(d):
                    bad += (sign[i, j] * (vi + v[j])) > smat[b, i, j]
            if bad:
                ok = False
                break
        if ok:
            return True
    return False


# The pre-activation rule for pair constraints (``pre``: z holds a ReLU's pre-activations and
# v = relu(z) = u). A constraint on v is rewritten on one unit's pre-activation, so that its
# slack keeps a gradient where that unit is off (as the box's upper side ``hi - z``), with the
# sign unchanged: ``relu(z) <= c`` iff ``c >= 0 and z <= c``; ``relu(z) >= c`` iff ``c <= 0 or
# z >= c``. On relu(z) alone, two units off in the whole cluster make the pair interval
# [0, 0] with slack 0 and no gradient: the margin of every point there is 0 and flat.
# (The torch twins in ``_PairMonitor._margin_layer`` make the same float64 operations.)
@njit()
def _pre_upper(c, z, u):  # pragma: no cover - compiled
    """Slack of ``relu(z) <= c`` (u = relu(z)): ``c - z`` if ``c >= 0``, else ``c - u`` (< 0)."""
    return c - z if c >= 0 else c - u


@njit()
def _pre_lower(c, z, u):  # pragma: no cover - compiled
    """Slack of ``relu(z) >= c``: ``z - c`` if ``c > 0``, else ``u - c`` (>= 0)."""
    return z - c if c > 0 else u - c


@njit()
def _pre_sum_hi(zi, ui, zj, uj, hi):  # pragma: no cover - compiled
    """``u_i + u_j <= hi`` on either unit's pre-activation (the smaller slack)."""
    return min(_pre_upper(hi - uj, zi, ui), _pre_upper(hi - ui, zj, uj)) / SQRT2


@njit()
def _pre_sum_lo(zi, ui, zj, uj, lo):  # pragma: no cover - compiled
    """``u_i + u_j >= lo``: never violated when ``lo <= 0`` (inf), else on either unit."""
    if lo <= 0:
        return np.inf
    return min(_pre_lower(lo - uj, zi, ui), _pre_lower(lo - ui, zj, uj)) / SQRT2


@kernel
def _slack(z, pred, start, count, blo, bhi, dbm, smat, sign, use_sum, pre,
           val, arg):  # pragma: no cover - compiled
    """val[r] = max over class pred[r]'s clusters of the smallest normalised slack (distance to
    the constraint's hyperplane, > 0 inside); arg[r] = (cluster, kind, i, j) of the active
    constraint. ``pre``: z holds ReLU pre-activations (box sides and pairs by the
    pre-activation rule, see ``_pre_upper``)."""
    n, d = z.shape
    for r in prange(n):
        c = pred[r]
        best = -np.inf
        bb, bk, bi, bj = -1, 0, 0, 0
        for b in range(start[c], start[c] + count[c]):
            m = np.inf
            mk, mi, mj = 0, 0, 0
            for i in range(d):
                zi = z[r, i]
                lo = np.float64(blo[b, i])
                hi = np.float64(bhi[b, i])
                if pre:
                    s_lo = zi - lo if lo > 0 else np.inf
                    if hi >= 0:
                        s_hi = hi - zi
                        k_hi = K_BOX_HI
                    else:
                        s_hi = hi - max(zi, 0.0)
                        k_hi = K_BOX_HI_RELU
                else:
                    s_lo = zi - lo
                    s_hi = hi - zi
                    k_hi = K_BOX_HI
                if s_lo < m:
                    m, mk, mi = s_lo, K_BOX_LO, i
                if s_hi < m:
                    m, mk, mi = s_hi, k_hi, i
            if m > best:
                for i in range(d - 1):
                    zi = z[r, i]
                    ui = max(zi, 0.0) if pre else zi
                    for j in range(i + 1, d):
                        zj = z[r, j]
                        if pre:
                            uj = max(zj, 0.0)
                            s = _pre_upper(ui - (-dbm[b, j, i]), zj, uj) / SQRT2
                        else:
                            uj = zj
                            s = (ui - uj - (-dbm[b, j, i])) / SQRT2
                        if s < m:
                            m, mk, mi, mj = s, K_DIFF_LO, i, j
                        if pre:
                            s = _pre_upper(dbm[b, i, j] + uj, zi, ui) / SQRT2
                        else:
                            s = (dbm[b, i, j] - (ui - uj)) / SQRT2
                        if s < m:
                            m, mk, mi, mj = s, K_DIFF_HI, i, j
                        if use_sum:
                            if pre:
                                s = _pre_sum_lo(zi, ui, zj, uj, -smat[b, j, i])
                            else:
                                s = (ui + uj - (-smat[b, j, i])) / SQRT2
                            if s < m:
                                m, mk, mi, mj = s, K_SUM_LO, i, j
                            if pre:
                                s = _pre_sum_hi(zi, ui, zj, uj, smat[b, i, j])
                            else:
                                s = (smat[b, i, j] - (ui + uj)) / SQRT2
                            if s < m:
                                m, mk, mi, mj = s, K_SUM_HI, i, j
                    if m <= best:
                        break
            if m > best:
                best = m
                bb, bk, bi, bj = b, mk, mi, mj
        val[r] = best
        arg[r, 0] = bb
        arg[r, 1] = bk
        arg[r, 2] = bi
        arg[r, 3] = bj


@kernel
def _novelty(x, pred, start, count, blo, bhi, dbm, smat, sign, use_sum, radius,
             out):  # pragma: no cover - compiled
    """out[r] = min over class pred[r]'s clusters of ||violations||_2 / radius_b, where the
    violations are the distances to the violated constraints' hyperplanes; inf: no cluster."""
    n, d = x.shape
    for r in prange(n):
        c = pred[r]
        best = np.inf
        for b in range(start[c], start[c] + count[c]):
            cap = (best * radius[b]) ** 2
            acc = 0.0
            for i in range(d):
                v = np.float64(x[r, i])
                e = max(np.float64(blo[b, i]) - v, v - np.float64(bhi[b, i]), 0.0)
                acc += e * e
            if acc < cap:
                for i in range(d - 1):
                    vi = np.float64(x[r, i])
                    for j in range(i + 1, d):
                        vj = np.float64(x[r, j])
                        t = vi - vj
                        e = max((-dbm[b, j, i]) - t, t - dbm[b, i, j], 0.0) / SQRT2
                        acc += e * e
                        if use_sum:
                            t = vi + vj
                            e = max((-smat[b, j, i]) - t, t - smat[b, i, j], 0.0) / SQRT2
                            acc += e * e
                    if acc >= cap:
                        break
            if acc < cap:
                best = min(best, math.sqrt(acc) / radius[b])
        out[r] = best


def _t_upper(c: torch.Tensor, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Torch twin of ``_pre_upper``."""
    return torch.where(c >= 0, c - z, c - u)


def _t_lower(c: torch.Tensor, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Torch twin of ``_pre_lower``."""
    return torch.where(c > 0, z - c, u - c)


# ----------------------------------------------------------------------------- monitors
class _PairMonitor(ClusteredMonitor):
    """Shared machinery of zones (pair differences) and octagons (differences and sums)."""

    PARAMS: ClassVar[tuple[str, ...]] = ClusteredMonitor.PARAMS + ("max_memory",)
    uses_preactivation: ClassVar[bool] = True
    #: 1: differences (zone); 2: differences and sums (octagon)
    families: ClassVar[int] = 1

    def __init__(self, n_clusters: int | None = None, *, max_memory: int = DEFAULT_MAX_MEMORY,
                 **params: Any) -> None:
        super().__init__(n_clusters, **params)
        self.max_memory = max_memory

    def _validate_params(self) -> None:
        super()._validate_params()
        check_param(type(self).__name__, "max_memory", self.max_memory,
                    is_int(self.max_memory) and self.max_memory >= 1,
                    "give a number of bytes >= 1 (default 1 GiB)")

    def _check_memory(self, d: int, n_sets: int) -> str | None:
        need = pair_bytes(d, n_sets, self.families)
        if need <= self.max_memory:
            return None
        widest = max_width(n_sets, self.families, int(self.max_memory))
        return (
            f"a {self.abstraction} monitor of a {d}-wide layer with {n_sets} clusters needs "
            f"{need / 2**20:.1f} MiB of bounds (tight and widened), above max_memory="
            f"{self.max_memory} bytes ({self.max_memory / 2**20:.1f} MiB); the widest layer "
            f"that fits is {widest} dims: monitor a narrower layer, use fewer clusters, or "
            f"raise max_memory"
        )

    # ------------------------------------------------------------------ fit / derive
    def _fit_layer(self, layer: str, x: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
        rows, cls, cnt = self._cluster_rows(x, starts)
        d = x.shape[1]
        problem = self._check_memory(d, len(rows))
        if problem:
            raise BoxhackError(problem)
        n_pairs = d * (d - 1) // 2
        use_sum = self.families == 2
        state = {"cluster_class": cls, "cluster_count": cnt,
                 "box_lo": np.empty((len(rows), d), np.float32),
                 "box_hi": np.empty((len(rows), d), np.float32),
                 "diff_lo": np.empty((len(rows), n_pairs), np.float32),
                 "diff_hi": np.empty((len(rows), n_pairs), np.float32)}  # fmt: skip
        if use_sum:
            state["sum_lo"] = np.empty((len(rows), n_pairs), np.float32)
            state["sum_hi"] = np.empty((len(rows), n_pairs), np.float32)
        dlo, dhi = np.empty(n_pairs), np.empty(n_pairs)
        slo, shi = (np.empty(n_pairs), np.empty(n_pairs)) if use_sum else (dlo[:0], dhi[:0])
        for b, r in enumerate(rows):
            state["box_lo"][b] = r.min(0)
            state["box_hi"][b] = r.max(0)
            _pair_bounds(len(r) * d, np.ascontiguousarray(r), use_sum, dlo, dhi, slo, shi)
            state["diff_lo"][b] = round_down_f32(dlo)
            state["diff_hi"][b] = round_up_f32(dhi)
            if use_sum:
                state["sum_lo"][b] = round_down_f32(slo)
                state["sum_hi"][b] = round_up_f32(shi)
        return state

    def _names(self) -> tuple[str, ...]:
        return ("box", "diff", "sum") if self.families == 2 else ("box", "diff")

    def _widened(self, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tol, rel = float(self.tolerance), bool(self.relative_tolerance)
        out = {}
        with np.errstate(over="ignore"):
            for name in self._names():
                out[name + "_lo"], out[name + "_hi"] = widen_intervals(
                    state[name + "_lo"], state[name + "_hi"], tol, rel)
        return out

    def _derive(self, layer: str, state: dict[str, np.ndarray]) -> dict[str, Any]:
        wide = self._widened(state)
        n_sets, d = wide["box_lo"].shape
        iu, ju = np.triu_indices(d, 1)
        dbm = np.zeros((n_sets, d, d))  # dbm[b, i, j] >= v_i - v_j (diagonal: 0)
        dbm[:, iu, ju] = wide["diff_hi"]
        dbm[:, ju, iu] = -wide["diff_lo"].astype(np.float64)
        if self.families == 2:  # sign[i, j] (v_i + v_j) <= smat[b, i, j] (diagonal: free)
            smat = np.full((n_sets, d, d), np.inf)
            smat[:, iu, ju] = wide["sum_hi"]
            smat[:, ju, iu] = -wide["sum_lo"].astype(np.float64)
            sign = np.ones((d, d))
            sign[ju, iu] = -1.0
        else:
            smat, sign = np.zeros((n_sets, 0, 0)), np.zeros((0, 0))
        start, count = self.cluster_layout(state["cluster_class"], self.n_classes_)
        half_diag = 0.5 * np.sqrt(((wide["box_hi"].astype(np.float64)
                                    - wide["box_lo"].astype(np.float64)) ** 2).sum(1))
        return {"box_lo": wide["box_lo"], "box_hi": wide["box_hi"], "dbm": dbm, "smat": smat,
                "sign": sign, "start": start, "count": count,
                "radius": np.where(half_diag > 0, half_diag, 1.0), "torch": {}}

    def _kernel_args(self, layer: str) -> tuple:
        der = self.derived_[layer]
        return (der["start"], der["count"], der["box_lo"], der["box_hi"], der["dbm"],
                der["smat"], der["sign"], self.families == 2)

    # ------------------------------------------------------------------ queries
    def _accept_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        out = np.empty(len(x), dtype=np.bool_)
        _accept(len(x), x, pred, *self._kernel_args(layer), out)
        return out

    def _slack_np(self, layer: str, z: np.ndarray, pred: np.ndarray, pre: bool):
        val = np.empty(len(z))
        arg = np.empty((len(z), 4), dtype=np.int64)
        _slack(len(z), np.ascontiguousarray(z, dtype=np.float64), pred, *self._kernel_args(layer), pre,
               val, arg)
        return val, arg

    def _decision_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        return self._slack_np(layer, x, pred, False)[0]

    def _novelty_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        out = np.empty(len(x))
        _novelty(len(x), x, pred, *self._kernel_args(layer), self.derived_[layer]["radius"], out)
        return out

    def _bounds_on(self, layer: str, device: torch.device) -> dict[str, torch.Tensor]:
        cache = self.derived_[layer]["torch"]
        key = str(device)
        if key not in cache:
            der = self.derived_[layer]
            cache[key] = {name: torch.from_numpy(np.asarray(der[name], dtype=np.float64))
                          .to(device) for name in ("box_lo", "box_hi", "dbm", "smat")}
        return cache[key]

    def _margin_layer(self, layer: str, z: torch.Tensor, cl: torch.Tensor,
                      preactivation: bool) -> torch.Tensor:
        n = z.shape[0]
        pred = cl.detach().cpu().numpy().astype(np.int64)
        z64 = z.to(torch.float64)
        _, arg = self._slack_np(layer, z64.detach().cpu().numpy(), pred, preactivation)
        a = torch.from_numpy(arg).to(z.device)
        b, kind, i, j = a.unbind(1)
        has = b >= 0
        b = b.clamp(min=0)
        T = self._bounds_on(layer, z.device)
        rows = torch.arange(n, device=z.device)
        zi, zj = z64[rows, i], z64[rows, j]
        ui, uj = (torch.relu(zi), torch.relu(zj)) if preactivation else (zi, zj)
        m = torch.where(kind == K_BOX_LO, zi - T["box_lo"][b, i], T["box_hi"][b, i] - zi)
        m = torch.where(kind == K_BOX_HI_RELU, T["box_hi"][b, i] - torch.relu(zi), m)
        if self.dims_[layer] > 1:  # the same float64 operations as the kernel: equal values
            m = self._pair_margin(T, kind, b, i, j, zi, zj, ui, uj, preactivation, m)
        m = torch.where(has, m, torch.full_like(m, -math.inf))
        if preactivation:  # the sign is the decision on relu(z) (rounding of the rewrite)
            acc = self._slack_np(layer, torch.relu(z64).detach().cpu().numpy(), pred, False)[0] >= 0
            m = fix_margin_sign(m, torch.from_numpy(acc))
        return cast_keep_sign(m, z.dtype)

    def _pair_margin(self, T, kind, b, i, j, zi, zj, ui, uj, pre: bool, m):
        """The active pair constraint's slack (torch twin of the kernel ``_slack``)."""
        lo_d, hi_d = -T["dbm"][b, j, i], T["dbm"][b, i, j]
        if pre:
            m = torch.where(kind == K_DIFF_LO, _t_upper(ui - lo_d, zj, uj) / SQRT2, m)
            m = torch.where(kind == K_DIFF_HI, _t_upper(hi_d + uj, zi, ui) / SQRT2, m)
        else:
            t = ui - uj
            m = torch.where(kind == K_DIFF_LO, (t - lo_d) / SQRT2, m)
            m = torch.where(kind == K_DIFF_HI, (hi_d - t) / SQRT2, m)
        if self.families == 2:
            lo_s, hi_s = -T["smat"][b, j, i], T["smat"][b, i, j]
            if pre:
                lower = torch.minimum(_t_lower(lo_s - uj, zi, ui), _t_lower(lo_s - ui, zj, uj))
                lower = torch.where(lo_s <= 0, torch.full_like(lower, math.inf), lower)
                upper = torch.minimum(_t_upper(hi_s - uj, zi, ui), _t_upper(hi_s - ui, zj, uj))
                m = torch.where(kind == K_SUM_LO, lower / SQRT2, m)
                m = torch.where(kind == K_SUM_HI, upper / SQRT2, m)
            else:
                t = ui + uj
                m = torch.where(kind == K_SUM_LO, (t - lo_s) / SQRT2, m)
                m = torch.where(kind == K_SUM_HI, (hi_s - t) / SQRT2, m)
        return m

    # ------------------------------------------------------------------ files
    def _check_layer_state(self, layer: str, state: Mapping[str, np.ndarray], d: int,
                           n_classes: int) -> str | None:
        problem = self._cluster_problem(state, n_classes)
        if problem:
            return problem
        n_sets = len(state["cluster_class"])
        problem = self._check_memory(d, n_sets)
        if problem:
            return problem
        n_pairs = d * (d - 1) // 2
        expected = {"cluster_class", "cluster_count"}
        for name in self._names():
            width = d if name == "box" else n_pairs
            for side in ("_lo", "_hi"):
                expected.add(name + side)
                problem = array_problem(state, name + side, np.float32, (n_sets, width))
                if problem:
                    return problem
            if (state[name + "_lo"] > state[name + "_hi"]).any():
                return f"{name} bounds are inconsistent (lo > hi)"
        extra = set(state) - expected
        if extra:
            return f"unexpected arrays {sorted(extra)} for a {self.abstraction} monitor"
        return None

    def bounds(self, layer: str | None = None, cls: int | None = None, *,
               tight: bool = False) -> dict[str, np.ndarray]:
        """The float32 bounds of ``layer`` (default: the first), optionally of one class:
        ``{"box_lo", "box_hi", "diff_lo", ...}``, rows = clusters, pair columns in
        ``np.triu_indices(d, 1)`` order; ``tight=True`` gives them before the tolerance."""
        layer = self._resolve_layer(layer)
        src = self.state_[layer] if tight else self._widened(self.state_[layer])
        sel = slice(None)
        if cls is not None:
            sel = self.state_[layer]["cluster_class"] == int(cls)
        return {f"{n}{s}": src[f"{n}{s}"][sel] for n in self._names() for s in ("_lo", "_hi")}


@register
class ZoneMonitor(_PairMonitor):
    """Zones: per cluster, the box and the interval of every difference ``v_i - v_j``."""

    abstraction: ClassVar[str] = "zone"
    families: ClassVar[int] = 1


@register
class OctagonMonitor(_PairMonitor):
    """Octagons: the zone plus the interval of every sum ``v_i + v_j``."""

    abstraction: ClassVar[str] = "octagon"
    families: ClassVar[int] = 2
