"""``boxhack monitor``: fit, evaluate and inspect Outside-the-Box monitors."""

from __future__ import annotations

import sys
from pathlib import Path

from boxhack.cli.common import (
    fraction,
    nonneg_float,
    nonneg_int,
    positive_int,
    print_table,
    write_json,
)
from boxhack.errors import BoxhackError


def _add_model_args(p) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="a boxhack model directory, a TorchScript file, or package.module:ClassName",
    )
    p.add_argument("--weights", default=None, help="state-dict file for the ClassName form")


def _add_data_args(p) -> None:
    p.add_argument("--dataset", default=None,
                   help="data set (default: the one recorded with the model)")
    p.add_argument("--classes", default=None,
                   help="the model's classes, e.g. 0-4 (default: recorded with the model)")
    p.add_argument("--data-dir", default=None, help="folder with IDX files")
    p.add_argument("--split-seed", type=nonneg_int, default=None,
                   help="train/test split seed (default: recorded with the model, else 0)")
    p.add_argument("--batch-size", type=positive_int, default=1024, help="inference batch size")


def register(sub) -> None:
    p = sub.add_parser(
        "monitor",
        help="fit, evaluate and inspect box monitors",
        description="Outside-the-Box monitors: per-class boxes over a layer's vectors.",
    )
    msub = p.add_subparsers(dest="monitor_command", metavar="SUBCOMMAND")
    msub.required = True

    fit = msub.add_parser(
        "fit",
        help="fit a monitor on the model's training split",
        description=(
            "Fit a box monitor on the correctly classified training inputs of the model's "
            "data set and save it as one .npz file."
        ),
    )
    _add_model_args(fit)
    fit.add_argument("--layer", action="append", default=None,
                     help="layer to monitor (module path, repeatable; default: the model's default layer)")
    k = fit.add_mutually_exclusive_group()
    k.add_argument("--clusters", type=positive_int, default=None,
                   help="fixed number of boxes per class")
    k.add_argument("--threshold", type=fraction, default=None,
                   help="elbow-rule threshold on the relative inertia drop (default 0.07)")
    fit.add_argument("--max-clusters", type=positive_int, default=10,
                     help="cap of the elbow rule (default 10)")
    fit.add_argument("--tolerance", type=nonneg_float, default=0.0,
                     help="box widening epsilon (default 0)")
    fit.add_argument("--absolute", action="store_true",
                     help="absolute tolerance: each side grows by epsilon (default: relative, "
                          "each side grows by epsilon/2 of the box width)")
    fit.add_argument("--all-training", action="store_true",
                     help="use misclassified training inputs too (default: correct ones only)")
    fit.add_argument("--seed", type=nonneg_int, default=0, help="k-means seed")
    _add_data_args(fit)
    fit.add_argument("--out", default=None,
                     help="output .npz (default: MODEL_DIR/monitor.npz for a model directory)")
    fit.set_defaults(handler=_fit)

    ev = msub.add_parser(
        "evaluate",
        help="acceptance, detection and novelty rates on the test split",
        description=(
            "Evaluate a monitor on the model's test split (acceptance of correct predictions, "
            "detection of misclassifications) and optionally on novel classes."
        ),
    )
    _add_model_args(ev)
    ev.add_argument("--monitor", required=True, help="monitor .npz written by `monitor fit`")
    ev.add_argument("--novel-classes", default=None,
                    help="classes the model never saw, e.g. 5-9 (their test split is used)")
    ev.add_argument("--on", choices=("test", "train"), default="test",
                    help="which split of the known classes to evaluate on (default test)")
    _add_data_args(ev)
    ev.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    ev.set_defaults(handler=_evaluate)

    ly = msub.add_parser(
        "layers",
        help="list the layers a monitor can watch",
        description="List the model's named layers with their types and flattened widths.",
    )
    _add_model_args(ly)
    ly.add_argument("--input-shape", default=None,
                    help="input shape without batch, e.g. 1,28,28 (default: from the model info)")
    ly.set_defaults(handler=_layers)

    info = msub.add_parser("info", help="describe a monitor file",
                           description="Print a monitor file's parameters and boxes per class.")
    info.add_argument("monitor", help="monitor .npz")
    info.set_defaults(handler=_info)


# --------------------------------------------------------------------------- helpers
def _load_model(args):
    from boxhack.models.io import load_any_model

    return load_any_model(args.model, args.weights)


def _dataset(args, info: dict, classes=None):
    from boxhack.data import load_dataset

    name = args.dataset or info.get("dataset")
    if name is None:
        raise BoxhackError(
            f"{args.model} does not record its data set; pass --dataset (and --classes)"
        )
    if classes is None:
        classes = args.classes if args.classes is not None else info.get("classes")
    split_seed = args.split_seed if args.split_seed is not None else int(info.get("split_seed") or 0)
    data_dir = args.data_dir if args.data_dir is not None else info.get("data_dir")
    return load_dataset(name, classes, data_dir=data_dir, split_seed=split_seed)


def _check_batch(args) -> None:
    if args.batch_size < 1:
        raise BoxhackError(f"--batch-size must be >= 1, got {args.batch_size}")


# --------------------------------------------------------------------------- commands
def _fit(args) -> int:
    from boxhack.cli.common import check_output_file
    from boxhack.monitor import BoxMonitor

    _check_batch(args)
    model, info = _load_model(args)
    layers = args.layer or ([info["default_layer"]] if info.get("default_layer") else None)
    if not layers:
        raise BoxhackError("this model records no default layer; pass --layer NAME "
                           "(see `boxhack monitor layers --model ...`)")
    out = args.out
    if out is None:
        model_dir = Path(args.model)
        if not model_dir.is_dir():
            raise BoxhackError("pass --out FILE.npz (the model is not a boxhack model directory)")
        out = model_dir / "monitor.npz"
    check_output_file(out, "--out")
    ds = _dataset(args, info)
    monitor = BoxMonitor(
        n_clusters=args.clusters,
        clustering_threshold=0.07 if args.threshold is None else args.threshold,
        max_clusters=args.max_clusters,
        tolerance=args.tolerance,
        relative_tolerance=not args.absolute,
        only_correct=not args.all_training,
        n_classes=len(ds.classes),
        seed=args.seed,
    )
    meta = {
        "model": str(args.model),
        "model_sha256": info.get("sha256"),
        "dataset": ds.name,
        "classes": list(ds.classes),
        "split_seed": ds.split_seed,
    }
    monitor.fit(model, layers, ds.x_train, ds.y_train, batch_size=args.batch_size, metadata=meta)
    path = monitor.save(out)
    s = monitor.summary()
    rows = [
        {"layer": layer, "width": s["dims"][layer], "boxes": s["n_boxes"][layer],
         "boxes per class": ",".join(map(str, s["boxes_per_class"][layer]))}
        for layer in s["layers"]
    ]
    print_table(rows, file=sys.stdout)
    print(f"fitted on {int(monitor.n_fit_.sum())} of {len(ds.y_train)} training inputs "
          f"({'correct only' if monitor.only_correct else 'all'}) -> {path}")
    return 0


def _evaluate(args) -> int:
    from boxhack.data import parse_classes
    from boxhack.monitor import check_compatible
    from boxhack.monitor.evaluation import evaluate_novelty
    from boxhack.monitor.registry import load_monitor

    _check_batch(args)
    if args.json:
        from boxhack.cli.common import check_output_file

        check_output_file(args.json, "--json")
    model, info = _load_model(args)
    monitor = load_monitor(args.monitor)
    ds = _dataset(args, {**monitor.metadata_, **{k: v for k, v in info.items() if v is not None}})
    check_compatible(monitor, model, info, example=ds.x_test[:1], monitor_name=str(args.monitor),
                     model_name=str(args.model))  # fmt: skip
    if len(ds.classes) != monitor.n_classes_:
        raise BoxhackError(f"the data has {len(ds.classes)} classes, the monitor "
                           f"{monitor.n_classes_}; pass the model's --classes")
    x, y = (ds.x_test, ds.y_test) if args.on == "test" else (ds.x_train, ds.y_train)
    novel_x = None
    novel_classes: tuple[int, ...] = ()
    if args.novel_classes:
        novel_classes = parse_classes(args.novel_classes, ds.name)
        overlap = sorted(set(novel_classes) & set(ds.classes))
        if overlap:
            raise BoxhackError(f"novel classes {overlap} are classes the model knows")
        nd = _dataset(args, {**info, "dataset": ds.name}, classes=list(novel_classes))
        novel_x = nd.x_test if args.on == "test" else nd.x_train
    metrics = evaluate_novelty(monitor, model, x, y, novel_x, batch_size=args.batch_size)
    metrics.update({
        "model": str(args.model), "monitor": str(args.monitor), "split": args.on,
        "dataset": ds.name, "known_classes": list(ds.classes),
        "novel_classes": list(novel_classes), "monitor_params": monitor.get_params(),
        "layers": list(monitor.layers_),
    })  # fmt: skip

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    rows = [
        {"metric": "accuracy", "value": pct(metrics["accuracy"]),
         "count": f"{metrics['n_correct']}/{metrics['n_known']}"},
        {"metric": "acceptance of correct predictions", "value": pct(metrics["acceptance_rate"]),
         "count": f"{metrics['correct_accepted']}/{metrics['n_correct']}"},
        {"metric": "false-warning rate", "value": pct(metrics["false_warning_rate"]),
         "count": f"{metrics['correct_rejected']}/{metrics['n_correct']}"},
        {"metric": "detection of misclassifications", "value": pct(metrics["detection_rate"]),
         "count": f"{metrics['misclassified_rejected']}/{metrics['n_misclassified']}"},
    ]
    if novel_x is not None:
        rows.append({"metric": "novelty detection", "value": pct(metrics["novelty_detection_rate"]),
                     "count": f"{metrics['novel_rejected']}/{metrics['n_novel']}"})
        rows.append({"metric": "AUROC (score, correct vs novel)",
                     "value": "n/a" if metrics["auroc"] is None else f"{metrics['auroc']:.3f}",
                     "count": ""})
    print_table(rows, file=sys.stdout)
    if args.json:
        print(f"-> {write_json(args.json, metrics)}")
    return 0


def _layers(args) -> int:
    import torch

    from boxhack.models.layers import list_layers

    model, info = _load_model(args)
    shape = None
    if args.input_shape:
        try:
            shape = tuple(int(s) for s in args.input_shape.replace("x", ",").split(",") if s.strip())
        except ValueError:
            raise BoxhackError(f"--input-shape {args.input_shape!r}: write it like 1,28,28")
    elif info.get("input_shape"):
        shape = tuple(info["input_shape"])
    else:
        from boxhack.models.zoo import NETWORKS

        arch = info.get("architecture")
        if arch in NETWORKS:
            shape = NETWORKS[arch][0].input_shape
    if not shape:
        raise BoxhackError("the input shape is unknown for this model; pass --input-shape, e.g. 1,28,28")
    try:
        layers = list_layers(model, torch.zeros((1, *shape)))
    except RuntimeError as exc:
        raise BoxhackError(f"the model does not accept inputs of shape {shape}: "
                           f"{str(exc).splitlines()[0]}")
    default = info.get("default_layer")
    rows = [{"layer": n, "type": t, "width": w, "default": "*" if n == default else ""}
            for n, t, w in layers]
    print_table(rows, file=sys.stdout)
    return 0


def _info(args) -> int:
    from boxhack.monitor.registry import load_monitor

    monitor = load_monitor(args.monitor)
    s = monitor.summary()
    print(f"{args.monitor}: {monitor!r}, {s['n_classes']} classes")
    rows = [
        {"layer": layer, "width": s["dims"][layer], "boxes": s["n_boxes"][layer],
         "boxes per class": ",".join(map(str, s["boxes_per_class"][layer]))}
        for layer in s["layers"]
    ]
    print_table(rows, file=sys.stdout)
    for k, v in s["metadata"].items():
        print(f"  {k}: {v}")
    return 0
