import json
import subprocess
import sys

import pytest

from boxhack.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("data", "train"):
        assert cmd in out


@pytest.mark.parametrize(
    "argv", [["data", "--help"], ["data", "info", "--help"], ["train", "--help"]]
)
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_data_info_json(capsys):
    assert main(["data", "info", "mnist", "--classes", "0-2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train_per_class"] == [400, 400, 400] and info["input_shape"] == [1, 28, 28]


def test_train_and_reload(tmp_path, capsys):
    out = tmp_path / "xor"
    assert main(["train", "--net", "xor-mlp", "--epochs", "30", "--out", str(out), "-q"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    meta = json.loads((out / "model.json").read_text())
    assert meta["architecture"] == "xor-mlp" and meta["test_accuracy"] > 0.9


def test_bad_input_one_line_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "boxhack", "data", "info", "mnist", "--classes", "eleven"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("boxhack: error: unknown class 'eleven'")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bad_data_dir(capsys, tmp_path):
    assert main(["data", "info", "mnist", "--data-dir", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unknown_network_is_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--net", "vgg", "--out", "x"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
