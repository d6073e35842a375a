"""The attack protocol: every attack family is called the same way and answers the same way.

In the manner of Foolbox and torchattacks, an attack is a small object configured once
(goal, norm, budget, steps, solver...) and called on a batch::

    attack = MonitorAttack(goal="dos", norm="l2")
    result = attack(model, monitor, inputs, labels=None, targets=None, starts=None)

``model`` is a PyTorch classifier (logits out, inputs in [0, 1]); ``monitor`` is any fitted
monitor of the monitor protocol (:class:`boxhack.monitor.base.Monitor`: boxes, mean-balls,
zones, octagons, activation patterns, hulls, composites). An attack uses only what the
protocol offers (``predict``, ``forward_margin``, ``n_classes_``...); a family that can do
better with one abstraction's internals (the gradient attack's box-face warm start) checks for
them and falls back to the protocol otherwise.

The call returns an :class:`~boxhack.attacks.verify.AttackResult` whose ``success`` mask was
decided by :func:`~boxhack.attacks.verify.verify` - the exact float32 model and monitor
re-check every returned input; nothing else decides success. Inputs whose goal already holds
(``result.already``) or that may not be attacked (Attack 1 from a misclassified input) are not
attacked and never count: rates are over ``result.eligible``.

One goal vocabulary everywhere (:data:`GOALS`):

========================  ===================================================================
``"dos"``                 Attack 1 of the paper (valid -> invalid): keep the class, be rejected
``"intrude"``             Attack 2 of the paper (invalid -> valid): keep the class, be accepted
``"intrude-any"``         be accepted, whatever class is predicted
``"intrude-target"``      be predicted as ``targets`` and accepted
``"combined"``            misclassified (vs ``labels``) and accepted (the paper's figure 9)
``"misclassify"``         misclassified, monitor ignored (a plain adversarial example)
========================  ===================================================================

The paper's names stay as aliases (:data:`PAPER_ALIASES`, the CLI's ``--attack 1|2|2-any``):
:func:`resolve_goal` turns either spelling into a goal.

Writing a family: subclass :class:`Attack`, set :attr:`Attack.goals` and :attr:`Attack.name`,
take the configuration (``goal`` among it) in ``__init__`` and implement :meth:`Attack.run`,
which must end with :func:`~boxhack.attacks.verify.verify` (see docs/attacks-protocol.md and
``tests/test_attack_protocol.py`` for a whole family in 30 lines).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from boxhack.attacks.verify import GOALS, AttackResult, as_batch, check_goal
from boxhack.errors import BoxhackError
from boxhack.models.domain import input_bounds

if TYPE_CHECKING:  # annotations only: the attacks need nothing of the monitor package at run time
    from torch import nn

    from boxhack.monitor.base import Monitor

__all__ = ["GOALS", "PAPER_ALIASES", "Attack", "as_labels", "check_options",
           "labels_or_predictions", "resolve_goal"]

#: the paper's names for the goals (Hajj Ibrahim & Nassar, section 3)
PAPER_ALIASES: dict[str, str] = {"1": "dos", "2": "intrude", "2-any": "intrude-any"}


def resolve_goal(goal: str) -> str:
    """A goal from its name or its paper alias (``"1"`` -> ``"dos"``); clear error otherwise."""
    text = str(goal).strip().lower()
    text = PAPER_ALIASES.get(text, text)
    if text not in GOALS:
        aliases = ", ".join(f"{k} ({v})" for k, v in PAPER_ALIASES.items())
        raise BoxhackError(
            f"unknown goal {goal!r}; choose one of: {', '.join(GOALS)} (paper aliases: {aliases})"
        )
    return check_goal(text)


def check_options(owner: str, options: Mapping[str, Any], allowed: Iterable[str] = ()) -> None:
    """Refuse per-call options that ``owner`` does not know, naming the ones it does."""
    allowed = tuple(allowed)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise BoxhackError(
            f"{owner} has no per-call option {', '.join(map(repr, unknown))} (its options: "
            f"{known}); configure the attack in its constructor"
        )


class Attack(ABC):
    """Base class of every attack family.

    Subclasses set :attr:`goals` (the goals they can pursue) and :attr:`name`, store their
    configuration in ``__init__`` (``self.goal = self._set_goal(goal)`` among it) and implement
    :meth:`run`. ``__call__`` is the one entry point; ``goal=`` at call time overrides the
    configured goal for that call.
    """

    #: the goals this family can pursue
    goals: ClassVar[tuple[str, ...]] = GOALS
    #: a short name for rows, reports and the CLI
    name: ClassVar[str] = "attack"

    goal: str

    def _set_goal(self, goal: str) -> str:
        """``goal`` resolved (paper aliases too) and checked against :attr:`goals`."""
        goal = resolve_goal(goal)
        if goal not in self.goals:
            raise BoxhackError(
                f"{type(self).__name__} cannot pursue goal {goal!r}; it supports: "
                f"{', '.join(self.goals)}"
            )
        return goal

    def __call__(
        self,
        model: nn.Module,
        monitor: Monitor,
        inputs: Any,
        labels: Any = None,
        *,
        targets: Any = None,
        starts: Any = None,
        goal: str | None = None,
        **options: Any,
    ) -> AttackResult:
        """Attack ``inputs`` (a batch in the model's input space); returns a verified result.

        ``labels``: true classes (with "combined" and "misclassify" the reference a success
        must differ from - the model's predictions when omitted; with "dos" they also make
        misclassified inputs ineligible). ``targets``: classes for "intrude-target".
        ``starts``: initial points (e.g. another attack's outputs), where the family uses them.
        ``goal``: this call's goal instead of the configured one. ``options``: per-call options
        of the family (see its :meth:`run`); unknown ones are refused.
        """
        use = self.goal if goal is None else self._set_goal(goal)
        return self.run(model, monitor, inputs, labels=labels, targets=targets, starts=starts,
                        goal=use, **options)  # fmt: skip

    @abstractmethod
    def run(self, model: nn.Module, monitor: Monitor, inputs: Any, *, labels: Any, targets: Any,
            starts: Any, goal: str, **options: Any) -> AttackResult:
        """Do the attack; must return the result of :func:`~boxhack.attacks.verify.verify`."""

    def __repr__(self) -> str:
        params = getattr(self, "__dict__", {})
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items() if not k.startswith("_")
                          and isinstance(v, (str, int, float, bool, type(None), tuple)))  # fmt: skip
        return f"{type(self).__name__}({shown})"


def as_labels(labels: Any, n: int) -> np.ndarray | None:
    """``labels`` as int64 (n,), or ``None``."""
    if labels is None:
        return None
    arr = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
    arr = arr.reshape(-1)
    if len(arr) != n or not (np.issubdtype(arr.dtype, np.integer)
                             or (np.issubdtype(arr.dtype, np.floating)
                                 and np.all(arr == np.round(arr)))):
        raise BoxhackError(f"labels must be {n} integer class indices, got {arr!r:.80}")
    return arr.astype(np.int64)


def labels_or_predictions(model: nn.Module, monitor: Monitor, inputs: Any, labels: Any) -> Any:
    """``labels`` when given, else the model's predictions on ``inputs`` (through the
    monitor's exact ``predict``, as :func:`~boxhack.attacks.verify.verify` computes them): the
    reference of "misclassify" and "combined" when no true labels are known."""
    if labels is not None:
        return labels
    pred, _ = monitor.predict(model, as_batch(inputs, "inputs", bounds=input_bounds(model)))
    return np.asarray(pred, dtype=np.int64)
