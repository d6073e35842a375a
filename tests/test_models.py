import json

import numpy as np
import pytest
import torch

from boxhack.data import load_dataset
from boxhack.errors import BoxhackError
from boxhack.models import build_model, collect, forward_with_layers, get_layer, list_layers
from boxhack.models.io import load_any_model, load_model, save_model
from boxhack.models.train import train_model


@pytest.fixture(scope="module")
def xor_data():
    return load_dataset("xor")


@pytest.fixture(scope="module")
def trained(xor_data):
    return train_model("xor-mlp", xor_data, epochs=20, seed=1)


def test_same_seed_same_weights(xor_data):
    a, _ = train_model("xor-mlp", xor_data, epochs=3, seed=5)
    b, _ = train_model("xor-mlp", xor_data, epochs=3, seed=5)
    c, _ = train_model("xor-mlp", xor_data, epochs=3, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_xor_network_learns(trained):
    model, info = trained
    assert info["test_accuracy"] > 0.95
    assert info["architecture"] == "xor-mlp" and info["default_layer"] == "relu2"
    assert info["classes"] == [0, 1] and "torch" in info["versions"]


def test_mnist_mlp_trains_quickly():
    ds = load_dataset("mnist", "0,1")
    _, info = train_model("mnist-mlp", ds, epochs=2)
    assert info["test_accuracy"] > 0.97


def test_save_load_round_trip(tmp_path, trained, xor_data):
    model, info = trained
    save_model(model, tmp_path / "m", info)
    loaded, info2 = load_model(tmp_path / "m")
    x = torch.as_tensor(xor_data.x_test[:50])
    assert torch.equal(model(x), loaded(x))
    assert info2["sha256"] and info2["test_accuracy"] == info["test_accuracy"]
    # also through model.json / model.pt paths and load_any_model
    assert torch.equal(load_any_model(tmp_path / "m" / "model.json")[0](x), model(x))


def test_corrupt_weights_are_caught(tmp_path, trained):
    model, info = trained
    out = save_model(model, tmp_path / "m", info)
    data = bytearray((out / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "model.pt").write_bytes(bytes(data))
    with pytest.raises(BoxhackError, match="SHA-256"):
        load_model(out)


def test_mismatched_metadata(tmp_path, trained):
    model, info = trained
    out = save_model(model, tmp_path / "m", info)
    meta = json.loads((out / "model.json").read_text())
    meta["architecture"] = "tanh-mlp"
    (out / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BoxhackError, match="do not fit the architecture"):
        load_model(out)
    meta["architecture"] = "xor-mlp"
    meta["n_classes"] = 3
    meta["classes"] = [0, 1, 2]
    (out / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BoxhackError, match="shape mismatch"):
        load_model(out)


def test_corrupt_json_and_missing(tmp_path, trained):
    model, info = trained
    out = save_model(model, tmp_path / "m", info)
    (out / "model.json").write_text("{not json")
    with pytest.raises(BoxhackError, match="not valid JSON"):
        load_model(out)
    with pytest.raises(BoxhackError, match="not found"):
        load_model(tmp_path / "missing")


class Evil:
    pass


def test_refuses_pickled_objects(tmp_path):
    torch.save({"w": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(BoxhackError, match="refusing|not a plain state dict"):
        load_any_model("torch.nn:Identity", weights=tmp_path / "evil.pt")


def test_user_model_class_and_torchscript(tmp_path, trained, xor_data):
    model, _ = trained
    torch.save(model.state_dict(), tmp_path / "w.pt")
    x = torch.as_tensor(xor_data.x_test[:20])
    ts = torch.jit.script(model)
    ts.save(str(tmp_path / "m.ts"))
    loaded, info = load_any_model(tmp_path / "m.ts")
    assert torch.allclose(loaded(x), model(x))
    # layer taps work on the un-scripted shell
    pred, feats = collect(loaded, ["relu2", "fc1"], xor_data.x_test[:20])
    pred2, feats2 = collect(model, ["relu2", "fc1"], xor_data.x_test[:20])
    assert np.array_equal(pred, pred2) and np.allclose(feats["relu2"], feats2["relu2"])
    assert isinstance(get_layer(loaded, "relu2"), torch.nn.ReLU)
    with pytest.raises(BoxhackError, match="is not a TorchScript"):
        load_any_model(tmp_path / "w.pt")
    with pytest.raises(BoxhackError, match="cannot import"):
        load_any_model("no_such_pkg.mod:Net", weights=tmp_path / "w.pt")


def test_layer_taps(xor_data):
    model = build_model("mnist-mlp", 10)
    names = [n for n, _, _ in list_layers(model, torch.zeros(1, 1, 28, 28))]
    assert names == ["flatten", "fc1", "relu1", "fc2", "relu2", "fc3"]
    x = torch.rand(4, 1, 28, 28)
    logits, feats = forward_with_layers(model, ["fc2", "relu2"], x)
    assert feats["fc2"].shape == (4, 32)
    assert torch.equal(torch.relu(feats["fc2"]), feats["relu2"])
    _, pre = forward_with_layers(model, ["relu2"], x, inputs=True)
    assert torch.equal(pre["relu2"], feats["fc2"])
    with pytest.raises(BoxhackError, match="unknown layer 'fc9'.*fc1"):
        get_layer(model, "fc9")


def test_wrong_input_shape_for_net():
    with pytest.raises(BoxhackError, match="takes inputs of shape"):
        train_model("mnist-mlp", load_dataset("xor"))
    with pytest.raises(BoxhackError, match="unknown network"):
        build_model("resnet", 10)
