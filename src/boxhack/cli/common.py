"""Small helpers shared by the CLI command modules."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_device_arg(parser) -> None:
    parser.add_argument(
        "--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)"
    )


def register_group(sub, name: str, help: str, description: str, prefix: str, members) -> None:
    """Add command group ``name`` whose sub-commands live in modules ``boxhack.cli.<prefix><m>``
    (each exposing ``register(subparsers)``); members whose module is absent are skipped."""
    import importlib

    p = sub.add_parser(name, help=help, description=description)
    group = p.add_subparsers(dest=f"{name}_command", metavar=name.upper())
    group.required = True
    for member in members:
        module_name = f"boxhack.cli.{prefix}{member}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(group)


def add_campaign_args(parser) -> None:
    """The options every experiment command shares: workers, Dask, seed, model cache, progress."""
    parser.add_argument("--jobs", type=int, default=None,
                        help="local worker processes (default: all cores)")
    parser.add_argument("--scheduler", default=None,
                        help="Dask scheduler address, e.g. tcp://host:8786")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models-root", default=None,
                        help="where networks and monitors are cached (default OUT/models)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_campaign_args(args) -> None:
    from boxhack.errors import BoxhackError

    if args.jobs is not None and args.jobs < 1:
        raise BoxhackError(f"--jobs must be at least 1, got {args.jobs}")
    if args.scheduler is not None:  # a malformed address: said before anything is trained
        from boxhack.experiments.campaign import check_scheduler_address

        check_scheduler_address(args.scheduler)


def print_table(rows: list[dict], columns: list[str] | None = None, file=None) -> None:
    """Print a list of dicts as an aligned plain-text table."""
    file = sys.stdout if file is None else file
    if not rows:
        print("(no rows)", file=file)
        return
    columns = columns or list(rows[0])

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)), file=file)


def write_json(path: str | Path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=_default) + "\n")
    return path


def _default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
