"""The SciPy attack and the decision-only attack on models whose input bounds are not [0, 1]:
they search the unit box through ``unit_domain`` and answer in the user's space. The same
problem on (0, 255) and on the equivalent (0, 1) model gives the same successes, norms times
255; results lie in the bounds and are verified there."""

from __future__ import annotations

import numpy as np
import pytest

from boxhack.attacks.decision import decision_attack
from boxhack.attacks.optimisation import OptimisationAttack
from boxhack.attacks.verify import verify
from boxhack.models.domain import InputDomain


@pytest.fixture(scope="module")
def xor(tmp_path_factory):
    from boxhack.experiments.prepared import prepare_monitor

    model, monitor, _info, dataset = prepare_monitor("xor", tmp_path_factory.mktemp("xor"))
    scaled = InputDomain(model, bounds=(0, 255), preprocessing={"mean": [0.0], "std": [255.0]})
    _, acc = monitor.predict(model, dataset.x_test)
    return model, scaled, monitor, dataset, acc


def _check(r, model, monitor, lo, hi):
    assert r.x.min() >= lo and r.x.max() <= hi and r.info["bounds"] == [lo, hi]
    again = verify(model, monitor, r.x0, r.x, r.goal, labels=r.labels)
    assert np.array_equal(again.success, r.success)
    assert np.array_equal(r.info["outcome"] == np.array("success"), r.success) \
        if "outcome" in r.info else True


@pytest.mark.parametrize("solver", ["slsqp", "cobyla"])
@pytest.mark.parametrize("goal", ["dos", "intrude"])
def test_scipy_attack_on_0_255_matches_the_unit_model(xor, solver, goal):
    model, scaled, monitor, ds, acc = xor
    idx = np.flatnonzero(acc if goal == "dos" else ~acc)[:4]
    x, y = ds.x_test[idx], ds.y_test[idx]
    attack = OptimisationAttack(goal, "l2", solver, max_evals=300, isolate=False)
    unit = attack(model, monitor, x, labels=y)
    big = attack(scaled, monitor, x * 255, labels=y)
    assert big.success.sum() >= 2 and np.array_equal(big.success, unit.success)
    _check(big, scaled, monitor, 0.0, 255.0)
    assert big.x.max() > 1  # user units, not the unit box
    ok = big.success
    # the solves run on the same unit problem up to float32 rounding of the rescaling: SLSQP
    # lands on the same point; COBYLA, derivative-free, takes another path from the first
    # rounding on and stops within its own trust-region tolerance (measured: <= 1.1e-3 with
    # SciPy 1.15, 9e-3 with SciPy 1.17)
    rtol = 1e-3 if solver == "slsqp" else 2e-2
    assert np.allclose(big.l2[ok], 255 * unit.l2[ok], rtol=rtol), (big.l2, 255 * unit.l2)
    # an untouched coordinate stays bit for bit
    same = (big.x == big.x0)
    assert np.array_equal(same, unit.x == unit.x0)


def test_scipy_attack_on_minus_one_one(xor):
    model, _, monitor, ds, acc = xor
    signed = InputDomain(model, bounds=(-1, 1), preprocessing={"mean": [-1.0], "std": [2.0]})
    idx = np.flatnonzero(acc)[:3]
    x, y = ds.x_test[idx], ds.y_test[idx]
    unit = OptimisationAttack("dos", "l1", "slsqp", max_evals=300, isolate=False)(
        model, monitor, x, labels=y)
    r = OptimisationAttack("dos", "l1", "slsqp", max_evals=300, isolate=False)(
        signed, monitor, 2 * x - 1, labels=y)
    assert r.success.sum() >= 2 and np.array_equal(r.success, unit.success)
    _check(r, signed, monitor, -1.0, 1.0)
    assert np.allclose(r.l1[r.success], 2 * unit.l1[r.success], rtol=1e-3)


def test_decision_attack_on_0_255_matches_the_unit_model(xor):
    model, scaled, monitor, ds, _ = xor
    x, y, pool = ds.x_test[:8], ds.y_test[:8], ds.x_train[:200]
    kw = {"method": "hsj", "budget": "quick", "steps": 2, "max_gradient_eval_steps": 20}
    unit = decision_attack(model, monitor, x, y, pool=pool, **kw)
    big = decision_attack(scaled, monitor, x * 255, y, pool=pool * 255, **kw)
    assert big.success.sum() >= 4 and np.array_equal(big.success, unit.success)
    _check(big, scaled, monitor, 0.0, 255.0)
    ok = big.success
    assert np.allclose(big.l2[ok], 255 * unit.l2[ok], rtol=1e-3)
    # a budget in user units holds there
    capped = decision_attack(scaled, monitor, x * 255, y, pool=pool * 255, epsilon=20.0, **kw)
    assert (capped.l2 <= 20.0 * (1 + 1e-6)).all() and capped.info["budget"]["eps"] == 20.0
