"""`boxhack monitor fit --abstraction NAME` for every abstraction: the CLI fits exactly the
library's monitor (same state, bit for bit; same decisions), the file loads with
``load_monitor`` and ``monitor info`` / ``monitor evaluate`` read it."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("boxhack.models.io")
pytest.importorskip("boxhack.models.train")

from boxhack.cli import main
from boxhack.cli.monitor import ABSTRACTIONS, abstraction_arg
from boxhack.errors import BoxhackError
from boxhack.monitor import MONITORS, abstraction_params, build_monitor, load_monitor

LAYER = "relu2"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained MNIST 0-2 network, its data set and its layer vectors."""
    import torch

    from boxhack.data import load_dataset
    from boxhack.models.io import save_model
    from boxhack.models.train import train_model

    ds = load_dataset("mnist", "0-2")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is faster, and immune to busy cores
    try:
        model, info = train_model("mnist-mlp", ds, epochs=1, seed=0)
    finally:
        torch.set_num_threads(threads)
    path = save_model(model, tmp_path_factory.mktemp("run") / "mnist3", info)
    return path, model, ds


# (--abstraction, extra CLI options, the library parameters they mean)
CASES = [
    ("box", ["--clusters", "2"], {"n_clusters": 2}),
    ("ball", ["--clusters", "2", "--seed", "3"], {"n_clusters": 2, "seed": 3}),
    ("zone", ["--threshold", "0.1", "--max-clusters", "3"],
     {"clustering_threshold": 0.1, "max_clusters": 3}),
    ("octagon", ["--clusters", "1", "--max-memory", "64"],
     {"n_clusters": 1, "max_memory": 64 * 2**20}),
    ("pattern", ["--gamma", "1"], {"gamma": 1}),
    ("hull", ["--clusters", "1", "--lp-tolerance", "1e-7"],
     {"n_clusters": 1, "lp_tolerance": 1e-7}),
    ("box+pattern", ["--clusters", "2", "--gamma", "2"], {"n_clusters": 2, "gamma": 2}),
]


def _fit_cli(run_dir, out, name, extra, *more):
    return main(["monitor", "fit", "--model", str(run_dir), "--layer", LAYER,
                 "--abstraction", name, *extra, *more, "--out", str(out)])


@pytest.mark.parametrize(("name", "extra", "params"), CASES, ids=[c[0] for c in CASES])
def test_fit_every_abstraction_equals_library(run, tmp_path, capsys, name, extra, params):
    run_dir, model, ds = run
    out = tmp_path / "m.npz"
    assert _fit_cli(run_dir, out, name, extra, "--tolerance", "0.05") == 0
    printed = capsys.readouterr().out
    assert LAYER in printed and str(out) in printed

    cli = load_monitor(out)
    lib = build_monitor(name, tolerance=0.05, n_classes=ds.n_classes, **params)
    lib.fit(model, [LAYER], ds.x_train, ds.y_train)
    assert type(cli) is type(lib)
    assert cli.abstraction == ("composite" if "+" in name else name)
    assert cli.get_params() == lib.get_params()
    for key, value in params.items():  # the option reached the monitor (members: each that has it)
        holders = cli.members_ if "+" in name else [cli]
        assert any(getattr(m, key, None) == value for m in holders), key
    # the same fitted state, bit for bit, and so the same decisions
    assert sorted(cli.state_[LAYER]) == sorted(lib.state_[LAYER])
    for key in lib.state_[LAYER]:
        np.testing.assert_array_equal(cli.state_[LAYER][key], lib.state_[LAYER][key])
    x = ds.x_test[:60] if name != "hull" else ds.x_test[:20]
    pred_c, acc_c = cli.predict(model, x)
    pred_l, acc_l = lib.predict(model, x)
    np.testing.assert_array_equal(pred_c, pred_l)
    np.testing.assert_array_equal(acc_c, acc_l)
    # the training vectors it was fitted on are accepted (tolerance >= 0)
    pred_t, acc_t = cli.predict(model, ds.x_train[:40])
    correct = pred_t == np.asarray(ds.y_train[:40])
    assert acc_t[correct].all()

    assert main(["monitor", "info", str(out)]) == 0
    info = capsys.readouterr().out
    lines = [ln.split() for ln in info.splitlines() if ln.startswith(LAYER)]
    assert [ln[1] for ln in lines] == name.split("+")  # one row per (member) abstraction
    assert main(["monitor", "info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["abstraction"] == cli.abstraction


@pytest.mark.parametrize("name", ["zone", "pattern", "box+pattern", "hull"])
def test_evaluate_every_abstraction(run, tmp_path, capsys, name):
    run_dir, _, _ = run
    out = tmp_path / "m.npz"
    extra = {"pattern": [], "hull": ["--clusters", "1"]}.get(name, ["--clusters", "1"])
    assert _fit_cli(run_dir, out, name, extra) == 0
    capsys.readouterr()
    js = tmp_path / "ev.json"
    novel = [] if name == "hull" else ["--novel-classes", "5"]  # (hull: LPs; keep it short)
    assert main(["monitor", "evaluate", "--model", str(run_dir), "--monitor", str(out),
                 *novel, "--out", str(js)]) == 0
    assert "acceptance of correct predictions" in capsys.readouterr().out
    metrics = json.loads(js.read_text())
    assert 0 <= metrics["acceptance_rate"] <= 1
    assert metrics["layers"] == [LAYER]
    assert ("members" in metrics["monitor_params"]) == ("+" in name)


def test_option_that_does_not_apply_is_an_error(run, tmp_path, capsys):
    run_dir, _, _ = run
    out = tmp_path / "x.npz"
    assert _fit_cli(run_dir, out, "pattern", ["--clusters", "2"]) == 2
    err = capsys.readouterr().err
    assert "--clusters does not apply to the pattern abstraction" in err and "--gamma" in err
    assert _fit_cli(run_dir, out, "box", ["--gamma", "1"]) == 2
    assert "--gamma does not apply to the box abstraction" in capsys.readouterr().err
    assert _fit_cli(run_dir, out, "ball", ["--lp-tolerance", "1e-6"]) == 2
    assert _fit_cli(run_dir, out, "box", ["--max-memory", "1"]) == 2
    assert not out.exists()
    # a zone whose pair bounds exceed --max-memory: refused, naming the widest layer that fits
    assert _fit_cli(run_dir, out, "zone", ["--clusters", "1", "--max-memory", "0.01"]) == 2
    assert "the widest layer that fits is" in capsys.readouterr().err
    assert not out.exists()
    for bad in ("circle", "box+box", "box+composite", "composite"):
        with pytest.raises(SystemExit) as exc:
            _fit_cli(run_dir, out, bad, [])
        assert exc.value.code == 2
        assert "argument --abstraction" in capsys.readouterr().err


def test_cli_choices_are_the_registry():
    builtin = {n for n, c in MONITORS.items() if c.__module__.startswith("boxhack.monitor.")}
    assert set(ABSTRACTIONS) == builtin - {"composite"}  # (tests may register examples)
    assert abstraction_arg(" box + zone ") == "box+zone"


def test_build_monitor_library():
    m = build_monitor("zone+pattern+hull", n_clusters=2, gamma=1, tolerance=0.1,
                      relative_tolerance=False)
    assert m.abstraction == "composite" and m.tolerance == 0.1 and not m.relative_tolerance
    assert m.get_params()["members"] == [
        {"abstraction": "zone", "params": {"n_clusters": 2}},
        {"abstraction": "pattern", "params": {"gamma": 1}},
        {"abstraction": "hull", "params": {"n_clusters": 2}}]
    assert "gamma" in abstraction_params("box+pattern")
    assert "gamma" not in abstraction_params("box")
    assert build_monitor("composite", members=[{"abstraction": "box"}]).abstraction == "composite"
    with pytest.raises(BoxhackError, match="takes no parameter 'n_clusters'"):
        build_monitor("pattern", n_clusters=3)
    with pytest.raises(BoxhackError, match="takes no parameter 'gamma'"):
        build_monitor("box+zone", gamma=1)
    with pytest.raises(BoxhackError, match="unknown abstraction 'circle'"):
        build_monitor("circle")
    with pytest.raises(BoxhackError, match="once"):
        build_monitor("box+box")
    with pytest.raises(BoxhackError, match="cannot be a member"):
        build_monitor("box+composite")
