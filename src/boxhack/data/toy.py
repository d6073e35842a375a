"""The paper's two 2-D toy problems.

The paper names "an XOR-like circuit" and "a tangent hyperbolic circuit" without defining
them. boxhack's choice, both on the unit square so attacks use the same [0, 1] bounds as
images:

- ``xor``: x uniform in [0, 1]^2, label = (x1 > 0.5) XOR (x2 > 0.5). Four clusters, two per
  class, which is what makes box monitors with k > 1 interesting on it.
- ``tanh``: x uniform in [0, 1]^2, label = x2 > 0.5 + 0.35 * tanh(6 * (x1 - 0.5)): a smooth
  S-shaped boundary that a tanh network fits well.

A margin of 0.05 around each boundary is left empty so both problems are cleanly separable
and networks reach near-100% accuracy, as circuits should.
"""

from __future__ import annotations

import numpy as np

GAP = 0.05


def _xor_signed(x: np.ndarray) -> np.ndarray:
    # distance-like value: positive for class 1
    return -(x[:, 0] - 0.5) * (x[:, 1] - 0.5)


def _tanh_signed(x: np.ndarray) -> np.ndarray:
    return x[:, 1] - (0.5 + 0.35 * np.tanh(6.0 * (x[:, 0] - 0.5)))


def make_toy(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of toy problem ``name`` ("xor" or "tanh"), float32 (n, 2), labels int64."""
    rng = np.random.default_rng(seed)
    out = np.empty((0, 2), np.float32)
    while len(out) < n:
        x = rng.uniform(0.0, 1.0, size=(2 * n, 2))
        if name == "xor":
            keep = (np.abs(x[:, 0] - 0.5) > GAP) & (np.abs(x[:, 1] - 0.5) > GAP)
        else:
            keep = np.abs(_tanh_signed(x)) > GAP
        out = np.concatenate([out, x[keep].astype(np.float32)])
    x = out[:n]
    signed = _xor_signed(x) if name == "xor" else _tanh_signed(x)
    return x, (signed > 0).astype(np.int64)
