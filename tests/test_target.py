"""boxhack.workflow.target: one way to load a target (model, monitor, data) and to pick the
inputs an attack starts from."""

from __future__ import annotations

import numpy as np
import pytest

from boxhack.errors import BoxhackError
from boxhack.workflow.target import (
    MODEL_KINDS,
    TargetSpec,
    load_data,
    load_target,
    select_inputs,
    start_mask,
)


@pytest.fixture(scope="module")
def xor(tmp_path_factory):
    import torch

    from boxhack.data import load_dataset
    from boxhack.models.io import save_model
    from boxhack.models.train import train_model
    from boxhack.monitor import BoxMonitor

    root = tmp_path_factory.mktemp("target")
    ds = load_dataset("xor")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, info = train_model("xor-mlp", ds, epochs=15, seed=0)
    finally:
        torch.set_num_threads(threads)
    model_dir = save_model(model, root / "xor", info)
    monitor = BoxMonitor(n_clusters=2, n_classes=2).fit(
        model, ["relu2"], ds.x_train, ds.y_train, metadata={"dataset": "xor"})
    monitor.save(root / "m.npz")
    return {"root": root, "model": model_dir, "monitor": root / "m.npz", "dataset": ds}


def test_a_model_directory_brings_its_data_and_its_monitor_is_checked(xor):
    t = load_target(str(xor["model"]), monitor=str(xor["monitor"]))
    assert t.kind == "boxhack" and t.dataset.name == "xor" and t.monitor.layers_ == ["relu2"]
    assert np.array_equal(t.dataset.x_test, xor["dataset"].x_test)
    assert t.input_shape == (2,) and t.device == "cpu" and t.model_dir() == xor["model"]
    assert not t.model.training


def test_data_is_loaded_only_when_needed_or_named(xor):
    assert load_target(str(xor["model"]), need_data=False).dataset is None
    assert load_target(str(xor["model"]), need_data=False, data="xor").dataset.name == "xor"


def test_a_spec_and_keywords_are_the_same_target(xor):
    spec = TargetSpec(model=str(xor["model"]), monitor=str(xor["monitor"]))
    assert "monitor" in TargetSpec.options() and "device" in TargetSpec.options()
    a, b = load_target(spec), load_target(str(xor["model"]), monitor=str(xor["monitor"]))
    assert a.spec == b.spec


def test_target_errors_are_one_clear_line(xor, tmp_path):
    cases = [
        ({"model": str(tmp_path / "none")}, "not found: give a boxhack model directory"),
        ({"model": str(xor["model"]), "weights": "w.pt"}, "--weights is for the package"),
        ({"model": str(xor["model"]), "data": "mnist", "classes": "0-1"}, "does not run on inputs"),
        ({"model": str(xor["model"]), "classes": "0"}, "2 outputs, the data 1 classes"),
        ({"model": str(xor["model"]), "monitor": str(xor["monitor"]), "novel_classes": "1"},
         "novel classes [1] are classes the model knows"),
        ({"model": str(xor["model"]), "device": "tpu"}, "--device"),
        ({"model": str(xor["model"]), "data": "cifar"}, "unknown data set 'cifar'"),
    ]
    for options, message in cases:
        with pytest.raises(BoxhackError, match=None) as exc:
            load_target(**options)
        assert message in str(exc.value) and "\n" not in str(exc.value), (options, exc.value)
    assert [kind.name for kind in MODEL_KINDS] == ["boxhack", "class", "torchscript", "export",
                                                  "onnx"]


def test_load_data_names_the_kinds():
    assert load_data("xor").n_classes == 2
    with pytest.raises(BoxhackError, match="built-in data set.*an .npz file.*IDX.*image folder"):
        load_data("nope")
    with pytest.raises(BoxhackError, match="data file nope.npz not found"):
        load_data("nope.npz")


def test_select_inputs_starts_each_goal_where_it_can_start(xor):
    t = load_target(str(xor["model"]), monitor=str(xor["monitor"]))
    ds = t.dataset
    pred, acc = t.monitor.predict(t.model, ds.x_test)
    for goal, alias in (("dos", "1"), ("intrude", "2"), ("combined", "combined")):
        idx = select_inputs(t.model, t.monitor, ds, alias, n=6, seed=0)
        assert np.all(start_mask(goal, pred[idx], acc[idx], ds.y_test[idx]))
        assert np.array_equal(idx, select_inputs(t.model, t.monitor, ds, goal, n=6, seed=0))
    every = select_inputs(t.model, t.monitor, ds, "dos")  # n=None: every eligible input
    assert len(every) == int(((pred == ds.y_test) & acc).sum())
    assert select_inputs(t.model, t.monitor, ds, "dos", index=[4, 2]).tolist() == [4, 2]
    with pytest.raises(BoxhackError, match="index 5000 is out of range"):
        select_inputs(t.model, t.monitor, ds, "dos", index=[5000])
    with pytest.raises(BoxhackError, match="unknown goal"):
        select_inputs(t.model, t.monitor, ds, "3", n=2)
