"""Is this monitor fitted on this model? One check, used by every command that takes both.

A monitor's boxes mean something only for the network whose layer vectors built them. A
monitor fitted on another network with the same layer width runs without error and gives
meaningless verdicts, so every command that takes a model and a monitor calls
:func:`check_compatible` first. What a monitor records at fit time:

- ``metadata["model_sha256"]``: the weights-file hash of a boxhack model directory (its
  ``model.json`` ``sha256``), recorded by ``boxhack monitor fit`` (or ``fit(model_sha256=...)``);
- ``metadata["model_state_sha256"]``: a hash of the fitted model's ``state_dict`` (names,
  dtypes, shapes and exact bytes of every tensor), recorded by every monitor's ``fit`` for any
  ``nn.Module``, so monitors fitted in Python are checked by content too;
- the monitored layers, their widths and the class count (always in the file).

The check: every monitored layer exists in the model and (with an example input or a known
input shape) has the recorded width; the model's output width equals the monitor's class
count; each recorded hash equals the model's when both are known. A monitor fitted on
precomputed features (no model, no hash) is checked on layers, widths and classes only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from boxhack.errors import BoxhackError, NotFittedError
from boxhack.models.layers import collect, layer_names
from boxhack.models.zoo import NETWORKS
from boxhack.monitor.base import MonitorLike, state_sha256

__all__ = ["check_compatible", "state_sha256"]


def _short(digest: str) -> str:
    return f"{digest[:12]}..."


def _example(model_info: Mapping[str, Any] | None, example: Any) -> torch.Tensor | None:
    if example is not None:
        x = torch.as_tensor(np.asarray(example) if not isinstance(example, torch.Tensor)
                            else example)  # fmt: skip
        return x[:1].to(torch.float32)
    info = model_info or {}
    shape = info.get("input_shape")
    if not shape:
        arch = info.get("architecture")
        if arch in NETWORKS:
            shape = NETWORKS[arch][0].input_shape
    if not shape:
        return None
    try:
        return torch.zeros((1, *(int(s) for s in shape)), dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        return None


def check_compatible(
    monitor: MonitorLike,
    model: nn.Module,
    model_info: Mapping[str, Any] | None = None,
    *,
    example: Any = None,
    monitor_name: str | None = None,
    model_name: str | None = None,
) -> None:
    """Raise :class:`BoxhackError` unless ``monitor`` was fitted on ``model`` (see module doc).

    ``model_info`` is the model's description (:func:`~boxhack.models.loaders.load_any_model`'s second value: its
    ``sha256``, ``n_classes``, ``input_shape``); ``example`` an input batch used to measure
    the layer widths (default: zeros of the recorded input shape). The names are only for the
    message. Works for every abstraction: it uses only the protocol (:class:`MonitorLike`).
    """
    if not monitor.is_fitted:
        raise NotFittedError(f"{type(monitor).__name__} is not fitted yet; fit or load a "
                             f"monitor before checking it against a model")
    info = dict(model_info or {})
    mon = f"monitor {monitor_name}" if monitor_name else "the monitor"
    mod = f"model {model_name}" if model_name else "this model"
    refit = (f"; refit the monitor on this model (`boxhack monitor fit --model {model_name}`)"
             if model_name else "; refit the monitor on this model")  # fmt: skip

    def fail(reason: str) -> BoxhackError:
        return BoxhackError(f"{mon} does not fit {mod}: {reason}{refit}")

    reason = (_hash_mismatch(monitor, model, info) or _missing_layers(monitor, model)
              or _class_mismatch(monitor, info))
    if reason:
        raise fail(reason)
    x = _example(info, example)
    if x is not None:
        reason = _width_mismatch(monitor, model, x, mod)
        if reason:
            raise fail(reason)


def _hash_mismatch(monitor: MonitorLike, model: nn.Module, info: Mapping[str, Any]) -> str | None:
    """The recorded weights-file hash and state hash against the model's, where known."""
    meta = monitor.metadata_ or {}
    recorded = meta.get("model_sha256")
    have = info.get("sha256")
    if isinstance(recorded, str) and recorded and isinstance(have, str) and have \
            and recorded != have:
        return (f"it was fitted on a model with weights sha256 {_short(recorded)}, "
                f"this one has {_short(have)}")
    recorded_state = meta.get("model_state_sha256")
    if isinstance(recorded_state, str) and recorded_state:
        current = state_sha256(model)
        if current != recorded_state:
            return (f"it was fitted on a model whose weights hash to "
                    f"{_short(recorded_state)}, this one's to {_short(current)}")
    return None


def _missing_layers(monitor: MonitorLike, model: nn.Module) -> str | None:
    names = layer_names(model)
    known = set(names)
    missing = [layer for layer in monitor.layers_ if layer not in known or not layer]
    if not missing:
        return None
    return (f"it watches layer(s) {', '.join(map(repr, missing))}, which the model lacks "
            f"(its layers: {', '.join(names) or '(none)'})")


def _class_mismatch(monitor: MonitorLike, info: Mapping[str, Any]) -> str | None:
    n_info = info.get("n_classes")
    if isinstance(n_info, int) and not isinstance(n_info, bool) and n_info != monitor.n_classes_:
        return f"it has {monitor.n_classes_} classes, the model {n_info}"
    return None


def _width_mismatch(monitor: MonitorLike, model: nn.Module, x: torch.Tensor,
                    mod: str) -> str | None:
    """Run one example: every monitored layer's width and the number of outputs."""
    outputs: dict[str, Any] = {}

    def keep(module: nn.Module, inp: Any, out: Any) -> None:
        outputs["out"] = out

    try:
        with torch.no_grad():
            handle = model.register_forward_hook(keep)
            try:
                _, feats = collect(model, list(monitor.layers_), x.cpu(), batch_size=1)
            finally:
                handle.remove()
    except RuntimeError as exc:
        raise BoxhackError(
            f"{mod} does not run on inputs of shape {tuple(x.shape[1:])}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    for layer in monitor.layers_:
        width = int(feats[layer].shape[1])
        if width != monitor.dims_[layer]:
            return (f"layer {layer!r} has width {width} in the model, "
                    f"{monitor.dims_[layer]} in the monitor")
    out = outputs.get("out")
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] != monitor.n_classes_:
        return (f"the model has {int(out.shape[1])} outputs (classes), the monitor "
                f"{monitor.n_classes_} classes")
    return None
