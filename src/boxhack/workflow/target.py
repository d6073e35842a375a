"""What a command works on - a model, its monitor and its data - loaded in one place and
checked, once, to belong together; and the one way to pick the inputs an attack starts from.

::

    target = load_target(model="runs/mnist10", monitor="runs/mnist10/monitor.npz")
    idx = select_inputs(target.model, target.monitor, target.dataset, "dos", n=100, seed=0)
    x, y = target.dataset.x_test[idx], target.dataset.y_test[idx]

Every CLI command that takes a model, a monitor or data goes through :func:`load_target` (its
options are the fields of :class:`TargetSpec`, spelled the same on the command line), so a new
kind of model or data set, or a new option, is added here and reaches every command:

- a model kind is one entry of :data:`MODEL_KINDS` (how to recognise the ``model`` string and
  how to load it): a boxhack model directory, ``path/net.py:ClassName`` or
  ``package.module:ClassName`` with a state dict (``--weights``, ``--model-args``), a
  TorchScript file, a ``torch.export`` program (``.pt2``) and an ONNX file
  (:mod:`boxhack.models.loaders`); every kind is wrapped in its input domain (``--bounds``,
  ``--preprocessing``, :mod:`boxhack.models.domain`);
- a data kind is one entry of :data:`DATA_KINDS` (how to recognise the ``data`` string and how
  to load it with ``classes``, ``data_dir`` and ``split_seed``): the built-in data sets, an
  ``.npz`` file, an IDX folder and an image folder (:mod:`boxhack.data.sources`);
- a new option (e.g. model arguments, input bounds, preprocessing) is a new field of
  :class:`TargetSpec` read by the loader that needs it.

The model is always loaded on the CPU: it is the exact float32 reference that decides every
verdict (:mod:`boxhack.attacks.verify`); ``device`` says where the commands that can use an
accelerator do their heavy work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from boxhack.attacks.base import resolve_goal
from boxhack.attacks.records import attack_record, file_ref, save_attack
from boxhack.data import DATASETS, Dataset, load_dataset, parse_classes
from boxhack.data.sampling import sample_balanced
from boxhack.data.sources import (
    is_idx_dir,
    is_image_dir,
    load_idx_data,
    load_image_folder,
    load_npz,
)
from boxhack.errors import BoxhackError
from boxhack.models.domain import InputDomain
from boxhack.models.io import META, WEIGHTS
from boxhack.models.loaders import MODEL_FORMATS, load_any_model, model_kind
from boxhack.models.zoo import NETWORKS
from boxhack.monitor.base import Monitor, state_sha256
from boxhack.monitor.compat import check_compatible
from boxhack.monitor.registry import load_monitor

__all__ = [
    "DATA_KINDS",
    "MODEL_KINDS",
    "START_STATES",
    "DataKind",
    "ModelKind",
    "Target",
    "TargetSpec",
    "load_data",
    "load_model_ref",
    "load_target",
    "model_ref",
    "resolve_device",
    "save_attack_file",
    "select_inputs",
    "start_mask",
]


# ------------------------------------------------------------------ what the user asked for
@dataclass(frozen=True)
class TargetSpec:
    """Everything a user says about a target; the CLI options have the same names
    (``--model``, ``--weights``, ``--monitor``, ``--data``, ``--classes``, ...)."""

    model: str
    weights: str | None = None
    monitor: str | None = None
    data: str | None = None
    classes: str | Sequence[int] | None = None
    novel_classes: str | Sequence[int] | None = None
    data_dir: str | None = None
    split_seed: int | None = None
    device: str = "cpu"
    model_args: str | dict | None = None
    bounds: str | Sequence[float] | None = None
    preprocessing: str | dict | None = None

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The option names (what :func:`load_target` takes besides ``need_data``)."""
        return tuple(f.name for f in fields(cls))


# ------------------------------------------------------------------ model kinds
@dataclass(frozen=True)
class ModelKind:
    """One way to give a model: ``matches(spec)`` recognises it, ``load(spec)`` returns
    ``(model, info)`` (``info`` as :func:`boxhack.models.loaders.load_any_model` returns it)."""

    name: str
    describe: str
    matches: Callable[[TargetSpec], bool]
    load: Callable[[TargetSpec], tuple[nn.Module, dict]]


def _kind_is(name: str) -> Callable[[TargetSpec], bool]:
    return lambda spec: model_kind(spec.model) == name


def _load_any(spec: TargetSpec) -> tuple[nn.Module, dict]:
    return load_any_model(spec.model, spec.weights, model_args=spec.model_args,
                          bounds=spec.bounds, preprocessing=spec.preprocessing)


#: the kinds of model a target can be, tried in order (:data:`boxhack.models.loaders.MODEL_FORMATS`)
MODEL_KINDS: list[ModelKind] = [
    ModelKind(name, describe, _kind_is(name), _load_any) for name, describe in MODEL_FORMATS.items()
]


def _load_model(spec: TargetSpec) -> tuple[nn.Module, dict, str]:
    for kind in MODEL_KINDS:
        if kind.matches(spec):
            model, info = kind.load(spec)
            return model.cpu().eval(), dict(info), kind.name
    kinds = "; ".join(kind.describe for kind in MODEL_KINDS)
    raise BoxhackError(f"model {spec.model!r} not found: give {kinds}")


# ------------------------------------------------------------------ data kinds
@dataclass(frozen=True)
class DataKind:
    """One way to give a data set: ``matches(name)`` recognises the ``data`` string,
    ``load(name, classes, data_dir, split_seed)`` returns a :class:`~boxhack.data.Dataset`."""

    name: str
    describe: str
    matches: Callable[[str], bool]
    load: Callable[[str, Any, str | None, int], Dataset]


def _load_builtin(name: str, classes, data_dir: str | None, split_seed: int) -> Dataset:
    return load_dataset(name, classes, data_dir=data_dir, split_seed=split_seed)


def _load_npz(name: str, classes, data_dir: str | None, split_seed: int) -> Dataset:
    return load_npz(name, classes, split_seed=split_seed)


def _load_idx(name: str, classes, data_dir: str | None, split_seed: int) -> Dataset:
    return load_idx_data(name, classes, split_seed=split_seed)


def _load_images(name: str, classes, data_dir: str | None, split_seed: int) -> Dataset:
    return load_image_folder(name, classes, split_seed=split_seed)


#: the kinds of data a target can use, tried in order
DATA_KINDS: list[DataKind] = [
    DataKind("builtin", f"a built-in data set ({', '.join(DATASETS)})", lambda d: d in DATASETS,
             _load_builtin),
    DataKind("npz", "an .npz file with x_train, y_train, x_test, y_test (optional x_ood)",
             lambda d: d.lower().endswith(".npz"), _load_npz),
    DataKind("idx", "a folder of MNIST-style IDX files", is_idx_dir, _load_idx),
    DataKind("images", "an image folder (one sub-folder per class, optionally under train/ "
             "and test/)", is_image_dir, _load_images),
]  # fmt: skip


def load_data(data: str, classes=None, *, data_dir: str | None = None,
              split_seed: int = 0) -> Dataset:
    """The data set ``data`` (any of :data:`DATA_KINDS`) restricted to ``classes``."""
    text = str(data)
    for kind in DATA_KINDS:
        if kind.matches(text):
            return kind.load(text, classes, data_dir, int(split_seed))
    kinds = "; ".join(kind.describe for kind in DATA_KINDS)
    what = "folder" if Path(text).is_dir() else "data set"
    raise BoxhackError(f"unknown {what} {text!r}; give {kinds}")


# ------------------------------------------------------------------ devices
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | None) -> str:
    """The torch device ``name`` names on this machine: ``auto`` is ``cuda`` when CUDA is
    available, else ``cpu``; ``cuda`` (or ``cuda:N``) without CUDA is a clear error."""
    text = "cpu" if name is None else str(name).strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise BoxhackError(f"--device {name!r} is not a torch device; use auto, cpu or "
                           f"cuda") from None  # fmt: skip
    if device.type not in ("cpu", "cuda"):
        raise BoxhackError(f"--device {name}: only auto, cpu and cuda are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BoxhackError(f"--device {name}: CUDA is not available on this machine (torch "
                               f"{torch.__version__}); use --device cpu or auto")  # fmt: skip
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BoxhackError(f"--device {name}: this machine has {torch.cuda.device_count()} "
                               f"CUDA device(s)")  # fmt: skip
    return text


# ------------------------------------------------------------------ the target
@dataclass
class Target:
    """A loaded model (on the CPU, in eval mode) with its description ``info``, and, where
    asked for, its monitor, its data set and the inputs of novel classes; checked to fit."""

    spec: TargetSpec
    model: nn.Module
    info: dict
    kind: str
    monitor: Monitor | None = None
    dataset: Dataset | None = None
    novel: Dataset | None = None

    @property
    def device(self) -> str:
        return self.spec.device

    @property
    def model_name(self) -> str:
        return str(self.spec.model)

    @property
    def monitor_name(self) -> str | None:
        return None if self.spec.monitor is None else str(self.spec.monitor)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The input shape without batch: recorded with the model, its zoo network's, or the
        data set's; ``None`` when nothing says."""
        if self.info.get("input_shape"):
            return tuple(int(s) for s in self.info["input_shape"])
        arch = self.info.get("architecture")
        if arch in NETWORKS:
            return tuple(NETWORKS[arch][0].input_shape)
        return None if self.dataset is None else tuple(self.dataset.input_shape)

    def model_dir(self) -> Path:
        """The boxhack model directory (stored attacks reference it by hash)."""
        if self.kind != "boxhack":
            raise BoxhackError(f"{self.model_name} is not a boxhack model directory, and stored "
                               f"attacks (--save, `boxhack verify`) need one; train with "
                               f"`boxhack train` or attack without --save")  # fmt: skip
        path = Path(self.model_name)
        return path.parent if path.name in (META, WEIGHTS) else path


def _recorded(info: dict, monitor: Monitor | None) -> dict:
    """What the model (else the monitor) recorded about its data: dataset, classes, ..."""
    meta = dict(getattr(monitor, "metadata_", None) or {})
    return {**meta, **{k: v for k, v in info.items() if v is not None}}


def _load_dataset(spec: TargetSpec, recorded: dict, need: bool) -> Dataset | None:
    if spec.data is None and not need:
        return None
    name = spec.data if spec.data is not None else recorded.get("dataset")
    if name is None:
        raise BoxhackError(f"{spec.model} does not record its data set; pass --data NAME (and "
                           f"the model's --classes)")  # fmt: skip
    same = name == recorded.get("dataset")
    classes = spec.classes if spec.classes is not None else recorded.get("classes")
    data_dir = spec.data_dir if spec.data_dir is not None else (
        recorded.get("data_dir") if same else None)  # fmt: skip
    split_seed = spec.split_seed if spec.split_seed is not None else (
        int(recorded.get("split_seed") or 0) if same else 0)  # fmt: skip
    return load_data(name, classes, data_dir=data_dir, split_seed=split_seed)


def _load_novel(spec: TargetSpec, dataset: Dataset) -> Dataset | None:
    """The inputs of classes the model does not know: ``novel_classes`` of the same data, else
    a data file's ``x_ood`` (as a one-class data set, class name "unknown")."""
    if spec.novel_classes is None:
        x_ood = dataset.extra.get("x_ood")
        if x_ood is None:
            return None
        y = np.zeros(len(x_ood), dtype=np.int64)
        return Dataset(name=f"{dataset.name} x_ood", x_train=x_ood, y_train=y, x_test=x_ood,
                       y_test=y, classes=(0,), class_names=("unknown",),
                       source=f"x_ood of {dataset.source}")  # fmt: skip
    names = dataset.extra.get("all_names")
    novel = parse_classes(spec.novel_classes, dataset.name, names=names)
    overlap = sorted(set(novel) & set(dataset.classes))
    if overlap:
        raise BoxhackError(f"novel classes {overlap} are classes the model knows")
    return load_data(dataset.name, list(novel), data_dir=dataset.extra.get("data_dir"),
                     split_seed=dataset.split_seed)  # fmt: skip


def _check_model_runs(target: Target) -> None:
    """The model runs on the data's inputs and has one output per class of the data."""
    x = torch.as_tensor(target.dataset.x_test[:1])
    try:
        with torch.no_grad():
            out = target.model(x)
    except (RuntimeError, TypeError, ValueError) as exc:  # a shape the model does not take
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BoxhackError(f"model {target.model_name} does not run on inputs of shape "
                           f"{tuple(x.shape[1:])}: {first}") from None  # fmt: skip
    n_classes = target.dataset.n_classes
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] != n_classes:
        raise BoxhackError(f"model {target.model_name} has {int(out.shape[1])} outputs, the data "
                           f"{n_classes} classes; pass the model's --classes")


def check_target(target: Target) -> None:
    """The one consistency check: the monitor was fitted on this model
    (:func:`~boxhack.monitor.compat.check_compatible`) and the data has its classes and shape."""
    data = target.dataset
    if target.monitor is not None:
        check_compatible(target.monitor, target.model, target.info,
                         example=None if data is None else data.x_test[:1],
                         monitor_name=target.monitor_name,
                         model_name=target.model_name)  # fmt: skip
        if data is not None and data.n_classes != target.monitor.n_classes_:
            raise BoxhackError(f"the data has {data.n_classes} classes, the monitor "
                               f"{target.monitor.n_classes_}; pass the model's --classes")
    elif data is not None and len(data.y_test):
        _check_model_runs(target)


def load_target(model: str | TargetSpec, *, need_data: bool = True, **options: Any) -> Target:
    """Load the model, the monitor (``monitor=``, any abstraction), the data set (``data=``, else
    the one the model or the monitor recorded; ``need_data=False``: only when named) and the
    inputs of ``novel_classes``, then check once that they fit (:func:`check_target`).

    ``model`` is a model string (options as keywords, see :class:`TargetSpec`) or a spec.
    """
    spec = model if isinstance(model, TargetSpec) else TargetSpec(model=str(model), **options)
    if isinstance(model, TargetSpec) and options:
        spec = replace(spec, **options)
    spec = replace(spec, device=resolve_device(spec.device))
    net, info, kind = _load_model(spec)
    monitor = None if spec.monitor is None else load_monitor(spec.monitor)
    dataset = _load_dataset(spec, _recorded(info, monitor), need_data)
    if isinstance(net, InputDomain) and net.input_shape is None and dataset is not None:
        net.input_shape = tuple(dataset.input_shape)  # one unbatched sample: a batch of one
    target = Target(spec, net, info, kind, monitor, dataset)
    target.novel = None if dataset is None else _load_novel(spec, dataset)
    check_target(target)
    return target


# ------------------------------------------------------------------ the inputs to attack
#: the test inputs each goal starts from, in words
START_STATES: dict[str, str] = {
    "dos": "correctly classified and accepted",
    "intrude": "rejected",
    "intrude-any": "rejected",
    "intrude-target": "rejected",
    "combined": "correctly classified",
    "misclassify": "correctly classified",
}


def start_mask(goal: str, pred, accepted, labels) -> np.ndarray:
    """Inputs an attack with ``goal`` may start from: Attack 1 (``dos``) from correctly
    classified and accepted ones, Attack 2 (``intrude*``) from rejected ones, adversarial
    goals (``combined``, ``misclassify``) from correctly classified ones."""
    goal = resolve_goal(goal)
    pred, accepted, labels = np.asarray(pred), np.asarray(accepted, bool), np.asarray(labels)
    if goal == "dos":
        return (pred == labels) & accepted
    if goal.startswith("intrude"):
        return ~accepted
    return pred == labels


def select_inputs(model: nn.Module, monitor: Monitor, dataset: Dataset, goal: str,
                  n: int | None = None, index: Sequence[int] | None = None,
                  seed: int = 0) -> np.ndarray:
    """Test indices to attack: ``index`` as given (range-checked), else a seeded,
    class-balanced sample (:func:`~boxhack.data.sampling.sample_balanced`) of ``n`` test inputs
    ``goal`` can start from (:func:`start_mask`; ``n=None``: all of them). Fewer than ``n``
    come back when fewer are eligible; none is an error."""
    n_test = len(dataset.y_test)
    if index is not None:
        bad = [i for i in index if not 0 <= int(i) < n_test]
        if bad:
            raise BoxhackError(f"test input index {bad[0]} is out of range: the test split has "
                               f"{n_test} inputs")  # fmt: skip
        return np.asarray(index, dtype=np.int64)
    goal = resolve_goal(goal)
    pred, acc = monitor.predict(model, dataset.x_test)
    mask = start_mask(goal, pred, acc, dataset.y_test)
    if not mask.any():
        raise BoxhackError(f"no test input is {START_STATES[goal]}: nothing to attack with "
                           f"goal {goal!r}")  # fmt: skip
    return sample_balanced(dataset.y_test, int(mask.sum()) if n is None else n, seed, mask=mask)


def model_ref(target: Target, base: str | Path | None = None) -> dict[str, str]:
    """How a stored attack names the model it was made with: a boxhack model directory by its
    weights' hash (as before); any other kind by its spec (``model``, ``weights``), its
    ``kind`` and the SHA-256 of its state dict (:func:`~boxhack.monitor.base.state_sha256`),
    which ``boxhack verify`` compares after loading it again (:func:`load_model_ref`)."""
    if target.kind == "boxhack":
        return file_ref(target.model_dir(), base=base, sha256=target.info["sha256"])

    def rel(text: str | None) -> str | None:
        if text is None or not Path(text).exists():
            return text
        return file_ref(text, base=base, sha256="-")["path"]

    ref = {"path": rel(target.model_name), "kind": target.kind,
           "weights": rel(target.spec.weights), "sha256": state_sha256(target.model),
           "hash": "state"}  # fmt: skip
    # how it was built and its input domain (JSON values; loaded again with the same options)
    for key in ("model_args", "bounds", "preprocessing"):
        value = target.info.get(key)
        if value not in (None, {}, [0.0, 1.0]):
            ref[key] = value
    return ref


def load_model_ref(ref: dict, base: str | Path | None, *, allow_code: bool = False
                   ) -> tuple[nn.Module, dict]:
    """The model a stored attack names (:func:`model_ref`), loaded again and checked to have
    the recorded state hash. Models given as Python code (``module:Class``) are imported only
    with ``allow_code`` (``boxhack verify --model``: the user names the code, never the file)."""
    from boxhack.attacks.records import resolve_ref

    kind = ref.get("kind", "boxhack")
    if kind == "class" and not allow_code:
        raise BoxhackError(f"the stored attacks were made with the Python model {ref.get('path')}"
                           f" (weights {ref.get('weights')}); boxhack does not import code named "
                           f"in a results file: re-check with `boxhack verify DIR --model "
                           f"{ref.get('path')} --weights FILE`")  # fmt: skip

    def path(key: str) -> str | None:
        value = ref.get(key)
        if value is None or (kind == "class" and key == "path"):
            return value
        return str(resolve_ref({"path": value}, base))

    spec = TargetSpec(model=str(path("path")), weights=path("weights"),
                      model_args=ref.get("model_args"), bounds=ref.get("bounds"),
                      preprocessing=ref.get("preprocessing"))
    model, info, _ = _load_model(spec)
    digest = state_sha256(model)
    if ref.get("sha256") not in (None, digest):
        raise BoxhackError(f"model {ref.get('path')} has state sha256 {digest[:12]}..., the "
                           f"stored attack was made with {str(ref['sha256'])[:12]}...: the "
                           f"model changed since the attack ran")  # fmt: skip
    return model, info


def save_attack_file(path: str | Path, result, target: Target, budget: dict | None = None) -> Path:
    """Write ``result`` exactly to ``path``: an attack record
    (:func:`~boxhack.attacks.records.attack_record`) referencing the model (:func:`model_ref`)
    and the monitor file by hash, by paths relative to the file's folder when inside it."""
    path = Path(path)
    base = path.parent.resolve()
    record = attack_record(
        result, model=model_ref(target, base), monitor=file_ref(target.spec.monitor, base=base),
        budget=budget,
    )  # fmt: skip
    return save_attack(path, record)
