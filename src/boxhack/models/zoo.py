"""The paper's networks, as plain ``nn.Sequential`` models with stable module-path names.

Every network is built from an ``OrderedDict`` so its layers are addressable by name
(``"fc2"``, ``"relu2"``), which is how monitors and attacks pick a layer.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from boxhack.errors import BoxhackError


@dataclass(frozen=True)
class NetSpec:
    name: str
    description: str
    input_shape: tuple[int, ...]
    default_layer: str  # the layer a monitor watches unless told otherwise
    dataset: str  # the data set it is trained on by default


def _xor_mlp(n_classes: int = 2) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(2, 16),
            relu1=nn.ReLU(),
            fc2=nn.Linear(16, 8),
            relu2=nn.ReLU(),
            fc3=nn.Linear(8, n_classes),
        )
    )


def _tanh_mlp(n_classes: int = 2) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(2, 8),
            tanh1=nn.Tanh(),
            fc2=nn.Linear(8, 4),
            tanh2=nn.Tanh(),
            fc3=nn.Linear(4, n_classes),
        )
    )


def _mnist_mlp(n_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(784, 64),
            relu1=nn.ReLU(),
            fc2=nn.Linear(64, 32),
            relu2=nn.ReLU(),
            fc3=nn.Linear(32, n_classes),
        )
    )


def _mnist_cnn(n_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 16, 3),  # 26x26
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),  # 13x13
            conv2=nn.Conv2d(16, 32, 3),  # 11x11
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),  # 5x5
            flatten=nn.Flatten(),
            fc1=nn.Linear(32 * 5 * 5, 64),
            relu3=nn.ReLU(),
            fc2=nn.Linear(64, n_classes),
        )
    )


NETWORKS: dict[str, tuple[NetSpec, object]] = {
    "xor-mlp": (
        NetSpec("xor-mlp", "XOR-like circuit: 2-16-8-2 ReLU MLP", (2,), "relu2", "xor"),
        _xor_mlp,
    ),
    "tanh-mlp": (
        NetSpec("tanh-mlp", "tanh circuit: 2-8-4-2 MLP with tanh activations", (2,), "tanh2", "tanh"),
        _tanh_mlp,
    ),
    "mnist-mlp": (
        NetSpec("mnist-mlp", "MNIST MLP 784-64-32-K, ReLU", (1, 28, 28), "relu2", "mnist"),
        _mnist_mlp,
    ),
    "mnist-cnn": (
        NetSpec(
            "mnist-cnn",
            "MNIST CNN: conv16-pool-conv32-pool-fc64-K, ReLU",
            (1, 28, 28),
            "relu3",
            "mnist",
        ),
        _mnist_cnn,
    ),
}


def net_spec(name: str) -> NetSpec:
    if name not in NETWORKS:
        raise BoxhackError(f"unknown network {name!r}; choose one of: {', '.join(NETWORKS)}")
    return NETWORKS[name][0]


def build_model(name: str, n_classes: int) -> nn.Sequential:
    """A freshly initialised network (initialisation follows torch's global RNG)."""
    spec = net_spec(name)
    if n_classes < 2:
        raise BoxhackError(f"a classifier needs at least 2 classes, got n_classes={n_classes}")
    return NETWORKS[spec.name][1](n_classes)
