"""A model's input domain: its ``bounds`` and its ``preprocessing``, as in Foolbox.

``InputDomain(model, bounds=(0, 255), preprocessing=dict(mean=..., std=..., axis=-3))`` is a
thin wrapper: its forward normalises ``(x - mean) / std`` and calls the user's model. It adds
no layer of its own and renames none: every function that resolves a layer name
(:func:`boxhack.models.layers.get_layer`, ``tap``, ``list_layers``) looks through it, at the
wrapped model (:func:`layer_root`), so ``"fc1"`` stays ``"fc1"``.

What the domain means:

- inputs live in the user's space, ``bounds`` included: attacks clip to ``bounds``
  (:func:`input_bounds`), ``verify`` refuses samples outside them, and ``fit`` / ``predict``
  refuse inputs outside them with one clear line (:func:`check_inputs`) - a set of 0-255
  pixels given to a (0, 1) model is an error, not a monitor that silently rejects everything;
- a model that is not wrapped has the default domain: bounds (0, 1) for attacks, and no input
  check (a plain ``nn.Module`` declares nothing; wrap it to be checked).

``input_shape`` (one sample's shape, without the batch) is optional: where known, one
unbatched sample given to ``predict`` is taken as a batch of one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from boxhack.errors import BoxhackError

__all__ = [
    "DEFAULT_BOUNDS",
    "InputDomain",
    "check_inputs",
    "declared_input_shape",
    "domain_of",
    "input_bounds",
    "layer_root",
    "parse_bounds",
    "parse_preprocessing",
    "unit_domain",
]

DEFAULT_BOUNDS = (0.0, 1.0)


def parse_bounds(bounds: Any) -> tuple[float, float]:
    """``(lo, hi)`` from a pair or a ``"lo,hi"`` string; finite with ``lo < hi``."""
    if bounds is None:
        return DEFAULT_BOUNDS
    if isinstance(bounds, str):
        bounds = [p for p in bounds.replace(":", ",").split(",") if p.strip()]
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise BoxhackError(f"bounds must be two numbers lo,hi (e.g. 0,1 or 0,255), got "
                           f"{bounds!r}") from None  # fmt: skip
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise BoxhackError(f"bounds must be finite with lo < hi, got ({lo}, {hi})")
    return lo, hi


def _numbers(value: Any, what: str) -> list[float]:
    if isinstance(value, str):
        value = [p for p in value.split(",") if p.strip()]
    if isinstance(value, (int, float)):
        value = [value]
    try:
        out = [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]
    except (TypeError, ValueError):
        raise BoxhackError(f"preprocessing {what} must be numbers, got {value!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise BoxhackError(f"preprocessing {what} must be finite numbers, got {value!r}")
    return out


def parse_preprocessing(pre: Any) -> dict | None:
    """``{"mean": [...], "std": [...], "axis": int}`` from a dict or a JSON string (Foolbox's
    ``preprocessing=dict(mean=..., std=..., axis=-3)``); ``None`` / empty: none."""
    if pre is None or pre == {} or pre == "":
        return None
    if isinstance(pre, str):
        import json

        try:
            pre = json.loads(pre)
        except json.JSONDecodeError as exc:
            raise BoxhackError(f"--preprocessing is not JSON ({exc.msg}); give e.g. "
                               f"'{{\"mean\": [0.5], \"std\": [0.25], \"axis\": -3}}'") from None
    if not isinstance(pre, Mapping):
        raise BoxhackError(f"preprocessing must be a dict with mean, std and axis, got {pre!r}")
    unknown = sorted(set(pre) - {"mean", "std", "axis"})
    if unknown:
        raise BoxhackError(f"preprocessing has unknown key(s) {unknown}; use mean, std, axis")
    mean = _numbers(pre.get("mean", 0.0), "mean")
    std = _numbers(pre.get("std", 1.0), "std")
    if any(s <= 0 for s in std):
        raise BoxhackError(f"preprocessing std must be > 0, got {std}")
    axis = pre.get("axis", -3 if max(len(mean), len(std)) > 1 else None)
    if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool) or axis >= 0):
        raise BoxhackError(f"preprocessing axis counts from the end of a sample's shape (e.g. "
                           f"-3 for the channels of C,H,W), got {axis!r}")  # fmt: skip
    return {"mean": mean, "std": std, "axis": axis}


class InputDomain(nn.Module):
    """The user's model with its input domain (see the module doc). ``net`` is the model;
    its layers are the layers of this wrapper, under the same names."""

    def __init__(self, net: nn.Module, bounds: Sequence[float] | str | None = None,
                 preprocessing: Mapping | str | None = None,
                 input_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        self.net = net  # a domain may wrap another (the outer one's bounds hold)
        self.bounds = parse_bounds(bounds)
        self.preprocessing = parse_preprocessing(preprocessing)
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        mean, std = self._broadcast()
        # not persistent: the state dict stays the user's (its keys are net.<user's names>)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def _broadcast(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        pre = self.preprocessing
        if pre is None:
            return None, None
        axis = pre["axis"]
        shape = [-1] + [1] * (-axis - 1) if axis is not None else [-1]
        mean = torch.tensor(pre["mean"], dtype=torch.float32).reshape(shape)
        std = torch.tensor(pre["std"], dtype=torch.float32).reshape(shape)
        return mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return self.net(x)

    def extra_repr(self) -> str:
        return f"bounds={self.bounds}, preprocessing={self.preprocessing}"

    def domain_key(self) -> str:
        """What the domain adds to the model's state hash ('' when no preprocessing)."""
        pre = self.preprocessing
        inner = self.net.domain_key() if isinstance(self.net, InputDomain) else ""
        mine = "" if pre is None else f"preprocessing={pre['mean']}/{pre['std']}/{pre['axis']}"
        return f"{mine};{inner}" if inner else mine


def domain_of(model: nn.Module) -> InputDomain | None:
    """The outermost :class:`InputDomain` of ``model`` (``None``: a plain model)."""
    return model if isinstance(model, InputDomain) else None


def layer_root(model: nn.Module) -> nn.Module:
    """The model whose module paths and graph names are the layer names (the user's model
    inside any :class:`InputDomain`)."""
    while isinstance(model, InputDomain):
        model = model.net
    return model


def input_bounds(model: nn.Module | None) -> tuple[float, float]:
    """The bounds attacks clip to: the model's declared ones, else (0, 1)."""
    dom = None if model is None else domain_of(model)
    return DEFAULT_BOUNDS if dom is None else dom.bounds


def to_unit(a: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """Inputs in ``bounds`` as points of the unit box (float32): ``(a - lo) / (hi - lo)``."""
    lo, hi = bounds
    return ((np.asarray(a).astype(np.float64) - lo) / (hi - lo)).clip(0, 1).astype(np.float32)


def from_unit(x0: np.ndarray, u0: np.ndarray, u: np.ndarray,
              bounds: tuple[float, float]) -> np.ndarray:
    """The unit-box attack result ``u`` (started at ``u0 = to_unit(x0)``) back in ``bounds``:
    ``x0`` plus the perturbation times ``hi - lo``, clipped; inputs the attack left alone are
    ``x0`` bit for bit."""
    lo, hi = bounds
    moved = np.asarray(u).astype(np.float64) - np.asarray(u0).astype(np.float64)
    x = np.clip(x0.astype(np.float64) + (hi - lo) * moved, lo, hi).astype(np.float32)
    return np.where(moved == 0, x0, x)


def unit_domain(model: nn.Module) -> nn.Module:
    """``model`` seen from [0, 1]: ``u`` in [0, 1] is the input ``lo + (hi - lo) * u`` of a
    model with bounds ``(lo, hi)`` (the model itself when its bounds are (0, 1)). Attacks
    written for the unit box run on it; norms scale by ``hi - lo``."""
    lo, hi = input_bounds(model)
    if (lo, hi) == DEFAULT_BOUNDS:
        return model
    scale = hi - lo
    return InputDomain(model, bounds=DEFAULT_BOUNDS,
                       preprocessing={"mean": [-lo / scale], "std": [1.0 / scale], "axis": None},
                       input_shape=declared_input_shape(model))


def declared_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """One sample's shape where the model declares it (its domain, or its exported graph)."""
    while isinstance(model, InputDomain):
        if model.input_shape is not None:
            return model.input_shape
        model = model.net
    shape = getattr(model, "input_shape", None)
    return None if shape is None else tuple(int(s) for s in shape)


def check_inputs(model: nn.Module, x: torch.Tensor, what: str = "inputs") -> None:
    """Refuse inputs outside the declared bounds of ``model`` (nothing to check for a plain
    model). One pass over ``x``; the message says how far out and what to do."""
    dom = domain_of(model)
    if dom is None or x.numel() == 0:
        return
    lo, hi = dom.bounds
    x_min, x_max = float(x.min()), float(x.max())
    if x_min >= np.float32(lo) and x_max <= np.float32(hi):
        return
    hint = ""
    if hi <= 1.0 and x_max > 1.5:
        hint = " (pixels in 0-255? divide by 255, or declare --bounds 0,255)"
    raise BoxhackError(f"{what} range over [{x_min:.6g}, {x_max:.6g}], outside the model's "
                       f"input bounds [{lo:g}, {hi:g}]{hint}")  # fmt: skip
