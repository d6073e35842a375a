"""How experiment ``adversarial`` (paper figure 8) is presented: its figures and sentences.

Everything here is computed from the summary data of
:func:`boxhack.experiments.adversarial.summarise` (the cells: flips and acceptances per attack,
criterion, budget and monitor) and the run's configuration; nothing is re-run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from boxhack.experiments.adversarial import DEFAULT_MONITOR, monitor_key
from boxhack.report.adversarial_figures import figure8_monitors, plot_figure8, plot_headline
from boxhack.report.curves import save_png
from boxhack.report.present import Presenter

__all__ = ["PRESENTER", "describe", "draw"]

HEADLINE = {"linf": 0.1, "l2": 2.0}  # the budget shown in the one-bar-per-attack figure
NORM_NAMES = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def _fmt_eps(e) -> str:
    return "none" if e is None else f"{e:g}"


def _split(summary: dict) -> tuple[list[dict], dict]:
    """The plain cells (criterion 'misclassify') and the 'combined' ones by (attack, budget)."""
    cells = summary.get("cells") or []
    plain = [c for c in cells if c["criterion"] == "misclassify"]
    comb = {(c["attack"], c["epsilon"]): c for c in cells if c["criterion"] == "combined"}
    return plain, comb


def pick(cells: list[dict]) -> dict:
    """Per attack, the cell at the headline budget of its norm (:data:`HEADLINE`) when it ran,
    else at its largest budget."""
    out: dict = {}
    for c in cells:
        want = HEADLINE.get(c["norm"])
        cur = out.get(c["attack"])
        if cur is None or (c["epsilon"] == want) or (cur["epsilon"] != want and
                                                     (c["epsilon"] or 0) > (cur["epsilon"] or 0)):
            out[c["attack"]] = c
    return out


def _budgets_text(head: dict) -> str:
    """The budgets the headline cells really are at, e.g. 'Linf 0.1, L2 3'."""
    by_norm: dict = {}
    for c in head.values():
        by_norm.setdefault(c["norm"], set()).add(_fmt_eps(c["epsilon"]))
    return ", ".join(f"{NORM_NAMES.get(k, k)} {'/'.join(sorted(v))}" for k, v in by_norm.items())


# ------------------------------------------------------------------------------ figures
def draw(config: dict, rows: list[dict], summary: dict, exp_dir: Path) -> list[dict]:
    """``figure8.png`` (every attack, budget and monitor) and ``figure8_headline.png`` (one
    group per attack at its headline budget), written atomically into ``exp_dir``."""
    plain, comb = _split(summary)
    if not plain:
        return []
    n, monitors = summary["attacked"], summary["monitors"]
    dm = summary.get("default_monitor", monitor_key(*DEFAULT_MONITOR))
    save_png(plot_figure8(plain, monitors, n), Path(exp_dir) / "figure8.png")
    shown = "; ".join(label for _, label, _ in figure8_monitors(monitors))
    head = pick(plain)
    comb_head = {a: comb[(a, c["epsilon"])] for a, c in head.items() if (a, c["epsilon"]) in comb}
    save_png(plot_headline(head, comb_head, dm, n), Path(exp_dir) / "figure8_headline.png")
    return [
        {"path": "figure8.png",
         "caption": f"Figure 8: per attack and budget, how many of {n} digits were flipped "
                    f"(grey) and how many of those each monitor accepted ({shown}; k = boxes "
                    f"per class, tol = tolerance)."},
        {"path": "figure8_headline.png",
         "caption": f"Flipped vs flipped-and-accepted ({_monitor_words(dm)}) per attack at "
                    f"{_budgets_text(head)}"
                    + ("; hatched: the same attack at the same budget given the criterion "
                       "'misclassified and accepted'." if comb_head else ".")},
    ]  # fmt: skip


def _monitor_words(key: str) -> str:
    """'k1-tol0' -> 'k=1, tol 0'."""
    k, tol = key.split("-tol")
    return f"k={k[1:]}, tol {tol}"


# ------------------------------------------------------------------------------ sentences
def describe(config: dict, summary: dict) -> dict:
    """The description, the comparison with the paper and the notes, from the numbers."""
    plain, _ = _split(summary)
    dm = summary.get("default_monitor", monitor_key(*DEFAULT_MONITOR))
    notes = []
    if summary.get("errors"):
        notes.append(f"{len(summary['errors'])} job(s) ended in an error; their attacks are "
                     f"missing from the tables and figures: "
                     + ", ".join(e["key"].rsplit("/", 2)[-2] + "/" + e["key"].rsplit("/", 1)[-1]
                                 for e in summary["errors"]) + ".")  # fmt: skip
    return {
        "description": _description(config, summary),
        "paper": _paper_claims(plain, summary["monitors"], dm, config),
        "notes": notes,
    }


def _network(config: dict) -> str:
    arch = config.get("network") or ""
    kind = "CNN" if arch.endswith("cnn") else "MLP"
    layer = config.get("layer")
    return f"{config.get('key')} {kind}" + (f" (monitored layer {layer})" if layer else "")


def _description(config: dict, summary: dict) -> str:
    cells = summary.get("cells") or []
    attacks = list(dict.fromkeys(c["attack"] for c in cells))
    by_norm: dict = {}
    for c in cells:
        by_norm.setdefault(c["norm"], {})[c["attack"]] = None
    eps = config.get("eps") or {}
    eps_text = "; ".join(f"{NORM_NAMES.get(norm, norm)} {', '.join(_fmt_eps(e) for e in eps[norm])}"
                         f" ({', '.join(names)})"
                         for norm, names in by_norm.items() if norm in eps)  # fmt: skip
    kinds = {c["kind"] for c in cells}
    clipped = [k for k in ("minimal", "decision") if k in kinds]
    monitors = summary["monitors"]
    ks = sorted({int(m.split("-")[0][1:]) for m in monitors})
    tols = sorted({float(m.split("-tol")[1]) for m in monitors})
    criteria = list(dict.fromkeys(c["criterion"] for c in cells))
    already = summary.get("already") or 0
    return (
        f"Foolbox attacks ({', '.join(attacks)}) on the {_network(config)} over {summary['n']} "
        f"correctly classified test digits (a seeded, class-balanced draw), at the budgets "
        f"{eps_text}"
        + (f" ({' and '.join(clipped)} attacks run once and are clipped to each budget)"
           if clipped else "")
        + "; every budget holds exactly in float32. Every adversarial sample is judged by "
        f"monitors with {', '.join(map(str, ks))} box(es) per class x tolerance "
        f"{', '.join(f'{t:g}' for t in tols)}."
        + (f" 'combined' = the attack is given 'misclassified and accepted by "
           f"{summary['default_monitor']}' as its Foolbox criterion." if "combined" in criteria
           else "")
        + (f" {already} digit(s) already met a criterion and were not counted." if already else "")
    )  # fmt: skip


def _compare(a: float, b: float) -> int:
    """-1, 0 or 1: is ``a`` below, equal to or above ``b`` (NaN compares as equal)."""
    if not (np.isfinite(a) and np.isfinite(b)) or a == b:
        return 0
    return -1 if a < b else 1


def _verdict(frac: list[float]) -> str:
    """Most flipped samples accepted? Per attack above, below or at exactly one half."""
    if not frac:
        return "Nothing flipped at these budgets, so nothing to compare. "
    above = sum(f > 0.5 for f in frac)
    below = sum(f < 0.5 for f in frac)
    if above == len(frac):
        return "Same trend: most flipped samples are accepted. "
    if below == len(frac):
        return "Differs: at these budgets most flipped samples are rejected. "
    if above == 0 and below == 0:
        return "Undecided: exactly half of the flipped samples are accepted for every attack. "
    return (f"Partly: most flipped samples are accepted for {above} of {len(frac)} attacks"
            + (f", exactly half for {len(frac) - above - below}" if len(frac) > above + below
               else "") + ". ")  # fmt: skip


def _paper_claims(plain: list[dict], monitors: list[str], dm: str, config: dict) -> list[dict]:
    if not plain:
        return []
    head = pick(plain)
    frac = [c["accepted"][dm] / c["flipped"] for c in head.values() if c["flipped"]]
    lines = ", ".join(f"{a} {c['accepted'][dm]}/{c['flipped']}" for a, c in head.items())
    claims = [{
        "claim": "One box per class, tolerance 0: most adversarial samples that flip the "
                 "prediction are accepted by the monitor",
        "measured": (f"flipped and accepted / flipped at {_budgets_text(head)}: {lines}; "
                     f"accepted share {min(frac):.0%}-{max(frac):.0%}" if frac else
                     f"no flips at {_budgets_text(head)}"),
        "note": (_verdict(frac) + _budget_note(plain, dm)
                 + f"The paper states neither its budgets nor its network; ours is the "
                   f"{_network(config).split(' (')[0]} of boxhack's network zoo, trained on 80% "
                   f"of the embedded MNIST sample (500 digits per class)."),
    }]  # fmt: skip
    claims += _cluster_claim(plain, monitors) + _tolerance_claim(plain, monitors)
    return claims


def _mean_accepted(plain: list[dict], m: str) -> float:
    vals = [c["accepted"][m] for c in plain if m in c["accepted"]]
    return float(np.mean(vals)) if vals else float("nan")


def _trend(plain: list[dict], ms: list[str]) -> str:
    return ", ".join(f"{m}: {_mean_accepted(plain, m):.1f}" for m in ms)


def _cluster_claim(plain: list[dict], monitors: list[str]) -> list[dict]:
    ks = sorted({int(m.split("-")[0][1:]) for m in monitors if m.endswith("-tol0")})
    if len(ks) < 2:
        return []
    k_ms = [monitor_key(k, 0.0) for k in ks]
    lo_k, hi_k = k_ms[0], k_ms[-1]
    fewer = sum(c["accepted"][hi_k] <= c["accepted"][lo_k] for c in plain)
    cmp = _compare(_mean_accepted(plain, hi_k), _mean_accepted(plain, lo_k))
    return [{
        "claim": "2 or 3 clusters per class reject more adversarial samples than 1",
        "measured": f"mean flipped-and-accepted per (attack, budget) cell, tolerance 0: "
                    f"{_trend(plain, k_ms)}; k={ks[-1]} accepts no more than k={ks[0]} in "
                    f"{fewer}/{len(plain)} cells",
        "note": {
            -1: "Same direction: smaller boxes cover less of the layer space, so fewer "
                "adversarial vectors fall inside one of the predicted class's boxes.",
            0: f"No difference measured: k={ks[-1]} and k={ks[0]} accepted as many on average.",
            1: f"Differs: k={ks[-1]} accepted more adversarial samples than k={ks[0]} here.",
        }[cmp],
    }]  # fmt: skip


def _tolerance_claim(plain: list[dict], monitors: list[str]) -> list[dict]:
    tols = sorted({float(m.split("-tol")[1]) for m in monitors if m.startswith("k1-")})
    if len(tols) < 2:
        return []
    t_ms = [monitor_key(1, t) for t in tols]
    lo_t, hi_t = t_ms[0], t_ms[-1]
    more = sum(c["accepted"][hi_t] >= c["accepted"][lo_t] for c in plain)
    cmp = _compare(_mean_accepted(plain, hi_t), _mean_accepted(plain, lo_t))
    return [{
        "claim": "Tolerance 0.1 or 0.25 accepts more adversarial samples than tolerance 0",
        "measured": f"mean flipped-and-accepted per cell, k=1: {_trend(plain, t_ms)}; tolerance "
                    f"{tols[-1]:g} accepts at least as many as {tols[0]:g} in "
                    f"{more}/{len(plain)} cells",
        "note": ("Same direction (it must be: a widened box contains the tight one)." if cmp > 0
                 else "No increase measured (a widened box contains the tight one, so "
                      "acceptance cannot fall)."),
    }]  # fmt: skip


def _budget_note(plain: list[dict], dm: str) -> str:
    """Where acceptance falls as the budget grows (a sample pushed further leaves the boxes)."""
    drops = []
    for attack in dict.fromkeys(c["attack"] for c in plain):
        mine = [c for c in plain if c["attack"] == attack and c["epsilon"] is not None]
        if len(mine) < 2:
            continue
        best = max(mine, key=lambda c: c["accepted"][dm])
        last = max(mine, key=lambda c: c["epsilon"])
        if last["accepted"][dm] < best["accepted"][dm] and last["flipped"] >= best["flipped"]:
            drops.append(f"{attack} {best['accepted'][dm]} at {best['epsilon']:g} -> "
                         f"{last['accepted'][dm]} at {last['epsilon']:g}")
    if not drops:
        return ""
    return ("Acceptance falls at larger budgets although at least as many samples flip ("
            + "; ".join(drops) + "): the samples are pushed out of the boxes, so a larger step is "
            "not a better attack on the monitor. ")


PRESENTER = Presenter(draw=draw, describe=describe)
