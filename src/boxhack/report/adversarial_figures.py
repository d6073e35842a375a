"""Figures of the adversarial experiments: paper figure 8 (flipped vs flipped-and-accepted) and
figure 9 (projections before and after the combined attack). Plain matplotlib ``Figure``
objects (Agg canvas, no pyplot, no window)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global state, no window, ever

from boxhack.report.projection import plot_projection

# monitors drawn in figure 8, with colours: the cluster sweep in blues, tolerance in oranges
_SHOWN = (
    ("k1-tol0", "k=1, tol 0", "#08519c"),
    ("k2-tol0", "k=2, tol 0", "#4292c6"),
    ("k3-tol0", "k=3, tol 0", "#9ecae1"),
    ("k1-tol0.1", "k=1, tol 0.1", "#fd8d3c"),
    ("k1-tol0.25", "k=1, tol 0.25", "#d94801"),
)


def figure8_monitors(monitors: Sequence[str]) -> list[tuple[str, str, str]]:
    """``(key, label, colour)`` of the monitors :func:`plot_figure8` draws, of ``monitors``."""
    return [s for s in _SHOWN if s[0] in monitors]


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def plot_figure8(cells: Sequence[Mapping], monitors: Sequence[str], n: int):
    """One panel per attack; per budget a group of bars: flipped, then flipped-and-accepted
    for the monitors of the cluster and tolerance sweeps (those present in ``monitors``)."""
    attacks = list(dict.fromkeys(c["attack"] for c in cells))
    shown = figure8_monitors(monitors)
    cols = min(3, len(attacks))
    rows = math.ceil(len(attacks) / cols)
    fig = _figure(4.2 * cols, 2.9 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    width = 0.8 / (1 + len(shown))
    for ax, attack in zip(axes.flat, attacks):
        mine = [c for c in cells if c["attack"] == attack]
        xs = np.arange(len(mine))
        ax.bar(xs - 0.4 + width / 2, [c["flipped"] for c in mine], width, color="0.6",
               label="flipped")
        for j, (key, label, colour) in enumerate(shown, start=1):
            ax.bar(xs - 0.4 + width / 2 + j * width, [c["accepted"][key] for c in mine], width,
                   color=colour, label=f"& accepted, {label}")
        ax.set_xticks(xs, [("none" if c["epsilon"] is None else f"{c['epsilon']:g}") for c in mine])
        ax.set_xlabel(f"epsilon ({mine[0]['norm']})")
        ax.set_ylim(0, n * 1.05)
        ax.set_title(attack, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(attacks):]:
        ax.set_visible(False)
    axes.flat[0].set_ylabel(f"samples (of {n})")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(6, len(labels)), fontsize=8)
    fig.suptitle("Adversarial samples: flipped vs flipped and accepted by the monitor")
    return fig


def plot_headline(plain: Mapping[str, Mapping], combined: Mapping[str, Mapping], monitor: str,
                  n: int):
    """One group per attack: flipped, flipped-and-accepted by ``monitor`` (plain attack), and
    flipped-and-accepted when the attack's criterion includes the monitor (hatched)."""
    attacks = list(plain)
    fig = _figure(max(6.0, 1.1 * len(attacks) + 2), 3.8)
    ax = fig.subplots()
    xs = np.arange(len(attacks))
    w = 0.27
    ax.bar(xs - w, [plain[a]["flipped"] for a in attacks], w, color="0.6", label="flipped")
    ax.bar(xs, [plain[a]["accepted"].get(monitor, 0) for a in attacks], w, color="#08519c",
           label=f"flipped & accepted ({monitor})")
    if combined:
        ax.bar(xs + w, [combined[a]["accepted"].get(monitor, 0) if a in combined else 0
                        for a in attacks], w, color="#6baed6", hatch="//", edgecolor="k",
               label="criterion 'combined': flipped & accepted")
    ax.set_xticks(xs, [f"{a}\n{plain[a]['norm']} {plain[a]['epsilon']:g}" if plain[a]["epsilon"]
                       is not None else a for a in attacks], fontsize=8)
    ax.set_ylim(0, n * 1.05)
    ax.set_ylabel(f"samples (of {n})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Adversarial attacks vs the monitor (one box per class, tolerance 0)")
    return fig


def plot_figure9(features_before, pred_before, acc_before, features_after, pred_after,
                 acc_after, monitor, *, features_clean=None, layer=None, titles=None):
    """Two panels like the paper's figure 9: (a) the adversarial samples and the monitor's
    verdicts before the repair (arrows from the clean inputs when given), (b) after it
    (arrows from the adversarial samples). Rejected samples are drawn as stars."""
    fig = _figure(13.0, 5.6)
    ax_a, ax_b = fig.subplots(1, 2)
    t = titles or ("(a) before the repair", "(b) after the repair")
    plot_projection(features_before, pred_before, acc_before, monitor, layer, ax=ax_a,
                    title=t[0], before=features_clean)
    plot_projection(features_after, pred_after, acc_after, monitor, layer, ax=ax_b,
                    title=t[1], before=features_before)
    return fig


def plot_images(rows: Sequence[tuple[str, np.ndarray]], captions: Sequence[Sequence[str]] | None = None,
                *, shape=(28, 28)):
    """A grid of images: one row per ``(label, images (m, ...))``, one column per sample."""
    m = max(len(imgs) for _, imgs in rows)
    fig = _figure(1.5 * m + 1.2, 1.6 * len(rows))
    axes = fig.subplots(len(rows), m, squeeze=False)
    for i, (label, imgs) in enumerate(rows):
        for j in range(m):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(imgs):
                ax.imshow(np.asarray(imgs[j]).reshape(shape), cmap="gray", vmin=0, vmax=1)
                if captions is not None:
                    ax.set_title(captions[i][j], fontsize=7)
            else:
                ax.set_visible(False)
        axes[i, 0].set_ylabel(label, fontsize=8)
    return fig
