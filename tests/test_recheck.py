"""boxhack verify (experiments.recheck.verify_path): stored attack successes re-checked with the
exact model and monitor. The run directories here are built by the test itself: a real attack
on the XOR network, records from attack_record, rows written with boxhack.infra.jsonl."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch

from boxhack.attacks.gradient import MonitorAttack
from boxhack.attacks.records import attack_record, file_ref, norm_of
from boxhack.cli import main
from boxhack.data import load_dataset
from boxhack.errors import BoxhackError
from boxhack.experiments.recheck import verify_path
from boxhack.infra.arrays import decode_array, encode_array
from boxhack.infra.jsonl import append_row
from boxhack.models.io import load_model, save_model
from boxhack.models.train import train_model
from boxhack.monitor import BoxMonitor


@pytest.fixture(scope="module")
def trained():
    """Two XOR networks (seeds 0 and 1) and the data."""
    ds = load_dataset("xor")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = train_model("xor-mlp", ds, epochs=15, seed=0)
        b = train_model("xor-mlp", ds, epochs=15, seed=1)
    finally:
        torch.set_num_threads(threads)
    return ds, a, b


def _write_model(root, name, model_info):
    model, info = model_info
    directory = save_model(model, root / "models" / "models" / name, info)
    return load_model(directory)


def _write_monitor(root, name, model, info, ds, **kw):
    path = root / "models" / "monitors" / f"{name}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    m = BoxMonitor(n_clusters=2, **kw).fit(model, "relu2", ds.x_train, ds.y_train,
                                           model_sha256=info["sha256"])
    m.save(path)
    return path, BoxMonitor.load(path)


def _attack(model, monitor, ds, goal="dos", n=8, **kw):
    pred, acc = monitor.predict(model, ds.x_test)
    ok = (pred == ds.y_test) & acc if goal == "dos" else ~acc
    idx = np.flatnonzero(ok)[:n]
    return MonitorAttack(goal=goal, norm="l2", steps=60, seed=0, **kw)(
        model, monitor, ds.x_test[idx], labels=ds.y_test[idx])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, trained):
    """A run directory with two experiments (built once); returns a dict of what is in it."""
    ds, a, _ = trained
    root = tmp_path_factory.mktemp("pristine") / "run"
    model, info = _write_model(root, "xor", a)
    mon_path, monitor = _write_monitor(root, "xor-k2", model, info, ds)
    refs = {"model": file_ref(root / "models" / "models" / "xor", base=root, sha256=info["sha256"]),
            "monitor": file_ref(mon_path, base=root)}
    dos = _attack(model, monitor, ds, "dos")
    intrude = _attack(model, monitor, ds, "intrude-any", n=6)
    budget = _attack(model, monitor, ds, "dos", n=5, mode="budget", epsilon=0.3)
    assert dos.success.sum() >= 3 and intrude.success.sum() >= 1 and budget.success.sum() >= 1
    rec_dos = attack_record(dos, **refs)
    rec_int = attack_record(intrude, **refs)
    rec_budget = attack_record(budget, **refs, budget={"norm": "l2", "eps": 0.3})
    exp1, exp2 = root / "solvers", root / "gradient"
    exp1.mkdir()
    exp2.mkdir()
    stale = dict(rec_dos, x=rec_dos["x0"])  # an older row of the same key: not counted
    append_row(exp1 / "rows.jsonl", {"key": "a", "result": {"attacks": [stale]}})
    append_row(exp1 / "rows.jsonl", {"key": "a", "result": {"attacks": [rec_dos]}})
    append_row(exp1 / "rows.jsonl", {"key": "b", "result": {"attacks": [rec_int]}})
    append_row(exp1 / "rows.jsonl", {"key": "c", "result": {"n": 3}})  # no stored attacks
    append_row(exp2 / "rows.jsonl", {"key": "z", "result": {"attacks": [rec_budget]}})
    return {"root": root, "dos": dos, "intrude": intrude, "budget": budget,
            "records": (rec_dos, rec_int, rec_budget), "model": model, "info": info}


@pytest.fixture
def run(tmp_path, pristine):
    """A fresh copy of the pristine run for each test (tests edit it)."""
    root = tmp_path / "run"
    shutil.copytree(pristine["root"], root)
    return {**pristine, "root": root}


def test_every_stored_success_of_a_run_holds(run):
    s = verify_path(run["root"])
    claimed = [int(r.success.sum()) for r in (run["dos"], run["intrude"], run["budget"])]
    assert s.kind == "run" and s.records == 3 and s.claimed == sum(claimed) == s.hold and s.ok
    assert s.experiments == {
        "gradient": {"records": 1, "samples": 5, "claimed": claimed[2], "hold": claimed[2]},
        "solvers": {"records": 2, "samples": 14, "claimed": claimed[0] + claimed[1],
                    "hold": claimed[0] + claimed[1]},
    }  # fmt: skip
    assert not s.failures
    # an experiment directory on its own, and a copy of the run elsewhere (relative paths)
    assert verify_path(run["root"] / "gradient").claimed == claimed[2]
    moved = run["root"].parent / "moved"
    shutil.copytree(run["root"], moved)
    assert verify_path(moved).ok


def _rewrite_rows(path, edit):
    from boxhack.infra.jsonl import read_rows

    rows = read_rows(path)
    path.unlink()
    for row in rows:
        append_row(path, edit(row))


def _flip_sign_bit(record, sample):
    x = decode_array(record["x"])
    flat = x.reshape(len(x), -1)
    j = int(np.flatnonzero(flat[sample])[0])  # a nonzero coordinate
    bits = flat[sample].view(np.uint32)
    bits[j] ^= np.uint32(1 << 31)  # one bit: the sign
    return dict(record, x=encode_array(x))


def test_one_flipped_bit_in_a_stored_input_is_caught(run, capsys):
    dos = run["dos"]
    sample = int(np.flatnonzero(dos.success)[0])

    def edit(row):
        if row["key"] == "a" and row["result"]["attacks"][0]["x"] != row["result"]["attacks"][0]["x0"]:
            row["result"]["attacks"][0] = _flip_sign_bit(row["result"]["attacks"][0], sample)
        return row

    _rewrite_rows(run["root"] / "solvers" / "rows.jsonl", edit)
    s = verify_path(run["root"])
    assert not s.ok and s.hold == s.claimed - 1
    assert s.failures == [{"experiment": "solvers", "key": "a", "record": 0, "sample": sample,
                           "goal": "dos", "pred0": int(dos.pred0[sample]),
                           "pred": int(dos.pred0[sample]), "accepted": True,
                           "within_budget": True}]  # fmt: skip
    assert main(["verify", str(run["root"])]) == 1
    out = capsys.readouterr().out
    assert f"{s.claimed} stored successes re-checked: {s.hold} hold" in out
    assert f"FAILS: solvers row 'a' record 0 sample {sample}" in out


def test_a_stored_input_that_no_longer_meets_its_goal_fails(run):
    def edit(row):
        if row["key"] == "b":
            rec = row["result"]["attacks"][0]
            row["result"]["attacks"][0] = dict(rec, x=rec["x0"])  # the unattacked start
        return row

    _rewrite_rows(run["root"] / "solvers" / "rows.jsonl", edit)
    s = verify_path(run["root"])
    assert s.claimed - s.hold == int(run["intrude"].success.sum()) > 0
    assert {f["key"] for f in s.failures} == {"b"}


def test_a_budget_is_checked_exactly(run):
    rec = run["records"][2]
    norms = norm_of(decode_array(rec["x0"]), decode_array(rec["x"]), "l2")
    worst = float(norms[np.asarray(rec["success"])].max())
    path = run["root"] / "gradient" / "rows.jsonl"

    def set_eps(eps):
        _rewrite_rows(path, lambda row: {**row, "result": {"attacks": [
            dict(rec, budget={"norm": "l2", "eps": eps})]}})  # fmt: skip
        return verify_path(run["root"] / "gradient")

    assert set_eps(worst).ok  # exactly at the budget: inclusive
    s = set_eps(float(np.nextafter(worst, 0)))  # one float64 step below the largest norm
    assert not s.ok and any(not f["within_budget"] for f in s.failures)


def test_a_changed_model_is_a_clear_error(run, trained):
    b = trained[2]
    _write_model(run["root"], "xor", b)  # another network saved over the referenced one
    with pytest.raises(BoxhackError, match="model .* has weights sha256 .* the model changed"):
        verify_path(run["root"])
    assert main(["verify", str(run["root"])]) == 2


def test_a_changed_monitor_file_is_a_clear_error(run, trained):
    ds = trained[0]
    _write_monitor(run["root"], "xor-k2", run["model"], run["info"], ds, tolerance=0.5)
    with pytest.raises(BoxhackError, match="monitor .* has sha256 .* changed since"):
        verify_path(run["root"])


def test_missing_files_are_clear_errors(run):
    shutil.rmtree(run["root"] / "models" / "models" / "xor")
    with pytest.raises(BoxhackError, match="model directory .* is missing"):
        verify_path(run["root"])
    with pytest.raises(BoxhackError, match="not found"):
        verify_path(run["root"] / "nothing")


def test_a_record_naming_a_monitor_of_another_model_is_refused(run, trained):
    ds, _, b = trained
    other_model, other_info = _write_model(run["root"], "xor-b", b)
    mon_b, _ = _write_monitor(run["root"], "xor-b", other_model, other_info, ds)
    rec = dict(run["records"][0], monitor=file_ref(mon_b, base=run["root"]))
    exp = run["root"] / "mixed"
    exp.mkdir()
    append_row(exp / "rows.jsonl", {"key": "m", "result": {"attacks": [rec]}})
    with pytest.raises(BoxhackError, match="does not fit"):
        verify_path(exp)


def test_bad_records_and_runs_without_records(tmp_path, run):
    empty = tmp_path / "empty"
    (empty / "exp").mkdir(parents=True)
    append_row(empty / "exp" / "rows.jsonl", {"key": "k", "result": {"n": 1}})
    with pytest.raises(BoxhackError, match="no row .* stores attack records"):
        verify_path(empty)
    (tmp_path / "plain").mkdir()
    with pytest.raises(BoxhackError, match="holds no <experiment>/rows.jsonl"):
        verify_path(tmp_path / "plain")
    bad = tmp_path / "bad"
    (bad / "exp").mkdir(parents=True)
    rec = dict(run["records"][0], success=[True])  # 1 flag for 8 inputs
    append_row(bad / "exp" / "rows.jsonl", {"key": "k", "result": {"attacks": [rec]}})
    shutil.copytree(run["root"] / "models", bad / "models")
    with pytest.raises(BoxhackError, match="row 'k', record 0: stored attack has 8 inputs"):
        verify_path(bad)
    append_row(bad / "exp" / "rows.jsonl", {"key": "k", "result": {"attacks": "nope"}})
    with pytest.raises(BoxhackError, match="not a list"):
        verify_path(bad)


def test_nothing_named_by_the_run_is_imported(run):
    """Directory and file names are read as text: a dotted directory and a module file are
    never imported."""
    root = run["root"]
    (root / "this.zen").mkdir()
    append_row(root / "this.zen" / "rows.jsonl", {"key": "k", "result": {"n": 0}})
    (root / "evil_module_h4.py").write_text("raise SystemExit('imported!')\n")
    sys.modules.pop("this", None)
    assert verify_path(root).ok
    assert "this" not in sys.modules and "evil_module_h4" not in sys.modules
