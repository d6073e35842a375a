"""``boxhack data info``: inspect the data sets boxhack can load."""

from __future__ import annotations

import json

from boxhack.cli.common import add_group, nonneg_int
from boxhack.data import DATASETS, load_dataset


def register(sub) -> None:
    add_group(sub, "data", "inspect data sets", "Inspect data sets.", _register_info)


def _register_info(dsub) -> None:
    info = dsub.add_parser(
        "info",
        help="shapes, ranges and class balance of a data set",
        description="Print shapes, value range and per-class counts of a data set.",
    )
    info.add_argument("name", choices=DATASETS, metavar="NAME",
                      help=f"one of {', '.join(DATASETS)}")
    info.add_argument("--classes", default=None,
                      help="class subset, e.g. 0-4 or 0,1,2 (default: all)")
    info.add_argument("--data-dir", default=None,
                      help="folder with IDX files (full MNIST / Fashion-MNIST)")
    info.add_argument("--split-seed", type=nonneg_int, default=0,
                      help="seed of the train/test split (default 0)")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(handler=_info)


def _info(args) -> int:
    ds = load_dataset(args.name, args.classes, data_dir=args.data_dir, split_seed=args.split_seed)
    summary = ds.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['name']}: {summary['source']}")
    print(f"  input shape  {tuple(summary['input_shape'])}, values in "
          f"[{summary['x_min']:.3g}, {summary['x_max']:.3g}]")
    print(f"  train / test {summary['n_train']} / {summary['n_test']} (split seed {ds.split_seed})")
    print("  class        train  test")
    counts = zip(summary["class_names"], summary["train_per_class"], summary["test_per_class"])
    for name, a, b in counts:
        print(f"  {name:<12} {a:>5} {b:>5}")
    return 0
