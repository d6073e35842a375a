"""The solver experiment (paper figures 5-7): rows, summary, figures, resumption, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from boxhack.errors import BoxhackError
from boxhack.experiments import solvers
from boxhack.infra.jsonl import read_rows


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    return tmp_path_factory.mktemp("solver-models")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, models_root):
    """XOR and MNIST 0-1 with every solver, problem and encoding (1 starting point each, quick
    caps) and one figure-6 digit: every figure is drawn."""
    out = tmp_path_factory.mktemp("solver-run")
    summary = solvers.run(
        out, quick=True, n_jobs=2, models_root=models_root, progress=False,
        networks=["xor", "mnist2"], n_samples=1, n_fig6=1,
    )  # fmt: skip
    return out, summary


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
        assert r["outcome"] in ("success", "failed", "timeout", "out-of-memory", "error")
        assert r["success"] == (r["outcome"] == "success")
        assert len(r["feat"]) == len(r["feat0"]) > 0
        if r["success"]:
            assert r["l2"] > 0
    # toys carry their inputs; the MNIST starting point 0 carries images for the gallery
    assert all(len(r["x"]) == 2 for r in grid if r["network"] == "xor")
    assert any(len(r.get("x", [])) == 784 for r in grid if r["network"] == "mnist2")
    # margin-encoded SLSQP solves the XOR problems; indicator-encoded SLSQP never does
    xor = [r for r in grid if r["network"] == "xor"]
    assert sum(r["success"] for r in xor if r["solver"] == "slsqp" and r["encoding"] == "margin") >= 3
    assert not any(r["success"] for r in xor if r["solver"] == "slsqp" and r["encoding"] == "indicator")

    saved = json.loads((base / "summary.json").read_text())
    assert saved["name"] == "solvers" and saved["title"] == solvers.TITLE
    for key in ("description", "config", "tables", "figures", "paper", "timing"):
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


def test_success_counts_match_rows(small_run):
    out, summary = small_run
    rows = [r["result"] for r in read_rows(out / solvers.NAME / "rows.jsonl")]
    table = summary["tables"][0]  # margin encoding
    cols = table["columns"]
    for row in table["rows"]:
        net, problem = row[0], row[1]
        goal = "dos" if problem.startswith("Attack 1") else "intrude"
        norm = problem.split(", ")[1].lower()
        for solver, cell in zip(cols[2:], row[2:]):
            rs = [r for r in rows if r["part"] == "grid" and r["network"] == net and
                  r["goal"] == goal and r["norm"] == norm and r["solver"] == solver and
                  r["encoding"] == "margin"]  # fmt: skip
            assert cell == f"{sum(r['success'] for r in rs)}/{len(rs)}"


def test_rerun_resumes_and_summarise_is_repeatable(small_run, models_root):
    out, summary = small_run
    path = out / solvers.NAME / "rows.jsonl"
    before = path.read_bytes()
    again = solvers.run(out, quick=True, n_jobs=1, models_root=models_root, progress=False,
                        networks=["xor", "mnist2"], n_samples=1, n_fig6=1)  # fmt: skip
    assert path.read_bytes() == before  # nothing re-run
    assert again["tables"] == summary["tables"]
    assert solvers.summarise(out)["tables"] == summary["tables"]


def test_starting_points_are_of_the_right_kind(small_run, models_root):
    from boxhack.experiments.zoo import prepare_monitor

    model, monitor, _, dataset = prepare_monitor("xor", models_root)
    pools = solvers.starting_points("xor", models_root, 5, seed=0)
    assert pools == solvers.starting_points("xor", models_root, 5, seed=0)  # deterministic
    x_dos = np.stack([solvers._x0_of(ref, dataset)[0] for ref in pools["dos"]])
    x_int = np.stack([solvers._x0_of(ref, dataset)[0] for ref in pools["intrude"]])
    assert monitor.predict(model, x_dos)[1].all()
    assert not monitor.predict(model, x_int)[1].any()


def test_bad_options(tmp_path):
    with pytest.raises(BoxhackError, match="unknown network"):
        solvers.make_config(networks=["mnist7"], out_dir=tmp_path)
    with pytest.raises(BoxhackError, match="unknown solver"):
        solvers.make_config(solvers=["newton"], out_dir=tmp_path)
    with pytest.raises(BoxhackError, match="unknown cap"):
        solvers.make_config(caps={"gpu": 3}, out_dir=tmp_path)
    with pytest.raises(BoxhackError, match="solve_timeout"):
        solvers.make_config(solve_timeout=-1, out_dir=tmp_path)
    with pytest.raises(BoxhackError, match="unknown option"):
        solvers.run(tmp_path, bogus=1)
    with pytest.raises(BoxhackError, match="config.json"):
        solvers.summarise(tmp_path / "nothing")
    config = solvers.make_config(solve_timeout=30, out_dir=tmp_path)
    assert min(config["caps"].values()) >= 30
    assert config["n_samples"] == 20 and config["networks"] == list(solvers.NETWORKS)


def test_cli_experiment_solvers(tmp_path, models_root, capsys):
    from boxhack.cli import main

    code = main([
        "experiment", "solvers", "--out", str(tmp_path), "--models-root", str(models_root),
        "--networks", "xor", "--solvers", "slsqp,de", "--encodings", "margin", "--n", "1",
        "--jobs", "1", "--no-progress",
    ])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "Successful attacks" in text and "summary:" in text
    rows = read_rows(tmp_path / "solvers" / "rows.jsonl")
    assert len(rows) == 4 * 2
