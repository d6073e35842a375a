"""``BoxMonitor``: the Outside-the-Box abstraction monitor, exact and fast, on any PyTorch model.

Semantics (see docs/monitor.md for the full statement):

* fit: for each class y, the layer vectors of the (correctly classified) training inputs of
  class y are clustered by k-means (fixed ``n_clusters`` or the elbow rule) and each cluster is
  wrapped in its tight axis-aligned box ``[lo, hi]`` (per-dimension min / max);
* tolerance ``eps``: relative (default) widens each side by ``eps/2 * (hi - lo)``, so the width
  becomes ``(1 + eps)`` times the tight width and a flat dimension (``lo == hi``) does not grow;
  absolute widens each side by ``eps`` in every dimension (width ``+ 2 eps``);
* bounds are stored as float32, rounded *outward* from the exact float64 widening, and are
  inclusive; decisions are made on float32 feature values, so they are exact and reproducible;
* query: an input predicted as class c with layer vector v is accepted iff v lies in one of
  class c's boxes; a class without boxes rejects everything; with several layers an input is
  accepted only if every layer accepts it.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from boxhack.errors import BoxhackError
from boxhack.infra.files import atomic_path
from boxhack.monitor.clustering import cluster_class
from boxhack.monitor.kernels import accept_rows

FORMAT = "boxhack-monitor"
FORMAT_VERSION = 1
DEFAULT_LAYER = "features"  # the layer name used when features are given as a plain array

# Query kernel tuning: rows per chunk are chosen so one chunk's (rows, 2 d) float32 work
# buffer holds about _CHUNK_ELEMENTS numbers; inputs are processed in blocks of at most
# _BLOCK_ELEMENTS numbers (bounding the sorted copy), whatever N is.
_CHUNK_ELEMENTS = 1 << 20
_BLOCK_ELEMENTS = 1 << 23
# When the cores are busy (load average >= usable cores), torch's multi-threaded ops can run
# 10-100x slower (OpenMP threads wait on each other behind other processes). The kernel then
# keeps each op below torch's parallel grain size (32,768 elements), so it runs inline on one
# thread, without touching the global thread setting.
_SERIAL_ELEMENTS = 1 << 14
_LOAD_CHECK_SECONDS = 1.0
_load_cache = [0.0, False]  # [time of last check, contended?]


def _contended() -> bool:
    """True when the machine looks oversubscribed (checked at most once a second)."""
    if torch.get_num_threads() <= 1:
        return False
    now = time.monotonic()
    if now - _load_cache[0] > _LOAD_CHECK_SECONDS:
        try:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            _load_cache[1] = os.getloadavg()[0] >= (cpus or 1)
        except OSError:
            _load_cache[1] = False
        _load_cache[0] = now
    return bool(_load_cache[1])

_PARAM_NAMES = (
    "n_clusters",
    "clustering_threshold",
    "max_clusters",
    "tolerance",
    "relative_tolerance",
    "only_correct",
    "n_classes",
    "seed",
    "n_init",
)


# ----------------------------------------------------------------------------- helpers
def _round_down_f32(a: np.ndarray) -> np.ndarray:
    """float64 -> float32, never larger than the float64 value (outward for lower bounds)."""
    with np.errstate(over="ignore"):  # out of float32 range -> -inf, refused by the caller
        out = a.astype(np.float32)
    up = out.astype(np.float64) > a
    if up.any():
        out[up] = np.nextafter(out[up], np.float32(-np.inf))
    return out


def _round_up_f32(a: np.ndarray) -> np.ndarray:
    """float64 -> float32, never smaller than the float64 value (outward for upper bounds)."""
    with np.errstate(over="ignore"):  # out of float32 range -> +inf, refused by the caller
        out = a.astype(np.float32)
    down = out.astype(np.float64) < a
    if down.any():
        out[down] = np.nextafter(out[down], np.float32(np.inf))
    return out


def widen(
    tight_lo: np.ndarray, tight_hi: np.ndarray, tolerance: float, relative: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Widen tight float32 boxes by ``tolerance``; returns float32 ``(lo, hi)`` rounded outward.

    Relative: each side moves by ``tolerance / 2 * (hi - lo)`` (flat dimensions stay flat).
    Absolute: each side moves by ``tolerance``. The widening is computed in float64 and the
    result rounded outward to float32, so the stored box contains the exact widened box.
    """
    lo64 = np.asarray(tight_lo, dtype=np.float64)
    hi64 = np.asarray(tight_hi, dtype=np.float64)
    if tolerance == 0:
        return np.asarray(tight_lo, np.float32).copy(), np.asarray(tight_hi, np.float32).copy()
    pad = (tolerance / 2.0) * (hi64 - lo64) if relative else np.full_like(lo64, tolerance)
    return _round_down_f32(lo64 - pad), _round_up_f32(hi64 + pad)


def _to_numpy(a, what: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise BoxhackError(f"{what} must be an array, got {type(a).__name__} ({exc})")


def _check_finite(x: np.ndarray, what: str) -> None:
    # one fast pass: a finite sum implies all finite (an overflowing sum falls back to a scan)
    if x.size and not np.isfinite(x.sum()):
        bad = ~np.isfinite(x)
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            raise BoxhackError(
                f"{what} contains NaN or infinite values ({int(bad.sum())} entries, first in "
                f"row {int(rows[0])}); check the model or the inputs"
            )


def _check_param(name: str, value, ok: bool, want: str) -> None:
    if not ok:
        raise BoxhackError(f"BoxMonitor parameter {name}={value!r} is invalid: {want}")


def _jsonable(params: dict) -> dict:
    out = {}
    for k, v in params.items():
        if isinstance(v, (bool, np.bool_)):
            out[k] = bool(v)
        elif _is_int(v):
            out[k] = int(v)
        elif isinstance(v, numbers.Real):
            out[k] = float(v)
        else:
            out[k] = v
    return out


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


# ----------------------------------------------------------------------------- monitor
class BoxMonitor:
    """Outside-the-Box monitor: per-class unions of axis-aligned boxes at one or more layers.

    Parameters
    ----------
    n_clusters : int or None
        Fixed number of k-means clusters (boxes) per class; ``None`` chooses k per class by the
        elbow rule with ``clustering_threshold``. k never exceeds a class's distinct vectors.
    clustering_threshold : float
        Elbow rule: go from k to k + 1 while ``1 - inertia(k+1)/inertia(k) >= threshold``
        (0.07 as in the Outside-the-Box experiments). Ignored when ``n_clusters`` is set.
    max_clusters : int
        Cap on k for the elbow rule.
    tolerance : float
        Box widening epsilon >= 0 (0 = tight boxes).
    relative_tolerance : bool
        True: each side grows by ``tolerance/2`` of the box width in that dimension (width
        becomes ``(1 + tolerance)`` x, flat dimensions do not grow). False: each side grows by
        ``tolerance`` in every dimension.
    only_correct : bool
        Build boxes only from training inputs the model classifies correctly.
    n_classes : int or None
        Number of classes; ``None`` infers ``max(label) + 1`` at fit time.
    seed : int
        k-means random state.
    n_init : int
        k-means restarts per k.

    Learned attributes (dicts are keyed by layer name): ``layers_``, ``dims_``, ``n_classes_``,
    ``tight_lo_``, ``tight_hi_`` (float32, boxes x d), ``lo_``, ``hi_`` (widened),
    ``box_class_`` (int64, boxes sorted by class), ``box_count_`` (training vectors per box),
    ``n_clusters_`` (int64 per class), ``n_fit_`` (training vectors used per class),
    ``metadata_`` (free-form JSON dict, e.g. the model's sha256).
    """

    def __init__(
        self,
        n_clusters: int | None = None,
        *,
        clustering_threshold: float = 0.07,
        max_clusters: int = 10,
        tolerance: float = 0.0,
        relative_tolerance: bool = True,
        only_correct: bool = True,
        n_classes: int | None = None,
        seed: int = 0,
        n_init: int = 3,
    ):
        self.n_clusters = n_clusters
        self.clustering_threshold = clustering_threshold
        self.max_clusters = max_clusters
        self.tolerance = tolerance
        self.relative_tolerance = relative_tolerance
        self.only_correct = only_correct
        self.n_classes = n_classes
        self.seed = seed
        self.n_init = n_init

    # ------------------------------------------------------------------ sklearn plumbing
    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in _PARAM_NAMES}

    def set_params(self, **params) -> BoxMonitor:
        for name, value in params.items():
            if name not in _PARAM_NAMES:
                raise BoxhackError(
                    f"BoxMonitor has no parameter {name!r}; parameters: {', '.join(_PARAM_NAMES)}"
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = BoxMonitor().get_params()
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults[k]]
        return f"BoxMonitor({', '.join(changed)})"

    def _validate_params(self) -> None:
        p = self.get_params()
        _check_param("n_clusters", p["n_clusters"],
                     p["n_clusters"] is None or (_is_int(p["n_clusters"]) and p["n_clusters"] >= 1),
                     "give an integer >= 1, or None for the elbow rule")
        thr = p["clustering_threshold"]
        _check_param("clustering_threshold", thr,
                     isinstance(thr, numbers.Real) and not isinstance(thr, bool)
                     and math.isfinite(thr) and 0 <= thr <= 1,
                     "give a number in [0, 1] (0.07 in the Outside-the-Box experiments)")
        _check_param("max_clusters", p["max_clusters"],
                     _is_int(p["max_clusters"]) and p["max_clusters"] >= 1, "give an integer >= 1")
        tol = p["tolerance"]
        _check_param("tolerance", tol,
                     isinstance(tol, numbers.Real) and not isinstance(tol, bool)
                     and math.isfinite(tol) and tol >= 0, "give a finite number >= 0")
        for flag in ("relative_tolerance", "only_correct"):
            _check_param(flag, p[flag], isinstance(p[flag], (bool, np.bool_)), "give True or False")
        _check_param("n_classes", p["n_classes"],
                     p["n_classes"] is None or (_is_int(p["n_classes"]) and p["n_classes"] >= 1),
                     "give an integer >= 1, or None to infer it from the labels")
        _check_param("seed", p["seed"], _is_int(p["seed"]) and p["seed"] >= 0,
                     "give an integer >= 0")
        _check_param("n_init", p["n_init"], _is_int(p["n_init"]) and p["n_init"] >= 1,
                     "give an integer >= 1")

    def _check_fitted(self) -> None:
        if not hasattr(self, "layers_"):
            raise BoxhackError(
                "this BoxMonitor is not fitted yet; call fit(...) or fit_features(...) first, "
                "or BoxMonitor.load(path)"
            )

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "layers_")

    # ------------------------------------------------------------------ input checking
    def _feature_dict(self, features, what: str, *, fitting: bool = False) -> dict[str, np.ndarray]:
        """Normalise features to ``{layer: float32 C-contiguous (N, d)}``, checked."""
        if isinstance(features, Mapping):
            if not features:
                raise BoxhackError(f"{what}: the feature dict is empty; give {{layer: (N, d) array}}")
            raw = {str(k): v for k, v in features.items()}
        else:
            if not fitting and len(self.layers_) != 1:
                raise BoxhackError(
                    f"{what}: this monitor watches {len(self.layers_)} layers "
                    f"({', '.join(self.layers_)}); pass a dict {{layer: (N, d) array}}"
                )
            raw = {DEFAULT_LAYER if fitting else self.layers_[0]: features}
        if not fitting:
            missing = [layer for layer in self.layers_ if layer not in raw]
            extra = [layer for layer in raw if layer not in self.layers_]
            if missing or extra:
                raise BoxhackError(
                    f"{what}: the monitor watches layers {self.layers_}, got features for "
                    f"{sorted(raw)}" + (f"; missing {missing}" if missing else "")
                    + (f"; unknown {extra}" if extra else "")
                )
        out: dict[str, np.ndarray] = {}
        n = None
        for layer in (raw if fitting else self.layers_):
            a = _to_numpy(raw[layer], f"{what} for layer {layer!r}")
            if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
                raise BoxhackError(f"{what} for layer {layer!r} must be numeric, got {a.dtype}")
            if a.ndim != 2:
                raise BoxhackError(
                    f"{what} for layer {layer!r} must be 2-D (N, d), got shape {a.shape}"
                    + ("; use x.reshape(1, -1) for one vector" if a.ndim == 1 else "")
                    + ("; flatten it with x.reshape(len(x), -1)" if a.ndim > 2 else "")
                )
            if a.shape[0] == 0:
                raise BoxhackError(f"{what} for layer {layer!r} is empty (0 rows)")
            if a.shape[1] == 0:
                raise BoxhackError(f"{what} for layer {layer!r} has 0 dimensions")
            if not fitting and a.shape[1] != self.dims_[layer]:
                raise BoxhackError(
                    f"{what} for layer {layer!r} has {a.shape[1]} dimensions but the monitor "
                    f"was fitted on {self.dims_[layer]}; wrong layer or model?"
                )
            if n is not None and a.shape[0] != n:
                raise BoxhackError(
                    f"{what}: layers have different numbers of rows ({n} vs {a.shape[0]})"
                )
            n = a.shape[0]
            a = np.ascontiguousarray(a, dtype=np.float32)
            _check_finite(a, f"{what} for layer {layer!r}")
            out[layer] = a
        return out

    def _class_array(self, c, n: int, what: str, *, n_classes: int | None) -> np.ndarray:
        a = _to_numpy(c, what)
        if a.ndim != 1 or len(a) != n:
            raise BoxhackError(f"{what} must be a 1-D array of {n} class indices, got shape {a.shape}")
        if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
            if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
                a = a.astype(np.int64)
            else:
                raise BoxhackError(f"{what} must hold integer class indices, got dtype {a.dtype}")
        a = a.astype(np.int64, copy=False)
        if n and a.min() < 0:
            raise BoxhackError(f"{what} has a negative class index {int(a.min())}")
        if n_classes is not None and n and a.max() >= n_classes:
            raise BoxhackError(
                f"{what} has class index {int(a.max())} but the monitor has n_classes="
                f"{n_classes} (valid: 0..{n_classes - 1})"
            )
        return a

    # ------------------------------------------------------------------ fitting
    def fit_features(self, features, labels, predictions=None, *, metadata: dict | None = None,
                     model_sha256: str | None = None) -> BoxMonitor:
        """Fit on precomputed layer vectors.

        ``features``: an (N, d) array (one layer, named ``"features"``) or a dict
        ``{layer: (N, d_l) array}``. ``labels``: true class indices (N,). ``predictions``:
        the model's predicted classes (N,); with ``only_correct`` rows where prediction !=
        label are left out. Boxes of class y are built from the rows labelled y.
        """
        self._validate_params()
        feats = self._feature_dict(features, "features", fitting=True)
        n = len(next(iter(feats.values())))
        labels = self._class_array(labels, n, "labels", n_classes=self.n_classes)
        keep = np.ones(n, dtype=bool)
        if predictions is not None:
            preds = self._class_array(predictions, n, "predictions", n_classes=None)
            if self.only_correct:
                keep = preds == labels
        n_classes = int(self.n_classes) if self.n_classes is not None else int(labels.max()) + 1
        if not keep.any():
            raise BoxhackError(
                "no training vector is left to build boxes from: the model classifies none of "
                "the training inputs correctly (use only_correct=False to use them all)"
            )
        labels_used = labels[keep]
        order = np.argsort(labels_used, kind="stable")
        labels_sorted = labels_used[order]
        counts = np.bincount(labels_sorted, minlength=n_classes)
        starts = np.concatenate([[0], np.cumsum(counts)])

        state: dict = {"tight_lo_": {}, "tight_hi_": {}, "box_class_": {}, "box_count_": {},
                       "n_clusters_": {}}
        for layer, x in feats.items():
            xs = x[keep][order]
            los, his, cls, cnt = [], [], [], []
            ks = np.zeros(n_classes, dtype=np.int64)
            for c in range(n_classes):
                xc = xs[starts[c] : starts[c + 1]]
                if len(xc) == 0:
                    continue
                result = cluster_class(
                    xc, n_clusters=self.n_clusters, threshold=float(self.clustering_threshold),
                    max_clusters=int(self.max_clusters), seed=int(self.seed),
                    n_init=int(self.n_init),
                )
                ks[c] = result.k
                by = np.argsort(result.labels, kind="stable")
                xb = xc[by]
                bounds = np.concatenate([[0], np.cumsum(np.bincount(result.labels, minlength=result.k))])
                los.append(np.minimum.reduceat(xb, bounds[:-1], axis=0))
                his.append(np.maximum.reduceat(xb, bounds[:-1], axis=0))
                cls.append(np.full(result.k, c, dtype=np.int64))
                cnt.append(np.diff(bounds).astype(np.int64))
            d = x.shape[1]
            state["tight_lo_"][layer] = np.concatenate(los).astype(np.float32) if los else np.zeros((0, d), np.float32)
            state["tight_hi_"][layer] = np.concatenate(his).astype(np.float32) if his else np.zeros((0, d), np.float32)
            state["box_class_"][layer] = np.concatenate(cls) if cls else np.zeros(0, np.int64)
            state["box_count_"][layer] = np.concatenate(cnt) if cnt else np.zeros(0, np.int64)
            state["n_clusters_"][layer] = ks

        meta = dict(metadata or {})
        if model_sha256 is not None:
            meta["model_sha256"] = str(model_sha256)
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as exc:
            raise BoxhackError(f"metadata must be JSON-serialisable: {exc}")
        self._set_state(
            layers=list(feats), dims={k: int(v.shape[1]) for k, v in feats.items()},
            n_classes=n_classes, n_fit=counts.astype(np.int64), metadata=meta, **state,
        )
        return self

    def _set_state(self, *, layers, dims, n_classes, n_fit, metadata, tight_lo_, tight_hi_,
                   box_class_, box_count_, n_clusters_) -> None:
        self.layers_ = list(layers)
        self.dims_ = dict(dims)
        self.n_classes_ = int(n_classes)
        self.n_fit_ = np.asarray(n_fit, dtype=np.int64)
        self.metadata_ = dict(metadata)
        self.tight_lo_ = tight_lo_
        self.tight_hi_ = tight_hi_
        self.box_class_ = box_class_
        self.box_count_ = box_count_
        self.n_clusters_ = n_clusters_
        self._rewiden()

    def _rewiden(self) -> None:
        self.lo_, self.hi_ = {}, {}
        for layer in self.layers_:
            self.lo_[layer], self.hi_[layer] = widen(
                self.tight_lo_[layer], self.tight_hi_[layer], float(self.tolerance),
                bool(self.relative_tolerance),
            )
            if not (np.isfinite(self.lo_[layer]).all() and np.isfinite(self.hi_[layer]).all()):
                raise BoxhackError(
                    f"tolerance {self.tolerance!r} widens the boxes of layer {layer!r} beyond "
                    "the float32 range; use a smaller tolerance"
                )
        self._cache: dict = {}

    def with_tolerance(self, tolerance: float, relative_tolerance: bool | None = None) -> BoxMonitor:
        """A copy with the same clusters and another tolerance (no refitting)."""
        self._check_fitted()
        other = copy.copy(self)
        other.tolerance = tolerance
        if relative_tolerance is not None:
            other.relative_tolerance = relative_tolerance
        other._validate_params()
        other._rewiden()
        return other

    def fit(self, model: nn.Module, layers: str | Sequence[str], inputs, labels,
            batch_size: int = 1024, *, metadata: dict | None = None,
            model_sha256: str | None = None) -> BoxMonitor:
        """Fit on a model: run ``inputs`` through ``model`` (batched, no grad, eval mode),
        record ``layers`` (a name or list of module paths) and fit on those vectors. With
        ``only_correct`` only correctly classified inputs build the boxes."""
        from boxhack.models.layers import collect

        names = self._layer_names(model, layers)
        labels_np = _to_numpy(labels, "labels")
        if len(labels_np) != len(inputs):
            raise BoxhackError(f"got {len(inputs)} inputs but {len(labels_np)} labels")
        if len(labels_np) == 0:
            raise BoxhackError("cannot fit a monitor on 0 inputs")
        from boxhack.monitor.compat import state_sha256

        pred, feats = collect(model, names, inputs, batch_size=batch_size)
        meta = dict(metadata or {})
        meta.setdefault("model_state_sha256", state_sha256(model))
        return self.fit_features(feats, labels_np, pred, metadata=meta,
                                 model_sha256=model_sha256)

    @staticmethod
    def _layer_names(model: nn.Module, layers) -> list[str]:
        from boxhack.models.layers import get_layer

        names = [layers] if isinstance(layers, str) else list(layers)
        if not names:
            raise BoxhackError("give at least one layer to monitor")
        if len(set(names)) != len(names):
            raise BoxhackError(f"layer names repeat: {names}")
        for name in names:
            get_layer(model, name)  # raises a BoxhackError listing the layers
        return names

    # ------------------------------------------------------------------ queries (numpy)
    def _padded(self, layer: str, device=None, dtype=torch.float32):
        """Boxes of ``layer`` as (C, Kmax, d) tensors; missing boxes are empty (lo=+inf, hi=-inf)."""
        key = (layer, str(device), dtype)
        if key not in self._cache:
            cls = self.box_class_[layer]
            counts = np.bincount(cls, minlength=self.n_classes_)
            kmax = max(int(counts.max(initial=0)), 1)
            d = self.dims_[layer]
            lo = np.full((self.n_classes_, kmax, d), np.inf, dtype=np.float32)
            hi = np.full((self.n_classes_, kmax, d), -np.inf, dtype=np.float32)
            slot = np.arange(len(cls)) - np.concatenate([[0], np.cumsum(counts)])[cls]
            lo[cls, slot] = self.lo_[layer]
            hi[cls, slot] = self.hi_[layer]
            self._cache[key] = (
                torch.from_numpy(lo).to(device=device, dtype=dtype),
                torch.from_numpy(hi).to(device=device, dtype=dtype),
                counts,
            )
        return self._cache[key]

    def _layer_margin(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """max over class-pred boxes of min_j min(v_j - lo_j, hi_j - v_j), float32, exact sign.

        Rows are sorted by predicted class (radix argsort) and each class's rows are checked
        against its boxes in cache-sized chunks, one box at a time, with in-place torch ops.
        """
        lo, hi, counts_c = self._padded(layer)
        n, d = x.shape
        out = np.empty(n, dtype=np.float32)
        chunk_elements = _SERIAL_ELEMENTS if _contended() else _CHUNK_ELEMENTS
        chunk = max(8, chunk_elements // (2 * d))
        block = max(chunk, _BLOCK_ELEMENTS // d)
        key_dtype = np.uint8 if self.n_classes_ <= 256 else np.int32
        buf = torch.empty(min(chunk, n * lo.shape[1]), 2 * d)
        tmp = torch.empty(min(chunk, n))
        x_t = torch.from_numpy(x)
        for b0 in range(0, n, block):
            b1 = min(n, b0 + block)
            p = pred[b0:b1]
            order = np.argsort(p.astype(key_dtype), kind="stable")
            starts = np.concatenate([[0], np.cumsum(np.bincount(p, minlength=self.n_classes_))])
            order_t = torch.from_numpy(order)
            xs = x_t[b0:b1].index_select(0, order_t)
            res = torch.empty(b1 - b0)
            for c in range(self.n_classes_):
                s0, s1 = int(starts[c]), int(starts[c + 1])
                if s0 == s1:
                    continue
                k_c = int(counts_c[c])
                if k_c == 0:
                    res[s0:s1] = -np.inf
                    continue
                if k_c > 1 and (s1 - s0) * k_c <= chunk:
                    # few rows: all boxes of the class in one broadcast (fewer op calls)
                    xc = xs[s0:s1, None, :]
                    dbuf = buf.view(-1)[: (s1 - s0) * k_c * 2 * d].view(s1 - s0, k_c, 2 * d)
                    torch.sub(xc, lo[c, :k_c], out=dbuf[:, :, :d])
                    torch.sub(hi[c, :k_c], xc, out=dbuf[:, :, d:])
                    torch.amax(torch.amin(dbuf, 2), 1, out=res[s0:s1])
                    continue
                for r0 in range(s0, s1, chunk):
                    r1 = min(s1, r0 + chunk)
                    xc = xs[r0:r1]
                    dbuf = buf[: r1 - r0]
                    r = res[r0:r1]
                    for k in range(k_c):
                        torch.sub(xc, lo[c, k], out=dbuf[:, :d])
                        torch.sub(hi[c, k], xc, out=dbuf[:, d:])
                        if k == 0:
                            torch.amin(dbuf, 1, out=r)
                        else:
                            t = tmp[: r1 - r0]
                            torch.amin(dbuf, 1, out=t)
                            torch.maximum(r, t, out=r)
            out_block = np.empty(b1 - b0, dtype=np.float32)
            out_block[order] = res.numpy()
            out[b0:b1] = out_block
        return out

    def _prepare_query(self, features, predicted, what="features"):
        self._check_fitted()
        feats = self._feature_dict(features, what)
        n = len(next(iter(feats.values())))
        pred = self._class_array(predicted, n, "predicted", n_classes=self.n_classes_)
        return feats, pred

    def decision_margin(self, features, predicted) -> np.ndarray:
        """Non-differentiable numpy margin (float32, N): ``>= 0`` exactly when accepted.

        Same value as :meth:`margin` with ``preactivation=False`` (min over layers of the max
        over the predicted class's boxes of the smallest distance to a face, negative
        outside); ``-inf`` for a class without boxes.
        """
        feats, pred = self._prepare_query(features, predicted)
        return self._margin_np(feats, pred)

    def _margin_np(self, feats, pred) -> np.ndarray:
        out = None
        for layer in self.layers_:
            m = self._layer_margin(layer, feats[layer], pred)
            out = m if out is None else np.minimum(out, m)
        return out

    def accepts_features(self, features, predicted) -> np.ndarray:
        """Boolean (N,): True where the layer vector(s) lie in a box of the predicted class
        (at every monitored layer)."""
        feats, pred = self._prepare_query(features, predicted)
        out = None
        for layer in self.layers_:
            ok = accept_rows(feats[layer], pred, self.lo_[layer], self.hi_[layer],
                             self.box_class_[layer], self.n_classes_)
            if ok is None:  # no numba: the vectorised margin path decides identically
                return self._margin_np(feats, pred) >= 0
            out = ok if out is None else out & ok
        return out

    def score(self, features, predicted) -> np.ndarray:
        """Graded novelty score (float64, N): 0 inside a box of the predicted class, else

            min over that class's boxes b of  ||e_b(v)||_2 / r_b,
            e_b(v)_j = max(lo_bj - v_j, 0, v_j - hi_bj),  r_b = ||hi_b - lo_b||_2 / 2

        i.e. the Euclidean distance to box b relative to b's half-diagonal; a box that is a
        single point (r_b = 0) uses the plain distance. Flat dimensions count fully in the
        distance and add nothing to r_b. ``inf`` for a class without boxes; with several layers
        the largest layer score. ``score == 0`` exactly when the input is accepted."""
        feats, pred = self._prepare_query(features, predicted)
        out = None
        for layer in self.layers_:
            s = self._layer_score(layer, feats[layer], pred)
            out = s if out is None else np.maximum(out, s)
        return out

    def _layer_score(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        cls = self.box_class_[layer]
        lo_all = self.lo_[layer].astype(np.float64)
        hi_all = self.hi_[layer].astype(np.float64)
        radius = 0.5 * np.sqrt(((hi_all - lo_all) ** 2).sum(1))
        radius = np.where(radius > 0, radius, 1.0)
        out = np.full(len(x), np.inf)
        d = x.shape[1]
        chunk = max(16, (1 << 21) // (d * max(1, int(np.bincount(cls).max(initial=1)))))
        for c in np.unique(pred):
            boxes = np.flatnonzero(cls == c)
            if len(boxes) == 0:
                continue
            rows = np.flatnonzero(pred == c)
            lo, hi, r = lo_all[boxes], hi_all[boxes], radius[boxes]
            for r0 in range(0, len(rows), chunk):
                idx = rows[r0 : r0 + chunk]
                v = x[idx].astype(np.float64)[:, None, :]
                e = np.maximum(lo - v, 0.0) + np.maximum(v - hi, 0.0)
                out[idx] = (np.sqrt((e * e).sum(-1)) / r).min(1)
        return out

    # ------------------------------------------------------------------ differentiable margin
    def margin(self, features, classes, *, preactivation: bool | Mapping = False) -> torch.Tensor:
        """Differentiable acceptance margin (N,): ``margin >= 0`` iff accepted, exactly.

        Per box b of class c: ``m_b(v) = min_j min(v_j - lo_bj, hi_bj - v_j)``; the margin is
        the max over class ``classes[i]``'s boxes, and with several layers the min over layers.
        A class without boxes gives ``-inf``.

        ``preactivation=True`` (or a dict ``{layer: bool}``) says the given features are
        pre-activations z of a ReLU, v = relu(z): dimensions with ``lo > 0`` use
        ``lo <= z <= hi``; dimensions with ``lo <= 0`` drop the lower side and use
        ``hi - z`` (``hi - relu(z)`` if ``hi < 0``). The sign is the same as on relu(z), and
        dead units (lo = hi = 0) keep a gradient.

        Computed in the features' dtype (float32 or float64; others are cast to float32).
        """
        self._check_fitted()
        if isinstance(features, Mapping):
            feats = {str(k): v for k, v in features.items()}
        else:
            if len(self.layers_) != 1:
                raise BoxhackError(
                    f"this monitor watches layers {self.layers_}; pass a dict {{layer: tensor}}"
                )
            feats = {self.layers_[0]: features}
        missing = [layer for layer in self.layers_ if layer not in feats]
        if missing:
            raise BoxhackError(f"margin: no features for monitored layer(s) {missing}")
        if not isinstance(classes, torch.Tensor):
            classes = torch.as_tensor(np.asarray(classes))
        out = None
        for layer in self.layers_:
            z = feats[layer]
            if not isinstance(z, torch.Tensor):
                raise BoxhackError(f"margin: features for layer {layer!r} must be a torch.Tensor")
            if z.dim() != 2:
                z = z.flatten(1) if z.dim() > 2 else z
            if z.dim() != 2 or z.shape[1] != self.dims_[layer]:
                raise BoxhackError(
                    f"margin: features for layer {layer!r} have shape {tuple(z.shape)}, expected "
                    f"(N, {self.dims_[layer]})"
                )
            if z.dtype not in (torch.float32, torch.float64):
                z = z.float()
            cl = classes.to(device=z.device, dtype=torch.long).reshape(-1)
            if cl.numel() != z.shape[0]:
                raise BoxhackError(f"margin: {cl.numel()} classes for {z.shape[0]} rows")
            if cl.numel() and (int(cl.min()) < 0 or int(cl.max()) >= self.n_classes_):
                raise BoxhackError(
                    f"margin: class index out of range 0..{self.n_classes_ - 1} "
                    f"(got {int(cl.min())}..{int(cl.max())})"
                )
            pre = preactivation.get(layer, False) if isinstance(preactivation, Mapping) else preactivation
            lo, hi, _ = self._padded(layer, z.device, z.dtype)
            L, H = lo[cl], hi[cl]  # (N, K, d)
            v = z.unsqueeze(1)
            if pre:
                lower = torch.where(L > 0, v - L, torch.full_like(L, math.inf))
                upper = torch.where(H >= 0, H - v, H - torch.relu(v))
            else:
                lower = v - L
                upper = H - v
            m = torch.minimum(lower, upper).amin(-1).amax(-1)
            out = m if out is None else torch.minimum(out, m)
        return out

    # ------------------------------------------------------------------ model level
    def _monitored_layers(self, model: nn.Module) -> tuple[list[str], list[str]]:
        from boxhack.models.layers import get_layer

        relu, other = [], []
        for layer in self.layers_:
            (relu if isinstance(get_layer(model, layer), nn.ReLU) else other).append(layer)
        return relu, other

    def forward_margin(self, model: nn.Module, x: torch.Tensor, classes=None):
        """One differentiable forward: ``(logits, margin)``.

        For each monitored layer that is an ``nn.ReLU`` module the layer's input
        (pre-activation) is tapped and the pre-activation rule of :meth:`margin` is used;
        otherwise the layer's output. ``classes=None`` uses the model's predicted class
        (argmax of the logits, no gradient through it). The model runs in eval mode (its mode
        is restored afterwards). ``margin >= 0`` equals ``predict(model, x)[1]`` for the same
        batch (see docs/monitor.md on BLAS batch-size effects).
        """
        from boxhack.models.layers import tap

        self._check_fitted()
        relu, other = self._monitored_layers(model)
        was_training = model.training
        model.eval()
        try:
            with tap(model, relu, inputs=True) as pre, tap(model, other) as post:
                logits = model(x)
        finally:
            model.train(was_training)
        feats = {**{k: pre[k] for k in relu}, **{k: post[k] for k in other}}
        if classes is None:
            classes = logits.detach().argmax(1)
        m = self.margin(feats, classes, preactivation={k: True for k in relu})
        return logits, m

    def _collect(self, model, inputs, batch_size):
        from boxhack.models.layers import collect

        self._check_fitted()
        names = self._layer_names(model, self.layers_)
        if len(inputs) == 0:
            raise BoxhackError("no inputs given (0 rows)")
        return collect(model, names, inputs, batch_size=batch_size)

    def predict(self, model: nn.Module, inputs, *, batch_size: int = 1024):
        """``(predicted classes int64 (N,), accepted bool (N,))`` for raw inputs."""
        pred, feats = self._collect(model, inputs, batch_size)
        return pred, self.accepts_features(feats, pred)

    def accepts(self, model: nn.Module, inputs, *, batch_size: int = 1024) -> np.ndarray:
        """Boolean acceptance mask for raw inputs."""
        return self.predict(model, inputs, batch_size=batch_size)[1]

    def score_inputs(self, model: nn.Module, inputs, *, batch_size: int = 1024) -> np.ndarray:
        """Graded novelty score (see :meth:`score`) for raw inputs."""
        pred, feats = self._collect(model, inputs, batch_size)
        return self.score(feats, pred)

    # ------------------------------------------------------------------ introspection
    def boxes(self, layer: str | None = None, cls: int | None = None, *, tight: bool = False):
        """``(lo, hi)`` float32 arrays (boxes x d) of ``layer`` (default: the first),
        optionally of one class; ``tight=True`` gives the boxes before the tolerance."""
        self._check_fitted()
        layer = self._resolve_layer(layer)
        lo = (self.tight_lo_ if tight else self.lo_)[layer]
        hi = (self.tight_hi_ if tight else self.hi_)[layer]
        if cls is None:
            return lo, hi
        sel = self.box_class_[layer] == int(cls)
        return lo[sel], hi[sel]

    def _resolve_layer(self, layer):
        if layer is None:
            return self.layers_[0]
        if layer not in self.layers_:
            raise BoxhackError(f"layer {layer!r} is not monitored; monitored: {self.layers_}")
        return layer

    def summary(self) -> dict:
        """JSON-able description: params, layers, dims, boxes per class, training counts."""
        self._check_fitted()
        return {
            "params": _jsonable(self.get_params()),
            "layers": list(self.layers_),
            "dims": dict(self.dims_),
            "n_classes": self.n_classes_,
            "n_fit_per_class": self.n_fit_.tolist(),
            "boxes_per_class": {k: v.tolist() for k, v in self.n_clusters_.items()},
            "n_boxes": {k: len(v) for k, v in self.box_class_.items()},
            "metadata": dict(self.metadata_),
        }

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.npz`` (arrays + a JSON metadata string); returns the path written.

        The file is written atomically and exactly at ``path`` (no ``.npz`` is appended)."""
        self._check_fitted()
        path = Path(path)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "params": _jsonable(self.get_params()),
            "layers": list(self.layers_),
            "dims": [int(self.dims_[k]) for k in self.layers_],
            "n_boxes": [len(self.box_class_[k]) for k in self.layers_],
            "n_classes": self.n_classes_,
            "metadata": self.metadata_,
        }
        try:
            text = json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise BoxhackError(f"cannot save the monitor: its metadata is not plain JSON ({exc})")
        arrays = {"meta": np.array(text), "n_fit": self.n_fit_}
        for i, layer in enumerate(self.layers_):
            arrays[f"tight_lo_{i}"] = self.tight_lo_[layer]
            arrays[f"tight_hi_{i}"] = self.tight_hi_[layer]
            arrays[f"lo_{i}"] = self.lo_[layer]
            arrays[f"hi_{i}"] = self.hi_[layer]
            arrays[f"box_class_{i}"] = self.box_class_[layer]
            arrays[f"box_count_{i}"] = self.box_count_[layer]
            arrays[f"n_clusters_{i}"] = self.n_clusters_[layer]
        if path.is_dir():
            raise BoxhackError(f"cannot write the monitor to {path}: it is a directory; give a "
                               "file name such as monitor.npz")
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        except OSError as exc:
            raise BoxhackError(f"cannot write the monitor to {path}: {exc.strerror or exc}; "
                               "choose a writable location") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> BoxMonitor:
        """Read a file written by :meth:`save` (``allow_pickle=False``); checks everything."""
        path = Path(path)
        if not path.is_file():
            hint = " (did you mean the same name with .npz?)" if path.with_suffix(".npz").is_file() else ""
            raise BoxhackError(f"monitor file {path} not found{hint}")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
            raise BoxhackError(
                f"cannot read monitor file {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__} "
                "(corrupt or truncated? refit it with `boxhack monitor fit`)"
            )
        return cls._from_arrays(arrays, str(path))

    @classmethod
    def _from_arrays(cls, arrays: dict, source: str) -> BoxMonitor:
        """Rebuild a monitor from a file's arrays, checking everything a hand edit or a
        corrupt file could garble (see docs/monitor.md, "Files")."""

        def bad(msg: str) -> BoxhackError:
            return BoxhackError(f"{source} is not a valid boxhack monitor file: {msg}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if "meta" not in arrays:
            raise bad("no metadata record")
        raw = arrays["meta"]
        if raw.ndim != 0 or raw.dtype.kind != "U":
            raise bad(f"the metadata record is a {raw.dtype} array of shape {raw.shape}, "
                      "not one JSON string")
        try:
            meta = json.loads(str(raw[()]))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise bad(f"metadata is not JSON ({exc})")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise bad(f"format is {meta.get('format') if isinstance(meta, dict) else None!r}, not {FORMAT!r}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise BoxhackError(
                f"{source} has monitor format version {meta.get('format_version')!r}; this "
                f"boxhack reads version {FORMAT_VERSION}; refit the monitor with this version"
            )
        params, layers, dims = meta.get("params"), meta.get("layers"), meta.get("dims")
        n_classes, n_boxes = meta.get("n_classes"), meta.get("n_boxes")
        user_meta = meta.get("metadata")
        if not isinstance(params, dict):
            raise bad("'params' is not a JSON object")
        if (not isinstance(layers, list) or not layers
                or not all(isinstance(x, str) and x for x in layers)):
            raise bad("'layers' is not a non-empty list of layer names")
        if len(set(layers)) != len(layers):
            raise bad(f"'layers' repeats a name: {layers}")
        if not isinstance(dims, list) or not all(is_int(x) and x >= 1 for x in dims):
            raise bad("'dims' is not a list of layer widths (integers >= 1)")
        if not is_int(n_classes) or n_classes < 1:
            raise bad(f"'n_classes' is {n_classes!r}, not an integer >= 1")
        if not isinstance(n_boxes, list) or not all(is_int(x) and x >= 0 for x in n_boxes):
            raise bad("'n_boxes' is not a list of box counts (integers >= 0)")
        if len(dims) != len(layers) or len(n_boxes) != len(layers):
            raise bad(f"{len(layers)} layers but {len(dims)} widths and {len(n_boxes)} box counts")
        if user_meta is None:
            user_meta = {}
        if not isinstance(user_meta, dict):
            raise bad("'metadata' is not a JSON object")
        for key in ("model_sha256", "model_state_sha256"):
            value = user_meta.get(key)
            if value is not None and not isinstance(value, str):
                raise bad(f"metadata {key!r} is {value!r}, not a hash string")
        unknown = set(params) - set(_PARAM_NAMES)
        if unknown:
            raise bad(f"unknown parameters {sorted(unknown)}")
        monitor = cls(**params)
        try:
            monitor._validate_params()
        except BoxhackError as exc:
            raise bad(str(exc))
        if monitor.n_classes is not None and monitor.n_classes != n_classes:
            raise bad(f"parameter n_classes={monitor.n_classes} but the file has {n_classes} classes")
        expected = {"meta", "n_fit"} | {
            f"{name}_{i}" for i in range(len(layers)) for name in
            ("tight_lo", "tight_hi", "lo", "hi", "box_class", "box_count", "n_clusters")
        }  # fmt: skip
        extra = sorted(set(arrays) - expected)
        if extra:
            raise bad(f"unexpected arrays {extra}")
        n_fit = arrays.get("n_fit")
        if (n_fit is None or n_fit.shape != (n_classes,) or n_fit.dtype.kind not in "iu"
                or (n_classes and n_fit.min() < 0)):
            raise bad(f"n_fit must be {n_classes} non-negative integer counts (training vectors "
                      f"per class), got {'nothing' if n_fit is None else f'{n_fit.dtype} {n_fit.shape}'}")
        n_fit = n_fit.astype(np.int64)
        state: dict = {"tight_lo_": {}, "tight_hi_": {}, "box_class_": {}, "box_count_": {},
                       "n_clusters_": {}}
        widened = {}
        for i, (layer, d) in enumerate(zip(layers, dims)):
            try:
                tl, th = arrays[f"tight_lo_{i}"], arrays[f"tight_hi_{i}"]
                lo, hi = arrays[f"lo_{i}"], arrays[f"hi_{i}"]
                bc, cnt = arrays[f"box_class_{i}"], arrays[f"box_count_{i}"]
                ks = arrays[f"n_clusters_{i}"]
            except KeyError as exc:
                raise bad(f"array {exc} missing")
            if bc.dtype != np.int64 or bc.ndim != 1:
                raise bad(f"box_class_{i} is {bc.dtype} {bc.shape}, expected int64 (boxes,)")
            nb = len(bc)
            if nb != n_boxes[i]:
                raise bad(f"layer {layer!r} has {nb} boxes, its metadata says {n_boxes[i]}")
            for name, a in (("tight_lo", tl), ("tight_hi", th), ("lo", lo), ("hi", hi)):
                if a.dtype != np.float32 or a.shape != (nb, d):
                    raise bad(f"{name}_{i} has {a.dtype} {a.shape}, expected float32 ({nb}, {d})")
                if not np.isfinite(a).all():
                    raise bad(f"{name}_{i} contains NaN or infinite bounds (a box must be finite)")
            if nb and (bc.min() < 0 or bc.max() >= n_classes):
                raise bad(f"box_class_{i} is not a list of class indices 0..{n_classes - 1}")
            if np.any(np.diff(bc) < 0):
                raise bad(f"box_class_{i} is not sorted by class")
            if cnt.dtype != np.int64 or cnt.shape != (nb,) or (nb and cnt.min() < 1):
                raise bad(f"box_count_{i} must be int64 ({nb},) counts >= 1")
            if ks.dtype != np.int64 or ks.shape != (n_classes,) or not np.array_equal(
                ks, np.bincount(bc, minlength=n_classes)
            ):
                raise bad(f"n_clusters_{i} does not match the boxes")
            per_class = np.bincount(bc, weights=cnt, minlength=n_classes).astype(np.int64)
            if not np.array_equal(per_class, n_fit):
                raise bad(f"the boxes of layer {layer!r} hold {per_class.tolist()} training "
                          f"vectors per class, n_fit says {n_fit.tolist()}")
            if (tl > th).any() or (lo > tl).any() or (hi < th).any():
                raise bad(f"boxes of layer {layer!r} are inconsistent (lo > hi)")
            state["tight_lo_"][layer], state["tight_hi_"][layer] = tl, th
            state["box_class_"][layer], state["box_count_"][layer] = bc, cnt
            state["n_clusters_"][layer] = ks
            widened[layer] = (lo, hi)
        try:
            monitor._set_state(layers=layers, dims=dict(zip(layers, dims)), n_classes=n_classes,
                               n_fit=n_fit, metadata=user_meta, **state)
        except BoxhackError as exc:
            raise bad(str(exc))
        for layer, (lo, hi) in widened.items():
            if not (np.array_equal(lo, monitor.lo_[layer]) and np.array_equal(hi, monitor.hi_[layer])):
                raise bad(f"widened boxes of layer {layer!r} disagree with the tolerance "
                          "parameters (edited or corrupt file)")
        return monitor
