"""``boxhack monitor fit|evaluate|layers|info``: fit, evaluate and inspect monitors.

The library is imported inside the handlers: that keeps ``boxhack --help`` from importing torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from boxhack.cli.common import (
    add_group,
    add_quiet_arg,
    add_target_args,
    check_output_file,
    comma_list,
    fraction,
    load_target_args,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    print_table,
    write_json,
)
from boxhack.errors import BoxhackError


def register(sub) -> None:
    add_group(sub, "monitor", "fit, evaluate and inspect monitors",
              "Outside-the-Box monitors: abstractions of a layer's vectors per class.",
              _register_fit, _register_evaluate, _register_layers, _register_info)  # fmt: skip


def _add_batch_arg(p) -> None:
    p.add_argument("--batch-size", type=positive_int, default=1024, help="inference batch size")


# ------------------------------------------------------------------ monitor fit
#: the abstractions ``--abstraction`` offers (boxhack.monitor.registry.MONITORS less
#: "composite", which is spelt as members joined by "+"; a test keeps the two equal). Kept
#: here, not imported, so that ``boxhack --help`` stays torch-free.
ABSTRACTIONS = ("box", "ball", "zone", "octagon", "pattern", "hull")

#: the abstraction-specific options: dest -> the monitor parameter they set (passed only when
#: given, so each abstraction keeps its library default)
SPECIFIC = {"clusters": "n_clusters", "threshold": "clustering_threshold",
            "max_clusters": "max_clusters", "seed": "seed", "gamma": "gamma",
            "lp_tolerance": "lp_tolerance", "max_memory": "max_memory"}  # fmt: skip


def abstraction_arg(text: str) -> str:
    """argparse type: an abstraction name, or several joined by '+' (a composite)."""
    parts = [p.strip() for p in str(text).split("+")]
    bad = [p for p in parts if p not in ABSTRACTIONS]
    if bad or len(set(parts)) != len(parts):
        why = (f"unknown {', '.join(map(repr, bad))}" if bad else "a member named twice")
        raise argparse.ArgumentTypeError(
            f"{why}: choose one of {', '.join(ABSTRACTIONS)}, or several joined by '+' "
            f"(a composite accepting only what all accept, e.g. box+pattern)")
    return "+".join(parts)


def mebibytes(text: str) -> int:
    """argparse type: a size in MiB (> 0) -> bytes."""
    return max(1, int(positive_float(text) * 2**20))


def _register_fit(msub) -> None:
    fit = msub.add_parser(
        "fit",
        help="fit a monitor on the model's training split",
        description=(
            "Fit a monitor (a box abstraction unless --abstraction names another) on the "
            "correctly classified training inputs of the model's data set and save it as one "
            ".npz file (any abstraction's file is read by `boxhack monitor info|evaluate` and "
            "boxhack.monitor.load_monitor)."
        ),
    )
    add_target_args(fit, monitor=False)
    fit.add_argument("--layer", type=comma_list(), action="extend", default=None,
                     metavar="NAME[,NAME...]",
                     help="layers to monitor (module paths, comma-separated or repeated; "
                          "default: the model's default layer)")
    fit.add_argument("--abstraction", type=abstraction_arg, default="box", metavar="NAME",
                     help=f"the abstraction: {', '.join(ABSTRACTIONS)} (default box), or "
                          f"several joined by '+' for a composite that accepts only what every "
                          f"member accepts, e.g. box+pattern (put hull last); see "
                          f"docs/abstractions.md")
    k = fit.add_mutually_exclusive_group()
    k.add_argument("--clusters", type=positive_int, default=None,
                   help="box, ball, zone, octagon, hull: fixed number of sets (clusters) per "
                        "class (default: the elbow rule)")
    k.add_argument("--threshold", type=fraction, default=None,
                   help="box, ball, zone, octagon, hull: elbow-rule threshold on the relative "
                        "inertia drop (default 0.07)")
    fit.add_argument("--max-clusters", type=positive_int, default=None,
                     help="box, ball, zone, octagon, hull: cap of the elbow rule (default 10)")
    fit.add_argument("--seed", type=nonneg_int, default=None,
                     help="box, ball, zone, octagon, hull: k-means seed (default 0)")
    fit.add_argument("--gamma", type=nonneg_int, default=None,
                     help="pattern: Hamming radius, accepted if the on/off pattern is within "
                          "gamma flips of a pattern seen in training (default 0)")
    fit.add_argument("--max-memory", type=mebibytes, default=None, metavar="MIB",
                     help="zone, octagon: refuse layers whose pair bounds need more than MIB "
                          "MiB (default 1024)")
    fit.add_argument("--lp-tolerance", type=positive_float, default=None, metavar="TAU",
                     help="hull: LP acceptance tolerance in the hull's scaled units, "
                          "1e-12..1e-2 (default 1e-6)")
    fit.add_argument("--tolerance", type=nonneg_float, default=0.0,
                     help="widening epsilon of every abstraction (default 0; pattern: extra "
                          "Hamming flips, a fraction of the width when relative)")
    fit.add_argument("--absolute", action="store_true",
                     help="absolute tolerance: each side grows by epsilon (default: relative, "
                          "each side grows by epsilon/2 of the interval's width)")
    fit.add_argument("--all-training", action="store_true",
                     help="use misclassified training inputs too (default: correct ones only)")
    _add_batch_arg(fit)
    fit.add_argument("--out", default=None,
                     help="output .npz (default: MODEL_DIR/monitor.npz for a model directory)")
    add_quiet_arg(fit)
    fit.set_defaults(handler=_fit)


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def build_from_args(args, n_classes: int):
    """The unfitted monitor that ``--abstraction`` and its options name (library:
    :func:`boxhack.monitor.build_monitor`); an option the abstraction does not take is an
    error naming the options it does."""
    from boxhack.monitor import abstraction_params, build_monitor

    name = args.abstraction
    known = abstraction_params(name)
    given = {dest: getattr(args, dest) for dest in SPECIFIC if getattr(args, dest, None) is not None}
    wrong = [dest for dest in given if SPECIFIC[dest] not in known]
    if wrong:
        takes = [_option(d) for d, p in SPECIFIC.items() if p in known]
        raise BoxhackError(f"{', '.join(map(_option, wrong))} does not apply to the {name} "
                           f"abstraction (its own options: {', '.join(takes) or 'none'})")
    params = {SPECIFIC[dest]: value for dest, value in given.items()}
    return build_monitor(name, tolerance=args.tolerance, relative_tolerance=not args.absolute,
                         only_correct=not args.all_training, n_classes=n_classes, **params)


def _fit_out(args, target) -> Path:
    if args.out is not None:
        return check_output_file(args.out, "--out")
    if target.kind != "boxhack":
        raise BoxhackError("pass --out FILE.npz (the model is not a boxhack model directory)")
    return check_output_file(target.model_dir() / "monitor.npz", "--out")


def _fit(args) -> int:
    if args.out is not None:
        check_output_file(args.out, "--out")
    target = load_target_args(args)
    info, ds = target.info, target.dataset
    layers = args.layer or ([info["default_layer"]] if info.get("default_layer") else None)
    if not layers:
        raise BoxhackError("this model records no default layer; pass --layer NAME "
                           "(see `boxhack monitor layers --model ...`)")
    out = _fit_out(args, target)
    monitor = build_from_args(args, ds.n_classes)
    meta = {"model": target.model_name, "model_sha256": info.get("sha256"), "dataset": ds.name,
            "classes": list(ds.classes), "split_seed": ds.split_seed}  # fmt: skip
    monitor.fit(target.model, layers, ds.x_train, ds.y_train, batch_size=args.batch_size,
                metadata=meta, progress=not args.quiet)  # fmt: skip
    path = monitor.save(out)
    _print_boxes(monitor)
    print(f"fitted on {int(monitor.n_fit_.sum())} of {len(ds.y_train)} training inputs "
          f"({'correct only' if monitor.only_correct else 'all'}) -> {path}")
    return 0


def _print_boxes(monitor) -> None:
    """One line per layer (and composite member): its width and how many sets (boxes, balls,
    hulls, patterns...) per class."""
    s = monitor.summary()
    rows = []
    for layer in s["layers"]:
        state = s.get("layer_state", {}).get(layer, {})
        parts = state.get("members") or [{"abstraction": s.get("abstraction", "box"), **state}]
        for part in parts:
            sets = part.get("n_sets", part.get("n_patterns", "-"))
            per = part.get("sets_per_class", part.get("patterns_per_class", []))
            rows.append({"layer": layer, "abstraction": part.get("abstraction", "box"),
                         "width": s["dims"][layer], "sets": sets,
                         "sets per class": ",".join(map(str, per))})
    print_table(rows, file=sys.stdout)


# ------------------------------------------------------------------ monitor evaluate
def _register_evaluate(msub) -> None:
    ev = msub.add_parser(
        "evaluate",
        help="acceptance, detection and novelty rates on the test split",
        description=(
            "Evaluate a monitor on the model's test split (acceptance of correct predictions, "
            "detection of misclassifications) and optionally on novel classes."
        ),
    )
    add_target_args(ev, novel=True)
    ev.add_argument("--on", choices=("test", "train"), default="test",
                    help="which split of the known classes to evaluate on (default test)")
    _add_batch_arg(ev)
    ev.add_argument("--out", default=None, metavar="FILE",
                    help="write the metrics to FILE as JSON")
    ev.add_argument("--json", nargs="?", const=True, default=False, metavar="FILE",
                    help="print the metrics as JSON (--json FILE: the old spelling of --out FILE)")
    ev.set_defaults(handler=_evaluate)


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _metric_rows(m: dict) -> list[dict]:
    rows = [
        {"metric": "accuracy", "value": _pct(m["accuracy"]),
         "count": f"{m['n_correct']}/{m['n_known']}"},
        {"metric": "acceptance of correct predictions", "value": _pct(m["acceptance_rate"]),
         "count": f"{m['correct_accepted']}/{m['n_correct']}"},
        {"metric": "false-warning rate", "value": _pct(m["false_warning_rate"]),
         "count": f"{m['correct_rejected']}/{m['n_correct']}"},
        {"metric": "detection of misclassifications", "value": _pct(m["detection_rate"]),
         "count": f"{m['misclassified_rejected']}/{m['n_misclassified']}"},
    ]  # fmt: skip
    if m.get("n_novel"):
        rows.append({"metric": "novelty detection", "value": _pct(m["novelty_detection_rate"]),
                     "count": f"{m['novel_rejected']}/{m['n_novel']}"})
        rows.append({"metric": "AUROC (score, correct vs novel)",
                     "value": "n/a" if m["auroc"] is None else f"{m['auroc']:.3f}", "count": ""})
    return rows


def _evaluate(args) -> int:
    from boxhack.monitor.evaluation import evaluate_novelty

    out = args.out or (args.json if isinstance(args.json, str) else None)
    if out:
        check_output_file(out, "--out")
    target = load_target_args(args)
    ds, novel, monitor = target.dataset, target.novel, target.monitor
    test = args.on == "test"
    x, y = (ds.x_test, ds.y_test) if test else (ds.x_train, ds.y_train)
    novel_x = None if novel is None else (novel.x_test if test else novel.x_train)
    metrics = evaluate_novelty(monitor, target.model, x, y, novel_x, batch_size=args.batch_size)
    metrics.update({
        "model": target.model_name, "monitor": target.monitor_name, "split": args.on,
        "dataset": ds.name, "known_classes": list(ds.classes),
        "novel_classes": [] if novel is None else list(novel.classes),
        "monitor_params": monitor.get_params(), "layers": list(monitor.layers_),
    })  # fmt: skip
    if args.json is True:
        print(json.dumps(metrics, indent=2, default=str))
    else:
        print_table(_metric_rows(metrics), file=sys.stdout)
    if out:
        where = sys.stderr if args.json is True else sys.stdout  # stdout: only the JSON
        print(f"-> {write_json(out, metrics)}", file=where)
    return 0


# ------------------------------------------------------------------ monitor layers, info
def _register_layers(msub) -> None:
    ly = msub.add_parser(
        "layers",
        help="list the layers a monitor can watch",
        description="List the model's named layers with their types and flattened widths.",
    )
    add_target_args(ly, monitor=False)
    ly.add_argument("--input-shape", type=_shape, default=None, metavar="C,H,W",
                    help="input shape without batch, e.g. 1,28,28 (default: recorded with the "
                         "model, else the --data set's)")
    ly.set_defaults(handler=_layers)


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(positive_int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"write it like 1,28,28, got {text!r}") from None


def _layers(args) -> int:
    import torch

    from boxhack.models.layers import list_layers

    target = load_target_args(args, need_data=False)
    shape = tuple(args.input_shape) if args.input_shape else target.input_shape
    if not shape:
        raise BoxhackError("the input shape is unknown for this model; pass --input-shape, e.g. "
                           "1,28,28, or --data NAME")  # fmt: skip
    try:
        layers = list_layers(target.model, torch.zeros((1, *shape)))
    except RuntimeError as exc:
        raise BoxhackError(f"the model does not accept inputs of shape {shape}: "
                           f"{str(exc).splitlines()[0]}") from None  # fmt: skip
    default = target.info.get("default_layer")
    rows = [{"layer": n, "type": t, "width": w, "default": "*" if n == default else ""}
            for n, t, w in layers]  # fmt: skip
    print_table(rows, file=sys.stdout)
    return 0


def _register_info(msub) -> None:
    info = msub.add_parser("info", help="describe a monitor file",
                           description="Print a monitor file's parameters and boxes per class.")
    info.add_argument("monitor", help="monitor .npz")
    info.add_argument("--json", action="store_true", help="print the description as JSON")
    info.set_defaults(handler=_info)


def _info(args) -> int:
    from boxhack.monitor.registry import load_monitor

    monitor = load_monitor(args.monitor)
    s = monitor.summary()
    if args.json:
        print(json.dumps(s, indent=2, default=str))
        return 0
    print(f"{args.monitor}: {monitor!r}, {s['n_classes']} classes")
    _print_boxes(monitor)
    for k, v in s["metadata"].items():
        print(f"  {k}: {v}")
    return 0

