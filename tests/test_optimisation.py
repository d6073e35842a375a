"""The paper's optimisation attacks: known answers on the XOR network, budgets that decide
results (and a safety net that only kills), both encodings, search spaces, bad input.

No test asserts that something took less than N seconds; "did not hang" bounds are generous
(these tests must pass on a machine whose cores other work keeps busy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from boxhack.attacks.optimisation import (
    ENCODINGS,
    NORMS,
    SOLVERS,
    n_variables,
    optimise_attack,
    solver_settings,
)
from boxhack.attacks.subspace import make_space
from boxhack.attacks.verify import verify
from boxhack.errors import BoxhackError
from boxhack.experiments.prepared import prepare_monitor
from boxhack.monitor import BoxMonitor

GRID = 801  # brute-force resolution on [0, 1]^2 (step 1/800)
NET = 300.0  # safety net of the solves here: far above their normal run time (< 1 s each)


@pytest.fixture(scope="module")
def xor(tmp_path_factory):
    root = tmp_path_factory.mktemp("xor-models")
    model, monitor, _info, dataset = prepare_monitor("xor", root)
    return model, monitor, dataset, root


def _grid_points() -> np.ndarray:
    t = np.linspace(0.0, 1.0, GRID, dtype=np.float32)
    return np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)


@pytest.fixture(scope="module")
def brute(xor):
    """The exact answer of every attack from every x0, up to the grid resolution."""
    model, monitor, _, _ = xor
    pts = _grid_points()
    pred, acc = monitor.predict(model, pts)
    return pts, pred, acc


def _nearest(brute, x0, goal, norm, c0):
    pts, pred, acc = brute
    ok = (pred == c0) & (~acc if goal == "dos" else acc)
    d = np.abs(pts[ok] - x0)
    dist = d.sum(1) if norm == "l1" else np.sqrt((d**2).sum(1))
    return float(dist.min())


@pytest.fixture(scope="module")
def cases(xor, brute):
    """One accepted test point near a box face (Attack 1) and one rejected point near a box
    (Attack 2), each with its brute-force optimal distance under L1 and L2."""
    model, monitor, dataset, _ = xor
    pred, acc = monitor.predict(model, dataset.x_test)
    out = {}
    # Attack 1: the accepted test point whose nearest rejected same-class point is 0.02-0.06 away
    for i in np.flatnonzero(acc):
        d = _nearest(brute, dataset.x_test[i], "dos", "l2", pred[i])
        if 0.02 < d < 0.06:
            out["dos"] = dataset.x_test[i]
            break
    # Attack 2: a rejected grid point whose nearest accepted same-class point is 0.02-0.06 away
    pts, gp, ga = brute
    rng = np.random.default_rng(0)
    for i in rng.permutation(np.flatnonzero(~ga)):
        d = _nearest(brute, pts[i], "intrude", "l2", gp[i])
        if 0.02 < d < 0.06:
            out["intrude"] = pts[i]
            break
    assert set(out) == {"dos", "intrude"}, "no suitable known-answer case on this XOR network"
    answers = {}
    for goal, x0 in out.items():
        c0 = int(monitor.predict(model, x0[None])[0][0])
        for norm in NORMS:
            answers[goal, norm] = _nearest(brute, x0, goal, norm, c0)
    return out, answers


@pytest.mark.parametrize("solver", SOLVERS)
def test_each_solver_finds_the_known_answer_on_xor(xor, cases, solver):
    model, monitor, _, _ = xor
    points, answers = cases
    step = 1.0 / (GRID - 1)
    for goal in ("dos", "intrude"):
        for norm in NORMS:
            x0 = points[goal][None]
            r = optimise_attack(model, monitor, x0, goal=goal, norm=norm, solver=solver,
                                time_limit=NET)  # fmt: skip
            best = answers[goal, norm]
            dist = float(r.l1[0] if norm == "l1" else r.l2[0])
            assert r.success[0], (goal, norm, r.info)
            assert r.info["outcome"] == ["success"]
            # a verified attack can never beat the brute-force optimum (up to the grid step),
            # and each solver gets close to it
            assert dist >= best - 2 * step, (goal, norm, dist, best)
            assert dist <= best + 0.02, (goal, norm, dist, best)
            # re-verification by hand: the returned point really meets the goal
            again = verify(model, monitor, x0, r.x, goal)
            assert again.success[0]
            assert r.info["nfev"][0] > 0 and r.info["wall_s"][0] > 0


def test_de_ends_normally_from_every_starting_point(xor):
    """DE asks for the objective of a population's feasible members only, which can be none
    at all: every solve must still end normally (it once crashed with 'map-like callable')."""
    from boxhack.experiments.solvers import _x0_of, starting_points

    model, monitor, dataset, root = xor
    pools = starting_points("xor", root, 4, seed=0)
    for goal in ("dos", "intrude"):
        x0 = np.stack([_x0_of(ref, dataset)[0] for ref in pools[goal]])
        for norm in NORMS:
            r = optimise_attack(model, monitor, x0, goal=goal, norm=norm, solver="de",
                                time_limit=NET, n_jobs=2)  # fmt: skip
            assert set(r.info["outcome"]) <= {"success", "failed"}, r.info["message"]
            assert r.success.sum() >= 3


def test_indicator_encoding_runs_and_gives_slsqp_no_gradient(xor, cases):
    """The paper-literal 0/1 constraints: piecewise constant, so SLSQP sees zero gradients and
    stops at once, while derivative-free DE still succeeds on the same case."""
    model, monitor, _, _ = xor
    points, answers = cases
    x0 = points["dos"][None]
    slsqp = optimise_attack(model, monitor, x0, goal="dos", solver="slsqp", encoding="indicator",
                            time_limit=NET)  # fmt: skip
    assert not slsqp.success[0]
    assert slsqp.info["outcome"] == ["failed"]
    assert slsqp.info["encoding"] == "indicator"
    assert slsqp.info["nfev"][0] < 50  # one finite-difference gradient, then it gives up
    de = optimise_attack(model, monitor, x0, goal="dos", solver="de", encoding="indicator",
                         time_limit=NET)  # fmt: skip
    assert de.success[0]
    assert de.l2[0] <= answers["dos", "l2"] + 0.02
    assert set(ENCODINGS) == {"margin", "indicator"}


def test_batch_and_parallel_jobs_keep_order(xor):
    model, monitor, dataset, _ = xor
    _, acc = monitor.predict(model, dataset.x_test)
    x0 = dataset.x_test[np.flatnonzero(acc)[:4]]
    r = optimise_attack(model, monitor, x0, goal="dos", solver="slsqp", n_jobs=2, time_limit=NET)
    assert len(r) == 4 and r.x.shape == x0.shape
    np.testing.assert_array_equal(r.x0, x0)
    assert len(r.info["outcome"]) == 4
    again = verify(model, monitor, x0, r.x, "dos")
    np.testing.assert_array_equal(again.success, r.success)
    assert r.success.sum() >= 3


def _wide_monitor(model, dataset):
    """Boxes that cover everything: Attack 1 is impossible, so no solver ever converges."""
    return BoxMonitor(n_clusters=1, tolerance=100.0).fit(model, ["relu2"], dataset.x_train,
                                                         dataset.y_train)  # fmt: skip


def test_an_evaluation_budget_decides_the_result_exactly(xor):
    """An impossible problem under an evaluation budget ends when the budget is spent, having
    evaluated exactly that many points (SLSQP evaluates one at a time), and two runs give the
    same numbers: the budget, not the clock, decides."""
    model, _, dataset, _ = xor
    wide = _wide_monitor(model, dataset)
    x0 = dataset.x_test[:1]
    runs = [optimise_attack(model, wide, x0, goal="dos", solver="slsqp", max_evals=150,
                            time_limit=NET, solver_options={"maxiter": 10**6, "ftol": 0.0})
            for _ in range(2)]  # fmt: skip
    for r in runs:
        assert r.info["outcome"] == ["failed"] and not r.success[0]
        assert r.info["stopped_by"] == ["eval-limit"]
        assert r.info["nfev"] == [150]
        assert r.info["budget"]["max_evals"] == 150
        assert r.info["budget"]["solver"]["maxiter"] == 10**6
    np.testing.assert_array_equal(runs[0].x, runs[1].x)
    # a vectorised solver stops before the batch that would overrun its budget
    de = optimise_attack(model, wide, x0, goal="dos", solver="de", max_evals=1000,
                         time_limit=NET, solver_options={"maxiter": 10**6, "tol": 0.0})  # fmt: skip
    assert de.info["stopped_by"] == ["eval-limit"]
    assert 1000 - 15 * 2 < de.info["nfev"][0] <= 1000  # generations of 15 x 2 points


def test_the_safety_net_kills_a_runaway_solve_and_reports_its_true_evaluations(xor):
    """A solve with an unbounded budget on an impossible problem runs until the safety net
    kills its process: the outcome says so ('timeout', stopped by the safety net) and the
    number of evaluations it really made comes back from the shared counter (not 0)."""
    model, _, dataset, _ = xor
    wide = _wide_monitor(model, dataset)
    x0 = dataset.x_test[:1]
    r = optimise_attack(model, wide, x0, goal="dos", solver="de", time_limit=3.0,
                        solver_options={"maxiter": 10**9, "tol": 0.0, "atol": 0.0})  # fmt: skip
    assert r.info["outcome"] == ["timeout"]
    assert r.info["stopped_by"] == ["safety-net"]
    assert "safety net" in r.info["message"][0]
    assert not r.success[0]
    assert r.info["wall_s"][0] >= 3.0
    # seconds of DE on a 2-D problem: thousands of evaluations, all counted
    assert r.info["nfev"][0] > 100


def test_budgets_are_written_per_solver_and_problem_size():
    assert solver_settings("slsqp", 784) == {"maxiter": 200}
    assert solver_settings("cobyla", 784)["maxiter"] == 7850
    assert solver_settings("shgo", 2)["n"] == 256
    assert solver_settings("shgo", 8) == {"sampling_method": "simplicial", "iters": 1,
                                          "local_iter": 5, "local_maxiter": 100}  # fmt: skip
    assert solver_settings("de", 8, {"maxiter": 7})["maxiter"] == 7
    # auxiliary L1 variables double the input space, except for SHGO and in subspaces
    assert n_variables("slsqp", "l1", "input", (1, 28, 28)) == 1568
    assert n_variables("shgo", "l1", "input", (2,)) == 2
    assert n_variables("de", "l1", "pca:8", (1, 28, 28)) == 8
    assert n_variables("de", "l2", "blocks:4", (1, 28, 28)) == 16


def test_starts_are_used_but_distance_is_to_x0(xor):
    """From a rejected x0 with an accepted start far away, the result is never farther than the
    start (the start itself is a candidate) and distances are measured to x0."""
    model, monitor, dataset, _ = xor
    pts = _grid_points()[::97]
    _pred, acc = monitor.predict(model, pts)
    x0 = pts[np.flatnonzero(~acc)[:1]]
    start = dataset.x_test[np.flatnonzero(monitor.predict(model, dataset.x_test)[1])[:1]]
    r = optimise_attack(model, monitor, x0, goal="intrude-any", solver="cobyla", starts=start,
                        time_limit=NET)  # fmt: skip
    assert r.success[0]
    np.testing.assert_array_equal(r.x0, x0)
    assert r.l2[0] <= np.linalg.norm(start - x0) + 1e-6


def test_combined_goal_changes_prediction_and_is_accepted(xor):
    model, monitor, dataset, _ = xor
    _pred, acc = monitor.predict(model, dataset.x_test)
    i = np.flatnonzero(acc)[:1]
    r = optimise_attack(model, monitor, dataset.x_test[i], goal="combined",
                        labels=dataset.y_test[i], solver="shgo", norm="l1", time_limit=NET)  # fmt: skip
    assert r.success[0]
    assert r.pred[0] != dataset.y_test[i][0] and r.accepted[0]


def test_pca_space_on_toy_and_in_process_mode(xor):
    model, monitor, dataset, _ = xor
    _, acc = monitor.predict(model, dataset.x_test)
    x0 = dataset.x_test[np.flatnonzero(acc)[:2]]
    r = optimise_attack(model, monitor, x0, goal="dos", solver="shgo", space="pca:2",
                        train_inputs=dataset.x_train, isolate=False, time_limit=NET)  # fmt: skip
    assert r.info["space"] == "pca:2"
    assert r.success.all()


def test_search_spaces_map_into_the_unit_box():
    rng = np.random.default_rng(0)
    train = rng.uniform(0, 1, (50, 1, 28, 28)).astype(np.float32)
    anchor = train[0]
    pca = make_space("pca:5", anchor, (1, 28, 28), train_inputs=train)
    assert pca.dim == 5
    np.testing.assert_allclose(pca.basis.T @ pca.basis, np.eye(5), atol=1e-8)
    np.testing.assert_allclose(pca.to_input_np(pca.initial())[0], anchor.reshape(-1), atol=1e-6)
    blocks = make_space("blocks:7", anchor, (1, 28, 28))
    assert blocks.dim == 49
    u = np.zeros(49)
    u[0] = 1.0  # brighten the top-left 4x4 block only
    x = blocks.to_input(torch.as_tensor(u[None])).numpy().reshape(28, 28)
    changed = np.argwhere(x != anchor.reshape(28, 28))
    assert changed.max(0).tolist() <= [3, 3] and (x >= 0).all() and (x <= 1).all()
    full = make_space("input", anchor, (1, 28, 28))
    assert full.dim == 784 and full.lower.min() == 0 and full.upper.max() == 1


def test_blocks_space_on_an_mnist_model():
    """An image model, a block subspace and DE: the image path works end to end."""
    from boxhack.data import load_dataset
    from boxhack.models import build_model

    torch.manual_seed(0)
    model = build_model("mnist-mlp", 2).eval()
    ds = load_dataset("mnist", "0,1")
    x = ds.x_train[:200]
    with torch.no_grad():
        labels = model(torch.as_tensor(x)).argmax(1).numpy()
    monitor = BoxMonitor(n_clusters=1, only_correct=False, n_classes=2).fit(
        model, ["relu2"], x, labels
    )
    _, acc = monitor.predict(model, ds.x_test)
    x0 = ds.x_test[np.flatnonzero(acc)[:1]]
    r = optimise_attack(model, monitor, x0, goal="dos", solver="de", space="blocks:4",
                        time_limit=NET, max_evals=20000)  # fmt: skip
    assert r.x.shape == (1, 1, 28, 28)
    assert r.info["outcome"][0] in ("success", "failed")
    assert r.success[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"solver": "nelder-mead"}, "unknown solver"),
        ({"norm": "linf"}, "unknown norm"),
        ({"encoding": "soft"}, "unknown encoding"),
        ({"goal": "flip"}, "unknown goal"),
        ({"space": "wavelets:3"}, "unknown search space"),
        ({"space": "pca:2"}, "train_inputs"),
        ({"space": "blocks:2"}, "image inputs"),
        ({"time_limit": -1}, "time_limit"),
        ({"n_jobs": 0}, "n_jobs"),
    ],
)
def test_bad_names_and_settings(xor, kwargs, match):
    model, monitor, dataset, _ = xor
    _, acc = monitor.predict(model, dataset.x_test)
    x0 = dataset.x_test[np.flatnonzero(acc)[:1]]
    with pytest.raises(BoxhackError, match=match):
        optimise_attack(model, monitor, x0, **kwargs)


def test_bad_inputs(xor):
    model, monitor, dataset, _ = xor
    _pred, acc = monitor.predict(model, dataset.x_test)
    accepted = dataset.x_test[np.flatnonzero(acc)[:2]]
    pts = _grid_points()[::97]
    _, gacc = monitor.predict(model, pts)
    rejected = pts[np.flatnonzero(~gacc)[:2]]
    with pytest.raises(BoxhackError, match=r"\[0, 1\]"):
        optimise_attack(model, monitor, accepted * 3)
    with pytest.raises(BoxhackError, match="NaN"):
        optimise_attack(model, monitor, np.full((1, 2), np.nan, np.float32))
    with pytest.raises(BoxhackError, match="shape"):
        optimise_attack(model, monitor, np.full((2, 3), 0.5, np.float32))
    with pytest.raises(BoxhackError, match="shape"):
        optimise_attack(model, monitor, accepted, input_shape=(3,))
    with pytest.raises(BoxhackError, match="already rejects"):
        optimise_attack(model, monitor, np.concatenate([accepted, rejected]), goal="dos")
    with pytest.raises(BoxhackError, match="already accepts"):
        optimise_attack(model, monitor, accepted, goal="intrude")
    with pytest.raises(BoxhackError, match="starts"):
        optimise_attack(model, monitor, accepted, starts=accepted[:1])
    # a single input (not a batch) is fine
    r = optimise_attack(model, monitor, accepted[0], solver="slsqp", time_limit=NET)
    assert r.x0.shape == (1, 2)


def test_cli_attack_optimise(xor, tmp_path, capsys):
    from boxhack.cli import main
    from boxhack.experiments.prepared import monitor_path

    _, _, _, root = xor
    out = tmp_path / "result.json"
    png = tmp_path / "after.png"
    code = main([
        "attack", "optimise", "--model", str(root / "models" / "xor"),
        "--monitor", str(monitor_path(root, "xor", 1, 0.0, "relu2")),
        "--attack", "1", "--norm", "l2", "--solver", "slsqp", "--n", "2",
        "--maxiter", "50", "--out", str(out), "--png", str(png), "--json",
    ])  # fmt: skip
    assert code == 0
    doc = json.loads(capsys.readouterr().out)  # --json: the summary; --out: JSONL rows
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert doc["settings"]["solver"] == "slsqp" and len(rows) == 2 == doc["n"]
    assert doc["settings"]["budget"]["solver"] == {"maxiter": 50}
    assert all(r["outcome"] in ("success", "failed") for r in rows)
    assert png.stat().st_size > 1000
    with pytest.raises(SystemExit):  # argparse rejects an unknown solver
        main(["attack", "optimise", "--model", str(root / "models" / "xor"),
              "--monitor", str(monitor_path(root, "xor", 1, 0.0, "relu2")), "--solver", "bogus"])
    code = main(["attack", "optimise", "--model", str(root / "models" / "xor"),
                 "--monitor", str(monitor_path(root, "xor", 1, 0.0, "relu2")),
                 "--attack", "2", "--index", "0"])  # fmt: skip
    assert code == 2  # test input 0 is accepted: Attack 2 cannot start there
    assert "already accepts" in capsys.readouterr().err
