"""The one place where an attack's success is decided.

Every attack (SciPy optimisation, Foolbox, monitor-aware gradient) returns candidate inputs;
``verify`` re-runs the exact float32 model and the exact monitor on them and decides, per
sample, whether the goal is met. Nothing counts as a success anywhere else.

Goals (``c0`` = the model's prediction on the original input ``x0``):
- ``"dos"`` (Attack 1, valid -> invalid): predict(x) == c0 and the monitor rejects x.
- ``"intrude"`` (Attack 2 as in the paper): predict(x) == c0 and the monitor accepts x.
- ``"intrude-any"``: the monitor accepts x, whatever class the model predicts.
- ``"intrude-target"``: predict(x) == target and the monitor accepts x.
- ``"combined"`` (adversarial and accepted): predict(x) != label and the monitor accepts x;
  ``label`` is the true label when given, else c0.
- ``"misclassify"``: predict(x) != label (plain adversarial example, monitor ignored).

Which inputs count. An input whose original ``x0`` already meets the goal (a DoS on an input
the monitor already rejects, an intrusion with an input it already accepts) was not attacked:
``already`` marks it, and it is never a success. Attack 1 (``"dos"``) is defined from inputs
that are *correctly classified and accepted*: with ``labels`` given, a misclassified ``x0`` is
not eligible either. ``success`` is true only for eligible inputs, and rates and norm medians
are taken over the eligible (attacked) inputs; the ``already`` ones are reported apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from boxhack.errors import BoxhackError
from boxhack.models.domain import input_bounds

GOALS = ("dos", "intrude", "intrude-any", "intrude-target", "combined", "misclassify")
BOUNDS = (0.0, 1.0)


@dataclass
class AttackResult:
    """Per-sample outcome of an attack on a batch; every array has length N."""

    goal: str
    x0: np.ndarray
    x: np.ndarray
    success: np.ndarray  # bool, decided by verify()
    pred0: np.ndarray
    pred: np.ndarray
    accepted0: np.ndarray
    accepted: np.ndarray
    l1: np.ndarray
    l2: np.ndarray
    linf: np.ndarray
    labels: np.ndarray | None = None
    targets: np.ndarray | None = None
    info: dict = field(default_factory=dict)  # attack-specific: times, evaluations, messages
    eligible: np.ndarray | None = None  # bool: x0 meets the goal's starting condition
    already: np.ndarray | None = None  # bool: x0 itself already meets the goal (not attacked)

    def __post_init__(self) -> None:
        n = len(self.success)
        if self.already is None:
            self.already = np.zeros(n, dtype=bool)
        if self.eligible is None:
            self.eligible = ~self.already

    def __len__(self) -> int:
        return len(self.success)

    @property
    def n_attacked(self) -> int:
        """How many inputs were really attacked (eligible ones)."""
        return int(self.eligible.sum())

    @property
    def success_rate(self) -> float:
        """Successes over the attacked (eligible) inputs; NaN when none was attacked."""
        n = self.n_attacked
        return float(self.success[self.eligible].sum() / n) if n else float("nan")

    def rows(self) -> list[dict]:
        """One JSON-ready dict per sample (perturbation norms, verdicts)."""
        out = []
        for i in range(len(self)):
            out.append(
                {
                    "goal": self.goal,
                    "success": bool(self.success[i]),
                    "pred0": int(self.pred0[i]),
                    "pred": int(self.pred[i]),
                    "accepted0": bool(self.accepted0[i]),
                    "accepted": bool(self.accepted[i]),
                    "l1": float(self.l1[i]),
                    "l2": float(self.l2[i]),
                    "linf": float(self.linf[i]),
                    "eligible": bool(self.eligible[i]),
                    "already": bool(self.already[i]),
                    **({"label": int(self.labels[i])} if self.labels is not None else {}),
                    **({"target": int(self.targets[i])} if self.targets is not None else {}),
                }
            )
        return out


def as_batch(x, name: str = "inputs", input_shape: tuple[int, ...] | None = None,
             bounds: tuple[float, float] = BOUNDS) -> np.ndarray:
    """Validate a batch of inputs: float32, finite, within ``bounds`` (the model's input
    bounds, :func:`~boxhack.models.domain.input_bounds`; default [0, 1]), optional per-sample
    shape."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise BoxhackError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 0 or len(arr) == 0:
        raise BoxhackError(f"{name} is empty; pass at least one input")
    if input_shape is not None and tuple(arr.shape[1:]) != tuple(input_shape):
        if arr.shape == tuple(input_shape):
            arr = arr[None]
        else:
            raise BoxhackError(
                f"{name} has per-sample shape {tuple(arr.shape[1:])}, the model expects "
                f"{tuple(input_shape)}"
            )
    if not np.isfinite(arr).all():
        raise BoxhackError(f"{name} contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    b_lo, b_hi = float(np.float32(bounds[0])), float(np.float32(bounds[1]))
    if lo < b_lo or hi > b_hi:
        hint = "; divide 0-255 images by 255" if b_hi <= 1 and hi > 1.5 else ""
        raise BoxhackError(
            f"{name} must lie in the model's input bounds [{bounds[0]:g}, {bounds[1]:g}], "
            f"found values in [{lo:.4g}, {hi:.4g}]{hint}"
        )
    return arr


def check_goal(goal: str) -> str:
    if goal not in GOALS:
        raise BoxhackError(f"unknown goal {goal!r}; choose one of: {', '.join(GOALS)}")
    return goal


def goal_conditions(
    goal: str,
    pred0: np.ndarray,
    pred: np.ndarray,
    accepted: np.ndarray,
    labels: np.ndarray | None = None,
    targets: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(prediction_ok, monitor_ok)`` per sample: the two halves of ``goal``'s success rule
    (see the module docstring); :func:`decide` is their conjunction."""
    check_goal(goal)
    pred, accepted = np.asarray(pred), np.asarray(accepted, dtype=bool)
    everyone = np.ones(len(pred), dtype=bool)
    if goal == "dos":
        return pred == pred0, ~accepted
    if goal == "intrude":
        return pred == pred0, accepted.copy()
    if goal == "intrude-any":
        return everyone, accepted.copy()
    if goal == "intrude-target":
        if targets is None:
            raise BoxhackError("goal 'intrude-target' needs target classes")
        return pred == targets, accepted.copy()
    reference = labels if labels is not None else pred0
    if goal == "combined":
        return pred != reference, accepted.copy()
    return pred != reference, everyone  # misclassify


def decide(
    goal: str,
    pred0: np.ndarray,
    pred: np.ndarray,
    accepted: np.ndarray,
    labels: np.ndarray | None = None,
    targets: np.ndarray | None = None,
) -> np.ndarray:
    """The success rule of each goal, on verdicts already computed (see module docstring)."""
    prediction_ok, monitor_ok = goal_conditions(goal, pred0, pred, accepted, labels, targets)
    return prediction_ok & monitor_ok


def starting_state(
    goal: str,
    pred0: np.ndarray,
    accepted0: np.ndarray,
    labels: np.ndarray | None = None,
    targets: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(eligible, already)`` per input: may it be attacked for ``goal``, and does the
    original already meet the goal? (See the module docstring.)"""
    pred0 = np.asarray(pred0)
    accepted0 = np.asarray(accepted0, dtype=bool)
    already = decide(goal, pred0, pred0, accepted0, labels, targets)
    eligible = ~already
    if goal == "dos" and labels is not None:
        eligible &= pred0 == np.asarray(labels)
    return eligible, already


def verify(
    model,
    monitor,
    x0,
    x,
    goal: str,
    *,
    labels=None,
    targets=None,
    pred0: np.ndarray | None = None,
    accepted0: np.ndarray | None = None,
    info: dict | None = None,
) -> AttackResult:
    """Re-check candidates ``x`` against originals ``x0`` with the exact model and monitor.

    Candidates outside the model's input bounds (:func:`~boxhack.models.domain.input_bounds`,
    [0, 1] unless declared) or non-finite never count: they are marked unsuccessful (an
    attack must return valid inputs).
    """
    check_goal(goal)
    x0 = np.asarray(x0.detach().cpu() if isinstance(x0, torch.Tensor) else x0, dtype=np.float32)
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    if x.shape != x0.shape:
        raise BoxhackError(f"candidates have shape {x.shape} but originals {x0.shape}")
    valid = np.isfinite(x).reshape(len(x), -1).all(1)
    b_lo, b_hi = (np.float32(b) for b in input_bounds(model))
    valid &= ((x >= b_lo) & (x <= b_hi)).reshape(len(x), -1).all(1)
    safe_x = np.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, x0)
    if pred0 is None or accepted0 is None:
        pred0, accepted0 = monitor.predict(model, x0)
    pred, accepted = monitor.predict(model, safe_x)
    pred, accepted = np.asarray(pred), np.asarray(accepted, dtype=bool)
    labels_arr = None if labels is None else np.asarray(labels, dtype=np.int64)
    targets_arr = None if targets is None else np.asarray(targets, dtype=np.int64)
    eligible, already = starting_state(goal, pred0, accepted0, labels_arr, targets_arr)
    success = decide(goal, np.asarray(pred0), pred, accepted, labels_arr, targets_arr)
    success &= valid & eligible
    # exact: float64 differences of the float32 values (a float32 subtraction would round)
    delta = (x.astype(np.float64) - x0.astype(np.float64)).reshape(len(x), -1)
    return AttackResult(
        goal=goal,
        x0=x0,
        x=x,
        success=success,
        pred0=np.asarray(pred0),
        pred=pred,
        accepted0=np.asarray(accepted0, dtype=bool),
        accepted=accepted,
        l1=np.abs(delta).sum(1),
        l2=np.sqrt((delta**2).sum(1)),
        linf=np.abs(delta).max(1),
        labels=labels_arr,
        targets=targets_arr,
        info=dict(info or {}),
        eligible=eligible,
        already=already,
    )
