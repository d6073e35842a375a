"""``boxhack experiment NAME``: one sub-command per registered experiment, generated from the
registry (:mod:`boxhack.workflow.registry`): the help from each ``EXPERIMENT``'s title and
description, the flags from its ``options`` (``--name-with-dashes``; lists comma-separated;
booleans as ``--flag`` / ``--no-flag``; JSON values as text), plus the flags every experiment
shares (:func:`boxhack.cli.common.add_campaign_args`). A thin layer over :func:`boxhack.workflow.run`.

Each sub-command's parser is built when it is chosen (so ``boxhack --help`` imports no torch).
A registered experiment whose module cannot be loaded still has its sub-command: running it
says why, in one line (exit 2); it never disappears from the CLI quietly.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any

from boxhack.cli.common import add_campaign_args, print_table
from boxhack.experiments.spec import Experiment, Option, Settings
from boxhack.workflow import registry

__all__ = ["experiment_parser", "option_values", "register", "settings_from"]


def settings_from(args: argparse.Namespace, quick: bool) -> Settings:
    return Settings(quick=quick, seed=args.seed, n_jobs=args.jobs, scheduler=args.scheduler,
                    progress=not args.quiet, solve_timeout=args.solve_timeout)  # fmt: skip


# ------------------------------------------------------------------------------ option flags


def _number(kind: type, minimum: float | None) -> Callable[[str], Any]:
    what = "an integer" if kind is int else "a number"

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum:g}, got {text}")
        return value

    return convert


def _item_type(option: Option) -> Callable[[str], Any]:
    kind = option.item if option.kind == "list" else option.kind
    if kind in (int, float):
        return _number(kind, option.minimum)
    return str


def _list(option: Option) -> Callable[[str], list]:
    convert = _item_type(option)

    def parse(text: str) -> list:
        items = [convert(t.strip()) for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give one or more comma-separated values")
        if option.choices is not None:
            bad = [i for i in items if i not in option.choices]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"unknown {', '.join(map(str, bad))}; choose from "
                    f"{', '.join(map(str, option.choices))}")
        return items

    return parse


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "auto" if value is None else str(value)


def _help(option: Option) -> str:
    default = f"default {_shown(option.default)}"
    if option.quick is not None and option.quick != option.default:
        default += f"; --quick: {_shown(option.quick)}"
    return f"{option.help} ({default})"


def _add_option(parser: argparse.ArgumentParser, option: Option) -> None:
    """``option`` as a flag whose absence means "the experiment's (quick) default"."""
    common: dict[str, Any] = {"dest": f"opt_{option.name}", "default": None,
                              "help": _help(option)}  # fmt: skip
    if option.kind is bool:
        parser.add_argument(option.flag, action=argparse.BooleanOptionalAction, **common)
    elif option.kind == "list":
        parser.add_argument(option.flag, type=_list(option), metavar="A,B,...", **common)
    elif option.kind == "json":
        parser.add_argument(option.flag, type=_json, metavar="JSON", **common)
    else:
        parser.add_argument(option.flag, type=_item_type(option), choices=option.choices,
                            metavar=option.name.upper(), **common)  # fmt: skip


def option_values(experiment: Experiment, args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (the others keep the experiment's defaults)."""
    values = {o.name: getattr(args, f"opt_{o.name}") for o in experiment.options}
    return {k: v for k, v in values.items() if v is not None}


# ------------------------------------------------------------------------------ commands


def register(sub) -> None:
    p = sub.add_parser(
        "experiment", help="run one of the paper's experiments",
        description="Run one experiment of the paper as a resumable campaign (JSONL rows, "
                    "summary, figures) into OUT/<experiment>/. The experiments: "
                    + ", ".join(registry.names()) + ". `boxhack experiment NAME --help` "
                    "lists an experiment's options.",
    )  # fmt: skip
    group = p.add_subparsers(dest="experiment_command", metavar="EXPERIMENT")
    group.required = True
    for name in registry.names():
        # The experiment's own parser is built when it is chosen: declaring its options loads
        # its module (torch, SciPy), which `boxhack --help` must not pay for.
        q = group.add_parser(name, help=registry.EXPERIMENTS[name].summary, add_help=False,
                             prefix_chars="\0")  # fmt: skip
        q.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        q.set_defaults(handler=lambda args, _name=name: _dispatch(_name, args.rest))


def experiment_parser(name: str) -> argparse.ArgumentParser:
    """``boxhack experiment NAME``'s parser, generated from the experiment's declaration."""
    from boxhack.cli import BoxhackParser

    experiment = registry.declaration(name)  # a module that cannot load: one-line error
    parser = BoxhackParser(prog=f"boxhack experiment {name}",
                           description=f"{experiment.title}. {experiment.description}")
    _add_arguments(parser, experiment)
    return parser


def _dispatch(name: str, argv: list[str]) -> int:
    args = experiment_parser(name).parse_args(argv)
    return _run(registry.declaration(name), args)


def _add_arguments(p: argparse.ArgumentParser, experiment: Experiment) -> None:
    p.add_argument("--out", required=True, help="run directory, e.g. runs/paper")
    p.add_argument("--quick", action="store_true",
                   help="the small grid (each option's --quick default below)")
    p.add_argument("--models-root", default=None,
                   help="where networks and monitors are cached (default OUT/models)")
    add_campaign_args(p)
    for option in experiment.options:
        _add_option(p, option)


def _run(experiment: Experiment, args: argparse.Namespace) -> int:
    from boxhack.workflow import run  # keeps --help fast (torch)

    summary = run(experiment.name, args.out, settings_from(args, args.quick),
                  option_values(experiment, args), models_root=args.models_root)  # fmt: skip
    for table in summary.get("tables") or []:
        print(table["title"])
        print_table([dict(zip(table["columns"], row, strict=False)) for row in table["rows"]])
        print()
    for claim in summary.get("paper") or []:
        print(f"paper: {claim['claim']}\nboxhack: {claim['measured']}")
    print(f"summary: {args.out}/{experiment.name}/summary.json")
    return 0
