"""Search spaces for the optimisation attacks: where the solver's variables live.

A search space maps solver variables ``u`` (K numbers, with finite box bounds) to an input
``x = clip(anchor + B u, 0, 1)`` of the model's input shape, differentiably (torch), where
``anchor`` is the point the search is centred on (the original input ``x0``, or a start such
as an FGSM output) and ``B`` an (n, K) basis:

- ``"input"``: the full input; the variables are the pixels themselves (``u = x``, bounds
  [0, 1]^n, no clipping needed). This is the paper's formulation.
- ``"pca:K"``: the top-K principal components of training inputs (``train_inputs=`` needed);
  ``u_k`` is bounded by +-``PCA_RANGE`` standard deviations of the training data along
  component k. K must be at most n.
- ``"blocks:B"``: B x B coarse pixel blocks per channel, upsampled (nearest) to the image
  size; ``u`` in [-1, 1]^(C B^2) is each block's brightness change. Images only.

Low-dimensional spaces are what let the global solvers (SHGO, differential evolution) work on
MNIST at all: SHGO triangulates its sample points (qhull) and differential evolution keeps a
population proportional to the dimension, both hopeless in 784 dimensions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from boxhack.errors import BoxhackError

__all__ = ["PCA_RANGE", "SPACE_KINDS", "SearchSpace", "make_space", "parse_space", "pca_basis"]

SPACE_KINDS = ("input", "pca", "blocks")
PCA_RANGE = 2.0  # pca:K bounds: +- this many training standard deviations per component
_PCA_MAX_SAMPLES = 5000


def parse_space(spec: str) -> tuple[str, int | None]:
    """``"input"`` -> ("input", None); ``"pca:20"`` -> ("pca", 20); ``"blocks:7"`` -> ("blocks", 7)."""
    if not isinstance(spec, str):
        raise BoxhackError(f"space must be a string like 'input', 'pca:20' or 'blocks:7', got {spec!r}")
    text = spec.strip().lower()
    if text == "input":
        return "input", None
    m = re.fullmatch(r"(pca|blocks):(\d+)", text)
    if not m:
        raise BoxhackError(
            f"unknown search space {spec!r}; use 'input', 'pca:K' (top-K PCA components of the "
            f"training inputs) or 'blocks:B' (B x B coarse pixel blocks), e.g. 'pca:20'"
        )
    k = int(m.group(2))
    if k < 1:
        raise BoxhackError(f"search space {spec!r}: the size must be at least 1")
    return m.group(1), k


@dataclass
class SearchSpace:
    """Variables ``u`` in ``[lower, upper]`` mapped to inputs by ``to_input``."""

    spec: str
    kind: str
    input_shape: tuple[int, ...]
    anchor: np.ndarray  # (n,) float64, the centre of the search
    basis: np.ndarray | None  # (n, K) float64; None for the input space
    lower: np.ndarray  # (K,)
    upper: np.ndarray  # (K,)

    @property
    def dim(self) -> int:
        return len(self.lower)

    @property
    def n_inputs(self) -> int:
        return int(np.prod(self.input_shape))

    def initial(self) -> np.ndarray:
        """The variables of the anchor itself (the natural starting point of a local solver)."""
        if self.basis is None:
            return self.anchor.copy()
        return np.zeros(self.dim)

    def to_input(self, u: torch.Tensor) -> torch.Tensor:
        """(B, K) variables -> (B, n) flat inputs in [0, 1] (differentiable, same dtype)."""
        if self.basis is None:
            return u.clamp(0.0, 1.0)
        basis = torch.as_tensor(self.basis, dtype=u.dtype)
        anchor = torch.as_tensor(self.anchor, dtype=u.dtype)
        return (anchor + u @ basis.T).clamp(0.0, 1.0)

    def to_input_np(self, u: np.ndarray) -> np.ndarray:
        u = np.atleast_2d(np.asarray(u, dtype=np.float64))
        if self.basis is None:
            return np.clip(u, 0.0, 1.0)
        return np.clip(self.anchor + u @ self.basis.T, 0.0, 1.0)

    def describe(self) -> dict:
        return {"space": self.spec, "kind": self.kind, "dim": self.dim}


_PCA_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def pca_basis(train_inputs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` principal directions (n, k) and their standard deviations (k,).

    Uses at most ``_PCA_MAX_SAMPLES`` evenly spaced training inputs; deterministic, with a
    fixed sign per component (largest |entry| positive). Cached per data and k.
    """
    x = np.asarray(train_inputs, dtype=np.float64).reshape(len(train_inputs), -1)
    if len(x) < 2:
        raise BoxhackError("pca search space needs at least 2 training inputs")
    if len(x) > _PCA_MAX_SAMPLES:
        x = x[np.linspace(0, len(x) - 1, _PCA_MAX_SAMPLES).astype(int)]
    key = (x.shape, float(x.sum()), float((x * np.arange(1, x.shape[1] + 1)).sum()), k)
    if key in _PCA_CACHE:
        return _PCA_CACHE[key]
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    k_eff = min(k, len(vt))
    basis = vt[:k_eff].T.copy()
    for j in range(k_eff):
        if basis[np.argmax(np.abs(basis[:, j])), j] < 0:
            basis[:, j] = -basis[:, j]
    std = s[:k_eff] / np.sqrt(len(x) - 1)
    std = np.maximum(std, 1e-6)
    _PCA_CACHE[key] = (basis, std)
    return basis, std


def _block_basis(input_shape: tuple[int, ...], b: int) -> np.ndarray:
    if len(input_shape) == 2:
        c, (h, w) = 1, input_shape
    elif len(input_shape) == 3:
        c, h, w = input_shape
    else:
        raise BoxhackError(
            f"blocks:B search spaces need image inputs (C, H, W); this model takes inputs of "
            f"shape {tuple(input_shape)}; use 'input' or 'pca:K'"
        )
    if b > min(h, w):
        raise BoxhackError(f"blocks:{b} is finer than the {h}x{w} image; use B <= {min(h, w)}")
    rows = (np.arange(h) * b) // h
    cols = (np.arange(w) * b) // w
    block = (rows[:, None] * b + cols[None, :]).reshape(-1)  # (h*w,) block index per pixel
    basis = np.zeros((c * h * w, c * b * b))
    for ch in range(c):
        basis[ch * h * w + np.arange(h * w), ch * b * b + block] = 1.0
    return basis


def make_space(
    spec: str,
    anchor: np.ndarray,
    input_shape: tuple[int, ...],
    *,
    train_inputs: np.ndarray | None = None,
) -> SearchSpace:
    """Build the search space ``spec`` centred on ``anchor`` (one input, any shape)."""
    kind, k = parse_space(spec)
    anchor = np.asarray(anchor, dtype=np.float64).reshape(-1)
    n = int(np.prod(input_shape))
    if anchor.size != n:
        raise BoxhackError(f"anchor has {anchor.size} values, the input shape {input_shape} {n}")
    if kind == "input":
        return SearchSpace(spec, kind, tuple(input_shape), anchor, None, np.zeros(n), np.ones(n))
    if kind == "pca":
        if train_inputs is None:
            raise BoxhackError(
                f"search space {spec!r} needs the training inputs to compute principal "
                f"components; pass train_inputs=dataset.x_train"
            )
        t = np.asarray(train_inputs)
        if t.ndim < 2 or int(np.prod(t.shape[1:])) != n:
            raise BoxhackError(
                f"train_inputs have per-sample shape {tuple(t.shape[1:])}, the model's inputs "
                f"{tuple(input_shape)}"
            )
        if k > n:
            raise BoxhackError(f"pca:{k} asks for more components than the {n} input values")
        basis, std = pca_basis(t, k)
        r = PCA_RANGE * std
        return SearchSpace(spec, kind, tuple(input_shape), anchor, basis, -r, r)
    basis = _block_basis(tuple(input_shape), k)
    d = basis.shape[1]
    return SearchSpace(spec, kind, tuple(input_shape), anchor, basis, -np.ones(d), np.ones(d))
