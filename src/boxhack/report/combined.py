"""How experiment ``combined`` (paper section 4.2, figure 9) is presented: its figures and
sentences, from the rows and the summary data of :func:`boxhack.experiments.combined.summarise`.

Figure 9 draws the monitor's boxes: the monitor file is the one the rows name (their
``monitor_ref``, relative to the run directory), so the figure shows the monitor that judged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from boxhack.attacks.adversarial import get_spec
from boxhack.attacks.records import resolve_ref
from boxhack.errors import BoxhackError
from boxhack.infra.arrays import decode_array
from boxhack.monitor import BoxMonitor
from boxhack.report.adversarial_figures import plot_figure9, plot_images
from boxhack.report.curves import save_png
from boxhack.report.present import Presenter

__all__ = ["PRESENTER", "describe", "draw"]

N_SHOWN = 8  # repaired samples in the examples figure


def _ok(rows: list[dict]) -> list[dict]:
    return [r["result"] for r in rows if r.get("status") == "ok"]


def _cat(results: list[dict], *path: str) -> np.ndarray:
    out = []
    for r in results:
        for p in path:
            r = r[p]
        out.extend(r)
    return np.asarray(out)


def _monitor(rows: list[dict], exp_dir: Path) -> BoxMonitor | None:
    """The monitor the rows were judged by (``None`` when its file is gone or unreadable)."""
    try:
        ref = next(r["params"]["monitor_ref"] for r in rows if r.get("status") == "ok")
        path = resolve_ref(ref, Path(exp_dir).parent)
        return BoxMonitor.load(path) if path.is_file() else None
    except (BoxhackError, KeyError, StopIteration):
        return None


# ------------------------------------------------------------------------------ figures
def draw(config: dict, rows: list[dict], summary: dict, exp_dir: Path) -> list[dict]:
    """``figure9.png`` (the monitored layer's PCA projection before and after the repair) and
    ``figure9_examples.png`` (a few repaired digits), written atomically into ``exp_dir``."""
    results = _ok(rows)
    if not results:
        return []
    attack, layer = config["attack"], results[0]["layer"]
    feats = {k: np.concatenate([np.asarray(r["features"][k], dtype=np.float32) for r in results])
             for k in ("clean", "adv", "final")}  # fmt: skip
    monitor = _monitor(rows, exp_dir)
    fig = plot_figure9(
        feats["adv"], _cat(results, "adv", "pred"), _cat(results, "adv", "accepted").astype(bool),
        feats["final"], _cat(results, "final", "pred"),
        _cat(results, "final", "accepted").astype(bool), monitor,
        features_clean=feats["clean"], layer=layer,
        titles=(f"(a) after {attack} (arrows from the clean digits)",
                f"(b) after the repair (arrows from the {attack} samples)"),
    )  # fmt: skip
    save_png(fig, Path(exp_dir) / "figure9.png")
    figures = [{
        "path": "figure9.png",
        "caption": f"Figure 9: PCA projection of the monitored layer ({layer})"
                   + (" with the boxes of the monitor" if monitor is not None else
                      " (the monitor file was not found: boxes not drawn)")
                   + f": stars are samples the monitor rejects, dots accepted ones, colour = "
                     f"predicted class. (a) the {attack} samples, (b) after the repair "
                     f"'{config['repair']}'.",
    }]  # fmt: skip
    examples = _examples(results, attack)
    if examples is not None:
        fig, k = examples
        save_png(fig, Path(exp_dir) / "figure9_examples.png")
        figures.append({
            "path": "figure9_examples.png",
            "caption": f"{k} repaired samples: the clean digit, the {attack} sample (rejected "
                       f"by the monitor, or not flipped), and the repaired input (misclassified "
                       f"and accepted).",
        })  # fmt: skip
    return figures


def _examples(results: list[dict], attack: str):
    """``(figure, shown)`` of the repaired samples whose images the rows store, or ``None``."""
    images: dict = {"clean": [], "adv": [], "final": []}
    caps: list[list[str]] = [[], [], []]
    for r in results:
        e = r["examples"]
        if not e["positions"]:
            continue
        decoded = {k: decode_array(e[k]) for k in images}
        for j, pos in enumerate(e["positions"]):
            for k, shown in images.items():
                shown.append(decoded[k][j])
            caps[0].append(f"label {r['labels'][pos]}")
            for i, stage in ((1, "adv"), (2, "final")):
                caps[i].append(f"pred {r[stage]['pred'][pos]}, "
                               f"{'acc.' if r[stage]['accepted'][pos] else 'rejected'}")
    k = min(N_SHOWN, len(images["clean"]))
    if not k:
        return None
    fig = plot_images([("clean", images["clean"][:k]), (attack, images["adv"][:k]),
                       ("repaired", images["final"][:k])], [c[:k] for c in caps])  # fmt: skip
    return fig, k


# ------------------------------------------------------------------------------ sentences
def describe(config: dict, summary: dict) -> dict:
    """The description, the comparison with the paper and the notes, from the counts."""
    c = summary["counts"]
    attack, repair = config["attack"], config["repair"]
    n_att, ok = c["attacked"], c["success"]
    rate = f"{ok / n_att:.1%}" if n_att else "n/a (nothing attacked)"
    rate_flipped = f"{c['success_of_flipped'] / c['flipped']:.1%}" if c["flipped"] else "n/a"
    fb = c["fallback"]
    measured = (f"{ok}/{n_att} = {rate} misclassified and accepted ({c['flipped_accepted']} "
                f"after {attack} alone"
                + (f", {c['repaired']} repaired by '{repair}'" if repair != "none" else "")
                + (f", {fb} of them by the {config['fallback_norm']} fallback" if fb else "")
                + f"); of the samples {attack} flipped: {rate_flipped}")  # fmt: skip
    notes = []
    if summary.get("timing", {}).get("errors"):
        notes.append(f"{summary['timing']['errors']} job(s) ended in an error; their digits are "
                     f"not counted.")  # fmt: skip
    return {
        "description": _description(config, summary),
        "paper": [{
            "claim": "FGSM then the L1 Attack 2 (SHGO) on the samples the monitor rejected, "
                     "without the same-prediction constraint: 100% attack success over 300 "
                     "MNIST samples",
            "measured": measured,
            "note": _note(config, c),
        }],
        "notes": notes,
    }  # fmt: skip


def _budget(config: dict) -> str:
    """The stage-1 budget with its norm, e.g. 'Linf 0.1'."""
    norm = get_spec(config["attack"]).norm
    return f"{'Linf' if norm == 'linf' else norm.upper()} {config['epsilon']:g}"


def _description(config: dict, summary: dict) -> str:
    c = summary["counts"]
    repair = config["repair"]
    kind = "CNN" if str(config.get("network", "")).endswith("cnn") else "MLP"
    layer = config.get("layer")
    scipy = repair in ("slsqp", "shgo")
    text = (f"{config['attack']} at {_budget(config)} on {c['samples']} correctly classified "
            f"test digits (a seeded, class-balanced draw) of the {config['key']} {kind} "
            f"(monitor: {config['n_clusters']} box(es) per class, tolerance "
            f"{config['tolerance']:g}" + (f", layer {layer}" if layer else "") + ")")
    if repair == "none":
        return text + "; no repair. Success is verified on the attack's points."
    return (text + f"; every sample not yet misclassified-and-accepted then gets the '{repair}' "
            f"repair (goal 'combined', {config['norm'].upper()}, started at its adversarial "
            f"sample, distance measured from the clean digit)"
            + (f", bounded by {config['max_evals']} evaluations per sample" if scipy else "")
            + ". Success is verified on the final points.")  # fmt: skip


def _note(config: dict, c: dict) -> str:
    attack, repair = config["attack"], config["repair"]
    norm, fallback = config["norm"].upper(), config.get("fallback_norm")
    parts = []
    if repair == "gradient":
        parts.append(
            f"The repair is boxhack's monitor-aware gradient attack (minimal {norm} from the "
            f"clean digit, started at the {attack} sample"
            + (f"; {fallback.upper()} for any it leaves" if fallback else "")
            + ") instead of the paper's SHGO, which is available as --repair shgo (SciPy, "
            "bounded by an evaluation budget per sample; see docs/reproduction.md for how it "
            "fares)."
        )
    elif repair in ("slsqp", "shgo"):
        space = (config.get("repair_options") or {}).get("space", "input")
        parts.append(f"Repair with SciPy {repair.upper()} (search space {space}; the paper used "
                     f"SHGO on the 784 pixels), at most {config['max_evals']} evaluations per "
                     f"sample.")  # fmt: skip
    if repair != "none":
        parts.append(
            f"All attacked samples count, also the {c['not_flipped']} {attack} did not flip "
            f"(repaired too, since the goal 'combined' only asks for a wrong and accepted "
            f"prediction); the paper does not say how it counted those, nor its FGSM budget or "
            f"network."
        )
    unsolved = c["attacked"] - c["success"]
    if unsolved:
        parts.append(f"{unsolved} of {c['attacked']} sample(s) stayed unsolved"
                     + (" within the repair's budget." if repair != "none" else "."))
    return " ".join(parts)


PRESENTER = Presenter(draw=draw, describe=describe)
