"""Experiment ``combined`` (paper section 4.2, figure 9) through the experiment contract, and its
presenter (figures and sentences), on the small 3-class MNIST network."""

import json

import numpy as np
import pytest
from stored_attacks import assert_locked_before_writing, recheck_rows, run_and_present

from boxhack.errors import BoxhackError
from boxhack.experiments.combined import EXPERIMENT
from boxhack.experiments.spec import RunContext, Settings
from boxhack.report.combined import PRESENTER


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from boxhack.experiments.prepared import prepare_monitor

    root = tmp_path_factory.mktemp("combined-exp-models")
    _, _, _, dataset = prepare_monitor("mnist3", root, n_clusters=1, tolerance=0.0)
    return {"root": root, "dataset": dataset}


def test_experiment_quick_rows_summary_figures(small, tmp_path):
    summary, config, rows, figures, text = run_and_present(
        "combined", tmp_path, models_root=small["root"], key="mnist3", n=12, chunk=6,
        eps=0.15)  # fmt: skip
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    counts = summary["counts"]
    assert counts["samples"] == 12 and counts["attacked"] == 12
    assert counts["success"] == sum(sum(r["result"]["final"]["success"]) for r in rows)
    assert counts["flipped_accepted"] <= counts["success"]
    assert counts["flipped_accepted"] + counts["repaired"] == counts["success"]
    assert text["paper"][0]["measured"].startswith(f"{counts['success']}/12")
    json.dumps(summary)  # data only: the figures and sentences are the presenter's
    assert not {"figures", "paper", "description"} & set(summary)
    # a seeded, class-balanced draw of correctly classified digits (3 classes: 4 each)
    ds = small["dataset"]
    assert np.bincount(ds.y_test[config["indices"]], minlength=3).tolist() == [4, 4, 4]
    # stored exactly: stage 1 within its budget, the final points; all hold when re-checked
    for r in rows:
        budgets = [rec["budget"] for rec in r["result"]["attacks"]]
        assert {"norm": "linf", "eps": 0.15} in budgets and None in budgets
    total, n_records = recheck_rows(tmp_path, "combined")
    assert n_records == 4 and total.claimed > 0 and total.hold == total.claimed
    said = json.dumps([text, figures, summary["tables"][0]["title"]])
    assert "fgsm (Linf 0.15)" in said and "10-class" not in said and "mnist3 MLP" in said
    paths = [f["path"] for f in figures]
    assert paths[0] == "figure9.png" and "with the boxes of the monitor" in figures[0]["caption"]
    for p in paths:
        assert (tmp_path / "combined" / p).read_bytes()[:4] == b"\x89PNG"
    ctx = RunContext(out_dir=tmp_path, models_root=small["root"])
    assert EXPERIMENT.summarise(config, rows, ctx)["tables"] == summary["tables"]


def test_experiment_takes_its_lock_before_writing_anything(tmp_path):
    assert_locked_before_writing("combined", tmp_path)


@pytest.mark.parametrize("options, message", [
    ({"colour": "red"}, "no option"),
    ({"repair": "magic"}, "unknown value 'magic'"),
    ({"space": "input"}, "for the SciPy repairs"),
    ({"eps": -1.0}, "must be >= 0"),
    ({"attack": "nope"}, "unknown attack"),
])  # fmt: skip
def test_bad_options_clear_errors(options, message):
    with pytest.raises(BoxhackError, match=message):
        EXPERIMENT.configure(Settings(quick=True), options)


def test_configure_budgets_and_safety_net():
    quick = EXPERIMENT.configure(Settings(quick=True), {})
    assert quick["max_evals"] == 2000 and quick["time_limit"] == 600.0
    assert quick["repair_options"] == {} and quick["fallback_norm"] == "l2"
    shgo = EXPERIMENT.configure(Settings(solve_timeout=30.0), {"repair": "shgo",
                                                               "fallback_norm": "none"})
    assert shgo["max_evals"] == 5000 and shgo["time_limit"] == 30.0
    assert shgo["repair_options"] == {"space": "pca:20"} and shgo["fallback_norm"] is None
    own = EXPERIMENT.configure(Settings(solve_timeout=30.0),
                               {"repair": "slsqp", "time_limit": 5, "space": "input"})
    assert own["time_limit"] == 5.0 and own["repair_options"] == {"space": "input"}


def test_describe_names_only_what_ran():
    counts = {"samples": 10, "attacked": 9, "already": 1, "flipped": 6, "flipped_accepted": 4,
              "flipped_rejected": 2, "not_flipped": 3, "repaired": 0, "repaired_rejected": 0,
              "repaired_not_flipped": 0, "fallback": 0, "success": 4, "success_of_flipped": 4}
    config = {"attack": "fgsm", "epsilon": 0.1, "repair": "none", "norm": "l1",
              "fallback_norm": "l2", "key": "mnist3", "n_clusters": 1, "tolerance": 0.0,
              "max_evals": 2000, "network": "mnist-mlp", "layer": "relu2"}
    text = PRESENTER.describe(config, {"counts": counts, "timing": {"errors": 0}})
    said = json.dumps(text)
    assert "no repair" in text["description"] and "SHGO" not in text["description"]
    assert "gradient" not in said and "fallback" not in said and "evaluations" not in said
    assert text["paper"][0]["note"] == "5 of 9 sample(s) stayed unsolved."
    assert text["paper"][0]["measured"].startswith("4/9 = 44.4% misclassified and accepted")


def test_cli_experiment_help(capsys):
    from boxhack.cli import main

    for name in ("adversarial", "combined"):
        with pytest.raises(SystemExit) as exc:
            main(["experiment", name, "--help"])
        assert exc.value.code == 0
    assert "--repair" in capsys.readouterr().out
