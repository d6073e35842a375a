"""Foolbox adapter, monitor goal as a Foolbox criterion, decision-only attacker and ``attack adversarial``
CLI, on the small 3-class MNIST network (the ``adversarial`` experiment: test_adversarial_experiment.py)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from boxhack.attacks.adversarial import (
    ATTACKS,
    MonitorMisclassification,
    flip_counts,
    get_spec,
    run_adversarial,
    run_adversarial_sweep,
)
from boxhack.attacks.decision import DecisionOnlyAttack, decision_attack, find_starting_points
from boxhack.attacks.records import norm_of, within_budget
from boxhack.errors import BoxhackError


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from boxhack.experiments.prepared import prepare_monitor

    root = tmp_path_factory.mktemp("adv-models")
    model, monitor, info, dataset = prepare_monitor("mnist3", root, n_clusters=1, tolerance=0.0)
    from boxhack.experiments.adversarial import select_correct

    idx = select_correct(model, dataset, 24, seed=0)  # correctly classified, 8 per class
    idx = np.random.default_rng(0).permutation(idx)  # classes mixed in any prefix
    pool = np.random.default_rng(1).permutation(len(dataset.y_train))[:300]
    return {"root": root, "model": model, "monitor": monitor, "info": info, "dataset": dataset,
            "x": dataset.x_test[idx], "y": dataset.y_test[idx], "pool": dataset.x_train[pool]}


def recheck(model, monitor, result, labels):
    """Independent re-check of a result: the monitor on the returned inputs, one at a time."""
    pred = np.array([monitor.predict(model, result.x[i : i + 1])[0][0] for i in range(len(result))])
    acc = np.array([monitor.predict(model, result.x[i : i + 1])[1][0] for i in range(len(result))])
    return pred, acc, (pred != labels)


def test_fgsm_every_verdict_is_reverified(small):
    m, mon, x, y = small["model"], small["monitor"], small["x"], small["y"]
    r = run_adversarial(m, mon, x, y, "fgsm", 0.2)
    assert r.goal == "misclassify" and len(r) == len(y)
    pred, acc = mon.predict(m, r.x)
    assert np.array_equal(pred, r.pred) and np.array_equal(acc, r.accepted)
    with torch.no_grad():
        assert np.array_equal(m(torch.as_tensor(r.x)).argmax(1).numpy(), r.pred)
    assert np.array_equal(r.success, r.pred != y)
    assert r.success.sum() > 0 and within_budget(r.x0, r.x, {"norm": "linf", "eps": 0.2}).all()
    assert r.x.min() >= 0 and r.x.max() <= 1
    counts = flip_counts(r)
    assert counts["flipped_and_accepted"] == int(((r.pred != y) & r.accepted).sum())
    assert r.info["attack"] == "fgsm" and r.info["norm"] == "linf" and r.info["epsilon"] == 0.2


@pytest.mark.parametrize("attack,eps,goal", [
    ("fgsm", 0.1, "misclassify"), ("fgsm", 0.1, "combined"), ("pgd-linf", 0.1, "misclassify"),
    ("deepfool-linf", 0.05, "misclassify"), ("fgm-l2", 1.0, "misclassify"),
    ("pgd-l2", 1.0, "combined"), ("deepfool-l2", 0.5, "misclassify"), ("cw-l2", 0.5, "combined"),
])  # fmt: skip
def test_budgets_hold_exactly_in_float32(small, attack, eps, goal):
    """Foolbox computes x0 + float32(0.1), which is 0.10000000149 from x0: every budgeted
    Foolbox result is stepped back inside the budget as `boxhack verify` measures it."""
    m, mon, x, y = small["model"], small["monitor"], small["x"], small["y"]
    r = run_adversarial(m, mon, x, y, attack, eps, goal=goal, budget="quick")
    norm = get_spec(attack).norm
    assert r.info["budget"] == {"norm": norm, "eps": eps}
    assert within_budget(r.x0, r.x, r.info["budget"]).all()
    assert r.x.min() >= 0 and r.x.max() <= 1
    if attack in ("fgsm", "pgd-linf"):  # the budget is used, up to the last float32 step
        assert norm_of(r.x0, r.x, norm).max() > eps - 1e-7


def test_decision_attack_budget_holds_exactly(small):
    m, mon, x, y = small["model"], small["monitor"], small["x"][:8], small["y"][:8]
    r = decision_attack(m, mon, x, y, method="hsj", epsilon=1.0, budget="quick", steps=1,
                        max_gradient_eval_steps=10, pool=small["pool"])
    assert r.info["budget"] == {"norm": "l2", "eps": 1.0}
    assert within_budget(r.x0, r.x, r.info["budget"]).all()


def test_combined_goal_with_gradient_attack(small):
    m, mon, x, y = small["model"], small["monitor"], small["x"], small["y"]
    plain = run_adversarial(m, mon, x, y, "fgsm", 0.3)
    comb = run_adversarial(m, mon, x, y, "fgsm", 0.3, goal="combined")
    assert comb.goal == "combined"
    # every success is misclassified AND accepted, also when each input is judged alone
    assert np.array_equal(comb.success, (comb.pred != y) & comb.accepted)
    _, acc_alone, flipped_alone = recheck(m, mon, comb, y)
    assert (acc_alone & flipped_alone)[comb.success].all()
    # FGSM is deterministic and the budget search includes the full budget: never worse
    assert comb.success.sum() >= ((plain.pred != y) & plain.accepted).sum()
    assert within_budget(comb.x0, comb.x, {"norm": "linf", "eps": 0.3}).all()
    assert all(0 < e <= 0.3 + 1e-9 for e in comb.info["eps_used"])


def test_combined_goal_is_a_foolbox_misclassification(small):
    import eagerpy as ep
    import foolbox as fb

    m, mon, x, y = small["model"], small["monitor"], small["x"], small["y"]
    crit = MonitorMisclassification(y, m, mon)
    assert isinstance(crit, fb.criteria.Misclassification)
    xt = torch.as_tensor(x)
    out = crit(xt, m(xt))  # raw torch in, raw torch out
    assert isinstance(out, torch.Tensor) and not out.any()  # clean inputs are classified right
    wrong = torch.as_tensor((y + 1) % 3)
    crit2 = MonitorMisclassification(wrong, m, mon)
    pred, acc = mon.predict(m, x)
    got = crit2(ep.astensor(xt), ep.astensor(m(xt))).raw.numpy()
    assert np.array_equal(got, (pred != wrong.numpy()) & acc)
    assert crit2.queries == len(x)
    # gradient attacks accept it (a plain Criterion subclass is refused)
    fmodel = fb.PyTorchModel(m.eval(), bounds=(0, 1))
    _, _, success = fb.attacks.LinfPGD(steps=5)(fmodel, xt, crit, epsilons=0.3)
    assert success.shape == (len(x),)


@pytest.mark.parametrize("method", ["hsj", "boundary"])
def test_decision_only_attacker_combined(small, method):
    m, mon, x, y = small["model"], small["monitor"], small["x"], small["y"]
    kwargs = {"steps": 2, "max_gradient_eval_steps": 20} if method == "hsj" else {"steps": 30}
    r = decision_attack(m, mon, x[:10], y[:10], method=method, budget="quick",
                        pool=small["pool"], **kwargs)
    has = np.asarray(r.info["has_start"])
    assert has.sum() >= 8
    # every input with a start ends misclassified and accepted, in the batch and alone
    assert r.success[has].all() and not r.success[~has].any()
    _, acc_alone, flipped_alone = recheck(m, mon, r, y[:10])
    assert (acc_alone & flipped_alone)[has].all()
    assert r.info["queries"] >= r.info["pool_queries"] == 300
    # it moved towards the original: closer than the nearest training image meeting the goal
    pool = small["pool"]
    pp, pa = mon.predict(m, pool)
    d = np.sqrt(((pool[None] - x[:10][:, None]) ** 2).reshape(10, 300, -1).sum(-1))
    d[(pp[None, :] == y[:10, None]) | ~pa[None, :]] = np.inf
    assert (r.l2[has] <= d.min(1)[has] + 1e-4).all()


def test_decision_only_wrapper_and_clipping(small):
    m, mon, x, y = small["model"], small["monitor"], small["x"][:8], small["y"][:8]
    r = DecisionOnlyAttack("hsj", epsilon=1.0, budget="quick", steps=1,
                           max_gradient_eval_steps=10)(m, mon, x, torch.as_tensor(y))
    assert within_budget(r.x0, r.x, {"norm": "l2", "eps": 1.0}).all() and r.goal == "combined"


def test_starting_points_meet_the_goal(small):
    m, mon, x, y = small["model"], small["monitor"], small["x"][:12], small["y"][:12]
    starts, found, info = find_starting_points(m, mon, x, y, method="dataset")  # pool = inputs
    assert found.sum() >= 10 and info["pool_queries"] == 12
    pred, acc = mon.predict(m, starts)
    assert ((pred != y) & acc)[found].all()
    # the pool is the batch itself: an input's own image is never its start
    for i in np.flatnonzero(found):
        assert not np.array_equal(starts[i], x[i])


def test_minimal_attack_sweep_clips_one_run(small):
    m, mon, x, y = small["model"], small["monitor"], small["x"][:12], small["y"][:12]
    rs = run_adversarial_sweep(m, mon, x, y, "deepfool-l2", [0.5, 2.0, None], budget="quick")
    assert [r.info["epsilon"] for r in rs] == [0.5, 2.0, None]
    assert within_budget(rs[0].x0, rs[0].x, {"norm": "l2", "eps": 0.5}).all()
    assert within_budget(rs[1].x0, rs[1].x, {"norm": "l2", "eps": 2.0}).all()
    assert rs[0].success.sum() <= rs[1].success.sum() <= rs[2].success.sum()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"inputs": np.zeros((0, 1, 28, 28), np.float32)}, "empty"),
        ({"labels": np.array([0, 1])}, "labels"),
        ({"epsilon": -0.1}, ">= 0"),
        ({"epsilon": float("nan")}, "finite"),
        ({"attack": "fgsmx"}, "unknown attack 'fgsmx'"),
        ({"goal": "evade"}, "unknown goal 'evade'"),
        ({"goal": "dos"}, "unknown goal 'dos' for a Foolbox attack"),
        ({"epsilon": None}, "fixed-budget"),
        ({"steps": 3}, "no parameter 'steps'"),
        ({"inputs": np.full((3, 1, 28, 28), 2.0, np.float32)}, "[0, 1]"),
        ({"labels": np.array([0, 1, 7])}, "0..2"),
        ({"pool": np.zeros((2, 1, 28, 28), np.float32)}, "decision attacks"),
    ],
)
def test_bad_input_clear_errors(small, kwargs, message):
    args = {"inputs": small["x"][:3], "labels": small["y"][:3], "attack": "fgsm", "epsilon": 0.1}
    args.update(kwargs)
    inputs, labels = args.pop("inputs"), args.pop("labels")
    with pytest.raises(BoxhackError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace(".", r"\.")):
        run_adversarial(small["model"], small["monitor"], inputs, labels, **args)


def test_criterion_is_a_deprecated_spelling_of_goal(small):
    m, mon, x, y = small["model"], small["monitor"], small["x"][:6], small["y"][:6]
    with pytest.warns(DeprecationWarning, match="goal="):
        old = run_adversarial(m, mon, x, y, "fgsm", 0.2, criterion="combined")
    new = run_adversarial(m, mon, x, y, "fgsm", 0.2, goal="combined")
    assert old.goal == new.goal == "combined" and np.array_equal(old.x, new.x)
    with pytest.raises(BoxhackError, match="disagree"), pytest.warns(DeprecationWarning):
        run_adversarial(m, mon, x, y, "fgsm", 0.2, goal="combined", criterion="misclassify")


def test_registry_and_aliases():
    assert {"fgsm", "pgd-linf", "pgd-l2", "deepfool-l2", "cw-l2", "boundary", "hsj"} <= set(ATTACKS)
    assert get_spec("PGD").name == "pgd-linf" and get_spec("hopskipjump").name == "hsj"
    assert {s.kind for s in ATTACKS.values()} == {"fixed", "minimal", "decision"}


def test_import_is_quiet_under_W_error():
    code = "import boxhack.attacks.adversarial, boxhack.attacks.decision; print('ok')"
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok" and proc.stderr == ""


def test_cli_attack_adversarial(small, tmp_path, capsys):
    from boxhack.cli import main

    model_dir = small["root"] / "models" / "mnist3"
    monitor = next((small["root"] / "monitors").glob("mnist3-*-k1-tol0.npz"))
    out = tmp_path / "rows.jsonl"
    code = main(["attack", "adversarial", "--model", str(model_dir), "--monitor", str(monitor),
                 "--method", "fgsm", "--eps", "0.2", "--n", "10", "--out", str(out),
                 "--png", str(tmp_path / "x.png"), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 10 == summary["n"]
    assert summary["flipped"] == sum(r["flipped"] for r in rows)
    assert summary["flipped_and_accepted"] == sum(r["flipped"] and r["accepted"] for r in rows)
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["attack", "adversarial", "--model", str(model_dir), "--monitor", str(monitor),
                 "--method", "cw", "--param", "nope=1", "--n", "2"]) == 2
    assert "no parameter 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["attack", "adversarial", "--model", str(model_dir), "--monitor", str(monitor),
              "--eps", "-1"])
