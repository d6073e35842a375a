"""`boxhack reproduce`: the novelty experiment end to end in quick mode, resuming, failures
recorded without losing the other experiments, and the CLI's exit codes."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from boxhack.cli import main
from boxhack.errors import BoxhackError
from boxhack.experiments import novelty
from boxhack.experiments import reproduce as reproduce_mod
from boxhack.infra.jsonl import read_rows
from boxhack.experiments.reproduce import failed_experiments, reproduce
from boxhack.report.html import _ImgParser

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

# A small grid so the test trains one network: the 0-4 digits one, k in {1, 3}, tol in {0, 0.25}.
NOVELTY = {"networks": ["mnist0-4"], "clusters": [1, 3], "tolerances": [0.0, 0.25]}


def n_images(html_path: Path) -> int:
    parser = _ImgParser()
    parser.feed(html_path.read_text(encoding="utf-8"))
    return len(parser.images)


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
    from boxhack.experiments.zoo import prepare_monitor

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
    # a directory holding nothing but the rows: no run.json, no summary, no figures, no models
    alone = tmp_path / "alone"
    (alone / "novelty").mkdir(parents=True)
    shutil.copy(quick_run / "novelty" / "rows.jsonl", alone / "novelty" / "rows.jsonl")
    assert main(["report", str(alone)]) == 0
    assert json.loads((alone / "novelty" / "summary.json").read_text()) == original
    assert n_images(alone / "report.html") == 3


def test_novelty_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(BoxhackError, match="unknown option"):
        novelty.run(tmp_path, clusterz=[1])
    with pytest.raises(BoxhackError, match="unknown or no networks"):
        novelty.run(tmp_path, networks=["mnist11"])
    with pytest.raises(BoxhackError, match="tolerances"):
        novelty.run(tmp_path, networks=["mnist0-4"], tolerances=[-0.1])
    with pytest.raises(BoxhackError, match="no rows"):
        novelty.summarise(tmp_path)


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
    out = tmp_path / "run"
    report = reproduce(out, experiments=["report_fakes.broken", "report_fakes.fake",
                                         "report_fakes.missing"],
                       n_jobs=1, progress=False, solve_timeout=5)
    failed = failed_experiments(out)
    # solve_timeout goes only to a run() that names it: not to broken's **options
    assert failed == {"broken": "RuntimeError: broken on purpose; options=[]"}
    run = json.loads((out / "run.json").read_text())
    assert run["experiments"]["fake"]["status"] == "ok"
    assert run["experiments"]["missing"]["status"] == "skipped"
    assert "Traceback" in run["experiments"]["broken"]["traceback"]
    text = report.read_text(encoding="utf-8")
    assert "this experiment failed: RuntimeError: broken on purpose" in text
    assert "not run: module report_fakes.missing is not available yet" in text
    assert n_images(report) == 2  # the fake experiment's figures survived
    # the CLI runs the same and says so in its exit code
    monkeypatch.setattr(reproduce_mod, "EXPERIMENTS",
                        ("report_fakes.broken", "report_fakes.fake"))
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


def test_an_experiment_left_running_by_a_killed_run_is_reported(tmp_path: Path) -> None:
    """A reproduce killed mid-experiment leaves status "running": the next run says so."""
    (tmp_path / "run.json").write_text(json.dumps(
        {"experiments": {"ghost": {"status": "running", "module": "report_fakes.ghost"}},
         "invocations": [{"started": "earlier", "config": {}, "experiments": []}]}))
    reproduce(tmp_path, experiments=["report_fakes.fake"], n_jobs=1, progress=False)
    failed = failed_experiments(tmp_path)
    assert set(failed) == {"ghost"}
    assert "stopped while this experiment was running" in failed["ghost"]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["experiments"]["fake"]["status"] == "ok" and len(run["invocations"]) == 2
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "interrupted" in text and "stopped while this experiment was running" in text
