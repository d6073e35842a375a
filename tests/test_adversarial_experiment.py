"""Experiment ``adversarial`` (paper figure 8) through the experiment contract, and its
presenter (figures and sentences), on the small 3-class MNIST network."""

import json

import numpy as np
import pytest
from stored_attacks import assert_locked_before_writing, recheck_rows, run_and_present

from boxhack.errors import BoxhackError
from boxhack.experiments.adversarial import EXPERIMENT
from boxhack.experiments.spec import RunContext, Settings
from boxhack.infra.jsonl import read_rows
from boxhack.report.adversarial import PRESENTER


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from boxhack.experiments.prepared import prepare_monitor

    root = tmp_path_factory.mktemp("adv-exp-models")
    _, _, _, dataset = prepare_monitor("mnist3", root, n_clusters=1, tolerance=0.0)
    return {"root": root, "dataset": dataset}


OPTS = {"key": "mnist3", "n": 6, "attacks": ["fgsm", "hsj"], "clusters": [1, 2],
        "tolerances": [0.0, 0.25]}  # fmt: skip


def test_experiment_quick_rows_summary_figures(small, tmp_path):
    summary, config, rows, figures, text = run_and_present(
        "adversarial", tmp_path, models_root=small["root"], **OPTS)
    exp_dir = tmp_path / "adversarial"
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert summary["name"] == "adversarial" and summary["timing"]["jobs"] == 4
    table = summary["tables"][0]
    assert "k1-tol0" in table["columns"] and "k2-tol0.25" in table["columns"]
    assert len(table["rows"]) == 4  # 2 attacks x 2 budgets, criterion misclassify
    for row in table["rows"]:  # tolerance only adds acceptances; nothing exceeds the flips
        cols = dict(zip(table["columns"], row))
        assert cols["k1-tol0.25"] >= cols["k1-tol0"] and cols["flipped"] >= cols["k1-tol0.25"]
    # the summary is data: JSON, no figures, no sentences (those are the presenter's)
    json.dumps(summary)
    assert not {"figures", "paper", "description"} & set(summary)
    assert [f["path"] for f in figures] == ["figure8.png", "figure8_headline.png"]
    for fig in figures:
        assert (exp_dir / fig["path"]).read_bytes()[:4] == b"\x89PNG" and fig["caption"]
    assert text["paper"] and text["description"] and text["notes"] == []
    # the digits: a seeded class-balanced draw of correctly classified ones (3 classes: 2 each)
    ds = small["dataset"]
    assert sorted(np.bincount(ds.y_test[config["indices"]], minlength=3)) == [2, 2, 2]
    # the text names only what ran: quick L2 budgets are 1 and 3, monitors k=1,2 x tol 0, 0.25
    said = json.dumps([text, figures])
    assert "L2 3" in said and "L2 2" not in said and "k=3" not in said and "k3" not in said
    assert "k=2" in said and "k1-tol0.1" not in said and "pgd" not in said
    assert "fgsm, hsj" in text["description"] and "mnist3 MLP" in text["description"]
    # every stored success holds when re-checked with the model and target monitor it names
    total, n_records = recheck_rows(tmp_path, "adversarial")
    assert n_records == sum(1 for r in rows for pe in r["result"]["per_eps"] if any(pe["success"]))
    assert total.claimed == sum(sum(pe["success"]) for r in rows for pe in r["result"]["per_eps"])
    assert total.claimed > 0 and total.hold == total.claimed
    # summarised again from the rows alone: the same data
    ctx = RunContext(out_dir=tmp_path, models_root=small["root"])
    again = EXPERIMENT.summarise(config, rows, ctx)
    assert again["tables"][0] == table and again["cells"] == summary["cells"]
    # resumed: nothing re-run
    run_and_present("adversarial", tmp_path, models_root=small["root"], **OPTS)
    assert len(read_rows(exp_dir / "rows.jsonl")) == 4


def test_experiment_takes_its_lock_before_writing_anything(tmp_path):
    assert_locked_before_writing("adversarial", tmp_path)


@pytest.mark.parametrize("options, message", [
    ({"colour": "red"}, "no option"),
    ({"attacks": ["fgsmx"]}, "unknown attack 'fgsmx'"),
    ({"criteria": ["evade"]}, "unknown value 'evade'"),
    ({"n": 0}, "must be >= 1"),
    ({"eps_l2": "1,x"}, "'x' is not a float"),
])  # fmt: skip
def test_bad_options_clear_errors(options, message):
    with pytest.raises(BoxhackError, match=message):
        EXPERIMENT.configure(Settings(quick=True), options)


def test_configure_defaults_and_comma_lists():
    full = EXPERIMENT.configure(Settings(), {})
    assert full["n"] == 100 and full["clusters"] == [1, 2, 3] and full["mode"] == "full"
    assert full["attack_params"]["boundary"] == {"steps": 8000}
    quick = EXPERIMENT.configure(Settings(quick=True, seed=3),
                                 {"attacks": "pgd,hopskipjump", "eps_linf": "0.2"})
    assert quick["attacks"] == ["pgd-linf", "hsj"] and quick["eps"]["linf"] == [0.2]
    assert quick["seed"] == 3 and quick["attack_params"] == {}


def _cell(attack, eps, flipped, accepted, norm="linf", criterion="misclassify"):
    return {"attack": attack, "norm": norm, "kind": "fixed", "criterion": criterion,
            "epsilon": eps, "flipped": flipped, "accepted": accepted, "attacked": 10,
            "already": 0, "n": 10}  # fmt: skip


def test_describe_ties_are_ties():
    """Half accepted is neither 'most accepted' nor 'most rejected'; equal means are no
    difference; only the monitors and attacks that ran are named."""
    monitors = ["k1-tol0", "k2-tol0"]
    summary = {"cells": [_cell("fgsm", 0.1, 4, {"k1-tol0": 2, "k2-tol0": 2}),
                         _cell("pgd-linf", 0.1, 6, {"k1-tol0": 3, "k2-tol0": 3})],
               "monitors": monitors, "default_monitor": "k1-tol0", "n": 10, "attacked": 10,
               "already": 0}  # fmt: skip
    config = {"key": "mnist3", "eps": {"linf": [0.1]}, "network": "mnist-mlp", "layer": "relu2"}
    text = PRESENTER.describe(config, summary)
    claim, clusters = text["paper"]  # one tolerance only: no tolerance claim
    assert claim["note"].startswith("Undecided: exactly half")
    assert "accepted share 50%-50%" in claim["measured"]
    assert clusters["note"].startswith("No difference measured")
    assert "combined" not in text["description"] and "k=3" not in json.dumps(text)
    summary["cells"][0]["accepted"]["k1-tol0"] = 3  # fgsm: 3/4 accepted, pgd: 3/6
    note = PRESENTER.describe(config, summary)["paper"][0]["note"]
    assert note.startswith("Partly: most flipped samples are accepted for 1 of 2 attacks, "
                           "exactly half for 1.")
