"""``boxhack attack ...``: one sub-command per attack family, each in its own module
``boxhack.cli.attack_<family>`` exposing ``register(attack_subparsers)``."""

from __future__ import annotations

from boxhack.cli.common import register_group

FAMILIES = ("optimise", "adversarial", "gradient")


def register(sub) -> None:
    register_group(
        sub, "attack", "attack a model and its monitor",
        "Attack a classifier and its box monitor; every success is re-verified.",
        "attack_", FAMILIES,
    )
