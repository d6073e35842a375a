"""``boxhack experiment ...``: one sub-command per experiment of the paper, each in its own
module ``boxhack.cli.experiment_<name>`` exposing ``register(experiment_subparsers)``."""

from __future__ import annotations

from boxhack.cli.common import register_group

EXPERIMENTS = ("solvers", "adversarial", "combined", "gradient")


def register(sub) -> None:
    register_group(
        sub, "experiment", "run one of the paper's experiments",
        "Run one experiment of the paper as a resumable campaign (JSONL rows + figures).",
        "experiment_", EXPERIMENTS,
    )
