"""Robustness curves (success rate against the perturbation budget) and before/after images.

Two kinds of curves from attack results:

- from a *minimal* attack: each sample's smallest successful perturbation ``r_i`` (``inf`` when
  it failed); the success rate at budget ``eps`` is ``mean(r_i <= eps)`` -- a step curve;
- from a *budget* attack run at a grid of budgets: one success rate per budget -- points.

(The budget at which a minimal attack reaches a success rate, a number of the summary, is
:func:`boxhack.experiments.gradient.budget_at`.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global state, no window, ever

from boxhack.infra.files import atomic_path

NORM_LABELS = {"l1": "L1", "l2": "L2", "linf": "L$\\infty$"}
_COLORS = {"gradient": "C0", "orthogonal": "C1", "pgd": "C2", "pgd-orthogonal": "C3"}


def save_png(fig, path, dpi: int = 110) -> None:
    """Write ``fig`` as a PNG at ``path`` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)


def success_curve(norms, success, eps) -> np.ndarray:
    """Success rate at each budget of ``eps`` from per-sample minimal norms and success flags."""
    r = np.where(np.asarray(success, bool), np.asarray(norms, float), np.inf)
    eps = np.asarray(eps, float)
    if len(r) == 0:
        return np.full(eps.shape, np.nan)
    return (r[None, :] <= eps[:, None]).mean(1)


def plot_robustness_curves(
    curves: Mapping[str, Mapping[str, Mapping]],
    *,
    title: str | None = None,
    norms: Sequence[str] | None = None,
):
    """One panel per norm; per attack either a minimal-attack step curve or budget points.

    ``curves[norm][attack]`` is ``{"norms": [...], "success": [...]}`` (minimal attack) or
    ``{"eps": [...], "rate": [...]}`` (budget attack). Returns the Figure."""
    norms = [n for n in (norms or ("l1", "l2", "linf")) if n in curves]
    fig = Figure(figsize=(4.2 * max(1, len(norms)), 3.4))
    axes = fig.subplots(1, max(1, len(norms)), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        xmax = 0.0
        for attack, c in curves[norm].items():
            if "norms" in c:
                r = np.where(np.asarray(c["success"], bool), np.asarray(c["norms"], float), np.inf)
                fin = np.sort(r[np.isfinite(r)])
                if len(fin):
                    xmax = max(xmax, float(fin[-1]))
                xs = np.concatenate([[0.0], fin])
                ys = np.arange(len(xs)) / max(len(r), 1)
                ax.step(xs, ys, where="post", color=_COLORS.get(attack), label=f"{attack} (minimal)")
            else:
                eps, rate = np.asarray(c["eps"], float), np.asarray(c["rate"], float)
                order = np.argsort(eps)
                if len(eps):
                    xmax = max(xmax, float(eps.max()))
                ax.plot(eps[order], rate[order], "o--", color=_COLORS.get(attack),
                        label=f"{attack} (budget)")
        ax.set_xlim(0, xmax * 1.05 if xmax > 0 else 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"perturbation budget ({NORM_LABELS.get(norm, norm)})")
        ax.set_ylabel("success rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_before_after(x0, x, *, titles: Sequence[str] | None = None, shape=None, max_cols: int = 8):
    """Images before (top row), after (middle) and the change (bottom, signed) per sample.

    ``x0``, ``x``: (N, ...) arrays of images (e.g. (N, 1, 28, 28) or flattened with ``shape``).
    Inputs that are not images (e.g. 2-D toy points) are drawn as arrows in one panel."""
    x0, x = np.asarray(x0, float), np.asarray(x, float)
    n = min(len(x0), max_cols)
    flat = x0.reshape(len(x0), -1)
    if shape is None:
        side = round(math.sqrt(flat.shape[1]))
        shape = (side, side) if side * side == flat.shape[1] else None
    if shape is None or int(np.prod(shape)) < 16:
        fig = Figure(figsize=(4, 4))
        ax = fig.subplots()
        a, b = x0.reshape(len(x0), -1), x.reshape(len(x), -1)
        ax.scatter(a[:, 0], a[:, 1], c="C0", label="before")
        ax.scatter(b[:, 0], b[:, 1], c="C3", label="after")
        for p, q in zip(a, b):
            ax.annotate("", q[:2], p[:2], arrowprops={"arrowstyle": "->", "color": "0.4"})
        ax.legend()
        return fig
    img_shape = tuple(s for s in shape if s != 1)[-2:] if len(shape) > 2 else tuple(shape)
    fig = Figure(figsize=(1.6 * max(n, 1), 5.0))
    axes = fig.subplots(3, max(n, 1), squeeze=False)
    for j in range(n):
        a = x0[j].reshape(img_shape)
        b = x[j].reshape(img_shape)
        d = b - a
        lim = max(float(np.abs(d).max()), 1e-6)
        axes[0, j].imshow(a, cmap="gray", vmin=0, vmax=1)
        axes[1, j].imshow(b, cmap="gray", vmin=0, vmax=1)
        axes[2, j].imshow(d, cmap="seismic", vmin=-lim, vmax=lim)
        if titles is not None and j < len(titles):
            axes[0, j].set_title(titles[j], fontsize=7)
        for i in range(3):
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    axes[0, 0].set_ylabel("before", fontsize=8)
    axes[1, 0].set_ylabel("after", fontsize=8)
    axes[2, 0].set_ylabel("change", fontsize=8)
    fig.tight_layout()
    return fig
