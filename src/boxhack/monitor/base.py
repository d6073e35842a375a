"""The monitor protocol that every abstraction implements, and the machinery they share.

A *monitor* watches one or more layers of a classifier. Fitted on the training inputs' layer
vectors, grouped by class (and, for set-based abstractions, clustered per class), it accepts a
prediction of class c with layer vector v iff v lies in the abstraction of class c at every
monitored layer. Attacks, experiments and reports see only this protocol (typed as
:class:`MonitorLike`); boxes, mean-balls, zones, octagons, activation patterns, convex hulls
and composites of them are implementations.

What a monitor offers (scikit-learn conventions: parameters in ``__init__``, learned state
ending in ``_``, ``fit`` returns ``self``, :class:`~boxhack.errors.NotFittedError` before
fitting):

- ``fit_features(features, labels, predictions=None)`` / ``fit(model, layers, inputs, labels)``
  (``fit`` records the model's ``state_sha256`` in ``metadata_["model_state_sha256"]``);
- ``accepts_features(features, predicted) -> bool (N,)``: the exact decision;
- ``decision_function(features, predicted) -> float (N,)``: ``>= 0`` exactly when accepted;
- ``novelty_score(features, predicted) -> float (N,)``: graded, larger = more novel (for AUROC);
  ``score_samples`` is its negative (scikit-learn: larger = more normal);
- ``margin(features, classes, preactivation=...) -> torch.Tensor``: differentiable, ``>= 0``
  iff accepted, for the monitor-aware attacks; ``forward_margin(model, x)`` taps the model;
- ``predict(model, inputs) -> (pred, accepted)``, ``accepts``, ``score_inputs``;
- ``with_tolerance``, ``summary``, ``save(path)`` / ``load(path)``: one ``.npz``
  (``allow_pickle=False``, see :mod:`boxhack.monitor.io`); :func:`load_monitor` reads any.

Subclasses implement the per-layer hooks (``_fit_layer``, ``_derive``, ``_accept_layer``,
``_decision_layer``, ``_novelty_layer``, ``_margin_layer``, ``_check_layer_state``, and
optionally ``_fit_counts``, ``_describe_layer``) on float32 ``(N, d)`` arrays whose rows are
grouped by class; this base does parameter and input validation, class grouping, several
layers, model taps, batching and files, including the strict checks of a loaded file (header
field types, ``n_fit`` against the state, non-finite values, unexpected arrays).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np
import torch
from torch import nn

from boxhack.errors import BoxhackError, NotFittedError
from boxhack.models.domain import domain_of, layer_root
from boxhack.models.layers import collect, get_layer, is_relu_layer, tap
from boxhack.monitor.clustering import Clustering, cluster_class
from boxhack.monitor.io import (
    FORMAT,
    FORMAT_VERSION,
    HASH_KEYS,
    Header,
    file_error,
    parse_header,
    write_file,
)
from boxhack.monitor.jit import HAVE_NUMBA, count_nonfinite_f32
from boxhack.monitor.registry import load_monitor

__all__ = [
    "DEFAULT_LAYER",
    "ClusteredMonitor",
    "Monitor",
    "MonitorLike",
    "array_problem",
    "cast_keep_sign",
    "check_param",
    "fix_margin_sign",
    "is_int",
    "is_real",
    "jsonable_params",
    "round_down_f32",
    "round_up_f32",
    "state_sha256",
    "widen_intervals",
]

DEFAULT_LAYER = "features"  # the layer name used when features are given as a plain array


# ----------------------------------------------------------------------------- the type
@runtime_checkable
class MonitorLike(Protocol):
    """What attacks, experiments and reports may use of a fitted monitor.

    Every :class:`Monitor` satisfies it; annotate with it rather than with a concrete class.
    (``isinstance(m, MonitorLike)`` checks that the names exist, so only on fitted monitors.)
    """

    abstraction: ClassVar[str]
    layers_: list[str]
    dims_: dict[str, int]
    n_classes_: int
    metadata_: dict[str, Any]

    @property
    def is_fitted(self) -> bool: ...

    def predict(self, model: nn.Module, inputs: Any, *, batch_size: int = ...
                ) -> tuple[np.ndarray, np.ndarray]: ...

    def accepts_features(self, features: Any, predicted: Any) -> np.ndarray: ...

    def decision_function(self, features: Any, predicted: Any) -> np.ndarray: ...

    def novelty_score(self, features: Any, predicted: Any) -> np.ndarray: ...

    def score_inputs(self, model: nn.Module, inputs: Any, *, batch_size: int = ...
                     ) -> np.ndarray: ...

    def margin(self, features: Any, classes: Any, *,
               preactivation: bool | Mapping[str, bool] = ...) -> torch.Tensor: ...

    def forward_margin(self, model: nn.Module, x: torch.Tensor, classes: Any = ...
                       ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def summary(self) -> dict[str, Any]: ...

    def save(self, path: str | os.PathLike) -> Path: ...


# ----------------------------------------------------------------------------- helpers
def round_down_f32(a: np.ndarray) -> np.ndarray:
    """float64 -> float32, never larger than the float64 value (outward for lower bounds).
    Beyond the float32 range the result is -inf/+inf; callers refuse it."""
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(over="ignore"):
        out = a.astype(np.float32)
    up = out.astype(np.float64) > a
    if up.any():
        out[up] = np.nextafter(out[up], np.float32(-np.inf))
    return out


def round_up_f32(a: np.ndarray) -> np.ndarray:
    """float64 -> float32, never smaller than the float64 value (outward for upper bounds)."""
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(over="ignore"):
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


def jsonable_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as plain JSON values (numpy scalars to Python, reals to float)."""
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


def state_sha256(model: nn.Module) -> str:
    """SHA-256 of ``model.state_dict()``: every tensor's name, dtype, shape and exact bytes
    (what ``fit`` records as ``metadata_["model_state_sha256"]``). The state is the user's
    model's (inside an :class:`~boxhack.models.domain.InputDomain`, whose preprocessing, if
    any, is hashed too: another normalisation is another model)."""
    h = hashlib.sha256()
    domain = domain_of(model)
    model = layer_root(model)
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if domain is not None and domain.domain_key():
        h.update(domain.domain_key().encode())
    return h.hexdigest()


def batches_to_arrays(batches: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, labels)`` from an iterable of ``(x, y)`` batches (e.g. a DataLoader)."""
    if isinstance(batches, (np.ndarray, torch.Tensor)) or not hasattr(batches, "__iter__"):
        raise BoxhackError("fit needs labels: pass inputs and labels, or an iterable of (x, y) "
                           "batches such as a torch DataLoader")
    xs, ys = [], []
    for i, batch in enumerate(batches):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise BoxhackError(f"batch {i} of the data loader is a {type(batch).__name__}, not "
                               f"an (inputs, labels) pair")  # fmt: skip
        xs.append(_to_numpy(batch[0], "inputs"))
        ys.append(_to_numpy(batch[1], "labels").reshape(-1))
    if not xs:
        raise BoxhackError("the data loader gave no batches")
    return np.concatenate(xs).astype(np.float32, copy=False), np.concatenate(ys)


def _to_numpy(a: Any, what: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise BoxhackError(f"{what} must be an array, got {type(a).__name__} ({exc})") from None


def _any_nonfinite(x: np.ndarray) -> bool:
    """One fast pass: the exponent bits of C-contiguous float32 (compiled), else a sum (NaN
    or infinite when an entry is, or on overflow: then the caller scans exactly)."""
    if HAVE_NUMBA and x.dtype == np.float32 and x.flags.c_contiguous:
        return count_nonfinite_f32(x.reshape(-1).view(np.uint32)) > 0
    return not np.isfinite(x.sum())


def _check_finite(x: np.ndarray, what: str) -> None:
    if x.size and _any_nonfinite(x):  # a full scan only when something is off
        bad = ~np.isfinite(x)
        if bad.any():
            rows = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))
            raise BoxhackError(
                f"{what} contains NaN or infinite values ({int(bad.sum())} entries, first in "
                f"row {int(rows[0])}); check the model or the inputs"
            )


def _nonfinite(state: Mapping[str, np.ndarray]) -> str | None:
    """The first floating array of a loaded state holding NaN or an infinity: no abstraction
    stores one (an infinite bound would accept everything)."""
    for name, a in state.items():
        if np.issubdtype(a.dtype, np.floating) and a.size and not np.isfinite(a).all():
            return f"{name} contains NaN or infinite values"
    return None


def _n_fit_problem(n_fit: np.ndarray | None, n_classes: int) -> str | None:
    if n_fit is None:
        return "n_fit is missing (training vectors per class)"
    if n_fit.dtype != np.int64 or n_fit.shape != (n_classes,) or (n_fit < 0).any():
        return (f"n_fit must be int64 counts >= 0, one per class ({n_classes}), got "
                f"{n_fit.dtype} {n_fit.shape}")
    return None


class _Training:
    """The training rows of one fit, grouped by class: ``order`` selects and sorts the rows,
    class c's are ``starts[c]:starts[c + 1]`` of the result."""

    def __init__(self, order: np.ndarray, counts: np.ndarray) -> None:
        self.order = order
        self.counts = counts.astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


# ----------------------------------------------------------------------------- the protocol
class Monitor:
    """Base class of every abstraction monitor (see the module docstring)."""

    #: the abstraction's name in files, on the CLI (``--abstraction``) and in reports
    abstraction: ClassVar[str] = ""
    #: constructor parameters (scikit-learn ``get_params``), in the order files list them
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
        return "layers_" in self.__dict__

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(...) or "
                f"fit_features(...) first, or load one with boxhack.monitor.load_monitor(path)"
            )

    def _resolve_layer(self, layer: str | None) -> str:
        """``layer``, checked to be monitored; ``None``: the first monitored layer."""
        self._check_fitted()
        if layer is None:
            return self.layers_[0]
        if layer not in self.layers_:
            raise BoxhackError(f"layer {layer!r} is not monitored; monitored: {self.layers_}")
        return layer

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
        """Validate a loaded layer state (dtypes, shapes, consistency, no unknown arrays);
        return what is wrong, or ``None``. Non-finite values are refused before this."""
        return None

    def _fit_counts(self, state: Mapping[str, np.ndarray], n_classes: int) -> np.ndarray | None:
        """int64 (n_classes,): training vectors per class a (checked) layer state was built
        from, compared with ``n_fit`` on load; ``None`` if the state does not record it."""
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
        a = np.ascontiguousarray(a, dtype=np.int64)
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
        out. Class y's abstraction is built from the rows labelled y. ``metadata`` (a JSON
        object) and ``model_sha256`` are recorded in ``metadata_``.
        """
        self._validate_params()
        feats = self._feature_dict(features, "features", fitting=True)
        n = len(next(iter(feats.values())))
        train = self._training_rows(n, labels, predictions)
        meta = _fit_metadata(metadata, model_sha256)
        state = {layer: self._fit_layer(layer, x[train.order], train.starts)
                 for layer, x in feats.items()}  # fmt: skip
        self._set_fitted(list(feats), [int(v.shape[1]) for v in feats.values()],
                         len(train.counts), train.counts, meta, state)
        return self

    def _training_rows(self, n: int, labels: Any, predictions: Any) -> _Training:
        """Which rows build the abstractions (``only_correct``), grouped by class."""
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
        rows = np.flatnonzero(keep)
        order = rows[np.argsort(labels[rows], kind="stable")]
        return _Training(order, np.bincount(labels[rows], minlength=n_classes))

    def _set_fitted(self, layers: list[str], dims: list[int], n_classes: int,
                    n_fit: np.ndarray, metadata: dict[str, Any],
                    state: dict[str, dict[str, np.ndarray]]) -> None:
        """Install a fitted (or loaded) state and derive the query structures from it."""
        self.__dict__.pop("layers_", None)  # not fitted until the state is whole
        self.dims_ = dict(zip(layers, (int(d) for d in dims)))
        self.n_classes_ = int(n_classes)
        self.n_fit_ = np.asarray(n_fit, dtype=np.int64)
        self.metadata_ = dict(metadata)
        self.state_ = state
        self.layers_ = list(layers)
        try:
            self._refresh()
        except BaseException:
            del self.layers_
            raise

    def _refresh(self) -> None:
        self.derived_ = {layer: self._derive(layer, self.state_[layer]) for layer in self.layers_}

    def fit(self, model: nn.Module, layers: str | Sequence[str], inputs: Any,
            labels: Any = None, batch_size: int = 1024, *, metadata: dict | None = None,
            model_sha256: str | None = None, progress: bool = False) -> Self:
        """Fit on a model: run ``inputs`` through ``model`` (batched, no grad, eval mode) and
        fit on the vectors of ``layers`` (a module path or a list of them). ``inputs`` is an
        array with ``labels`` beside it, or an iterable of ``(x, y)`` batches (a
        ``torch.utils.data.DataLoader``) with ``labels=None``. Records the
        model's :func:`state_sha256` as ``metadata_["model_state_sha256"]``, so that
        :func:`~boxhack.monitor.compat.check_compatible` can tell another model apart.
        ``progress``: a bar over the forward pass on stderr."""
        names = self._layer_names(model, layers)
        if labels is None:
            inputs, labels = batches_to_arrays(inputs)
        labels_np = _to_numpy(labels, "labels")
        if len(labels_np) != len(inputs):
            raise BoxhackError(f"got {len(inputs)} inputs but {len(labels_np)} labels")
        if len(labels_np) == 0:
            raise BoxhackError("cannot fit a monitor on 0 inputs")
        pred, feats = collect(model, names, inputs, batch_size=batch_size, progress=progress)
        meta = dict(metadata or {})
        meta.setdefault("model_state_sha256", state_sha256(model))
        self.fit_features(feats, labels_np, pred, metadata=meta, model_sha256=model_sha256)
        if isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim > 1:
            # in memory only (files stay byte-identical): one sample of this shape given to
            # predict is a batch of one
            self.fit_input_shape_ = tuple(int(s) for s in inputs.shape[1:])
        return self

    @staticmethod
    def _layer_names(model: nn.Module, layers: str | Sequence[str]) -> list[str]:
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
        """float64 (N,): graded novelty (max over layers), larger = more novel; 0 exactly
        when accepted."""
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
        feats = self._margin_features(features)
        if not isinstance(classes, torch.Tensor):
            classes = torch.as_tensor(np.asarray(classes))
        out = None
        for layer in self.layers_:
            z = self._margin_input(layer, feats[layer])
            cl = self._margin_classes(classes, z)
            pre = (preactivation.get(layer, False) if isinstance(preactivation, Mapping)
                   else bool(preactivation))  # fmt: skip
            if pre and not self.uses_preactivation:
                z, pre = torch.relu(z), False
            m = self._margin_layer(layer, z, cl, pre)
            out = m if out is None else torch.minimum(out, m)
        return out

    def _margin_features(self, features: Any) -> dict[str, Any]:
        if isinstance(features, Mapping):
            feats = {str(k): v for k, v in features.items()}
        else:
            if len(self.layers_) != 1:
                raise BoxhackError(f"this monitor watches layers {self.layers_}; pass a dict {{layer: tensor}}")
            feats = {self.layers_[0]: features}
        missing = [layer for layer in self.layers_ if layer not in feats]
        if missing:
            raise BoxhackError(f"margin: no features for monitored layer(s) {missing}")
        return feats

    def _margin_classes(self, classes: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        cl = classes.to(device=z.device, dtype=torch.long).reshape(-1)
        if cl.numel() != z.shape[0]:
            raise BoxhackError(f"margin: {cl.numel()} classes for {z.shape[0]} rows")
        if cl.numel() and (int(cl.min()) < 0 or int(cl.max()) >= self.n_classes_):
            raise BoxhackError(
                f"margin: class index out of range 0..{self.n_classes_ - 1} "
                f"(got {int(cl.min())}..{int(cl.max())})"
            )
        return cl

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
        relu, other = [], []
        for layer in self.layers_:
            is_relu = self.uses_preactivation and is_relu_layer(model, layer)
            (relu if is_relu else other).append(layer)
        return relu, other

    def forward_margin(self, model: nn.Module, x: torch.Tensor, classes: Any = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """One differentiable forward: ``(logits, margin)``; ``classes=None`` uses the model's
        predicted class (no gradient through the argmax). The model runs in eval mode (its
        mode is restored). ReLU layers are tapped before the activation when the abstraction
        uses pre-activations (their margin keeps a gradient through dead units);
        ``margin >= 0`` equals ``predict(model, x)[1]`` for the same batch."""
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
        self._check_fitted()
        names = self._layer_names(model, self.layers_)
        shape = getattr(self, "fit_input_shape_", None)
        if shape and isinstance(inputs, (np.ndarray, torch.Tensor)) \
                and tuple(inputs.shape) == tuple(shape):
            inputs = inputs[None]  # one unbatched sample of the shape the monitor was fitted on
        if len(inputs) == 0:
            raise BoxhackError("no inputs given (0 rows)")
        return collect(model, names, inputs, batch_size=batch_size)

    def predict(self, model: nn.Module, inputs: Any, *, batch_size: int = 1024
                ) -> tuple[np.ndarray, np.ndarray]:
        """``(predicted classes int64 (N,), accepted bool (N,))`` for raw inputs."""
        pred, feats = self._collect(model, inputs, batch_size)
        return pred, self.accepts_features(feats, pred)

    def accepts(self, model: nn.Module, inputs: Any, *, batch_size: int = 1024) -> np.ndarray:
        """Boolean acceptance mask for raw inputs."""
        return self.predict(model, inputs, batch_size=batch_size)[1]

    def score_inputs(self, model: nn.Module, inputs: Any, *, batch_size: int = 1024) -> np.ndarray:
        """Graded novelty score (:meth:`novelty_score`) for raw inputs."""
        pred, feats = self._collect(model, inputs, batch_size)
        return self.novelty_score(feats, pred)

    # ------------------------------------------------------------------ description
    def summary(self) -> dict[str, Any]:
        """JSON-able description: abstraction, params, layers, dims, training counts, what
        each layer holds (``layer_state``) and the metadata."""
        self._check_fitted()
        return {
            "abstraction": self.abstraction,
            "params": jsonable_params(self.get_params()),
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
        meta, arrays = self._file_contents()
        return write_file(path, meta, arrays)

    def _file_contents(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The header and the arrays of this monitor's file (format version 2)."""
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "abstraction": self.abstraction,
            "params": jsonable_params(self.get_params()),
            "layers": list(self.layers_),
            "dims": [int(self.dims_[k]) for k in self.layers_],
            "n_classes": self.n_classes_,
            "metadata": self.metadata_,
            "state": {str(i): sorted(self.state_[layer]) for i, layer in enumerate(self.layers_)},
        }
        arrays: dict[str, np.ndarray] = {"n_fit": self.n_fit_}
        for i, layer in enumerate(self.layers_):
            for name, value in self.state_[layer].items():
                arrays[f"L{i}.{name}"] = np.asarray(value)
        return meta, arrays

    @classmethod
    def load(cls, path: str | os.PathLike) -> Self:
        """Read a monitor file; on a subclass, the file must hold that abstraction."""
        monitor = load_monitor(path)
        if not isinstance(monitor, cls):
            raise BoxhackError(
                f"{path} holds a {monitor.abstraction!r} monitor, not a {cls.abstraction!r} one; "
                f"load it with boxhack.monitor.load_monitor"
            )
        return monitor

    @classmethod
    def _from_file(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                   source: str) -> Self:
        """Rebuild a monitor of this class from a version-2 file's header and arrays,
        checking everything a hand edit or a corrupt file could garble."""
        bad = file_error(source)
        header = parse_header(meta, bad)
        monitor = cls._from_params(header, bad)
        state = _layered_state(meta, arrays, header, bad)
        return monitor._install_loaded(header, arrays.get("n_fit"), state, bad)

    @classmethod
    def _from_params(cls, header: Header, bad: Callable[[str], BoxhackError]) -> Self:
        """A monitor built from a file's parameters, each checked as the constructor would."""
        unknown = set(header.params) - set(cls.PARAMS)
        if unknown:
            raise bad(f"unknown parameters {sorted(unknown)} for a {cls.abstraction!r} monitor")
        monitor = cls(**header.params)
        try:
            monitor._validate_params()
        except BoxhackError as exc:
            raise bad(str(exc)) from None
        if monitor.n_classes is not None and monitor.n_classes != header.n_classes:
            raise bad(f"parameter n_classes={monitor.n_classes} but the file has "
                      f"{header.n_classes} classes")
        return monitor

    def _install_loaded(self, header: Header, n_fit: np.ndarray | None,
                        state: dict[str, dict[str, np.ndarray]],
                        bad: Callable[[str], BoxhackError]) -> Self:
        """Check a loaded state layer by layer (finite, the abstraction's own checks, the
        training counts against ``n_fit``) and install it."""
        problem = _n_fit_problem(n_fit, header.n_classes)
        if problem:
            raise bad(problem)
        for layer, d in zip(header.layers, header.dims):
            problem = (_nonfinite(state[layer])
                       or self._check_layer_state(layer, state[layer], d, header.n_classes))
            if problem:
                raise bad(f"layer {layer!r}: {problem}")
            held = self._fit_counts(state[layer], header.n_classes)
            if held is not None and not np.array_equal(held, n_fit):
                raise bad(f"the sets of layer {layer!r} hold {held.tolist()} training vectors "
                          f"per class, n_fit says {n_fit.tolist()}")
        try:
            self._set_fitted(header.layers, header.dims, header.n_classes, n_fit,
                             header.metadata, state)
        except BoxhackError as exc:
            raise bad(str(exc)) from None
        return self


def _fit_metadata(metadata: Mapping[str, Any] | None, model_sha256: str | None) -> dict[str, Any]:
    meta = dict(metadata or {})
    if model_sha256 is not None:
        meta["model_sha256"] = str(model_sha256)
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BoxhackError(f"metadata must be JSON-serialisable: {exc}") from None
    for key in HASH_KEYS:
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise BoxhackError(f"metadata {key!r} must be a hash string, got {meta[key]!r}")
    return meta


def _layered_state(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], header: Header,
                   bad: Callable[[str], BoxhackError]) -> dict[str, dict[str, np.ndarray]]:
    """Layer i's arrays ``L<i>.<name>`` as listed in the header's ``state``; a listing that is
    not one list of names per layer, a missing array or an unlisted one is refused."""
    listing = meta.get("state")
    want = {str(i) for i in range(len(header.layers))}
    if (not isinstance(listing, dict) or set(listing) != want
            or not all(isinstance(v, list) and all(isinstance(n, str) and n for n in v)
                       for v in listing.values())):
        raise bad(f"'state' must list the array names of each layer ({sorted(want)})")
    state: dict[str, dict[str, np.ndarray]] = {}
    expected = {"meta", "n_fit"}
    for i, layer in enumerate(header.layers):
        names = listing[str(i)]
        expected.update(f"L{i}.{name}" for name in names)
        missing = [f"L{i}.{name}" for name in names if f"L{i}.{name}" not in arrays]
        if missing:
            raise bad(f"array {missing[0]!r} missing")
        state[layer] = {name: arrays[f"L{i}.{name}"] for name in names}
    extra = sorted(set(arrays) - expected)
    if extra:
        raise bad(f"unexpected arrays {extra}")
    return state


# ----------------------------------------------------------------------------- clustering
class ClusteredMonitor(Monitor):
    """A monitor whose abstraction of a class is a union of sets, one per k-means cluster of
    the class's vectors (fixed ``n_clusters`` or the elbow rule; see
    :mod:`boxhack.monitor.clustering`). Its layer states hold ``cluster_class`` (int64, the
    class of each set, sorted) and ``cluster_count`` (int64, training vectors per set)."""

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
        (B,))`` where ``rows[b]`` are cluster b's float32 rows (in their training order);
        classes in order, a class's clusters in label order."""
        rows, cls = [], []
        for c in range(len(starts) - 1):
            xc = x[starts[c]:starts[c + 1]]
            if len(xc) == 0:
                continue
            result = self._clusters(xc)
            for j in range(result.k):
                rows.append(xc if result.k == 1 else xc[result.labels == j])
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

    def _fit_counts(self, state: Mapping[str, np.ndarray], n_classes: int) -> np.ndarray | None:
        if self._cluster_problem(state, n_classes):  # a subclass that does not check them
            return None
        out = np.zeros(n_classes, dtype=np.int64)
        np.add.at(out, state["cluster_class"], state["cluster_count"])
        return out

    def _describe_layer(self, layer: str) -> dict[str, Any]:
        cc = self.state_[layer]["cluster_class"]
        return {"n_sets": len(cc),
                "sets_per_class": np.bincount(cc, minlength=self.n_classes_).tolist()}
