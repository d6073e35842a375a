"""The combined attack (adversarial attack, then repair to pass the monitor), on the small 3-class
MNIST network (its experiment, paper figure 9: test_combined_experiment.py)."""

import numpy as np
import pytest

from boxhack.attacks.combined import CombinedResult, combined_attack
from boxhack.attacks.records import within_budget
from boxhack.errors import BoxhackError


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from boxhack.experiments.adversarial import select_correct
    from boxhack.experiments.prepared import prepare_monitor

    root = tmp_path_factory.mktemp("combined-models")
    model, monitor, _, dataset = prepare_monitor("mnist3", root, n_clusters=1, tolerance=0.0)
    idx = select_correct(model, dataset, 40, seed=1)
    return {"root": root, "model": model, "monitor": monitor, "dataset": dataset,
            "x": dataset.x_test[idx], "y": dataset.y_test[idx]}


def test_combined_attack_gradient_repair(small):
    m, mon, x, y = small["model"], small["monitor"], small["x"], small["y"]
    res = combined_attack(m, mon, x, y, epsilon=0.15)
    assert isinstance(res, CombinedResult) and res.final.goal == "combined"
    # the final verdicts are the monitor's own, on the returned inputs
    pred, acc = mon.predict(m, res.final.x)
    assert np.array_equal(pred, res.final.pred) and np.array_equal(acc, res.final.accepted)
    assert np.array_equal(res.final.success, (pred != y) & acc)
    # stages: the attack alone, the repair, or failed; the final check has the last word
    first_ok = (res.first.pred != y) & res.first.accepted
    assert np.array_equal(res.stage == "adversarial", first_ok & res.final.success)
    assert np.array_equal(~np.isin(res.stage, ["failed", "already"]), res.final.success)
    repaired = np.isin(res.stage, ["repair", "fallback"])
    assert repaired.sum() > 0, "no sample needed a repair: raise epsilon in this test"
    assert res.final.success.mean() >= 0.9
    # untouched samples keep their adversarial input exactly; stage 1 keeps its budget exactly
    assert np.array_equal(res.final.x[first_ok], res.first.x[first_ok])
    assert within_budget(res.first.x0, res.first.x, {"norm": "linf", "eps": 0.15}).all()
    counts = res.counts()
    assert counts["final_success"] == res.final.success.sum()
    assert counts["adv_flipped_accepted"] + counts["repaired_rejected"] + \
        counts["repaired_not_flipped"] == counts["final_success"]
    # distances are measured from the clean input
    assert np.allclose(res.final.l1, np.abs(res.final.x - x).reshape(len(x), -1).sum(1), atol=1e-3)


def test_combined_attack_without_repair_is_the_attack(small):
    m, mon, x, y = small["model"], small["monitor"], small["x"][:10], small["y"][:10]
    res = combined_attack(m, mon, x, y, epsilon=0.15, repair="none")
    assert np.array_equal(res.final.x, res.first.x)
    assert np.array_equal(res.final.success, (res.first.pred != y) & res.first.accepted)
    assert set(res.stage) <= {"adversarial", "failed"}


@pytest.mark.parametrize("kwargs, message", [
    ({"repair": "magic"}, "unknown repair"),
    ({"norm": "l7"}, "norm must be"),
    ({"attack": "nope"}, "unknown attack"),
    ({"epsilon": -1.0}, ">= 0"),
])
def test_combined_attack_errors(small, kwargs, message):
    with pytest.raises(BoxhackError, match=message):
        combined_attack(small["model"], small["monitor"], small["x"][:3], small["y"][:3], **kwargs)


def test_sample_balanced_is_seeded_balanced_and_respects_the_mask():
    from boxhack.data.sampling import sample_balanced

    labels = np.repeat(np.arange(4), [50, 30, 5, 40])  # ordered by class, like the test split
    mask = np.ones(len(labels), bool)
    mask[50:60] = False
    a = sample_balanced(labels, 24, seed=3, mask=mask)
    assert np.array_equal(a, sample_balanced(labels, 24, seed=3, mask=mask))  # seeded
    assert not np.array_equal(a, sample_balanced(labels, 24, seed=4, mask=mask))
    assert np.all(np.diff(a) > 0) and mask[a].all()
    # class 2 has only 5: it gives all of them, the others share the rest evenly
    counts = np.bincount(labels[a], minlength=4)
    assert counts[2] == 5 and sorted(counts[[0, 1, 3]]) == [6, 6, 7]
    assert len(sample_balanced(labels, 10_000, seed=0, mask=mask)) == mask.sum()
    assert len(sample_balanced(labels, 0, seed=0)) == 0
    with pytest.raises(BoxhackError):
        sample_balanced(labels, -1, seed=0)
