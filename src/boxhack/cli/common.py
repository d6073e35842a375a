"""What the command modules share: one spelling and one meaning per option, and the output
helpers.

==================  ==========================================================================
``--model``         a boxhack model directory, path/net.py:ClassName or package.module:ClassName
                    (with ``--weights``), a TorchScript file, a torch.export ``.pt2``, an ONNX file
``--weights``       the state dict of the ClassName form (``.pt``, or ``.safetensors``)
``--model-args``    JSON keyword arguments of the ClassName constructor
``--bounds``        the model's input bounds ``lo,hi`` (default 0,1); attacks clip to them
``--preprocessing`` JSON ``{"mean": [...], "std": [...], "axis": -3}`` applied inside the model
``--monitor``       a monitor file (any abstraction)
``--data``          a data set (default: the one the model, else the monitor, recorded)
``--classes``       the model's classes, e.g. ``0-4`` or ``0,1,2`` (default: recorded)
``--data-dir``      folder with IDX files; ``--split-seed``: seed of the train/test split
``--device``        auto | cpu | cuda, where a command can use one (default cpu)
``--goal``          dos | intrude | intrude-any | intrude-target | combined | misclassify, or the
                    paper's ``--attack 1|2|2-any`` (:func:`boxhack.attacks.base.resolve_goal`)
``--n``/``--index`` a seeded class-balanced sample of N inputs the goal starts from / these
                    test inputs (comma-separated or repeated)
``--seed``          the seed of the sample and of the command's randomness
``--eps``/``--norm``  the perturbation budget and its norm
``--out``           the results as JSON: one JSON row per input (JSONL) for the attacks
``--save``          the inputs found, exactly (``boxhack verify FILE``)
``--json``          print the summary as JSON instead of a table
``-q/--quiet``      no progress output (``--no-progress``: hidden alias where it existed)
==================  ==========================================================================

Lists are comma-separated everywhere (a list option may also be repeated). The library is
imported inside the functions that use it: that keeps ``boxhack --help`` from importing torch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from boxhack.errors import BoxhackError
from boxhack.infra.files import atomic_write, check_output_dir
from boxhack.infra.jsonl import encode_row

#: the goals of boxhack.attacks.base.GOALS and its paper aliases, here so that building the
#: parser does not import torch (tests/test_cli.py checks they agree)
GOALS = ("dos", "intrude", "intrude-any", "intrude-target", "combined", "misclassify")
PAPER_ALIASES = {"1": "dos", "2": "intrude", "2-any": "intrude-any"}


# ------------------------------------------------------------------ checked option values
def _number(kind, text: str, *, minimum=None, above=None, maximum=None):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    if minimum is not None and value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
    if above is not None and value <= above:
        raise argparse.ArgumentTypeError(f"must be > {above}, got {text}")
    if maximum is not None and value > maximum:
        raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(int, text, minimum=1)


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0 (seeds, indices, classes)."""
    return _number(int, text, minimum=0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (learning rates, time limits)."""
    return _number(float, text, above=0)


def nonneg_float(text: str) -> float:
    """argparse type: a finite number >= 0 (tolerances, budgets)."""
    return _number(float, text, minimum=0)


def fraction(text: str) -> float:
    """argparse type: a finite number in [0, 1]."""
    return _number(float, text, minimum=0, maximum=1)


def eps_value(text: str) -> float | None:
    """argparse type: a perturbation budget >= 0, or ``none`` (no budget: minimal attacks)."""
    if text.strip().lower() in ("none", "min", "minimal"):
        return None
    value = _number(float, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"epsilon must be a finite number >= 0, got {text}")
    return value


def comma_list(item: Callable[[str], object] = str, choices: Iterable[str] | None = None):
    """argparse type: a comma-separated list of ``item`` values (each among ``choices``).
    Use with ``action="extend"`` so that the option may also be repeated."""
    allowed = None if choices is None else tuple(choices)

    def parse(text: str) -> list:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        if allowed is not None:
            bad = [p for p in parts if p not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"invalid choice {bad[0]!r} (choose from {', '.join(allowed)})")
        return [item(p) for p in parts]

    parse.__name__ = getattr(item, "__name__", "value")  # argparse names the type in errors
    return parse


def goal_type(allowed: Iterable[str]):
    """argparse type: a goal among ``allowed``, or its paper alias (``1`` -> ``dos``)."""
    allowed = tuple(allowed)

    def parse(text: str) -> str:
        goal = PAPER_ALIASES.get(text.strip().lower(), text.strip().lower())
        if goal not in allowed:
            aliases = [f"{k}={v}" for k, v in PAPER_ALIASES.items() if v in allowed]
            extra = f" (paper aliases: {', '.join(aliases)})" if aliases else ""
            raise argparse.ArgumentTypeError(
                f"invalid goal {text!r}: choose from {', '.join(allowed)}{extra}")
        return goal

    parse.__name__ = "goal"
    return parse


# ------------------------------------------------------------------ shared options
def add_goal_args(p, goals: Iterable[str], default: str, help: str) -> None:
    """``--goal`` (any of ``goals``) and, where the paper's aliases apply, ``--attack 1|2|2-any``
    (the same option in the paper's words)."""
    goals = tuple(goals)
    p.add_argument("--goal", type=goal_type(goals), default=default, metavar="GOAL",
                   help=f"{help}: {', '.join(goals)} (default {default})")
    aliases = [k for k, v in PAPER_ALIASES.items() if v in goals]
    if aliases:
        words = ", ".join(f"{k} = {PAPER_ALIASES[k]}" for k in aliases)
        p.add_argument("--attack", dest="goal", type=goal_type(goals), metavar="|".join(aliases),
                       help=f"the goal in the paper's words (Attack 1 / Attack 2): {words}")


def add_target_args(p, *, monitor: bool = True, data: bool = True, device: bool = False,
                    novel: bool = False) -> None:
    """The options naming a target (see :func:`boxhack.workflow.target.load_target`)."""
    add_model_args(p)
    if monitor:
        p.add_argument("--monitor", required=True,
                       help="monitor file (.npz) written by `boxhack monitor fit`")
    if data:
        p.add_argument("--data", default=None, metavar="NAME",
                       help="data set (default: the one recorded with the model or the monitor)")
        p.add_argument("--dataset", dest="data", help=argparse.SUPPRESS)  # the old spelling
        p.add_argument("--classes", default=None,
                       help="the model's classes, e.g. 0-4 or 0,1,2 (default: recorded)")
        p.add_argument("--data-dir", default=None, help="folder with IDX files")
        p.add_argument("--split-seed", type=nonneg_int, default=None,
                       help="seed of the train/test split (default: recorded, else 0)")
    if novel:
        p.add_argument("--novel-classes", default=None,
                       help="classes the model never saw, e.g. 5-9 (their inputs are used)")
    if device:
        add_device_arg(p)


def add_model_args(p) -> None:
    """``--model`` (any kind, :mod:`boxhack.models.loaders`), ``--weights``, ``--model-args``,
    ``--bounds`` and ``--preprocessing``."""
    p.add_argument("--model", required=True,
                   help="a boxhack model directory; path/net.py:ClassName or "
                        "package.module:ClassName with --weights; a TorchScript file; a "
                        "torch.export .pt2 program; an .onnx file")
    p.add_argument("--weights", default=None,
                   help="state dict of the ClassName form (.pt read with weights_only=True, "
                        "or .safetensors)")
    p.add_argument("--model-args", default=None, metavar="JSON",
                   help="keyword arguments of the ClassName constructor, e.g. "
                        "'{\"n_classes\": 7}'")
    p.add_argument("--bounds", default=None, metavar="LO,HI",
                   help="the model's input bounds (default 0,1): inputs outside are refused, "
                        "attacks clip to them")
    p.add_argument("--preprocessing", default=None, metavar="JSON",
                   help="normalisation applied inside the model, as in Foolbox: "
                        "'{\"mean\": [0.5], \"std\": [0.25], \"axis\": -3}'")


def add_device_arg(p) -> None:
    p.add_argument("--device", default="cpu", metavar="auto|cpu|cuda",
                   help="where the heavy work runs: auto (CUDA when available), cpu (default) "
                        "or cuda")


def load_target_args(args, *, need_data: bool = True):
    """The :class:`~boxhack.workflow.target.Target` the options of :func:`add_target_args`
    name: every option whose name is a field of ``TargetSpec`` is passed on."""
    from boxhack.workflow.target import TargetSpec, load_target  # keeps --help fast (torch)

    options = {k: getattr(args, k) for k in TargetSpec.options() if hasattr(args, k)}
    return load_target(need_data=need_data, **options)


def add_sample_args(p, *, default_n: int | None, what: str) -> None:
    """``--n`` / ``--index`` (one of them) and ``--seed``."""
    sel = p.add_mutually_exclusive_group()
    default = "all of them" if default_n is None else str(default_n)
    sel.add_argument("--n", type=positive_int, default=None,
                     help=f"attack a seeded, class-balanced sample of N test inputs the goal can "
                          f"start from ({what}; default {default})")
    sel.add_argument("--index", type=comma_list(nonneg_int), action="extend", default=None,
                     metavar="I[,J...]",
                     help="attack these test inputs (comma-separated or repeated)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seed of the sample (--n) and of the attack's randomness (default 0)")
    p.set_defaults(default_n=default_n)


def pick_inputs(args, target, goal: str):
    """The test indices ``--index`` / ``--n`` / ``--seed`` name for ``goal``
    (:func:`boxhack.workflow.target.select_inputs`), with a note when fewer are eligible."""
    from boxhack.workflow.target import START_STATES, select_inputs  # keeps --help fast (torch)

    n = args.default_n if args.n is None else args.n
    idx = select_inputs(target.model, target.monitor, target.dataset, goal, n=n,
                        index=args.index, seed=args.seed)  # fmt: skip
    if args.index is None and n is not None and len(idx) < n:
        print(f"boxhack: note: only {len(idx)} test inputs are {START_STATES[goal]} "
              f"(goal {goal!r}); attacking those", file=sys.stderr)  # fmt: skip
    return idx


def add_output_args(p) -> None:
    """``--out`` (JSON rows), ``--save`` (exact inputs), ``--png``, ``--json``."""
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the results to FILE as JSON, one row per input (JSONL)")
    p.add_argument("--save", default=None, metavar="FILE",
                   help="write the inputs found, exactly, to this .npz (re-check it with "
                        "`boxhack verify FILE`)")
    p.add_argument("--png", default=None, metavar="FILE",
                   help="draw the inputs before and after the attack to this PNG")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def check_output_args(args, options: Iterable[str] = ("out", "save", "png")) -> None:
    """Refuse output files that cannot be written before any work is done."""
    for name in options:
        path = getattr(args, name, None)
        if path:
            check_output_file(path, f"--{name}")


def add_quiet_arg(p, *, no_progress_alias: bool = False) -> None:
    """``-q/--quiet``: no progress output (``--no-progress``, hidden, where it existed)."""
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or progress lines")
    if no_progress_alias:
        p.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


def add_campaign_args(parser) -> None:
    """The flags every campaign command shares (``experiment NAME`` and ``reproduce``):
    ``--jobs``, ``--scheduler``, ``--seed``, ``--solve-timeout``, ``-q/--quiet`` (with
    ``--no-progress`` as a hidden alias)."""
    parser.add_argument("--jobs", type=positive_int, default=None, metavar="N",
                        help="local worker processes (default: all usable cores)")
    parser.add_argument("--scheduler", default=None, metavar="URL",
                        help="run the grid on a Dask cluster, e.g. tcp://HOST:8786 (workers "
                             "must see the run directory, e.g. on a shared file system)")
    parser.add_argument("--seed", type=nonneg_int, default=0,
                        help="seed for networks, monitors and sample draws (default 0)")
    parser.add_argument("--solve-timeout", type=positive_float, default=None, metavar="S",
                        help="safety net: kill a SciPy solve still running S seconds after it "
                             "started (solvers, combined; results come from evaluation budgets, "
                             "not from this; experiments without SciPy solves ignore it)")
    add_quiet_arg(parser, no_progress_alias=True)


def check_campaign_args(args) -> None:
    if args.jobs is not None and args.jobs < 1:
        raise BoxhackError(f"--jobs must be at least 1, got {args.jobs}")
    if args.scheduler is not None:  # a malformed address: said before anything is trained
        from boxhack.infra.campaign import check_scheduler_address  # keeps --help fast (Dask)

        check_scheduler_address(args.scheduler)


# ------------------------------------------------------------------ command groups
def add_group(sub, name: str, help: str, description: str, *members: Callable) -> object:
    """Command group ``name`` whose sub-commands are added by ``members`` (each called with
    the group's sub-parsers); returns those sub-parsers."""
    p = sub.add_parser(name, help=help, description=description)
    group = p.add_subparsers(dest=f"{name}_command", metavar=name.upper())
    group.required = True
    for register in members:
        register(group)
    return group


# ------------------------------------------------------------------ output
def check_output_file(path, what: str) -> Path:
    """Fail early, with one clear line, when output file ``path`` cannot be written: it is a
    directory, or its folder is a file, read-only or cannot be created."""
    path = Path(path)
    if path.is_dir():
        raise BoxhackError(f"{what} {path} is a directory; give a file name")
    check_output_dir(path.parent if str(path.parent) else Path("."), what=f"{what} folder")
    if path.exists() and not path.is_file():
        raise BoxhackError(f"{what} {path} exists and is not a regular file")
    return path


def check_device(name: str) -> str:
    """A torch device this machine has, or a clear error."""
    from boxhack.workflow.target import resolve_device  # keeps --help fast (torch)

    return resolve_device(name)


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
    """Write ``obj`` as indented JSON, atomically (temp file, then rename)."""
    return atomic_write(Path(path), json.dumps(obj, indent=2, default=_default) + "\n")


def write_rows(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write ``rows`` as JSONL (one compact JSON object a line, floats exact), atomically."""
    return atomic_write(Path(path), b"".join(encode_row(row) for row in rows))


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
