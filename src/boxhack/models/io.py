"""Safe model files: ``model.pt`` (a state dict, loaded with ``weights_only=True``) plus
``model.json`` (architecture, classes, data, seeds, accuracy, versions, and the SHA-256 of
model.pt so a changed or corrupt weights file is caught before it is used).

``save_model`` writes both files through write-temp-then-rename, ``model.json`` last (an
existing one is removed before the new weights take its place), so a directory holding a
``model.json`` holds a whole model: a kill or a full disk mid-save leaves the old model, or no
``model.json`` at all, never a truncated file that ``load_model`` would trust.

``load_any_model`` also takes a user's own network: a TorchScript file, or
``package.module:ClassName`` plus a state-dict file.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from boxhack.errors import BoxhackError
from boxhack.infra.files import atomic_path, atomic_write_json
from boxhack.models.zoo import NETWORKS, build_model

WEIGHTS = "model.pt"
META = "model.json"
FORMAT_VERSION = 1


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model(model: nn.Module, out_dir: str | Path, info: dict) -> Path:
    """Write ``model.pt`` and ``model.json`` into ``out_dir`` atomically; returns the directory.

    If writing the weights fails (``torch.save`` raises, the disk is full) nothing in
    ``out_dir`` changes. Otherwise an old ``model.json`` is removed before the new weights are
    renamed into place and the new ``model.json`` is written last: its presence means a whole
    model whose ``sha256`` is that of the weights beside it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = dict(info)
    with atomic_path(out / WEIGHTS) as tmp:
        # Through a file object: given a path, torch.save names the zip's top folder after the
        # (random) temporary file name, and the same weights would get a different SHA-256.
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
        meta["sha256"] = sha256_file(tmp)
        (out / META).unlink(missing_ok=True)  # no model.json beside weights it does not describe
    atomic_write_json(out / META, meta, indent=2)
    return out


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _load_state_dict(path: Path) -> dict:
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BoxhackError(f"weights file {path} not found") from None
    except OSError as exc:
        raise BoxhackError(f"cannot read weights {path}: {exc.strerror or exc}") from None
    if path.is_dir():
        raise BoxhackError(f"weights {path} is a directory; give the state-dict file")
    if size == 0:
        raise BoxhackError(
            f"weights file {path} is empty (0 bytes: an interrupted save?); retrain the model "
            f"or restore the file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BoxhackError(f"cannot read weights {path}: {_first_line(exc)} (corrupt file?)")
    except Exception as exc:  # noqa: BLE001 - weights_only refuses all but plain tensors
        raise BoxhackError(
            f"refusing to load {path}: it is not a plain state dict of tensors "
            f"({type(exc).__name__}); boxhack never unpickles arbitrary objects"
        )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BoxhackError(f"{path} does not hold a state dict (name -> tensor)")
    return state


def _apply_state(model: nn.Module, state: dict, source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:3]))
        raise BoxhackError(f"weights in {source} do not fit the architecture: {'; '.join(parts)}")
    model.load_state_dict(state)


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Load a boxhack model directory (or its model.json / model.pt); returns ``(model, info)``."""
    path = Path(path)
    directory = path.parent if path.name in (WEIGHTS, META) else path
    if not directory.is_dir():
        raise BoxhackError(
            f"model directory {directory} not found; train one with "
            f"`boxhack train --net mnist-mlp --out {directory}`"
        )
    meta_path, weights_path = directory / META, directory / WEIGHTS
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise BoxhackError(f"{directory} has no {p.name}; is it a boxhack model directory?")
    try:
        info = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BoxhackError(f"{meta_path} is not valid JSON ({exc}); the file is corrupt "
                           f"(an interrupted save?): retrain the model or restore the file")
    if not isinstance(info, dict) or info.get("format") != "boxhack-model":
        raise BoxhackError(f"{meta_path} is not a boxhack model description")
    if info.get("format_version") != FORMAT_VERSION:
        raise BoxhackError(
            f"{meta_path} has format version {info.get('format_version')}; this boxhack reads "
            f"version {FORMAT_VERSION}"
        )
    arch = info.get("architecture")
    if arch not in NETWORKS:
        raise BoxhackError(f"{meta_path} names unknown architecture {arch!r}")
    digest = sha256_file(weights_path)
    if info.get("sha256") and info["sha256"] != digest:
        raise BoxhackError(
            f"{weights_path} does not match the SHA-256 recorded in {meta_path}: the weights "
            "changed or are corrupt; restore the file or retrain"
        )
    n_classes = info.get("n_classes")
    if not isinstance(n_classes, int) or n_classes != len(info.get("classes", [])):
        raise BoxhackError(f"{meta_path}: n_classes and classes disagree")
    model = build_model(arch, n_classes)
    _apply_state(model, _load_state_dict(weights_path), str(weights_path))
    model.eval()
    return model, info


class ScriptedLayer(nn.Module):
    """A Python shell around one TorchScript sub-module, so forward hooks (layer taps) work:
    TorchScript modules refuse hooks, but a Python module that calls them does not."""

    def __init__(self, scripted: nn.Module):
        super().__init__()
        self.scripted = scripted

    def forward(self, x):
        return self.scripted(x)


_PLAIN = {"ReLU": nn.ReLU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid, "Flatten": nn.Flatten}


def unscript(module: nn.Module) -> nn.Module:
    """Rebuild a scripted ``nn.Sequential`` tree as Python modules with the same names.

    Only Sequential containers can be rebuilt (their forward is known); other scripted
    modules are wrapped whole. Parameter-free activations become their plain torch class so
    monitors can recognise a ReLU layer.
    """
    kind = getattr(module, "original_name", type(module).__name__)
    if kind == "Sequential":
        return nn.Sequential(
            OrderedDict((name, unscript(child)) for name, child in module.named_children())
        )
    if kind in _PLAIN and not list(module.parameters()):
        return _PLAIN[kind]() if kind != "Flatten" else nn.Flatten()
    return ScriptedLayer(module)


def _user_info(spec: str, model: nn.Module) -> dict:
    return {"format": "user-model", "architecture": spec, "default_layer": None, "classes": None}


def load_any_model(spec: str | Path, weights: str | Path | None = None) -> tuple[nn.Module, dict]:
    """Load a boxhack run directory, a TorchScript file, or ``package.module:ClassName``
    (instantiated without arguments) with the state dict in ``weights``."""
    text = str(spec)
    path = Path(text)
    if path.is_dir() or path.name in (META, WEIGHTS) and path.exists():
        return load_model(path)
    if ":" in text and not path.exists():
        module_name, _, class_name = text.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise BoxhackError(f"cannot import {text!r}: {exc}; is the package on PYTHONPATH?")
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise BoxhackError(f"{text} is not a torch.nn.Module class; give the class of a "
                               f"classifier network, or a TorchScript file")
        if weights is None:
            raise BoxhackError(f"{text} needs its weights: pass a state-dict file with --weights")
        try:
            model = cls()
        except Exception as exc:  # noqa: BLE001 - any constructor failure is the same user error
            raise BoxhackError(
                f"cannot build {text} without arguments ({type(exc).__name__}: "
                f"{_first_line(exc)}); boxhack instantiates ClassName() with no arguments: give "
                f"a class whose constructor needs none (wrap yours), or save the network as a "
                f"TorchScript file") from None
        state = _load_state_dict(Path(weights))
        if not any(True for _ in model.parameters()):
            raise BoxhackError(f"{text}() has no parameters, so it is not a trained classifier; "
                               f"give the class of your classifier network")
        _apply_state(model, state, str(weights))
        model.eval()
        return model, _user_info(text, model)
    if path.is_file():
        try:
            with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; still supported
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - whatever it is, it is not TorchScript
            raise BoxhackError(
                f"{path} is not a TorchScript file ({_first_line(exc)[:120]}); for a "
                "state dict pass package.module:ClassName and --weights FILE"
            )
        model = unscript(model).eval()
        return model, _user_info(text, model)
    raise BoxhackError(
        f"model {text!r} not found: give a boxhack model directory, a TorchScript file, or "
        "package.module:ClassName with --weights"
    )
