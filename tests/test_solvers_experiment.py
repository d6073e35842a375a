"""The solver experiment (paper figures 5-7): rows, summary, figures, resumption, CLI;
results decided by budgets (the same rows twice, and after a SIGKILL and resume), exact stored
attacks that re-check, the run-directory lock, honest generated text."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from boxhack.errors import BoxhackError
from boxhack.experiments import solvers
from boxhack.experiments.spec import Settings
from boxhack.infra.arrays import decode_array
from boxhack.infra.jsonl import read_rows
from boxhack.infra.rowdiff import TIMING_FIELDS, diff_files, diff_rows
from boxhack.report.solvers import compare_rates
from boxhack.workflow import run, summarise

SRC = Path(__file__).resolve().parents[1] / "src"
HANG = 600.0  # generous "did not hang" bound for a whole small campaign
FAST = {"mnist-slsqp-l1": {"solver_options": {"maxiter": 0}}}
SMALL = {"networks": ["xor", "mnist2"], "n": 1, "n_fig6": 1, "budgets": FAST}


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    return tmp_path_factory.mktemp("solver-models")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, models_root):
    """XOR and MNIST 0-1 with every solver, problem and encoding (1 starting point each, quick
    budgets) and one figure-6 digit: every figure is drawn. SLSQP's one L1 iteration on the raw
    pixels (seconds of CPU) is cut to none here: this checks the machinery, not the solver."""
    out = tmp_path_factory.mktemp("solver-run")
    summary = run("solvers", out, Settings(quick=True, n_jobs=2, progress=False), SMALL,
                  models_root=models_root)  # fmt: skip
    return out, summary


def _results(out) -> list[dict]:
    return [r["result"] for r in read_rows(Path(out) / solvers.NAME / "rows.jsonl")]


def test_quick_run_writes_rows_summary_and_figures(small_run):
    out, summary = small_run
    base = out / solvers.NAME
    rows = read_rows(base / "rows.jsonl")
    config = json.loads((base / "config.json").read_text())
    # 2 networks x 4 problems x 4 solvers x 2 encodings x 1 sample, plus 1 figure-6 digit
    assert len(rows) == len(config["keys"]) == 2 * 4 * 4 * 2 + 1
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["error"]]
    grid = [r["result"] for r in rows if r["result"]["part"] == "grid"]
    for r in grid:
        # every solve ended by itself or by its budget: no crash, no safety-net kill
        assert r["outcome"] in ("success", "failed"), (r["solver"], r["message"])
        assert r["success"] == (r["outcome"] == "success")
        assert r["nfev"] > 0
        # the budget that decided the solve is in the row, as configured for its class
        budget = config["budgets"][r["budget_class"]]
        assert r["budget"]["max_evals"] == budget["max_evals"]
        for key, value in budget["solver_options"].items():
            assert r["budget"]["solver"][key] == value
        assert r["safety_net_s"] == config["safety_net_s"][r["budget_class"]]
        assert len(decode_array(r["feat"])) == len(decode_array(r["feat0"])) > 0
        if r["success"]:
            assert r["l2"] > 0 and r["eligible"]
    # every row carries its attack exactly: XOR points and MNIST images
    shapes = {r["network"]: decode_array(r["attacks"][0]["x"]).shape for r in grid}
    assert shapes == {"xor": (1, 2), "mnist2": (1, 1, 28, 28)}
    # margin-encoded SLSQP solves the XOR problems; indicator-encoded SLSQP never does
    xor = [r for r in grid if r["network"] == "xor"]
    assert sum(r["success"] for r in xor if r["solver"] == "slsqp" and r["encoding"] == "margin") >= 3
    assert not any(r["success"] for r in xor if r["solver"] == "slsqp" and r["encoding"] == "indicator")

    saved = json.loads((base / "summary.json").read_text())
    assert saved["name"] == "solvers" and saved["title"] == solvers.TITLE
    for key in ("description", "config", "tables", "figures", "paper", "timing", "timeouts"):
        assert key in saved
    assert saved["timing"]["wall_s"] > 0 and saved["timing"]["jobs"] == len(rows)
    fig5 = saved["tables"][0]
    assert fig5["columns"] == ["network", "problem", "slsqp", "cobyla", "shgo", "de"]
    assert len(fig5["rows"]) == 2 * 4
    names = {f["path"] for f in saved["figures"]}
    assert {"fig5_success_rates.png", "fig6_digits.png", "solver_gallery.png"} <= names
    for f in saved["figures"]:
        assert (base / f["path"]).stat().st_size > 5000
    assert all(p["claim"] and p["measured"] for p in saved["paper"])
    assert summary["tables"] == saved["tables"]


def test_summary_names_only_what_ran(small_run):
    """Quick mode runs XOR and MNIST 0-1 and draws figure 6 on mnist2: the text must not name
    tanh or the 10-class network as if they had run."""
    _, summary = small_run
    text = json.dumps({k: summary[k] for k in ("description", "paper", "figures", "tables")})
    assert "tanh" not in text
    fig6 = next(f for f in summary["figures"] if f["path"] == "fig6_digits.png")
    assert "mnist2" in fig6["caption"] and "10 classes" not in fig6["caption"]
    assert "10-class" not in fig6["caption"]
    f6 = next(p for p in summary["paper"] if p["claim"].startswith("Figure 6"))
    assert "mnist2" in f6["measured"] and "not the 10-class network" in f6["note"]


def test_success_counts_match_rows(small_run):
    out, summary = small_run
    rows = _results(out)
    table = summary["tables"][0]  # margin encoding
    cols = table["columns"]
    for row in table["rows"]:
        net, problem = row[0], row[1]
        goal = "dos" if problem.startswith("Attack 1") else "intrude"
        norm = problem.split(", ")[1].lower()
        for solver, cell in zip(cols[2:], row[2:]):
            rs = [r for r in rows if r["part"] == "grid" and r["network"] == net and
                  r["goal"] == goal and r["norm"] == norm and r["solver"] == solver and
                  r["encoding"] == "margin" and r["eligible"]]  # fmt: skip
            assert cell == f"{sum(r['success'] for r in rs)}/{len(rs)}"


def test_stored_attacks_recheck_exactly(small_run, models_root):
    """Decode every stored attack, verify it again with the model and monitor it names (paths
    relative to the run directory): the same verdict as the row, and every claimed success
    holds under records.recheck."""
    from boxhack.attacks.records import recheck, resolve_ref
    from boxhack.attacks.verify import verify
    from boxhack.models.io import load_model
    from boxhack.monitor import BoxMonitor

    out, _ = small_run
    rows = _results(out)
    claimed = hold = 0
    loaded = {}
    for r in rows:
        record = r["attacks"][0]
        mpath = resolve_ref(record["model"], out)
        if mpath not in loaded:
            model, _ = load_model(mpath)
            loaded[mpath] = (model.eval(), BoxMonitor.load(resolve_ref(record["monitor"], out)))
        model, monitor = loaded[mpath]
        x0, x = decode_array(record["x0"]), decode_array(record["x"])
        again = verify(model, monitor, x0, x, record["goal"], labels=record["labels"])
        assert bool(again.success[0]) == r["success"], r["network"]
        assert again.pred[0] == r["pred"] and bool(again.accepted[0]) == r["accepted"]
        check = recheck(record, model, monitor)
        claimed, hold = claimed + check.claimed, hold + check.hold
    assert claimed == sum(r["success"] for r in rows) > 10
    assert hold == claimed


def test_rerun_resumes_and_summarise_is_repeatable(small_run, models_root):
    out, summary = small_run
    path = out / solvers.NAME / "rows.jsonl"
    before = path.read_bytes()
    again = run("solvers", out, Settings(quick=True, n_jobs=1, progress=False), SMALL,
                models_root=models_root)  # fmt: skip
    assert path.read_bytes() == before  # nothing re-run
    assert again["tables"] == summary["tables"]
    rebuilt = summarise("solvers", out, models_root=models_root)
    assert {k: v for k, v in rebuilt.items() if k != "timing"} == {
        k: v for k, v in again.items() if k != "timing"}


def test_a_second_run_on_a_locked_directory_writes_nothing(small_run, models_root):
    """While another process holds the run directory, a run is refused before it rewrites
    config.json (or anything else)."""
    from boxhack.infra.locks import exclusive

    out, _ = small_run
    base = out / solvers.NAME
    files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in base.iterdir()
             if p.is_file() and p.name != ".lock"}  # fmt: skip
    with exclusive(base, "test holder"), pytest.raises(BoxhackError, match="in use"):
        run("solvers", out, Settings(quick=True, n_jobs=1, progress=False),
            {"networks": ["xor"], "n": 6}, models_root=models_root)  # would rewrite config
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in base.iterdir()
             if p.is_file() and p.name != ".lock"}  # fmt: skip
    assert after == files


def test_starting_points_are_of_the_right_kind(small_run, models_root):
    from boxhack.experiments.prepared import prepare_monitor

    model, monitor, _, dataset = prepare_monitor("xor", models_root)
    pools = solvers.starting_points("xor", models_root, 5, seed=0)
    assert pools == solvers.starting_points("xor", models_root, 5, seed=0)  # deterministic
    x_dos = np.stack([solvers._x0_of(ref, dataset)[0] for ref in pools["dos"]])
    y_dos = np.array([solvers._x0_of(ref, dataset)[1] for ref in pools["dos"]])
    x_int = np.stack([solvers._x0_of(ref, dataset)[0] for ref in pools["intrude"]])
    pred, acc = monitor.predict(model, x_dos)
    assert acc.all() and (pred == y_dos).all()  # Attack 1: accepted and correct
    assert not monitor.predict(model, x_int)[1].any()


def test_honest_comparison_sentences():
    assert compare_rates({"shgo": (2, 8), "de": (2, 8)}) == (
        "SHGO and DE have the same success rate here.")
    assert compare_rates({"shgo": (0, 8), "de": (2, 8)}) == (
        "Here DE has the highest success rate.")
    assert compare_rates({"shgo": (3, 4), "de": (6, 8), "x": (1, 8)}) == (
        "SHGO and DE share the highest success rate here.")
    assert compare_rates({"shgo": (0, 0), "de": (2, 8)}) == ""


def test_bad_options(tmp_path):
    with pytest.raises(BoxhackError, match="unknown network"):
        solvers.make_config(networks=["mnist7"])
    with pytest.raises(BoxhackError, match="unknown solver"):
        solvers.make_config(solvers=["newton"])
    with pytest.raises(BoxhackError, match="unknown budget class"):
        solvers.make_config(budgets={"gpu": {"max_evals": 3}})
    with pytest.raises(BoxhackError, match="max_evals must be a positive integer"):
        solvers.make_config(budgets={"toy": {"max_evals": 0}})
    with pytest.raises(BoxhackError, match="budgets: give"):  # e.g. --budgets '[1]'
        solvers.make_config(budgets=[1])
    with pytest.raises(BoxhackError, match="solve_timeout"):
        solvers.make_config(solve_timeout=-1)
    with pytest.raises(BoxhackError, match="solve_timeout"):
        run("solvers", tmp_path, Settings(solve_timeout=-1))
    with pytest.raises(BoxhackError, match="has no option"):
        run("solvers", tmp_path, options={"bogus": 1})
    with pytest.raises(BoxhackError, match="config.json"):
        summarise("solvers", tmp_path / "nothing")
    assert not (tmp_path / "solvers").exists()  # every refusal came before any write
    config = solvers.make_config(solve_timeout=30)
    assert set(config["safety_net_s"].values()) == {30.0}
    assert config["budgets"] == solvers.BUDGETS  # the safety net never changes a budget
    assert config["n_samples"] == 20 and config["networks"] == list(solvers.NETWORKS)
    # the CLI's defaults are the declaration's: the same configuration
    options = solvers.EXPERIMENT.resolve_options({}, quick=False)
    assert solvers.configure(Settings(solve_timeout=30), options) == config


# ------------------------------------------------------------------ the same rows, always

_GRID = ["--networks", "xor", "--encodings", "margin", "--n", "2", "--jobs", "1", "-q"]


def _cli_run(out, models_root, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "boxhack", "experiment", "solvers", "--out", str(out),
           "--models-root", str(models_root), *_GRID]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, models_root):
    """An uninterrupted XOR campaign (every solver and problem, 2 starting points)."""
    from boxhack.experiments.prepared import prepare_monitor

    prepare_monitor("xor", models_root)
    out = tmp_path_factory.mktemp("reference")
    proc = _cli_run(out, models_root)
    _, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 0, err.decode()[-2000:]
    return out / solvers.NAME / "rows.jsonl"


def test_the_same_command_gives_the_same_rows(reference_run, models_root, tmp_path):
    proc = _cli_run(tmp_path, models_root)
    _, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert diff_files(reference_run, tmp_path / solvers.NAME / "rows.jsonl") == []
    assert len(read_rows(reference_run)) == 4 * 4 * 2


def test_killed_and_resumed_gives_the_same_rows(reference_run, models_root, tmp_path):
    """SIGKILL a campaign (its whole process group) once some rows are written, run the same
    command again: it resumes, and the rows equal an uninterrupted run's."""
    rows = tmp_path / solvers.NAME / "rows.jsonl"
    proc = _cli_run(tmp_path, models_root)
    deadline = time.monotonic() + HANG
    while len(read_rows(rows)) < 6:
        assert proc.poll() is None, "the campaign ended before it could be killed"
        assert time.monotonic() < deadline, "the campaign made no progress"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    n_killed = len(read_rows(rows))
    assert 6 <= n_killed < 32
    again = _cli_run(tmp_path, models_root)
    _, err = again.communicate(timeout=HANG)
    assert again.returncode == 0, err.decode()[-2000:]
    assert diff_files(reference_run, rows) == []


def test_rowdiff_ignores_timing_fields_and_finds_the_rest(tmp_path):
    a = [{"key": "k1", "wall_s": 1.0, "worker": "h:1", "result": {"nfev": 5, "solve_s": 0.1}},
         {"key": "k2", "result": {"x": [1, 2]}}]
    b = [{"key": "k1", "wall_s": 9.0, "worker": "h:2", "result": {"nfev": 5, "solve_s": 7.0}},
         {"key": "k2", "result": {"x": [1, 3]}}, {"key": "k3"}]
    diffs = diff_rows(a, b)
    assert [(d.key, d.path) for d in diffs] == [("k2", "result.x[1]"), ("k3", "")]
    assert {"wall_s", "solve_s", "worker"} <= TIMING_FIELDS
    # newest row per key wins, as for every reader of a campaign
    assert diff_rows(a + [{"key": "k2", "result": {"x": [1, 3]}}], b[:2]) == []
    pa, pb = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    pa.write_text("".join(json.dumps(r) + "\n" for r in a))
    pb.write_text("".join(json.dumps(r) + "\n" for r in b))
    script = Path(__file__).resolve().parents[1] / "scripts" / "diff-rows"
    same = subprocess.run([sys.executable, str(script), str(pa), str(pa)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    differ = subprocess.run([sys.executable, str(script), str(pa), str(pb)], capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert same.returncode == 0 and "0 keys differ" in same.stdout
    assert differ.returncode == 1 and "k2: result.x[1]: 2 != 3" in differ.stdout
    assert "k3: only in B" in differ.stdout


def test_cli_experiment_solvers(tmp_path, models_root, capsys):
    from boxhack.cli import main

    code = main([
        "experiment", "solvers", "--out", str(tmp_path), "--models-root", str(models_root),
        "--networks", "xor", "--solvers", "slsqp,de", "--encodings", "margin", "--n", "1",
        "--jobs", "1", "--no-progress",  # the old spelling of -q still works
    ])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "Successful attacks" in text and "summary:" in text
    rows = read_rows(tmp_path / "solvers" / "rows.jsonl")
    assert len(rows) == 4 * 2
