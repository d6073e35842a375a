"""The audit's summary (from its rows) and its self-contained HTML report (the look of the
reproduction report: :mod:`boxhack.report.html`'s style and tables; figures embedded as data
URIs). Presentation only: :mod:`boxhack.workflow.audit` runs the measures."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from boxhack.infra.files import atomic_write
from boxhack.report.curves import plot_robustness_curves
from boxhack.report.html import _CSS, _e, _fmt, _kv_table, _note, _table

__all__ = ["render_audit", "summarise"]

GOAL_WORDS = {"dos": "Attack 1 (DoS): accepted inputs made rejected, same class",
              "intrude": "Attack 2 (intrusion): rejected inputs made accepted, same class",
              "intrude-any": "Attack 2, any class: rejected inputs made accepted"}  # fmt: skip


# what a convex-hull monitor's LP budget let a measure do (boxhack.workflow.audit)
HULL_WORK = ("hull_lps", "hull_budget", "n_planned", "n_attacked_within_budget")


def _rate(a, b) -> float | None:
    return None if not b else float(a) / float(b)


def summarise(rows: list[dict], config: Mapping[str, Any], timings: Mapping[str, float]) -> dict:
    """The audit in numbers (``summary.json``): per measure the headline figures, the errors,
    and the wall time per measure (reported, never used to decide anything)."""
    out: dict[str, Any] = {"config": dict(config), "errors": {}, "robustness": {},
                           "adversarial": {}, "timing": dict(timings)}  # fmt: skip
    per_measure: dict[str, float] = {}
    for row in rows:
        name = row["key"].split("/", 2)[2]
        per_measure[name] = round(float(row.get("wall_s") or 0.0), 3)
        if row.get("status") != "ok":
            out["errors"][name] = row.get("error")
            continue
        res = row["result"]
        if name == "monitor":
            out["monitor"] = {k: res.get(k) for k in (
                "accuracy", "n_known", "n_correct", "n_misclassified", "acceptance_rate",
                "false_warning_rate", "detection_rate", "correct_accepted",
                "misclassified_rejected", "n_novel", "novelty_detection_rate",
                "novel_rejected", "auroc", "novel_source")}  # fmt: skip
            m = out["monitor"]
            m["acceptance_of_incorrect"] = (None if not m.get("n_misclassified") else
                                            1.0 - float(m["detection_rate"]))  # fmt: skip
        elif name.startswith("robustness/"):
            out["robustness"][name.split("/", 1)[1]] = {
                k: res.get(k) for k in ("goal", "norm", "n", "attacked", "already", "success",
                                        "success_rate", "curve", "norm_stats", "norms")}
            out["robustness"][name.split("/", 1)[1]].update(
                {k: res[k] for k in HULL_WORK if k in res})
        elif name.startswith("adversarial/"):
            out["adversarial"][res["attack"]] = {
                k: res.get(k) for k in ("attack", "norm", "n", "attacked", "per_eps",
                                        "monitors")}
        elif name == "combined":
            out["combined"] = {k: v for k, v in res.items()
                               if k not in ("attacks", "stage", "indices")}
    out["timing"]["per_measure_s"] = per_measure
    out["timing"]["measures_s"] = round(sum(per_measure.values()), 3)  # over every session
    out["timing"]["this_run_s"] = round(sum(timings.values()), 3)
    out["stored_attacks"] = sum(len(r["result"].get("attacks") or []) for r in rows
                                if r.get("status") == "ok")  # fmt: skip
    out["headline"] = _headline(out)
    return out


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _headline(s: Mapping[str, Any]) -> list[str]:
    """A few sentences a user can act on."""
    lines = []
    m = s.get("monitor")
    if m:
        lines.append(f"Accuracy {_pct(m['accuracy'])}; the monitor accepts "
                     f"{_pct(m['acceptance_rate'])} of the correct predictions and "
                     f"{_pct(m['acceptance_of_incorrect'])} of the incorrect ones.")  # fmt: skip
        if m.get("n_novel"):
            lines.append(f"It rejects {_pct(m['novelty_detection_rate'])} of the "
                         f"{m['n_novel']} novel inputs (AUROC of the graded score "
                         f"{_fmt(m['auroc'])}).")  # fmt: skip
    for r in s.get("robustness", {}).values():
        st = r.get("norm_stats") or {}
        if r.get("attacked"):
            med = f", median {r['norm']} {st['median']:.3g}" if st.get("n") else ""
            lines.append(f"{r['goal']} / {r['norm']}: {r['success']} of {r['attacked']} attacked "
                         f"inputs fooled the monitor{med}.")  # fmt: skip
    for name, a in s.get("adversarial", {}).items():
        if a.get("per_eps"):
            pe = a["per_eps"][-1]
            lines.append(f"{name} at {a['norm']} {pe['epsilon']}: {pe['flipped']} of "
                         f"{a['attacked']} predictions flipped, {pe['accepted']['audited']} of "
                         f"those accepted by the monitor.")  # fmt: skip
    c = s.get("combined")
    if c:
        lines.append(f"Combined attack: {c['final_success']} of {c['attacked']} inputs end "
                     f"misclassified and accepted.")  # fmt: skip
    return lines


# ------------------------------------------------------------------ figures
def _png_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(fig, number: int, caption: str) -> str:
    return (f'<figure><img alt="figure {number}" src="{_png_uri(fig)}">'
            f"<figcaption>Figure {number}. {_e(caption)}</figcaption></figure>")


def _robustness_figure(rob: Mapping[str, Any]):
    curves: dict[str, dict] = {}
    for r in rob.values():
        norms = [np.inf if v is None else v for v in r.get("norms") or []]
        curves.setdefault(r["norm"], {})[r["goal"]] = {
            "norms": norms, "success": [v is not None for v in r.get("norms") or []]}
    return plot_robustness_curves(curves, title="success rate vs perturbation budget "
                                  "(minimal-norm monitor-aware attack)")  # fmt: skip


def _norm_histogram(rob: Mapping[str, Any]):
    items = [(k, [v for v in r.get("norms") or [] if v is not None]) for k, r in rob.items()]
    items = [(k, v) for k, v in items if v]
    fig = Figure(figsize=(4.2 * max(1, len(items)), 3.0))
    axes = fig.subplots(1, max(1, len(items)), squeeze=False)[0]
    for ax, (key, values) in zip(axes, items):
        ax.hist(values, bins=20, color="#2457a6")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("minimal perturbation norm")
        ax.set_ylabel("inputs")
    fig.tight_layout()
    return fig


def _adversarial_figure(adv: Mapping[str, Any]):
    fig = Figure(figsize=(4.6 * max(1, len(adv)), 3.4))
    axes = fig.subplots(1, max(1, len(adv)), squeeze=False)[0]
    for ax, (name, a) in zip(axes, adv.items()):
        pe = a["per_eps"][-1] if a.get("per_eps") else None
        if pe is None or not pe["flipped"]:
            ax.set_title(f"{name}: nothing flipped", fontsize=9)
            continue
        names = [m for m in a["monitors"] if m != "audited"]
        ax.bar(range(len(names)), [pe["accepted"][m] / pe["flipped"] for m in names],
               color="#2457a6")
        ax.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("flipped and accepted / flipped")
        ax.set_title(f"{name}, {a['norm']} eps {pe['epsilon']}", fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ HTML
def _sections(s: Mapping[str, Any]) -> list[str]:
    parts, n = [], 0
    m = s.get("monitor")
    if m:
        parts.append("<h2>Classifier and monitor</h2>")
        rows = [["accuracy", _pct(m["accuracy"]), f"{m['n_correct']}/{m['n_known']}"],
                ["acceptance of correct predictions", _pct(m["acceptance_rate"]),
                 f"{m['correct_accepted']}/{m['n_correct']}"],
                ["acceptance of incorrect predictions", _pct(m["acceptance_of_incorrect"]),
                 (f"{(m['n_misclassified'] or 0) - (m['misclassified_rejected'] or 0)}/"
                 f"{m['n_misclassified']}")]]  # fmt: skip
        if m.get("n_novel"):
            rows += [["novelty detection (novel inputs rejected)",
                      _pct(m["novelty_detection_rate"]), f"{m['novel_rejected']}/{m['n_novel']}"],
                     ["AUROC of the graded score (correct vs novel)", _fmt(m["auroc"]), ""]]
        else:
            rows.append(["novelty detection", "not measured",
                         "give --novel-classes or an x_ood array in the .npz"])
        parts.append(_table(["measure", "value", "count"], rows))
    rob = s.get("robustness") or {}
    if rob:
        parts.append("<h2>Robustness of the monitor (monitor-aware gradient attacks)</h2>")
        rows = []
        for r in rob.values():
            st = r.get("norm_stats") or {}
            rows.append([GOAL_WORDS.get(r["goal"], r["goal"]), r["norm"], r["attacked"],
                         r["success"], _pct(r.get("success_rate")), st.get("q10"),
                         st.get("median"), st.get("q90")])
        parts.append(_table(["goal", "norm", "attacked", "fooled", "rate", "norm q10",
                             "median norm", "norm q90"], rows))
        for norm in sorted({r["norm"] for r in rob.values()}):
            sub = [r for r in rob.values() if r["norm"] == norm and r.get("curve")]
            if not sub:
                continue
            parts.append(f"<h3>success within a {_e(norm)} budget</h3>")
            parts.append(_table(["goal"] + [f"eps {c['eps']:g}" for c in sub[0]["curve"]],
                                [[r["goal"]] + [_pct(c["rate"]) for c in r["curve"]]
                                 for r in sub]))  # fmt: skip
        if any(r.get("success") for r in rob.values()):
            n += 1
            fig = '<div class="figures">' + _figure(
                _robustness_figure(rob), n, "Success rate against the perturbation budget: the "
                "fraction of attacked inputs whose verified minimal perturbation is within it.")
            n += 1
            fig += _figure(_norm_histogram(rob), n, "Distribution of the minimal perturbation "
                           "norms of the successful attacks.") + "</div>"  # fmt: skip
            parts.append(fig)
    adv = s.get("adversarial") or {}
    if adv:
        parts.append("<h2>Adversarial examples against classifier and monitor (figure 8)</h2>")
        for name, a in adv.items():
            monitors = a.get("monitors") or []
            rows = [[pe["epsilon"], pe["flipped"], *[pe["accepted"][k] for k in monitors]]
                    for pe in a.get("per_eps") or []]  # fmt: skip
            parts.append(f"<h3>{_e(name)} ({_e(a['norm'])}), {a['attacked']} correctly "
                         f"classified inputs</h3>")
            parts.append(_table(["epsilon", "flipped", *[f"accepted: {k}" for k in monitors]],
                                rows))
        n += 1
        parts.append('<div class="figures">' + _figure(
            _adversarial_figure(adv), n, "Of the flipped predictions at the largest budget, the "
            "fraction each monitor (k boxes per class, tolerance) accepts.") + "</div>")
    c = s.get("combined")
    if c:
        parts.append("<h2>Combined attack (FGSM, then the monitor-aware repair)</h2>")
        parts.append(_kv_table([(k, c.get(k)) for k in (
            "epsilon", "attacked", "adv_flipped", "adv_flipped_accepted",
            "adv_flipped_rejected", "repaired_rejected", "repaired_not_flipped",
            "final_success")] + [("success rate", _pct(c.get("success_rate")))]))
    return parts


def render_audit(out: str | Path, summary: Mapping[str, Any]) -> Path:
    """Write ``out/report.html`` from ``summary`` (one self-contained file)."""
    out = Path(out)
    cfg = summary["config"]
    head = [f"<h1>boxhack audit: {_e(cfg.get('model'))}</h1>",
            (f'<p class="meta">{_e(time.strftime("%Y-%m-%d %H:%M"))}; data '
            f"{_e(cfg.get('data_source'))}</p>")]  # fmt: skip
    head += [f"<p>{_e(line)}</p>" for line in summary.get("headline", [])]
    for name, err in (summary.get("errors") or {}).items():
        head.append(_note(f"measure {name} failed: {err}", "bad"))
    mon = cfg.get("monitor") or {}
    params = mon.get("params") or {}
    timing = summary.get("timing") or {}
    head.append("<h2>What was audited</h2>")
    head.append(_kv_table([
        ("model", cfg.get("model")), ("model kind", cfg.get("model_kind")),
        ("model state sha256", cfg.get("model_sha256")), ("data", cfg.get("data_source")),
        ("classes", ", ".join(map(str, cfg.get("class_names") or []))),
        ("inputs (train / test)", f"{cfg.get('n_train')} / {cfg.get('n_test')}"),
        ("novel inputs", cfg.get("novel") or "none"),
        ("monitor", cfg.get("monitor_file") or "fitted by this audit: monitor.npz"),
        ("abstraction", mon.get("abstraction")), ("layers", ", ".join(mon.get("layers") or [])),
        ("boxes per class", mon.get("sets_per_class")),
        ("tolerance", params.get("tolerance")),
        ("settings", cfg.get("settings")),
        ("wall time", (f"{timing.get('total_s', 0):.1f} s (per measure: "
                      f"{_fmt(timing.get('per_measure_s'))})")),
    ]))  # fmt: skip
    tail = (f"<h2>Re-check</h2><p>{summary.get('stored_attacks', 0)} attack records are stored "
            "exactly (float32) in <code>audit/rows.jsonl</code>; <code>boxhack verify "
            f"{_e(out)}</code> re-decides every stored success with the model and the monitor."
            "</p>")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="boxhack"><title>boxhack audit</title>'
        f"<style>{_CSS}</style></head><body><main>"
        + "".join(head) + "".join(_sections(summary)) + tail
        + '<footer><p class="meta">Generated by <code>boxhack audit</code>; self-contained '
        "(no external resources).</p></footer></main></body></html>\n"
    )
    return atomic_write(out / "report.html", page)
