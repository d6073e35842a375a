"""Seeded, class-balanced samples of a data set's inputs (for ``--n N``).

Test splits are ordered by class (the first hundred MNIST test digits are all zeros), so "the
first N" is not a sample. :func:`sample_balanced` draws N indices, as evenly over the classes
as the eligible inputs allow, with a seeded generator: the same call gives the same indices on
every machine (``numpy.random.default_rng(seed)``, nothing else random).
"""

from __future__ import annotations

import numbers

import numpy as np

from boxhack.errors import BoxhackError

__all__ = ["sample_balanced"]


def sample_balanced(labels, n: int, seed: int, mask=None) -> np.ndarray:
    """Indices of a seeded, class-balanced sample of ``n`` items (sorted, int64).

    ``labels``: class per item (1-D integers). ``mask``: optional booleans, only items where
    it is true may be drawn (e.g. inputs the attack can start from). Each class present among
    the eligible items gets ``n // K`` or ``n // K + 1`` items (``K`` classes); a class with
    fewer eligible items gives all of them and the others share its remainder evenly (water
    filling). Which classes get the ``+1`` and which items are drawn within a class is decided
    by ``numpy.random.default_rng(seed)``. When fewer than ``n`` items are eligible, all of
    them are returned: callers that need exactly ``n`` compare the length.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise BoxhackError(f"labels must be 1-D, got shape {y.shape}")
    if y.size and (y.dtype == bool or not np.issubdtype(y.dtype, np.integer)):
        raise BoxhackError(f"labels must be integer class indices, got dtype {y.dtype}")
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
        raise BoxhackError(f"the sample size must be an integer >= 1, got {n!r}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise BoxhackError(f"the seed must be an integer >= 0, got {seed!r}")
    if mask is None:
        eligible = np.arange(len(y))
    else:
        m = np.asarray(mask)
        if m.shape != y.shape or m.dtype != bool:
            raise BoxhackError(f"mask must be {len(y)} booleans, got {m.dtype} {m.shape}")
        eligible = np.flatnonzero(m)
    rng = np.random.default_rng(int(seed))
    classes, counts = np.unique(y[eligible], return_counts=True)
    if len(classes) == 0:
        return np.zeros(0, dtype=np.int64)
    if counts.sum() <= n:
        return eligible.astype(np.int64)
    # water filling: the largest level L with sum(min(count, L)) <= n (binary search; the
    # total exceeds n, so L is below the largest count) ...
    lo, hi = 0, int(counts.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(counts, mid).sum() <= n:
            lo = mid
        else:
            hi = mid - 1
    quota = np.minimum(counts, lo)
    # ... and the rest one each to randomly chosen classes that still have items left
    left = n - int(quota.sum())
    open_classes = np.flatnonzero(counts > quota)
    quota[rng.permutation(open_classes)[:left]] += 1
    picked = []
    labels_eligible = y[eligible]
    for k, cls in enumerate(classes):
        members = eligible[labels_eligible == cls]
        picked.append(rng.permutation(members)[: quota[k]])
    return np.sort(np.concatenate(picked)).astype(np.int64)
