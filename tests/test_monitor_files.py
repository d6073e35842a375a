"""Box monitor files stay byte-identical to format version 1 (issue 11).

Experiment rows record the SHA-256 of cached monitor files, so a box monitor fitted and saved
the same way must give exactly the bytes the pre-protocol ``BoxMonitor`` wrote. The expected
hashes below were computed with that code (commit 283618a, ``box.py`` before the port) on the
same fixed data; the data are exact in float32 (integer and dyadic values) so every machine
computes the same layer vectors.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from boxhack.monitor import BoxMonitor

F32 = np.float32


def _blobs(seed: int, n: int, d: int, classes: int):
    rng = np.random.default_rng(seed)
    centres = rng.integers(-8, 8, size=(classes, 3, d)) * 4
    y = rng.integers(0, classes, n)
    mode = rng.integers(0, 3, n)
    x = centres[y, mode] + rng.integers(-16, 16, size=(n, d)) / 8
    return np.maximum(x, 0).astype(F32), y.astype(np.int64)


def _exact_mlp() -> nn.Module:
    """Integer weights and biases: every forward value is an exact small integer."""
    rng = np.random.default_rng(7)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(rng.integers(-3, 4, size=tuple(p.shape)).astype(F32)))
    return model


def two_layers(path):
    x, y = _blobs(1, 120, 5, 3)
    feats = {"l1": x[:, :3], "l2": x[:, ::-1].copy()}
    m = BoxMonitor(n_clusters=2, tolerance=0.13, n_classes=4)
    return m.fit_features(feats, y, model_sha256="abc123", metadata={"note": "x"}).save(path)


def elbow_absolute(path):
    x, y = _blobs(2, 300, 8, 2)
    pred = y.copy()
    pred[::7] = 1 - pred[::7]
    m = BoxMonitor(tolerance=0.25, relative_tolerance=False, seed=3, n_init=2, max_clusters=4)
    return m.fit_features(x, y, predictions=pred).save(path)


def all_rows(path):
    x, y = _blobs(3, 200, 6, 3)
    pred = (y + (np.arange(len(y)) % 5 == 0)) % 3
    m = BoxMonitor(n_clusters=3, only_correct=False, clustering_threshold=0.1, tolerance=0.5)
    return m.fit_features(x, y, predictions=pred).save(path)


def on_a_model(path):
    rng = np.random.default_rng(8)
    inputs = torch.from_numpy(rng.integers(0, 5, size=(90, 4)).astype(F32))
    labels = _exact_mlp()(inputs).argmax(1).numpy()
    labels[::9] = (labels[::9] + 1) % 3
    m = BoxMonitor(n_clusters=2, tolerance=0.1)
    return m.fit(_exact_mlp(), ["1", "2"], inputs, labels, model_sha256="deadbeef").save(path)


CASES = {f.__name__: f for f in (two_layers, elbow_absolute, all_rows, on_a_model)}
EXPECTED = {  # sha256 of the files the version-1 BoxMonitor wrote (commit 283618a)
    "all_rows": "f24812709917b55dba49458a3302db9787e0eb675b633bfb844c5263947c57e8",
    "elbow_absolute": "8fc42d5130d8ac1a6186a8a6654ea9d60ae206fffacd8c950a70d01253a97a54",
    "on_a_model": "db417349fa24f13829f84192027170df920f936fb300009d4ab759dbae0de0cf",
    "two_layers": "61872ac94e73b27f72ca9a4c58dfebceffbe83f09c112941d1f6dc2f6fa11cc2",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_box_files_are_byte_identical_to_format_version_1(tmp_path, name):
    path = CASES[name](tmp_path / f"{name}.npz")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == EXPECTED[name]


BASELINE = os.environ.get("BOXHACK_BASELINE_RUN")  # e.g. /work/runs/q: a reproduce --quick run


@pytest.mark.slow
@pytest.mark.skipif(not BASELINE, reason="set BOXHACK_BASELINE_RUN to a `reproduce --quick` run")
def test_refitting_a_runs_monitors_from_its_networks_gives_the_same_files(tmp_path):
    """Every cached monitor of a run, refitted from the run's cached networks the way the
    experiments fit it, is the same file byte for byte (so the SHA-256s in its rows hold)."""
    from boxhack.experiments.prepared import prepare_monitor

    models = Path(BASELINE) / "models"
    shutil.copytree(models / "models", tmp_path / "models")
    # the box monitors of prepare_monitor; the abstractions experiment's own ("abs-...") are
    # checked by its tests
    pattern = re.compile(r"(.+)-(\w+)-k(\d+)-tol([\d.]+)\.npz")
    files = [f for f in sorted((models / "monitors").glob("*.npz"))
             if pattern.fullmatch(f.name) and not f.name.startswith("abs-")]
    assert files
    for f in files:
        key, layer, k, tol = pattern.fullmatch(f.name).groups()
        prepare_monitor(key, tmp_path, n_clusters=int(k), tolerance=float(tol), layer=layer)
        assert (tmp_path / "monitors" / f.name).read_bytes() == f.read_bytes(), f.name
