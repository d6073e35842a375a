"""The paper's optimisation attacks on a classifier and its monitor, solved with SciPy.

Four problems, {Attack 1, Attack 2} x {L1, L2} (Hajj Ibrahim & Nassar, section 3.1), from an
input ``x0`` whose prediction is ``c = predict(x0)``:

- Attack 1, ``goal="dos"`` (valid -> invalid): ``x0`` accepted; find the closest ``x`` with
  ``predict(x) = c`` and the monitor rejecting ``x``.
- Attack 2, ``goal="intrude"`` (invalid -> valid): ``x0`` rejected; find the closest ``x`` with
  ``predict(x) = c`` and the monitor accepting ``x``. ``"intrude-any"`` accepts any predicted
  class; ``"combined"`` asks for ``predict(x) != label`` and acceptance (the paper's attack on
  FGSM outputs, which drops the same-prediction constraint).
- Distance: ``norm="l1"`` with the paper's auxiliary variables in the input space (minimise
  ``sum z`` subject to ``z_i >= +-(x_i - x0_i)``; in a subspace, where n auxiliary variables
  would defeat the purpose, the L1 distance itself); ``norm="l2"``: ``||x - x0||_2`` (minimised
  as its square, which has the same minimisers and is smooth at ``x0``).

Constraint encodings (``encoding=``):

- ``"indicator"``: the paper's literal constraints, ``monitor(x) = 0/1`` and
  ``predict(x) = c``, as 0/1 indicators written ``indicator - 0.5 >= 0`` (exact float32 model
  and monitor). Piecewise constant: every gradient is zero, finite differences see nothing.
- ``"margin"``: the same feasible set as continuous functions with exact torch gradients (float64
  copy of the model): the logit margin ``logit_c - max_{j != c} logit_j`` and the monitor's
  signed margin (``monitor.forward_margin``, >= 0 iff accepted: any monitor of the protocol),
  each with a small slack so the float32 point really is on the right side.

Solvers (``solver=``): ``"slsqp"``, ``"cobyla"`` (``scipy.optimize.minimize``), ``"shgo"``,
``"de"`` (``differential_evolution``, vectorised). Search spaces (``space=``): see
:mod:`boxhack.attacks.subspace`.

Budgets, not clocks: a solve ends when its solver stops by itself or when its budget is spent:
the solver's own limits (``solver_options``: SLSQP ``maxiter``, COBYLA ``maxiter`` = evaluations,
DE ``maxiter`` = generations, SHGO sampling and local iterations; defaults in
:func:`solver_settings`) and ``max_evals`` (points evaluated). So the same call gives the same
result on a quiet and on a busy machine. Every solve runs in a sandbox process
(:mod:`boxhack.infra.sandbox`) under a memory limit and a wall-clock *safety net*
(``time_limit``, counted from the moment the solve starts in its process) that only kills a
solve stuck in C code; choose it far above the budget's normal run time. A killed solve's
outcome is ``"timeout"``: it keeps the best exactly-checked point it had streamed and reports
its true number of evaluations (a shared counter the parent reads after the kill).

Inside, every point the solver evaluates that satisfies the encoded constraints is a
candidate. At the end the solver's answer and the best candidate (each also pushed slightly
further along its direction from the start) are checked with the exact float32 model and
monitor, and the closest one that meets the goal is returned. The final word is
:func:`boxhack.attacks.verify.verify`: nothing counts as a success unless it passes there.

Input bounds: the solvers search the unit box. A model with other bounds ``(lo, hi)``
(:class:`~boxhack.models.domain.InputDomain`) is solved through
:func:`~boxhack.models.domain.unit_domain` and each perturbation mapped back (times ``hi - lo``;
pixels left alone stay bit for bit); :func:`~boxhack.attacks.verify.verify` then decides in the
user's space, so successes and norms are the user's (``info["bounds"]`` says so).

Outcomes per sample (``result.info["outcome"]``): ``"success"`` (verified), ``"failed"`` (the
solver ended, or its budget was spent, without a verified attack), ``"timeout"`` (killed by the
safety net), ``"out-of-memory"``, ``"error"``.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import (
    Bounds,
    LinearConstraint,
    NonlinearConstraint,
    differential_evolution,
    minimize,
    shgo,
)

from boxhack.attacks.base import Attack, check_options
from boxhack.attacks.subspace import make_space, parse_space
from boxhack.attacks.verify import AttackResult, as_batch, decide, starting_state, verify
from boxhack.errors import BoxhackError
from boxhack.infra.sandbox import Outcome, SandboxPool, Task, TaskContext, shared_pool
from boxhack.models.domain import DEFAULT_BOUNDS, from_unit, input_bounds, to_unit, unit_domain

__all__ = ["ENCODINGS", "GOALS", "NORMS", "OUTCOMES", "SOLVERS", "OptimisationAttack",
           "n_variables", "optimise_attack", "solver_settings"]

SOLVERS = ("slsqp", "cobyla", "shgo", "de")
NORMS = ("l1", "l2")
ENCODINGS = ("margin", "indicator")
GOALS = ("dos", "intrude", "intrude-any", "combined")
NOT_ATTACKED = "not-attacked"  # OptimisationAttack: an input whose goal holds already, or ineligible
OUTCOMES = ("success", "failed", "timeout", "out-of-memory", "error", NOT_ATTACKED)

SLACK = 1e-4  # margin encoding: constraints are margin >= SLACK (logit and monitor units)
PUSHES = (0.0, 1e-4, 1e-3, 1e-2, 3e-2, 0.1)  # tried on x0 + (1 + t)(x - x0) before giving up
REPORT_EVERY = 50  # evaluations between exact checks of a new best candidate (for a kill)
_TASK = "boxhack.attacks.optimisation:solve_task"
_PRELOAD = ("boxhack.attacks.optimisation", "scipy.optimize")


# ============================================================================================
# Public entry points (parent process).


class OptimisationAttack(Attack):
    """The paper's optimisation attacks, solved with SciPy, as an :class:`~boxhack.attacks.base.Attack`.

    ``OptimisationAttack(goal, norm, solver, encoding, space, ...)(model, monitor, inputs,
    labels=None, starts=None, train_inputs=None, input_shape=None)`` solves one problem per
    input (see the module docstring) against any monitor of the protocol (the ``"margin"``
    encoding uses the monitor's differentiable ``forward_margin``). Inputs that may not be
    attacked (:func:`~boxhack.attacks.verify.starting_state`: the goal already holds at
    ``x0``, or Attack 1 from a misclassified input when ``labels`` are given) are returned
    unchanged with outcome ``"not-attacked"``; :func:`optimise_attack` refuses them instead.

    Parameters
    ----------
    goal : "dos" (Attack 1) | "intrude" (Attack 2, same prediction) | "intrude-any" |
        "combined" (prediction != ``labels`` and accepted), or a paper alias ("1", "2", "2-any").
    norm : "l1" | "l2";  solver : "slsqp" | "cobyla" | "shgo" | "de";
    encoding : "margin" | "indicator";  space : "input" | "pca:K" | "blocks:B".
    max_evals : int or None -- budget of points evaluated per solve (``None``: the solver's own
        limits).
    solver_options : dict -- the solver's budget and settings (override :func:`solver_settings`).
    time_limit : float or None -- the safety net: seconds after its start at which a solve's
        process is killed (outcome ``"timeout"``). It does not decide results: set it far
        above the budget's normal run time.
    memory_limit_mb : float or None -- extra address space a solve may take.
    n_jobs : int -- solves run in parallel (one process each).
    seed : int -- random seed (DE; input ``i`` of the batch gets ``[seed, i]``).
    isolate : bool -- ``False`` runs solves in this process (no safety net or memory limit; for
        debugging).

    Per call: ``labels`` (true labels: the reference of "combined", default the predictions;
    with "dos" they make misclassified inputs ineligible), ``starts`` (initial points, e.g.
    FGSM outputs: the search is centred there, the distance measured to ``x0``; SHGO ignores
    them in the input space), ``train_inputs`` (needed by ``space="pca:K"``), ``input_shape``
    (the model's per-sample input shape, inferred when omitted).

    ``result.info`` holds per-sample lists ``outcome``, ``wall_s``, ``nfev``, ``nit``,
    ``message``, ``stopped_by`` and the settings (``budget``: ``max_evals`` and the solver's
    effective settings).
    """

    goals = GOALS
    name = "scipy"

    def __init__(self, goal: str = "dos", norm: str = "l2", solver: str = "slsqp",
                 encoding: str = "margin", space: str = "input", *, max_evals: int | None = None,
                 solver_options: dict | None = None, time_limit: float | None = 600.0,
                 memory_limit_mb: float | None = 4096, n_jobs: int = 1, seed: int = 0,
                 isolate: bool = True) -> None:
        self.goal = self._set_goal(goal)
        self.norm = _choose("norm", norm, NORMS)
        self.solver = _choose("solver", solver, SOLVERS)
        self.encoding = _choose("encoding", encoding, ENCODINGS)
        self.space = space
        self._kind, _ = parse_space(space)
        _check_limits(time_limit, memory_limit_mb, max_evals, n_jobs)
        self.max_evals = max_evals
        self.solver_options = dict(solver_options) if solver_options else None
        self.time_limit = time_limit
        self.memory_limit_mb = memory_limit_mb
        self.n_jobs = n_jobs
        self.seed = int(seed)
        self.isolate = bool(isolate)

    def run(self, model, monitor, inputs, *, labels=None, targets=None, starts=None,
            goal: str | None = None, train_inputs=None, input_shape=None,
            **options) -> AttackResult:
        check_options(type(self).__name__, options, ("train_inputs", "input_shape"))
        if targets is not None:
            raise BoxhackError(f"{type(self).__name__} takes no targets (its goals: "
                               f"{', '.join(self.goals)})")
        attack = self
        if goal is not None and goal != self.goal:
            attack = copy.copy(self)
            attack.goal = self._set_goal(goal)
        return attack._attack(model, monitor, inputs, labels=labels, starts=starts,
                              train_inputs=train_inputs, input_shape=input_shape, strict=False)

    def _attack(self, model, monitor, x0, *, labels, starts, train_inputs, input_shape,
                strict: bool) -> AttackResult:
        """Validate, solve the inputs that are attacked (``strict``: all of them, or an
        error), verify the whole batch."""
        if not getattr(monitor, "is_fitted", True):
            raise BoxhackError("the monitor is not fitted; fit it or load one with "
                               "boxhack.monitor.load_monitor")
        if input_bounds(model) != DEFAULT_BOUNDS:
            return self._attack_rescaled(model, monitor, x0, labels=labels, starts=starts,
                                         train_inputs=train_inputs, input_shape=input_shape,
                                         strict=strict)  # fmt: skip
        model.eval()
        x0_arr, shape = _as_inputs(model, x0, input_shape)
        n = len(x0_arr)
        train_inputs = _check_space_inputs(self.space, self._kind, shape, train_inputs)
        starts_arr = None
        if starts is not None:
            starts_arr = as_batch(starts, "starts", shape)
            if len(starts_arr) != n:
                raise BoxhackError(f"starts has {len(starts_arr)} inputs, x0 has {n}")
        labels_arr = _check_labels(labels, n, monitor)
        pred0, acc0 = monitor.predict(model, x0_arr)
        pred0 = np.asarray(pred0, dtype=np.int64)
        acc0 = np.asarray(acc0, dtype=bool)
        if strict:
            _check_start_state(self.goal, acc0)
            todo = np.arange(n)
        else:
            todo = np.flatnonzero(starting_state(self.goal, pred0, acc0, labels_arr)[0])
        nv = n_variables(self.solver, self.norm, self.space, shape)
        settings = solver_settings(self.solver, nv, self.solver_options)
        tasks = self._tasks(model, monitor, x0_arr, starts_arr, pred0,
                            pred0.copy() if labels_arr is None else labels_arr, todo,
                            train_inputs if self._kind == "pca" else None, settings)  # fmt: skip
        outcomes = self._solve(tasks)
        x_out, per = _collect(outcomes, todo, x0_arr, shape)
        result = verify(
            model, monitor, x0_arr, x_out, self.goal,
            labels=labels_arr, pred0=pred0, accepted0=acc0,
        )  # fmt: skip
        per["outcome"] = [NOT_ATTACKED] * n
        for out, i in zip(outcomes, todo):
            per["outcome"][i] = _outcome(bool(result.success[i]), out)
        result.info.update(per)
        result.info.update(
            solver=self.solver, norm=self.norm, encoding=self.encoding, space=self.space,
            goal=self.goal, time_limit=self.time_limit, memory_limit_mb=self.memory_limit_mb,
            max_evals=self.max_evals,
            budget={"max_evals": self.max_evals, "solver": settings, "n_variables": nv},
        )  # fmt: skip
        return result

    def _attack_rescaled(self, model, monitor, x0, *, labels, starts, train_inputs,
                         input_shape, strict: bool) -> AttackResult:
        """A model with bounds (lo, hi) other than (0, 1): solve in the unit box
        (:func:`~boxhack.models.domain.unit_domain`: ``u = (x - lo) / (hi - lo)``), map each
        perturbation back (pixels the solver left alone stay bit for bit), and verify in the
        user's space with the user's model: successes and norms are the user's. A point that
        met the goal in the unit box but not after the mapping (float rounding on a face) is
        pushed slightly further along its direction (:data:`PUSHES`), checked there too."""
        lo, hi = input_bounds(model)
        model.eval()
        x0_arr, shape = _as_inputs(model, x0, input_shape, bounds=(lo, hi))

        u0 = to_unit(x0_arr, (lo, hi))
        us = None if starts is None else to_unit(as_batch(starts, "starts", shape, (lo, hi)),
                                                 (lo, hi))
        ut = (None if train_inputs is None
              else to_unit(np.asarray(train_inputs, np.float32), (lo, hi)))
        res = self._attack(unit_domain(model), monitor, u0, labels=labels, starts=us,
                           train_inputs=ut, input_shape=shape, strict=strict)  # fmt: skip
        x = from_unit(x0_arr, u0, res.x, (lo, hi))
        labels_arr = res.labels
        pred0, acc0 = monitor.predict(model, x0_arr)
        out = verify(model, monitor, x0_arr, x, self.goal, labels=labels_arr, pred0=pred0,
                     accepted0=acc0)  # fmt: skip
        lost = res.success & ~out.success
        for t in PUSHES[1:]:
            if not lost.any():
                break
            rows = np.flatnonzero(lost)
            d = x[rows].astype(np.float64) - x0_arr[rows].astype(np.float64)
            push = np.clip(x0_arr[rows] + (1.0 + t) * d, lo, hi).astype(np.float32)
            push = np.where(d == 0, x0_arr[rows], push)
            cand = verify(model, monitor, x0_arr[rows], push, self.goal,
                          labels=None if labels_arr is None else labels_arr[rows],
                          pred0=np.asarray(pred0)[rows], accepted0=np.asarray(acc0)[rows])
            x[rows[cand.success]] = push[cand.success]
            lost[rows[cand.success]] = False
        out = verify(model, monitor, x0_arr, x, self.goal, labels=labels_arr, pred0=pred0,
                     accepted0=acc0)  # fmt: skip
        outcome = list(res.info["outcome"])
        for i, o in enumerate(outcome):  # the user's space decides (a kill stays a kill)
            if o in ("success", "failed"):
                outcome[i] = "success" if out.success[i] else "failed"
        out.info.update(res.info, outcome=outcome, bounds=[lo, hi])
        return out

    def _tasks(self, model, monitor, x0_arr, starts_arr, pred0, labels_eff, todo,
               train_inputs, settings: dict) -> list[Task]:
        """One sandbox task per input attacked: its problem, the model (packed once) and the
        monitor. Input ``i`` of the batch gets the seed ``[seed, i]``."""
        packed_model = _pack_model(model)
        tasks = []
        for i in todo:
            args = {
                "model": packed_model, "monitor": monitor, "x0": x0_arr[i],
                "start": None if starts_arr is None else starts_arr[i],
                "c0": int(pred0[i]), "label": int(labels_eff[i]), "goal": self.goal,
                "norm": self.norm, "solver": self.solver, "encoding": self.encoding,
                "space": self.space, "train_inputs": train_inputs,
                "max_evals": self.max_evals, "seed": [self.seed, int(i)], "options": settings,
            }  # fmt: skip
            tasks.append(Task(_TASK, args, self.time_limit, self.memory_limit_mb))
        return tasks

    def _solve(self, tasks: list[Task]) -> list[Outcome]:
        if not self.isolate:
            return [_run_inline(t) for t in tasks]
        pool: SandboxPool = shared_pool(self.n_jobs, _PRELOAD)
        pool.size = max(1, self.n_jobs)
        return pool.run(tasks)


def optimise_attack(
    model,
    monitor,
    x0,
    *,
    goal: str = "dos",
    norm: str = "l2",
    solver: str = "slsqp",
    encoding: str = "margin",
    space: str = "input",
    labels=None,
    starts=None,
    time_limit: float | None = 600.0,
    memory_limit_mb: float | None = 4096,
    max_evals: int | None = None,
    n_jobs: int = 1,
    train_inputs=None,
    seed: int = 0,
    input_shape: tuple[int, ...] | None = None,
    solver_options: dict | None = None,
    isolate: bool = True,
) -> AttackResult:
    """Run the optimisation attack ``goal`` on each input of ``x0``; returns a verified result.

    The functional form of :class:`OptimisationAttack` (the arguments are documented there),
    with one difference: every input must be attackable. ``x0`` may be one input or a batch
    ``(N, *input_shape)``, values within the model's input bounds
    (:func:`~boxhack.models.domain.input_bounds`, [0, 1] unless declared).

    Raises:
        BoxhackError: bad names, shapes or values, or ``x0`` already in the goal's end state
            (Attack 1 from a rejected input, Attack 2 from an accepted one).
    """
    attack = OptimisationAttack(
        goal, norm, solver, encoding, space, max_evals=max_evals, solver_options=solver_options,
        time_limit=time_limit, memory_limit_mb=memory_limit_mb, n_jobs=n_jobs, seed=seed,
        isolate=isolate,
    )  # fmt: skip
    return attack._attack(model, monitor, x0, labels=labels, starts=starts,
                          train_inputs=train_inputs, input_shape=input_shape, strict=True)


def _collect(outcomes, todo, x0_arr: np.ndarray, shape) -> tuple[np.ndarray, dict]:
    """The points the solves of inputs ``todo`` returned (or streamed before a kill) and
    their statistics (inputs not attacked: ``x0``, no evaluations)."""
    x_out = x0_arr.copy()
    n = len(x0_arr)
    per = {"wall_s": [0.0] * n, "nfev": [0] * n, "nit": [0] * n,
           "message": ["not attacked (see starting_state)"] * n,
           "stopped_by": [NOT_ATTACKED] * n}  # fmt: skip
    for i, out in zip(todo, outcomes):
        value = out.value if out.status == "ok" else None
        best = value if value is not None else out.progress
        if best is not None and best.get("x") is not None:
            x_out[i] = np.asarray(best["x"], dtype=np.float32).reshape(shape)
        info = value or out.progress or {}
        per["wall_s"][i] = float(out.wall_s)
        # the shared counter is the truth for a killed solve; a finished one says itself
        per["nfev"][i] = int(info["nfev"]) if value is not None else int(out.count)
        per["nit"][i] = int(info.get("nit", 0))
        if out.status == "ok":
            per["message"][i] = str(value.get("message", ""))
            per["stopped_by"][i] = str(value.get("stopped_by", "solver"))
        else:
            per["message"][i] = out.message.splitlines()[0] if out.message else out.status
            per["stopped_by"][i] = "safety-net" if out.status == "timeout" else out.status
    return x_out, per


def _outcome(success: bool, out) -> str:
    """``"timeout"`` whenever the safety net fired (even if the point it kept is an attack: a
    killed solve is reported, never passed off as a normal one)."""
    if out.status != "ok":
        return out.status
    return "success" if success else "failed"


def _check_space_inputs(space: str, kind: str, shape, train_inputs):
    if kind == "pca" and train_inputs is None:
        raise BoxhackError(f"space={space!r} needs train_inputs= (the model's training inputs)")
    if kind == "blocks" and len(shape) not in (2, 3):
        raise BoxhackError(
            f"space={space!r} needs image inputs; these inputs have shape {shape}: use 'input' "
            f"or 'pca:K'"
        )
    if train_inputs is None:
        return None
    train_inputs = np.asarray(train_inputs, dtype=np.float32)
    if tuple(train_inputs.shape[1:]) != shape:
        raise BoxhackError(
            f"train_inputs have per-sample shape {tuple(train_inputs.shape[1:])}, the inputs "
            f"{shape}"
        )
    return train_inputs


def _check_labels(labels, n: int, monitor) -> np.ndarray | None:
    if labels is None:
        return None
    arr = np.asarray(labels).reshape(-1)
    if len(arr) != n or not np.issubdtype(arr.dtype, np.integer):
        raise BoxhackError(f"labels must be {n} integer class indices, got {arr!r}")
    arr = arr.astype(np.int64)
    n_classes = int(getattr(monitor, "n_classes_", 0) or 0)
    if n_classes and (arr.max() >= n_classes or arr.min() < 0):
        raise BoxhackError(f"labels go up to {arr.max()}, the monitor knows {n_classes} classes")
    return arr


def _choose(what: str, value, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise BoxhackError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")
    return value.lower()


def _check_limits(time_limit, memory_limit_mb, max_evals, n_jobs) -> None:
    for name, v in (("time_limit", time_limit), ("memory_limit_mb", memory_limit_mb)):
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise BoxhackError(f"{name} must be a positive number of seconds/MiB or None, got {v!r}")
    if max_evals is not None and not (isinstance(max_evals, int) and max_evals >= 1):
        raise BoxhackError(f"max_evals must be a positive integer or None, got {max_evals!r}")
    if not isinstance(n_jobs, int) or n_jobs < 1:
        raise BoxhackError(f"n_jobs must be a positive integer, got {n_jobs!r}")


def _check_start_state(goal: str, acc0: np.ndarray) -> None:
    if goal == "dos" and not acc0.all():
        bad = np.flatnonzero(~acc0)
        raise BoxhackError(
            f"Attack 1 ('dos') starts from inputs the monitor accepts, but it already rejects "
            f"{len(bad)} of them (indices {bad[:10].tolist()}); pick accepted inputs"
        )
    if goal in ("intrude", "intrude-any") and acc0.any():
        bad = np.flatnonzero(acc0)
        raise BoxhackError(
            f"Attack 2 ({goal!r}) starts from inputs the monitor rejects, but it already "
            f"accepts {len(bad)} of them (indices {bad[:10].tolist()}); pick rejected inputs"
        )


def _as_inputs(model, x0, input_shape, bounds: tuple[float, float] = DEFAULT_BOUNDS
               ) -> tuple[np.ndarray, tuple[int, ...]]:
    """Validate ``x0`` (within ``bounds``) and return it as a float32 batch plus the
    per-sample shape."""
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        return as_batch(x0, "x0", shape, bounds), shape
    arr = x0.detach().cpu().numpy() if isinstance(x0, torch.Tensor) else np.asarray(x0)
    if arr.ndim == 0:
        raise BoxhackError("x0 must be an input or a batch of inputs, got a scalar")
    arr = as_batch(arr if arr.ndim > 1 else arr[None], "x0", bounds=bounds)
    # Which reading does the model accept: a batch of arr.shape[1:] or one input of arr.shape?
    candidates = [arr] if np.ndim(x0) == 1 else [arr, arr[None]]
    errors = []
    for cand in candidates:
        try:
            with torch.no_grad():
                out = model(torch.as_tensor(cand[:2] if len(cand) > 1 else cand))
            if out.ndim == 2 and out.shape[0] == min(len(cand), 2):
                return cand, tuple(cand.shape[1:])
            errors.append(f"output shape {tuple(out.shape)}")
        except (RuntimeError, ValueError, IndexError) as exc:
            errors.append(str(exc).splitlines()[0])
    raise BoxhackError(
        f"x0 has shape {tuple(np.shape(x0))}, which the model does not accept as one input or as "
        f"a batch ({'; '.join(errors)}); pass input_shape= or reshape it"
    )


def _pack_model(model):
    if isinstance(model, torch.jit.ScriptModule):
        buf = io.BytesIO()
        torch.jit.save(model, buf)
        return ("jit", buf.getvalue())
    try:
        return ("pickle", pickle.dumps(model))
    except Exception as exc:  # noqa: BLE001 - anything unpicklable
        raise BoxhackError(
            f"the model cannot be sent to a solver process ({type(exc).__name__}: {exc}); use "
            f"isolate=False or a picklable / TorchScript model"
        ) from None


def _unpack_model(packed):
    kind, data = packed
    if kind == "jit":
        return torch.jit.load(io.BytesIO(data), map_location="cpu")
    return pickle.loads(data)


def _run_inline(task: Task):
    """Solve in this process (no safety net, no memory limit)."""
    start = time.monotonic()
    held = {"p": None, "n": 0}
    ctx = TaskContext(report=lambda v: held.__setitem__("p", v),
                      count=lambda n: held.__setitem__("n", int(n)), started=start)  # fmt: skip
    status, value, message = "ok", None, ""
    try:
        value = solve_task(task.args, ctx)
    except MemoryError as exc:
        status, message = "out-of-memory", str(exc)
    except BoxhackError:
        raise
    except Exception as exc:  # noqa: BLE001 - a solver failure is an outcome
        status, message = "error", f"{type(exc).__name__}: {exc}"
    return Outcome(status, value=value, progress=held["p"], message=message,
                   wall_s=time.monotonic() - start, count=held["n"])  # fmt: skip


# ============================================================================================
# The solve (runs in the sandbox process).


class _Stop(Exception):
    """Raised from inside an evaluation to end a solve whose evaluation budget is spent."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Best:
    dist: float = math.inf
    x: np.ndarray | None = None
    reported_dist: float = math.inf
    checked_at: int = -REPORT_EVERY  # evaluation count of the last exact check


class Problem:
    """One attack problem on one input, as functions of the solver variables ``v``.

    ``v`` is ``u`` (the search-space variables), or ``(x, z)`` for L1 with auxiliary variables
    in the input space. Constraints are ``g(v) >= 0`` (nonlinear, ``m`` of them) plus, for
    auxiliary L1, the linear ``z - x >= -x0`` and ``z + x >= x0``.
    """

    def __init__(self, args: dict, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.goal = args["goal"]
        self.norm = args["norm"]
        self.encoding = args["encoding"]
        self.model32 = _unpack_model(args["model"]).eval()
        self.monitor = args["monitor"]
        self.model64 = copy.deepcopy(self.model32).double().eval()
        for p in list(self.model32.parameters()) + list(self.model64.parameters()):
            p.requires_grad_(False)
        x0 = np.asarray(args["x0"], dtype=np.float32)
        self.shape = tuple(x0.shape)
        self.x0_32 = x0.reshape(-1)
        self.x0 = self.x0_32.astype(np.float64)
        start = args.get("start")
        anchor = self.x0 if start is None else np.asarray(start, np.float64).reshape(-1)
        self.space = make_space(args["space"], anchor, self.shape, train_inputs=args.get("train_inputs"))
        self.c0 = int(args["c0"])
        self.label = int(args["label"])
        self.n_classes = int(self.monitor.n_classes_)
        self.aux = _uses_aux(args["solver"], self.norm, self.space.kind)
        n = self.space.n_inputs
        k = self.space.dim
        if self.aux:
            self.lower = np.concatenate([self.space.lower, np.zeros(n)])
            # |x_i - x0_i| can never exceed max(x0_i, 1 - x0_i) inside [0, 1]: a tight box
            # keeps the samples of the global solvers where the optimum can be
            self.upper = np.concatenate([self.space.upper, np.maximum(self.x0, 1.0 - self.x0)])
            z0 = np.abs(anchor - self.x0)
            self.v0 = np.concatenate([self.space.initial(), z0])
        else:
            self.lower, self.upper = self.space.lower.copy(), self.space.upper.copy()
            self.v0 = self.space.initial()
        self.nv = len(self.lower)
        self.k = k
        self.m = 1 if self.goal == "intrude-any" else 2
        self.max_evals = args.get("max_evals")
        self.nfev = 0
        self.best = _Best()
        self._reported_x: np.ndarray | None = None
        self._cache_key: bytes | None = None
        self._cache: tuple | None = None
        self.x0_t64 = torch.as_tensor(self.x0)
        others = [c for c in range(self.n_classes) if c != self.label]
        self.any_classes = list(range(self.n_classes)) if self.goal == "intrude-any" else others

    # ---------------------------------------------------------------- core evaluation
    def _tick(self, count: int) -> None:
        """Count ``count`` evaluations about to be made, or stop if the budget is spent (the
        count stays the number of points really evaluated; the parent can read it any time)."""
        if self.max_evals is not None and self.nfev + count > self.max_evals:
            self.report_best()
            raise _Stop("eval-limit")
        self.nfev += count
        self.ctx.count(self.nfev)

    def _inputs(self, v: torch.Tensor) -> torch.Tensor:
        return self.space.to_input(v[:, : self.k])

    def objective_t(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.aux:
            return v[:, self.k :].sum(1)
        d = x - self.x0_t64.to(x.dtype)
        if self.norm == "l1":
            return d.abs().sum(1)
        return (d * d).sum(1)

    def distance(self, x: np.ndarray) -> np.ndarray:
        d = np.atleast_2d(x) - self.x0
        return np.abs(d).sum(1) if self.norm == "l1" else np.sqrt((d * d).sum(1))

    @staticmethod
    def _logit_margin(logits: torch.Tensor, c: torch.Tensor | int) -> torch.Tensor:
        """logit_c - max_{j != c} logit_j, per row."""
        if isinstance(c, int):
            c = torch.full((logits.shape[0],), c, dtype=torch.long)
        own = logits.gather(1, c[:, None])[:, 0]
        masked = logits.scatter(1, c[:, None], -math.inf)
        return own - masked.amax(1)

    def constraints_t(self, x: torch.Tensor) -> torch.Tensor:
        """(B, m) constraint values, >= 0 where satisfied."""
        b = x.shape[0]
        xs = x.reshape((b,) + self.shape)
        if self.encoding == "indicator":
            with torch.no_grad():
                logits, marg = self.monitor.forward_margin(self.model32, xs.float())
            pred = logits.argmax(1)
            acc = (marg >= 0).double()
            if self.goal == "dos":
                cols = [(pred == self.c0).double(), 1.0 - acc]
            elif self.goal == "intrude":
                cols = [(pred == self.c0).double(), acc]
            elif self.goal == "intrude-any":
                cols = [acc]
            else:  # combined
                cols = [(pred != self.label).double(), acc]
            return torch.stack(cols, 1) - 0.5
        if self.goal in ("dos", "intrude"):
            cl = torch.full((b,), self.c0, dtype=torch.long)
            logits, marg = self.monitor.forward_margin(self.model64, xs, cl)
            lm = self._logit_margin(logits, self.c0)
            mon = -marg if self.goal == "dos" else marg
            return torch.stack([lm, mon], 1) - SLACK
        # intrude-any / combined: exists an allowed class c with predict = c and accepted as c
        per_class = []
        for c in self.any_classes:
            cl = torch.full((b,), c, dtype=torch.long)
            logits, marg = self.monitor.forward_margin(self.model64, xs, cl)
            per_class.append(torch.minimum(self._logit_margin(logits, c), marg))
        best = torch.stack(per_class, 1).amax(1) - SLACK
        if self.goal == "intrude-any":
            return best[:, None]
        lm_label = self._logit_margin(logits, self.label)  # logits are the same for every c
        return torch.stack([-lm_label - SLACK, best], 1)

    def evaluate(self, v: np.ndarray, grad: bool, count: bool = True):
        """Values (and constraint gradients for one point) at ``v`` ((nv,) or (B, nv));
        tracks candidates. ``count=False``: the same point again, for its gradients."""
        vb = np.atleast_2d(np.asarray(v, dtype=np.float64))
        self._tick(len(vb) if count else 0)
        vt = torch.as_tensor(vb).clone().requires_grad_(grad)
        x = self._inputs(vt)
        f = self.objective_t(vt, x)
        g = self.constraints_t(x)
        g_np = g.detach().numpy().astype(np.float64)
        x_np = x.detach().numpy()
        self._track(x_np, g_np, vb)
        if not grad:
            return f.detach().numpy(), g_np, None, None
        df = torch.autograd.grad(f.sum(), vt, retain_graph=True, allow_unused=True)[0]
        df = np.zeros(self.nv) if df is None else df[0].numpy()
        if g.requires_grad:
            rows = [
                torch.autograd.grad(g[0, j], vt, retain_graph=j < g.shape[1] - 1)[0][0].numpy()
                for j in range(g.shape[1])
            ]
            dg = np.stack(rows)
        else:
            dg = np.zeros((g.shape[1], self.nv))
        return f.detach().numpy(), g_np, df, dg

    def _track(self, x: np.ndarray, g: np.ndarray, v: np.ndarray) -> None:
        # the sign of the raw margins decides (the slack only steers the solver): the exact
        # float32 check in choose() has the final say
        slack = SLACK if self.encoding == "margin" else 0.0
        ok = (g + slack >= 0).all(1)
        if not ok.any():
            return
        idx = np.flatnonzero(ok)
        d = self.distance(x[idx])
        j = int(np.argmin(d))
        if d[j] < self.best.dist:
            self.best.dist = float(d[j])
            self.best.x = x[idx[j]].copy()
        if self.nfev - self.best.checked_at >= REPORT_EVERY:
            self.report_best()

    def report_best(self) -> None:
        """Check the best candidate exactly and stream it to the parent if it is a better
        attack than the last one streamed (what a solve killed by the safety net keeps). Runs
        at most every ``REPORT_EVERY`` evaluations, counted, so it never depends on timing;
        the solve's own answer is chosen at its end, independently of these reports."""
        self.best.checked_at = self.nfev
        if self.best.x is None or self.best.dist >= self.best.reported_dist:
            return
        chosen = self.choose([self.best.x])
        if chosen is None:
            return
        self.best.reported_dist = float(self.distance(chosen.astype(np.float64))[0])
        self._reported_x = chosen.reshape(self.shape)
        self.ctx.report({"x": self._reported_x, "nfev": self.nfev})

    # ---------------------------------------------------------------- cached scalar views
    def _at(self, v, grad: bool = False) -> tuple:
        """Values at ``v`` (one point), with constraint gradients when ``grad``; the last point
        is cached, and gradients are computed only when a solver asks for them."""
        v = np.asarray(v, dtype=np.float64)
        key = v.tobytes()
        if key != self._cache_key:
            self._cache = self.evaluate(v, grad=grad)
            self._cache_key = key
        elif grad and self._cache[3] is None:
            self._cache = self.evaluate(v, grad=True, count=False)
        return self._cache

    def fun(self, v) -> float:
        return float(self._at(v)[0][0])

    def fun_jac(self, v) -> np.ndarray:
        """Gradient of the objective (a distance: smooth, no model involved)."""
        v = np.asarray(v, dtype=np.float64)
        if self.aux:
            return np.concatenate([np.zeros(self.k), np.ones(self.nv - self.k)])
        vt = torch.as_tensor(v[None]).clone().requires_grad_(True)
        f = self.objective_t(vt, self._inputs(vt))
        return torch.autograd.grad(f.sum(), vt)[0][0].numpy()

    def cons(self, v) -> np.ndarray:
        return self._at(v)[1][0]

    def cons_jac(self, v) -> np.ndarray:
        return self._at(v, grad=True)[3]

    def _batch(self, vb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Objective and constraint values of the points ``vb`` (B, nv); points of the
        previous batch are not evaluated again (DE asks for the constraints of a population,
        then for the objective of its feasible members)."""
        if len(vb) == 0:  # DE asks for the objective of no feasible member at all
            return np.zeros(0), np.zeros((0, self.m))
        keys = [row.tobytes() for row in vb]
        cache = getattr(self, "_batch_cache", {})
        missing = [i for i, k in enumerate(keys) if k not in cache]
        if missing:
            f, g, _, _ = self.evaluate(vb[missing], grad=False)
            cache = {**cache, **{keys[i]: (f[j], g[j]) for j, i in enumerate(missing)}}
        self._batch_cache = {k: cache[k] for k in keys}
        f = np.array([cache[k][0] for k in keys], dtype=np.float64)
        g = np.stack([cache[k][1] for k in keys])
        return f, g

    def fun_batch(self, vt: np.ndarray) -> np.ndarray:
        """DE's vectorised objective: ``(nv, S) -> (S,)`` (``(nv,) -> scalar``)."""
        arr = np.asarray(vt, dtype=np.float64)
        f = self._batch(np.atleast_2d(arr.T))[0]
        return f[0] if arr.ndim == 1 else f

    def cons_batch(self, vt: np.ndarray) -> np.ndarray:
        """DE's vectorised constraints: ``(nv, S) -> (m, S)`` (``(nv,) -> (m,)``)."""
        arr = np.asarray(vt, dtype=np.float64)
        g = self._batch(np.atleast_2d(arr.T))[1]
        return g[0] if arr.ndim == 1 else g.T

    def linear(self):
        """Auxiliary L1: (A, lb) with A v >= lb: z - x >= -x0 and z + x >= x0."""
        n = self.k
        eye = np.eye(n)
        a = np.block([[-eye, eye], [eye, eye]])
        lb = np.concatenate([-self.x0, self.x0])
        return a, lb

    # ---------------------------------------------------------------- exact choice
    def choose(self, xs: list[np.ndarray]) -> np.ndarray | None:
        """The closest of ``xs`` (and their pushes) that meets the goal exactly, float32."""
        cands = []
        for x in xs:
            if x is None:
                continue
            x = np.asarray(x, dtype=np.float64).reshape(-1)
            for t in PUSHES:
                cands.append(np.clip(self.x0 + (1.0 + t) * (x - self.x0), 0.0, 1.0))
        if not cands:
            return None
        batch = np.stack(cands).astype(np.float32)
        batch = np.clip(batch, 0.0, 1.0)
        pred, acc = self.monitor.predict(self.model32, batch.reshape((-1,) + self.shape))
        n = len(batch)
        ok = decide(
            self.goal, np.full(n, self.c0), np.asarray(pred), np.asarray(acc, bool),
            labels=np.full(n, self.label),
        )  # fmt: skip
        if not ok.any():
            return None
        idx = np.flatnonzero(ok)
        d = self.distance(batch[idx].astype(np.float64))
        return batch[idx[int(np.argmin(d))]]


def n_variables(solver: str, norm: str, space: str, input_shape) -> int:
    """How many variables ``solver`` works with (the solve's dimension): the search space's
    size, doubled by the auxiliary L1 variables where they are used (see :class:`Problem`)."""
    kind, k = parse_space(space)
    shape = tuple(int(s) for s in input_shape)
    if kind == "input":
        dim = int(np.prod(shape))
    elif kind == "pca":
        dim = int(k)
    else:
        dim = (1 if len(shape) == 2 else shape[0]) * int(k) ** 2
    return 2 * dim if _uses_aux(solver, norm, kind) else dim


def _uses_aux(solver: str, norm: str, kind: str) -> bool:
    # the paper's auxiliary L1 variables, in the input space, for the solvers that need a
    # smooth objective or profit from it; SHGO samples: the extra variables double its
    # dimension and leave most sample points infeasible (docs/attacks-optimisation.md)
    return norm == "l1" and kind == "input" and solver != "shgo"


def solver_settings(solver: str, nv: int, options: dict | None = None) -> dict:
    """The settings (budget included) ``solver`` runs with on ``nv`` variables: boxhack's
    defaults, overridden by ``options``. Every key here is passed to the solver.

    - ``slsqp``: ``maxiter`` (SQP iterations, default 200);
    - ``cobyla``: ``maxiter`` (= evaluations, default ``max(1000, 10 (nv + 1))``), ``rhobeg``
      (default a quarter of the narrowest bound, set in the solve);
    - ``shgo``: ``sampling_method`` with ``n`` (Sobol points) or ``iters`` (simplicial
      refinements) by problem size (:func:`_shgo_sampling`), ``local_iter`` (local searches
      from the best pool points, default 5), ``local_maxiter`` (SLSQP iterations of each,
      default 100);
    - ``de``: ``maxiter`` (generations, default 1000), ``popsize`` (15), ``tol`` (0.01).
    """
    opts = dict(options or {})
    if solver == "slsqp":
        base = {"maxiter": 200}
    elif solver == "cobyla":
        base = {"maxiter": max(1000, 10 * (nv + 1))}
    elif solver == "shgo":
        base = {} if "sampling_method" in opts else _shgo_sampling(nv)
        base.update(local_iter=5, local_maxiter=100)
    else:
        base = {"maxiter": 1000, "popsize": 15, "tol": 0.01}
    return {**base, **opts}


def _bounds(p: Problem):
    return Bounds(p.lower, p.upper)


def _solve_slsqp(p: Problem, opts: dict):
    cons = [{"type": "ineq", "fun": p.cons}]
    if p.encoding == "margin":
        cons[0]["jac"] = p.cons_jac
    if p.aux:
        a, lb = p.linear()
        cons.append({"type": "ineq", "fun": lambda v: a @ v - lb, "jac": lambda v: a})
    return minimize(p.fun, p.v0, jac=p.fun_jac, bounds=_bounds(p), constraints=cons,
                    method="SLSQP", options=dict(opts))  # fmt: skip


def _solve_cobyla(p: Problem, opts: dict):
    cons = [{"type": "ineq", "fun": p.cons}]
    if p.aux:
        a, lb = p.linear()
        cons.append({"type": "ineq", "fun": lambda v: a @ v - lb})
    width = float(np.min(p.upper - p.lower))
    options = {"rhobeg": 0.25 * width, **opts}
    return minimize(p.fun, p.v0, bounds=_bounds(p), constraints=cons, method="COBYLA",
                    options=options)  # fmt: skip


def _shgo_sampling(nv: int) -> dict:
    """SHGO's sampling by problem size (from sweeps on the toy networks, docs/reproduction.md).

    - up to 4 variables (the toys: SHGO uses no auxiliary L1 variables): 256 Sobol points
      (SciPy's default of 2^dim + 1 = 5 simplicial vertices misses the small feasible regions
      of Attack 1);
    - 5-10 variables: SciPy's default, simplicial with 1 iteration (2^dim + 1 vertices);
    - more: Sobol with SciPy's default count; its qhull triangulation does not finish beyond
      ~10 dimensions, so such solves normally end at their safety net (or memory limit).
    """
    if nv <= 4:
        return {"sampling_method": "sobol", "n": 256}
    if nv <= 10:
        return {"sampling_method": "simplicial", "iters": 1}
    return {"sampling_method": "sobol"}


def _solve_shgo(p: Problem, opts: dict):
    cons = [{"type": "ineq", "fun": p.cons}]
    local_cons = [{"type": "ineq", "fun": p.cons}]
    if p.encoding == "margin":
        local_cons[0]["jac"] = p.cons_jac
    if p.aux:
        a, lb = p.linear()
        lin = {"type": "ineq", "fun": lambda v: a @ v - lb}
        cons.append(lin)
        local_cons.append({**lin, "jac": lambda v: a})
    opts = dict(opts)
    kwargs = {key: opts.pop(key) for key in ("n", "iters", "sampling_method") if key in opts}
    minimizer = {
        "method": "SLSQP",
        "jac": p.fun_jac,
        "constraints": local_cons,
        "bounds": _bounds(p),
        "options": {"maxiter": opts.pop("local_maxiter", 100)},
        **opts.pop("minimizer_kwargs", {}),
    }
    options = {**opts.pop("options", {}), **opts}
    bounds = list(zip(p.lower, p.upper))
    return shgo(p.fun, bounds, constraints=cons, minimizer_kwargs=minimizer, options=options,
                **kwargs)  # fmt: skip


def _solve_de(p: Problem, opts: dict, seed):
    cons = [NonlinearConstraint(p.cons_batch, 0.0, np.inf)]
    if p.aux:
        a, lb = p.linear()
        cons.append(LinearConstraint(a, lb, np.inf))
    kwargs = {
        "polish": False,
        "updating": "deferred",
        "vectorized": True,
        "rng": np.random.default_rng(seed),
        "x0": np.clip(p.v0, p.lower, p.upper),
        **opts,
    }
    return differential_evolution(p.fun_batch, _bounds(p), constraints=cons, **kwargs)


_SOLVE = {"slsqp": _solve_slsqp, "cobyla": _solve_cobyla, "shgo": _solve_shgo}


def solve_task(args: dict, ctx: TaskContext) -> dict:
    """Sandbox task: solve one problem; returns the best exactly-checked point and statistics."""
    torch.set_num_threads(1)
    p = Problem(args, ctx)
    solver = args["solver"]
    opts = dict(args.get("options") or {})
    stopped_by, message, nit, solver_x = "solver", "", 0, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            p.evaluate(p.v0, grad=False)  # the starting point is a candidate too
            if solver == "de":
                res = _solve_de(p, opts, args.get("seed", 0))
            else:
                res = _SOLVE[solver](p, opts)
            message = str(getattr(res, "message", ""))
            nit = int(getattr(res, "nit", 0) or 0)
            if getattr(res, "x", None) is not None and np.size(res.x) == p.nv:
                solver_x = p.space.to_input_np(np.asarray(res.x)[: p.k])[0]
        except _Stop as stop:
            stopped_by = stop.reason
            message = f"stopped after {p.nfev} evaluations (budget max_evals={p.max_evals})"
    chosen = p.choose([solver_x, p.best.x])
    if chosen is None:
        fallback = solver_x if solver_x is not None else p.best.x
        x = None if fallback is None else np.clip(fallback, 0, 1).astype(np.float32)
    else:
        x = chosen
    return {
        "x": None if x is None else x.reshape(p.shape),
        "nfev": p.nfev,
        "nit": nit,
        "message": message,
        "stopped_by": stopped_by,
        "found": chosen is not None,
    }
