"""Off-the-shelf adversarial attacks (Foolbox 3) against a classifier and its monitor.

This is boxhack's ONE Foolbox adapter: nothing else in boxhack imports foolbox, so replacing
the library later touches this file only. An attack is named by a short key (:data:`ATTACKS`):

==================  =======  ===========  =====================================================
name                norm     kind         Foolbox attack
==================  =======  ===========  =====================================================
``fgsm``            linf     fixed        ``LinfFastGradientAttack`` (FGSM, one signed step)
``fgm-l2``          l2       fixed        ``L2FastGradientAttack``
``pgd-linf``        linf     fixed        ``LinfProjectedGradientDescentAttack`` (random start)
``pgd-l2``          l2       fixed        ``L2ProjectedGradientDescentAttack`` (random start)
``deepfool-linf``   linf     minimal      ``LinfDeepFoolAttack``
``deepfool-l2``     l2       minimal      ``L2DeepFoolAttack``
``cw-l2``           l2       minimal      ``L2CarliniWagnerAttack``
``boundary``        l2       decision     ``BoundaryAttack`` (labels and verdicts only)
``hsj``             l2       decision     ``HopSkipJumpAttack`` (labels and verdicts only)
==================  =======  ===========  =====================================================

(aliases: ``pgd`` = ``pgd-linf``, ``deepfool`` = ``deepfool-l2``, ``cw`` = ``cw-l2``,
``hopskipjump`` = ``hsj``.) ``epsilon`` is the perturbation budget in the attack's norm:
fixed-epsilon attacks perturb by up to epsilon; minimal attacks (and decision attacks) search
for the smallest perturbation, which is then clipped to epsilon (``None``: no clipping).

Goals (what the attack must achieve, and what success means afterwards; Foolbox calls this its
*criterion*, and the adapter turns the goal into one, :func:`foolbox_criterion`):

- ``"misclassify"``: the prediction differs from the label (plain adversarial examples; the
  monitor's verdict is still measured on every sample).
- ``"combined"``: the prediction differs from the label AND the monitor accepts the input.
  Foolbox is given :class:`MonitorMisclassification`, a subclass of Foolbox's own
  ``Misclassification`` (gradient attacks refuse anything else), whose call runs the exact
  monitor (any abstraction of the monitor protocol) on the batch of perturbed inputs. How
  each kind uses it:

  * minimal attacks: DeepFool keeps stepping a sample until it meets the goal; C&W's binary
    search keeps the smallest perturbation that meets it;
  * decision attacks: Boundary and HopSkipJump walk the boundary of the goal's region itself,
    from a starting point that already meets it (see :mod:`boxhack.attacks.starts`);
  * fixed-epsilon attacks take no decision during their steps, so the adapter searches the
    budget: Foolbox runs them at ``eps_steps`` budgets ``epsilon * i / eps_steps`` and each
    sample keeps the smallest budget at which the goal holds (Foolbox's own per-epsilon
    success). ``restarts`` repeats random-start attacks (Foolbox ``repeat``), keeping a run
    that meets the goal.

:class:`FoolboxAttack` is the :class:`~boxhack.attacks.base.Attack` face of the adapter;
:func:`run_adversarial` and :func:`run_adversarial_sweep` (several budgets in one run) are the
functional ones.

Budgets hold exactly: Foolbox computes in float32, so FGSM at Linf 0.1 returns pixels
``x0 + float32(0.1)`` = ``x0 + 0.10000000149``; every result is therefore passed through
:func:`boxhack.attacks.records.fit_to_budget`, which steps such values back towards ``x0``
until the perturbation, measured as ``boxhack verify`` does (float64 of the float32 difference),
is within epsilon. ``info["budget"]`` records ``{"norm", "eps"}`` (``None``: no budget).

Whatever Foolbox reports, success is decided afterwards by :func:`boxhack.attacks.verify`
(goal ``"misclassify"`` or ``"combined"``) with the exact model and monitor. Inputs that
already meet the goal (misclassified from the start, for ``"misclassify"``; misclassified and
accepted, for ``"combined"``) are not counted as successes: ``result.already`` marks them and
``result.success_rate`` is over the others.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from boxhack.attacks.base import Attack, check_options, labels_or_predictions
from boxhack.attacks.records import fit_to_budget
from boxhack.attacks.starts import find_starting_points, harden
from boxhack.attacks.verify import AttackResult, as_batch, verify
from boxhack.errors import BoxhackError
from boxhack.models.domain import input_bounds

with warnings.catch_warnings():
    # foolbox imports scipy.ndimage.filters.gaussian_filter, deprecated since SciPy 1.8; the
    # warning is Foolbox's, not the user's, and must not fail a ``-W error`` run.
    warnings.simplefilter("ignore", DeprecationWarning)
    import eagerpy as ep
    import foolbox as fb

__all__ = [
    "ALIASES",
    "ATTACKS",
    "GOALS_SUPPORTED",
    "AttackSpec",
    "FoolboxAttack",
    "MonitorMisclassification",
    "attack_names",
    "blended_noise_starts",
    "flip_counts",
    "foolbox_criterion",
    "foolbox_model",
    "get_spec",
    "run_adversarial",
    "run_adversarial_sweep",
]

GOALS_SUPPORTED = ("misclassify", "combined")  # the goals a Foolbox attack can be given


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the registry: its Foolbox class, norm, kind and budgets."""

    name: str
    foolbox_class: str
    norm: str  # "linf" | "l2": the norm epsilon is measured in
    kind: str  # "fixed" (fixed-epsilon gradient), "minimal" (gradient minimisation), "decision"
    description: str
    defaults: dict = field(default_factory=dict)  # constructor arguments (budget="default")
    quick: dict = field(default_factory=dict)  # smaller budget (budget="quick")

    @property
    def cls(self):
        return getattr(fb.attacks, self.foolbox_class)

    def parameters(self) -> list[str]:
        """Constructor parameters the Foolbox class accepts (for --help and validation)."""
        sig = inspect.signature(self.cls.__init__)
        return [p for p in sig.parameters if p not in ("self", "init_attack", "tensorboard")]


ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        AttackSpec("fgsm", "LinfFastGradientAttack", "linf", "fixed",
                   "Fast Gradient Sign Method: one signed gradient step of size epsilon"),
        AttackSpec("fgm-l2", "L2FastGradientAttack", "l2", "fixed",
                   "Fast Gradient Method: one L2-normalised gradient step of size epsilon"),
        AttackSpec("pgd-linf", "LinfProjectedGradientDescentAttack", "linf", "fixed",
                   "Projected gradient descent in the Linf ball (random start)",
                   {"steps": 40, "rel_stepsize": 2.5 / 40}, {"steps": 10, "rel_stepsize": 0.25}),
        AttackSpec("pgd-l2", "L2ProjectedGradientDescentAttack", "l2", "fixed",
                   "Projected gradient descent in the L2 ball (random start)",
                   {"steps": 40, "rel_stepsize": 2.5 / 40}, {"steps": 10, "rel_stepsize": 0.25}),
        AttackSpec("deepfool-linf", "LinfDeepFoolAttack", "linf", "minimal",
                   "DeepFool: linearised steps to the nearest decision boundary (Linf)",
                   {"steps": 50}, {"steps": 20}),
        AttackSpec("deepfool-l2", "L2DeepFoolAttack", "l2", "minimal",
                   "DeepFool: linearised steps to the nearest decision boundary (L2)",
                   {"steps": 50}, {"steps": 20}),
        AttackSpec("cw-l2", "L2CarliniWagnerAttack", "l2", "minimal",
                   "Carlini-Wagner L2: Adam on the margin loss, binary search on its weight",
                   {"binary_search_steps": 7, "steps": 200, "stepsize": 0.05},
                   {"binary_search_steps": 4, "steps": 50, "stepsize": 0.05}),
        AttackSpec("boundary", "BoundaryAttack", "l2", "decision",
                   "Boundary attack: random walk along the goal's boundary (labels and "
                   "verdicts only)",
                   {"steps": 5000}, {"steps": 300}),
        AttackSpec("hsj", "HopSkipJumpAttack", "l2", "decision",
                   "HopSkipJump: boundary search with estimated gradients (labels and verdicts "
                   "only)",
                   {"steps": 30, "initial_gradient_eval_steps": 50,
                    "max_gradient_eval_steps": 500},
                   {"steps": 5, "initial_gradient_eval_steps": 20,
                    "max_gradient_eval_steps": 100}),
    )
}  # fmt: skip

ALIASES = {"pgd": "pgd-linf", "deepfool": "deepfool-l2", "cw": "cw-l2", "hopskipjump": "hsj"}


def attack_names() -> list[str]:
    return list(ATTACKS)


def get_spec(attack: str | AttackSpec) -> AttackSpec:
    """The :class:`AttackSpec` of ``attack`` (a name or an alias)."""
    if isinstance(attack, AttackSpec):
        return attack
    if not isinstance(attack, str):
        raise BoxhackError(f"attack must be a name, got {type(attack).__name__}")
    key = ALIASES.get(attack.lower(), attack.lower())
    if key not in ATTACKS:
        raise BoxhackError(
            f"unknown attack {attack!r}; choose one of: {', '.join(ATTACKS)} "
            f"(aliases: {', '.join(f'{a}={b}' for a, b in ALIASES.items())})"
        )
    return ATTACKS[key]


# ------------------------------------------------------------------------------ Foolbox glue
def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def foolbox_model(model: torch.nn.Module):
    """The model as a Foolbox ``PyTorchModel`` with the model's input bounds
    (:func:`~boxhack.models.domain.input_bounds`, (0, 1) unless declared) on its device."""
    model.eval()
    return fb.PyTorchModel(model, bounds=input_bounds(model), device=_device(model))


class MonitorMisclassification(fb.criteria.Misclassification):
    """Foolbox criterion: misclassified AND accepted by the monitor.

    A subclass of Foolbox's ``Misclassification`` so gradient attacks (FGSM, PGD, C&W,
    DeepFool) accept it: they read ``labels`` for their loss. Foolbox calls it with eagerpy
    tensors; each call runs the model and the exact monitor on the whole batch of perturbed
    inputs (``monitor.predict``, the same call :func:`~boxhack.attacks.verify.verify` makes)
    and counts the queries. The result lives on the inputs' device.

    ``require_accept=False`` gives plain misclassification through the same path (useful to
    count queries of the decision-only attacker for either goal).
    """

    def __init__(self, labels, model, monitor, *, require_accept: bool = True):
        labels_t = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=_device(model))
        super().__init__(labels_t)
        self.model = model
        self.monitor = monitor
        self.require_accept = bool(require_accept)
        self._labels_np = np.asarray(labels, dtype=np.int64)
        self.calls = 0
        self.queries = 0

    def __repr__(self) -> str:
        what = "Misclassification & MonitorAccepts" if self.require_accept else "Misclassification"
        return f"{what}(n={len(self._labels_np)})"

    def decide(self, x: np.ndarray) -> np.ndarray:
        """The criterion on a numpy batch: ``(pred != label) & accepted`` (bool, N)."""
        pred, accepted = self.monitor.predict(self.model, x)
        self.calls += 1
        self.queries += len(x)
        ok = np.asarray(pred) != self._labels_np
        if self.require_accept:
            ok &= np.asarray(accepted, dtype=bool)
        return ok

    def decide_each(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The criterion for inputs ``x`` (rows ``rows`` of the batch), each judged alone."""
        out = np.zeros(len(rows), dtype=bool)
        for j, i in enumerate(np.asarray(rows, dtype=np.int64)):
            pred, accepted = self.monitor.predict(self.model, x[j : j + 1])
            ok = int(pred[0]) != int(self._labels_np[i])
            out[j] = ok and (bool(accepted[0]) or not self.require_accept)
        self.calls += len(rows)
        self.queries += len(rows)
        return out

    def __call__(self, perturbed, outputs):
        x, restore_type = ep.astensor_(perturbed)
        del outputs  # the monitor re-runs the model with its layer taps
        raw = x.raw
        arr = raw.detach().cpu().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
        ok = self.decide(np.asarray(arr, dtype=np.float32))
        return restore_type(ep.from_numpy(x, ok))


def foolbox_criterion(goal: str, labels, model, monitor):
    """The Foolbox criterion object for the goal ``"misclassify"`` or ``"combined"``."""
    if goal == "misclassify":
        return fb.criteria.Misclassification(
            torch.as_tensor(np.asarray(labels, dtype=np.int64), device=_device(model))
        )
    if goal == "combined":
        return MonitorMisclassification(labels, model, monitor)
    raise BoxhackError(_goal_error(goal))


def _goal_error(goal) -> str:
    return (f"unknown goal {goal!r} for a Foolbox attack; choose one of: "
            f"{', '.join(GOALS_SUPPORTED)}")


# ------------------------------------------------------------------------------ validation
def _check_inputs(model, inputs, labels) -> tuple[np.ndarray, np.ndarray]:
    x = as_batch(inputs, "inputs", bounds=input_bounds(model))
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if y.ndim != 1:
        raise BoxhackError(f"labels must be a 1-D array of class indices, got shape {y.shape}")
    if len(y) != len(x):
        raise BoxhackError(f"got {len(x)} inputs but {len(y)} labels; give one label per input")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise BoxhackError(f"labels must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    with torch.no_grad():
        out = model(torch.as_tensor(x[:1], device=_device(model)))
    n_classes = int(out.shape[-1])
    if y.min() < 0 or y.max() >= n_classes:
        raise BoxhackError(
            f"labels must lie in 0..{n_classes - 1} (the model has {n_classes} outputs), "
            f"found {int(y.min())}..{int(y.max())}"
        )
    return x, y


def _check_epsilons(epsilons, spec: AttackSpec) -> list[float | None]:
    if epsilons is None or isinstance(epsilons, (int, float, np.number)):
        epsilons = [epsilons]
    eps_list = list(epsilons)
    if not eps_list:
        raise BoxhackError("give at least one epsilon")
    out: list[float | None] = []
    for e in eps_list:
        if e is None:
            if spec.kind == "fixed":
                raise BoxhackError(
                    f"attack {spec.name!r} is a fixed-budget attack: give a numeric epsilon "
                    f"(the {spec.norm} budget), not None"
                )
            out.append(None)
            continue
        try:
            e = float(e)
        except (TypeError, ValueError):
            raise BoxhackError(f"epsilon must be a number, got {e!r}") from None
        if not math.isfinite(e) or e < 0:
            raise BoxhackError(
                f"epsilon must be a finite number >= 0 (the {spec.norm} budget of "
                f"{spec.name!r}), got {e}"
            )
        out.append(e)
    return out


def _construct(spec: AttackSpec, budget: str, attack_kwargs: dict):
    if budget not in ("default", "quick"):
        raise BoxhackError(f"budget must be 'default' or 'quick', got {budget!r}")
    allowed = spec.parameters()
    unknown = sorted(set(attack_kwargs) - set(allowed))
    if unknown:
        raise BoxhackError(
            f"attack {spec.name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters: {', '.join(allowed) or '(none)'}"
        )
    params = {**(spec.quick if budget == "quick" else spec.defaults), **attack_kwargs}
    try:
        return spec.cls(**params), params
    except (TypeError, ValueError, AssertionError) as exc:
        raise BoxhackError(f"attack {spec.name!r}: bad parameters {params}: {exc}") from None


# ------------------------------------------------------------------------------ running
def _finite_or(x_adv: np.ndarray, x0: np.ndarray,
               bounds: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Replace non-finite samples by the original, clip rounding overshoots into ``bounds``."""
    bad = ~np.isfinite(x_adv).reshape(len(x_adv), -1).all(1)
    if bad.any():
        x_adv = x_adv.copy()
        x_adv[bad] = x0[bad]
    lo, hi = (np.float32(b) for b in bounds)
    return np.clip(x_adv, lo, hi).astype(np.float32, copy=False)


def _to_np(t) -> np.ndarray:
    raw = t.raw if isinstance(t, ep.Tensor) else t
    if isinstance(raw, torch.Tensor):
        return raw.detach().cpu().numpy()
    return np.asarray(raw)


def _run_fixed(atk, fmodel, x_t, criterion, epsilons, eps_steps, restarts):
    """Fixed-epsilon attack. With ``eps_steps == 1`` each sample gets the attack at exactly
    epsilon; otherwise, per requested epsilon, each sample keeps the smallest of the budgets
    ``epsilon * i / eps_steps`` (i = 1..eps_steps) at which the criterion holds, and the full
    budget where none does. One Foolbox call covers every budget of every epsilon."""
    if restarts > 1:
        atk = atk.repeat(restarts)
    subgrids = [[round(e * i / eps_steps, 12) for i in range(1, eps_steps + 1)] for e in epsilons]
    grid = sorted({g for sub in subgrids for g in sub})
    pos = {g: j for j, g in enumerate(grid)}
    _, xpcs, success = atk(fmodel, x_t, criterion, epsilons=grid)
    xs = [_to_np(xp) for xp in xpcs]
    ok = _to_np(success).astype(bool)  # (G, N)
    n = len(xs[0])
    out, per_eps = [], []
    for sub in subgrids:
        choice = np.full(n, pos[sub[-1]])
        found = np.zeros(n, dtype=bool)
        for g in sub:  # smallest budget first
            new = ok[pos[g]] & ~found
            choice[new] = pos[g]
            found |= new
        x_e = xs[pos[sub[-1]]].copy()
        for j in np.unique(choice):
            rows = choice == j
            x_e[rows] = xs[j][rows]
        out.append(x_e)
        per_eps.append({"eps_used": [grid[j] for j in choice]} if eps_steps > 1 else {})
    return out, {}, per_eps


def _run_minimal(atk, fmodel, x_t, criterion, epsilons, restarts, **run_kwargs):
    """Minimal-perturbation attack, run once; the result is clipped to each epsilon."""
    if restarts > 1:
        atk = atk.repeat(restarts)
    numeric = [e for e in epsilons if e is not None]
    # None last: Foolbox then minimises without early stop and clips to each numeric epsilon.
    _, xpcs, _ = atk(fmodel, x_t, criterion, epsilons=[*numeric, None], **run_kwargs)
    by_eps = {e: _to_np(xp) for e, xp in zip(numeric, xpcs[:-1])}
    raw = _to_np(xpcs[-1])
    return [raw if e is None else by_eps[e] for e in epsilons], {}, [{} for _ in epsilons]


def run_adversarial_sweep(
    model,
    monitor,
    inputs,
    labels,
    attack: str = "fgsm",
    epsilons: Sequence[float | None] | float | None = (0.1,),
    *,
    goal: str | None = None,
    budget: str = "default",
    eps_steps: int | None = None,
    restarts: int = 1,
    seed: int = 0,
    starting_points=None,
    pool=None,
    start: str = "auto",
    criterion: str | None = None,
    **attack_kwargs,
) -> list[AttackResult]:
    """Run one Foolbox attack once for several budgets; one verified result per epsilon.

    Fixed-epsilon attacks run at each epsilon; minimal and decision attacks run once and
    their perturbation is clipped to each epsilon (Foolbox's own epsilon handling). See
    :func:`run_adversarial` for the arguments (``criterion=`` is the deprecated spelling of
    ``goal=``).
    """
    goal = _goal_of(goal, criterion)
    spec = get_spec(attack)
    eps_list = _check_epsilons(epsilons, spec)
    x0, y = _check_inputs(model, inputs, labels)
    if eps_steps is None:
        eps_steps = 8 if goal == "combined" else 1
    if not isinstance(eps_steps, (int, np.integer)) or eps_steps < 1:
        raise BoxhackError(f"eps_steps must be a positive integer, got {eps_steps!r}")
    if not isinstance(restarts, (int, np.integer)) or restarts < 1:
        raise BoxhackError(f"restarts must be a positive integer, got {restarts!r}")
    if spec.kind != "decision" and (starting_points is not None or pool is not None):
        raise BoxhackError(
            f"starting_points and pool are for the decision attacks (boundary, hsj), not "
            f"{spec.name!r}"
        )
    atk, params = _construct(spec, budget, attack_kwargs)

    was_training = model.training
    try:
        return _sweep(model, monitor, x0, y, spec, atk, params, eps_list, goal, budget,
                      int(eps_steps), int(restarts), seed, starting_points, pool, start)
    finally:
        model.train(was_training)


def _goal_of(goal: str | None, criterion: str | None) -> str:
    """The goal from ``goal=`` or the deprecated ``criterion=`` (default "misclassify")."""
    if criterion is not None:
        warnings.warn("criterion= is deprecated; pass goal= ('misclassify' or 'combined')",
                      DeprecationWarning, stacklevel=3)
        if goal is not None and goal != criterion:
            raise BoxhackError(f"goal={goal!r} and criterion={criterion!r} disagree; pass goal= only")
        goal = criterion
    goal = "misclassify" if goal is None else goal
    if goal not in GOALS_SUPPORTED:
        raise BoxhackError(_goal_error(goal))
    return goal


def _sweep(model, monitor, x0, y, spec, atk, params, eps_list, goal, budget, eps_steps,
           restarts, seed, starting_points, pool, start) -> list[AttackResult]:
    model.eval()
    pred0, accepted0 = monitor.predict(model, x0)
    fmodel = foolbox_model(model)
    device = _device(model)
    if spec.kind == "decision":  # count the label-and-verdict queries for either goal
        crit = MonitorMisclassification(y, model, monitor, require_accept=goal == "combined")
    else:
        crit = foolbox_criterion(goal, y, model, monitor)
    info: dict = {
        "attack": spec.name,
        "norm": spec.norm,
        "kind": spec.kind,
        "goal": goal,
        "budget": budget,
        "params": {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool))},
        "seed": int(seed),
    }
    start_time = time.perf_counter()
    with torch.random.fork_rng(devices=[]), torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.manual_seed(seed)
        if spec.kind == "fixed":
            info.update(eps_steps=int(eps_steps), restarts=int(restarts))
            x_t = torch.as_tensor(x0, device=device)
            advs, extra, per_eps = _run_fixed(atk, fmodel, x_t, crit, eps_list, int(eps_steps), restarts)
        elif spec.kind == "minimal":
            info["restarts"] = int(restarts)
            x_t = torch.as_tensor(x0, device=device)
            advs, extra, per_eps = _run_minimal(atk, fmodel, x_t, crit, eps_list, restarts)
        else:
            advs, extra, per_eps = _run_decision(
                atk, fmodel, model, monitor, x0, y, crit, goal, eps_list,
                starting_points=starting_points, pool=pool, start=start, seed=seed,
            )  # fmt: skip
    info["attack_s"] = time.perf_counter() - start_time
    if isinstance(crit, MonitorMisclassification):
        info["queries"] = int(crit.queries)
    results = []
    for k, (e, x_adv) in enumerate(zip(eps_list, advs)):
        x_adv = _finite_or(np.asarray(x_adv, dtype=np.float32).reshape(x0.shape), x0,
                           input_bounds(model))
        if e is not None:  # Foolbox's float32 arithmetic can land a hair outside the budget
            x_adv = fit_to_budget(x0, x_adv, spec.norm, e)
        info_e = {**info, **extra, **per_eps[k], "epsilon": e,
                  "budget": None if e is None else {"norm": spec.norm, "eps": float(e)}}
        results.append(
            verify(model, monitor, x0, x_adv, goal, labels=y, pred0=pred0,
                   accepted0=accepted0, info=info_e)
        )  # fmt: skip
    return results


def _run_decision(atk, fmodel, model, monitor, x0, y, crit, goal, eps_list, *,
                  starting_points, pool, start, seed):
    """Decision attack on the samples that have a starting point meeting the goal.

    1. starting points: given, or :func:`boxhack.attacks.starts.find_starting_points` (with
       Foolbox's blended noise as its noise search);
    2. the attack runs on the subset with a start (Foolbox insists that every start meets the
       goal in ITS batch, so starts are re-checked on the subset batch first);
    3. hardening: the attack ends right at the goal's boundary, where the float32 verdict
       can depend on the batch it is computed in; each result is moved towards its start
       (``x + t (start - x)``, smallest t of a short grid) until the goal holds both in the
       whole batch and for the input alone (:func:`boxhack.attacks.starts.harden`);
    4. the hardened points are clipped to each epsilon (Foolbox's own clipping).
    """
    if starting_points is not None:
        starts = as_batch(starting_points, "starting_points", bounds=input_bounds(model))
        if starts.shape != x0.shape:
            raise BoxhackError(
                f"starting_points have shape {starts.shape}, the inputs {x0.shape}; give one "
                f"starting point per input"
            )
        found = crit.decide(starts)
        start_info = {"start_method": "given"}
    else:
        starts, found, start_info = find_starting_points(
            model, monitor, x0, y, goal=goal, pool=pool, method=start, seed=seed,
            decide=crit.decide, decide_each=crit.decide_each, noise=blended_noise_starts,
        )  # fmt: skip
    advs = [x0.copy() for _ in eps_list]
    idx, sub_crit = _starts_in_subset(crit, np.flatnonzero(found), starts, model, monitor)
    found = np.zeros(len(x0), dtype=bool)
    found[idx] = True
    extra = {"has_start": found.tolist(), **start_info}
    if len(idx):
        dev = _device(model)
        x_t = torch.as_tensor(x0[idx], device=dev)
        s_t = torch.as_tensor(starts[idx], device=dev)
        _, xpcs, _ = atk(fmodel, x_t, sub_crit, epsilons=[None], starting_points=s_t)
        raw = x0.copy()
        raw[idx] = _to_np(xpcs[0])
        raw, t_used = harden(raw, starts, found, crit.decide, crit.decide_each,
                             bounds=input_bounds(model))
        extra["harden_t"] = [None if not np.isfinite(t) else float(t) for t in t_used]
        x0_t = ep.astensor(torch.as_tensor(x0, device=dev))
        raw_t = ep.astensor(torch.as_tensor(raw, device=dev))
        for k, e in enumerate(eps_list):
            advs[k] = raw if e is None else _to_np(atk.distance.clip_perturbation(x0_t, raw_t, e))
        crit.queries += sub_crit.queries
        crit.calls += sub_crit.calls
    return advs, extra, [{} for _ in eps_list]


def _starts_in_subset(crit, idx, starts, model, monitor):
    """``(rows, criterion of their subset)``: the rows ``idx`` whose start meets the goal in
    the batch of those rows (re-checked up to 3 times: the subset batch may judge a borderline
    start differently; none when it never settles)."""
    sub_crit = None
    for _ in range(3):
        if not len(idx):
            break
        sub_crit = _subset_criterion(crit, idx, model, monitor)
        ok = sub_crit.decide(starts[idx])
        if ok.all():
            break
        idx = idx[ok]
    else:
        idx = idx[:0]
    return idx, sub_crit


def _foolbox_decide(crit, model, x: np.ndarray) -> np.ndarray:
    """Evaluate a criterion made by :func:`foolbox_criterion` on a numpy batch (bool, N)."""
    if isinstance(crit, MonitorMisclassification):
        return crit.decide(x)
    labels = _to_np(crit.labels)
    with torch.no_grad():
        logits = model(torch.as_tensor(x, device=_device(model)))
    return logits.argmax(1).cpu().numpy() != labels


def _subset_criterion(crit, idx, model, monitor):
    labels = _to_np(crit.labels)[idx]
    if isinstance(crit, MonitorMisclassification):
        sub = MonitorMisclassification(labels, model, monitor, require_accept=crit.require_accept)
        return sub
    return fb.criteria.Misclassification(torch.as_tensor(labels, device=_device(model)))


def blended_noise_starts(
    model, monitor, inputs, labels, goal: str = "combined", *, directions: int = 100,
    steps: int = 50, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Foolbox's blended-uniform-noise search for points that meet ``goal``.

    Draws up to ``directions`` uniform-noise images per input until one meets the goal, then
    line-searches the blend ``(1 - t) x0 + t noise`` for the smallest such t. Returns
    ``(starts, found)``; where nothing was found the start is the noise image (not usable).
    Noise is almost never accepted by a monitor, so with ``"combined"`` this mostly fails;
    it is the noise search of :func:`boxhack.attacks.starts.find_starting_points`.
    """
    x0, y = _check_inputs(model, inputs, labels)
    crit = foolbox_criterion(goal, y, model, monitor)
    atk = fb.attacks.LinearSearchBlendedUniformNoiseAttack(directions=directions, steps=steps)
    x_t = torch.as_tensor(x0, device=_device(model))
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "failed to draw sufficient random inputs"
        torch.manual_seed(seed)
        starts = _finite_or(_to_np(atk.run(foolbox_model(model), x_t, crit)), x0,
                            input_bounds(model))
    return starts, _foolbox_decide(crit, model, starts)


def run_adversarial(
    model,
    monitor,
    inputs,
    labels,
    attack: str = "fgsm",
    epsilon: float | None = 0.1,
    *,
    goal: str | None = None,
    criterion: str | None = None,
    **attack_kwargs,
) -> AttackResult:
    """Attack ``model`` on ``inputs`` with a Foolbox attack; verify every sample.

    Args:
        model: a PyTorch classifier (logits out), inputs in [0, 1].
        monitor: a fitted monitor of the monitor protocol (its verdict is measured on every
            sample; with ``goal="combined"`` the attack also targets it).
        inputs: (N, ...) float array in [0, 1].
        labels: (N,) true class indices; "flipped" means prediction != label.
        attack: a name of :data:`ATTACKS` (or an alias).
        epsilon: budget in the attack's norm (``ATTACKS[name].norm``), >= 0; ``None`` (minimal
            and decision attacks only) for no clipping.
        goal: ``"misclassify"`` (default) or ``"combined"`` (misclassified and accepted);
            ``criterion=`` is its deprecated spelling.
        budget: ``"default"`` or ``"quick"`` (smaller iteration budgets for tests and
            ``--quick`` runs).
        eps_steps: fixed-epsilon attacks: number of budgets searched up to epsilon (default
            1 for "misclassify", 8 for "combined").
        restarts: Foolbox ``repeat``: run the attack this many times, keep a success.
        seed: torch seed for random starts and random walks (the global RNG is restored).
        starting_points, pool, start: decision attacks only, see
            :func:`boxhack.attacks.starts.find_starting_points`.
        **attack_kwargs: constructor arguments of the Foolbox attack (``steps=...``).

    Returns:
        An :class:`~boxhack.attacks.verify.AttackResult` with goal ``goal``: per sample
        ``pred`` (flipped = ``pred != labels``), ``accepted``, ``success``, L1/L2/Linf;
        ``info`` holds the attack, norm, epsilon, parameters, time and monitor queries.
    """
    return run_adversarial_sweep(
        model, monitor, inputs, labels, attack, [epsilon], goal=_goal_of(goal, criterion),
        **attack_kwargs,
    )[0]


class FoolboxAttack(Attack):
    """A Foolbox attack of :data:`ATTACKS` as an :class:`~boxhack.attacks.base.Attack`.

    ``FoolboxAttack(method, epsilon, goal, ...)(model, monitor, inputs, labels=None,
    starts=None, pool=None)`` is :func:`run_adversarial` (the same result for the same
    arguments); :meth:`sweep` runs several budgets at once (:func:`run_adversarial_sweep`).

    Parameters
    ----------
    method : str -- a name of :data:`ATTACKS` or an alias ("fgsm", "pgd-l2", "cw", "hsj"...).
    epsilon : float or None -- the budget in the attack's norm (``None``: minimal and
        decision attacks unclipped).
    goal : "misclassify" | "combined" -- given to Foolbox as its criterion.
    budget : "default" | "quick" -- the attack's iteration budget.
    eps_steps, restarts, seed, start : as :func:`run_adversarial`.
    **attack_kwargs : constructor arguments of the Foolbox attack (``steps=...``).

    Per call: ``labels`` (the reference a success must differ from; default the model's
    predictions), ``starts`` (decision attacks: starting points meeting the goal, else they
    are searched), ``pool`` (decision attacks: candidate images for that search).
    """

    goals = GOALS_SUPPORTED
    name = "foolbox"
    default_goal: str = "misclassify"

    def __init__(self, method: str = "fgsm", epsilon: float | None = 0.1, goal: str | None = None,
                 *, budget: str = "default", eps_steps: int | None = None, restarts: int = 1,
                 seed: int = 0, start: str = "auto", **attack_kwargs) -> None:
        self.spec = get_spec(method)
        self.method = self.spec.name
        self.epsilon = _check_epsilons([epsilon], self.spec)[0]
        self.goal = self._set_goal(self.default_goal if goal is None else goal)
        _construct(self.spec, budget, attack_kwargs)  # refuse unknown parameters now
        self.budget = budget
        self.eps_steps = eps_steps
        self.restarts = restarts
        self.seed = int(seed)
        self.start = start
        self.attack_kwargs = dict(attack_kwargs)

    def run(self, model, monitor, inputs, *, labels=None, targets=None, starts=None,
            goal: str | None = None, pool=None, **options) -> AttackResult:
        check_options(type(self).__name__, options, ("pool",))
        return self.sweep(model, monitor, inputs, labels, [self.epsilon], goal=goal,
                          starts=starts, pool=pool, targets=targets)[0]

    def sweep(self, model, monitor, inputs, labels=None, epsilons=None, *, goal=None,
              starts=None, pool=None, targets=None) -> list[AttackResult]:
        """One verified result per budget of ``epsilons`` (default: this attack's epsilon),
        from one run of the attack (see :func:`run_adversarial_sweep`)."""
        if targets is not None:
            raise BoxhackError(f"{type(self).__name__} takes no targets (its goals: "
                               f"{', '.join(self.goals)})")
        goal = self.goal if goal is None else self._set_goal(goal)
        decision = {"starting_points": starts, "pool": pool, "start": self.start}
        if self.spec.kind != "decision":
            if starts is not None or pool is not None:
                raise BoxhackError(f"starts and pool are for the decision attacks (boundary, "
                                   f"hsj), not {self.method!r}")
            decision = {}
        return run_adversarial_sweep(
            model, monitor, inputs, labels_or_predictions(model, monitor, inputs, labels),
            self.method, [self.epsilon] if epsilons is None else epsilons, goal=goal,
            budget=self.budget, eps_steps=self.eps_steps, restarts=self.restarts,
            seed=self.seed, **decision, **self.attack_kwargs,
        )  # fmt: skip


def flip_counts(result: AttackResult) -> dict:
    """``{"n", "flipped", "accepted", "flipped_and_accepted"}`` counts of a result."""
    reference = result.labels if result.labels is not None else result.pred0
    flipped = result.pred != reference
    return {
        "n": len(result),
        "flipped": int(flipped.sum()),
        "accepted": int(result.accepted.sum()),
        "flipped_and_accepted": int((flipped & result.accepted).sum()),
    }
