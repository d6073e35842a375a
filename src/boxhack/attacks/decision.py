"""The decision-only attacker: sees the predicted label and the monitor's accept/reject verdict,
nothing else (no logits, no gradients, no abstraction internals).

Its goal is the combined one by default: an input the model misclassifies AND the monitor
accepts (``goal="misclassify"`` drops the monitor). The goal is given to Foolbox's
decision-based attacks (Boundary, HopSkipJump) as their criterion
(:class:`~boxhack.attacks.adversarial.MonitorMisclassification`), so they walk the boundary of
the region "wrong label and accepted" directly, shrinking the distance to the original.

Decision-based attacks must start from a point that already meets the goal:
:func:`find_starting_points` finds one per input with label-and-verdict queries only (a pool
of images pulled towards the input, then Foolbox's blended noise; see
:mod:`boxhack.attacks.starts`). Inputs without any start are returned unchanged (and so
count as failures).

:class:`DecisionOnlyAttack` is the :class:`~boxhack.attacks.base.Attack`;
:func:`decision_attack` its functional form.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from boxhack.attacks import starts as _starts
from boxhack.attacks.adversarial import FoolboxAttack, blended_noise_starts, get_spec
from boxhack.attacks.base import labels_or_predictions
from boxhack.attacks.records import fit_to_budget
from boxhack.attacks.starts import HARDEN_STEPS, START_METHODS, harden, pull_towards
from boxhack.attacks.verify import AttackResult, as_batch, verify
from boxhack.errors import BoxhackError
from boxhack.models.domain import DEFAULT_BOUNDS, from_unit, input_bounds, to_unit, unit_domain

__all__ = ["DECISION_ATTACKS", "HARDEN_STEPS", "START_METHODS", "DecisionOnlyAttack",
           "decision_attack", "find_starting_points", "harden", "pull_towards"]

DECISION_ATTACKS = ("hsj", "boundary")


def find_starting_points(model, monitor, inputs, labels, **options: Any
                         ) -> tuple[np.ndarray, np.ndarray, dict]:
    """:func:`boxhack.attacks.starts.find_starting_points` (same arguments) with Foolbox's
    blended uniform noise as its noise search."""
    options.setdefault("noise", blended_noise_starts)
    return _starts.find_starting_points(model, monitor, inputs, labels, **options)


class DecisionOnlyAttack(FoolboxAttack):
    """Boundary or HopSkipJump on labels and verdicts only, as an
    :class:`~boxhack.attacks.base.Attack`:
    ``DecisionOnlyAttack("hsj", steps=20)(model, monitor, x, labels, starts=None, pool=None)``.

    Parameters: ``method`` ("hsj" or "boundary"), ``epsilon`` (L2 budget the result is
    clipped to; ``None``: none), ``goal`` ("combined", the default, or "misclassify"),
    ``start`` (how starting points are searched: "auto", "dataset", "noise"), ``budget``
    ("default" or "quick"), ``seed`` and the Foolbox attack's own arguments. Per call:
    ``starts`` (starting points meeting the goal; searched when omitted) and ``pool`` (the
    images that search queries; default the inputs themselves).

    ``result.info["queries"]`` counts every label-and-verdict query (pool, starting point
    search, attack) and ``info["has_start"]`` says which inputs had a start.
    """

    name = "decision-only"
    default_goal = "combined"

    def __init__(self, method: str = "hsj", *, epsilon: float | None = None,
                 goal: str | None = None, start: str = "auto", budget: str = "default",
                 seed: int = 0, **attack_kwargs) -> None:
        if get_spec(method).name not in DECISION_ATTACKS:
            raise BoxhackError(
                f"decision-only attacks are {', '.join(DECISION_ATTACKS)}; got {method!r}"
            )
        super().__init__(method, epsilon, goal, budget=budget, seed=seed, start=start,
                         **attack_kwargs)  # fmt: skip

    def sweep(self, model, monitor, inputs, labels=None, epsilons=None, *, goal=None,
              starts=None, pool=None, targets=None) -> list[AttackResult]:
        if targets is None and input_bounds(model) != DEFAULT_BOUNDS:
            results = self._sweep_rescaled(model, monitor, inputs, labels, epsilons, goal,
                                           starts, pool)  # fmt: skip
        else:
            results = super().sweep(model, monitor, inputs, labels, epsilons, goal=goal,
                                    starts=starts, pool=pool, targets=targets)  # fmt: skip
        for result in results:
            info = result.info
            # the criterion counted the attack's and the start search's queries; add the
            # pool's and the noise search's (which ran on their own criterion)
            info["attack_queries"] = int(info.get("queries", 0))
            info["queries"] = (info["attack_queries"] + int(info.get("pool_queries", 0))
                               + int(info.get("noise_queries", 0)))  # fmt: skip
        return results

    def _sweep_rescaled(self, model, monitor, inputs, labels, epsilons, goal, starts, pool
                        ) -> list[AttackResult]:
        """A model with bounds (lo, hi) other than (0, 1) (Foolbox's HopSkipJump clips to
        [0, 1] whatever the model's bounds): attack it in the unit box
        (:func:`~boxhack.models.domain.unit_domain`, budgets divided by ``hi - lo``), map each
        perturbation back (pixels the attack left alone stay bit for bit), fit it to the
        budget in the user's space and verify there: successes and norms are the user's."""
        lo, hi = input_bounds(model)
        scale = hi - lo
        x0 = as_batch(inputs, "inputs", bounds=(lo, hi))

        def unit(a, what: str):
            return to_unit(as_batch(a, what, x0.shape[1:], (lo, hi)), (lo, hi))

        labels = labels_or_predictions(model, monitor, x0, labels)
        eps = [self.epsilon] if epsilons is None else list(epsilons)
        u_eps = [None if e is None else float(e) / scale for e in eps]
        u0 = unit(x0, "inputs")
        res = super().sweep(unit_domain(model), monitor, u0, labels, u_eps, goal=goal,
                            starts=None if starts is None else unit(starts, "starts"),
                            pool=None if pool is None else unit(pool, "pool"))  # fmt: skip
        out = []
        for e, r in zip(eps, res):
            x = from_unit(x0, u0, r.x, (lo, hi))
            if e is not None:
                x = fit_to_budget(x0, x, self.spec.norm, e)
            info = {**r.info, "epsilon": e, "bounds": [lo, hi],
                    "budget": None if e is None else {"norm": self.spec.norm, "eps": float(e)}}
            out.append(verify(model, monitor, x0, x, r.goal, labels=r.labels, info=info))
        return out


def decision_attack(
    model,
    monitor,
    inputs,
    labels,
    *,
    method: str = "hsj",
    epsilon: float | None = None,
    goal: str = "combined",
    pool=None,
    start: str = "auto",
    starting_points=None,
    budget: str = "default",
    seed: int = 0,
    **attack_kwargs,
) -> AttackResult:
    """The decision-only attacker: Boundary or HopSkipJump, by default on the combined goal.

    Foolbox's attack walks the boundary of "misclassified and accepted" from a starting point
    found by :func:`find_starting_points` (or given). The result is verified with ``goal``;
    ``info["queries"]`` counts every label-and-verdict query (pool, starting point search,
    attack) and ``info["has_start"]`` says which inputs had a start. The functional form of
    :class:`DecisionOnlyAttack`.
    """
    attack = DecisionOnlyAttack(method, epsilon=epsilon, goal=goal, start=start, budget=budget,
                                seed=seed, **attack_kwargs)  # fmt: skip
    return attack(model, monitor, inputs, labels, starts=starting_points, pool=pool)
