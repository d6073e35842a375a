"""2-D projections of a monitored layer with the monitor's boxes (paper figures 7 and 9).

The projection is linear, ``p = W (v - mu)`` with a (2, d) matrix W: either the first two
principal components of the plotted vectors (``method="pca"``) or two units
(``method=(i, j)``, W picks coordinates i and j, mu = 0). A box ``[lo, hi]`` is drawn as the
exact bounding rectangle of its projection: along axis a,

    max = sum_j (W+_aj hi_j + W-_aj lo_j) - W_a . mu,   min = sum_j (W+_aj lo_j + W-_aj hi_j) - W_a . mu

with W+ = max(W, 0), W- = min(W, 0). For units this is the box's own face; for PCA it is the
smallest axis-aligned rectangle containing the projected box (no 2^d corners needed).

Points are coloured by predicted class; accepted points are drawn as ``o``, rejected ones as
``*``; with ``before`` an arrow goes from each original point to its (attacked) point.
The figure is a plain ``matplotlib.figure.Figure`` (no pyplot, no window is ever shown).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure  # no pyplot: no global state, no window, ever
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from boxhack.errors import BoxhackError


def _as_matrix(features, layer, monitor, what):
    if isinstance(features, Mapping):
        if layer is None:
            layer = monitor.layers_[0] if monitor is not None else next(iter(features))
        if layer not in features:
            raise BoxhackError(f"{what}: no features for layer {layer!r} (have {sorted(features)})")
        features = features[layer]
    if hasattr(features, "detach"):
        features = features.detach().cpu().numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise BoxhackError(f"{what} must be a non-empty (N, d) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise BoxhackError(f"{what} contains NaN or infinite values")
    return x, layer


def projection_matrix(x: np.ndarray, method="pca") -> tuple[np.ndarray, np.ndarray]:
    """``(W (2, d), mu (d,))`` for ``method`` "pca" (fitted on ``x``) or a pair of units."""
    d = x.shape[1]
    if isinstance(method, str):
        if method != "pca":
            raise BoxhackError(f"unknown projection method {method!r}; use 'pca' or (i, j)")
        mu = x.mean(0)
        if d == 1:
            return np.array([[1.0], [0.0]]), mu
        _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
        w = np.zeros((2, d))
        w[: min(2, len(vt))] = vt[:2]
        if len(vt) < 2:  # a single point: pick any orthogonal unit
            w[1, 1 if abs(w[0, 0]) > 0.5 else 0] = 1.0
        for a in range(2):  # deterministic sign: largest |entry| positive
            if w[a, np.argmax(np.abs(w[a]))] < 0:
                w[a] = -w[a]
        return w, mu
    if isinstance(method, Sequence) and len(method) == 2:
        i, j = (int(u) for u in method)
        for u in (i, j):
            if not 0 <= u < d:
                raise BoxhackError(f"unit {u} is out of range for a layer of width {d}")
        w = np.zeros((2, d))
        w[0, i] = 1.0
        w[1, j] = 1.0
        return w, np.zeros(d)
    raise BoxhackError(f"method must be 'pca' or a pair of unit indices, got {method!r}")


def project_boxes(lo: np.ndarray, hi: np.ndarray, w: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Exact per-axis range of the projected boxes: (boxes, 2 axes, [min, max])."""
    lo = np.asarray(lo, np.float64)
    hi = np.asarray(hi, np.float64)
    wp, wm = np.maximum(w, 0.0), np.minimum(w, 0.0)
    shift = w @ mu
    pmin = lo @ wp.T + hi @ wm.T - shift
    pmax = hi @ wp.T + lo @ wm.T - shift
    return np.stack([pmin, pmax], axis=-1)


def _checked_inputs(features, predicted, accepted, monitor, layer, before):
    """``(x, pred, acc, x0, layer)`` as arrays of matching shapes, or one clear error."""
    x, layer = _as_matrix(features, layer, monitor, "features")
    pred = np.asarray(predicted).reshape(-1).astype(np.int64)
    acc = np.asarray(accepted, dtype=bool).reshape(-1)
    if not (len(pred) == len(acc) == len(x)):
        raise BoxhackError(
            f"features, predicted and accepted differ in length ({len(x)}, {len(pred)}, {len(acc)})"
        )
    x0 = None
    if before is not None:
        x0, _ = _as_matrix(before, layer, monitor, "before")
        if x0.shape != x.shape:
            raise BoxhackError(f"before has shape {x0.shape}, features {x.shape}")
    if monitor is not None:
        monitor._check_fitted()
        layer = monitor._resolve_layer(layer)
        if monitor.dims_[layer] != x.shape[1]:
            raise BoxhackError(
                f"features have {x.shape[1]} dimensions, layer {layer!r} of the monitor "
                f"{monitor.dims_[layer]}"
            )
    return x, pred, acc, x0, layer


def _checked_projection(x, x0, method, projection) -> tuple[np.ndarray, np.ndarray]:
    if projection is None:
        return projection_matrix(x if x0 is None else np.concatenate([x, x0]), method)
    w, mu = (np.asarray(a, dtype=np.float64) for a in projection)
    if w.shape != (2, x.shape[1]) or mu.shape != (x.shape[1],):
        raise BoxhackError(
            f"projection must be (W (2, {x.shape[1]}), mu ({x.shape[1]},)), got "
            f"{w.shape} and {mu.shape}"
        )
    return w, mu


def _color(c) -> Any:
    return colormaps["tab10"](int(c) % 10)


def _draw_boxes(ax, monitor, layer, shown, w, mu) -> None:
    """The monitor's boxes of the ``shown`` classes (dotted: before widening by the
    tolerance)."""
    tol = float(monitor.tolerance)
    for tight in ([False, True] if tol > 0 else [False]):
        lo_all, hi_all = monitor.boxes(layer, tight=tight)
        cls = monitor.box_class_[layer]
        sel = np.isin(cls, shown)
        for (rx, ry), c in zip(project_boxes(lo_all[sel], hi_all[sel], w, mu), cls[sel]):
            ax.add_patch(Rectangle(
                (rx[0], ry[0]), rx[1] - rx[0], ry[1] - ry[0], fill=False,
                edgecolor=_color(c), linewidth=1.2, linestyle=":" if tight else "-",
                alpha=0.6 if tight else 0.9,
            ))  # fmt: skip


def _draw_points(ax, p, p0, pred, acc) -> None:
    """Arrows from the original points (grey circles) to the points, coloured by class:
    accepted ``o``, rejected ``*``."""
    if p0 is not None:
        ax.quiver(p0[:, 0], p0[:, 1], p[:, 0] - p0[:, 0], p[:, 1] - p0[:, 1],
                  angles="xy", scale_units="xy", scale=1, width=0.003, color="0.4", alpha=0.7)
        ax.scatter(p0[:, 0], p0[:, 1], s=10, facecolors="none", edgecolors="0.5", linewidths=0.6)
    for c in sorted(set(pred.tolist())):
        for mask, marker, size in ((acc, "o", 18), (~acc, "*", 60)):
            m = (pred == c) & mask
            if m.any():
                ax.scatter(p[m, 0], p[m, 1], s=size, marker=marker, color=_color(c),
                           edgecolors="k" if marker == "*" else "none", linewidths=0.3)


def _legend(ax, classes, class_names) -> None:
    def name(c):
        return class_names[c] if class_names is not None and c < len(class_names) else str(c)

    handles = [Line2D([], [], marker="s", linestyle="", color=_color(c), label=f"class {name(c)}")
               for c in classes]
    handles += [Line2D([], [], marker="o", linestyle="", color="0.3", label="accepted"),
                Line2D([], [], marker="*", linestyle="", color="0.3", markersize=10, label="rejected")]
    ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.8)


def plot_projection(
    features,
    predicted,
    accepted,
    monitor=None,
    layer: str | None = None,
    *,
    method="pca",
    ax=None,
    title: str | None = None,
    before=None,
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    projection: tuple[np.ndarray, np.ndarray] | None = None,
):
    """Plot a 2-D projection of layer vectors with the monitor's boxes; returns the Figure.

    ``features``: (N, d) array or ``{layer: array}``; ``predicted``: classes (N,);
    ``accepted``: bool (N,); ``monitor``: a fitted BoxMonitor whose boxes of ``layer`` (default
    its first) are drawn for ``classes`` (default: the predicted classes present);
    ``before``: optional (N, d) original vectors, drawn as arrows to the points.
    ``projection``: a fixed ``(W (2, d), mu (d,))`` (e.g. from :func:`projection_matrix`) so
    several panels share one projection; it overrides ``method``'s fitting.
    """
    x, pred, acc, x0, layer = _checked_inputs(features, predicted, accepted, monitor, layer,
                                              before)  # fmt: skip
    w, mu = _checked_projection(x, x0, method, projection)
    if ax is None:
        fig = Figure(figsize=(6.0, 5.0))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    shown = sorted(set(pred.tolist())) if classes is None else [int(c) for c in classes]
    if monitor is not None:
        _draw_boxes(ax, monitor, layer, shown, w, mu)
    _draw_points(ax, (x - mu) @ w.T, None if x0 is None else (x0 - mu) @ w.T, pred, acc)
    _legend(ax, sorted(set(shown) | set(pred.tolist())), class_names)
    if isinstance(method, str):
        ax.set_xlabel(f"PC 1 of {layer or 'layer'}")
        ax.set_ylabel(f"PC 2 of {layer or 'layer'}")
    else:
        ax.set_xlabel(f"{layer or 'layer'} unit {int(method[0])}")
        ax.set_ylabel(f"{layer or 'layer'} unit {int(method[1])}")
    if title:
        ax.set_title(title)
    ax.autoscale_view()
    return fig


__all__ = ["plot_projection", "project_boxes", "projection_matrix"]
