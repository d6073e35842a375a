"""Figures of the solver experiment (paper figures 5, 6 and 7), drawn from JSONL rows only.

Every function takes already-loaded row results (dicts as the solvers experiment's job
returns them) and writes one PNG atomically with matplotlib's object API (no pyplot, no
window). Inputs come from each row's exact attack record (``row["attacks"][0]``), layer
features from the row's exactly stored ``feat0`` / ``feat``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from boxhack.attacks.records import resolve_ref
from boxhack.infra.arrays import decode_array, is_encoded_array
from boxhack.monitor import BoxMonitor
from boxhack.report.curves import save_png
from boxhack.report.projection import plot_projection

PROBLEMS = (("dos", "l1"), ("dos", "l2"), ("intrude", "l1"), ("intrude", "l2"))
PROBLEM_LABELS = ("Attack 1\nL1", "Attack 1\nL2", "Attack 2\nL1", "Attack 2\nL2")
SOLVER_COLORS = {"slsqp": "#1f77b4", "cobyla": "#ff7f0e", "shgo": "#2ca02c", "de": "#d62728"}
NETWORK_TITLES = {
    "xor": "XOR circuit",
    "tanh": "tanh circuit",
    "mnist2": "MNIST, 2 classes",
    "mnist3": "MNIST, 3 classes",
    "mnist10": "MNIST, 10 classes",
}


def _figure(w: float, h: float) -> Figure:
    return Figure(figsize=(w, h), layout="constrained")


def _save(fig, path) -> Path:
    path = Path(path)
    save_png(fig, path, dpi=110)
    return path


def plot_success_bars(counts, config: dict, path) -> Path:
    """Grouped bars like figure 5: per network a panel, per problem a group, per solver a bar
    (success rate); one row of panels per constraint encoding."""
    nets = config["networks"]
    encs = config["encodings"]
    solvers = config["solvers"]
    fig = _figure(3.2 * len(nets) + 0.6, 2.8 * len(encs) + 0.4)
    axes = fig.subplots(len(encs), len(nets), squeeze=False, sharey=True)
    width = 0.8 / max(1, len(solvers))
    xs = np.arange(len(PROBLEMS))
    for i, enc in enumerate(encs):
        for j, net in enumerate(nets):
            ax = axes[i][j]
            for k, s in enumerate(solvers):
                rates = []
                for goal, norm in PROBLEMS:
                    succ, total = counts.get((net, goal, norm, s, enc), (0, 0, 0))[:2]
                    rates.append(100.0 * succ / total if total else 0.0)
                ax.bar(xs + (k - (len(solvers) - 1) / 2) * width, rates, width,
                       color=SOLVER_COLORS.get(s), label=s.upper())  # fmt: skip
            ax.set_xticks(xs)
            ax.set_xticklabels(PROBLEM_LABELS, fontsize=7)
            ax.set_ylim(0, 105)
            ax.set_title(f"{NETWORK_TITLES.get(net, net)} ({enc})", fontsize=9)
            if j == 0:
                ax.set_ylabel("success rate (%)")
            ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Optimisation attacks: success over {config['n_samples']} starting points",
                 fontsize=10)  # fmt: skip
    return _save(fig, path)


def _array(value) -> np.ndarray:
    """A stored array: exact (``encode_array``) or a plain list (older rows)."""
    if is_encoded_array(value):
        return decode_array(value)
    return np.asarray(value, dtype=np.float64)


def inputs_of(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(x0, x)`` of a solver row, from its attack record (one sample)."""
    record = row["attacks"][0]
    return _array(record["x0"])[0], _array(record["x"])[0]


def _image(values, shape) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).reshape(shape)
    return a[0] if a.ndim == 3 else a


def _verdict(pred: int, accepted: bool) -> str:
    return f"pred {pred}, {'accepted' if accepted else 'REJECTED'}"


def plot_digits(rows: list[dict], path, *, title: str = "") -> Path:
    """Figure 6: the digits before (top row) and after (bottom row) the attack."""
    rows = sorted(rows, key=lambda r: r.get("sample", 0))
    n = len(rows)
    fig = _figure(1.45 * max(n, 2), 3.6)
    axes = fig.subplots(2, max(n, 1), squeeze=False)
    for j, r in enumerate(rows):
        shape = r.get("input_shape", [28, 28])
        x0, x = inputs_of(r)
        for i, (img, pred, acc) in enumerate(
            ((x0, r["pred0"], r["accepted0"]), (x, r["pred"], r["accepted"]))
        ):
            ax = axes[i][j]
            ax.imshow(_image(img, shape), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            label = _verdict(pred, acc)
            if i == 1:
                label += f"\nL2 {r['l2']:.2f}" + ("" if r["success"] else " (failed)")
            ax.set_title(label, fontsize=6)
    axes[0][0].set_ylabel("before", fontsize=8)
    axes[1][0].set_ylabel("after", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_solver_gallery(rows: list[dict], path) -> Path | None:
    """For the first stored MNIST starting point of each attack: x0 and each solver's result
    (margin encoding, L2), to compare how the solvers' points look."""
    pick = [r for r in rows if r["encoding"] == "margin" and r["norm"] == "l2"]
    if not pick:
        return None
    network = min({r["network"] for r in pick})
    solvers = [s for s in SOLVER_COLORS if any(r["solver"] == s for r in pick)]
    goals = [g for g in ("dos", "intrude") if any(r["goal"] == g for r in pick)]
    fig = _figure(1.6 * (len(solvers) + 1), 2.0 * len(goals) + 0.3)
    axes = fig.subplots(len(goals), len(solvers) + 1, squeeze=False)
    for i, goal in enumerate(goals):
        rs = [r for r in pick if r["network"] == network and r["goal"] == goal]
        if not rs:
            continue
        sample = min(r["sample"] for r in rs)
        rs = {r["solver"]: r for r in rs if r["sample"] == sample}
        first = next(iter(rs.values()))
        shape = first.get("input_shape", [28, 28])
        ax = axes[i][0]
        ax.imshow(_image(inputs_of(first)[0], shape), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"x0 ({'Attack 1' if goal == 'dos' else 'Attack 2'})\n"
                     f"{_verdict(first['pred0'], first['accepted0'])}", fontsize=6)  # fmt: skip
        for j, s in enumerate(solvers, start=1):
            ax = axes[i][j]
            r = rs.get(s)
            if r is None:
                ax.set_visible(False)
                continue
            ax.imshow(_image(inputs_of(r)[1], shape), cmap="gray", vmin=0, vmax=1)
            status = f"L2 {r['l2']:.2f}" if r["success"] else r["outcome"]
            ax.set_title(f"{s.upper()}: {status}\n{_verdict(r['pred'], r['accepted'])}", fontsize=6)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{NETWORK_TITLES.get(network, network)}: each solver's attack (margin, L2)",
                 fontsize=8)  # fmt: skip
    return _save(fig, path)


def _monitor_of(row: dict, run_dir):
    """The monitor a row's attack was checked against (its record's file), or None."""
    try:
        return BoxMonitor.load(resolve_ref(row["attacks"][0]["monitor"], run_dir))
    except Exception:  # noqa: BLE001 - draw without boxes if the file is gone
        return None


def plot_projections(rows: list[dict], config: dict, path, *, run_dir=None, solver: str = "shgo",
                     norm: str = "l1", encoding: str = "margin") -> Path | None:  # fmt: skip
    """Figure 7: per network, the monitored layer projected to 2-D with the boxes, and the
    successful attacks of ``solver``/``norm`` as arrows before -> after (Attack 1 top row,
    Attack 2 bottom row). ``run_dir``: where the rows' monitor references are relative to."""
    nets = [n for n in config["networks"]
            if any(r["network"] == n and r["solver"] == solver for r in rows)]  # fmt: skip
    if not nets:
        return None
    fig = _figure(4.2 * len(nets), 7.6)
    axes = fig.subplots(2, len(nets), squeeze=False)
    for j, net in enumerate(nets):
        monitor = None
        layer = None
        for i, goal in enumerate(("dos", "intrude")):
            ax = axes[i][j]
            rs = [r for r in rows if r["network"] == net and r["solver"] == solver
                  and r["norm"] == norm and r["encoding"] == encoding and r["goal"] == goal
                  and r["success"]]  # fmt: skip
            name = "Attack 1" if goal == "dos" else "Attack 2"
            if not rs:
                ax.text(0.5, 0.5, f"no successful\n{solver.upper()} {norm.upper()} {name}",
                        ha="center", va="center", transform=ax.transAxes, fontsize=8)  # fmt: skip
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            layer = rs[0].get("layer")
            if monitor is None:
                monitor = _monitor_of(rs[0], run_dir)
            feats = np.array([_array(r["feat"]).reshape(-1) for r in rs])
            before = np.array([_array(r["feat0"]).reshape(-1) for r in rs])
            plot_projection(
                feats, [r["pred"] for r in rs], [r["accepted"] for r in rs], monitor, layer,
                ax=ax, before=before,
                title=f"{NETWORK_TITLES.get(net, net)}: {name} ({solver.upper()}, {norm.upper()})",
            )  # fmt: skip
            ax.title.set_fontsize(8)
    return _save(fig, path)
