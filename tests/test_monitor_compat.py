"""check_compatible: a monitor is used only with the model it was fitted on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boxhack.errors import BoxhackError
from boxhack.models.io import load_model, save_model
from boxhack.models.zoo import build_model
from boxhack.monitor import BoxMonitor, check_compatible, state_sha256


def _xor(seed: int, n_classes: int = 2):
    torch.manual_seed(seed)
    return build_model("xor-mlp", n_classes).eval()


def _points(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 2)).astype(np.float32)
    return x, (x[:, 0] > x[:, 1]).astype(np.int64)


def _info(model_dir=None, **kw):
    base = {"architecture": "xor-mlp", "input_shape": [2], "n_classes": 2}
    base.update(kw)
    return base


def test_same_model_passes_and_state_hash_is_recorded():
    model = _xor(0)
    x, y = _points()
    m = BoxMonitor(n_clusters=1, only_correct=False).fit(model, "relu2", x, y)
    assert m.metadata_["model_state_sha256"] == state_sha256(model)
    check_compatible(m, model, _info())
    check_compatible(m, model, None, example=x[:3])
    check_compatible(m, model)  # nothing known about the input: names and hash only


def test_state_hash_is_exact_and_survives_a_save_load_round_trip(tmp_path):
    model = _xor(0)
    h = state_sha256(model)
    directory = save_model(model, tmp_path / "m", {"format": "boxhack-model", "format_version": 1,
                                                    "architecture": "xor-mlp", "n_classes": 2,
                                                    "classes": [0, 1]})  # fmt: skip
    loaded, _ = load_model(directory)
    assert state_sha256(loaded) == h
    with torch.no_grad():  # one float32 step in one weight changes it
        w = loaded.fc1.weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(np.inf))
    assert state_sha256(loaded) != h


def test_another_model_with_the_same_widths_is_refused_by_its_state_hash(tmp_path):
    a, b = _xor(0), _xor(1)
    x, y = _points()
    m = BoxMonitor(n_clusters=1, only_correct=False).fit(a, "relu2", x, y)
    m = BoxMonitor.load(m.save(tmp_path / "m.npz"))
    with pytest.raises(BoxhackError, match="does not fit .*weights hash") as exc:
        check_compatible(m, b, _info(), monitor_name="m.npz", model_name="runs/b")
    assert "m.npz" in str(exc.value) and "boxhack monitor fit --model runs/b" in str(exc.value)


def test_recorded_weights_file_hash_must_match():
    model = _xor(0)
    x, y = _points()
    m = BoxMonitor(n_clusters=1, only_correct=False).fit(model, "relu2", x, y,
                                                          model_sha256="a" * 64)
    check_compatible(m, model, _info(sha256="a" * 64))
    check_compatible(m, model, _info())  # model hash unknown (a user model): not compared
    with pytest.raises(BoxhackError, match=r"weights sha256 aaaaaaaaaaaa\.\.\., this one has "
                                           r"bbbbbbbbbbbb"):
        check_compatible(m, model, _info(sha256="b" * 64))


def _feature_monitor(layer: str, d: int, n_classes: int) -> BoxMonitor:
    """A monitor fitted on plain features: no model, no hash."""
    rng = np.random.default_rng(0)
    feats = {layer: rng.random((60, d)).astype(np.float32)}
    return BoxMonitor(n_clusters=1, n_classes=n_classes).fit_features(
        feats, np.arange(60) % n_classes)


def test_hashless_monitor_checked_on_layers_widths_and_classes():
    model = _xor(0)
    check_compatible(_feature_monitor("relu2", 8, 2), model, _info())
    with pytest.raises(BoxhackError, match="layer 'relu2' has width 8 in the model, 16"):
        check_compatible(_feature_monitor("relu2", 16, 2), model, _info())
    with pytest.raises(BoxhackError, match="lacks"):
        check_compatible(_feature_monitor("conv9", 8, 2), model, _info())
    with pytest.raises(BoxhackError, match="2 outputs .*3 classes"):
        check_compatible(_feature_monitor("relu2", 8, 3), model, {"input_shape": [2]})
    with pytest.raises(BoxhackError, match="3 classes, the model 2"):
        check_compatible(_feature_monitor("relu2", 8, 3), model, _info())


def test_width_measured_from_the_example_or_the_architecture():
    model = _xor(0)
    wrong = _feature_monitor("relu2", 16, 2)
    with pytest.raises(BoxhackError, match="width"):
        check_compatible(wrong, model, {"architecture": "xor-mlp"})  # shape from the zoo
    with pytest.raises(BoxhackError, match="width"):
        check_compatible(wrong, model, None, example=np.zeros((4, 2), np.float32))
    check_compatible(wrong, model, None)  # nothing to measure with: names only
    with pytest.raises(BoxhackError, match="does not run on inputs of shape"):
        check_compatible(wrong, model, None, example=np.zeros((1, 5), np.float32))


def test_several_layers_all_checked():
    model = _xor(0)
    x, y = _points()
    m = BoxMonitor(n_clusters=1, only_correct=False).fit(model, ["relu1", "fc2"], x, y)
    check_compatible(m, model, _info())
    other = build_model("tanh-mlp", 2)
    with pytest.raises(BoxhackError):
        check_compatible(m, other, {"input_shape": [2]})


def test_evaluate_novelty_refuses_a_monitor_of_another_model():
    from boxhack.monitor.evaluation import evaluate_novelty

    a, b = _xor(0), _xor(1)
    x, y = _points()
    m = BoxMonitor(n_clusters=1, only_correct=False).fit(a, "relu2", x, y)
    assert evaluate_novelty(m, a, x, y)["n_known"] == len(y)
    with pytest.raises(BoxhackError, match="does not fit"):
        evaluate_novelty(m, b, x, y)
