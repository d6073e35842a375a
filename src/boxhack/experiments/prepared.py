"""The networks and monitors the paper's experiments use, trained once and cached.

Experiments name a network by a short key (``xor``, ``tanh``, ``mnist2``, ``mnist3``,
``mnist10``, ``mnist0-4``); ``prepare_model`` trains it on first use and caches it under
``root/models/<key>``, ``prepare_monitor`` does the same for a monitor under
``root/monitors/``. A file lock makes concurrent workers train each artefact only once.

A cache entry is trusted only once it loads: a model directory whose ``model.json`` is missing,
empty or corrupt, or whose weights are missing or do not match its recorded SHA-256, and a
monitor file that does not load (truncated, corrupt), are rebuilt under the lock with a
warning, instead of failing every later run until someone deletes them by hand. The writers
are atomic (:func:`boxhack.models.io.save_model`, ``BoxMonitor.save``), so a damaged entry means
an older boxhack, a full disk or a hand edit.
"""

from __future__ import annotations

import fcntl
import functools
import warnings
from contextlib import contextmanager
from pathlib import Path

from boxhack.data import Dataset, load_dataset
from boxhack.errors import BoxhackError
from boxhack.models.io import load_model, save_model
from boxhack.models.train import train_model
from boxhack.monitor import BoxMonitor

# key -> (architecture, data set, classes)
PAPER_NETWORKS: dict[str, tuple[str, str, str | None]] = {
    "xor": ("xor-mlp", "xor", None),
    "tanh": ("tanh-mlp", "tanh", None),
    "mnist2": ("mnist-mlp", "mnist", "0,1"),
    "mnist3": ("mnist-mlp", "mnist", "0-2"),
    "mnist10": ("mnist-mlp", "mnist", "0-9"),
    "mnist0-4": ("mnist-mlp", "mnist", "0-4"),
    "mnist10-cnn": ("mnist-cnn", "mnist", "0-9"),
}


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def network_dataset(key: str, split_seed: int = 0) -> Dataset:
    if key not in PAPER_NETWORKS:
        raise BoxhackError(f"unknown network key {key!r}; choose one of: {', '.join(PAPER_NETWORKS)}")
    _, data, classes = PAPER_NETWORKS[key]
    return load_dataset(data, classes, split_seed=split_seed)


def prepare_model(key: str, root: str | Path, *, seed: int = 0):
    """``(model, info, dataset)`` for network ``key``, trained on first use, then loaded."""
    arch, _, _ = PAPER_NETWORKS.get(key, (None, None, None))
    dataset = network_dataset(key)
    directory = Path(root) / "models" / key
    with _locked(directory.parent / f".{key}.lock"):
        loaded = _load_cached_model(directory)
        if loaded is None:
            model, info = train_model(arch, dataset, seed=seed)
            save_model(model, directory, info)
            loaded = load_model(directory)
    model, info = loaded
    return model, info, dataset


def _load_cached_model(directory: Path):
    """``(model, info)`` from the cache, or ``None`` when there is no whole, valid entry."""
    if not directory.exists():
        return None
    if not (directory / "model.json").is_file():
        if (directory / "model.pt").exists():
            warnings.warn(f"model cache {directory}: weights without model.json (an interrupted "
                          f"save); training it again", stacklevel=3)
        return None
    try:
        return load_model(directory)
    except BoxhackError as exc:
        warnings.warn(f"model cache {directory} is damaged ({exc}); training it again",
                      stacklevel=3)
        return None


def monitor_path(root: str | Path, key: str, n_clusters: int, tolerance: float, layer: str) -> Path:
    return Path(root) / "monitors" / f"{key}-{layer}-k{n_clusters}-tol{tolerance:g}.npz"


def prepare_monitor(
    key: str,
    root: str | Path,
    *,
    n_clusters: int = 1,
    tolerance: float = 0.0,
    layer: str | None = None,
    seed: int = 0,
):
    """``(model, monitor, info, dataset)``: a BoxMonitor fitted on the training split, cached."""
    model, info, dataset = prepare_model(key, root, seed=seed)
    layer = layer or info["default_layer"]
    path = monitor_path(root, key, n_clusters, tolerance, layer)
    with _locked(path.with_suffix(".lock")):
        monitor = None
        if path.is_file():
            try:
                monitor = BoxMonitor.load(path)
            except BoxhackError as exc:
                warnings.warn(f"monitor cache {path} is damaged ({exc}); fitting it again",
                              stacklevel=2)
            else:
                recorded = (monitor.metadata_ or {}).get("model_sha256")
                if recorded is not None and recorded != info.get("sha256"):
                    warnings.warn(f"monitor cache {path} was fitted on other weights than the "
                                  f"cached {key} model (rebuilt since?); fitting it again",
                                  stacklevel=2)
                    monitor = None
        if monitor is None:
            fitted = BoxMonitor(n_clusters=n_clusters, tolerance=tolerance, seed=seed)
            fitted.fit(model, [layer], dataset.x_train, dataset.y_train,
                       model_sha256=info.get("sha256"))
            path.parent.mkdir(parents=True, exist_ok=True)
            fitted.save(path)
            monitor = BoxMonitor.load(path)
    return model, monitor, info, dataset


@functools.lru_cache(maxsize=32)
def load_prepared(root: str, key: str, n_clusters: int, tolerance: float):
    """``(model, info, dataset, monitor)`` already prepared under ``root`` (default layer),
    loaded once per process: campaign job functions call this instead of reloading per job."""
    model, info, dataset = prepare_model(key, root)
    monitor = BoxMonitor.load(monitor_path(root, key, n_clusters, tolerance, info["default_layer"]))
    return model, info, dataset, monitor
