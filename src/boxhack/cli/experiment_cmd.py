"""``boxhack experiment ...``: one sub-command per experiment of the paper, each in its own
module ``boxhack.cli.experiment_<name>`` exposing ``register(experiment_subparsers)``."""

from __future__ import annotations

import importlib

EXPERIMENTS = ("solvers", "adversarial", "combined", "gradient")


def register(sub) -> None:
    p = sub.add_parser(
        "experiment",
        help="run one of the paper's experiments",
        description="Run one experiment of the paper as a resumable campaign (JSONL rows + figures).",
    )
    esub = p.add_subparsers(dest="experiment_command", metavar="EXPERIMENT")
    esub.required = True
    for name in EXPERIMENTS:
        try:
            module = importlib.import_module(f"boxhack.cli.experiment_{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"boxhack.cli.experiment_{name}":
                continue
            raise
        module.register(esub)
