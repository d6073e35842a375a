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
                           "goal": "dos", "check": s.failures[0]["check"],
                           "reason": s.failures[0]["reason"], "pred0": int(dos.pred0[sample]),
                           "pred": None, "accepted": None, "within_budget": True}]  # fmt: skip
    # the sign bit made a pixel negative: outside [0, 1], and that is what is said
    assert s.failures[0]["check"] == "bounds"
    assert s.failures[0]["reason"].startswith("outside the input bounds [0, 1] at pixel ")
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
    assert [f["check"] for f in s.failures] == ["budget"]
    assert s.failures[0]["reason"] == (f"over the budget: l2 norm {worst!r} > eps "
                                       f"{float(np.nextafter(worst, 0))!r}")


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


@pytest.mark.parametrize(("value", "text"), [
    (np.nextafter(np.float32(1), np.float32(2)), "1.0000001"), (np.float32(-0.5), "-0.5")])
def test_an_input_outside_the_bounds_says_so_not_the_verdict_of_another_input(run, capsys,
                                                                               value, text):
    """A stored pixel at 1.0000001 or -0.5 on a [0, 1] model fails on its bounds, and the
    message names the pixel and its value, not the clipped or original input's verdict."""
    rec = run["records"][0]
    sample = int(np.flatnonzero(rec["success"])[0])
    x = decode_array(rec["x"])
    x.reshape(len(x), -1)[sample, 1] = value
    exp = run["root"] / "bounds"
    exp.mkdir()
    append_row(exp / "rows.jsonl", {"key": "k", "result": {"attacks": [
        dict(rec, x=encode_array(x))]}})  # fmt: skip
    s = verify_path(exp)
    reason = f"outside the input bounds [0, 1] at pixel 1 (value {text})"
    assert [(f["sample"], f["check"], f["reason"]) for f in s.failures] == [
        (sample, "bounds", reason)]
    assert s.failures[0]["pred"] is None and s.failures[0]["accepted"] is None
    assert main(["verify", str(exp)]) == 1
    out = capsys.readouterr().out
    assert f"sample {sample}: goal dos: {reason}" in out


def test_failure_reasons_come_in_order_bounds_budget_eligibility_prediction_monitor():
    from boxhack.attacks.records import failure_reason
    from boxhack.attacks.verify import AttackResult

    def result(goal="dos", x=0.5, pred=0, accepted=False, pred0=0, accepted0=True, label=0,
               target=None):
        one = lambda v, t=None: np.asarray([v], dtype=t)
        r = AttackResult(goal=goal, x0=np.full((1, 2), 0.5, np.float32),
                         x=np.asarray([[0.5, x]], np.float32), success=one(False, bool),
                         pred0=one(pred0), pred=one(pred), accepted0=one(accepted0, bool),
                         accepted=one(accepted, bool), l1=one(0.0), l2=one(0.0), linf=one(0.0),
                         labels=one(label), targets=None if target is None else one(target))
        from boxhack.attacks.verify import starting_state

        r.eligible, r.already = starting_state(goal, r.pred0, r.accepted0, r.labels, r.targets)
        return r

    bounds = (0.0, 1.0)
    budget = {"norm": "linf", "eps": 0.1}
    # every check fails at once: bounds is named
    worst = result(x=np.float32(1.5), pred=1, accepted=True, accepted0=False)
    assert failure_reason(worst, 0, bounds, budget)[0] == "bounds"
    assert failure_reason(result(x=np.nan), 0, bounds, None) == (
        "bounds", "not a finite number at pixel 1 (value nan)")
    over = result(x=0.9, pred=1, accepted=True, accepted0=False)
    assert failure_reason(over, 0, bounds, budget) == (
        "budget", f"over the budget: linf norm {float(np.float32(0.9)) - 0.5!r} > eps 0.1")
    assert failure_reason(over, 0, bounds, None)[0] == "eligibility"  # x0 already rejected
    wrong = result(pred=1, accepted=True, label=2)  # x0 misclassified: not eligible for dos
    assert failure_reason(wrong, 0, bounds, None) == ("eligibility", (
        "not eligible: goal dos starts from correctly classified inputs, the original is "
        "class 0 with label 2"))
    assert failure_reason(result(pred=1, accepted=True), 0, bounds, None) == (
        "prediction", "the model predicts class 1; goal dos needs the original's class 0")
    assert failure_reason(result(pred=0, accepted=True), 0, bounds, None) == (
        "monitor", "the monitor accepts it (class 0); goal dos needs a rejection")
    assert failure_reason(result(), 0, bounds, None) == ("", "")  # it meets the goal
    intr = result(goal="intrude-target", pred=1, accepted=False, accepted0=False, target=2)
    assert failure_reason(intr, 0, bounds, None) == (
        "prediction", "the model predicts class 1; goal intrude-target needs the target class 2")
    comb = result(goal="combined", pred=0, accepted=True, accepted0=True, label=1)
    assert failure_reason(comb, 0, bounds, None)[0] == "eligibility"  # misclassified, accepted
    comb = result(goal="combined", pred=0, accepted=False, accepted0=True, label=0)
    assert failure_reason(comb, 0, bounds, None) == (
        "prediction", ("the model predicts class 0; goal combined needs a class other than the "
                      "label 0"))


@pytest.fixture
def linked(run, trained):
    """An experiment whose row records every per-sample outcome of a DoS attack, as the
    gradient experiment does, and links its record (the successes) to them."""
    from boxhack.attacks.records import OUTCOMES

    # a DoS attack within a budget so small that it fails on some inputs
    monitor = BoxMonitor.load(run["root"] / "models" / "monitors" / "xor-k2.npz")
    dos = _attack(run["model"], monitor, trained[0], "dos", n=5, mode="budget", epsilon=0.1)
    assert 0 < dos.success.sum() < len(dos)
    refs = {k: run["records"][0][k] for k in ("model", "monitor")}
    rec = attack_record(dos, **refs, select=dos.success, outcomes={k: k for k in OUTCOMES},
                        budget={"norm": "l2", "eps": 0.1},
                        counts={"success": "n_success"})  # fmt: skip
    result = {k: getattr(dos, k).tolist() for k in OUTCOMES}
    result.update(n_success=int(dos.success.sum()), attacks=[rec])
    exp = run["root"] / "linked"
    exp.mkdir()
    append_row(exp / "rows.jsonl", {"key": "k", "result": result})
    return {**run, "exp": exp, "attack": dos}


def _edit_linked(linked, edit):
    _rewrite_rows(linked["exp"] / "rows.jsonl",
                  lambda row: {**row, "result": edit(dict(row["result"]))})


def test_recorded_outcomes_that_agree_pass(linked):
    s = verify_path(linked["exp"])
    assert s.ok and s.linked == 1 and s.disagreements == []


@pytest.mark.parametrize("what", ["pred", "accepted", "l2", "linf", "success-elsewhere", "count",
                                  "missing"])
def test_an_edited_recorded_outcome_is_caught(linked, capsys, what):
    """The summary and report are built from the rows' recorded outcomes: a row that says
    something the stored inputs do not is reported, and the exit status is non-zero."""
    dos = linked["attack"]
    stored = int(np.flatnonzero(dos.success)[0])
    failed = np.flatnonzero(~dos.success)

    def edit(res):
        if what == "pred":
            res["pred"][stored] = (res["pred"][stored] + 1) % 2
        elif what == "accepted":
            res["accepted"][stored] = not res["accepted"][stored]
        elif what in ("l2", "linf"):
            res[what][stored] = float(np.nextafter(res[what][stored], 0))  # one ulp
        elif what == "success-elsewhere":
            res["success"][int(failed[0])] = True  # a success whose input is not stored
        elif what == "count":
            res["n_success"] += 1
        else:
            del res["l1"]
        return res

    _edit_linked(linked, edit)
    s = verify_path(linked["exp"])
    assert not s.ok and s.hold == s.claimed  # every stored input still holds
    assert len(s.disagreements) == 1
    d = s.disagreements[0]
    field = {"success-elsewhere": "success", "count": "n_success", "missing": "l1"}.get(what, what)
    assert d["field"] == field and d["key"] == "k"
    assert main(["verify", str(linked["exp"])]) == 1
    assert f"DISAGREES: linked row 'k' record 0: {field}" in capsys.readouterr().out
