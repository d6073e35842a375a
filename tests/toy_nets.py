"""The tiny ReLU MLP several attack tests share: 6x6 inputs in [0, 1], 3 classes from a random
linear rule, layers flatten, fc1, relu1, fc2, relu2, fc3, trained on the first 500 inputs."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

SHAPE = (1, 6, 6)


def tiny_relu_mlp(n: int) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """``(net in eval mode, x (n, 1, 6, 6) float32, y (n,))``, seeded: the same first rows for
    any ``n``."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(36, 3)).astype(np.float32)
    x = rng.random((n, *SHAPE), dtype=np.float32)
    y = ((x.reshape(len(x), -1) - 0.5) @ w).argmax(1)
    net = nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(36, 24), relu1=nn.ReLU(), fc2=nn.Linear(24, 12),
        relu2=nn.ReLU(), fc3=nn.Linear(12, 3),
    ))  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    xt, yt = torch.as_tensor(x[:500]), torch.as_tensor(y[:500])
    with torch.random.fork_rng():
        for _ in range(150):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt), yt).backward()
            opt.step()
    return net.eval(), x, y
