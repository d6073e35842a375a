"""Experiment ``abstractions`` (every abstraction compared): a small quick grid through the
experiment contract and its presenter; deterministic rows (a second run into another directory
gives the same rows, timing aside); every stored success re-checked by ``boxhack verify``."""

from __future__ import annotations

import json
import math

import pytest
from stored_attacks import run_and_present

from boxhack.errors import BoxhackError
from boxhack.experiments.abstractions import EXPERIMENT, budget_at, headline
from boxhack.experiments.recheck import verify_path
from boxhack.experiments.spec import Settings
from boxhack.infra.jsonl import read_rows
from boxhack.infra.rowdiff import diff_rows, replace_text
from boxhack.monitor.registry import load_monitor
from boxhack.report.abstractions import answers

# three abstractions of different kinds (a box, a ball, pairs of units), every measure
OPTS = {"abstractions": ["box", "ball", "zone"], "n": 4, "fig8_n": 4, "combined_n": 4,
        "fig8_eps": [0.1]}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    models = tmp_path_factory.mktemp("abs-models")
    first = tmp_path_factory.mktemp("abs-a")
    out = run_and_present("abstractions", first, models_root=models, **OPTS)
    return {"models": models, "dir": first, "out": out}


def test_rows_summary_figure(run):
    summary, _config, rows, figures, text = run["out"]
    assert summary["name"] == EXPERIMENT.name == "abstractions"
    json.dumps(summary)
    assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    measures = {(r["params"]["abstraction"], r["params"]["measure"]) for r in rows}
    assert measures == {(a, m) for a in OPTS["abstractions"]
                        for m in ("detect", "novelty", "gradient", "fig8", "combined")}
    # quick: tolerance 0, L2 only, minimal + one budget per goal -> 4 gradient jobs each
    for name in OPTS["abstractions"]:
        grad = [r for r in rows if r["params"]["abstraction"] == name
                and r["params"]["measure"] == "gradient"]  # fmt: skip
        assert 1 <= len(grad) <= 4 and {r["params"]["norm"] for r in grad} == {"l2"}
    # one figure, written, with a caption naming what ran
    assert [f["path"] for f in figures] == ["abstractions.png"]
    png = run["dir"] / "abstractions" / "abstractions.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and "zone" in figures[0]["caption"]
    assert "hull" not in figures[0]["caption"]  # only what ran is named
    # every abstraction has its headline numbers; the detection table matches the rows
    heads = {h["abstraction"]: h for h in summary["headline"]}
    assert set(heads) == set(OPTS["abstractions"])
    for h in heads.values():
        assert 0 <= h["auroc_novel"] <= 1 and 0 <= h["correct_accepted"] <= 1
    # a zone lies inside its cluster's box: it accepts no more than the box (same clusters)
    assert heads["zone"]["correct_accepted"] <= heads["box"]["correct_accepted"]
    assert heads["zone"]["incorrect_accepted"] <= heads["box"]["incorrect_accepted"]
    # the sentences answer both questions from the numbers
    notes = " ".join(text["notes"])
    assert "best novel-input detection" in notes and "hardest to fool" in notes
    best = max(h["auroc_novel"] for h in heads.values())
    assert f"{best:.3f}" in notes


def test_samples_and_monitors(run):
    _summary, _config, rows, _figures, _text = run["out"]
    from boxhack.experiments.prepared import prepare_model

    model, _info, data = prepare_model("mnist10", run["models"])
    for r in rows:
        p = r["params"]
        monitor = load_monitor(p["monitor"])
        assert monitor.abstraction == p["abstraction"] and monitor.tolerance == p["tolerance"]
        if p["measure"] != "gradient":
            continue
        idx = p["indices"]
        pred, acc = monitor.predict(model, data.x_test[idx])
        if p["goal"] == "dos":  # drawn from the digits this monitor accepts, classified right
            assert (acc & (pred == data.y_test[idx])).all()
        else:
            assert not acc.any()
        res = r["result"]  # successes only among the attacked digits
        assert not any(s and not e for s, e in zip(res["success"], res["eligible"]))
    # FGSM / PGD and the combined attack: the same digits for every abstraction
    for measure in ("fig8", "combined"):
        drawn = {tuple(r["params"]["indices"]) for r in rows if r["params"]["measure"] == measure}
        assert len(drawn) == 1


def test_every_success_reverifies(run):
    result = verify_path(run["dir"])
    assert result.claimed > 0 and result.ok, result.failures
    assert result.experiments["abstractions"]["claimed"] == result.claimed


def test_rows_are_deterministic(run, tmp_path):
    """A second run into another directory (monitors cached) gives the same rows."""
    run_and_present("abstractions", tmp_path, models_root=run["models"], **OPTS)
    a = read_rows(run["dir"] / "abstractions" / "rows.jsonl")
    b = replace_text(read_rows(tmp_path / "abstractions" / "rows.jsonl"), str(tmp_path),
                     str(run["dir"]))
    assert diff_rows(a, b) == []


def test_budget_at_and_answers():
    assert budget_at([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 0]) == 0.2
    assert math.isinf(budget_at([0.1, 0.2, 0.3], [1, 0, 0]))
    cells = {"detect": [
        {"abstraction": a, "tolerance": 0.0, "measure": m, "acceptance_rate": 0.9,
         "n_misclassified": 10, "misclassified_accepted": 3, "auroc_misclassified": 0.7,
         "novelty_detection_rate": 0.5, "auroc": auc}
        for a, auc in (("box", 0.8), ("zone", 0.803), ("ball", 0.6)) for m in ("detect", "novelty")],
        "gradient": [], "fig8": [], "combined": []}  # fmt: skip
    text = " ".join(answers({"headline": headline(cells)}))
    assert "zone and box (a tie) with 0.803" in text or "box and zone (a tie) with 0.803" in text


def test_bad_options_are_refused_before_writing(tmp_path):
    with pytest.raises(BoxhackError, match="abstractions"):
        EXPERIMENT.configure(Settings(quick=True), {"abstractions": ["cube"]})
    with pytest.raises(BoxhackError, match="n_clusters"):
        EXPERIMENT.configure(Settings(quick=True), {"n_clusters": 0})
    assert not list(tmp_path.iterdir())
