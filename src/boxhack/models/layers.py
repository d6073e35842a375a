"""Layer taps: read the outputs of named sub-modules with forward hooks.

Layers are named by their module path, as ``dict(model.named_modules())`` spells them
(``"fc2"``, ``"features.3"``). Outputs are flattened to ``(N, d)`` per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from boxhack.errors import BoxhackError


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the sub-module at module path ``name`` or raise a clear error listing the names."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        names = [n for n in modules if n]
        raise BoxhackError(
            f"unknown layer {name!r}; this model's layers are: {', '.join(names) or '(none)'}"
        )
    return modules[name]


def list_layers(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str, int]]:
    """(name, module type, flattened output width) for every named leaf layer, in call order."""
    seen: list[tuple[str, str, int]] = []
    handles = []
    for name, module in model.named_modules():
        if not name or len(list(module.children())) > 0:
            continue

        def hook(mod, inp, out, _name=name):
            if isinstance(out, torch.Tensor):
                seen.append((_name, type(mod).__name__, int(out[0].numel())))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return seen


@contextmanager
def tap(model: nn.Module, layers: Sequence[str], *, inputs: bool = False):
    """Context manager: record the (un-detached) output of each named layer on every forward.

    With ``inputs=True`` the layer's first input is recorded instead (e.g. the pre-activation
    of a ReLU module). Yields a dict ``{name: tensor (N, d)}`` refreshed by each forward call.
    """
    store: dict[str, torch.Tensor] = {}
    handles = []
    for name in layers:
        module = get_layer(model, name)

        def hook(mod, inp, out, _name=name):
            value = inp[0] if inputs else out
            store[_name] = value.flatten(1)

        handles.append(module.register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def forward_with_layers(
    model: nn.Module, layers: Sequence[str], x: torch.Tensor, *, inputs: bool = False
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One differentiable forward pass returning ``(logits, {layer: (N, d) tensor})``."""
    with tap(model, layers, inputs=inputs) as store:
        logits = model(x)
    return logits, dict(store)


def collect(
    model: nn.Module,
    layers: Sequence[str],
    inputs: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Batched no-grad forward: ``(predictions (N,), {layer: float32 (N, d)})`` as numpy."""
    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    x_all = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs)
    x_all = x_all.to(torch.float32)
    preds: list[np.ndarray] = []
    feats: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tap(model, layers) as store:
            for start in range(0, len(x_all), batch_size):
                xb = x_all[start : start + batch_size].to(device)
                logits = model(xb)
                preds.append(logits.argmax(1).cpu().numpy())
                for name in layers:
                    feats[name].append(store[name].float().cpu().numpy())
    finally:
        model.train(was_training)
    n_out = {name: (np.concatenate(v) if v else np.zeros((0, 0), np.float32)) for name, v in feats.items()}
    pred = np.concatenate(preds) if preds else np.zeros((0,), np.int64)
    return pred.astype(np.int64), n_out
