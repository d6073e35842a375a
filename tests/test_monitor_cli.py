"""`boxhack monitor ...` smoke tests through boxhack.cli.main."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("boxhack.models.io")
pytest.importorskip("boxhack.models.train")

from boxhack.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
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
    return save_model(model, tmp_path_factory.mktemp("run") / "mnist3", info)


def test_monitor_layers(run_dir, capsys):
    assert main(["monitor", "layers", "--model", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "relu2" in out and "ReLU" in out and "32" in out


def test_monitor_fit_evaluate_info(run_dir, tmp_path, capsys):
    out_file = tmp_path / "mon"  # no suffix: written exactly there
    rc = main(["monitor", "fit", "--model", str(run_dir), "--layer", "fc2", "--layer", "relu2",
               "--clusters", "2", "--tolerance", "0.1", "--out", str(out_file)])
    assert rc == 0
    assert out_file.is_file()
    from boxhack.monitor import BoxMonitor

    m = BoxMonitor.load(out_file)
    assert m.layers_ == ["fc2", "relu2"] and m.n_classes_ == 3 and m.tolerance == 0.1
    info = json.loads((run_dir / "model.json").read_text())
    assert m.metadata_["model_sha256"] == info["sha256"]
    capsys.readouterr()

    js = tmp_path / "ev.json"
    rc = main(["monitor", "evaluate", "--model", str(run_dir), "--monitor", str(out_file),
               "--novel-classes", "5-6", "--json", str(js)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "novelty detection" in out and "acceptance of correct predictions" in out
    metrics = json.loads(js.read_text())
    assert metrics["known_classes"] == [0, 1, 2] and metrics["novel_classes"] == [5, 6]
    assert metrics["n_known"] == 300 and metrics["n_novel"] == 200
    assert 0 <= metrics["acceptance_rate"] <= 1 and 0 <= metrics["novelty_detection_rate"] <= 1

    assert main(["monitor", "info", str(out_file)]) == 0
    assert "fc2" in capsys.readouterr().out


def test_monitor_fit_default_layer_and_out(run_dir, capsys):
    assert main(["monitor", "fit", "--model", str(run_dir), "--threshold", "0.07"]) == 0
    assert (run_dir / "monitor.npz").is_file()
    from boxhack.monitor import BoxMonitor

    m = BoxMonitor.load(run_dir / "monitor.npz")
    assert m.layers_ == ["relu2"] and m.n_clusters is None


def test_monitor_fit_shows_progress_unless_quiet(run_dir, tmp_path, capsys):
    """The forward pass over the training inputs shows a bar on stderr; -q silences it and the
    fitted file is the same."""
    args = ["monitor", "fit", "--model", str(run_dir), "--layer", "relu2", "--clusters", "1"]
    assert main([*args, "--out", str(tmp_path / "a.npz")]) == 0
    assert "forward pass" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b.npz"), "-q"]) == 0
    assert "forward pass" not in capsys.readouterr().err
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_monitor_cli_errors(run_dir, tmp_path, capsys):
    assert main(["monitor", "fit", "--model", str(run_dir), "--layer", "nope",
                 "--out", str(tmp_path / "x.npz")]) == 2
    assert "unknown layer 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    assert main(["monitor", "evaluate", "--model", str(run_dir), "--monitor", str(bad)]) == 2
    assert "cannot read monitor file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["monitor", "fit", "--model", str(run_dir), "--tolerance", "-1",
              "--out", str(tmp_path / "y.npz")])
    assert exc.value.code == 2
    assert "argument --tolerance: must be >= 0, got -1" in capsys.readouterr().err
    assert main(["monitor", "evaluate", "--model", str(run_dir), "--monitor",
                 str(tmp_path / "missing.npz")]) == 2
    good = tmp_path / "good.npz"
    assert main(["monitor", "fit", "--model", str(run_dir), "--clusters", "1", "--out", str(good)]) == 0
    assert main(["monitor", "evaluate", "--model", str(run_dir), "--monitor", str(good),
                 "--novel-classes", "1-3"]) == 2
    assert "knows" in capsys.readouterr().err
    np.testing.assert_equal(good.is_file(), True)
