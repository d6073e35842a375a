"""The attack protocol (boxhack.attacks.base): every family is an ``Attack``, called the same
way, answering with a verified ``AttackResult``; one goal vocabulary with the paper's aliases.

The first test is the worked example of docs/attacks-protocol.md (and docs/architecture.md):
a whole new attack family in under 50 lines, conforming to the protocol.
"""

from __future__ import annotations

import numpy as np
import pytest
from toy_nets import tiny_relu_mlp  # tests/ is on sys.path

from boxhack import attacks
from boxhack.attacks import Attack, verify
from boxhack.attacks.records import fit_to_budget, within_budget
from boxhack.attacks.verify import as_batch, decide
from boxhack.errors import BoxhackError
from boxhack.monitor import BoxMonitor, MeanBallMonitor


# ----------------------------------------------------------------------- the worked example
class RandomNoiseAttack(Attack):
    """Random points in the Linf ball of radius ``epsilon``; per input, the first of ``tries``
    that meets the goal (a baseline any monitor should survive)."""

    name = "random-noise"  # every goal of boxhack.attacks.GOALS: the default ``goals``

    def __init__(self, goal: str = "dos", epsilon: float = 0.1, tries: int = 20, seed: int = 0):
        self.goal = self._set_goal(goal)  # checks the name, resolves "1", "2", "2-any"
        self.epsilon, self.tries, self.seed = float(epsilon), int(tries), int(seed)

    def run(self, model, monitor, inputs, *, labels, targets, starts, goal, **options):
        x0 = as_batch(inputs)
        pred0, acc0 = monitor.predict(model, x0)  # the monitor protocol: any abstraction
        rng = np.random.default_rng(self.seed)
        x, todo = x0.copy(), np.ones(len(x0), dtype=bool)
        for _ in range(self.tries):
            noise = rng.uniform(-self.epsilon, self.epsilon, x0.shape).astype(np.float32)
            cand = fit_to_budget(x0, np.clip(x0 + noise, 0, 1), "linf", self.epsilon)
            pred, acc = monitor.predict(model, cand)
            ok = todo & decide(goal, pred0, pred, acc, labels, targets)
            x[ok], todo = cand[ok], todo & ~ok
        budget = {"norm": "linf", "eps": self.epsilon}
        return verify(model, monitor, x0, x, goal, labels=labels, targets=targets, pred0=pred0,
                      accepted0=acc0, info={"attack": self.name, "budget": budget})


# ----------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def setup():
    """A tiny ReLU MLP on 6x6 inputs with a box monitor and a mean-ball monitor."""
    net, x, y = tiny_relu_mlp(700)
    box = BoxMonitor(n_clusters=1).fit(net, ["relu2"], x[:500], y[:500])
    ball = MeanBallMonitor(n_clusters=2).fit(net, ["relu2"], x[:500], y[:500])
    return {"model": net, "box": box, "ball": ball, "x": x[500:530], "y": y[500:530]}


def independent(model, monitor, result, goal, labels=None):
    """The goal re-decided input by input (no batch effects), for the attacked inputs."""
    pred0, _ = monitor.predict(model, result.x0)
    one = [monitor.predict(model, result.x[i : i + 1]) for i in range(len(result))]
    pred = np.array([p[0] for p, _ in one])
    acc = np.array([a[0] for _, a in one])
    return decide(goal, pred0, pred, acc, labels) & result.eligible


# ----------------------------------------------------------------------- the example conforms
@pytest.mark.parametrize("monitor", ["box", "ball"])
@pytest.mark.parametrize("goal", ["1", "combined", "misclassify"])
def test_the_worked_example_conforms(setup, monitor, goal):
    model, mon, x, y = setup["model"], setup[monitor], setup["x"], setup["y"]
    attack = RandomNoiseAttack(goal, epsilon=0.3)
    assert isinstance(attack, Attack) and attack.goal in attacks.GOALS
    r = attack(model, mon, x, y)
    assert r.goal == attacks.resolve_goal(goal) and len(r) == len(x)
    assert within_budget(r.x0, r.x, r.info["budget"]).all()  # exactly, float32 included
    np.testing.assert_array_equal(r.success & r.eligible, r.success)
    assert (independent(model, mon, r, r.goal, y) | ~r.success).all()
    if goal != "1":
        assert r.success.any()


def test_the_example_refuses_what_it_cannot_do(setup):
    with pytest.raises(BoxhackError, match="unknown goal 'steal'.*paper aliases"):
        RandomNoiseAttack("steal")
    with pytest.raises(BoxhackError, match="needs target"):
        RandomNoiseAttack("intrude-target")(setup["model"], setup["box"], setup["x"])
    r = RandomNoiseAttack("dos")(setup["model"], setup["box"], setup["x"], goal="2")
    assert r.goal == "intrude"  # goal= at call time overrides the configured one


# ----------------------------------------------------------------------- every family
FAMILIES = ["MonitorAttack", "OrthogonalAttack", "OptimisationAttack", "FoolboxAttack",
            "DecisionOnlyAttack", "CombinedAttack"]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_is_an_attack(name):
    cls = getattr(attacks, name)
    assert issubclass(cls, Attack) and name in attacks.__all__
    assert cls.__call__ is Attack.__call__  # one call shape: the base's
    assert set(cls.goals) <= set(attacks.GOALS) and cls.name != Attack.name
    with pytest.raises(BoxhackError, match="goal"):
        cls(goal="steal")
    bad = next(g for g in ("misclassify", "intrude-target", "dos") if g not in cls.goals)
    with pytest.raises(BoxhackError, match=f"cannot pursue goal '{bad}'"):
        cls(goal=bad)


def test_paper_aliases_resolve_everywhere():
    assert attacks.PAPER_ALIASES == {"1": "dos", "2": "intrude", "2-any": "intrude-any"}
    assert attacks.MonitorAttack(goal="1").goal == "dos"
    assert attacks.OrthogonalAttack(goal="2").goal == "intrude"
    assert attacks.OptimisationAttack(goal="2-any").goal == "intrude-any"
    assert attacks.FoolboxAttack("fgsm").goal == "misclassify"
    assert attacks.DecisionOnlyAttack("hsj").goal == "combined"
    assert attacks.CombinedAttack().goal == "combined"


def test_unknown_per_call_options_are_refused(setup):
    with pytest.raises(BoxhackError, match="no per-call option 'steps'"):
        attacks.MonitorAttack()(setup["model"], setup["box"], setup["x"], steps=3)


@pytest.mark.parametrize("monitor", ["box", "ball"])
def test_the_classes_give_what_the_functions_give(setup, monitor):
    """The functional entry points and the classes are one implementation: same points."""
    from boxhack.attacks.adversarial import run_adversarial
    from boxhack.attacks.combined import combined_attack
    from boxhack.attacks.decision import decision_attack
    from boxhack.attacks.gradient import attack
    from boxhack.attacks.optimisation import optimise_attack

    model, mon, x, y = setup["model"], setup[monitor], setup["x"][:8], setup["y"][:8]
    pairs = [
        (attack(model, mon, x, goal="intrude-any", labels=y),
         attacks.MonitorAttack(goal="intrude-any")(model, mon, x, y)),
        (run_adversarial(model, mon, x, y, "fgsm", 0.2, goal="combined"),
         attacks.FoolboxAttack("fgsm", 0.2, "combined")(model, mon, x, y)),
        (decision_attack(model, mon, x, y, method="hsj", budget="quick", steps=1,
                         max_gradient_eval_steps=10),
         attacks.DecisionOnlyAttack("hsj", budget="quick", steps=1,
                                    max_gradient_eval_steps=10)(model, mon, x, y)),
        (combined_attack(model, mon, x, y, epsilon=0.2).final,
         attacks.CombinedAttack(epsilon=0.2)(model, mon, x, y)),
    ]
    _, acc = mon.predict(model, x)
    if (~acc).any():  # SciPy: Attack 2 from the rejected inputs only (the function refuses others)
        rej = x[~acc][:2]
        pairs.append((optimise_attack(model, mon, rej, goal="intrude-any", max_evals=200,
                                      isolate=False),
                      attacks.OptimisationAttack("intrude-any", max_evals=200,
                                                 isolate=False)(model, mon, rej)))
    for a, b in pairs:
        assert a.goal == b.goal
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.success, b.success)


def test_without_labels_the_predictions_are_the_reference(setup):
    model, mon, x = setup["model"], setup["box"], setup["x"][:8]
    r = attacks.FoolboxAttack("fgsm", 0.3)(model, mon, x)
    np.testing.assert_array_equal(r.labels, r.pred0)
    np.testing.assert_array_equal(r.success, r.pred != r.pred0)


def test_scipy_attack_skips_what_may_not_be_attacked(setup):
    """The class attacks the eligible inputs and reports the others apart; the function
    refuses a batch with an input already in the goal's end state."""
    from boxhack.attacks.optimisation import optimise_attack

    model, mon, x = setup["model"], setup["box"], setup["x"][:6]
    _, acc = mon.predict(model, x)
    assert acc.any() and (~acc).any(), "the fixture needs accepted and rejected inputs"
    r = attacks.OptimisationAttack("dos", max_evals=200, isolate=False)(model, mon, x)
    assert (r.already == ~acc).all() and (r.eligible == acc).all()
    assert [o == "not-attacked" for o in r.info["outcome"]] == (~acc).tolist()
    np.testing.assert_array_equal(r.x[~acc], x[~acc])
    assert not r.success[~acc].any() and r.info["nfev"][int(np.flatnonzero(~acc)[0])] == 0
    with pytest.raises(BoxhackError, match="already rejects"):
        optimise_attack(model, mon, x, goal="dos", max_evals=200, isolate=False)
