import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from boxhack.cli import main
from boxhack.errors import BoxhackError


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("data", "train", "monitor", "attack", "verify"):
        assert cmd in out


@pytest.mark.parametrize(
    "argv", [["data", "--help"], ["data", "info", "--help"], ["train", "--help"],
             ["verify", "--help"], ["attack", "gradient", "--help"],
             ["attack", "adversarial", "--help"], ["attack", "optimise", "--help"],
             ["monitor", "fit", "--help"]]
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
        capture_output=True, text=True, check=False,
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


# ------------------------------------------------------------------ model + monitor + attacks
@pytest.fixture(scope="module")
def xor_setup(tmp_path_factory):
    """Two XOR networks (seeds 0 and 1) saved as model directories, a monitor of the first
    fitted with `boxhack monitor fit`, and a hash-less monitor of the wrong width."""
    import torch

    from boxhack.data import load_dataset
    from boxhack.models.io import save_model
    from boxhack.models.train import train_model
    from boxhack.monitor import BoxMonitor

    root = tmp_path_factory.mktemp("cli-xor")
    ds = load_dataset("xor")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model_a, info_a = train_model("xor-mlp", ds, epochs=15, seed=0)
        model_b, info_b = train_model("xor-mlp", ds, epochs=15, seed=1)
    finally:
        torch.set_num_threads(threads)
    a, b = save_model(model_a, root / "a", info_a), save_model(model_b, root / "b", info_b)
    monitor = root / "a.npz"
    assert main(["monitor", "fit", "--model", str(a), "--clusters", "2", "--out", str(monitor)]) == 0
    rng = np.random.default_rng(0)
    wrong = BoxMonitor(n_clusters=1, n_classes=2).fit_features(
        {"relu2": rng.random((40, 16)).astype(np.float32)}, np.arange(40) % 2)
    wrong.save(root / "wrong.npz")
    return {"root": root, "a": a, "b": b, "monitor": monitor, "wrong": root / "wrong.npz",
            "dataset": ds}


def _attack_argv(cmd, model, monitor, *extra):
    base = ["attack", cmd, "--model", str(model), "--monitor", str(monitor)]
    if cmd == "optimise":
        base += ["--time-limit", "30"]
    if cmd == "adversarial":
        base += ["--method", "deepfool-l2", "--eps", "none"]
    return base + list(extra)


COMMANDS = ["gradient", "adversarial", "optimise"]


@pytest.mark.parametrize("cmd", COMMANDS + ["monitor-evaluate"])
def test_a_monitor_of_another_model_is_refused_by_every_command(xor_setup, cmd, capsys):
    s = xor_setup
    if cmd == "monitor-evaluate":
        argv = ["monitor", "evaluate", "--model", str(s["b"]), "--monitor", str(s["monitor"])]
    else:
        argv = _attack_argv(cmd, s["b"], s["monitor"], "--n", "2")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "does not fit model" in err and "weights sha256" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("cmd", COMMANDS)
def test_a_hashless_monitor_of_the_wrong_width_is_refused(xor_setup, cmd, capsys):
    assert main(_attack_argv(cmd, xor_setup["a"], xor_setup["wrong"], "--n", "2")) == 2
    assert "layer 'relu2' has width 8 in the model, 16 in the monitor" in capsys.readouterr().err


def _save_modes():
    return {"gradient": [], "adversarial": [], "optimise": ["--attack", "1"]}


@pytest.mark.parametrize("cmd", COMMANDS)
def test_save_writes_the_exact_inputs_and_verify_rechecks_them(xor_setup, cmd, tmp_path, capsys):
    from boxhack.attacks.records import load_attack
    from boxhack.infra.arrays import decode_array

    s = xor_setup
    saved = tmp_path / "sub" / "found.npz"
    out = tmp_path / "rows.out"
    argv = _attack_argv(cmd, s["a"], s["monitor"], "--n", "4", "--save", str(saved), "--out",
                        str(out), *_save_modes()[cmd])
    assert main(argv) == 0
    text = capsys.readouterr().out
    record = load_attack(saved)
    n_success = int(np.sum(record["success"]))
    assert f"{n_success}/" in text and "verified attacks on attacked inputs" in text
    assert n_success >= 1
    x = decode_array(record["x"])
    assert x.dtype == np.float32 and x.shape == (4, 2)
    info = json.loads((s["a"] / "model.json").read_text())
    assert record["model"]["sha256"] == info["sha256"]
    assert record["monitor"]["path"] == str(s["monitor"].resolve())  # outside: absolute
    rows = [json.loads(line) for line in out.read_text().splitlines()]  # --out: JSONL, all three
    assert len(rows) == 4 and all("index" in r and "success" in r for r in rows)
    assert main(["verify", str(saved)]) == 0
    assert f"{n_success} stored successes re-checked: {n_success} hold" in capsys.readouterr().out


def test_a_tampered_save_file_fails_verify(xor_setup, tmp_path, capsys):
    s = xor_setup
    saved = tmp_path / "g.npz"
    assert main(_attack_argv("gradient", s["a"], s["monitor"], "--n", "4", "--save",
                             str(saved))) == 0
    capsys.readouterr()
    with np.load(saved, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    i = int(np.flatnonzero(arrays["success"])[0])
    j = int(np.flatnonzero(arrays["x"][i])[0])
    arrays["x"][i].view(np.uint32)[j] ^= np.uint32(1 << 31)  # flip one bit: the sign
    with open(saved, "wb") as fh:
        np.savez(fh, **arrays)
    assert main(["verify", str(saved)]) == 1
    out = capsys.readouterr().out
    assert f"FAILS: g.npz sample {i}" in out


def _indices(argv, tmp_path, name):
    out = tmp_path / name
    assert main([*argv, "--out", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_n_takes_a_seeded_class_balanced_sample_of_eligible_inputs(xor_setup, tmp_path, capsys):
    from boxhack.models.io import load_model
    from boxhack.monitor import BoxMonitor

    s = xor_setup
    ds = s["dataset"]
    base = _attack_argv("gradient", s["a"], s["monitor"], "--n", "6", "--steps", "5")
    rows = _indices([*base, "--seed", "0"], tmp_path, "s0.jsonl")
    again = _indices([*base, "--seed", "0"], tmp_path, "s0b.jsonl")
    other = _indices([*base, "--seed", "1"], tmp_path, "s1.jsonl")
    idx = [r["index"] for r in rows]
    assert idx == [r["index"] for r in again] != [r["index"] for r in other]
    assert sorted(np.bincount(ds.y_test[idx], minlength=2).tolist()) == [3, 3]
    # Attack 1 starts only from correctly classified, accepted inputs
    assert all(r["accepted0"] and r["pred0"] == r["label"] and r["eligible"] for r in rows)
    # Attack 2 only from rejected ones
    intr = _indices([*_attack_argv("gradient", s["a"], s["monitor"], "--goal", "intrude-any",
                                   "--n", "4", "--steps", "5")], tmp_path, "i.jsonl")
    assert all(not r["accepted0"] for r in intr)
    model, _ = load_model(s["a"])
    _, acc = BoxMonitor.load(s["monitor"]).predict(model, ds.x_test[[r["index"] for r in intr]])
    assert not acc.any()
    capsys.readouterr()


def test_inputs_already_meeting_the_goal_are_reported_apart(xor_setup, capsys):
    from boxhack.models.io import load_model
    from boxhack.monitor import BoxMonitor

    s = xor_setup
    ds = s["dataset"]
    model, _ = load_model(s["a"])
    pred, acc = BoxMonitor.load(s["monitor"]).predict(model, ds.x_test)
    rejected = int(np.flatnonzero(~acc)[0])
    good = int(np.flatnonzero(acc & (pred == ds.y_test))[0])
    argv = _attack_argv("gradient", s["a"], s["monitor"], "--index", str(rejected), "--index",
                        str(good))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "/1 verified attacks on attacked inputs" in out
    assert "not attacked: 1 already rejected" in out
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n"] == 2 and doc["attacked"] == 1 and doc["already"] == 1
    assert doc["success"] <= 1


# ------------------------------------------------------------------ one-line errors, exit 2
BAD_OPTIONS = [
    ["train", "--net", "xor-mlp", "--out", "x", "--lr", "nan"],
    ["train", "--net", "xor-mlp", "--out", "x", "--lr", "inf"],
    ["train", "--net", "xor-mlp", "--out", "x", "--lr", "-0.1"],
    ["train", "--net", "xor-mlp", "--out", "x", "--lr", "0"],
    ["train", "--net", "xor-mlp", "--out", "x", "--epochs", "0"],
    ["train", "--net", "xor-mlp", "--out", "x", "--epochs", "2.5"],
    ["train", "--net", "xor-mlp", "--out", "x", "--batch-size", "-4"],
    ["train", "--net", "xor-mlp", "--out", "x", "--seed", "-1"],
    ["data", "info", "mnist", "--split-seed", "-1"],
    ["monitor", "fit", "--model", "m", "--tolerance", "nan"],
    ["monitor", "fit", "--model", "m", "--tolerance", "-inf"],
    ["monitor", "fit", "--model", "m", "--threshold", "1.5"],
    ["monitor", "fit", "--model", "m", "--clusters", "0"],
    ["monitor", "fit", "--model", "m", "--max-clusters", "-1"],
    ["monitor", "evaluate", "--model", "m", "--monitor", "x", "--batch-size", "0"],
    ["attack", "gradient", "--model", "m", "--monitor", "x", "--eps", "nan"],
    ["attack", "gradient", "--model", "m", "--monitor", "x", "--n", "0"],
    ["attack", "gradient", "--model", "m", "--monitor", "x", "--steps", "-3"],
    ["attack", "gradient", "--model", "m", "--monitor", "x", "--index", "-1"],
    ["attack", "adversarial", "--model", "m", "--monitor", "x", "--n", "-5"],
    ["attack", "adversarial", "--model", "m", "--monitor", "x", "--restarts", "0"],
    ["attack", "optimise", "--model", "m", "--monitor", "x", "--n", "0"],
    ["attack", "optimise", "--model", "m", "--monitor", "x", "--seed", "nan"],
    ["experiment", "gradient", "--out", "x", "--n", "0"],
    ["experiment", "adversarial", "--out", "x", "--jobs", "0"],
    ["experiment", "combined", "--out", "x", "--eps", "nan"],
]


@pytest.mark.parametrize("argv", BAD_OPTIONS, ids=lambda a: " ".join(a[:2] + a[-2:]))
def test_bad_numeric_options_are_one_line_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"argument {argv[-2]}" in err, err


def test_lr_nan_from_the_shell_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "boxhack", "train", "--net", "xor-mlp", "--lr",
                           "nan", "--out", "x"], capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("boxhack train: error: argument --lr: expected a finite "
                                   "number, got 'nan' (see `boxhack train --help`)")


def test_output_paths_that_cannot_be_written(xor_setup, tmp_path, capsys):
    s = xor_setup
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cases = [
        (["train", "--net", "xor-mlp", "-q", "--out", str(blocker)], "is a file"),
        (["train", "--net", "xor-mlp", "-q", "--out", str(blocker / "sub")], "cannot create"),
        (["monitor", "fit", "--model", str(s["a"]), "--out", str(blocker / "m.npz")], "is a file"),
        (["monitor", "fit", "--model", str(s["a"]), "--out", str(tmp_path)], "is a directory"),
        (_attack_argv("gradient", s["a"], s["monitor"], "--save", str(blocker / "x.npz")),
         "is a file"),
        (_attack_argv("adversarial", s["a"], s["monitor"], "--save", str(tmp_path)),
         "is a directory"),
        (_attack_argv("optimise", s["a"], s["monitor"], "--out", str(blocker / "o.json")),
         "is a file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)


def test_read_only_output_folders(xor_setup, tmp_path, capsys, monkeypatch):
    """A folder the user may not write to: refused before any work, in one line. (As root
    permissions do not apply, so the check's own probe is made to fail as it would.)"""
    from boxhack.infra import files

    s = xor_setup
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    if os.geteuid() == 0:
        real = files.os.access
        monkeypatch.setattr(files.os, "access",
                            lambda p, mode: False if str(p) == str(ro) else real(p, mode))
    try:
        for argv in (["train", "--net", "xor-mlp", "-q", "--out", str(ro)],
                     ["monitor", "fit", "--model", str(s["a"]), "--out", str(ro / "m.npz")],
                     _attack_argv("gradient", s["a"], s["monitor"], "--save", str(ro / "x.npz"))):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip()
            assert "not writable" in err and len(err.splitlines()) == 1, err
    finally:
        os.chmod(ro, 0o755)


def test_verify_bad_input(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"junk")
    assert main(["verify", str(junk)]) == 2
    assert "cannot read saved attack" in capsys.readouterr().err
    with pytest.raises(BoxhackError):
        from boxhack.experiments.recheck import verify_path

        verify_path(tmp_path)


# ------------------------------------------------------------------ one spelling per option
def _parse(argv):
    from boxhack.cli import build_parser

    return build_parser().parse_args(argv)


def test_the_clis_copies_of_library_names_agree_with_the_library():
    """The CLI keeps a few names of the library so that --help does not import torch."""
    from boxhack.attacks import adversarial, base, optimisation
    from boxhack.cli import attack, common, train
    from boxhack.models.zoo import NETWORKS

    assert common.GOALS == base.GOALS and common.PAPER_ALIASES == base.PAPER_ALIASES
    assert {k: spec.description for k, (spec, _) in NETWORKS.items()} == train.NETWORKS
    assert attack.SOLVERS == optimisation.SOLVERS and attack.ENCODINGS == optimisation.ENCODINGS
    for name in attack.FOOLBOX_ATTACKS:
        adversarial.get_spec(name)


def test_help_does_not_import_torch():
    code = ("import sys\nfrom boxhack.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules, 'scipy' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "False False"


TARGET_COMMANDS = [["attack", "gradient"], ["attack", "adversarial"], ["attack", "optimise"],
                   ["monitor", "evaluate"]]


@pytest.mark.parametrize("cmd", TARGET_COMMANDS, ids=" ".join)
def test_every_target_command_takes_the_same_target_options(cmd):
    args = _parse([*cmd, "--model", "m", "--weights", "w", "--monitor", "x", "--data", "mnist",
                   "--classes", "0-2", "--data-dir", "d", "--split-seed", "3"])
    assert (args.model, args.weights, args.monitor, args.data, args.classes, args.data_dir,
            args.split_seed) == ("m", "w", "x", "mnist", "0-2", "d", 3)


@pytest.mark.parametrize("cmd", [["attack", "gradient"], ["attack", "optimise"]], ids=" ".join)
def test_goal_and_the_papers_attack_numbers_are_one_option(cmd):
    base = [*cmd, "--model", "m", "--monitor", "x"]
    assert _parse(base).goal == "dos"
    for alias, goal in (("1", "dos"), ("2", "intrude"), ("2-any", "intrude-any")):
        assert _parse([*base, "--attack", alias]).goal == goal
        assert _parse([*base, "--goal", alias]).goal == goal
        assert _parse([*base, "--goal", goal]).goal == goal


def test_old_spellings_stay_as_hidden_aliases():
    adv = ["attack", "adversarial", "--model", "m", "--monitor", "x"]
    args = _parse([*adv, "--method", "pgd-linf", "--criterion", "combined"])
    assert (args.method, args.goal) == ("pgd-linf", "combined")
    args = _parse([*adv, "--method", "pgd-linf", "--goal", "combined"])
    assert (args.method, args.goal) == ("pgd-linf", "combined")
    grad = ["attack", "gradient", "--model", "m", "--monitor", "x"]
    assert _parse(grad).method == "gradient"
    assert _parse([*grad, "--orthogonal"]).method == _parse([*grad, "--method", "orthogonal"]).method
    assert _parse(["monitor", "fit", "--model", "m", "--dataset", "xor"]).data == "xor"
    from boxhack.cli.experiment import experiment_parser

    exp = experiment_parser("gradient")
    assert exp.parse_args(["--out", "x", "--no-progress"]).quiet
    assert exp.parse_args(["--out", "x", "-q"]).quiet
    assert not exp.parse_args(["--out", "x"]).quiet
    assert _parse(["train", "--net", "xor-mlp", "--out", "o", "--quiet"]).quiet


def test_lists_are_comma_separated_or_repeated():
    grad = ["attack", "gradient", "--model", "m", "--monitor", "x"]
    assert _parse([*grad, "--index", "3,5", "--index", "7"]).index == [3, 5, 7]
    fit = _parse(["monitor", "fit", "--model", "m", "--layer", "fc2,relu2", "--layer", "fc1"])
    assert fit.layer == ["fc2", "relu2", "fc1"]
    adv = _parse(["attack", "adversarial", "--model", "m", "--monitor", "x", "--param",
                  "steps=100,stepsize=0.01", "--param", "abort_early=false"])
    assert adv.param == [("steps", 100), ("stepsize", 0.01), ("abort_early", False)]
    assert _parse([*grad, "--norm", "Linf"]).norm == "linf"


@pytest.mark.parametrize("argv", [
    ["attack", "gradient", "--model", "m", "--monitor", "x", "--goal", "misclassify"],
    ["attack", "optimise", "--model", "m", "--monitor", "x", "--attack", "3"],
    ["attack", "adversarial", "--model", "m", "--monitor", "x", "--goal", "dos"],
    ["attack", "gradient", "--model", "m", "--monitor", "x", "--index", "1,,x"],
], ids=lambda a: " ".join(a[:2] + a[-2:]))
def test_bad_goals_and_lists_are_one_line_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"argument {argv[-2]}" in err, err


# ------------------------------------------------------------------ a model that is not a directory
@pytest.fixture(scope="module")
def scripted_xor(xor_setup):
    """The first XOR network saved as a TorchScript file, so it records no data set."""
    import torch

    from boxhack.models.io import load_model

    model, _ = load_model(xor_setup["a"])
    path = xor_setup["root"] / "xor.pt"
    with warnings.catch_warnings():  # torch deprecates TorchScript; boxhack still reads it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    return path


def test_a_user_model_is_attacked_with_data(xor_setup, scripted_xor, tmp_path, capsys):
    monitor = tmp_path / "m.npz"
    fit = ["monitor", "fit", "--model", str(scripted_xor), "--layer", "relu2", "--clusters", "2",
           "--out", str(monitor)]
    assert main(fit) == 2  # a TorchScript file records no data set
    assert "does not record its data set; pass --data" in capsys.readouterr().err
    assert main([*fit, "--data", "xor"]) == 0
    capsys.readouterr()
    argv = ["attack", "gradient", "--model", str(scripted_xor), "--monitor", str(monitor),
            "--n", "4", "--steps", "5"]
    assert main([*argv, "--data", "xor", "--json"]) == 0
    named = json.loads(capsys.readouterr().out)
    assert main([*argv, "--json"]) == 0  # the data set the monitor recorded
    assert json.loads(capsys.readouterr().out) | {"wall_s": 0, "samples_per_s": 0} == \
        named | {"wall_s": 0, "samples_per_s": 0}
    assert named["n"] == 4
    # --save works for a model that is not a boxhack directory (issue 12): the record names
    # the TorchScript file and its state hash, and `boxhack verify` loads it again
    assert main([*argv, "--data", "xor", "--save", str(tmp_path / "s.npz")]) == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "s.npz")]) == 0
    assert "hold" in capsys.readouterr().out
    assert main(["monitor", "evaluate", "--model", str(scripted_xor), "--monitor",
                 str(monitor), "--json"]) == 0  # the data set the monitor recorded
    assert json.loads(capsys.readouterr().out)["dataset"] == "xor"


def test_data_of_other_classes_is_refused(xor_setup, capsys):
    s = xor_setup
    argv = ["attack", "gradient", "--model", str(s["a"]), "--monitor", str(s["monitor"]),
            "--data", "mnist", "--classes", "0-1", "--n", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "does not run on inputs of shape (1, 28, 28)" in err and len(err.splitlines()) == 1
