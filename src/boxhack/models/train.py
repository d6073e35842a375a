"""Reproducible training: the same seed gives bit-identical weights on the same machine."""

from __future__ import annotations

import math
import platform
import time

import numpy as np
import torch
from torch import nn

from boxhack.data import Dataset
from boxhack.errors import BoxhackError
from boxhack.models.zoo import build_model, net_spec

DEFAULT_EPOCHS = {"xor-mlp": 60, "tanh-mlp": 60, "mnist-mlp": 20, "mnist-cnn": 8}
DEFAULT_LR = {"xor-mlp": 1e-2, "tanh-mlp": 1e-2, "mnist-mlp": 1e-3, "mnist-cnn": 1e-3}
FORMAT_VERSION = 1


def resolve_device(device: str | torch.device | None) -> torch.device:
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BoxhackError("--device cuda was asked for but no CUDA device is available; use cpu")
    return dev


def versions() -> dict:
    import scipy  # only to record versions: not imported with every model
    import sklearn

    from boxhack import __version__

    return {
        "boxhack": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
    }


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 2048) -> float:
    if len(y) == 0:
        return float("nan")
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[start : start + batch_size], device=device)
        correct += int((model(xb).argmax(1).cpu().numpy() == y[start : start + batch_size]).sum())
    return correct / len(y)


def train_model(
    net: str,
    dataset: Dataset,
    *,
    epochs: int | None = None,
    batch_size: int = 64,
    lr: float | None = None,
    seed: int = 0,
    device: str | torch.device | None = "cpu",
    log=None,
) -> tuple[nn.Module, dict]:
    """Train zoo network ``net`` on ``dataset`` with Adam; returns ``(model, info)``.

    ``info`` is the metadata ``save_model`` writes as model.json. ``log`` is an optional
    ``callable(str)`` for per-epoch progress.
    """
    spec = net_spec(net)
    if tuple(dataset.input_shape) != spec.input_shape:
        raise BoxhackError(
            f"network {net!r} takes inputs of shape {spec.input_shape} but data set "
            f"{dataset.name!r} has {dataset.input_shape}; pick a matching --net"
        )
    if len(dataset.y_train) == 0:
        raise BoxhackError("the training split is empty; check the class selection")
    epochs = DEFAULT_EPOCHS[spec.name] if epochs is None else int(epochs)
    lr = DEFAULT_LR[spec.name] if lr is None else float(lr)
    if epochs < 1 or batch_size < 1 or not (lr > 0 and math.isfinite(lr)):  # NaN > 0 is False
        raise BoxhackError(f"need epochs >= 1, batch_size >= 1, lr > 0 (got {epochs}, {batch_size}, {lr})")
    dev = resolve_device(device)
    # One CPU thread: these networks are too small to gain from more, and torch's CPU
    # reductions differ with the thread count, so pinning it makes the weights depend on
    # the seed alone, whichever process (CLI, campaign worker) trains them.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(spec, dataset, epochs, batch_size, lr, seed, dev, log)
    finally:
        torch.set_num_threads(threads)


def _train(spec, dataset, epochs, batch_size, lr, seed, dev, log):
    torch.manual_seed(seed)
    model = build_model(spec.name, dataset.n_classes).to(dev)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.as_tensor(dataset.x_train, device=dev)
    y = torch.as_tensor(dataset.y_train, device=dev)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=generator).to(dev)
        total = 0.0
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / len(y):.4f}")
    seconds = time.perf_counter() - started
    model.eval()
    info = {
        "format": "boxhack-model",
        "format_version": FORMAT_VERSION,
        "architecture": spec.name,
        "n_classes": dataset.n_classes,
        "classes": list(dataset.classes),
        "class_names": list(dataset.class_names),
        "dataset": dataset.name,
        "data_dir": dataset.extra.get("data_dir"),
        "split_seed": dataset.split_seed,
        "input_shape": list(spec.input_shape),
        "default_layer": spec.default_layer,
        "seed": seed,
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": "adam",
                  "device": str(dev), "seconds": round(seconds, 3)},
        "train_accuracy": accuracy(model, dataset.x_train, dataset.y_train),
        "test_accuracy": accuracy(model, dataset.x_test, dataset.y_test),
        "versions": versions(),
    }
    return model.cpu(), info
