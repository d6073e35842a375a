"""Safe model files: ``model.pt`` (a state dict, loaded with ``weights_only=True``) plus
``model.json`` (architecture, classes, data, seeds, accuracy, versions, and the SHA-256 of
model.pt so a changed or corrupt weights file is caught before it is used).

``save_model`` writes both files through write-temp-then-rename, ``model.json`` last (an
existing one is removed before the new weights take its place), so a directory holding a
``model.json`` holds a whole model: a kill or a full disk mid-save leaves the old model, or no
``model.json`` at all, never a truncated file that ``load_model`` would trust.

A user's own network, of any kind, loads with :func:`boxhack.models.loaders.load_any_model`.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
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
