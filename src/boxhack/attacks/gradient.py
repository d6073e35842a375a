"""Monitor-aware white-box attacks: batched, minimal-norm or fixed-budget, on model + monitor.

An attacker who can see the monitor attacks the classifier and the monitor *together*. Both
are (almost everywhere) differentiable in the input (ReLU networks; box faces, ball surfaces,
zone and pattern margins), so a few dozen normalised gradient steps replace hours of global
optimisation. Any monitor of the monitor protocol (:class:`boxhack.monitor.base.Monitor`)
can be attacked: the attack needs its ``forward_margin`` and ``predict`` only.

Every goal is written as two constraints on a candidate class ``t`` per row::

    g1(x) = z_t(x) - max_{j != t} z_j(x)      >= slack   (the model predicts t)
    g2(x) = sigma * margin(x, t)               >= slack   (sigma = +1: accepted, -1: rejected)

``margin`` is the monitor's differentiable margin (``monitor.forward_margin``; ``>= 0`` iff
the input is accepted as ``t``). The goals map to rows as

- ``"dos"`` (Attack 1): ``t = c0`` (the original prediction), sigma = -1;
- ``"intrude"`` (Attack 2 as in the paper): ``t = c0``, sigma = +1;
- ``"intrude-target"``: ``t = targets``, sigma = +1;
- ``"intrude-any"``: several candidate classes per sample (``c0`` first, then the classes with
  the largest logits), sigma = +1; the best verified candidate wins;
- ``"combined"`` (misclassified and accepted): candidate classes ``t != label``, ranked by
  logit at the start point (the ``starts`` prediction first), sigma = +1.

Minimal mode (default) is a Fast-Minimum-Norm-style search (Pintor et al., NeurIPS 2021) with
two constraints: each step takes the constraint with the smallest *normalised* slack
``(g_k - slack) / ||grad g_k||_dual`` (a linearised distance in the attack's norm), steps along
its normalised gradient (dropping the part that would break the other constraint when that one
is near), and projects onto an adaptive norm ball of radius ``eps_k``: while no feasible point
is known ``eps_k = ||delta|| + linearised distance`` (a DeepFool-like jump, growing at most
10 % per step), afterwards ``eps`` shrinks by ``(1 - gamma)`` (or half-way back by the
linearised depth) on feasible and grows by ``(1 + gamma)`` on infeasible iterates, ``gamma``
and the step size cosine-annealed. For "dos" on a monitor made of boxes the search starts just
beyond the box face that is nearest in the attack norm to first order (``face_init``; a
capability check, :func:`box_faces`: other abstractions start at ``x0``). Details and
measurements: docs/attacks-gradient.md. Rows stop early once their best verified norm has not
improved for ``patience`` steps, and the batch is refilled from the queue, so the batch stays
full. Budget mode is PGD: the same normalised steps inside the fixed
``epsilon`` ball, each row stopping at its first verified success. ``refine=k`` ends minimal
mode with up to ``k`` PGD runs below each solved sample's norm (kept only when they verify
smaller). Every run is bounded by steps, never by a clock.

Only inputs that may be attacked are (:func:`boxhack.attacks.verify.starting_state`): an input
whose goal already holds at ``x0`` is returned unchanged and never counts as a success
(``result.already``), and Attack 1 with ``labels`` starts only from correctly classified inputs.
With a budget (or a cap in minimal mode) the returned perturbation is within it exactly as
``boxhack verify`` measures it (:func:`boxhack.attacks.records.fit_to_budget`).

Pixel space is [0, 1] at every step (clamping only ever moves a pixel towards ``x0``, so the
norm ball is kept). A point counts as found only when the exact float32 model and monitor
accept it (``monitor.predict`` on the candidates every ``verify_every`` steps, and
:func:`boxhack.attacks.verify.verify` on the final points, the single place success is decided).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from boxhack.attacks.base import Attack, check_options
from boxhack.attacks.records import fit_to_budget
from boxhack.attacks.verify import AttackResult, as_batch, decide, starting_state, verify
from boxhack.errors import BoxhackError
from boxhack.models.domain import from_unit, input_bounds, to_unit, unit_domain
from boxhack.models.layers import is_relu_layer, tap

__all__ = ["GOALS_SUPPORTED", "MODES", "NORMS", "MonitorAttack", "attack", "box_faces",
           "dual_norm", "fit_to_budget", "l1_fill", "lp_norm", "project_ball", "project_l1_ball",
           "steepest_direction"]

GOALS_SUPPORTED = ("dos", "intrude", "intrude-any", "intrude-target", "combined")
NORMS = ("l1", "l2", "linf")
MODES = ("minimal", "budget")

# default (steps, lr) per mode; lr is the initial step length relative to the current radius
_DEFAULT_STEPS = {"minimal": 50, "budget": 100}
_DEFAULT_LR = {
    ("minimal", "l1"): 0.06, ("minimal", "l2"): 0.1, ("minimal", "linf"): 0.1,
    ("budget", "l1"): 0.5, ("budget", "l2"): 0.5, ("budget", "linf"): 0.25,
}  # fmt: skip
_DUAL = {"l1": math.inf, "l2": 2.0, "linf": 1.0}


# ----------------------------------------------------------------------------- norm helpers
def lp_norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    """Row norms of a flat (R, D) tensor."""
    if norm == "l2":
        return torch.linalg.vector_norm(d, 2, dim=1)
    if norm == "l1":
        return d.abs().sum(1)
    return d.abs().amax(1)


def dual_norm(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Row norms of a gradient in the dual of ``norm`` (l1 <-> linf, l2 <-> l2)."""
    p = _DUAL[norm]
    if p == 2.0:
        return torch.linalg.vector_norm(g, 2, dim=1)
    if p == 1.0:
        return g.abs().sum(1)
    return g.abs().amax(1)


def project_l1_ball(d: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the L1 ball of radius ``eps`` (Duchi et al. 2008),
    batched; rows already inside are unchanged. Soft-thresholding: makes ``d`` sparse."""
    a = d.abs()
    outside = a.sum(1) > eps
    if not bool(outside.any()):
        return d
    u, _ = torch.sort(a[outside], dim=1, descending=True)
    e = eps[outside].unsqueeze(1)
    css = torch.cumsum(u, 1) - e
    idx = torch.arange(1, u.shape[1] + 1, device=d.device, dtype=d.dtype)
    cond = (u - css / idx) > 0
    rho = cond.to(torch.int64).cumsum(1).argmax(1, keepdim=True)  # last True (cond is a prefix)
    theta = (css.gather(1, rho) / (rho + 1).to(d.dtype)).clamp_min(0)
    out = d.clone()
    out[outside] = torch.sign(d[outside]) * (a[outside] - theta).clamp_min(0)
    return out


def project_ball(d: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Project rows of ``d`` onto the ``norm`` ball of per-row radius ``eps``."""
    if norm == "l2":
        n = torch.linalg.vector_norm(d, 2, dim=1).clamp_min(1e-30)
        return d * torch.clamp(eps / n, max=1.0).unsqueeze(1)
    if norm == "linf":
        e = eps.unsqueeze(1)
        return torch.maximum(torch.minimum(d, e), -e)
    return project_l1_ball(d, eps)


def steepest_direction(g: torch.Tensor, norm: str, l1_sparsity: float) -> torch.Tensor:
    """Unit-norm (in ``norm``) ascent direction from gradient rows ``g``.

    L2: ``g / ||g||_2``; Linf: ``sign(g)``; L1: the signs of the largest ``l1_sparsity``
    fraction of gradient entries, each ``1/k`` (a sparse step of L1 length 1)."""
    if norm == "l2":
        return g / torch.linalg.vector_norm(g, 2, dim=1, keepdim=True).clamp_min(1e-30)
    if norm == "linf":
        return torch.sign(g)
    k = max(1, round(l1_sparsity * g.shape[1]))
    a = g.abs()
    thr = torch.topk(a, k, dim=1).values[:, -1:]
    mask = (a >= thr) & (a > 0)
    cnt = mask.sum(1, keepdim=True).clamp_min(1)
    return torch.sign(g) * mask / cnt


def l1_fill(g: torch.Tensor, x: torch.Tensor, gap: torch.Tensor, k: int = 64):
    """First-order L1 distance with the pixel box: the cheapest ``delta`` (in L1) with
    ``g . delta >= gap`` and ``x + delta`` in [0, 1] fills the pixels of largest ``|g|`` to their
    bound, in order (a greedy, exact for a linear function). Only the ``k`` most sensitive
    pixels are used; beyond them the rate of the k-th is extrapolated.

    Returns ``(cost (n,), step (n, D))``."""
    n, D = g.shape
    k = min(k, D)
    cap = x + (g > 0).to(x.dtype) * (1 - 2 * x)  # room: 1 - x going up, x going down
    vals, idx = torch.topk(g.abs(), k, dim=1)
    c = cap.gather(1, idx)
    G = torch.cumsum(vals * c, 1)
    C = torch.cumsum(c, 1)
    reach = G >= gap.unsqueeze(1)
    kk = torch.where(reach.any(1), reach.to(torch.int64).argmax(1), torch.full_like(gap, k - 1, dtype=torch.int64))
    r = torch.arange(n, device=g.device)
    g_prev = torch.where(kk > 0, G[r, (kk - 1).clamp_min(0)], torch.zeros_like(gap))
    c_prev = torch.where(kk > 0, C[r, (kk - 1).clamp_min(0)], torch.zeros_like(gap))
    last = ((gap - g_prev).clamp_min(0) / vals[r, kk].clamp_min(1e-30))
    cost = c_prev + last
    amount = torch.where(torch.arange(k, device=g.device).unsqueeze(0) < kk.unsqueeze(1), c,
                         torch.zeros_like(c))
    amount[r, kk] = last
    step = torch.zeros_like(g)
    step.scatter_(1, idx, amount * torch.sign(g.gather(1, idx)))
    bad = ~torch.isfinite(gap) | (vals[:, 0] <= 0)
    cost = torch.where(bad, torch.full_like(cost, math.inf), cost)
    return cost, step


def box_faces(monitor) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
    """``{layer: (lo, hi, class of each box)}`` for a monitor made of boxes, ``None`` for any
    other abstraction: a capability check, not a type check. The face-jump warm start of
    "dos" uses the boxes when a monitor offers them (``boxes(layer) -> (lo, hi)`` and
    ``box_class_``); every other step of the attack needs only the monitor protocol."""
    boxes, classes = getattr(monitor, "boxes", None), getattr(monitor, "box_class_", None)
    if not callable(boxes) or not isinstance(classes, Mapping):
        return None
    out = {}
    for layer in monitor.layers_:
        lo, hi = boxes(layer)
        out[layer] = (np.asarray(lo), np.asarray(hi), np.asarray(classes[layer]))
    return out


def _tapped_layers(model, monitor) -> tuple[list[str], list[str]]:
    """The monitored layers ``forward_margin`` taps before their ReLU (pre-activations) and
    the others, as the monitor does it (monitors without ``uses_preactivation`` are boxes,
    which always use pre-activations)."""
    pre = getattr(monitor, "uses_preactivation", True)
    relu = [ly for ly in monitor.layers_ if pre and is_relu_layer(model, ly)]
    return relu, [ly for ly in monitor.layers_ if ly not in relu]


def _cosine(k: torch.Tensor, steps: int, start: float, end: float) -> torch.Tensor:
    c = (1 + torch.cos(math.pi * torch.clamp(k.to(torch.float32) / steps, max=1.0))) / 2
    return end + (start - end) * c


# ----------------------------------------------------------------------------- checks
def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise BoxhackError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
    return value


def _check_int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise BoxhackError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _check_epsilon(epsilon, mode: str) -> float | None:
    if epsilon is not None:
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating, np.integer)) \
                or not math.isfinite(float(epsilon)) or float(epsilon) <= 0:
            raise BoxhackError(f"epsilon must be a finite number > 0, got {epsilon!r}")
        epsilon = float(epsilon)
    if mode == "budget" and epsilon is None:
        raise BoxhackError("budget mode needs epsilon, the perturbation budget (--eps on the "
                           "command line), e.g. 0.5 for L2")
    return epsilon


def _class_vector(a, n: int, n_classes: int, what: str) -> np.ndarray:
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if arr.ndim == 0:
        arr = np.full(n, arr)
    if arr.shape != (n,):
        raise BoxhackError(f"{what} must have one class index per input ({n}), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and (arr == np.round(arr)).all():
            arr = arr.astype(np.int64)
        else:
            raise BoxhackError(f"{what} must be integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if n and (arr.min() < 0 or arr.max() >= n_classes):
        raise BoxhackError(
            f"{what} must lie in 0..{n_classes - 1}, got values {int(arr.min())}..{int(arr.max())}"
        )
    return arr


@dataclass
class _Rows:
    """The expanded problem: one row per (sample, candidate class[, box face])."""

    sample: np.ndarray  # (R,) index of the original sample
    target: torch.Tensor  # (R,) class t of the row
    face: torch.Tensor  # (R,) "dos": which nearest face the warm start crosses (0 = nearest)
    x0: torch.Tensor  # (R, D) flat originals
    start: torch.Tensor  # (R, D) flat start points
    cap: torch.Tensor  # (R,) norm bound of the row (inf: none), a little below its budget


@dataclass
class _Problem:
    """One call's inputs, validated, with the verdicts at ``x0`` and which samples may be
    attacked (``eligible``) or already meet the goal (``already``)."""

    model: torch.nn.Module  # as given (the final check runs here)
    work_model: torch.nn.Module  # on the search device
    monitor: object
    x0: np.ndarray
    starts: np.ndarray
    pred0: np.ndarray
    accepted0: np.ndarray
    labels: np.ndarray | None
    targets: np.ndarray | None
    eligible: np.ndarray
    already: np.ndarray
    n_out: int
    dev: torch.device


class MonitorAttack(Attack):
    """Batched white-box attack on a classifier and its monitor (see the module docstring); an
    :class:`~boxhack.attacks.base.Attack`: ``MonitorAttack(goal, norm, ...)(model, monitor,
    inputs, labels=None, targets=None, starts=None)``.

    Parameters
    ----------
    goal : "dos" | "intrude" | "intrude-any" | "intrude-target" | "combined" (or a paper
        alias: "1", "2", "2-any")
    norm : "l1" | "l2" | "linf"  -- the perturbation norm minimised (or bounded).
    mode : "minimal" (smallest perturbation that succeeds) | "budget" (PGD inside ``epsilon``).
    epsilon : float or None -- the budget (required in budget mode; in minimal mode an optional
        upper bound on the norm searched).
    steps : int -- gradient steps per row (default 50 minimal, 100 budget). Rows stop earlier
        once done.
    lr : float -- initial step length relative to the current ball radius (cosine-annealed to
        ``lr / 100`` in minimal mode, ``lr / 10`` in budget mode).
    seed : int -- seed of the random start (budget mode with ``random_start=True``).
    batch_size : int -- rows optimised at once (the batch is refilled as rows finish).
    device : torch device string for the optimisation (the final check runs where the model is).
    slack : float -- margin (logit and box units) the search aims beyond each boundary, so the
        float32 re-check passes; candidates need at least ``slack / 2``.
    gamma : (float, float) -- initial and final radius adaptation factor (minimal mode).
    patience : int -- steps without a relative improvement of ``rtol`` before a solved row stops.
    rtol : float -- relative norm improvement that counts as progress.
    verify_every : int -- steps between exact checks of new candidates.
    candidates : int -- candidate classes per sample for "intrude-any" and "combined".
    l1_sparsity : float -- fraction of pixels an L1 step moves.
    random_start : bool -- budget mode: start from a random point of the ball.
    face_init : bool -- "dos" on a monitor made of boxes: start with a first-order jump through
        the box face nearest in the attack norm (one batched backward over the monitored units).
    faces : int -- "dos" with ``face_init``: search from each of the ``faces`` nearest faces
        (one row each) and keep the best verified result.
    plain_start : bool -- "dos" with ``face_init``: one more row per sample that starts at
        ``x0`` and follows the margin's own gradient (a different basin, at twice the cost).
    refine : int -- minimal mode: PGD (budget-mode) runs per solved sample below its norm
        (0: none); see :meth:`_refine`.
    refine_drop : float -- how far below the norm the first refinement run tries (0.05 = 5 %).
    """

    goals = GOALS_SUPPORTED
    name = "monitor-fmn"
    two_gradients = False  # subclasses that need both constraint gradients every step
    # search constants (docs/attacks-gradient.md)
    shrink = 0.5  # feasible: pull the radius back by this fraction of the linearised depth
    grow = 0.1  # no feasible point yet: the radius grows at most 10 % per step
    retry_boost = 5.0  # step multiplier for the one retry of a row that found nothing

    def __init__(
        self,
        goal: str = "dos",
        norm: str = "l2",
        mode: str = "minimal",
        epsilon: float | None = None,
        steps: int | None = None,
        lr: float | None = None,
        seed: int = 0,
        batch_size: int = 512,
        device: str = "cpu",
        *,
        slack: float = 1e-3,
        gamma: tuple[float, float] = (0.05, 0.001),
        patience: int = 10,
        rtol: float = 1e-3,
        verify_every: int = 10,
        candidates: int = 3,
        l1_sparsity: float = 0.01,
        random_start: bool = False,
        face_init: bool = True,
        faces: int = 1,
        plain_start: bool = False,
        refine: int = 0,
        refine_drop: float = 0.05,
    ):
        self.goal = self._set_goal(goal)
        self.norm = _check_choice("norm", norm, NORMS)
        self.mode = _check_choice("mode", mode, MODES)
        self.epsilon = _check_epsilon(epsilon, mode)
        self.steps = _check_int("steps", _DEFAULT_STEPS[mode] if steps is None else steps, 1)
        self.lr = _DEFAULT_LR[(mode, norm)] if lr is None else lr
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise BoxhackError(f"lr must be a finite number > 0, got {lr!r}")
        for name, value, lo in (("batch_size", batch_size, 1), ("patience", patience, 1),
                                ("verify_every", verify_every, 1), ("candidates", candidates, 1),
                                ("faces", faces, 1), ("refine", refine, 0)):
            _check_int(name, value, lo)
        if not (0 < slack < 1):
            raise BoxhackError(f"slack must be in (0, 1), got {slack!r}")
        if not (0 < l1_sparsity <= 1):
            raise BoxhackError(f"l1_sparsity must be in (0, 1], got {l1_sparsity!r}")
        if not isinstance(refine_drop, (int, float)) or not (0 < refine_drop < 1):
            raise BoxhackError(f"refine_drop must be in (0, 1), got {refine_drop!r}")
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.device = str(device)
        self.slack = float(slack)
        self.gamma = (float(gamma[0]), float(gamma[1]))
        self.patience = int(patience)
        self.rtol = float(rtol)
        self.verify_every = int(verify_every)
        self.candidates = int(candidates)
        self.l1_sparsity = float(l1_sparsity)
        self.random_start = bool(random_start)
        self.face_init = bool(face_init)
        self.faces = int(faces)
        self.plain_start = bool(plain_start)
        self.refine = int(refine)
        self.refine_drop = float(refine_drop)

    def __repr__(self) -> str:
        eps = "" if self.epsilon is None else f", epsilon={self.epsilon:g}"
        return (f"{type(self).__name__}(goal={self.goal!r}, norm={self.norm!r}, "
                f"mode={self.mode!r}{eps}, steps={self.steps})")

    def _uses_faces(self, monitor) -> bool:
        """Does this call start "dos" rows with the box-face jump (the monitor has boxes)?"""
        return self.goal == "dos" and self.face_init and box_faces(monitor) is not None

    # ------------------------------------------------------------------ public entry point
    def run(self, model, monitor, inputs, *, labels=None, targets=None, starts=None,
            goal: str | None = None, **options) -> AttackResult:
        """The attack (called through :meth:`Attack.__call__
        <boxhack.attacks.base.Attack.__call__>`); it takes no per-call options."""
        check_options(type(self).__name__, options)
        if goal is not None and goal != self.goal:
            other = copy.copy(self)
            other.goal = self._set_goal(goal)
            return other.run(model, monitor, inputs, labels=labels, targets=targets,
                             starts=starts)  # fmt: skip
        if input_bounds(model) != (0.0, 1.0):
            return self._run_rescaled(model, monitor, inputs, labels, targets, starts)
        t_start = time.perf_counter()  # reported (info["wall_s"]) only; nothing depends on it
        p = self._problem(model, monitor, inputs, labels, targets, starts)
        n = len(p.x0)
        # the budget per sample (inf: none); only eligible samples are attacked, the others
        # (goal already met at x0, or a misclassified start for Attack 1) are reported apart
        caps = np.full(n, math.inf if self.epsilon is None else float(self.epsilon))
        x_final, best_norm, stats = self._search(p, p.eligible, caps)
        refine_runs = 0
        if self.mode == "minimal" and self.refine:
            x_final, best_norm, refine_runs, more = self._refine(p, x_final, best_norm, caps)
            for key in ("iterations", "row_steps", "forwards"):
                stats[key] += more[key]
        x_final = fit_to_budget(p.x0, x_final, self.norm, caps)
        result = self._verify(p, x_final)
        lost = ~result.success & np.isfinite(best_norm)
        if lost.any():  # verified in the search batch, not in this one: push 0.1-5 % further
            x_final = self._repair(p, x_final, lost, caps)
            result = self._verify(p, x_final)
        wall = time.perf_counter() - t_start
        result.info.update(
            attack=self.name, goal=self.goal, norm=self.norm, mode=self.mode,
            epsilon=self.epsilon, steps=self.steps, refine=self.refine, refine_runs=refine_runs,
            already_met=p.already.copy(), eligible=p.eligible.copy(), rows=stats["rows"],
            row_ok=stats["row_ok"], iterations=int(stats["iterations"]),
            row_steps=int(stats["row_steps"]), forward_passes=int(stats["forwards"]),
            repaired=int(lost.sum()), impossible=stats["impossible_samples"],
            face_init=self._uses_faces(p.monitor),
            wall_s=wall, samples_per_s=n / wall if wall > 0 else float("inf"),
        )  # fmt: skip
        return result

    def _run_rescaled(self, model, monitor, inputs, labels, targets, starts) -> AttackResult:
        """A model with bounds (lo, hi) other than (0, 1): attack it in the unit box
        (:func:`~boxhack.models.domain.unit_domain`, budgets divided by ``hi - lo``), map the
        perturbation back (pixels the attack left alone stay bit for bit), fit it to the
        budget in the user's space and verify there."""
        lo, hi = input_bounds(model)
        scale = hi - lo
        x0 = as_batch(inputs, "inputs", bounds=(lo, hi))
        unit = copy.copy(self)
        unit.epsilon = None if self.epsilon is None else float(self.epsilon) / scale
        u0 = to_unit(x0, (lo, hi))
        us = None if starts is None else to_unit(as_batch(starts, "starts", bounds=(lo, hi)),
                                                 (lo, hi))
        res = unit.run(unit_domain(model), monitor, u0, labels=labels, targets=targets,
                       starts=us)
        x = from_unit(x0, u0, res.x, (lo, hi))
        caps = np.full(len(x0), math.inf if self.epsilon is None else float(self.epsilon))
        x = fit_to_budget(x0, x, self.norm, caps)
        out = verify(model, monitor, x0, x, self.goal, labels=res.labels, targets=res.targets)
        out.info.update(res.info, bounds=[lo, hi])
        return out

    def _problem(self, model, monitor, inputs, labels, targets, starts) -> _Problem:
        """Validate the call and compute what every stage needs (verdicts at x0, eligibility)."""
        if not getattr(monitor, "is_fitted", True):
            raise BoxhackError("the monitor is not fitted; fit it or load a saved one first")
        x0 = as_batch(inputs, "inputs")
        if x0.ndim < 2:
            raise BoxhackError(f"inputs must be a batch (N, ...), got shape {x0.shape}")
        n = len(x0)
        try:
            pred0, accepted0 = monitor.predict(model, x0)
        except BoxhackError:
            raise
        except (RuntimeError, ValueError) as exc:
            raise BoxhackError(
                f"the model cannot run on inputs of shape {x0.shape}: {str(exc).splitlines()[0]}"
            ) from None
        pred0 = np.asarray(pred0, dtype=np.int64)
        accepted0 = np.asarray(accepted0, dtype=bool)
        work_model = self._model_on_device(model)
        dev = torch.device(self.device)
        was = work_model.training
        work_model.eval()
        try:
            with torch.no_grad():
                n_out = int(work_model(torch.as_tensor(x0[:1]).to(dev)).shape[1])
        finally:
            work_model.train(was)
        n_classes = max(int(getattr(monitor, "n_classes_", 0) or 0), n_out)
        labels_arr = None if labels is None else _class_vector(labels, n, n_classes, "labels")
        targets_arr = None if targets is None else _class_vector(targets, n, n_classes, "targets")
        if self.goal == "intrude-target" and targets_arr is None:
            raise BoxhackError("goal 'intrude-target' needs targets (one class index per input)")
        if starts is not None:
            s = as_batch(starts, "starts")
            if s.shape != x0.shape:
                raise BoxhackError(f"starts have shape {s.shape} but inputs {x0.shape}")
        else:
            s = x0
        eligible, already = starting_state(self.goal, pred0, accepted0, labels_arr, targets_arr)
        return _Problem(model=model, work_model=work_model, monitor=monitor, x0=x0, starts=s,
                        pred0=pred0, accepted0=accepted0, labels=labels_arr, targets=targets_arr,
                        eligible=eligible, already=already, n_out=n_out, dev=dev)

    def _verify(self, p: _Problem, x: np.ndarray) -> AttackResult:
        return verify(p.model, p.monitor, p.x0, x, self.goal, labels=p.labels, targets=p.targets,
                      pred0=p.pred0, accepted0=p.accepted0)

    def _search(self, p: _Problem, todo: np.ndarray, caps: np.ndarray):
        """Attack the samples in ``todo`` within per-sample norm bounds ``caps`` (inf: none).

        Returns ``(x, best_norm, stats)``: per sample its verified row of smallest norm (else
        its first row's last iterate, or x0 when not attacked) and that norm (inf: none found).
        """
        n = len(p.x0)
        rows = self._build_rows(p, todo, caps)
        x_rows, stats = self._optimise(p.work_model, p.monitor, rows, p.x0.shape[1:], p.pred0,
                                       p.labels, p.targets, p.dev)  # fmt: skip
        x = p.x0.reshape(n, -1).copy()
        best_norm = np.full(n, np.inf)
        if len(rows.sample):
            order = np.lexsort((stats["best_norm"], rows.sample))
            samples, first = np.unique(rows.sample[order], return_index=True)
            pick = order[first]
            x[samples] = x_rows[pick]
            best_norm[samples] = stats["best_norm"][pick]
        stats["rows"] = len(rows.sample)
        stats["row_ok"] = int(np.isfinite(stats["best_norm"]).sum())
        return x.reshape(p.x0.shape), best_norm, stats

    def _refine(self, p: _Problem, x: np.ndarray, best_norm: np.ndarray, caps: np.ndarray):
        """Minimal mode, ``refine`` > 0: budget-mode (PGD) runs below each solved sample's norm.

        The first run tries ``(1 - refine_drop)`` times the norm found; a success lowers the
        sample's norm to the one PGD verified and doubles the drop, a failure becomes a lower
        bound and later runs bisect between it and the best norm. Only verified points smaller
        than the best are kept, so refining never makes a norm larger.
        Returns ``(x, best_norm, runs, stats)``."""
        pgd = copy.copy(self)
        pgd.mode, pgd.refine, pgd.random_start = "budget", 0, False
        pgd.steps, pgd.lr = _DEFAULT_STEPS["budget"], _DEFAULT_LR[("budget", self.norm)]
        x, hi = x.copy(), best_norm.copy()
        lo = np.zeros(len(hi))
        drop = np.full(len(hi), self.refine_drop)
        totals = {"iterations": 0, "row_steps": 0, "forwards": 0}
        runs = 0
        for _ in range(self.refine):
            todo = p.eligible & np.isfinite(hi) & (hi - lo > self.rtol * hi)
            if not todo.any():
                break
            eps = np.where(lo > 0, (lo + hi) / 2, hi * (1 - drop))
            x_try, n_try, stats = pgd._search(p, todo, np.minimum(eps, caps))
            runs += 1
            for key in totals:
                totals[key] += stats[key]
            won = todo & (n_try < hi)
            x[won], hi[won] = x_try[won], n_try[won]
            failed = todo & ~np.isfinite(n_try)
            lo[failed] = eps[failed]
            drop[won] = np.minimum(2 * drop[won], 0.5)
        return x, hi, runs, totals

    # ------------------------------------------------------------------ set-up
    def _model_on_device(self, model):
        dev = torch.device(self.device)
        try:
            p = next(model.parameters())
        except StopIteration:
            return model
        if p.device == dev:
            return model
        return copy.deepcopy(model).to(dev)

    def _candidate_classes(self, logits: np.ndarray, pred0, labels, targets, start_pred) -> np.ndarray:
        """(N, C) candidate classes ``t`` per sample (see the module docstring)."""
        n, k = logits.shape
        if self.goal in ("dos", "intrude"):
            return pred0[:, None].copy()
        if self.goal == "intrude-target":
            return targets[:, None].copy()
        ranked = np.argsort(-logits, axis=1, kind="stable")
        if self.goal == "intrude-any":
            first, exclude = pred0, np.full(n, -1)
            c = min(self.candidates, k)
        else:  # combined: never the reference label; the start's own prediction first
            exclude = labels if labels is not None else pred0
            first = np.where(start_pred != exclude, start_pred, -1)
            c = min(self.candidates, k - 1)
        out = np.full((n, c), -1, dtype=np.int64)
        for j in range(c):  # a few columns, each vectorised over samples
            bad = (ranked == exclude[:, None]) | (ranked[:, :, None] == out[:, None, :j]).any(-1)
            pick = ranked[np.arange(n), np.argmax(~bad, axis=1)]
            out[:, j] = np.where(first >= 0, first, pick) if j == 0 else pick
        return out

    def _build_rows(self, p: _Problem, todo: np.ndarray, caps: np.ndarray) -> _Rows:
        x0, s, dev = p.x0, p.starts, p.dev
        n = len(x0)
        flat0 = torch.as_tensor(x0.reshape(n, -1))
        flats = torch.as_tensor(s.reshape(n, -1))
        if self.goal in ("intrude-any", "combined"):
            with torch.no_grad():
                logits = torch.cat([p.work_model(torch.as_tensor(s[i:i + 4096]).to(dev)).cpu()
                                    for i in range(0, n, 4096)]).numpy()
            start_pred = logits.argmax(1)
        else:
            logits = np.zeros((n, p.n_out), np.float32)
            start_pred = p.pred0
        cand = self._candidate_classes(logits, p.pred0, p.labels, p.targets, start_pred)
        if self._uses_faces(p.monitor):  # starts: nearest faces (+ plain, -1)
            starts = list(range(self.faces)) + ([-1] if self.plain_start else [])
        else:
            starts = [-1]
        f = len(starts)
        c = cand.shape[1]
        sample = np.repeat(np.arange(n), c * f)
        target = np.repeat(cand.reshape(-1), f)
        face = np.tile(np.asarray(starts), n * c)
        keep = todo[sample]
        sample, target, face = sample[keep], target[keep], face[keep]
        idx = torch.as_tensor(sample)
        # the search's own bound: the float32 just below the budget (its float32 norms are
        # approximate; fit_to_budget makes the final points exact)
        cap = np.asarray(caps, dtype=np.float64)[sample]
        cap32 = np.where(np.isfinite(cap), np.nextafter(cap.astype(np.float32), np.float32(0)),
                         np.float32(np.inf))
        return _Rows(sample=sample, target=torch.as_tensor(target).to(dev),
                     face=torch.as_tensor(face).to(dev), x0=flat0[idx].to(dev),
                     start=flats[idx].to(dev), cap=torch.as_tensor(cap32, dtype=torch.float32).to(dev))

    # ------------------------------------------------------------------ the search
    def _constraints(self, model, monitor, x_flat, target, shape):
        """``(g, logits)``: g (R, 2) = [logit margin of t, sigma * box margin for t]."""
        logits, m = monitor.forward_margin(model, x_flat.view(-1, *shape), target)
        zt = logits.gather(1, target.view(-1, 1)).squeeze(1)
        other = logits.masked_fill(
            torch.nn.functional.one_hot(target, logits.shape[1]).bool(), -math.inf
        ).amax(1)
        g1 = zt - other
        g2 = -m if self.goal == "dos" else m
        return torch.stack([g1, g2], 1), logits

    def _direction(self, gr1, gr2, g, choose):
        """Subclasses with ``two_gradients``: ``(step direction (R, D), pushed constraint (R,))``
        from both constraint gradients, the constraint values and the default choice."""
        raise NotImplementedError

    def _optimise(self, model, monitor, rows: _Rows, shape, pred0, labels, targets, dev):
        """Run the search on every row; returns ``(x (R, D) numpy, stats)``.

        Rows live in a fixed number of *slots* (``batch_size``); every ``verify_every`` steps
        new candidates are checked exactly, finished rows leave and queued rows take their
        slots, so the batch stays full and no per-row Python loop runs."""
        R = len(rows.sample)
        D = int(np.prod(shape))
        stats = {"best_norm": np.full(R, np.inf), "iterations": 0, "row_steps": 0, "forwards": 0,
                 "impossible_samples": np.zeros(len(pred0), dtype=bool)}
        if R == 0:
            return np.zeros((0, D), np.float32), stats
        self._ctx = {
            "model": model, "monitor": monitor, "shape": shape, "rows": rows,
            "pred0": pred0[rows.sample],
            "labels": None if labels is None else labels[rows.sample],
            "targets": None if targets is None else targets[rows.sample],
        }
        delta0, g0 = self._initial_delta(rows, shape, dev, stats)
        impossible = ~torch.isfinite(g0[:, 1])
        if bool(impossible.any()):  # the row's class has no box: it can never be accepted as it
            imp = impossible.cpu().numpy()
            per_sample = np.ones(len(pred0), dtype=bool)
            np.logical_and.at(per_sample, rows.sample, imp)
            present = np.zeros(len(pred0), dtype=bool)
            present[rows.sample] = True
            stats["impossible_samples"] = per_sample & present
        out_x = (rows.x0 + delta0).clone()
        out_norm = torch.full((R,), math.inf, device=dev)
        queue = torch.nonzero(~impossible).squeeze(1)
        slots = self._new_slots(queue[: self.batch_size], delta0)
        queue = queue[self.batch_size:]
        it = 0
        max_iter = self.steps * (2 + R // self.batch_size) + self.verify_every
        while len(slots["row"]) and it < max_iter:
            it += 1
            stats["row_steps"] += len(slots["row"])
            self._step(slots)
            stats["forwards"] += 1
            if it % self.verify_every == 0 or bool((slots["k"] >= self.steps).any()):
                self._verify_slots(slots)
                stats["forwards"] += 1
                fin = self._finished(slots)
                if bool(fin.any()):
                    r = slots["row"][fin]
                    bn = slots["best_norm"][fin]
                    ok = torch.isfinite(bn).unsqueeze(1)
                    out_x[r] = torch.where(ok, slots["best_x"][fin], slots["x0"][fin] + slots["delta"][fin])
                    out_norm[r] = bn
                    slots = {k: v[~fin] for k, v in slots.items()}
                if len(queue) and len(slots["row"]) < self.batch_size:
                    take = self.batch_size - len(slots["row"])
                    new = self._new_slots(queue[:take], delta0)
                    queue = queue[take:]
                    slots = {k: torch.cat([slots[k], new[k]]) for k in slots}
        if len(slots["row"]):  # the iteration guard hit (should not happen): keep what is known
            self._verify_slots(slots)
            r = slots["row"]
            ok = torch.isfinite(slots["best_norm"]).unsqueeze(1)
            out_x[r] = torch.where(ok, slots["best_x"], slots["x0"] + slots["delta"])
            out_norm[r] = slots["best_norm"]
        stats["iterations"] = it
        stats["best_norm"] = out_norm.cpu().numpy().astype(np.float64)
        self._ctx = None
        return out_x.detach().cpu().numpy(), stats

    # -- initial points ------------------------------------------------------------------
    def _initial_delta(self, rows: _Rows, shape, dev, stats):
        """Start perturbations for all rows: the given starts (pulled into the budget, or by
        bisection towards x0 when already feasible), a random start (budget mode, optional),
        or for "dos" a jump to the box face nearest in the attack norm (linearised)."""
        x0 = rows.x0
        R, D = x0.shape
        delta = project_ball(rows.start - x0, rows.cap, self.norm)  # inf caps: unchanged
        if self.mode == "budget" and self.random_start:
            gen = torch.Generator(device="cpu").manual_seed(self.seed)
            noise = (torch.rand(R, D, generator=gen) * 2 - 1).to(dev)
            scale = rows.cap / (D if self.norm == "l1" else math.sqrt(D) if self.norm == "l2" else 1)
            delta = project_ball(delta + noise * scale.unsqueeze(1), rows.cap, self.norm)
        delta = (x0 + delta).clamp_(0, 1) - x0
        g0 = self._constraints_nograd(x0 + delta, rows.target)
        stats["forwards"] += 1
        feasible = (g0 >= self.slack / 2).all(1)
        moved = delta.abs().amax(1) > 0
        if bool((feasible & moved).any()):
            delta = self._bisect(x0, delta, rows.target, feasible & moved)
            stats["forwards"] += 10
        if self._uses_faces(self._ctx["monitor"]):
            todo = ~feasible & ~moved & torch.isfinite(g0[:, 1]) & (rows.face >= 0)
            if bool(todo.any()):
                idx = torch.nonzero(todo).squeeze(1)
                delta[idx] = self._face_jump(x0[idx], rows.target[idx], rows.face[idx],
                                             rows.cap[idx])
                stats["forwards"] += 1
        return delta, g0

    def _constraints_nograd(self, x_flat, target, chunk: int = 4096):
        with torch.no_grad():
            return torch.cat([
                self._constraints(self._ctx["model"], self._ctx["monitor"], x_flat[i:i + chunk],
                                  target[i:i + chunk], self._ctx["shape"])[0]
                for i in range(0, len(x_flat), chunk)
            ])

    def _bisect(self, x0, delta, target, mask, iters: int = 10):
        idx = torch.nonzero(mask).squeeze(1)
        lo = torch.zeros(len(idx), device=x0.device)
        hi = torch.ones(len(idx), device=x0.device)
        d = delta[idx]
        for _ in range(iters):
            mid = (lo + hi) / 2
            g = self._constraints_nograd(x0[idx] + mid.unsqueeze(1) * d, target[idx])
            ok = (g >= self.slack / 2).all(1)
            hi = torch.where(ok, mid, hi)
            lo = torch.where(ok, lo, mid)
        out = delta.clone()
        out[idx] = (x0[idx] + hi.unsqueeze(1) * d).clamp(0, 1) - x0[idx]
        return out

    def _face_jump(self, x0, target, rank, cap):
        """DoS warm start: leave the box of class ``t`` through a face that is near in the
        attack norm to first order -- the ``rank``-th nearest (0 = nearest) -- landing ``slack``
        beyond it; FMN then refines around that face. Without this, the search follows the
        face nearest in *feature* units, which can be several times farther in pixel space.
        Only for monitors made of boxes (:func:`box_faces`).

        Per-unit input gradients come from one batched backward over ``d`` copies of each
        input; pixels at 0 (1) cannot move down (up), so they are left out of the rates."""
        model, monitor = self._ctx["model"], self._ctx["monitor"]
        faces = box_faces(monitor)
        relu, other = _tapped_layers(model, monitor)
        n, D = x0.shape
        dev = x0.device
        n_faces = int(rank.max()) + 1 if len(rank) else 1
        best = torch.full((n, n_faces), math.inf, device=dev)
        best_step = torch.zeros(n, n_faces, D, device=dev) if n_faces > 1 else None
        best_delta = torch.zeros_like(x0)
        for layer, (lo_all, hi_all, cls) in faces.items():
            d = int(monitor.dims_[layer])
            chunk = max(1, 4096 // d)
            for c0 in range(0, n, chunk):
                sl = slice(c0, min(n, c0 + chunk))
                xs = x0[sl]
                zv, grad = self._unit_gradients(xs, layer, d, relu, other)
                lo_t, hi_t = self._holding_box(zv, target[sl], lo_all, hi_all, cls,
                                               layer in relu)
                dist, need = self._face_distances(grad, xs, zv, lo_t, hi_t)
                k = min(n_faces, dist.shape[1])
                dk, jk = torch.topk(dist, k, dim=1, largest=False)  # (m, k)
                for f in range(k):  # a few faces
                    step = self._face_step(grad, xs, need, jk[:, f], dk[:, f])
                    self._merge_face(best, best_step, best_delta, sl, dk[:, f], step, f)
        pick = rank.clamp_max(n_faces - 1)
        if best_step is not None:
            rows = torch.arange(n, device=dev)
            best_delta = best_step[rows, pick]
            ok = torch.isfinite(best[rows, pick])
        else:
            ok = torch.isfinite(best[:, 0])
        best_delta = best_delta * ok.to(best_delta.dtype).unsqueeze(1)
        best_delta = project_ball(best_delta, cap, self.norm)  # inf caps: unchanged
        return (x0 + best_delta).clamp(0, 1) - x0

    def _unit_gradients(self, xs, layer, d, relu, other):
        """``(z (m, d), grad (m, d, D))``: the monitored units of ``layer`` at ``xs`` and the
        input gradient of each unit, from one backward over ``d`` copies of each input."""
        model, shape = self._ctx["model"], self._ctx["shape"]
        m, D = xs.shape
        xr = xs.repeat_interleave(d, 0).requires_grad_(True)
        was = model.training
        model.eval()
        try:
            with tap(model, relu, inputs=True) as pre, tap(model, other) as post:
                model(xr.view(-1, *shape))
        finally:
            model.train(was)
        z = (pre if layer in relu else post)[layer].reshape(m, d, d)
        diag = z.diagonal(dim1=1, dim2=2)  # (m, d): unit j of copy j
        grad, = torch.autograd.grad(diag.sum(), xr)
        return diag.detach(), grad.view(m, d, D)

    def _face_distances(self, grad, xs, zv, lo_t, hi_t):
        """``(dist (m, 2d), need (m, 2d))``: per unit and direction (up through ``hi``, down
        through ``lo``) the first-order distance in the attack norm to ``slack`` beyond the
        face, and the feature change that needs (NaN: the face cannot be crossed)."""
        m, d, D = grad.shape
        # rates: dual norms of the movable part of +grad (up) and -grad (down);
        # a pixel at 0 only moves up, at 1 only down: with up_ok = [x < 1],
        # dn_ok = [x > 0] and gn = min(grad, 0), e.g. for L2
        #   rate_up^2 = sum g^2 up_ok + gn^2 (dn_ok - up_ok),
        #   rate_dn^2 = sum g^2 dn_ok - gn^2 (dn_ok - up_ok)
        up_ok = (xs < 1).to(grad.dtype)
        dn_ok = (xs > 0).to(grad.dtype)
        both = torch.stack([up_ok, dn_ok], 2)  # (m, D, 2)
        diff = (dn_ok - up_ok).unsqueeze(2)
        gn = grad.clamp_max(0) if self.norm != "l1" else None
        if self.norm == "l2":
            full = torch.bmm(grad.square(), both)  # (m, d, 2)
            corr = torch.bmm(gn.square_(), diff).squeeze(2)
            rate_up = (full[..., 0] + corr).clamp_min(0).sqrt()
            rate_dn = (full[..., 1] - corr).clamp_min(0).sqrt()
        elif self.norm == "linf":
            full = torch.bmm(grad.abs(), both)
            corr = torch.bmm(gn, diff).squeeze(2)
            rate_up = (full[..., 0] - corr).clamp_min(0)
            rate_dn = (full[..., 1] + corr).clamp_min(0)
        else:
            rate_up = rate_dn = None
        gap_up = hi_t - zv  # distance inside, to the upper face
        gap_dn = zv - lo_t  # NaN where the lower face cannot be crossed
        need = torch.cat([gap_up, gap_dn], 1).clamp_min(0) + self.slack  # NaN stays
        if self.norm == "l1":  # pixels saturate: greedy box-aware fill per unit
            g2 = grad.reshape(m * d, D)
            x2 = xs.repeat_interleave(d, 0)
            cost_up, _ = l1_fill(g2, x2, need[:, :d].reshape(-1))
            cost_dn, _ = l1_fill(-g2, x2, need[:, d:].reshape(-1))
            dist = torch.cat([cost_up.view(m, d), cost_dn.view(m, d)], 1)
        else:
            rates = torch.cat([rate_up, rate_dn], 1)
            dist = need / rates.clamp_min(1e-12)
            dist = dist.masked_fill(rates <= 0, math.inf)
        dist = dist.masked_fill(torch.isnan(need), math.inf)
        return dist, need

    def _face_step(self, grad, xs, need, j, dist):
        """The first-order input step through face ``j`` (per row; ``j < d``: up through the
        unit's ``hi``, else down through its ``lo``) of length ``dist``."""
        m, d, _ = grad.shape
        unit = j % d
        sign = 1.0 - 2.0 * (j >= d).to(grad.dtype)  # +1: up through hi
        gj = grad[torch.arange(m, device=xs.device), unit] * sign.unsqueeze(1)
        gj = torch.minimum(torch.maximum(gj, xs * -1e30), (1 - xs) * 1e30)
        if self.norm == "l1":
            gap_j = need.gather(1, j.view(-1, 1)).squeeze(1)
            _, step = l1_fill(gj, xs, torch.nan_to_num(gap_j, posinf=0.0))
            return step
        return self._unit_step(gj, dist)

    @staticmethod
    def _merge_face(best, best_step, best_delta, sl, dist, step, f):
        """Keep, per row, the ``n_faces`` smallest distances over layers (sorted insertion)."""
        if best_step is None:  # one face: a running minimum
            take = dist < best[sl, 0]
            best[sl, 0] = torch.where(take, dist, best[sl, 0])
            best_delta[sl] = torch.where(take.unsqueeze(1), step, best_delta[sl])
            return
        bs, bst = best[sl], best_step[sl]
        dcat = torch.cat([bs, dist.unsqueeze(1)], 1)
        scat = torch.cat([bst, step.unsqueeze(1)], 1)
        order = torch.argsort(dcat, dim=1)[:, : bs.shape[1]]
        best[sl] = dcat.gather(1, order)
        best_step[sl] = scat.gather(1, order.unsqueeze(2).expand(-1, -1, scat.shape[2]))

    def _unit_step(self, gj, dist):
        """L2 / Linf: the first-order step of length ``dist`` raising a unit with gradient
        ``gj`` (L1 uses :func:`l1_fill`)."""
        dist = torch.where(torch.isfinite(dist), dist, torch.zeros_like(dist))
        if self.norm == "l2":
            return gj * (dist / torch.linalg.vector_norm(gj, 2, 1).clamp_min(1e-30)).unsqueeze(1)
        return torch.sign(gj) * dist.unsqueeze(1)

    @staticmethod
    def _holding_box(zv, target, lo_all, hi_all, cls, relu_pre):
        """Per row, the (lo, hi) of the class-``t`` box that holds ``zv`` most deeply; ``lo`` is
        NaN where the lower face cannot be crossed (ReLU pre-activation with ``lo <= 0``)."""
        m, d = zv.shape
        dev = zv.device
        lo_t = torch.full((m, d), math.nan, device=dev)
        hi_t = torch.full((m, d), math.nan, device=dev)
        tg = target.cpu().numpy()
        for c in np.unique(tg):  # per class, not per sample
            sel = torch.as_tensor(np.flatnonzero(tg == c), device=dev)
            b = np.flatnonzero(cls == c)
            if len(b) == 0:
                continue
            L = torch.as_tensor(lo_all[b], device=dev)
            H = torch.as_tensor(hi_all[b], device=dev)
            v = zv[sel].unsqueeze(1)
            low_ok = (L > 0) if relu_pre else torch.ones_like(L, dtype=torch.bool)
            lower = torch.where(low_ok, v - L, torch.full_like(L, math.inf))
            kb = torch.minimum(lower, H - v).amin(-1).argmax(1)
            lo_t[sel] = torch.where(low_ok[kb], L[kb], torch.full_like(L[kb], math.nan))
            hi_t[sel] = H[kb]
        return lo_t, hi_t

    # -- slots ---------------------------------------------------------------------------
    def _new_slots(self, ids: torch.Tensor, delta0: torch.Tensor) -> dict:
        rows = self._ctx["rows"]
        x0 = rows.x0[ids]
        b = len(ids)
        dev = x0.device
        budget = self.mode == "budget"
        inf = torch.full((b,), math.inf, device=dev)
        return {
            "row": ids, "x0": x0, "delta": delta0[ids].clone(), "target": rows.target[ids],
            "cap": rows.cap[ids],
            "eps": rows.cap[ids].clone() if budget else torch.full((b,), math.inf, device=dev),
            "worst": lp_norm(torch.maximum(x0, 1 - x0), self.norm),
            "best_norm": inf.clone(), "best_x": x0.clone(), "cand_norm": inf.clone(),
            "cand_x": x0.clone(), "has_cand": torch.zeros(b, dtype=torch.bool, device=dev),
            "found": torch.zeros(b, dtype=torch.bool, device=dev),
            "n_est": torch.full((b, 2), math.nan, device=dev),
            "k": torch.zeros(b, dtype=torch.int64, device=dev),
            "ref_norm": inf.clone(), "ref_step": torch.zeros(b, dtype=torch.int64, device=dev),
            "boost": torch.ones(b, device=dev),
        }

    def _step(self, S: dict) -> None:
        """One normalised gradient step for every slot (in place): evaluate both constraints,
        keep a feasible iterate as a candidate, pick the gradient to follow, set the radius
        and the step length, step and project."""
        norm, slack, budget = self.norm, self.slack, self.mode == "budget"
        x0, delta = S["x0"], S["delta"]
        xa = (x0 + delta).requires_grad_(True)
        g, _ = self._constraints(self._ctx["model"], self._ctx["monitor"], xa, S["target"],
                                 self._ctx["shape"])
        gd = g.detach()
        feas = (gd >= slack / 2).all(1)
        dn = lp_norm(delta, norm)
        known = self._keep_candidates(S, xa, feas, dn)
        k = S["k"]
        alpha = _cosine(k, self.steps, self.lr, self.lr / (10.0 if budget else 100.0))
        alpha = (alpha * S["boost"]).clamp_max(1.0)
        grads, choose = self._step_gradient(S, g, xa, alpha)
        gch = gd.gather(1, choose.view(-1, 1)).squeeze(1)
        nch = S["n_est"].gather(1, choose.view(-1, 1)).squeeze(1).clamp_min(1e-12)
        xd = xa.detach()
        # pixels at 0 cannot go down, at 1 not up: clip those gradient entries to 0
        # (min/max against +-1e30-scaled bounds: much faster than boolean masks on CPU)
        grads = torch.minimum(torch.maximum(grads, xd * -1e30), (1 - xd) * 1e30)
        if budget:
            e = S["eps"]
            # step length: relative to the radius, but never much beyond the linearised
            # distance to the goal (large budgets would otherwise make PGD jump about)
            reach = dn + 2 * (slack - gch).clamp_min(0) / nch
            step_len = alpha * torch.minimum(e, reach.clamp_min(1e-3 * e))
        else:
            e = self._radius(S, grads, xd, gch, nch, feas, dn, known)
            S["eps"] = e
            step_len = alpha * e
        u = steepest_direction(grads, norm, self.l1_sparsity)
        d_new = torch.addcmul(delta, step_len.unsqueeze(1), u)
        d_new = project_ball(d_new, e, norm)
        S["delta"] = (x0 + d_new).clamp_(0, 1) - x0
        S["k"] = k + 1

    @staticmethod
    def _keep_candidates(S: dict, xa, feas, dn):
        """Feasible iterates smaller than anything known (and within the row's cap) become
        the row's pending candidate; returns the smallest known norm per row."""
        known = torch.minimum(S["best_norm"], S["cand_norm"])
        better = feas & (dn < known) & (dn <= S["cap"])
        if bool(better.any()):
            S["cand_norm"] = torch.where(better, dn, S["cand_norm"])
            S["cand_x"][better] = xa.detach()[better]
            S["has_cand"] |= better
            known = torch.minimum(known, S["cand_norm"])
        S["found"] |= feas
        return known

    def _step_gradient(self, S: dict, g, xa, alpha):
        """``(gradient to follow (R, D), pushed constraint (R,))``: the constraint with the
        smallest normalised slack, its gradient alone (one backward) unless the other
        constraint is near, the dual-norm estimates are fresh or the family needs both
        gradients (two backwards; gradient surgery or :meth:`_direction`). Updates
        ``S["n_est"]``, the gradients' dual norms."""
        norm, slack = self.norm, self.slack
        gd = g.detach()
        n_est = S["n_est"]
        fresh = torch.isnan(n_est[:, 0])
        score = (gd - slack) / n_est.clamp_min(1e-12)  # normalised slack (linearised distance)
        # the other constraint is "near" when this step could break it
        near = score.amax(1) < 2 * alpha * S["eps"].clamp_max(1e30)
        if self.two_gradients or bool(fresh.any()) or bool(near.any()):
            gr1, = torch.autograd.grad(g[:, 0].sum(), xa, retain_graph=True)
            gr2, = torch.autograd.grad(g[:, 1].sum(), xa)
            n_est = torch.stack([dual_norm(gr1, norm), dual_norm(gr2, norm)], 1)
            ne = n_est.clamp_min(1e-12)
            score = (gd - slack) / ne
            choose = score.argmin(1)
            if self.two_gradients:
                grads, choose = self._direction(gr1, gr2, gd, choose)
            else:
                w = (choose == 0).to(gr1.dtype).unsqueeze(1)
                gc = torch.lerp(gr2, gr1, w)
                go = torch.lerp(gr1, gr2, w)
                # gradient surgery: where the other constraint is near and the two gradients
                # conflict, drop the component of the step that would break it
                near = score.amax(1) < 2 * alpha * S["eps"].clamp_max(1e30)
                dot = (gc * go).sum(1)
                coef = torch.where(near & (dot < 0), dot / (go * go).sum(1).clamp_min(1e-30),
                                   torch.zeros_like(dot))
                grads = gc - coef.unsqueeze(1) * go
        else:
            choose = score.argmin(1)  # the constraint to push: smallest normalised slack
            sel = g.gather(1, choose.view(-1, 1))
            grads, = torch.autograd.grad(sel.sum(), xa)
            n_est = n_est.scatter(1, choose.view(-1, 1), dual_norm(grads, norm).view(-1, 1))
        S["n_est"] = n_est
        return grads, choose

    def _radius(self, S: dict, grads, xd, gch, nch, feas, dn, known):
        """Minimal mode: the next radius of every row (FMN's adaptive ball, see the module
        docstring), within the row's worst case and cap."""
        slack = self.slack
        gamma = _cosine(S["k"], self.steps, *self.gamma)
        e_prev = S["eps"]
        dist = (slack - gch) / nch  # < 0: how far inside the feasible set (linearised)
        if self.norm == "l1":  # pixels saturate: the box-aware first-order L1 distance
            out = (dist > 0) & ~S["found"]
            if bool(out.any()):
                cost, _ = l1_fill(grads[out], xd[out], (slack - gch)[out])
                dist = dist.clone()
                dist[out] = torch.where(torch.isfinite(cost), cost, dist[out])
        # feasible: shrink by (1 - gamma) as FMN, or at once to the linearised boundary
        # when it is much closer (at most halving the radius per step)
        inside = torch.maximum(dn + self.shrink * dist, dn / 2)
        e = torch.where(
            feas, torch.minimum(torch.minimum(e_prev * (1 - gamma), known), inside),
            torch.where(S["found"] & torch.isfinite(e_prev), e_prev * (1 + gamma),
                        # not found yet: the linearised distance, but growing at most
                        # geometrically (a PGD-like search on slowly widening spheres;
                        # a bad linearisation cannot make the radius run away)
                        torch.minimum(dn + dist.clamp_min(0), e_prev * (1 + self.grow))),
        )
        return torch.minimum(torch.minimum(e, S["worst"]), S["cap"])

    def _verify_slots(self, S: dict) -> None:
        """Exact float32 check (``monitor.predict``) of pending candidates; promote passes."""
        idx = torch.nonzero(S["has_cand"]).squeeze(1)
        if len(idx) == 0:
            return
        ctx = self._ctx
        rows_i = S["row"][idx].cpu().numpy()
        xs = S["cand_x"][idx].detach().cpu().numpy().reshape(-1, *ctx["shape"])
        pred, acc = ctx["monitor"].predict(ctx["model"], xs)
        pred = np.asarray(pred)
        ok = decide(self.goal, ctx["pred0"][rows_i], pred, np.asarray(acc, bool),
                    None if ctx["labels"] is None else ctx["labels"][rows_i],
                    None if ctx["targets"] is None else ctx["targets"][rows_i])
        if self.goal != "intrude-any":  # the row's own class must be the one reached
            ok &= pred == S["target"][idx].cpu().numpy()
        good = idx[torch.as_tensor(ok, device=idx.device)]
        good = good[S["cand_norm"][good] < S["best_norm"][good]]
        S["best_norm"][good] = S["cand_norm"][good]
        S["best_x"][good] = S["cand_x"][good]
        S["has_cand"][idx] = False
        S["cand_norm"][idx] = math.inf

    def _finished(self, S: dict) -> torch.Tensor:
        bn = S["best_norm"]
        improved = bn < S["ref_norm"] * (1 - self.rtol)
        S["ref_norm"] = torch.where(improved, bn, S["ref_norm"])
        S["ref_step"] = torch.where(improved, S["k"], S["ref_step"])
        solved = torch.isfinite(bn)
        if self.mode == "minimal":
            solved &= S["k"] - S["ref_step"] >= self.patience
        out = S["k"] >= self.steps
        # a minimal-mode row that found nothing gets one more round from x0 with bolder steps
        retry = out & ~torch.isfinite(bn) & (S["boost"] == 1) & (self.mode == "minimal")
        if bool(retry.any()):
            S["k"] = torch.where(retry, torch.zeros_like(S["k"]), S["k"])
            S["boost"] = torch.where(retry, torch.full_like(S["boost"], self.retry_boost), S["boost"])
            S["eps"] = torch.where(retry, torch.full_like(S["eps"], math.inf), S["eps"])
            S["delta"] = S["delta"] * (~retry).to(S["delta"].dtype).unsqueeze(1)
            S["n_est"] = torch.where(retry.unsqueeze(1), torch.full_like(S["n_est"], math.nan),
                                     S["n_est"])
            out &= ~retry
        return solved | out

    # ------------------------------------------------------------------ final touches
    def _repair(self, p: _Problem, x: np.ndarray, lost: np.ndarray, caps: np.ndarray) -> np.ndarray:
        """Samples verified during the search but not in the final batch (BLAS batch-size
        rounding): try ``x0 + (1 + eta) (x - x0)`` for a few small eta (kept within the budget),
        keep the first that verifies."""
        x0 = p.x0
        out = x.copy()
        idx = np.flatnonzero(lost)
        for eta in (1e-3, 1e-2, 5e-2):
            if len(idx) == 0:
                break
            cand = np.clip(x0[idx] + (1 + eta) * (x[idx] - x0[idx]), 0, 1).astype(np.float32)
            cand = fit_to_budget(x0[idx], cand, self.norm, caps[idx])
            pred, acc = p.monitor.predict(p.model, cand)
            ok = decide(self.goal, p.pred0[idx], np.asarray(pred), np.asarray(acc, bool),
                        None if p.labels is None else p.labels[idx],
                        None if p.targets is None else p.targets[idx])
            out[idx[ok]] = cand[ok]
            idx = idx[~ok]
        return out

def attack(model, monitor, inputs, *, goal: str = "dos", norm: str = "l2", mode: str = "minimal",
           epsilon: float | None = None, labels=None, targets=None, starts=None,
           **options) -> AttackResult:
    """Functional shortcut: ``MonitorAttack(goal, norm, mode, epsilon, **options)(model, ...)``."""
    return MonitorAttack(goal=goal, norm=norm, mode=mode, epsilon=epsilon, **options)(
        model, monitor, inputs, labels=labels, targets=targets, starts=starts
    )
