"""``boxhack attack ...``: one sub-command per attack family, each in its own module
``boxhack.cli.attack_<family>`` exposing ``register(attack_subparsers)``."""

from __future__ import annotations

import importlib

FAMILIES = ("optimise", "adversarial", "gradient")


def register(sub) -> None:
    p = sub.add_parser(
        "attack",
        help="attack a model and its monitor",
        description="Attack a classifier and its box monitor; every success is re-verified.",
    )
    asub = p.add_subparsers(dest="attack_command", metavar="ATTACK")
    asub.required = True
    for family in FAMILIES:
        try:
            module = importlib.import_module(f"boxhack.cli.attack_{family}")
        except ModuleNotFoundError as exc:
            if exc.name == f"boxhack.cli.attack_{family}":
                continue
            raise
        module.register(asub)
