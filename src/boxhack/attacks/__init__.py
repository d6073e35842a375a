"""Attacks on a classifier and its monitor, all on one protocol (:class:`Attack`, see
:mod:`boxhack.attacks.base`); success is decided only by :func:`verify`.

The families, each ``Family(goal=..., ...)(model, monitor, inputs, labels=None, targets=None,
starts=None) -> AttackResult``:

- :class:`MonitorAttack` (:mod:`~boxhack.attacks.gradient`): monitor-aware gradient attack,
  minimal norm or fixed budget; :class:`OrthogonalAttack` (:mod:`~boxhack.attacks.orthogonal`);
- :class:`OptimisationAttack` (:mod:`~boxhack.attacks.optimisation`): the paper's SciPy attacks;
- :class:`FoolboxAttack` (:mod:`~boxhack.attacks.adversarial`): off-the-shelf Foolbox attacks;
- :class:`DecisionOnlyAttack` (:mod:`~boxhack.attacks.decision`): labels and verdicts only;
- :class:`CombinedAttack` (:mod:`~boxhack.attacks.combined`): adversarial, then repaired.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from boxhack.attacks.base import GOALS, PAPER_ALIASES, Attack, resolve_goal
from boxhack.attacks.verify import AttackResult, decide, verify

if TYPE_CHECKING:
    from boxhack.attacks.adversarial import FoolboxAttack
    from boxhack.attacks.combined import CombinedAttack
    from boxhack.attacks.decision import DecisionOnlyAttack
    from boxhack.attacks.gradient import MonitorAttack
    from boxhack.attacks.optimisation import OptimisationAttack
    from boxhack.attacks.orthogonal import OrthogonalAttack

__all__ = [
    "GOALS",
    "PAPER_ALIASES",
    "Attack",
    "AttackResult",
    "CombinedAttack",
    "DecisionOnlyAttack",
    "FoolboxAttack",
    "MonitorAttack",
    "OptimisationAttack",
    "OrthogonalAttack",
    "decide",
    "resolve_goal",
    "verify",
]

# The families are exported lazily (PEP 562): every module of this package imports this
# __init__ first, and a campaign worker that runs only the gradient attack, or a sandbox
# process that runs only SciPy solves, must not import Foolbox (several seconds per fresh
# process). ``from boxhack.attacks import FoolboxAttack`` imports its module on first use.
_FAMILIES = {
    "MonitorAttack": "boxhack.attacks.gradient",
    "OrthogonalAttack": "boxhack.attacks.orthogonal",
    "OptimisationAttack": "boxhack.attacks.optimisation",
    "FoolboxAttack": "boxhack.attacks.adversarial",
    "DecisionOnlyAttack": "boxhack.attacks.decision",
    "CombinedAttack": "boxhack.attacks.combined",
}


def __getattr__(name: str) -> Any:
    module = _FAMILIES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
