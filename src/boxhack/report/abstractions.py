"""How experiment ``abstractions`` is presented: one figure that puts each abstraction's
detection power against its robustness, and the sentences that answer the two questions
(which abstraction detects novel inputs best, which is hardest to fool), generated from the
summary data of :func:`boxhack.experiments.abstractions.summarise` (a tie is a tie; only what
ran is named)."""

from __future__ import annotations

import math
from pathlib import Path

from boxhack.report.curves import save_png
from boxhack.report.present import Presenter

__all__ = ["PRESENTER", "answers", "describe", "draw"]

TIE = 0.005  # AUROCs and rates closer than this are a tie
USABLE = 0.5  # a monitor that warns on more than half the correct predictions is named apart
NAMES = {"box": "box", "ball": "mean-ball", "zone": "zone", "octagon": "octagon",
         "pattern": "pattern", "hull": "convex hull", "composite": "zone+pattern"}  # fmt: skip
MARKERS = {"box": "s", "ball": "o", "zone": "D", "octagon": "8", "pattern": "P", "hull": "h",
           "composite": "*"}  # fmt: skip
COLORS = {"box": "C0", "ball": "C1", "zone": "C2", "octagon": "C3", "pattern": "C4",
          "hull": "C5", "composite": "C6"}  # fmt: skip


def _label(h: dict) -> str:
    return f"{NAMES.get(h['abstraction'], h['abstraction'])} (tol {h['tolerance']:g})"


def _value(v) -> float | None:
    """A budget as a number: ``None`` (the attack found too few) is infinitely robust."""
    return math.inf if v is None else float(v)


# ------------------------------------------------------------------------------ figure
def _has(h: dict, key: str) -> bool:
    """Did the measure behind ``key`` run for this abstraction? (A budget of ``None`` with
    digits attacked means the attack never reached 50%: that is a point too.)"""
    if key.endswith("_budget50"):
        return f"{key[: -len('_budget50')]}_attacked" in h
    return h.get(key) is not None


def draw(config: dict, rows: list[dict], summary: dict, exp_dir: Path) -> list[dict]:
    """``abstractions.png``: per panel, detection power (AUROC novel vs correct, the digits
    0-4 network) on x against one robustness measure on y, one point per abstraction and
    tolerance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = [h for h in summary.get("headline") or [] if h.get("auroc_novel") is not None]
    panels = [(key, title) for key, title in (
        ("intrude_l2_budget50", "Attack 2 (intrude): L2 budget for 50% success"),
        ("dos_l2_budget50", "Attack 1 (DoS): L2 budget for 50% success"),
        ("combined_rate", "Combined attack: success rate (lower = harder to fool)"),
    ) if any(_has(h, key) for h in heads)]  # fmt: skip
    if not heads:
        return []
    if not panels:
        panels = [("incorrect_accepted", "Incorrect predictions accepted (10-class)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.0), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        budget = key.endswith("budget50")
        finite = [h[key] for h in heads if budget and h.get(key) is not None]
        top = 1.25 * max(finite) if finite else 1.0
        for h in [h for h in heads if _has(h, key)]:
            v = h.get(key)
            never = budget and v is None
            y = top if never else float(v)
            ax.scatter([h["auroc_novel"]], [y], marker=MARKERS.get(h["abstraction"], "o"),
                       s=70, color=COLORS.get(h["abstraction"], "0.3"),
                       alpha=0.85 if h["tolerance"] == 0 else 0.4,
                       edgecolors="black" if never else "none", label=_label(h))  # fmt: skip
        if budget:
            ax.axhline(top, color="0.7", lw=0.8, ls=":")
            ax.text(ax.get_xlim()[0], top, " never reached 50%", fontsize=7, va="bottom",
                    color="0.4")  # fmt: skip
        ax.set_xlabel("novel-digit AUROC (0-4 network, digits 5-9 novel)")
        ax.set_ylabel(title.split(": ", 1)[1])
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    # one legend for all panels (marker and colour per abstraction, paler = larger tolerance):
    # points of close abstractions overlap, text labels beside them would too
    by_name: dict = {}
    for ax in axes[0]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            by_name.setdefault(name, handle)
    names = sorted(by_name, key=lambda n: [_label(h) for h in heads].index(n))
    handles = [by_name[n] for n in names]
    fig.legend(handles, names, loc="lower center", ncol=min(7, len(names)), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(names) - 1) // 7), 1, 1))
    save_png(fig, Path(exp_dir) / "abstractions.png")
    plt.close(fig)
    tols = sorted({h["tolerance"] for h in heads})
    return [{"path": "abstractions.png", "caption": (
        f"Detection power against robustness, one point per abstraction "
        f"({', '.join(dict.fromkeys(NAMES.get(h['abstraction'], h['abstraction']) for h in heads))}"
        f"; tolerance {', '.join(f'{t:g}' for t in tols)}, the larger ones paler), layer "
        f"relu2, k = {config.get('n_clusters')} clusters per class. x: AUROC of the graded "
        f"score, novel digits 5-9 against correctly classified digits 0-4. y: "
        + "; ".join(t for _, t in panels) + " (the monitor-aware gradient attack, minimal "
        "mode, 10-class network; a point with a black edge on the dotted line: fewer than half the attacked "
        "digits fell at any budget). Right and up is better for the defender, except the "
        "combined panel, where down is.")}]  # fmt: skip


# ------------------------------------------------------------------------------ sentences
def _best(items: list[tuple[str, float]], higher: bool = True, tie: float = TIE):
    """The best value and every name within ``tie`` of it (all tied)."""
    if not items:
        return None, []
    best = max(v for _, v in items) if higher else min(v for _, v in items)
    if math.isinf(best):
        return best, [n for n, v in items if v == best]
    return best, [n for n, v in items if abs(v - best) <= tie]


def _names(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1] + " (a tie)"


def _fmt_budget(v: float) -> str:
    return "never half (inf)" if math.isinf(v) else f"{v:.3g}"


def answers(summary: dict) -> list[str]:
    """The two answers (and their caveats), from the headline numbers at tolerance 0 (and
    the same sentences for every other tolerance that ran)."""
    heads = summary.get("headline") or []
    out = []
    for tol in sorted({h["tolerance"] for h in heads}):
        hs = [h for h in heads if h["tolerance"] == tol]
        name = {id(h): NAMES.get(h["abstraction"], h["abstraction"]) for h in hs}
        auc = [(name[id(h)], h["auroc_novel"]) for h in hs if h.get("auroc_novel") is not None]
        if auc:
            best, who = _best(auc)
            ranked = sorted(auc, key=lambda t: -t[1])
            rej = {name[id(h)]: (h.get("novel_rejected"), h.get("novelty_correct_accepted"))
                   for h in hs}  # fmt: skip
            detail = "; ".join(f"{n} {v:.3f} (novel rejected {_p(rej[n][0])}, correct accepted "
                               f"{_p(rej[n][1])})" for n, v in ranked)  # fmt: skip
            out.append(f"Tolerance {tol:g}: best novel-input detection (AUROC of the graded "
                       f"score, digits 5-9 vs correct 0-4): {_names(who)} with {best:.3f}. "
                       f"All: {detail}.")  # fmt: skip
        inc = [(name[id(h)], h["incorrect_accepted"]) for h in hs
               if h.get("incorrect_accepted") is not None]  # fmt: skip
        if inc:
            low, who = _best(inc, higher=False)
            out.append(f"Tolerance {tol:g}: fewest incorrect predictions of the 10-class network "
                       f"accepted: {_names(who)} ({_p(low)}).")  # fmt: skip
        for goal, words in (("intrude", "Attack 2 (intrusion)"), ("dos", "Attack 1 (DoS)")):
            key = f"{goal}_l2_budget50"
            vals = [(name[id(h)], _value(h.get(key))) for h in hs if f"{goal}_l2_attacked" in h]
            if not vals:
                continue
            best, who = _best(vals, tie=1e-9)
            ranked = sorted(vals, key=lambda t: -t[1])
            out.append(
                f"Tolerance {tol:g}, hardest to fool by {words}, L2 budget at which the gradient "
                f"attack fools half the attacked digits: {_names(who)} ({_fmt_budget(best)}). "
                f"All: " + "; ".join(f"{n} {_fmt_budget(v)}" for n, v in ranked) + ".")
            usable = {name[id(h)] for h in hs if (h.get("correct_accepted") or 0) >= USABLE}
            kept = [(n, v) for n, v in vals if n in usable]
            if kept and len(kept) < len(vals):
                best, who = _best(kept, tie=1e-9)
                out.append(f"Among the monitors that accept at least {USABLE:.0%} of the correct "
                           f"predictions ({', '.join(n for n, _ in kept)}): {_names(who)} "
                           f"({_fmt_budget(best)}).")  # fmt: skip
        comb = [(name[id(h)], h["combined_rate"]) for h in hs if h.get("combined_rate") is not None]
        if comb:
            low, who = _best(comb, higher=False)
            out.append(f"Tolerance {tol:g}, combined attack (misclassified and accepted): "
                       f"lowest success {_names(who)} ({_p(low)}); all: "
                       + "; ".join(f"{n} {_p(v)}" for n, v in sorted(comb, key=lambda t: t[1]))
                       + ".")  # fmt: skip
    return out


def caveats(summary: dict) -> list[str]:
    """Sentences that keep the answers honest: monitors that accept (almost) nothing, attacks
    that found nothing, the hull's smaller samples."""
    heads = summary.get("headline") or []
    cfg = summary.get("config") or {}
    out = []
    for h in heads:
        n = _label(h)
        if (h.get("correct_accepted") is not None and h["correct_accepted"] < 0.05):
            out.append(f"{n} accepts {_p(h['correct_accepted'])} of the correct predictions: it "
                       f"rejects almost everything, so it detects everything and cannot be "
                       f"fooled into a DoS, at the price of a warning on nearly every input.")
        if h.get("dos_l2_attacked") and h.get("dos_l2_rate") == 0:
            out.append(f"{n}: the gradient attack found no DoS in L2 on "
                       f"{h['dos_l2_attacked']} digits; that is what this attack found, not a "
                       f"proof (on a ReLU layer the margin of pair constraints can be flat, see "
                       f"docs/attacks-gradient.md).")  # fmt: skip
    if any(h["abstraction"] == "hull" for h in heads) and cfg.get("hull_n"):
        out.append(f"Convex hulls cost an LP per attack step and row: their attack jobs took at "
                   f"most {cfg['hull_n']} digits each (the others: {cfg.get('n')} per goal, "
                   f"{cfg.get('fig8_n')} for FGSM / PGD, {cfg.get('combined_n')} for the "
                   f"combined attack).")  # fmt: skip
    return out


def _p(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def describe(config: dict, summary: dict) -> dict:
    ran = [NAMES.get(a, a) for a in config.get("abstractions") or []]
    notes = answers(summary) + caveats(summary)
    if summary.get("timing", {}).get("errors"):
        notes.append(f"{summary['timing']['errors']} job(s) ended in an error; their cells are "
                     f"missing.")  # fmt: skip
    return {
        "description": (
            f"The abstractions {', '.join(ran)} (the composite: {config.get('composite')}), each "
            f"fitted on the correctly classified training digits at layer relu2 with "
            f"k = {config.get('n_clusters')} clusters per class where it clusters, pattern "
            f"gamma {config.get('gamma')}, relative tolerance "
            f"{', '.join(f'{t:g}' for t in config.get('tolerances') or [])}. Detection: the "
            f"10-class MNIST network's test predictions and the digits 0-4 network with digits "
            f"5-9 as novel. Robustness: the monitor-aware gradient attack (minimal and budget "
            f"mode, {config.get('n')} digits per goal), FGSM / PGD judged by each monitor "
            f"({config.get('fig8_n')} digits) and the combined attack "
            f"({config.get('combined_n')} digits); every success re-verified with the exact "
            f"monitor and stored for `boxhack verify`."
        ),
        "paper": [],
        "notes": notes,
    }  # fmt: skip


PRESENTER = Presenter(draw=draw, describe=describe)
