"""Starting points for decision-based attacks, from predicted labels and verdicts only.

Decision-based attacks (Boundary, HopSkipJump) walk the boundary of their goal's region from a
point that already meets the goal (``"combined"``: misclassified and accepted;
``"misclassify"``: misclassified). :func:`find_starting_points` finds one per input, asking
the black box only for labels and verdicts:

1. ``"dataset"``: query the black box once on each image of a pool (by default the other
   inputs of the batch; the experiments pass training images): keep those whose predicted
   label differs from the input's label and (for "combined") that the monitor accepts; take
   the nearest one in L2. Such images exist for every class the monitor accepts anything of.
2. then pull it towards the original along the segment ``x0 + t (s - x0)``
   (:func:`pull_towards`): try ``grid`` values of t, keep the smallest that meets the goal,
   and bisect ``refine_steps`` times between it and the failing value below it (the goal
   always holds at the kept end, so the start stays valid even though the region is not
   convex along the segment).
3. ``"noise"``: a noise search given by the caller (``noise=``; the Foolbox adapter passes its
   blended uniform noise, :func:`boxhack.attacks.adversarial.blended_noise_starts`). Noise
   images are almost never accepted by a monitor, so for "combined" this rarely helps;
   ``"auto"`` (default) uses the pool first and noise only for inputs still without a start.

Inputs without any start stay unfound (and so count as failures). :func:`harden` moves an
attack's boundary points back into the region, robustly to how they are batched.

This module knows nothing of Foolbox: the adapter (:mod:`boxhack.attacks.adversarial`) and the
decision-only attacker (:mod:`boxhack.attacks.decision`) both build on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from boxhack.attacks.verify import as_batch
from boxhack.errors import BoxhackError
from boxhack.models.domain import DEFAULT_BOUNDS, input_bounds

__all__ = ["HARDEN_STEPS", "START_GOALS", "START_METHODS", "find_starting_points",
           "goal_decider", "goal_decider_each", "harden", "pull_towards"]

START_METHODS = ("auto", "dataset", "noise")
START_GOALS = ("combined", "misclassify")  # the goals a decision-based attack walks

Decide = Callable[[np.ndarray], np.ndarray]
DecideEach = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: ``noise(model, monitor, inputs, labels, goal, *, directions, seed) -> (starts, found)``
NoiseSearch = Callable[..., tuple[np.ndarray, np.ndarray]]


def goal_decider(model, monitor, labels: np.ndarray, goal: str) -> Decide:
    """The goal on a batch shaped like the inputs: ``(pred != label) [& accepted]`` (bool, N)."""
    labels = np.asarray(labels, dtype=np.int64)

    def decide(x: np.ndarray) -> np.ndarray:
        pred, accepted = monitor.predict(model, x)
        ok = np.asarray(pred) != labels
        if goal == "combined":
            ok &= np.asarray(accepted, dtype=bool)
        return ok

    return decide


def goal_decider_each(model, monitor, labels: np.ndarray, goal: str) -> DecideEach:
    """The goal on some rows, each judged alone: ``(x_rows, row_indices) -> bool``."""
    labels = np.asarray(labels, dtype=np.int64)

    def decide_each(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        out = np.zeros(len(rows), dtype=bool)
        for j, i in enumerate(np.asarray(rows, dtype=np.int64)):
            pred, accepted = monitor.predict(model, x[j : j + 1])
            out[j] = int(pred[0]) != int(labels[i]) and (goal != "combined" or bool(accepted[0]))
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
    decide: Decide,
    *,
    grid: int = 10,
    refine_steps: int = 8,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Move valid starts towards ``x0`` along the segment (see the module docstring, step 2).

    ``decide`` takes a batch with the rows of ``x0`` (same order and size) and says where the
    goal holds. Returns ``(starts, found, queries)``; a start whose goal fails on
    re-check is dropped from ``found``. Points are clipped to ``bounds`` (the model's input
    bounds; the segment lies inside them, the clip only catches rounding).
    """
    b_lo, b_hi = (np.float32(b) for b in bounds)
    n = len(x0)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    delta = starts - x0
    queries = 0

    def at(t: np.ndarray) -> np.ndarray:
        # t == 1 is the start itself, exactly: x0 + (s - x0) is not s in float32, and pool
        # images are often ON a box face (training vectors span the tight boxes)
        t = t.reshape(shape).astype(np.float32)
        return np.where(t >= 1, starts, np.clip(x0 + t * delta, b_lo, b_hi)).astype(np.float32)

    hi = np.ones(n)
    ok1 = decide(at(hi))
    queries += n
    found = found & ok1
    lo = np.zeros(n)
    ts = np.linspace(0.0, 1.0, grid + 1)[1:-1]
    chosen = np.zeros(n, dtype=bool)
    for t in ts:  # smallest grid value that meets the goal
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
    decide: Decide,
    decide_each: DecideEach,
    steps=HARDEN_STEPS,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
) -> tuple[np.ndarray, np.ndarray]:
    """Move boundary points into the goal's region, robustly to how they are batched.

    For each row in ``mask``: the smallest ``t`` in ``steps`` for which
    ``x + t (start - x)`` meets the goal both in a batch of all rows (``decide``) and
    alone (``decide_each(x_rows, row_indices)``); ``t = 1`` is the start itself. Returns
    ``(points, t)`` with ``t = nan`` for rows not in ``mask`` or never satisfied (kept as is).
    Points are clipped to ``bounds`` (the model's input bounds).
    """
    b_lo, b_hi = (np.float32(b) for b in bounds)
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
            moved = np.clip(x + np.float32(t) * (starts - x), b_lo, b_hi).astype(np.float32)
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
    goal: str = "combined",
    pool=None,
    method: str = "auto",
    seed: int = 0,
    decide: Decide | None = None,
    decide_each: DecideEach | None = None,
    candidates: int = 5,
    grid: int = 10,
    refine_steps: int = 8,
    noise_directions: int = 100,
    noise: NoiseSearch | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """A starting point meeting ``goal`` for each input, from labels and verdicts only.

    Args:
        goal: ``"combined"`` (misclassified and accepted) or ``"misclassify"``.
        pool: (P, ...) candidate images (default: ``inputs`` themselves); each is queried once.
        method: ``"auto"`` (pool, then noise), ``"dataset"`` (pool only) or ``"noise"``.
        decide: the goal on a batch shaped like ``inputs`` (default: :func:`goal_decider`).
        decide_each: the goal on some rows, each judged alone (default:
            :func:`goal_decider_each`). A start must pass both: a float32 verdict near a face
            can depend on the batch (and training images often lie ON a face).
        candidates: pool images tried per input, nearest first, until one gives a start.
        noise: the noise search (see the module docstring); ``None``: none ("auto" then uses
            the pool only, "noise" is refused).

    Returns:
        ``(starts, found, info)``: starts (N, ...) float32, ``found`` (N,) bool where the start
        meets the goal, and ``info`` with the method used per input and query counts
        (``pool_queries``: one per pool image; ``search_queries``: segment search and final
        re-check, made through ``decide``; ``noise_queries``: an upper bound for the noise).
    """
    if method not in START_METHODS:
        raise BoxhackError(f"unknown start method {method!r}; choose one of: {', '.join(START_METHODS)}")
    if goal not in START_GOALS:
        raise BoxhackError(f"goal must be one of {', '.join(map(repr, START_GOALS))}, got {goal!r}")
    if method == "noise" and noise is None:
        raise BoxhackError("start method 'noise' needs a noise search (noise=); "
                           "boxhack.attacks.decision.find_starting_points gives Foolbox's")
    bounds = input_bounds(model)
    x0 = as_batch(inputs, "inputs", bounds=bounds)
    y = np.asarray(labels, dtype=np.int64)
    if len(y) != len(x0):
        raise BoxhackError(f"got {len(x0)} inputs but {len(y)} labels")
    decide = decide or goal_decider(model, monitor, y, goal)
    decide_each = decide_each or goal_decider_each(model, monitor, y, goal)
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
    info: dict[str, Any] = {"pool_queries": 0, "search_queries": 0, "noise_queries": 0}
    if method in ("auto", "dataset"):
        info["pool_queries"] = _pool_starts(model, monitor, x0, y, goal, pool, robust, starts,
                                            found, source, candidates, grid, refine_steps,
                                            bounds)  # fmt: skip
    if method in ("auto", "noise") and noise is not None and not found.all():
        info["noise_queries"] = _noise_starts(noise, model, monitor, x0, y, goal, starts, found,
                                              source, noise_directions, seed)  # fmt: skip
    if found.any():  # final re-check on a batch of the inputs' size (as the attack will see it)
        found &= robust(np.where(found.reshape((-1,) + (1,) * (x0.ndim - 1)), starts, x0))
        source[~found] = "none"
    info["search_queries"] = int(counter[0])
    info["start_method"] = method
    info["start_source"] = source.tolist()
    info["start_found"] = int(found.sum())
    return starts, found, info


def _pool_starts(model, monitor, x0, y, goal, pool, robust: Decide, starts, found, source,
                 candidates: int, grid: int, refine_steps: int,
                 bounds: tuple[float, float] = DEFAULT_BOUNDS) -> int:
    """Step 1-2 of the module docstring, in place on ``starts``, ``found`` and ``source``:
    the nearest pool images meeting the goal, pulled towards the inputs. Returns the number
    of pool queries."""
    pool_x = x0 if pool is None else as_batch(pool, "pool", x0.shape[1:], bounds)
    pred_p, acc_p = monitor.predict(model, pool_x)
    allowed = np.asarray(pred_p)[None, :] != y[:, None]
    if goal == "combined":
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
                                     refine_steps=refine_steps, bounds=bounds)  # fmt: skip
        starts[ok] = pulled[ok]
        found |= ok
        source[ok] = "dataset"
    return len(pool_x)


def _noise_starts(noise: NoiseSearch, model, monitor, x0, y, goal, starts, found, source,
                  directions: int, seed: int) -> int:
    """Step 3 of the module docstring for the inputs still without a start, in place on
    ``starts``, ``found`` and ``source``. Returns an upper bound of the queries it made."""
    missing = np.flatnonzero(~found)
    found_noise, ok = noise(model, monitor, x0[missing], y[missing], goal,
                            directions=directions, seed=seed)  # fmt: skip
    starts[missing[ok]] = found_noise[ok]
    found[missing[ok]] = True
    source[missing[ok]] = "noise"
    return len(missing) * (directions + 50)
