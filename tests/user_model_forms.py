"""Test helper: a user's model outside the zoo, in the four forms a user may hand boxhack.

``build_forms(folder)`` writes, into ``folder``:

- ``usernet.py`` (the source: a small BatchNorm CNN with functional activations and a
  non-``Sequential`` structure) and ``usernet.pt`` (its state dict): ``usernet.py:UserNet``
  with ``--weights usernet.pt --model-args '{"n_classes": 4}'``;
- ``usernet.ts.pt``: TorchScript (scripted);
- ``usernet.pt2``: a ``torch.export`` program (dynamic batch);
- ``usernet.onnx``: ONNX (the TorchScript-based exporter, opset 17, which onnx2torch reads);
- ``data.npz``: ``x_train, y_train, x_test, y_test`` (and ``x_ood``, a class it never saw),
  1x12x12 images in [0, 1], 4 known classes;

after training the network briefly (seeded, a second or two on one core) and putting it in
eval mode. It returns a :class:`Forms` with the model specs, the load options of each form and
the name of the same layer (the first linear layer's output) in each form's spelling.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SOURCE = '''
import torch
from torch import nn
import torch.nn.functional as F


class ConvBlock(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)


class UserNet(nn.Module):
    """Not a Sequential: blocks, a skip of the pooled input, functional activations."""

    def __init__(self, n_classes=10, width=6):
        super().__init__()
        self.block1 = ConvBlock(1, width)
        self.block2 = ConvBlock(width, width)
        self.fc1 = nn.Linear(width * 9 + 9, 24)
        self.head = nn.Linear(24, n_classes)

    def forward(self, x):
        h = self.block2(self.block1(x))
        skip = F.avg_pool2d(x, 4).flatten(1)
        h = torch.cat([torch.flatten(h, 1), skip], 1)
        return self.head(F.relu(self.fc1(h)))
'''

N_CLASSES = 4
SHAPE = (1, 12, 12)


@dataclass
class Forms:
    """The four forms of one trained network (see the module doc)."""

    folder: Path
    data: Path
    specs: dict[str, str] = field(default_factory=dict)
    options: dict[str, dict] = field(default_factory=dict)
    layer: dict[str, str] = field(default_factory=dict)
    reference: torch.nn.Module | None = None


def make_data(seed: int = 0, n_per_class: int = 60):
    """Four classes of 12x12 images (a bright bar per class, noise) and a fifth as ``x_ood``."""
    rng = np.random.default_rng(seed)

    def images(cls: int, n: int) -> np.ndarray:
        x = rng.uniform(0.0, 0.3, size=(n, *SHAPE))
        r = 2 + 2 * cls
        if cls % 2 == 0:
            x[:, 0, r : r + 2, 1:11] += rng.uniform(0.5, 0.7, size=(n, 1, 1))
        else:
            x[:, 0, 1:11, r : r + 2] += rng.uniform(0.5, 0.7, size=(n, 1, 1))
        return np.clip(x, 0, 1).astype(np.float32)

    def split(n):
        x = np.concatenate([images(c, n) for c in range(N_CLASSES)])
        y = np.repeat(np.arange(N_CLASSES), n).astype(np.int64)
        order = rng.permutation(len(y))
        return x[order], y[order]

    x_train, y_train = split(n_per_class)
    x_test, y_test = split(n_per_class // 3)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "x_ood": images(N_CLASSES + 1, 20)}


def _train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 15) -> None:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(xt), 32):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[i : i + 32]), yt[i : i + 32])
            loss.backward()
            opt.step()
    model.eval()


def build_forms(folder: str | Path, seed: int = 0) -> Forms:
    """Train the user's network and write its four forms and its data (module doc)."""
    from boxhack.models.loaders import _import_file  # the way boxhack imports a user's file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "usernet.py"
    source.write_text(SOURCE)
    data = make_data(seed)
    np.savez(folder / "data.npz", **data)
    torch.manual_seed(seed)
    model = _import_file(source).UserNet(n_classes=N_CLASSES)
    _train(model, data["x_train"], data["y_train"])
    torch.save(model.state_dict(), folder / "usernet.pt")
    example = torch.as_tensor(data["x_test"][:2])
    with warnings.catch_warnings():  # TorchScript and the legacy ONNX exporter are deprecated
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(folder / "usernet.ts.pt"))
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(folder / "usernet.pt2"))
        torch.onnx.export(model, (example,), str(folder / "usernet.onnx"), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    forms = Forms(folder=folder, data=folder / "data.npz", reference=model)
    forms.specs = {
        "class": f"{source}:UserNet",
        "torchscript": str(folder / "usernet.ts.pt"),
        "export": str(folder / "usernet.pt2"),
        "onnx": str(folder / "usernet.onnx"),
    }
    forms.options = {name: {} for name in forms.specs}
    forms.options["class"] = {"weights": str(folder / "usernet.pt"),
                              "model_args": json.dumps({"n_classes": N_CLASSES})}
    forms.layer = {"class": "fc1", "torchscript": "fc1", "export": "fc1", "onnx": "fc1/Gemm"}
    return forms
