"""The monitor protocol that every abstraction implements, and the machinery they share.

A *monitor* watches one or more layers of a classifier. Fitted on the training inputs' layer
vectors, grouped by class (and, for set-based abstractions, clustered per class), it accepts a
prediction of class c with layer vector v iff v lies in the abstraction of class c at every
monitored layer. Attacks, experiments and reports see only this protocol; boxes, mean-balls,
zones, octagons, activation patterns and convex hulls are implementations.

What a monitor offers (scikit-learn conventions: parameters in ``__init__``, learned state
ending in ``_``, ``fit`` returns ``self``, :class:`NotFittedError` before fitting):

- ``fit_features(features, labels, predictions=None)`` / ``fit(model, layers, inputs, labels)``
- ``accepts_features(features, predicted) -> bool (N,)``: the exact decision;
- ``decision_function(features, predicted) -> float (N,)``: ``>= 0`` exactly when accepted;
- ``novelty_score(features, predicted) -> float (N,)``: graded, larger = more novel (for AUROC);
  ``score_samples`` is its negative (scikit-learn: larger = more normal);
- ``margin(features, classes, preactivation=...) -> torch.Tensor``: differentiable, ``>= 0``
  iff accepted, for the monitor-aware attacks; ``forward_margin(model, x)`` taps the model;
- ``predict(model, inputs) -> (pred, accepted)``, ``accepts``, ``score_inputs``;
- ``save(path)`` / ``load(path)``: one ``.npz`` (``allow_pickle=False``) with a JSON header
  naming the abstraction; :func:`load_monitor` picks the class from a fixed registry.

Subclasses implement the per-layer hooks (``_fit_layer``, ``_derive``, ``_accept_layer``,
``_decision_layer``, ``_novelty_layer``, ``_margin_layer``, ``_check_layer_state``) on float32
``(N, d)`` arrays whose rows are grouped by class; this base does validation, class grouping,
several layers, model taps, batching and files.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from torch import nn

from boxhack.errors import BoxhackError, NotFittedError
from boxhack.infra.files import atomic_path
from boxhack.monitor.clustering import Clustering, cluster_class

__all__ = [
    "DEFAULT_LAYER",
    "FORMAT",
    "ClusteredMonitor",
    "Monitor",
    "array_problem",
    "cast_keep_sign",
    "check_param",
    "fix_margin_sign",
    "is_int",
    "round_down_f32",
    "round_up_f32",
    "widen_intervals",
]

FORMAT = "boxhack-monitor"
FORMAT_VERSION = 2  # version 1: box monitors only (still read by BoxMonitor)
DEFAULT_LAYER = "features"  # the layer name used when features are given as a plain array


# ----------------------------------------------------------------------------- helpers
def round_down_f32(a: np.ndarray) -> np.ndarray:
    """float64 -> float32, never larger than the float64 value (outward for lower bounds)."""
    a = np.asarray(a, dtype=np.float64)
    out = a.astype(np.float32)
    up = out.astype(np.float64) > a
    if up.any():
        out[up] = np.nextafter(out[up], np.float32(-np.inf))
    return out


def round_up_f32(a: np.ndarray) -> np.ndarray:
    """float64 -> float32, never smaller than the float64 value (outward for upper bounds)."""
    a = np.asarray(a, dtype=np.float64)
    out = a.astype(np.float32)
    down = out.astype(np.float64) < a
    if down.any():
        out[down] = np.nextafter(out[down], np.float32(np.inf))
    return out


def widen_intervals(lo: np.ndarray, hi: np.ndarray, tolerance: float, relative: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Widen float32 intervals ``[lo, hi]`` by the tolerance rule shared by every
    interval-shaped constraint (box sides, pair differences and sums): relative moves each end
    by ``tolerance / 2 * (hi - lo)`` (a flat interval stays flat), absolute by ``tolerance``.
    Computed in float64 from the float32 ends, rounded outward to float32."""
    lo = np.asarray(lo, dtype=np.float32)
    hi = np.asarray(hi, dtype=np.float32)
    if tolerance == 0:
        return lo.copy(), hi.copy()
    lo64, hi64 = lo.astype(np.float64), hi.astype(np.float64)
    pad = (tolerance / 2.0) * (hi64 - lo64) if relative else np.full_like(lo64, tolerance)
    return round_down_f32(lo64 - pad), round_up_f32(hi64 + pad)


def is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def check_param(owner: str, name: str, value: Any, ok: bool, want: str) -> None:
    if not ok:
        raise BoxhackError(f"{owner} parameter {name}={value!r} is invalid: {want}")


def array_problem(state: Mapping[str, np.ndarray], name: str, dtype: Any, shape: tuple,
                  *, finite: bool = True) -> str | None:
    """What is wrong with ``state[name]`` (missing, dtype, shape, non-finite), or ``None``.
    A ``-1`` in ``shape`` matches any length."""
    a = state.get(name)
    if a is None:
        return f"array {name!r} is missing"
    want = np.dtype(dtype)
    if a.dtype != want:
        return f"{name} has dtype {a.dtype}, expected {want}"
    if a.ndim != len(shape) or any(w != -1 and w != g for w, g in zip(shape, a.shape)):
        return f"{name} has shape {a.shape}, expected {tuple('any' if w == -1 else w for w in shape)}"
    if finite and np.issubdtype(a.dtype, np.floating) and a.size and not np.isfinite(a).all():
        return f"{name} contains NaN or infinite values"
    return None


def cast_keep_sign(m: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast a (float64) margin to ``dtype`` keeping its sign: a negative value too small for
    ``dtype`` would round to -0.0, which compares ``>= 0``; it becomes the smallest negative
    subnormal instead (so ``margin >= 0`` stays exactly the decision)."""
    if m.dtype == dtype:
        return m
    out = m.to(dtype)
    lost = (m < 0) & (out >= 0)
    if bool(lost.any()):
        tiny = torch.tensor(-_smallest_subnormal(dtype), dtype=dtype, device=out.device)
        out = torch.where(lost, tiny, out)
    return out


def _smallest_subnormal(dtype: torch.dtype) -> float:
    return float(np.nextafter(np.zeros((), dtype=np.float32 if dtype == torch.float32
                                       else np.float64), 1))


def fix_margin_sign(m: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
    """Force ``m >= 0`` exactly where ``accepted`` (straight-through: the value changes only
    where the sign disagreed, the gradient is always that of ``m``).

    For abstractions whose exact decision is not a float comparison of ``m`` itself (balls:
    exact real arithmetic; patterns: the bit at exactly 0; hulls: an LP) the margin is
    computed in floating point and then made to agree with the exact decision. A rejected
    row whose computed margin is ``>= 0`` gets the smallest negative subnormal; an accepted
    row whose margin is negative gets 0.
    """
    accepted = accepted.to(device=m.device, dtype=torch.bool)
    bad = torch.where(accepted, m < 0, m >= 0)
    if not bool(bad.any()):
        return m
    tiny = _smallest_subnormal(m.dtype)
    target = torch.where(accepted, torch.zeros_like(m), torch.full_like(m, -tiny))
    finite = torch.isfinite(m)
    through = target + (m - m.detach())  # value: target exactly; gradient: m's
    return torch.where(bad, torch.where(finite, through, target), m)


def _jsonable_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, (bool, np.bool_)):
            out[k] = bool(v)
        elif is_int(v):
            out[k] = int(v)
        elif isinstance(v, numbers.Real):
            out[k] = float(v)
        else:
            out[k] = v
    return out


def _to_numpy(a: Any, what: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise BoxhackError(f"{what} must be an array, got {type(a).__name__} ({exc})") from None


def _check_finite(x: np.ndarray, what: str) -> None:
    if x.size and not np.isfinite(x.sum()):  # one fast pass; a scan only when something is off
        bad = ~np.isfinite(x)
        if bad.any():
            rows = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))
            raise BoxhackError(
                f"{what} contains NaN or infinite values ({int(bad.sum())} entries, first in "
                f"row {int(rows[0])}); check the model or the inputs"
            )


# ----------------------------------------------------------------------------- the protocol
class Monitor:
    """Base class of every abstraction monitor (see the module docstring)."""

    #: the abstraction's name in files, on the CLI (``--abstraction``) and in reports
    abstraction: ClassVar[str] = ""
    #: constructor parameters (scikit-learn ``get_params``)
    PARAMS: ClassVar[tuple[str, ...]] = ("tolerance", "relative_tolerance", "only_correct",
                                         "n_classes")  # fmt: skip
    #: does ``margin`` understand ReLU pre-activations (``forward_margin`` then taps them)?
    uses_preactivation: ClassVar[bool] = False

    def __init__(self, *, tolerance: float = 0.0, relative_tolerance: bool = True,
                 only_correct: bool = True, n_classes: int | None = None) -> None:
        self.tolerance = tolerance
        self.relative_tolerance = relative_tolerance
        self.only_correct = only_correct
        self.n_classes = n_classes

    # ------------------------------------------------------------------ sklearn plumbing
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.PARAMS}

    def set_params(self, **params: Any) -> Self:
        for name, value in params.items():
            if name not in self.PARAMS:
                raise BoxhackError(
                    f"{type(self).__name__} has no parameter {name!r}; parameters: "
                    f"{', '.join(self.PARAMS)}"
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = type(self)().get_params()
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults.get(k)]
        return f"{type(self).__name__}({', '.join(changed)})"

    def _validate_params(self) -> None:
        """Check every parameter; subclasses extend this (call ``super()`` first)."""
        name = type(self).__name__
        tol = self.tolerance
        check_param(name, "tolerance", tol, is_real(tol) and tol >= 0, "give a finite number >= 0")
        for flag in ("relative_tolerance", "only_correct"):
            value = getattr(self, flag)
            check_param(name, flag, value, isinstance(value, (bool, np.bool_)), "give True or False")
        nc = self.n_classes
        check_param(name, "n_classes", nc, nc is None or (is_int(nc) and nc >= 1),
                    "give an integer >= 1, or None to infer it from the labels")

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "layers_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(...) or "
                f"fit_features(...) first, or load one with boxhack.monitor.load_monitor(path)"
            )

    # ------------------------------------------------------------------ subclass hooks
    def _fit_layer(self, layer: str, x: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
        """Learn one layer's *tight* state (no tolerance) from float32 rows ``x`` grouped by
        class: class c's rows are ``x[starts[c]:starts[c + 1]]``. Returns named arrays (they
        are stored in files as they are)."""
        raise NotImplementedError

    def _derive(self, layer: str, state: dict[str, np.ndarray]) -> dict[str, Any]:
        """Query-time structures from a layer's tight state and the tolerance parameters
        (e.g. widened bounds rounded outward). Called after fit, load and with_tolerance."""
        return {}

    def _accept_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """bool (N,): is row i in the abstraction of class ``pred[i]`` (exact)?"""
        raise NotImplementedError

    def _decision_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """float (N,): ``>= 0`` exactly where ``_accept_layer`` is true; the larger the deeper."""
        raise NotImplementedError

    def _novelty_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """float64 (N,): graded novelty, larger = farther outside; ``inf`` for a class with no
        abstraction."""
        raise NotImplementedError

    def _margin_layer(self, layer: str, z: torch.Tensor, cl: torch.Tensor,
                      preactivation: bool) -> torch.Tensor:
        """Differentiable (N,) margin in ``z``'s dtype: ``>= 0`` iff accepted."""
        raise NotImplementedError

    def _check_layer_state(self, layer: str, state: Mapping[str, np.ndarray], d: int,
                           n_classes: int) -> str | None:
        """Validate a loaded layer state; return what is wrong, or ``None``."""
        return None

    def _describe_layer(self, layer: str) -> dict[str, Any]:
        """JSON-able facts about a fitted layer for :meth:`summary` (e.g. sets per class)."""
        return {}

    # ------------------------------------------------------------------ input checking
    def _feature_dict(self, features: Any, what: str, *, fitting: bool = False
                      ) -> dict[str, np.ndarray]:
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
            a = self._one_layer(raw[layer], f"{what} for layer {layer!r}", layer, fitting)
            if n is not None and a.shape[0] != n:
                raise BoxhackError(f"{what}: layers have different numbers of rows ({n} vs {a.shape[0]})")
            n = a.shape[0]
            out[layer] = a
        return out

    def _one_layer(self, value: Any, what: str, layer: str, fitting: bool) -> np.ndarray:
        a = _to_numpy(value, what)
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise BoxhackError(f"{what} must be numeric, got {a.dtype}")
        if a.ndim != 2:
            raise BoxhackError(
                f"{what} must be 2-D (N, d), got shape {a.shape}"
                + ("; use x.reshape(1, -1) for one vector" if a.ndim == 1 else "")
                + ("; flatten it with x.reshape(len(x), -1)" if a.ndim > 2 else "")
            )
        if a.shape[0] == 0:
            raise BoxhackError(f"{what} is empty (0 rows)")
        if a.shape[1] == 0:
            raise BoxhackError(f"{what} has 0 dimensions")
        if not fitting and a.shape[1] != self.dims_[layer]:
            raise BoxhackError(
                f"{what} has {a.shape[1]} dimensions but the monitor was fitted on "
                f"{self.dims_[layer]}; wrong layer or model?"
            )
        a = np.ascontiguousarray(a, dtype=np.float32)
        _check_finite(a, what)
        return a

    def _class_array(self, c: Any, n: int, what: str, *, n_classes: int | None) -> np.ndarray:
        a = _to_numpy(c, what)
        if a.ndim != 1 or len(a) != n:
            raise BoxhackError(f"{what} must be a 1-D array of {n} class indices, got shape {a.shape}")
        if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
            if (np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a))
                    and np.all(a == np.round(a))):
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
    def fit_features(self, features: Any, labels: Any, predictions: Any = None, *,
                     metadata: dict | None = None, model_sha256: str | None = None) -> Self:
        """Fit on precomputed layer vectors.

        ``features``: an (N, d) array (one layer, named ``"features"``) or a dict
        ``{layer: (N, d_l) array}``; ``labels``: true classes (N,); ``predictions``: the
        model's predicted classes (N,): with ``only_correct`` the misclassified rows are left
        out. Class y's abstraction is built from the rows labelled y.
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
        if not keep.any():
            raise BoxhackError(
                "no training vector is left to fit on: the model classifies none of the "
                "training inputs correctly (use only_correct=False to use them all)"
            )
        n_classes = int(self.n_classes) if self.n_classes is not None else int(labels.max()) + 1
        used = labels[keep]
        order = np.argsort(used, kind="stable")
        counts = np.bincount(used, minlength=n_classes)
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        meta = dict(metadata or {})
        if model_sha256 is not None:
            meta["model_sha256"] = str(model_sha256)
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as exc:
            raise BoxhackError(f"metadata must be JSON-serialisable: {exc}") from None
        self.layers_ = list(feats)
        self.dims_ = {k: int(v.shape[1]) for k, v in feats.items()}
        self.n_classes_ = n_classes
        self.n_fit_ = counts.astype(np.int64)
        self.metadata_ = meta
        self.state_ = {layer: self._fit_layer(layer, x[keep][order], starts)
                       for layer, x in feats.items()}  # fmt: skip
        self._refresh()
        return self

    def _refresh(self) -> None:
        self.derived_ = {layer: self._derive(layer, self.state_[layer]) for layer in self.layers_}

    def fit(self, model: nn.Module, layers: str | Sequence[str], inputs: Any, labels: Any,
            batch_size: int = 1024, *, metadata: dict | None = None,
            model_sha256: str | None = None) -> Self:
        """Fit on a model: run ``inputs`` through ``model`` (batched, no grad, eval mode) and
        fit on the vectors of ``layers`` (a module path or a list of them)."""
        from boxhack.models.layers import collect

        names = self._layer_names(model, layers)
        labels_np = _to_numpy(labels, "labels")
        if len(labels_np) != len(inputs):
            raise BoxhackError(f"got {len(inputs)} inputs but {len(labels_np)} labels")
        if len(labels_np) == 0:
            raise BoxhackError("cannot fit a monitor on 0 inputs")
        pred, feats = collect(model, names, inputs, batch_size=batch_size)
        return self.fit_features(feats, labels_np, pred, metadata=metadata,
                                 model_sha256=model_sha256)

    @staticmethod
    def _layer_names(model: nn.Module, layers: str | Sequence[str]) -> list[str]:
        from boxhack.models.layers import get_layer

        names = [layers] if isinstance(layers, str) else list(layers)
        if not names:
            raise BoxhackError("give at least one layer to monitor")
        if len(set(names)) != len(names):
            raise BoxhackError(f"layer names repeat: {names}")
        for name in names:
            get_layer(model, name)  # raises a BoxhackError listing the layers
        return names

    def with_tolerance(self, tolerance: float, relative_tolerance: bool | None = None) -> Self:
        """A copy with the same fitted state and another tolerance (no refitting)."""
        import copy

        self._check_fitted()
        other = copy.copy(self)
        other.tolerance = tolerance
        if relative_tolerance is not None:
            other.relative_tolerance = relative_tolerance
        other._validate_params()
        other._refresh()
        return other

    # ------------------------------------------------------------------ queries (numpy)
    def _prepare_query(self, features: Any, predicted: Any, what: str = "features"):
        self._check_fitted()
        feats = self._feature_dict(features, what)
        n = len(next(iter(feats.values())))
        pred = self._class_array(predicted, n, "predicted", n_classes=self.n_classes_)
        return feats, pred

    def accepts_features(self, features: Any, predicted: Any) -> np.ndarray:
        """bool (N,): accepted at every monitored layer (exact)."""
        feats, pred = self._prepare_query(features, predicted)
        out = None
        for layer in self.layers_:
            ok = np.asarray(self._accept_layer(layer, feats[layer], pred), dtype=bool)
            out = ok if out is None else out & ok
        return out

    def decision_function(self, features: Any, predicted: Any) -> np.ndarray:
        """float (N,): ``>= 0`` exactly when accepted (min over layers)."""
        feats, pred = self._prepare_query(features, predicted)
        out = None
        for layer in self.layers_:
            m = self._decision_layer(layer, feats[layer], pred)
            out = m if out is None else np.minimum(out, m)
        return out

    def novelty_score(self, features: Any, predicted: Any) -> np.ndarray:
        """float64 (N,): graded novelty (max over layers), larger = more novel."""
        feats, pred = self._prepare_query(features, predicted)
        out = None
        for layer in self.layers_:
            s = np.asarray(self._novelty_layer(layer, feats[layer], pred), dtype=np.float64)
            out = s if out is None else np.maximum(out, s)
        return out

    def score_samples(self, features: Any, predicted: Any) -> np.ndarray:
        """scikit-learn's convention: larger = more normal (the negative novelty score)."""
        return -self.novelty_score(features, predicted)

    # ------------------------------------------------------------------ differentiable margin
    def margin(self, features: Any, classes: Any, *,
               preactivation: bool | Mapping[str, bool] = False) -> torch.Tensor:
        """Differentiable acceptance margin (N,), min over layers: ``>= 0`` iff accepted.

        ``preactivation=True`` (or ``{layer: bool}``) says the features of a layer are the
        pre-activations of a ReLU (only for abstractions with ``uses_preactivation``; others
        apply the ReLU first). Computed in the features' dtype (float32 or float64).
        """
        self._check_fitted()
        if isinstance(features, Mapping):
            feats = {str(k): v for k, v in features.items()}
        else:
            if len(self.layers_) != 1:
                raise BoxhackError(f"this monitor watches layers {self.layers_}; pass a dict {{layer: tensor}}")
            feats = {self.layers_[0]: features}
        missing = [layer for layer in self.layers_ if layer not in feats]
        if missing:
            raise BoxhackError(f"margin: no features for monitored layer(s) {missing}")
        if not isinstance(classes, torch.Tensor):
            classes = torch.as_tensor(np.asarray(classes))
        out = None
        for layer in self.layers_:
            z = self._margin_input(layer, feats[layer])
            cl = classes.to(device=z.device, dtype=torch.long).reshape(-1)
            if cl.numel() != z.shape[0]:
                raise BoxhackError(f"margin: {cl.numel()} classes for {z.shape[0]} rows")
            if cl.numel() and (int(cl.min()) < 0 or int(cl.max()) >= self.n_classes_):
                raise BoxhackError(
                    f"margin: class index out of range 0..{self.n_classes_ - 1} "
                    f"(got {int(cl.min())}..{int(cl.max())})"
                )
            pre = (preactivation.get(layer, False) if isinstance(preactivation, Mapping)
                   else bool(preactivation))  # fmt: skip
            if pre and not self.uses_preactivation:
                z, pre = torch.relu(z), False
            m = self._margin_layer(layer, z, cl, pre)
            out = m if out is None else torch.minimum(out, m)
        return out

    def _margin_input(self, layer: str, z: Any) -> torch.Tensor:
        if not isinstance(z, torch.Tensor):
            raise BoxhackError(f"margin: features for layer {layer!r} must be a torch.Tensor")
        if z.dim() > 2:
            z = z.flatten(1)
        if z.dim() != 2 or z.shape[1] != self.dims_[layer]:
            raise BoxhackError(
                f"margin: features for layer {layer!r} have shape {tuple(z.shape)}, expected "
                f"(N, {self.dims_[layer]})"
            )
        return z if z.dtype in (torch.float32, torch.float64) else z.float()

    # ------------------------------------------------------------------ model level
    def _relu_layers(self, model: nn.Module) -> tuple[list[str], list[str]]:
        from boxhack.models.layers import get_layer

        relu, other = [], []
        for layer in self.layers_:
            is_relu = self.uses_preactivation and isinstance(get_layer(model, layer), nn.ReLU)
            (relu if is_relu else other).append(layer)
        return relu, other

    def forward_margin(self, model: nn.Module, x: torch.Tensor, classes: Any = None):
        """One differentiable forward: ``(logits, margin)``; ``classes=None`` uses the model's
        predicted class. ReLU layers are tapped before the activation when the abstraction
        uses pre-activations (their margin keeps a gradient through dead units)."""
        from boxhack.models.layers import tap

        self._check_fitted()
        relu, other = self._relu_layers(model)
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
        return logits, self.margin(feats, classes, preactivation={k: True for k in relu})

    def _collect(self, model: nn.Module, inputs: Any, batch_size: int):
        from boxhack.models.layers import collect

        self._check_fitted()
        names = self._layer_names(model, self.layers_)
        if len(inputs) == 0:
            raise BoxhackError("no inputs given (0 rows)")
        return collect(model, names, inputs, batch_size=batch_size)

    def predict(self, model: nn.Module, inputs: Any, *, batch_size: int = 1024):
        """``(predicted classes int64 (N,), accepted bool (N,))`` for raw inputs."""
        pred, feats = self._collect(model, inputs, batch_size)
        return pred, self.accepts_features(feats, pred)

    def accepts(self, model: nn.Module, inputs: Any, *, batch_size: int = 1024) -> np.ndarray:
        return self.predict(model, inputs, batch_size=batch_size)[1]

    def score_inputs(self, model: nn.Module, inputs: Any, *, batch_size: int = 1024) -> np.ndarray:
        """Graded novelty score (:meth:`novelty_score`) for raw inputs."""
        pred, feats = self._collect(model, inputs, batch_size)
        return self.novelty_score(feats, pred)

    # ------------------------------------------------------------------ description
    def summary(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "abstraction": self.abstraction,
            "params": _jsonable_params(self.get_params()),
            "layers": list(self.layers_),
            "dims": dict(self.dims_),
            "n_classes": self.n_classes_,
            "n_fit_per_class": self.n_fit_.tolist(),
            "layer_state": {layer: self._describe_layer(layer) for layer in self.layers_},
            "metadata": dict(self.metadata_),
        }

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.npz`` exactly at ``path`` (atomically; no suffix is appended)."""
        self._check_fitted()
        path = Path(path)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "abstraction": self.abstraction,
            "params": _jsonable_params(self.get_params()),
            "layers": list(self.layers_),
            "dims": [int(self.dims_[k]) for k in self.layers_],
            "n_classes": self.n_classes_,
            "metadata": self.metadata_,
            "state": {str(i): sorted(self.state_[layer]) for i, layer in enumerate(self.layers_)},
        }
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta)), "n_fit": self.n_fit_}
        for i, layer in enumerate(self.layers_):
            for name, value in self.state_[layer].items():
                arrays[f"L{i}.{name}"] = np.asarray(value)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Monitor:
        """Read a monitor file; on a subclass, the file must hold that abstraction."""
        from boxhack.monitor.registry import load_monitor

        monitor = load_monitor(path)
        if cls is not Monitor and not isinstance(monitor, cls):
            raise BoxhackError(
                f"{path} holds a {monitor.abstraction!r} monitor, not a {cls.abstraction!r} one; "
                f"load it with boxhack.monitor.load_monitor"
            )
        return monitor

    @classmethod
    def _from_file(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                   source: str) -> Monitor:
        """Rebuild a monitor of this class from a version-2 file's header and arrays."""

        def bad(msg: str) -> BoxhackError:
            return BoxhackError(f"{source} is not a valid boxhack monitor file: {msg}")

        try:
            params = dict(meta["params"])
            layers = [str(x) for x in meta["layers"]]
            dims = [int(x) for x in meta["dims"]]
            n_classes = int(meta["n_classes"])
            user_meta = dict(meta.get("metadata") or {})
            names = {str(k): [str(n) for n in v] for k, v in dict(meta["state"]).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"its header lacks or garbles a field ({exc})") from None
        if len(dims) != len(layers) or not layers or n_classes < 1 or min(dims) < 1:
            raise bad("layers, dims and n_classes do not fit together")
        unknown = set(params) - set(cls.PARAMS)
        if unknown:
            raise bad(f"unknown parameters {sorted(unknown)} for a {cls.abstraction!r} monitor")
        monitor = cls(**params)
        try:
            monitor._validate_params()
        except BoxhackError as exc:
            raise bad(str(exc)) from None
        n_fit = arrays.get("n_fit")
        if (n_fit is None or n_fit.dtype != np.int64 or n_fit.shape != (n_classes,)
                or (n_fit < 0).any()):
            raise bad("n_fit must be int64 counts >= 0, one per class")
        state = {}
        for i, (layer, d) in enumerate(zip(layers, dims)):
            keys = names.get(str(i))
            if keys is None:
                raise bad(f"no state listed for layer {layer!r}")
            try:
                state[layer] = {k: arrays[f"L{i}.{k}"] for k in keys}
            except KeyError as exc:
                raise bad(f"array {exc} missing") from None
            problem = monitor._check_layer_state(layer, state[layer], d, n_classes)
            if problem:
                raise bad(f"layer {layer!r}: {problem}")
        monitor.layers_ = layers
        monitor.dims_ = dict(zip(layers, dims))
        monitor.n_classes_ = n_classes
        monitor.n_fit_ = n_fit
        monitor.metadata_ = user_meta
        monitor.state_ = state
        monitor._refresh()
        return monitor


# ----------------------------------------------------------------------------- clustering
class ClusteredMonitor(Monitor):
    """A monitor whose abstraction of a class is a union of sets, one per k-means cluster of
    the class's vectors (fixed ``n_clusters`` or the elbow rule; see
    :mod:`boxhack.monitor.clustering`)."""

    PARAMS: ClassVar[tuple[str, ...]] = Monitor.PARAMS + (
        "n_clusters", "clustering_threshold", "max_clusters", "seed", "n_init")  # fmt: skip

    def __init__(self, n_clusters: int | None = None, *, clustering_threshold: float = 0.07,
                 max_clusters: int = 10, seed: int = 0, n_init: int = 3, **base: Any) -> None:
        super().__init__(**base)
        self.n_clusters = n_clusters
        self.clustering_threshold = clustering_threshold
        self.max_clusters = max_clusters
        self.seed = seed
        self.n_init = n_init

    def _validate_params(self) -> None:
        super()._validate_params()
        name = type(self).__name__
        k = self.n_clusters
        check_param(name, "n_clusters", k, k is None or (is_int(k) and k >= 1),
                    "give an integer >= 1, or None for the elbow rule")
        thr = self.clustering_threshold
        check_param(name, "clustering_threshold", thr, is_real(thr) and 0 <= thr <= 1,
                    "give a number in [0, 1] (0.07 in the Outside-the-Box experiments)")
        check_param(name, "max_clusters", self.max_clusters,
                    is_int(self.max_clusters) and self.max_clusters >= 1, "give an integer >= 1")
        check_param(name, "seed", self.seed, is_int(self.seed) and self.seed >= 0,
                    "give an integer >= 0")
        check_param(name, "n_init", self.n_init, is_int(self.n_init) and self.n_init >= 1,
                    "give an integer >= 1")

    def _clusters(self, x: np.ndarray) -> Clustering:
        """k-means clusters of one class's rows, with this monitor's settings."""
        return cluster_class(
            x, n_clusters=self.n_clusters, threshold=float(self.clustering_threshold),
            max_clusters=int(self.max_clusters), seed=int(self.seed), n_init=int(self.n_init),
        )

    def _cluster_rows(self, x: np.ndarray, starts: np.ndarray):
        """All clusters of all classes: ``(rows, cluster_class int64 (B,), cluster_count int64
        (B,))`` where ``rows[b]`` are cluster b's float32 rows; classes in order."""
        rows, cls = [], []
        for c, r, _ in self._clustered(x, starts):
            rows.append(r)
            cls.append(c)
        return (rows, np.asarray(cls, dtype=np.int64).reshape(-1),
                np.asarray([len(r) for r in rows], dtype=np.int64).reshape(-1))

    @staticmethod
    def cluster_layout(cluster_class: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """``(start, count)`` int64 (n_classes,): class c's sets are rows
        ``start[c]:start[c] + count[c]`` of the (class-sorted) state arrays."""
        counts = np.bincount(cluster_class, minlength=n_classes).astype(np.int64)
        start = np.zeros(n_classes, dtype=np.int64)
        start[1:] = np.cumsum(counts)[:-1]
        return start, counts

    @staticmethod
    def _cluster_problem(state: Mapping[str, np.ndarray], n_classes: int) -> str | None:
        """Check the ``cluster_class``/``cluster_count`` arrays every clustered state holds."""
        problem = array_problem(state, "cluster_class", np.int64, (-1,))
        if problem:
            return problem
        cc = state["cluster_class"]
        problem = array_problem(state, "cluster_count", np.int64, (len(cc),))
        if problem:
            return problem
        if len(cc) and (cc.min() < 0 or cc.max() >= n_classes):
            return f"cluster_class holds a class outside 0..{n_classes - 1}"
        if np.any(np.diff(cc) < 0):
            return "cluster_class is not sorted by class"
        if len(cc) and state["cluster_count"].min() < 1:
            return "cluster_count has a cluster without training vectors"
        return None

    def _describe_layer(self, layer: str) -> dict[str, Any]:
        cc = self.state_[layer]["cluster_class"]
        return {"n_sets": len(cc),
                "sets_per_class": np.bincount(cc, minlength=self.n_classes_).tolist()}

    def _clustered(self, x: np.ndarray, starts: np.ndarray):
        """Yield ``(class, cluster rows (float32), cluster centre (float64))`` for every
        cluster of every class, classes in order, clusters in label order."""
        for c in range(len(starts) - 1):
            xc = x[starts[c]:starts[c + 1]]
            if len(xc) == 0:
                continue
            result = self._clusters(xc)
            for j in range(result.k):
                rows = xc[result.labels == j]
                yield c, rows, rows.astype(np.float64).mean(0)
