"""Layer taps: read the outputs of named layers.

Layers are named by their module path, as ``dict(model.named_modules())`` spells them
(``"fc2"``, ``"features.3"``), in the user's model: an :class:`~boxhack.models.domain.InputDomain`
around it adds no name (:func:`~boxhack.models.domain.layer_root`). Plain modules are tapped
with forward hooks; graph models (``torch.export`` programs and TorchScript,
:mod:`boxhack.models.graph`) by the graph's named values, so the same functions work for every
kind of model. Outputs are flattened to ``(N, d)`` per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from boxhack.errors import BoxhackError
from boxhack.models.domain import check_inputs, declared_input_shape, layer_root
from boxhack.models.graph import GraphModel


def layer_names(model: nn.Module) -> list[str]:
    """Every layer name ``model`` can tap (module paths; graph values for graph models)."""
    root = layer_root(model)
    if isinstance(root, GraphModel):
        return list(root.layers)
    return [n for n, _ in root.named_modules() if n]


def is_relu_layer(model: nn.Module, name: str) -> bool:
    """Is layer ``name`` a ReLU's output (so its input is the pre-activation)?"""
    root = layer_root(model)
    if isinstance(root, GraphModel):
        return root.layer(name).is_relu
    return isinstance(get_layer(root, name), nn.ReLU)


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the sub-module at module path ``name`` or raise a clear error listing the names.
    For a graph model (no sub-module to return) the model itself, once ``name`` is checked."""
    model = layer_root(model)
    if isinstance(model, GraphModel):
        model.layer(name)
        return model
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        names = [n for n in modules if n]
        raise BoxhackError(
            f"unknown layer {name!r}; this model's layers are: {', '.join(names) or '(none)'}"
        )
    return modules[name]


def _example(example) -> torch.Tensor:
    if isinstance(example, torch.Tensor):
        return example.to(torch.float32)
    arr = np.asarray(example)
    if arr.dtype.kind in "iu" and arr.ndim == 1:  # a shape: (1, 28, 28)
        return torch.zeros((1, *(int(s) for s in arr)), dtype=torch.float32)
    return torch.as_tensor(arr, dtype=torch.float32)


def list_layers(model: nn.Module, example) -> list[tuple[str, str, int]]:
    """(name, type, flattened output width) for every named leaf layer, in call order.
    ``example`` is an input batch, or one sample's shape (``(1, 28, 28)``)."""
    example = _example(example)
    shape = declared_input_shape(model)
    if shape is not None and tuple(example.shape) == shape:
        example = example[None]
    root = layer_root(model)
    if isinstance(root, GraphModel):
        device = _device(root)
        return root.list_layers(example.to(device))
    seen: list[tuple[str, str, int]] = []
    handles = []
    for name, module in root.named_modules():
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
    root = layer_root(model)
    if isinstance(root, GraphModel):
        for name in layers:
            root.layer(name)
        request = (tuple(layers), bool(inputs), store)
        root._taps.append(request)
        try:
            yield store
        finally:
            root._taps[:] = [r for r in root._taps if r is not request]
        return
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
    progress: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Batched no-grad forward: ``(predictions (N,), {layer: float32 (N, d)})`` as numpy
    (``progress``: a bar over the inputs on stderr)."""
    if device is None:
        device = _device(model)
    x_all = as_inputs(model, inputs)
    preds: list[np.ndarray] = []
    feats: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    was_training = model.training
    model.eval()
    try:
        with (torch.no_grad(), tap(model, layers) as store,
              tqdm(total=len(x_all), desc="forward pass", unit="input", disable=not progress,
                   leave=False) as bar):
            for start in range(0, len(x_all), batch_size):
                xb = x_all[start : start + batch_size].to(device)
                logits = model(xb)
                preds.append(logits.argmax(1).cpu().numpy())
                for name in layers:
                    feats[name].append(store[name].float().cpu().numpy())
                bar.update(len(xb))
    finally:
        model.train(was_training)
    n_out = {name: (np.concatenate(v) if v else np.zeros((0, 0), np.float32)) for name, v in feats.items()}
    pred = np.concatenate(preds) if preds else np.zeros((0,), np.int64)
    return pred.astype(np.int64), n_out


def _device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def as_inputs(model: nn.Module, inputs) -> torch.Tensor:
    """``inputs`` as a float32 batch for ``model``: one unbatched sample (a 1-D vector, or the
    model's declared sample shape) becomes a batch of one; inputs outside the model's declared
    bounds are refused (:func:`~boxhack.models.domain.check_inputs`)."""
    if isinstance(inputs, torch.Tensor):
        x = inputs.detach().to(torch.float32)
    else:
        try:
            x = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise BoxhackError(f"inputs must be a numeric array, got {type(inputs).__name__} "
                               f"({exc})") from None  # fmt: skip
    shape = declared_input_shape(model)
    if x.dim() == 1 or (shape is not None and tuple(x.shape) == shape):
        x = x.unsqueeze(0)
    check_inputs(model, x)
    return x
