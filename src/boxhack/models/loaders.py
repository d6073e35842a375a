"""Any model through one loader: :func:`load_any_model`.

==========================  ===============================================================
``DIR`` (or its model.json)  a boxhack model directory (``boxhack train --out DIR``)
``path/net.py:Net``          a class from a Python file (imported from that path: no
                             PYTHONPATH needed), built with ``model_args`` (a JSON object of
                             constructor keyword arguments), weights from ``weights``
``pkg.mod:Net``              the same from an importable module
``weights``                  a state dict: ``.pt``/``.pth`` read with ``weights_only=True`` (no
                             unpickling), or ``.safetensors`` (needs the safetensors package)
``model.pt`` / ``model.ts``  TorchScript (scripted or traced)
``model.pt2``                a ``torch.export`` program (``torch.export.save``)
``model.onnx``               ONNX, converted with onnx2torch (layers keep the node names)
==========================  ===============================================================

Every model comes back in eval mode on the CPU with ``info``: ``kind``, ``sha256`` (the
content hash: of the file, or for a class of its source file, its weights and its arguments,
see :func:`content_sha256`), ``input_shape`` where the file says it, ``bounds`` and
``preprocessing``. Models other than boxhack directories come wrapped in their input domain
(:class:`~boxhack.models.domain.InputDomain`, bounds (0, 1) unless given) so that inputs
outside it are refused; a boxhack directory is wrapped only when a domain is given.

Layer names are the user's in every kind: module paths for classes; module paths and op
names from the graph for TorchScript and ``torch.export`` (:mod:`boxhack.models.graph`); the
ONNX node names (without their leading ``/``, as onnx2torch names its modules) for ONNX.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
import types
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from boxhack.errors import BoxhackError
from boxhack.models.domain import InputDomain
from boxhack.models.graph import ExportedModel, ScriptedModel
from boxhack.models.io import (
    META,
    WEIGHTS,
    _apply_state,
    _first_line,
    _load_state_dict,
    load_model,
    sha256_file,
)

__all__ = ["MODEL_FORMATS", "content_sha256", "load_any_model", "model_kind", "parse_model_args"]

#: the kinds :func:`model_kind` tells apart, with what a user gives for each
MODEL_FORMATS = {
    "boxhack": "a boxhack model directory (`boxhack train --out DIR`)",
    "class": "path/net.py:ClassName or package.module:ClassName with --weights STATE_DICT",
    "torchscript": "a TorchScript file (.pt, .ts)",
    "export": "a torch.export program (.pt2)",
    "onnx": "an ONNX file (.onnx)",
}


def _is_dir_spec(path: Path) -> bool:
    return path.is_dir() or (path.name in (META, WEIGHTS) and path.exists())


def model_kind(spec: str | Path) -> str | None:
    """Which of :data:`MODEL_FORMATS` ``spec`` names (``None``: none)."""
    text = str(spec)
    path = Path(text)
    if _is_dir_spec(path):
        return "boxhack"
    if path.is_file():
        suffix = path.suffix.lower()
        return {".onnx": "onnx", ".pt2": "export"}.get(suffix, "torchscript")
    if ":" in text and _split_class(text) is not None:
        return "class"
    return None


def _split_class(text: str) -> tuple[str, str] | None:
    where, _, name = text.rpartition(":")
    if not where or not name.isidentifier():
        return None
    return where, name


def parse_model_args(model_args: Any) -> dict:
    """Constructor keyword arguments from a dict or a JSON object string."""
    if model_args is None or model_args == "":
        return {}
    if isinstance(model_args, str):
        try:
            model_args = json.loads(model_args)
        except json.JSONDecodeError as exc:
            raise BoxhackError(f"--model-args is not JSON ({exc.msg}); give an object, e.g. "
                               f"'{{\"n_classes\": 7}}'") from None  # fmt: skip
    if not isinstance(model_args, dict):
        raise BoxhackError(f"--model-args must be a JSON object (keyword arguments), got "
                           f"{type(model_args).__name__}")  # fmt: skip
    return dict(model_args)


def content_sha256(parts: dict[str, str]) -> str:
    """One SHA-256 over named file hashes (``{"source": sha, "weights": sha, ...}``)."""
    h = hashlib.sha256()
    for name in sorted(parts):
        h.update(f"{name}\0{parts[name]}\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------ classes
def _import_file(path: Path) -> types.ModuleType:
    """Import a Python file as a module of its own (its folder is searched for its imports
    while it loads, as when it is run as a script)."""
    name = f"boxhack_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BoxhackError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file failed: one line says why
        del sys.modules[name]
        raise BoxhackError(f"importing {path} failed: {type(exc).__name__}: "
                           f"{_first_line(exc)}") from None  # fmt: skip
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    return module


def _load_class(text: str, weights, model_args) -> tuple[nn.Module, dict]:
    where, class_name = _split_class(text)  # type: ignore[misc]
    file = Path(where)
    if where.endswith(".py") or file.is_file():
        if not file.is_file():
            raise BoxhackError(f"cannot import {text!r}: {where} not found")
        module = _import_file(file)
        source = file
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise BoxhackError(f"cannot import {text!r}: {exc}; give path/to/file.py:{class_name}"
                               f" or put the package on PYTHONPATH") from None  # fmt: skip
        source = Path(module.__file__) if getattr(module, "__file__", None) else None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise BoxhackError(f"cannot import {text!r}: {where} has no {class_name}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise BoxhackError(f"{text} is not a torch.nn.Module class; give the class of a "
                           f"classifier network, or a TorchScript/ONNX/.pt2 file")  # fmt: skip
    if weights is None:
        raise BoxhackError(f"{text} needs its weights: pass a state-dict file with --weights")
    kwargs = parse_model_args(model_args)
    try:
        model = cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - any constructor failure is the same user error
        how = f"with {json.dumps(kwargs)}" if kwargs else "without arguments"
        raise BoxhackError(
            f"cannot build {text} {how} ({type(exc).__name__}: {_first_line(exc)}); give the "
            f"constructor's keyword arguments with --model-args JSON") from None
    weights = Path(weights)
    state = _read_weights(weights)  # first: a file that is not a plain state dict is refused
    if not any(True for _ in model.parameters()):
        raise BoxhackError(f"{text}() has no parameters, so it is not a trained classifier; "
                           f"give the class of your classifier network")
    _apply_state(model, state, str(weights))
    parts = {"weights": sha256_file(weights), "args": hashlib.sha256(
        json.dumps(kwargs, sort_keys=True, default=str).encode()).hexdigest()}
    files = {"weights": str(weights)}
    if source is not None and source.is_file():
        parts["source"] = sha256_file(source)
        files["source"] = str(source)
    info = {"sha256": content_sha256(parts), "files": files, "model_args": kwargs}
    return model, info


def _read_weights(path: Path) -> dict:
    if path.suffix.lower() != ".safetensors":
        return _load_state_dict(path)
    if not path.is_file():
        raise BoxhackError(f"weights file {path} not found")
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise BoxhackError(f"{path} is a .safetensors file and the safetensors package is not "
                           f"installed: `pip install safetensors`, or save the state dict with "
                           f"torch.save") from None  # fmt: skip
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - a corrupt file
        raise BoxhackError(f"cannot read weights {path}: {_first_line(exc)}") from None


# ------------------------------------------------------------------ graph files
def _load_torchscript(path: Path) -> tuple[nn.Module, dict]:
    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; still supported
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - whatever it is, it is not TorchScript
        hint = ("it holds a state dict: give its class, path/net.py:ClassName --weights "
                f"{path}" if _is_state_dict_zip(path) else
                "give a TorchScript, .pt2 or .onnx file, or a class and --weights")
        raise BoxhackError(f"{path} is not a TorchScript file ({_first_line(exc)[:100]}); "
                           f"{hint}") from None  # fmt: skip
    return ScriptedModel(scripted.eval()), {}


def _is_state_dict_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("data.pkl") for n in names) and not any("code/" in n for n in names)


def _load_export(path: Path) -> tuple[nn.Module, dict]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise BoxhackError(f"{path} is not a torch.export program ({type(exc).__name__}: "
                           f"{_first_line(exc)[:100]}); save one with "
                           f"torch.export.save(torch.export.export(model, (x,)), 'm.pt2')") from None
    model = ExportedModel(program)
    return model, {"input_shape": model.input_shape}


@contextmanager
def _without_torchvision():
    """onnx2torch imports torchvision at module level for two converters only (NonMaxSuppression
    and RoIAlign), and torchvision would pull another torch. When torchvision is absent, a
    stand-in is visible *only while onnx2torch is imported*: converting or running one of those
    two ops then fails with a clear error; nothing else sees the stand-in."""
    if importlib.util.find_spec("torchvision") is not None:
        yield
        return

    def missing(*_a, **_k):
        raise BoxhackError("this ONNX model uses NonMaxSuppression or RoIAlign, which need "
                           "torchvision; boxhack does not install it (it pins another torch)")

    fake = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops.roi_align = ops.nms = ops.box_convert = missing  # type: ignore[attr-defined]
    fake.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = fake, ops
    try:
        yield
    finally:
        for name in ("torchvision", "torchvision.ops"):
            if sys.modules.get(name) in (fake, ops):
                del sys.modules[name]


def _onnx2torch():
    try:
        import onnx
    except ImportError:
        raise BoxhackError("reading ONNX needs the onnx and onnx2torch packages: "
                           "`make setup-onnx` or `pip install onnx && pip install --no-deps "
                           "onnx2torch`") from None  # fmt: skip
    try:
        with _without_torchvision():
            import onnx2torch
    except ImportError as exc:
        raise BoxhackError(f"reading ONNX needs onnx2torch ({exc}): `pip install --no-deps "
                           f"onnx2torch`") from None  # fmt: skip
    return onnx, onnx2torch


def _load_onnx(path: Path) -> tuple[nn.Module, dict]:
    onnx, onnx2torch = _onnx2torch()
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise BoxhackError(f"{path} is not an ONNX file ({_first_line(exc)[:100]})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = onnx2torch.convert(proto)
    except NotImplementedError as exc:
        raise BoxhackError(
            f"onnx2torch cannot convert {path}: {_first_line(exc)[:160]}; export with "
            f"torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17)") from None
    except Exception as exc:  # noqa: BLE001
        raise BoxhackError(f"onnx2torch cannot convert {path}: {type(exc).__name__}: "
                           f"{_first_line(exc)[:160]}") from None
    return model, {"input_shape": _onnx_input_shape(proto)}


def _onnx_input_shape(proto) -> tuple[int, ...] | None:
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        return None
    dims = inputs[0].type.tensor_type.shape.dim[1:]
    if not dims or any(not d.HasField("dim_value") for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


# ------------------------------------------------------------------ the one loader
def load_any_model(spec: str | Path, weights: str | Path | None = None, *,
                   model_args: Any = None, bounds: Any = None, preprocessing: Any = None,
                   input_shape: Any = None) -> tuple[nn.Module, dict]:
    """Load a model of any kind (module doc): ``(model, info)``, the model in eval mode on
    the CPU, wrapped in its input domain (see the module doc)."""
    text = str(spec)
    kind = model_kind(text)
    if kind is None:
        raise BoxhackError(f"model {text!r} not found: give " + "; ".join(MODEL_FORMATS.values()))
    if kind != "class" and weights is not None:
        raise BoxhackError(f"--weights is for the package.module:ClassName (or file.py:ClassName) "
                           f"form; {text} holds its own weights")
    if kind != "class" and model_args not in (None, "", {}):
        raise BoxhackError(f"--model-args is for the ClassName form; {text} is built already")
    if kind == "boxhack":
        model, info = load_model(text)
        if bounds is None and preprocessing is None:
            return model, info
        extra = {}
    elif kind == "class":
        model, extra = _load_class(text, weights, model_args)
    else:
        path = Path(text)
        loader = {"torchscript": _load_torchscript, "export": _load_export, "onnx": _load_onnx}
        model, extra = loader[kind](path)
        extra = {**extra, "sha256": sha256_file(path), "files": {kind: str(path)}}
        info = {}
    shape = input_shape if input_shape is not None else extra.get("input_shape")
    wrapped = InputDomain(model.eval(), bounds=bounds, preprocessing=preprocessing,
                          input_shape=shape).eval()
    if kind == "boxhack":
        info = {**info, "bounds": list(wrapped.bounds), "preprocessing": wrapped.preprocessing}
        return wrapped, info
    info = {
        "format": "user-model", "kind": kind, "architecture": text, "default_layer": None,
        "classes": None, **extra,
        "input_shape": None if wrapped.input_shape is None else list(wrapped.input_shape),
        "bounds": list(wrapped.bounds), "preprocessing": wrapped.preprocessing,
    }  # fmt: skip
    return wrapped, info
