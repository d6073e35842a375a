"""`boxhack reproduce`: the novelty experiment end to end in quick mode, resuming, failures
recorded without losing the other experiments, and the CLI's exit codes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from boxhack.cli import main
from boxhack.errors import BoxhackError
from boxhack.experiments.prepared import prepare_monitor
from boxhack.infra.jsonl import read_rows
from boxhack.report.browser import page_images
from boxhack.workflow import comparable, failed_experiments, reproduce, run, summarise

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import report_fakes  # needs TESTS_DIR on sys.path

# A small grid so the test trains one network: the 0-4 digits one, k in {1, 3}, tol in {0, 0.25}.
NOVELTY = {"networks": ["mnist0-4"], "clusters": [1, 3], "tolerances": [0.0, 0.25]}


def n_images(html_path: Path) -> int:
    return len(page_images(html_path.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quick") / "run"
    report = reproduce(out, quick=True, only=["novelty"], n_jobs=1, progress=False,
                       options={"novelty": NOVELTY})
    assert report == out / "report.html"
    return out


def monitor_rows(run: Path) -> dict[tuple, dict]:
    rows = read_rows(run / "novelty" / "rows.jsonl")
    return {(r["params"]["n_clusters"], r["params"]["tolerance"]): r["result"]
            for r in rows if r["params"]["task"] == "monitor"}


def test_quick_reproduce_writes_run_record_and_report(quick_run: Path) -> None:
    run = json.loads((quick_run / "run.json").read_text())
    assert set(run["experiments"]) == {"novelty"}
    assert run["experiments"]["novelty"]["status"] == "ok"
    assert run["config"]["quick"] is True and run["config"]["only"] == ["novelty"]
    assert failed_experiments(quick_run) == {}
    assert n_images(quick_run / "report.html") == 3
    text = (quick_run / "report.html").read_text(encoding="utf-8")
    for needle in ("Novelty detection: mnist0-4 network", "The networks (embedded data",
                   "flags inputs of classes unseen in training", "test accuracy"):
        assert needle in text


def test_novelty_rows_agree_with_the_monitor(quick_run: Path) -> None:
    rows = read_rows(quick_run / "novelty" / "rows.jsonl")
    assert len(rows) == 1 + 4 and all(r["status"] == "ok" for r in rows)
    acc = next(r["result"] for r in rows if r["params"]["task"] == "accuracy")
    info = json.loads((quick_run / "models" / "models" / "mnist0-4" / "model.json").read_text())
    assert acc["test_accuracy"] == pytest.approx(info["test_accuracy"])
    assert acc["test_accuracy"] > 0.9
    mon = monitor_rows(quick_run)
    assert set(mon) == {(1, 0.0), (1, 0.25), (3, 0.0), (3, 0.25)}
    for k in (1, 3):  # a wider box never rejects what a tighter one accepted
        tight, wide = mon[(k, 0.0)]["metrics"], mon[(k, 0.25)]["metrics"]
        assert wide["novelty_detection_rate"] <= tight["novelty_detection_rate"]
        assert wide["acceptance_rate"] >= tight["acceptance_rate"]
    for res in mon.values():
        m = res["metrics"]
        assert m["n_known"] == 500 and m["n_novel"] == 500
        # the graded score is 0 exactly on accepted inputs: the stored scores match the rate
        rejected = sum(1 for s in res["score_novel"] if s is None or s > 0)
        assert rejected == m["novel_rejected"]
        assert 0.0 < m["novelty_detection_rate"] < 1.0 and 0.5 < m["auroc"] <= 1.0
    # the example digits drawn in the figure are decided the same by the cached monitor
    examples = mon[(1, 0.0)]["examples"]
    assert {e["accepted"] for e in examples} == {True, False}
    model, monitor, _, _ = prepare_monitor("mnist0-4", quick_run / "models", n_clusters=1,
                                           tolerance=0.0)
    x = np.asarray([e["pixels"] for e in examples], np.float32).reshape(-1, 1, 28, 28)
    x = x / np.float32(255)
    pred, accepted = monitor.predict(model, x)
    assert accepted.tolist() == [e["accepted"] for e in examples]
    assert [int(p) for p in pred] == [e["predicted"] for e in examples]  # classes 0-4 = indices


def test_novelty_summary_is_rebuilt_from_the_jsonl_alone(quick_run: Path, tmp_path: Path) -> None:
    original = json.loads((quick_run / "novelty" / "summary.json").read_text())
    assert [f["path"] for f in original["figures"]] == [
        "novelty_rates.png", "novelty_roc.png", "novelty_examples.png"]
    assert len(original["paper"]) == 4
    # a directory holding nothing but the stored data (the configuration, the rows and the
    # runs' timings): no run.json, no summary, no figures, no models
    alone = tmp_path / "alone"
    (alone / "novelty").mkdir(parents=True)
    for name in ("config.json", "rows.jsonl", "timing.json"):
        shutil.copy(quick_run / "novelty" / name, alone / "novelty" / name)
    assert main(["report", str(alone)]) == 0
    assert json.loads((alone / "novelty" / "summary.json").read_text()) == original
    assert n_images(alone / "report.html") == 3


def test_novelty_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(BoxhackError, match="has no option.*clusterz"):
        run("novelty", tmp_path, options={"clusterz": [1]})
    with pytest.raises(BoxhackError, match="unknown or no networks"):
        run("novelty", tmp_path, options={"networks": ["mnist11"]})
    with pytest.raises(BoxhackError, match="tolerances"):
        run("novelty", tmp_path, options={"networks": ["mnist0-4"], "tolerances": [-0.1]})
    assert not (tmp_path / "novelty").exists()  # refused before anything was written
    with pytest.raises(BoxhackError, match="config.json is missing; run the experiment"):
        summarise("novelty", tmp_path)


def test_reproduce_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(BoxhackError, match="unknown experiment"):
        reproduce(tmp_path, only=["novelty", "solverz"])
    with pytest.raises(BoxhackError, match="n_jobs"):
        reproduce(tmp_path, n_jobs=0)
    with pytest.raises(BoxhackError, match="solve_timeout"):
        reproduce(tmp_path, solve_timeout=-1)
    with pytest.raises(BoxhackError, match="options for unknown"):
        reproduce(tmp_path, options={"nope": {}})
    assert main(["reproduce", "--out", str(tmp_path), "--only", "solverz"]) == 2
    with pytest.raises(SystemExit):
        main(["reproduce", "--out", str(tmp_path), "--jobs", "0"])


def test_a_failing_experiment_keeps_the_others(tmp_path: Path, monkeypatch, capsys) -> None:
    report_fakes.use(monkeypatch, "broken", "fake", "missing")
    out = tmp_path / "run"
    report = reproduce(out, n_jobs=1, progress=False, solve_timeout=5)
    failed = failed_experiments(out)
    # A registered module that is missing is an error (a broken installation), never "skipped".
    assert set(failed) == {"broken", "missing"}
    assert failed["broken"] == "RuntimeError: broken on purpose"
    assert "its module report_fakes.missing cannot be imported" in failed["missing"]
    run = json.loads((out / "run.json").read_text())
    assert run["experiments"]["fake"]["status"] == "ok"
    assert run["experiments"]["missing"]["status"] == "error"
    assert "ModuleNotFoundError" in run["experiments"]["missing"]["traceback"]
    assert "Traceback" in run["experiments"]["broken"]["traceback"]
    text = report.read_text(encoding="utf-8")
    assert "this experiment failed: RuntimeError: broken on purpose" in text
    assert "report_fakes.missing cannot be imported" in text
    assert n_images(report) == 2  # the fake experiment's figures survived
    # the CLI runs the same and says so in its exit code
    report_fakes.use(monkeypatch, "broken", "fake")
    assert main(["reproduce", "--out", str(tmp_path / "cli"), "--jobs", "1", "-q"]) == 1
    assert "experiment broken failed" in capsys.readouterr().err


def test_rerunning_resumes_without_repeating_jobs(quick_run: Path) -> None:
    rows_path = quick_run / "novelty" / "rows.jsonl"
    before = rows_path.read_bytes()
    reproduce(quick_run, quick=True, only="novelty", n_jobs=1, progress=False,
              options={"novelty": NOVELTY})
    assert rows_path.read_bytes() == before
    run = json.loads((quick_run / "run.json").read_text())
    assert len(run["invocations"]) == 2
    assert n_images(quick_run / "report.html") == 3


def test_an_experiment_left_running_by_a_killed_run_is_reported(
    tmp_path: Path, monkeypatch
) -> None:
    """A reproduce killed mid-experiment leaves status "running": the next run says so."""
    report_fakes.use(monkeypatch, "broken", "fake")
    (tmp_path / "run.json").write_text(json.dumps(  # a version-1 record: clocks beside results
        {"format": "boxhack-run", "format_version": 1,
         "experiments": {"broken": {"status": "running", "module": "report_fakes.broken",
                                    "started": "earlier", "wall_s": None}},
         "invocations": [{"started": "earlier", "config": {}, "experiments": []}]}))
    reproduce(tmp_path, only="fake", n_jobs=1, progress=False)
    failed = failed_experiments(tmp_path)
    assert set(failed) == {"broken"}
    assert "stopped while this experiment was running" in failed["broken"]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["experiments"]["fake"]["status"] == "ok" and len(run["invocations"]) == 2
    assert run["experiments"]["broken"]["timing"]["started"] == "earlier"  # upgraded
    assert run["invocations"][0]["timing"]["started"] == "earlier"
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "interrupted" in text and "stopped while this experiment was running" in text


# --- faults: the lock, SIGTERM, bad paths ---------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS_DIR), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


def _start_slow(out: Path, ready: Path, release: Path) -> subprocess.Popen:
    """A real ``reproduce`` in another process whose one experiment waits for ``release``."""
    script = (
        "from boxhack.workflow import registry\n"
        "registry.EXPERIMENTS = {'slow': registry.Entry('report_fakes.slow', "
        "'report_fakes.slow')}\n"
        "from boxhack.workflow import reproduce\n"
        f"reproduce({str(out)!r}, n_jobs=1, progress=False, options={{'slow': "
        f"{{'ready': {str(ready)!r}, 'release': {str(release)!r}}}}})\n"
    )
    return subprocess.Popen([sys.executable, "-c", script], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, limit: float = 180) -> None:
    deadline = time.monotonic() + limit  # generous: a busy machine starts Python slowly
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the first run ended early: {proc.stderr.read().decode()[-3000:]}")
        assert time.monotonic() < deadline, "the first run never got going"
        time.sleep(0.02)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("boxhack: error: ") and "Traceback" not in err
    return lines[0]


def test_a_second_run_on_a_busy_directory_is_refused_before_it_writes(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    out, ready, release = tmp_path / "run", tmp_path / "ready", tmp_path / "release"
    first = _start_slow(out, ready, release)
    try:
        _wait_for(ready, first)  # it holds the lock and has written run.json, config, rows
        before = snapshot(out)
        assert {"run.json", "slow/config.json", "slow/rows.jsonl"} <= set(before)
        # the second run would run the same (non-waiting) experiment if it were let in
        report_fakes.use(monkeypatch, "slow")
        assert main(["reproduce", "--out", str(out), "--jobs", "1", "-q"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "is in use by boxhack process" in line and "Nothing was written" in line
        assert main(["report", str(out)]) == 2  # re-summarising would rewrite its files too
        assert "is in use" in one_error_line(capsys.readouterr().err)
        assert snapshot(out) == before  # config.json, run.json, rows: byte for byte
    finally:
        release.touch()
        try:
            first.wait(timeout=180)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
                first.wait()
            first.stdout.close()
            first.stderr.close()
    assert first.returncode == 0
    run = json.loads((out / "run.json").read_text())
    assert run["experiments"]["slow"]["status"] == "ok" and len(run["invocations"]) == 1
    # once the first run is done the directory is free again
    assert main(["reproduce", "--out", str(out), "--jobs", "1", "-q"]) == 0
    assert len(json.loads((out / "run.json").read_text())["invocations"]) == 2


def test_sigterm_stops_reproduce_like_ctrl_c_and_frees_the_directory(
    tmp_path: Path, monkeypatch
) -> None:
    out, ready, release = tmp_path / "run", tmp_path / "ready", tmp_path / "release"
    proc = _start_slow(out, ready, release)
    try:
        _wait_for(ready, proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode != 0
    record = json.loads((out / "run.json").read_text())["experiments"]["slow"]
    assert record["status"] == "interrupted" and "SIGTERM" in record["error"]
    assert record["timing"]["finished"] is not None
    assert "interrupted" in (out / "report.html").read_text(encoding="utf-8")
    report_fakes.use(monkeypatch, "slow")
    reproduce(out, n_jobs=1, progress=False)  # resumes: the lock went with the process
    assert failed_experiments(out) == {}


def test_reproduce_out_that_cannot_work_is_one_line_error(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    assert main(["reproduce", "--out", str(a_file), "-q"]) == 2
    assert "is a file, not a directory" in one_error_line(capsys.readouterr().err)
    assert main(["reproduce", "--out", str(a_file / "sub"), "-q"]) == 2
    one_error_line(capsys.readouterr().err)
    assert a_file.read_text() == "keep me"
    if os.geteuid() != 0:
        locked = tmp_path / "readonly"
        locked.mkdir()
        locked.chmod(0o555)
    else:  # root ignores permission bits; /proc refuses new files to anyone
        locked = Path("/proc/self")
    assert main(["reproduce", "--out", str(locked), "-q"]) == 2
    assert "writ" in one_error_line(capsys.readouterr().err)
    # a scheduler address that cannot work: said before anything is created
    target = tmp_path / "never"
    assert main(["reproduce", "--out", str(target), "--scheduler", "garbage://x", "-q"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "not a Dask scheduler address" in line and "tcp://HOST:PORT" in line
    assert not target.exists()


def _timing_keys_outside_timing(value, path=()) -> list[tuple]:
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k in ("timing", "machine"):
                continue
            if k in ("started", "finished", "wall_s", "elapsed", "time"):
                found.append((*path, k))
            found += _timing_keys_outside_timing(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _timing_keys_outside_timing(v, (*path, i))
    return found


def test_run_records_differ_only_in_timing_and_machine(tmp_path: Path, monkeypatch) -> None:
    report_fakes.use(monkeypatch, "fake", "broken")
    out = tmp_path / "run"
    reproduce(out, n_jobs=1, progress=False, seed=2)
    first = json.loads((out / "run.json").read_text())
    out.rename(tmp_path / "first")
    reproduce(out, n_jobs=1, progress=False, seed=2)
    second = json.loads((out / "run.json").read_text())
    assert _timing_keys_outside_timing(first) == []
    assert first["timing"]["wall_s"] > 0 and first["experiments"]["fake"]["timing"]["finished"]
    assert first != second  # the clocks did move...
    assert comparable(first) == comparable(second)  # ...and nothing else differs


# --- the registry and the generated CLI -------------------------------------------------------


def test_the_registry_is_the_one_list_of_experiments() -> None:
    from boxhack.experiments.spec import Experiment
    from boxhack.report.present import Presenter
    from boxhack.workflow import registry

    assert registry.names() == ("novelty", "solvers", "adversarial", "combined", "gradient",
                                "abstractions")
    for name in ("novelty", "solvers"):
        reg = registry.load(name)
        assert isinstance(reg.experiment, Experiment) and reg.experiment.name == name
        assert isinstance(reg.presenter, Presenter)
        assert reg.module == f"boxhack.experiments.{name}"
    before = set(sys.modules)
    for bad in ("nope", "this.zen", "boxhack.experiments.novelty", None):
        with pytest.raises(BoxhackError, match="unknown experiment"):
            registry.load(bad)
    assert set(sys.modules) == before  # a name that is not registered is never imported


def test_a_registered_module_without_its_declaration_is_an_error(monkeypatch) -> None:
    from boxhack.workflow import registry

    monkeypatch.setattr(registry, "EXPERIMENTS", {
        "novelty": registry.Entry("boxhack.experiments.novelty", "boxhack.report.novelty"),
        "renamed": registry.Entry("boxhack.experiments.novelty", "boxhack.report.novelty"),
        "bare": registry.Entry("boxhack.experiments.spec", "boxhack.report.novelty"),
    })
    with pytest.raises(BoxhackError, match="is named 'novelty'; it must be named after"):
        registry.load("renamed")
    with pytest.raises(BoxhackError, match="needs EXPERIMENT = Experiment"):
        registry.load("bare")


def test_the_experiment_commands_are_generated_from_the_registry(
    quick_run: Path, tmp_path: Path, capsys
) -> None:
    """``boxhack experiment novelty`` exists (it did not before the registry), its flags are
    its options (comma lists converted, booleans as --x/--no-x), and it runs the same jobs as
    reproduce."""
    out = tmp_path / "cli"
    code = main(["experiment", "novelty", "--out", str(out), "--models-root",
                 str(quick_run / "models"), "--networks", "mnist0-4", "--clusters", "1,3",
                 "--tolerances", "0,0.25", "--no-elbow", "--jobs", "1", "-q"])
    assert code == 0
    text = capsys.readouterr().out
    assert "Novelty detection: mnist0-4 network" in text and "summary:" in text
    keys = {r["key"] for r in read_rows(out / "novelty" / "rows.jsonl")}
    assert keys == {r["key"] for r in read_rows(quick_run / "novelty" / "rows.jsonl")}
    assert not (out / "report.html").exists()  # one experiment: its summary, no report
    assert json.loads((out / "novelty" / "summary.json").read_text())["figures"]


@pytest.mark.parametrize(("argv", "needle"), [
    (["--clusters", "0"], "argument --clusters: must be >= 1, got 0"),
    (["--clusters", "1,x"], "argument --clusters: expected an integer, got 'x'"),
    (["--tolerances", "nan"], "argument --tolerances: expected a finite number"),
    (["--networks", "mnist11"], "argument --networks: unknown mnist11; choose from"),
    (["--elbow", "yes"], "unrecognized arguments: yes"),
    (["--jobs", "0"], "argument --jobs: must be >= 1"),
])
def test_generated_flags_refuse_bad_values_in_one_line(argv, needle, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["experiment", "novelty", "--out", str(tmp_path / "x"), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "x").exists()


def test_an_experiment_that_cannot_be_loaded_keeps_its_command(monkeypatch, capsys) -> None:
    report_fakes.use(monkeypatch, "fake", "missing")
    assert main(["experiment", "missing", "--n", "3", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert one_error_line(err).endswith("the boxhack installation is broken, reinstall it")
    assert "report_fakes.missing cannot be imported" in err
    with pytest.raises(SystemExit):
        main(["experiment", "--help"])
    assert "missing" in capsys.readouterr().out  # listed, with why it cannot run


def test_a_configuration_without_job_keys_summarises_every_row(tmp_path: Path) -> None:
    """Runs written before configurations listed their jobs still re-summarise: every key's newest
    row, in file order; a configuration that is not a JSON object is a clear error."""
    from boxhack.experiments.spec import Experiment, RunContext, load_config_and_rows

    exp = Experiment(name="old", title="t", description="d", options=(), configure=dict,
                     plan=None, job=None, summarise=None)  # fmt: skip
    d = tmp_path / "old"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"n": 3}))
    rows = [{"key": k, "params": {}, "status": "ok", "v": v} for k, v in [("a", 1), ("b", 2), ("a", 3)]]
    (d / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config, got = load_config_and_rows(exp, RunContext.of(tmp_path))
    assert config["n"] == 3 and config["keys"] == ["a", "b"]
    assert [r["v"] for r in got] == [3, 2]
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(BoxhackError, match="not a JSON object"):
        load_config_and_rows(exp, RunContext.of(tmp_path))
