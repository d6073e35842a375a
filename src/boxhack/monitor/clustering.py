"""Clustering of one class's layer vectors: k-means with a fixed k or the elbow rule.

The elbow rule (Outside the Box): start at k = 1 and go to k + 1 while the relative drop in
k-means inertia, ``1 - inertia(k+1) / inertia(k)``, is at least ``threshold``; stop at
``max_clusters``. Inertia is the sum of squared distances to the cluster centres (for k = 1:
to the mean, computed directly). A class whose inertia reaches 0 stops there (no division by
zero), and k never exceeds the number of distinct vectors.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from boxhack.errors import BoxhackError

# k-means runs single-threaded by default: one class's vectors are few, and scikit-learn's
# OpenMP threads slow down by 10-40x when the cores are shared (parallel test workers, other
# jobs). BOXHACK_KMEANS_THREADS=N overrides it.
KMEANS_THREADS = int(os.environ.get("BOXHACK_KMEANS_THREADS", "1") or 1)


@dataclass
class Clustering:
    """The outcome for one class: a cluster label per row, the chosen k, the inertias seen."""

    labels: np.ndarray  # int64 (n,), values 0..k-1, every value used
    k: int
    inertias: list[float] = field(default_factory=list)  # inertias[i] is for k = i + 1


def n_distinct_rows(x: np.ndarray, cap: int | None = None) -> int:
    """Number of distinct rows of ``x`` (exact, bitwise after -0.0 == 0.0 normalisation).

    With ``cap`` the answer is ``min(distinct, cap)`` and is found cheaply when ``x`` clearly
    has more than ``cap`` distinct rows.
    """
    n = len(x)
    if n == 0:
        return 0
    x = np.ascontiguousarray(x) + 0.0  # -0.0 -> 0.0 so equal values compare equal bitwise
    if cap is not None and n > 4 * cap:
        # cheap early exit: a sample of 4*cap rows with more than cap distinct rows suffices
        probe = np.unique(x[: 4 * cap], axis=0)
        if len(probe) >= cap:
            return cap
    distinct = len(np.unique(x, axis=0))
    return distinct if cap is None else min(distinct, cap)


_CONTROLLER = None


def _thread_limit():
    """A context limiting OpenMP/BLAS threads to KMEANS_THREADS (libraries scanned once)."""
    global _CONTROLLER
    from threadpoolctl import ThreadpoolController  # scans the loaded libraries: only to fit

    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=KMEANS_THREADS)


def _kmeans(x: np.ndarray, k: int, seed: int, n_init: int):
    from sklearn.cluster import KMeans  # scikit-learn takes ~1 s to import: only to fit
    from sklearn.exceptions import ConvergenceWarning

    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed, algorithm="lloyd")
    with warnings.catch_warnings(), _thread_limit():
        warnings.simplefilter("ignore", ConvergenceWarning)
        km.fit(x)
    return np.asarray(km.labels_, dtype=np.int64), float(km.inertia_)


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber labels to 0..k-1 in order of first use (drops empty clusters)."""
    used, inverse = np.unique(labels, return_inverse=True)
    return inverse.astype(np.int64).reshape(-1), len(used)


def cluster_class(
    x: np.ndarray,
    *,
    n_clusters: int | None = None,
    threshold: float = 0.07,
    max_clusters: int = 10,
    seed: int = 0,
    n_init: int = 3,
) -> Clustering:
    """Cluster the rows of ``x`` (n, d): fixed ``n_clusters``, or the elbow rule when None."""
    x = np.asarray(x)
    n = len(x)
    if n == 0:
        raise BoxhackError("cannot cluster an empty set of vectors")
    x64 = x.astype(np.float64)
    inertia1 = float(((x64 - x64.mean(0)) ** 2).sum())
    ones = np.zeros(n, dtype=np.int64)
    if n_clusters is not None:
        k = min(int(n_clusters), n_distinct_rows(x, cap=int(n_clusters)))
        if k <= 1:
            return Clustering(ones, 1, [inertia1])
        labels, inertia = _kmeans(x, k, seed, n_init)
        labels, k = _compact(labels)
        return Clustering(labels, k, [inertia])

    cap = min(int(max_clusters), n_distinct_rows(x, cap=int(max_clusters)))
    best = Clustering(ones, 1, [inertia1])
    current = inertia1
    k = 1
    while k < cap and current > 0.0:
        labels, inertia = _kmeans(x, k + 1, seed, n_init)
        best.inertias.append(inertia)
        drop = 1.0 - inertia / current
        if drop < threshold:
            break
        labels, used = _compact(labels)
        best.labels, best.k = labels, used
        current = inertia
        k += 1
    return best
