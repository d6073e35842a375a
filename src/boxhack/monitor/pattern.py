"""Boolean activation-pattern monitor (Cheng, Nührenberg & Yasuoka, DATE 2019).

Semantics (docs/abstractions.md): the on/off pattern of a layer vector v is ``b_i = [v_i > 0]``
(so the pattern of a ReLU's pre-activation z equals that of relu(z)). Per class, the set of
patterns of the correctly classified training vectors is stored (bit-packed, no clustering).
A prediction is accepted iff the pattern of its vector is within Hamming distance gamma of
a stored pattern of its class.

The Hamming radius is ``gamma`` plus what the tolerance adds: relative ``floor(eps * d)``
(a fraction of the layer's d units), absolute ``floor(eps)`` (a number of units), so
``tolerance=0`` means exactly ``gamma`` and a larger tolerance never rejects more.

Graded score: ``max(0, h - gamma) / d`` with h the Hamming distance to the nearest stored
pattern; ``decision_function``: ``gamma - h``. Margin (for the attacks): for a stored pattern
p, let ``s_i = z_i`` where ``p_i = 1`` and ``-z_i`` where ``p_i = 0`` (positive: unit i agrees
with p); the (gamma+1)-th smallest ``s_i`` is ``>= 0`` iff at most gamma units disagree, and
its absolute value is the L-inf distance (in the layer's units, pre-activations for ReLU
layers) to entering p's Hamming ball. A rejected row's margin is the largest of these over
the class's patterns (found exactly by a compiled, pruned search). An accepted row's margin
is the distance to *leaving every* ball, not only p's: leaving p's ball often enters a
neighbour's (stored patterns of a class differ in few bits), and a margin that only knew p
sent the attacks back and forth across that bit. It is ``||z_F||_2`` for the cheapest set F of
units whose flip leaves every ball of the class, searched over every subset of the
``EXIT_UNITS`` units nearest to flipping and every single unit, each candidate checked by the
exact decision kernel (the previous rule when none leaves). Signs are made equal to the
decision (a unit at exactly 0 is "off").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from boxhack.monitor.base import (
    Monitor,
    array_problem,
    cast_keep_sign,
    check_param,
    fix_margin_sign,
    is_int,
)
from boxhack.monitor.jit import HAVE_NUMBA, kernel, njit, prange
from boxhack.monitor.registry import register

__all__ = ["PatternMonitor", "pack_patterns"]

_NONE = np.int64(1 << 40)  # "no pattern" Hamming distance
#: the margin of an accepted row searches every subset of this many units nearest to
#: flipping (2^k - 1 candidate patterns per row, plus one per other unit)
EXIT_UNITS = 8


def pack_patterns(x: np.ndarray) -> np.ndarray:
    """uint64 (N, ceil(d/64)): bit i % 64 of word i // 64 is ``[x_i > 0]`` (padding bits 0)."""
    n, d = x.shape
    words = (d + 63) // 64
    if HAVE_NUMBA and x.dtype in (np.float32, np.float64):  # one fused pass, no bool copies
        out = np.zeros((n, words), dtype=np.uint64)
        _pack_rows(len(x), np.ascontiguousarray(x), out)
        return out
    bits = np.zeros((n, words * 64), dtype=bool)
    bits[:, :d] = x > 0
    packed = np.packbits(bits, axis=1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64).reshape(n, words)


def unpack_patterns(p: np.ndarray, d: int) -> np.ndarray:
    """bool (N, d) from :func:`pack_patterns` words."""
    raw = np.ascontiguousarray(p.astype("<u8")).view(np.uint8)
    return np.unpackbits(raw, axis=1, bitorder="little")[:, :d].astype(bool)


# ----------------------------------------------------------------------------- kernels
@kernel
def _pack_rows(x, out):  # pragma: no cover - compiled
    """out[i, j // 64] bit j % 64 = [x[i, j] > 0] (out zeroed by the caller)."""
    n, d = x.shape
    words = out.shape[1]
    for i in prange(n):
        for w in range(words):
            word = np.uint64(0)
            for b in range(min(64, d - 64 * w)):
                word |= np.uint64(x[i, 64 * w + b] > 0) << np.uint64(b)
            out[i, w] = word


_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


@njit()
def _popcount(v):  # pragma: no cover - compiled
    v = v - ((v >> np.uint64(1)) & _M1)
    v = (v & _M2) + ((v >> np.uint64(2)) & _M2)
    v = (v + (v >> np.uint64(4))) & _M4
    return np.int64((v * _H01) >> np.uint64(56))


@njit()
def _hamming(q, r, pat, p, limit):  # pragma: no cover - compiled
    """Hamming distance of q[r] and pat[p]; stops early once it exceeds ``limit``."""
    h = 0
    for w in range(q.shape[1]):
        h += _popcount(q[r, w] ^ pat[p, w])
        if h > limit:
            return h
    return h


@njit()
def _compare(q, r, pat, p):  # pragma: no cover - compiled
    for w in range(q.shape[1]):
        if q[r, w] < pat[p, w]:
            return -1
        if q[r, w] > pat[p, w]:
            return 1
    return 0


@kernel
def _accept(q, pred, start, count, pat, gamma, out):  # pragma: no cover - compiled
    n = q.shape[0]
    for r in prange(n):
        c = pred[r]
        lo, hi = start[c], start[c] + count[c]
        inside = False
        if gamma == 0:  # patterns of a class are sorted: binary search
            while lo < hi:
                mid = (lo + hi) // 2
                cmp = _compare(q, r, pat, mid)
                if cmp == 0:
                    inside = True
                    break
                if cmp < 0:
                    hi = mid
                else:
                    lo = mid + 1
        else:
            for p in range(lo, hi):
                if _hamming(q, r, pat, p, gamma) <= gamma:
                    inside = True
                    break
        out[r] = inside


_MUL = np.uint64(0x9E3779B97F4A7C15)
#: the pigeonhole index is used when each of the gamma + 1 chunks has at least this many bits
INDEX_MIN_CHUNK_BITS = 8
#: ... and the class has at least this many patterns (else the plain scan is as quick)
INDEX_MIN_PATTERNS = 32


@njit()
def _chunk_hash(v, r, masks, j):  # pragma: no cover - compiled
    """A 64-bit hash of the bits of row v[r] in chunk j (``masks[j]``: one mask per word)."""
    h = np.uint64(j + 1)
    for w in range(v.shape[1]):
        h = (h ^ (v[r, w] & masks[j, w])) * _MUL
    return h ^ (h >> np.uint64(29))


@kernel
def _accept_indexed(q, pred, start, count, pat, gamma, masks, table, nbits, ptr,
                    ids, out):  # pragma: no cover - compiled
    """As ``_accept``, scanning only candidates: the d bits are split into gamma + 1 chunks
    (gamma 0: one chunk, so one hash probe replaces the binary search), so a pattern within Hamming distance gamma of q equals q on at least one
    chunk (pigeonhole) and lies in q's bucket of that chunk's hash table; every candidate is
    then checked exactly. Class c's table for chunk j: buckets ``ptr[table[c] + j * (2^b + 1)
    + h]`` .. ``+ 1`` (b = nbits[c]) into ``ids`` (pattern rows)."""
    n = q.shape[0]
    chunks = masks.shape[0]
    for r in prange(n):
        c = pred[r]
        inside = False
        if count[c] > 0:
            size = np.uint64(1) << np.uint64(nbits[c])
            for j in range(chunks):
                h = _chunk_hash(q, r, masks, j) & (size - np.uint64(1))
                base = table[c] + j * (np.int64(size) + 1) + np.int64(h)
                for t in range(ptr[base], ptr[base + 1]):
                    if _hamming(q, r, pat, ids[t], gamma) <= gamma:
                        inside = True
                        break
                if inside:
                    break
        out[r] = inside


def chunk_masks(d: int, chunks: int) -> np.ndarray:
    """uint64 (chunks, words): the bits of each of ``chunks`` near-equal runs of d bits."""
    words = (d + 63) // 64
    bounds = np.linspace(0, d, chunks + 1).round().astype(np.int64)
    masks = np.zeros((chunks, words), np.uint64)
    for j in range(chunks):
        for i in range(bounds[j], bounds[j + 1]):
            masks[j, i // 64] |= np.uint64(1) << np.uint64(i % 64)
    return masks


def build_index(pat: np.ndarray, start: np.ndarray, count: np.ndarray, d: int, gamma: int):
    """The pigeonhole hash tables of :func:`_accept_indexed` (derived from the stored
    patterns, never stored), or None when chunks would be too short to select."""
    chunks = gamma + 1
    if d // chunks < INDEX_MIN_CHUNK_BITS or count.max(initial=0) < INDEX_MIN_PATTERNS:
        return None
    masks = chunk_masks(d, chunks)
    nbits = np.array([max(1, int(np.ceil(np.log2(max(2 * m, 2))))) for m in count], np.int64)
    sizes = chunks * ((1 << nbits) + 1)
    table = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    ptr = np.zeros(int(sizes.sum()) + 1, np.int64)
    ids = []
    hashes = np.empty(len(pat), np.uint64)
    for j in range(chunks):
        with np.errstate(over="ignore"):
            h = np.full(len(pat), j + 1, np.uint64)
            for w in range(pat.shape[1]):
                h = (h ^ (pat[:, w] & masks[j, w])) * _MUL
            hashes[:] = h ^ (h >> np.uint64(29))
        for c in range(len(count)):
            if count[c] == 0:
                continue
            rows = np.arange(start[c], start[c] + count[c])
            size = 1 << int(nbits[c])
            bucket = (hashes[rows] & np.uint64(size - 1)).astype(np.int64)
            order = np.argsort(bucket, kind="stable")
            base = int(table[c]) + j * (size + 1)
            offset = sum(len(i) for i in ids)
            ptr[base:base + size + 1] = offset + np.searchsorted(bucket[order],
                                                                 np.arange(size + 1))
            ids.append(rows[order])
    ids_all = np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, np.int64)
    return {"masks": masks, "table": table, "nbits": nbits, "ptr": ptr, "ids": ids_all}


@kernel
def _nearest(q, pred, start, count, pat, out):  # pragma: no cover - compiled
    """Hamming distance to the nearest pattern of class pred[r] (a huge value if none)."""
    n = q.shape[0]
    for r in prange(n):
        c = pred[r]
        best = np.int64(1 << 40)
        for p in range(start[c], start[c] + count[c]):
            h = _hamming(q, r, pat, p, best)
            best = min(best, h)
            if best == 0:
                break
        out[r] = best


@njit()
def _kth_agreement(z, r, bits, p, k, buf):  # pragma: no cover - compiled
    """The k-th smallest (1-based) s_i = z_i if bit i of pattern p is set else -z_i."""
    d = z.shape[1]
    for i in range(d):
        on = (bits[p, i >> 6] >> np.uint64(i & 63)) & np.uint64(1)
        buf[i] = z[r, i] if on else -z[r, i]
    buf.sort()
    return buf[k - 1]


@kernel
def _margin_search(z, q, pred, start, count, pat, gamma, best_p, best_v,
                   accepted):  # pragma: no cover - compiled
    """Exact argmax over class patterns p of the (gamma+1)-th smallest agreement (pruned)."""
    n, d = z.shape
    k = gamma + 1
    for r in prange(n):
        c = pred[r]
        lo, m = start[c], count[c]
        best, bp = -np.inf, -1
        if m == 0:
            best_p[r] = -1
            best_v[r] = -np.inf
            accepted[r] = False
            continue
        h = np.empty(m, np.int64)
        hmin = np.int64(1 << 40)
        for t in range(m):
            h[t] = _hamming(q, r, pat, lo + t, d + 1)
            hmin = min(hmin, h[t])
        accepted[r] = hmin <= gamma
        if k > d:  # every pattern's ball is the whole cube
            best_p[r] = lo
            best_v[r] = np.inf
            continue
        buf = np.empty(d)
        if hmin <= gamma:
            for t in range(m):
                if h[t] <= gamma:
                    v = _kth_agreement(z, r, pat, lo + t, k, buf)
                    if v > best:
                        best, bp = v, lo + t
        else:
            mags = np.abs(z[r])
            mags.sort()
            order = np.argsort(h, kind="mergesort")
            for u in range(m):
                t = order[u]
                bound = -mags[h[t] - gamma - 1]
                if bound <= best:
                    break
                v = _kth_agreement(z, r, pat, lo + t, k, buf)
                if v > best:
                    best, bp = v, lo + t
        best_p[r] = bp
        best_v[r] = best


# ----------------------------------------------------------------------------- monitor
@register
class PatternMonitor(Monitor):
    """Boolean activation patterns: accepted iff within Hamming ``gamma`` (+ tolerance) of a
    training pattern of the predicted class."""

    abstraction: ClassVar[str] = "pattern"
    PARAMS: ClassVar[tuple[str, ...]] = Monitor.PARAMS + ("gamma",)
    uses_preactivation: ClassVar[bool] = True

    def __init__(self, gamma: int = 0, **params: Any) -> None:
        super().__init__(**params)
        self.gamma = gamma

    def _validate_params(self) -> None:
        super()._validate_params()
        check_param(type(self).__name__, "gamma", self.gamma,
                    is_int(self.gamma) and self.gamma >= 0,
                    "give a Hamming distance: an integer >= 0")

    def radius(self, d: int) -> int:
        """The Hamming radius used on a d-unit layer: gamma plus the tolerance's share."""
        tol = float(self.tolerance)
        extra = math.floor(tol * d) if self.relative_tolerance else math.floor(tol)
        return int(self.gamma) + int(extra)

    # ------------------------------------------------------------------ fit / derive
    def _fit_layer(self, layer: str, x: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
        words = (x.shape[1] + 63) // 64
        pats, cls, cnt = [], [], []
        for c in range(len(starts) - 1):
            xc = x[starts[c]:starts[c + 1]]
            if len(xc) == 0:
                continue
            packed = pack_patterns(xc)
            uniq, counts = np.unique(packed, axis=0, return_counts=True)
            order = np.lexsort(uniq.T[::-1])  # lexicographic by word 0, 1, ... (unsigned)
            pats.append(uniq[order])
            cnt.append(counts[order].astype(np.int64))
            cls.append(np.full(len(uniq), c, np.int64))
        return {
            "patterns": np.concatenate(pats) if pats else np.zeros((0, words), np.uint64),
            "pattern_class": np.concatenate(cls) if cls else np.zeros(0, np.int64),
            "pattern_count": np.concatenate(cnt) if cnt else np.zeros(0, np.int64),
        }

    def _derive(self, layer: str, state: dict[str, np.ndarray]) -> dict[str, Any]:
        counts = np.bincount(state["pattern_class"], minlength=self.n_classes_).astype(np.int64)
        start = np.zeros(self.n_classes_, dtype=np.int64)
        start[1:] = np.cumsum(counts)[:-1]
        gamma = self.radius(self.dims_[layer])
        index = build_index(state["patterns"], start, counts, self.dims_[layer], gamma)
        return {"start": start, "count": counts, "gamma": gamma, "index": index}

    # ------------------------------------------------------------------ queries
    def _args(self, layer: str) -> tuple:
        der = self.derived_[layer]
        return der["start"], der["count"], self.state_[layer]["patterns"]

    def _accept_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        return self._accept_packed(layer, pack_patterns(x), pred)

    def _accept_packed(self, layer: str, q: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """bool (N,): packed patterns ``q`` within the Hamming radius of their class's."""
        out = np.empty(len(q), dtype=np.bool_)
        der = self.derived_[layer]
        if der["index"] is not None:
            ix = der["index"]
            _accept_indexed(len(q), q, pred, *self._args(layer), der["gamma"],
                            ix["masks"], ix["table"], ix["nbits"], ix["ptr"], ix["ids"], out)
        else:
            _accept(len(q), q, pred, *self._args(layer), der["gamma"], out)
        return out

    def _exits(self, layer: str, z: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """bool (N, d): for each (accepted) row, a set F of units whose flip leaves every
        stored pattern's Hamming ball, with the smallest ``||z_F||_2`` among the candidates:
        every non-empty subset of the ``EXIT_UNITS`` units nearest to flipping (smallest
        ``|z_i|``) and every single unit. All False where no candidate leaves."""
        n, d = z.shape
        out = np.zeros((n, d), dtype=bool)
        if n == 0:
            return out
        k = min(d, EXIT_UNITS)
        order = np.argsort(np.abs(z), axis=1, kind="stable")
        subsets = (np.arange(1, 1 << k)[:, None] >> np.arange(k)) & 1  # (S, k)
        flips = np.zeros((len(subsets) + d - k, d), dtype=bool)  # in sorted-unit positions
        flips[:len(subsets), :k] = subsets
        flips[len(subsets):, k:] = np.eye(d - k, dtype=bool)
        n_c = len(flips)
        rows = np.arange(n)
        sq = np.take_along_axis(z, order, 1) ** 2
        on = z > 0
        chunk = max(1, (1 << 22) // (n_c * d))
        for r0 in range(0, n, chunk):
            r = rows[r0:r0 + chunk]
            flip = np.zeros((len(r), n_c, d), dtype=bool)  # in unit positions
            np.put_along_axis(flip, np.broadcast_to(order[r, None, :], flip.shape), flips[None],
                              axis=2)
            cand = (on[r, None, :] ^ flip).reshape(-1, d)
            inside = self._accept_packed(layer, pack_patterns(cand), np.repeat(pred[r], n_c))
            cost = np.where(inside.reshape(len(r), n_c), np.inf, sq[r] @ flips.T.astype(float))
            best = cost.argmin(1)
            found = np.isfinite(cost[np.arange(len(r)), best])
            out[r[found]] = flip[np.flatnonzero(found), best[found]]
        return out

    def nearest(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """int64 (N,): Hamming distance to the nearest pattern of the predicted class
        (a huge value for a class without patterns)."""
        out = np.empty(len(x), dtype=np.int64)
        _nearest(len(x), pack_patterns(x), pred, *self._args(layer), out)
        return out

    def _decision_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        h = self.nearest(layer, x, pred)
        return np.where(h >= _NONE, -np.inf, self.derived_[layer]["gamma"] - h.astype(np.float64))

    def _novelty_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        h = self.nearest(layer, x, pred)
        excess = np.maximum(h - self.derived_[layer]["gamma"], 0).astype(np.float64)
        return np.where(h >= _NONE, np.inf, excess / x.shape[1])

    def _margin_layer(self, layer: str, z: torch.Tensor, cl: torch.Tensor,
                      preactivation: bool) -> torch.Tensor:
        n, d = z.shape
        pred = cl.detach().cpu().numpy().astype(np.int64)
        z64 = z.to(torch.float64)
        zn = np.ascontiguousarray(z64.detach().cpu().numpy())
        best_p = np.empty(n, np.int64)
        best_v = np.empty(n)
        accepted = np.empty(n, np.bool_)
        gamma = self.derived_[layer]["gamma"]
        _margin_search(n, zn, pack_patterns(zn), pred, *self._args(layer), gamma, best_p, best_v,
                       accepted)
        has = best_p >= 0
        if gamma + 1 > d:
            m = torch.where(torch.from_numpy(has).to(z.device),
                            torch.full((n,), math.inf, dtype=torch.float64, device=z.device),
                            torch.full((n,), -math.inf, dtype=torch.float64, device=z.device))
            return cast_keep_sign(m + 0 * z64.sum(1), z.dtype)
        bits = unpack_patterns(self.state_[layer]["patterns"][np.maximum(best_p, 0)], d)
        sign = torch.from_numpy(np.where(bits, 1.0, -1.0)).to(z.device)
        s = z64 * sign
        m = torch.kthvalue(s, gamma + 1, dim=1).values
        m = torch.where(torch.from_numpy(has).to(z.device), m, torch.full_like(m, -math.inf))
        inner = np.flatnonzero(accepted & has)
        if len(inner):  # accepted: the distance to a flip that leaves every ball
            flip = np.zeros((n, d), dtype=bool)
            flip[inner] = self._exits(layer, zn[inner], pred[inner])
            found = torch.from_numpy(flip.any(1)).to(z.device)
            fm = torch.from_numpy(flip).to(z.device)
            dist = torch.linalg.vector_norm(torch.where(fm, z64, torch.zeros_like(z64)), dim=1)
            m = torch.where(found, dist, m)
        m = fix_margin_sign(m, torch.from_numpy(accepted))
        return cast_keep_sign(m, z.dtype)

    # ------------------------------------------------------------------ files
    def _check_layer_state(self, layer: str, state: Mapping[str, np.ndarray], d: int,
                           n_classes: int) -> str | None:
        words = (d + 63) // 64
        problem = array_problem(state, "patterns", np.uint64, (-1, words))
        if problem:
            return problem
        n = len(state["patterns"])
        problem = (array_problem(state, "pattern_class", np.int64, (n,))
                   or array_problem(state, "pattern_count", np.int64, (n,)))
        if problem:
            return problem
        cls, pats = state["pattern_class"], state["patterns"]
        if n and (cls.min() < 0 or cls.max() >= n_classes):
            return f"pattern_class holds a class outside 0..{n_classes - 1}"
        if np.any(np.diff(cls) < 0):
            return "pattern_class is not sorted by class"
        if n and state["pattern_count"].min() < 1:
            return "pattern_count has a pattern without training vectors"
        if d % 64 and n and (pats[:, -1] >> np.uint64(d % 64)).any():
            return "patterns have bits set beyond the layer width"
        if n > 1:  # strictly increasing within each class (the binary search relies on it)
            same = cls[1:] == cls[:-1]
            a, b = pats[:-1][same], pats[1:][same]
            diff = a != b
            first = np.argmax(diff, axis=1)
            rows = np.arange(len(a))
            if (~diff.any(axis=1)).any() or (a[rows, first] > b[rows, first]).any():
                return "patterns of a class are not sorted and distinct"
        extra = set(state) - {"patterns", "pattern_class", "pattern_count"}
        if extra:
            return f"unexpected arrays {sorted(extra)} for a pattern monitor"
        return None

    def _fit_counts(self, state: Mapping[str, np.ndarray], n_classes: int) -> np.ndarray:
        out = np.zeros(n_classes, dtype=np.int64)
        np.add.at(out, state["pattern_class"], state["pattern_count"])
        return out

    def _describe_layer(self, layer: str) -> dict[str, Any]:
        cls = self.state_[layer]["pattern_class"]
        return {"n_patterns": len(cls),
                "patterns_per_class": np.bincount(cls, minlength=self.n_classes_).tolist(),
                "hamming_radius": self.derived_[layer]["gamma"]}
