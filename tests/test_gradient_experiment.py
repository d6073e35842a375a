"""Experiment ``gradient`` (robustness curves) through the experiment contract, its presenter and
report helpers, and the ``attack gradient`` CLI command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from stored_attacks import assert_locked_before_writing, recheck_rows, run_and_present

from boxhack.cli import main as cli_main
from boxhack.errors import BoxhackError
from boxhack.experiments.gradient import EXPERIMENT, budget_at
from boxhack.experiments.spec import RunContext, Settings
from boxhack.infra.jsonl import read_rows
from boxhack.report.curves import plot_robustness_curves, success_curve
from boxhack.report.gradient import PRESENTER


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from boxhack.experiments.prepared import monitor_path, prepare_monitor

    root = tmp_path_factory.mktemp("gradient-models")
    _, _, info, _ = prepare_monitor("mnist3", root, n_clusters=1, tolerance=0.0)
    return {"root": root, "model_dir": root / "models" / "mnist3",
            "monitor": monitor_path(root, "mnist3", 1, 0.0, info["default_layer"])}


OPTS = {"n": 5, "goals": ["dos", "intrude"], "norms": ["l2", "linf"],
        "attacks": ["gradient", "pgd"], "eps_l2": [1.0], "eps_linf": [0.1]}


def test_experiment_contract_resume_and_summarise(small, tmp_path):
    summary, config, rows, figures, text = run_and_present(
        "gradient", tmp_path, models_root=small["root"], **OPTS)
    assert summary["name"] == EXPERIMENT.name == "gradient"
    json.dumps(summary)  # data only: the figures and sentences are the presenter's
    assert not {"figures", "paper", "description"} & set(summary)
    for key in ("description", "paper", "notes"):
        assert key in text
    exp_dir = tmp_path / "gradient"
    assert len(rows) == 2 * 2 * 2  # goals x norms x (gradient + one PGD budget)
    assert all(r["status"] == "ok" for r in rows)
    for fig in figures:
        assert (exp_dir / fig["path"]).read_bytes()[:4] == b"\x89PNG" and fig["caption"]
    assert {f["path"] for f in figures} >= {"curves_dos.png", "curves_intrude.png"}
    table = summary["tables"][0]
    by = {(r[0], r[1], r[2]): dict(zip(table["columns"], r)) for r in table["rows"]}
    for goal in ("dos", "intrude"):
        cell = by[(goal, "L2", "gradient (minimal)")]
        assert cell["success"] >= 0.8
        assert cell["success"] == round(cell["successes"] / cell["attacked"], 3)
    # the samples: seeded, class-balanced, from the digits each goal starts from
    from boxhack.experiments.prepared import prepare_monitor

    model, monitor, _, data = prepare_monitor("mnist3", small["root"])
    for goal, idx in config["samples"].items():
        if goal not in ("dos", "intrude"):
            continue
        assert len(idx) == 5
        pred, acc = monitor.predict(model, data.x_test[idx])
        if goal == "dos":
            assert (acc & (pred == data.y_test[idx])).all()
        else:
            assert not acc.any()
        counts = np.bincount(data.y_test[idx], minlength=3)
        assert counts.max() - counts.min() <= 1 or goal == "intrude"
    for r in rows:  # rates are over attacked digits; 'already' ones are never successes
        res = r["result"]
        assert not any(s and not e for s, e in zip(res["success"], res["eligible"]))
        assert len(res["attacks"]) == (1 if any(res["success"]) else 0)
        if not res["attacks"]:
            continue
        assert sum(res["attacks"][0]["success"]) == sum(res["success"])
        if r["params"]["attack"] == "pgd":
            assert res["attacks"][0]["budget"] == {"norm": r["params"]["norm"],
                                                   "eps": r["params"]["eps"]}
    # every stored success holds when re-checked with the model and monitor it names
    total, n_records = recheck_rows(tmp_path, "gradient")
    assert n_records == sum(1 for r in rows if any(r["result"]["success"]))
    assert total.claimed == sum(sum(r["result"]["success"]) for r in rows) > 0
    assert total.hold == total.claimed
    # the text names only what ran: no orthogonal attack, no combined / intrude-any goal
    said = json.dumps([text, figures])
    assert "orthogonal" not in said and "intrude-any" not in said and "mnist3 MLP" in said
    assert "dos 5 (correctly classified and accepted (Attack 1)), intrude 5" in said
    # resumable: a second run adds no rows; summarised again from the rows: the same tables
    run_and_present("gradient", tmp_path, models_root=small["root"], **OPTS)
    assert len(read_rows(exp_dir / "rows.jsonl")) == len(rows)
    ctx = RunContext(out_dir=tmp_path, models_root=small["root"])
    assert EXPERIMENT.summarise(config, rows, ctx)["tables"] == summary["tables"]
    _verify_rederives_rows_and_summary(tmp_path, n_records)


def _verify_rederives_rows_and_summary(run_dir, n_records):
    """`boxhack verify` re-derives each row's recorded outcomes and the summary from the rows:
    an edited count in summary.json or an edited prediction in a row is reported, exit 1."""
    from boxhack.workflow.runner import summarise
    from boxhack.workflow.verification import verify_run

    summarise("gradient", run_dir)
    s = verify_run(run_dir)
    assert s.ok and s.linked == n_records and s.summaries == 1 and not s.disagreements
    path = run_dir / "gradient" / "summary.json"
    pristine = path.read_text()
    stored = json.loads(pristine)
    stored["tables"][0]["rows"][0][4] += 1  # "successes" of the first cell
    path.write_text(json.dumps(stored))
    s = verify_run(run_dir)
    assert not s.ok and [d["field"] for d in s.disagreements] == ["tables[0].rows[0][4]"]
    assert cli_main(["verify", str(run_dir)]) == 1
    path.write_text(pristine)
    rows_file = run_dir / "gradient" / "rows.jsonl"
    lines = rows_file.read_text().splitlines()
    for i, line in enumerate(lines):
        row = json.loads(line)
        if row.get("result", {}).get("attacks"):
            j = row["result"]["success"].index(1)
            row["result"]["pred"][j] = (row["result"]["pred"][j] + 1) % 3
            lines[i] = json.dumps(row)
            break
    rows_file.write_text("\n".join(lines) + "\n")
    s = verify_run(run_dir)
    assert not s.ok and s.hold == s.claimed
    assert any(d["field"] == "pred" and d["sample"] == j for d in s.disagreements)


def test_experiment_takes_its_lock_before_writing_anything(tmp_path):
    assert_locked_before_writing("gradient", tmp_path)


@pytest.mark.parametrize("options, message", [
    ({"colour": "blue"}, "no option"),
    ({"goals": ["steal"]}, "unknown value 'steal'"),
    ({"norms": "l2,l7"}, "unknown value 'l7'"),
    ({"eps_l2": [-1.0]}, "must be >= 0"),
    ({"n": "many"}, "is not an int"),
])  # fmt: skip
def test_experiment_rejects_bad_options(options, message):
    with pytest.raises(BoxhackError, match=message):
        EXPERIMENT.configure(Settings(quick=True), options)


def test_summarise_without_rows_says_run_first(tmp_path):
    config = EXPERIMENT.configure(Settings(quick=True), {})
    with pytest.raises(BoxhackError, match="run the experiment first"):
        EXPERIMENT.summarise(config, [], RunContext(out_dir=tmp_path, models_root=tmp_path))


def test_describe_names_only_the_cells_that_ran():
    cells = [{"goal": "intrude", "norm": "l2", "attack": "gradient", "eps": None, "n": 4,
              "attacked": 4, "already": 0, "not_eligible": 0, "successes": 3, "rate": 0.75,
              "median": 0.5, "budget50": 0.4, "budget90": None, "ms": 12.0}]
    config = {"key": "mnist10", "n_clusters": 1, "tolerance": 0.0, "network": "mnist-mlp",
              "layer": "relu2"}
    text = PRESENTER.describe(config, {"cells": cells, "digits": {"intrude": 4},
                                       "timing": {"errors": 0}})
    assert [c["measured"][:12] for c in text["paper"]] == ["3/4 (75%) of"]
    assert "orthogonal" not in text["description"] and "pgd" not in text["description"]
    assert "intrude 4 (rejected)" in text["description"]


def test_curve_helpers():
    norms = np.array([0.1, 0.5, 0.2, 9.0])
    success = np.array([True, True, False, True])
    np.testing.assert_allclose(success_curve(norms, success, [0.0, 0.1, 0.3, 1.0, 10.0]),
                               [0.0, 0.25, 0.25, 0.5, 0.75])
    assert budget_at(norms, success, 0.5) == 0.5
    assert budget_at(norms, success, 1.0) == float("inf")
    fig = plot_robustness_curves({
        "l2": {"gradient": {"norms": norms.tolist(), "success": success.tolist()},
               "pgd": {"eps": [0.2, 1.0], "rate": [0.25, 0.5]}},
    }, title="t")
    assert len(fig.axes) == 1


def test_cli_attack_gradient(small, tmp_path, capsys):
    out, png = tmp_path / "rows.jsonl", tmp_path / "ba.png"
    rc = cli_main(["attack", "gradient", "--model", str(small["model_dir"]), "--monitor",
                   str(small["monitor"]), "--goal", "dos", "--norm", "l2", "--n", "6",
                   "--out", str(out), "--png", str(png)])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(r["goal"] == "dos" for r in rows)
    assert all(r["accepted0"] for r in rows)  # --n picks inputs the goal can start from
    ok = [r for r in rows if r["success"]]
    assert len(ok) >= 5 and all(r["pred"] == r["pred0"] and not r["accepted"] for r in ok)
    assert png.is_file() and png.stat().st_size > 1000
    assert "verified attacks" in capsys.readouterr().out
    rc = cli_main(["attack", "gradient", "--model", str(small["model_dir"]), "--monitor",
                   str(small["monitor"]), "--goal", "intrude", "--norm", "linf", "--mode",
                   "budget", "--eps", "0.05", "--n", "4", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n"] == 4 and doc["mode"] == "budget"
    if doc["median_linf"] is not None:
        assert doc["median_linf"] <= 0.05


@pytest.mark.parametrize("argv,match", [
    (["--goal", "intrude-target"], "needs --target"),
    (["--mode", "budget"], "epsilon"),
    (["--index", "99999"], "out of range"),
])  # fmt: skip
def test_cli_attack_gradient_errors(small, capsys, argv, match):
    rc = cli_main(["attack", "gradient", "--model", str(small["model_dir"]), "--monitor",
                   str(small["monitor"]), *argv])
    assert rc == 2
    assert match in capsys.readouterr().err
