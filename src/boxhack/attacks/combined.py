"""The combined attack (paper section 4.2, figure 9): fool the classifier AND the monitor.

Stage 1, an off-the-shelf adversarial attack (FGSM at Linf 0.1 by default, Foolbox, criterion
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

import time
from dataclasses import dataclass, field

import numpy as np

from boxhack.attacks.verify import AttackResult, verify
from boxhack.errors import BoxhackError

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
        from boxhack.attacks.gradient import MonitorAttack

        attack = MonitorAttack(goal="combined", norm=norm, mode="minimal", seed=seed,
                               **(options or {}))  # fmt: skip
        return attack(model, monitor, x0, labels=y, starts=starts)
    try:
        from boxhack.attacks.optimisation import optimise_attack
    except ImportError as exc:  # pragma: no cover - the module ships with boxhack
        raise BoxhackError(f"repair {repair!r} needs boxhack.attacks.optimisation ({exc})") from None
    return optimise_attack(
        model, monitor, x0, goal="combined", norm=norm, solver=repair, labels=y, starts=starts,
        max_evals=max_evals, time_limit=SAFETY_NET_S if time_limit is None else time_limit,
        n_jobs=n_jobs, seed=seed, **(options or {}),
    )  # fmt: skip


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
            (:func:`boxhack.attacks.adversarial.run_adversarial`, criterion "misclassify").
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
    from boxhack.attacks.adversarial import run_adversarial

    if repair not in REPAIRS:
        raise BoxhackError(f"unknown repair {repair!r}; choose one of: {', '.join(REPAIRS)}")
    if norm not in ("l1", "l2"):
        raise BoxhackError(f"norm must be 'l1' or 'l2', got {norm!r}")
    if fallback_norm not in (None, "l1", "l2", "linf"):
        raise BoxhackError(f"fallback_norm must be 'l1', 'l2', 'linf' or None, got {fallback_norm!r}")
    t0 = time.perf_counter()  # timings are reported, never used to decide anything
    first = run_adversarial(model, monitor, inputs, labels, attack, epsilon,
                            criterion="misclassify", seed=seed, **attack_kwargs)  # fmt: skip
    x0, y = first.x0, first.labels
    t1 = time.perf_counter()
    goal_met = (first.pred != y) & first.accepted
    stage = np.where(goal_met, "adversarial", "failed").astype(object)
    # inputs misclassified and accepted from the start meet the goal without an attack: they
    # are reported apart ("already"), never attacked or counted
    already = (first.pred0 != y) & first.accepted0
    stage[already] = "already"
    x_final = first.x.copy()
    info: dict = {"attack": first.info, "repair": repair, "norm": norm,
                  "fallback_norm": fallback_norm, "attack_s": t1 - t0}  # fmt: skip
    steps = [(norm, "repair")]
    if repair == "gradient" and fallback_norm and fallback_norm != norm:
        steps.append((fallback_norm, "fallback"))
    if repair != "none":
        for step_norm, label in steps:
            todo = np.flatnonzero(stage == "failed")
            if not len(todo):
                break
            rep = _repair_step(model, monitor, x0[todo], y[todo], first.x[todo], repair,
                               step_norm, seed=seed, max_evals=max_evals, time_limit=time_limit,
                               n_jobs=n_jobs, options=repair_options)  # fmt: skip
            ok = rep.success
            x_final[todo[ok]] = rep.x[ok]
            stage[todo[ok]] = label
            info[f"{label}_tried"] = len(todo)
            info[f"{label}_solved"] = int(ok.sum())
            if "outcome" in rep.info:
                info[f"{label}_outcomes"] = {str(o): int(c) for o, c in
                                             zip(*np.unique(rep.info["outcome"], return_counts=True))}
    info["repair_s"] = time.perf_counter() - t1
    final = verify(model, monitor, x0, x_final, "combined", labels=y, pred0=first.pred0,
                   accepted0=first.accepted0, info={"stage": stage.tolist()})  # fmt: skip
    stage[~final.success & ~final.already] = "failed"  # the final check decides
    return CombinedResult(first=first, final=final, stage=stage, info=info)
