"""The decision-only attacker: sees the predicted label and the monitor's accept/reject verdict,
nothing else (no logits, no gradients, no boxes).

Its goal is the combined one: an input the model misclassifies AND the monitor accepts. The
goal is given to Foolbox's decision-based attacks (Boundary, HopSkipJump) as a criterion
(:class:`~boxhack.attacks.adversarial.MonitorMisclassification`), so they walk the boundary of
the region "wrong label and accepted" directly, shrinking the distance to the original.

Decision-based attacks must start from a point that already meets the criterion.
:func:`find_starting_points` finds one per input, with label-and-verdict queries only:

1. ``"dataset"``: query the black box once on each image of a pool (by default the other
   inputs of the batch; the experiments pass training images): keep those whose predicted
   label differs from the input's label and (for "combined") that the monitor accepts; take
   the nearest one in L2. Such images exist for every class the monitor accepts anything of.
2. then pull it towards the original along the segment ``x0 + t (s - x0)``: try ``grid``
   values of t, keep the smallest that meets the criterion, and bisect ``refine_steps`` times
   between it and the failing value below it (the criterion always holds at the kept end,
   so the start stays valid even though the region is not convex along the segment).
3. ``"noise"``: Foolbox's blended uniform noise (random images blended with x0). Noise
   images are almost never accepted by a box monitor, so for "combined" this rarely helps;
   ``"auto"`` (default) uses the pool first and noise only for inputs still without a start.

Inputs without any start are returned unchanged (and so count as failures).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from boxhack.attacks.verify import AttackResult, as_batch
from boxhack.errors import BoxhackError

START_METHODS = ("auto", "dataset", "noise")
DECISION_ATTACKS = ("hsj", "boundary")


def _criterion_decider(model, monitor, labels: np.ndarray, criterion: str):
    labels = np.asarray(labels, dtype=np.int64)

    def decide(x: np.ndarray) -> np.ndarray:
        pred, accepted = monitor.predict(model, x)
        ok = np.asarray(pred) != labels
        if criterion == "combined":
            ok &= np.asarray(accepted, dtype=bool)
        return ok

    return decide


def _criterion_decider_each(model, monitor, labels: np.ndarray, criterion: str):
    labels = np.asarray(labels, dtype=np.int64)

    def decide_each(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        out = np.zeros(len(rows), dtype=bool)
        for j, i in enumerate(np.asarray(rows, dtype=np.int64)):
            pred, accepted = monitor.predict(model, x[j : j + 1])
            out[j] = int(pred[0]) != int(labels[i]) and (criterion != "combined" or bool(accepted[0]))
        return out

    return decide_each


def _nearest(x0: np.ndarray, pool: np.ndarray, allowed: np.ndarray, k: int = 1,
             chunk: int = 512) -> np.ndarray:
    """Per row i of x0, the indices of the ``k`` nearest (L2) pool rows j with allowed[i, j],
    nearest first; -1 where there are fewer. Shape (N, k)."""
    a = x0.reshape(len(x0), -1).astype(np.float64)
    b = pool.reshape(len(pool), -1).astype(np.float64)
    bb = (b * b).sum(1)
    k = max(1, min(k, len(b)))
    out = np.full((len(a), k), -1, dtype=np.int64)
    for r0 in range(0, len(a), chunk):
        d = (a[r0 : r0 + chunk] ** 2).sum(1)[:, None] + bb[None, :] - 2 * (a[r0 : r0 + chunk] @ b.T)
        d = np.where(allowed[r0 : r0 + chunk], d, np.inf)
        part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < d.shape[1] else np.tile(
            np.arange(d.shape[1]), (len(d), 1))
        dk = np.take_along_axis(d, part, 1)
        order = np.argsort(dk, axis=1, kind="stable")
        part, dk = np.take_along_axis(part, order, 1), np.take_along_axis(dk, order, 1)
        out[r0 : r0 + chunk] = np.where(np.isfinite(dk), part, -1)
    return out


def pull_towards(
    x0: np.ndarray,
    starts: np.ndarray,
    found: np.ndarray,
    decide: Callable[[np.ndarray], np.ndarray],
    *,
    grid: int = 10,
    refine_steps: int = 8,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Move valid starts towards ``x0`` along the segment (see the module docstring, step 2).

    ``decide`` takes a batch with the rows of ``x0`` (same order and size) and says where the
    criterion holds. Returns ``(starts, found, queries)``; a start whose criterion fails on
    re-check is dropped from ``found``.
    """
    n = len(x0)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    delta = starts - x0
    queries = 0

    def at(t: np.ndarray) -> np.ndarray:
        # t == 1 is the start itself, exactly: x0 + (s - x0) is not s in float32, and pool
        # images are often ON a box face (training vectors span the tight boxes)
        t = t.reshape(shape).astype(np.float32)
        return np.where(t >= 1, starts, np.clip(x0 + t * delta, 0.0, 1.0)).astype(np.float32)

    hi = np.ones(n)
    ok1 = decide(at(hi))
    queries += n
    found = found & ok1
    lo = np.zeros(n)
    ts = np.linspace(0.0, 1.0, grid + 1)[1:-1]
    chosen = np.zeros(n, dtype=bool)
    for t in ts:  # smallest grid value that meets the criterion
        ok = decide(at(np.full(n, t)))
        queries += n
        new = ok & found & ~chosen
        hi[new] = t
        chosen |= new
        lo[~chosen] = t  # the largest failing value below the eventual choice
    lo[~chosen] = ts[-1] if len(ts) else 0.0
    for _ in range(refine_steps):
        mid = (lo + hi) / 2
        ok = decide(at(mid))
        queries += n
        hi = np.where(ok & found, mid, hi)
        lo = np.where(ok & found, lo, mid)
    out = np.where(found.reshape(shape), at(hi), starts)
    return out.astype(np.float32), found, queries


HARDEN_STEPS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def harden(
    x: np.ndarray,
    starts: np.ndarray,
    mask: np.ndarray,
    decide: Callable[[np.ndarray], np.ndarray],
    decide_each: Callable[[np.ndarray, np.ndarray], np.ndarray],
    steps=HARDEN_STEPS,
) -> tuple[np.ndarray, np.ndarray]:
    """Move boundary points into the criterion's region, robustly to how they are batched.

    For each row in ``mask``: the smallest ``t`` in ``steps`` for which
    ``x + t (start - x)`` meets the criterion both in a batch of all rows (``decide``) and
    alone (``decide_each(x_rows, row_indices)``); ``t = 1`` is the start itself. Returns
    ``(points, t)`` with ``t = nan`` for rows not in ``mask`` or never satisfied (kept as is).
    """
    shape = (-1,) + (1,) * (x.ndim - 1)
    out = x.copy()
    t_used = np.full(len(x), np.nan)
    todo = mask.copy()
    for t in steps:
        if not todo.any():
            break
        if t >= 1:
            moved = starts
        else:
            moved = np.clip(x + np.float32(t) * (starts - x), 0.0, 1.0).astype(np.float32)
        cand = np.where(todo.reshape(shape), moved, out)
        rows = np.flatnonzero(todo & decide(cand))
        if len(rows):
            good = rows[decide_each(cand[rows], rows)]
            out[good] = cand[good]
            t_used[good] = t
            todo[good] = False
    return out, t_used


def find_starting_points(
    model,
    monitor,
    inputs,
    labels,
    *,
    criterion: str = "combined",
    pool=None,
    method: str = "auto",
    seed: int = 0,
    decide: Callable[[np.ndarray], np.ndarray] | None = None,
    decide_each: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    candidates: int = 5,
    grid: int = 10,
    refine_steps: int = 8,
    noise_directions: int = 100,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """A starting point meeting ``criterion`` for each input, from labels and verdicts only.

    Args:
        pool: (P, ...) candidate images (default: ``inputs`` themselves); each is queried once.
        method: ``"auto"`` (pool, then noise), ``"dataset"`` (pool only) or ``"noise"``.
        decide: the criterion on a batch shaped like ``inputs`` (default: built from the
            model, monitor and labels).
        decide_each: the criterion on some rows, each judged alone: ``(x_rows, row_indices)``
            -> bool (default: built likewise). A start must pass both: the monitor's float32
            verdict on a point near a box face can depend on the batch it is computed in (and
            training images often lie ON a face), so a start is only kept if its verdict does
            not depend on the batching.
        candidates: pool images tried per input, nearest first, until one gives a start.

    Returns:
        ``(starts, found, info)``: starts (N, ...) float32, ``found`` (N,) bool where the start
        meets the criterion, and ``info`` with the method used per input and query counts
        (``pool_queries``: one per pool image; ``search_queries``: segment search and final
        re-check, made through ``decide``; ``noise_queries``: an upper bound for the noise).
    """
    if method not in START_METHODS:
        raise BoxhackError(f"unknown start method {method!r}; choose one of: {', '.join(START_METHODS)}")
    if criterion not in ("misclassify", "combined"):
        raise BoxhackError(f"criterion must be 'misclassify' or 'combined', got {criterion!r}")
    x0 = as_batch(inputs, "inputs")
    y = np.asarray(labels, dtype=np.int64)
    if len(y) != len(x0):
        raise BoxhackError(f"got {len(x0)} inputs but {len(y)} labels")
    decide = decide or _criterion_decider(model, monitor, y, criterion)
    decide_each = decide_each or _criterion_decider_each(model, monitor, y, criterion)

    counter = [0]

    def robust(xs: np.ndarray) -> np.ndarray:
        ok = decide(xs)
        rows = np.flatnonzero(ok)
        if len(rows):
            ok[rows] = decide_each(xs[rows], rows)
        counter[0] += len(xs) + len(rows)
        return ok

    starts = x0.copy()
    found = np.zeros(len(x0), dtype=bool)
    source = np.array(["none"] * len(x0), dtype=object)
    info: dict = {"pool_queries": 0, "search_queries": 0, "noise_queries": 0}

    if method in ("auto", "dataset"):
        pool_x = x0 if pool is None else as_batch(pool, "pool", x0.shape[1:])
        pred_p, acc_p = monitor.predict(model, pool_x)
        info["pool_queries"] = len(pool_x)
        allowed = np.asarray(pred_p)[None, :] != y[:, None]
        if criterion == "combined":
            allowed &= np.asarray(acc_p, dtype=bool)[None, :]
        if pool is None:  # never an input's own image
            np.fill_diagonal(allowed, False)
        ranked = _nearest(x0, pool_x, allowed, k=candidates)
        for r in range(ranked.shape[1]):
            todo = ~found & (ranked[:, r] >= 0)
            if not todo.any():
                break
            cand = np.where(todo.reshape((-1,) + (1,) * (x0.ndim - 1)),
                            pool_x[np.maximum(ranked[:, r], 0)], x0)  # fmt: skip
            pulled, ok, _ = pull_towards(x0, cand, todo, robust, grid=grid,
                                         refine_steps=refine_steps)  # fmt: skip
            starts[ok] = pulled[ok]
            found |= ok
            source[ok] = "dataset"
    if method in ("auto", "noise") and not found.all():
        from boxhack.attacks.adversarial import blended_noise_starts

        missing = np.flatnonzero(~found)
        noise, ok = blended_noise_starts(
            model, monitor, x0[missing], y[missing], criterion,
            directions=noise_directions, seed=seed,
        )  # fmt: skip
        info["noise_queries"] = len(missing) * (noise_directions + 50)  # upper bound
        starts[missing[ok]] = noise[ok]
        found[missing[ok]] = True
        source[missing[ok]] = "noise"
    if found.any():  # final re-check on a batch of the inputs' size (as the attack will see it)
        found &= robust(np.where(found.reshape((-1,) + (1,) * (x0.ndim - 1)), starts, x0))
        source[~found] = "none"
    info["search_queries"] = int(counter[0])
    info["start_method"] = method
    info["start_source"] = source.tolist()
    info["start_found"] = int(found.sum())
    return starts, found, info


def decision_attack(
    model,
    monitor,
    inputs,
    labels,
    *,
    method: str = "hsj",
    epsilon: float | None = None,
    criterion: str = "combined",
    pool=None,
    start: str = "auto",
    starting_points=None,
    budget: str = "default",
    seed: int = 0,
    **attack_kwargs,
) -> AttackResult:
    """The decision-only attacker: Boundary or HopSkipJump on the combined goal.

    Foolbox's attack walks the boundary of "misclassified and accepted" from a starting point
    found by :func:`find_starting_points` (or given). The result is verified with goal
    ``criterion``; ``info["queries"]`` counts every label-and-verdict query (pool, starting
    point search, attack) and ``info["has_start"]`` says which inputs had a start.
    """
    from boxhack.attacks.adversarial import run_adversarial_sweep

    if method not in DECISION_ATTACKS and method != "hopskipjump":
        raise BoxhackError(
            f"decision-only attacks are {', '.join(DECISION_ATTACKS)}; got {method!r}"
        )
    result = run_adversarial_sweep(
        model, monitor, inputs, labels, method, [epsilon], criterion=criterion, budget=budget,
        seed=seed, starting_points=starting_points, pool=pool, start=start, **attack_kwargs,
    )[0]  # fmt: skip
    info = result.info
    # the criterion counted the attack's and the start search's queries; add the pool's and
    # the noise search's (which ran on their own criterion)
    info["attack_queries"] = int(info.get("queries", 0))
    info["queries"] = (
        info["attack_queries"] + int(info.get("pool_queries", 0)) + int(info.get("noise_queries", 0))
    )
    return result


class DecisionOnlyAttack:
    """Foolbox-style wrapper: ``DecisionOnlyAttack("hsj", steps=20)(model, monitor, x, labels)``."""

    def __init__(self, method: str = "hsj", *, epsilon: float | None = None,
                 criterion: str = "combined", start: str = "auto", budget: str = "default",
                 seed: int = 0, **attack_kwargs):
        self.method = method
        self.epsilon = epsilon
        self.criterion = criterion
        self.start = start
        self.budget = budget
        self.seed = seed
        self.attack_kwargs = attack_kwargs

    def __call__(self, model, monitor, inputs, labels, *, pool=None, starting_points=None) -> AttackResult:
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        return decision_attack(
            model, monitor, inputs, labels, method=self.method, epsilon=self.epsilon,
            criterion=self.criterion, pool=pool, start=self.start,
            starting_points=starting_points, budget=self.budget, seed=self.seed,
            **self.attack_kwargs,
        )  # fmt: skip
