"""Seeded, class-balanced samples of a data set's inputs.

The test split is ordered by class, so "the first N test digits" are all zeros. Experiments
and ``--n`` options draw with :func:`sample_balanced` instead: the same seed gives the same
indices on any machine, and every class gets its share as far as the candidates allow.
"""

from __future__ import annotations

import numpy as np

from boxhack.errors import BoxhackError

__all__ = ["sample_balanced"]


def sample_balanced(labels, n: int, seed: int, mask=None) -> np.ndarray:
    """Sorted indices of up to ``n`` inputs with ``mask`` true, as class-balanced as possible.

    Each class's candidates are put in a seeded random order; the sample takes the first of
    every class, then the second of every class, and so on (classes in a seeded random order
    within a round), until ``n`` are taken. A class with too few candidates gives what it has
    and the others fill in. Fewer than ``n`` indices come back only when fewer than ``n``
    candidates exist.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise BoxhackError(f"labels must be 1-D (one class per input), got shape {labels.shape}")
    if labels.size and (labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer)):
        raise BoxhackError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise BoxhackError(f"the sample size must be an integer >= 0, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BoxhackError(f"the seed must be an integer >= 0, got {seed!r}")
    keep = np.ones(len(labels), dtype=bool) if mask is None else np.asarray(mask)
    if keep.shape != labels.shape or keep.dtype != bool:
        raise BoxhackError(f"mask must be {len(labels)} booleans, got {keep.dtype} {keep.shape}")
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(keep)
    classes = np.unique(labels[candidates])
    class_rank = rng.permutation(len(classes))  # order of the classes within a round
    round_of = np.empty(len(candidates), dtype=np.int64)
    rank_of = np.empty(len(candidates), dtype=np.int64)
    for c, rank in zip(classes, class_rank):
        pos = np.flatnonzero(labels[candidates] == c)
        round_of[pos[rng.permutation(len(pos))]] = np.arange(len(pos))
        rank_of[pos] = rank
    order = np.lexsort((rank_of, round_of))
    return np.sort(candidates[order[: int(n)]])
