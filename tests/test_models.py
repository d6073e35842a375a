import json

import numpy as np
import pytest
import torch

from boxhack.data import load_dataset
from boxhack.errors import BoxhackError
from boxhack.models import build_model, collect, forward_with_layers, get_layer, list_layers
from boxhack.models.io import load_model, save_model
from boxhack.models.layers import is_relu_layer
from boxhack.models.loaders import load_any_model
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
    _model, info = trained
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
    loaded, _info = load_any_model(tmp_path / "m.ts")
    assert torch.allclose(loaded(x), model(x))
    # layer taps work on the un-scripted shell
    pred, feats = collect(loaded, ["relu2", "fc1"], xor_data.x_test[:20])
    pred2, feats2 = collect(model, ["relu2", "fc1"], xor_data.x_test[:20])
    assert np.array_equal(pred, pred2) and np.allclose(feats["relu2"], feats2["relu2"])
    assert is_relu_layer(loaded, "relu2")  # a ReLU in the graph: its input is the pre-activation
    with pytest.raises(BoxhackError, match="is not a TorchScript"):
        load_any_model(tmp_path / "w.pt")
    with pytest.raises(BoxhackError, match="cannot import"):
        load_any_model("no_such_pkg.mod:Net", weights=tmp_path / "w.pt")


def test_layer_taps(xor_data):
    model = build_model("mnist-mlp", 10)
    names = [n for n, _, _ in list_layers(model, torch.zeros(1, 1, 28, 28))]
    assert names == ["flatten", "fc1", "relu1", "fc2", "relu2", "fc3"]
    x = torch.rand(4, 1, 28, 28)
    _logits, feats = forward_with_layers(model, ["fc2", "relu2"], x)
    assert feats["fc2"].shape == (4, 32)
    assert torch.equal(torch.relu(feats["fc2"]), feats["relu2"])
    _, pre = forward_with_layers(model, ["relu2"], x, inputs=True)
    assert torch.equal(pre["relu2"], feats["fc2"])
    with pytest.raises(BoxhackError, match="unknown layer 'fc9'.*fc1"):
        get_layer(model, "fc9")


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), 0.0, -1e-3])
def test_a_learning_rate_that_cannot_train_is_refused(xor_data, lr):
    with pytest.raises(BoxhackError, match="lr > 0"):
        train_model("xor-mlp", xor_data, epochs=1, lr=lr)


def test_wrong_input_shape_for_net():
    with pytest.raises(BoxhackError, match="takes inputs of shape"):
        train_model("mnist-mlp", load_dataset("xor"))
    with pytest.raises(BoxhackError, match="unknown network"):
        build_model("resnet", 10)


# --- interrupted saves and damaged cache entries -------------------------------------------


def test_save_model_leaves_nothing_partial_when_torch_save_raises(tmp_path, trained, monkeypatch):
    model, info = trained
    good = save_model(model, tmp_path / "m", info)
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.flush()  # half of the file reached the disk, then the disk was full
        f.truncate(f.tell() // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    other, _ = train_model("xor-mlp", load_dataset("xor"), epochs=1, seed=9)
    with pytest.raises(OSError, match="No space left"):
        save_model(other, good, info)
    # the old model is whole and untouched, and no temporary file is left behind
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    load_model(good)
    with pytest.raises(OSError, match="No space left"):
        save_model(other, tmp_path / "fresh", info)
    assert list((tmp_path / "fresh").iterdir()) == []


def test_the_same_weights_give_the_same_file(tmp_path, trained):
    """model.pt's bytes (and so the SHA-256 that runs and attack records cite) depend on the
    weights only, not on the temporary file name the atomic write used."""
    model, info = trained
    a = save_model(model, tmp_path / "a", info)
    b = save_model(model, tmp_path / "b", info)
    assert (a / "model.pt").read_bytes() == (b / "model.pt").read_bytes()
    assert json.loads((a / "model.json").read_text())["sha256"] == load_model(b)[1]["sha256"]


def test_save_model_writes_model_json_last(tmp_path, trained, monkeypatch):
    """If the process dies between the weights and model.json, no model.json is left that
    describes other weights: an overwrite removes the old one before the new weights land."""
    model, info = trained
    out = save_model(model, tmp_path / "m", info)
    import boxhack.models.io as io_mod

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for a kill right after the weights were renamed

    monkeypatch.setattr(io_mod, "atomic_write_json", killed)
    other, _ = train_model("xor-mlp", load_dataset("xor"), epochs=1, seed=9)
    with pytest.raises(KeyboardInterrupt):
        save_model(other, out, info)
    assert not (out / "model.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]


@pytest.fixture(scope="module")
def clean_cache(tmp_path_factory):
    """A model cache holding the tanh network and a monitor of it, built once."""
    from boxhack.experiments.prepared import prepare_monitor

    root = tmp_path_factory.mktemp("cache")
    prepare_monitor("tanh", root)
    return root


def _damage_model(directory, how):
    meta, weights = directory / "model.json", directory / "model.pt"
    if how == "empty model.json":
        meta.write_bytes(b"")
    elif how == "truncated model.pt":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "empty model.pt":
        weights.write_bytes(b"")
    elif how == "no model.json":
        meta.unlink()
    elif how == "no model.pt":
        weights.unlink()
    elif how == "half-written model.json":
        meta.write_bytes(meta.read_bytes()[:40])


@pytest.mark.parametrize("how", ["empty model.json", "truncated model.pt", "empty model.pt",
                                 "no model.json", "no model.pt", "half-written model.json"])
def test_a_damaged_model_cache_entry_is_rebuilt(clean_cache, tmp_path, how):
    import shutil

    from boxhack.experiments.prepared import prepare_model

    root = tmp_path / "root"
    shutil.copytree(clean_cache, root)
    directory = root / "models" / "tanh"
    _reference, ref_info = load_model(directory)
    _damage_model(directory, how)
    with pytest.raises(BoxhackError):
        load_model(directory)  # what every later run hit before: the entry itself is broken
    with pytest.warns(UserWarning, match="training it again"):
        _model, info, _ = prepare_model("tanh", root)
    assert info["sha256"] == ref_info["sha256"]  # the same seed trains the same weights
    load_model(directory)  # whole again, for every later run
    assert sorted(p.name for p in directory.iterdir()) == ["model.json", "model.pt"]


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_a_damaged_monitor_cache_entry_is_refitted(clean_cache, tmp_path, how):
    import shutil

    from boxhack.experiments.prepared import monitor_path, prepare_monitor
    from boxhack.monitor import BoxMonitor

    root = tmp_path / "root"
    shutil.copytree(clean_cache, root)
    path = monitor_path(root, "tanh", 1, 0.0, "tanh2")
    good = path.read_bytes()
    path.write_bytes({"truncated": good[: len(good) // 2], "empty": b"",
                      "garbage": b"PK\x03\x04 not a zip"}[how])
    with pytest.raises(BoxhackError):
        BoxMonitor.load(path)
    with pytest.warns(UserWarning, match="fitting it again"):
        model, monitor, _, dataset = prepare_monitor("tanh", root)
    reference = BoxMonitor.load(clean_cache / path.relative_to(root))
    x = dataset.x_test[:200]
    assert np.array_equal(monitor.predict(model, x)[1], reference.predict(model, x)[1])
    BoxMonitor.load(path)


def test_a_cached_monitor_of_other_weights_is_refitted(clean_cache, tmp_path):
    import shutil

    from boxhack.experiments.prepared import monitor_path, prepare_monitor
    from boxhack.monitor import BoxMonitor

    root = tmp_path / "root"
    shutil.copytree(clean_cache, root)
    path = monitor_path(root, "tanh", 1, 0.0, "tanh2")
    old = BoxMonitor.load(path)
    _, old_info = load_model(root / "models" / "tanh")
    assert old.metadata_["model_sha256"] == old_info["sha256"]
    # the cached model is replaced by other weights (e.g. rebuilt by another boxhack)
    other, info = train_model("tanh-mlp", load_dataset("tanh"), epochs=2, seed=5)
    save_model(other, root / "models" / "tanh", info)
    with pytest.warns(UserWarning, match="fitted on other weights"):
        _, monitor, info, _ = prepare_monitor("tanh", root)
    assert monitor.metadata_["model_sha256"] == info["sha256"] != old_info["sha256"]


# --- clear one-line errors through the CLI --------------------------------------------------


def _one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("boxhack: error: ") and "Traceback" not in err
    return lines[0]


def test_bad_user_models_and_weights_are_one_line_errors(tmp_path, trained, capsys):
    from boxhack.cli import main

    model, info = trained
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    damaged = save_model(model, tmp_path / "damaged", info)
    (damaged / "model.pt").write_bytes(b"")
    cases = [
        (["--model", "torch.nn:Identity", "--weights", str(empty)], "is empty (0 bytes"),
        (["--model", "torch.nn:Linear", "--weights", str(weights)],
         "cannot build torch.nn:Linear without arguments"),
        (["--model", "torch.nn:ReLU", "--weights", str(weights)], "not a trained classifier"),
        (["--model", "math:pi", "--weights", str(weights)], "not a torch.nn.Module class"),
        (["--model", "torch.nn:Linear"], "needs its weights"),
        (["--model", str(empty)], "not a TorchScript file"),
        (["--model", str(damaged)], "SHA-256"),
        (["--model", "torch.nn:Identity", "--weights", str(tmp_path)], "is a directory"),
    ]
    for args, needle in cases:
        assert main(["monitor", "layers", *args]) == 2, args
        assert needle in _one_error_line(capsys.readouterr().err), args
