"""The combined attack (paper section 4.2, figure 9): fool the classifier AND the monitor.

Stage 1, an off-the-shelf adversarial attack (FGSM at Linf 0.1 by default, Foolbox, goal
"misclassify"): many samples are flipped and accepted at once. Stage 2, the repair: every
sample that does not yet meet the combined goal (flipped but rejected, or not flipped) gets
an Attack 2 WITHOUT the same-prediction constraint (goal ``"combined"``: prediction != true
label and accepted), started at its stage-1 adversarial sample and measured from the clean
input. The repair is pluggable:

- ``"gradient"`` (default): :class:`boxhack.attacks.gradient.MonitorAttack` (goal "combined",
  minimal mode, L1 by default) - the monitor-aware white-box attack; samples it leaves
  unsolved get one more try in the other norm (``fallback_norm``, default L2);
- ``"slsqp"`` / ``"shgo"``: the paper's SciPy optimisation attack
  (:func:`boxhack.attacks.optimisation.optimise_attack`, L1), bounded by an evaluation budget
  per sample (``max_evals``); its wall-clock limit is only a safety net far above that;
- ``"none"``: stage 1 only.

A sample whose repair fails keeps its stage-1 point. Every count is decided by
:func:`boxhack.attacks.verify.verify` on the final points against the clean inputs; the
stage-1 points stay within the stage-1 budget exactly (float32 included).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from boxhack.attacks.adversarial import run_adversarial
from boxhack.attacks.base import Attack, check_options, labels_or_predictions
from boxhack.attacks.gradient import MonitorAttack
from boxhack.attacks.optimisation import optimise_attack
from boxhack.attacks.verify import AttackResult, verify
from boxhack.errors import BoxhackError

__all__ = ["DEFAULT_MAX_EVALS", "REPAIRS", "SAFETY_NET_S", "CombinedAttack", "CombinedResult",
           "combined_attack"]

REPAIRS = ("gradient", "slsqp", "shgo", "none")
DEFAULT_MAX_EVALS = 5000  # SciPy repairs: evaluations per sample (the budget)
SAFETY_NET_S = 600.0  # SciPy repairs: wall-clock safety net per sample (a solver stuck in C)


@dataclass
class CombinedResult:
    """Outcome of :func:`combined_attack`: the stage-1 result, the final one, and per sample
    the stage that met the goal (``"adversarial"``, ``"repair"``, ``"fallback"`` or
    ``"failed"``)."""

    first: AttackResult
    final: AttackResult
    stage: np.ndarray
    info: dict = field(default_factory=dict)

    def counts(self) -> dict:
        """Counts over the attacked inputs; ``already``: inputs misclassified and accepted from
        the start (not attacked, not counted as successes)."""
        att = self.final.eligible
        flipped = (self.first.pred != self.first.labels) & att
        acc = self.first.accepted
        repaired = np.isin(self.stage, ["repair", "fallback"])
        return {
            "n": len(self.stage),
            "attacked": int(att.sum()),
            "already": int(self.final.already.sum()),
            "adv_flipped": int(flipped.sum()),
            "adv_flipped_accepted": int((flipped & acc).sum()),
            "adv_flipped_rejected": int((flipped & ~acc).sum()),
            "adv_not_flipped": int((att & ~flipped).sum()),
            "repaired_rejected": int((repaired & flipped & ~acc).sum()),
            "repaired_not_flipped": int((repaired & att & ~flipped).sum()),
            "by_fallback": int((self.stage == "fallback").sum()),
            "final_success": int(self.final.success.sum()),
        }


def _repair_step(model, monitor, x0, y, starts, repair, norm, *, seed, max_evals, time_limit,
                 n_jobs, options) -> AttackResult:
    if repair == "gradient":
        attack = MonitorAttack(goal="combined", norm=norm, mode="minimal", seed=seed,
                               **(options or {}))  # fmt: skip
        return attack(model, monitor, x0, labels=y, starts=starts)
    return optimise_attack(
        model, monitor, x0, goal="combined", norm=norm, solver=repair, labels=y, starts=starts,
        max_evals=max_evals, time_limit=SAFETY_NET_S if time_limit is None else time_limit,
        n_jobs=n_jobs, seed=seed, **(options or {}),
    )  # fmt: skip


def _check_settings(repair: str, norm: str, fallback_norm: str | None) -> None:
    if repair not in REPAIRS:
        raise BoxhackError(f"unknown repair {repair!r}; choose one of: {', '.join(REPAIRS)}")
    if norm not in ("l1", "l2"):
        raise BoxhackError(f"norm must be 'l1' or 'l2', got {norm!r}")
    if fallback_norm not in (None, "l1", "l2", "linf"):
        raise BoxhackError(f"fallback_norm must be 'l1', 'l2', 'linf' or None, got {fallback_norm!r}")


def combined_attack(
    model,
    monitor,
    inputs,
    labels,
    *,
    attack: str = "fgsm",
    epsilon: float = 0.1,
    repair: str = "gradient",
    norm: str = "l1",
    fallback_norm: str | None = "l2",
    max_evals: int | None = DEFAULT_MAX_EVALS,
    time_limit: float | None = None,
    n_jobs: int = 1,
    seed: int = 0,
    repair_options: dict | None = None,
    **attack_kwargs,
) -> CombinedResult:
    """Adversarial attack, then repair of every sample that misses the combined goal.

    Args:
        attack, epsilon, attack_kwargs: the stage-1 Foolbox attack
            (:func:`boxhack.attacks.adversarial.run_adversarial`, goal "misclassify").
        repair: ``"gradient"``, ``"slsqp"``, ``"shgo"`` or ``"none"`` (see the module docstring).
        norm: the repair's distance (``"l1"`` as in the paper, or ``"l2"``).
        fallback_norm: gradient repair only: second try in this norm for samples still failing
            (``None``: no second try).
        max_evals: SciPy repairs: evaluations per sample (the budget); ``time_limit``: their
            wall-clock safety net per sample (default 600 s, far above the budget's run time);
            ``n_jobs``: parallel solves.
        repair_options: extra keyword arguments of the repair attack.

    Returns:
        :class:`CombinedResult`; ``final`` has goal ``"combined"``, verified against the clean
        ``inputs`` and true ``labels``.
    """
    _check_settings(repair, norm, fallback_norm)
    t0 = time.perf_counter()  # timings are reported, never used to decide anything
    first = run_adversarial(model, monitor, inputs, labels, attack, epsilon,
                            goal="misclassify", seed=seed, **attack_kwargs)  # fmt: skip
    x0, y = first.x0, first.labels
    t1 = time.perf_counter()
    goal_met = (first.pred != y) & first.accepted
    stage = np.where(goal_met, "adversarial", "failed").astype(object)
    # inputs misclassified and accepted from the start meet the goal without an attack: they
    # are reported apart ("already"), never attacked or counted
    already = (first.pred0 != y) & first.accepted0
    stage[already] = "already"
    info: dict = {"attack": first.info, "repair": repair, "norm": norm,
                  "fallback_norm": fallback_norm, "attack_s": t1 - t0}  # fmt: skip
    steps = [(norm, "repair")]
    if repair == "gradient" and fallback_norm and fallback_norm != norm:
        steps.append((fallback_norm, "fallback"))
    x_final = first.x.copy()
    if repair != "none":
        for step_norm, label in steps:
            if not _repair_round(model, monitor, first, stage, x_final, info, repair, step_norm,
                                 label, seed=seed, max_evals=max_evals, time_limit=time_limit,
                                 n_jobs=n_jobs, options=repair_options):  # fmt: skip
                break
    info["repair_s"] = time.perf_counter() - t1
    final = verify(model, monitor, x0, x_final, "combined", labels=y, pred0=first.pred0,
                   accepted0=first.accepted0, info={"stage": stage.tolist()})  # fmt: skip
    stage[~final.success & ~final.already] = "failed"  # the final check decides
    return CombinedResult(first=first, final=final, stage=stage, info=info)


def _repair_round(model, monitor, first: AttackResult, stage, x_final, info: dict, repair,
                  norm, label, **settings) -> bool:
    """Repair every sample whose stage is still "failed" (in place on ``stage``, ``x_final``
    and ``info``); ``False`` when none was left to repair."""
    todo = np.flatnonzero(stage == "failed")
    if not len(todo):
        return False
    x0, y = first.x0, first.labels
    rep = _repair_step(model, monitor, x0[todo], y[todo], first.x[todo], repair, norm,
                       **settings)  # fmt: skip
    ok = rep.success
    x_final[todo[ok]] = rep.x[ok]
    stage[todo[ok]] = label
    info[f"{label}_tried"] = len(todo)
    info[f"{label}_solved"] = int(ok.sum())
    if "outcome" in rep.info:
        info[f"{label}_outcomes"] = {str(o): int(c) for o, c in
                                     zip(*np.unique(rep.info["outcome"], return_counts=True))}
    return True


class CombinedAttack(Attack):
    """The combined attack as an :class:`~boxhack.attacks.base.Attack` (goal "combined"):
    ``CombinedAttack(method="fgsm", epsilon=0.1, repair="gradient", ...)(model, monitor,
    inputs, labels=None)`` is :func:`combined_attack` (same arguments, same points).

    It returns the final :class:`~boxhack.attacks.verify.AttackResult` (misclassified vs
    ``labels`` - the model's predictions when omitted - and accepted); its ``info`` adds the
    stage-1 result (``"first"``), each sample's ``"stage"``, the :meth:`CombinedResult.counts`
    (``"counts"``) and the combined attack's own facts (repairs tried and solved, timings).
    """

    goals = ("combined",)
    name = "combined"

    def __init__(self, method: str = "fgsm", epsilon: float = 0.1, repair: str = "gradient",
                 norm: str = "l1", fallback_norm: str | None = "l2", *,
                 max_evals: int | None = DEFAULT_MAX_EVALS, time_limit: float | None = None,
                 n_jobs: int = 1, seed: int = 0, repair_options: dict | None = None,
                 goal: str = "combined", **attack_kwargs) -> None:
        self.goal = self._set_goal(goal)
        _check_settings(repair, norm, fallback_norm)
        self.method = method
        self.epsilon = epsilon
        self.repair = repair
        self.norm = norm
        self.fallback_norm = fallback_norm
        self.max_evals = max_evals
        self.time_limit = time_limit
        self.n_jobs = n_jobs
        self.seed = seed
        self.repair_options = dict(repair_options) if repair_options else None
        self.attack_kwargs = dict(attack_kwargs)

    def run(self, model, monitor, inputs, *, labels=None, targets=None, starts=None,
            goal: str | None = None, **options) -> AttackResult:
        check_options(type(self).__name__, options)
        if targets is not None or starts is not None:
            raise BoxhackError("CombinedAttack takes no targets or starts (its first stage "
                               "makes the starts of its repair)")
        res = combined_attack(
            model, monitor, inputs, labels_or_predictions(model, monitor, inputs, labels),
            attack=self.method, epsilon=self.epsilon, repair=self.repair, norm=self.norm,
            fallback_norm=self.fallback_norm, max_evals=self.max_evals,
            time_limit=self.time_limit, n_jobs=self.n_jobs, seed=self.seed,
            repair_options=self.repair_options, **self.attack_kwargs,
        )  # fmt: skip
        info = {**res.info, **res.final.info, "first": res.first, "counts": res.counts()}
        return dataclasses.replace(res.final, info=info)
