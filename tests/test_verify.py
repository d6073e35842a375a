"""boxhack.attacks.verify, the one place success is decided: every rule on hand-made cases.

The decision rules are tested with a fake monitor whose verdicts are read off the input
(``FakeMonitor``); the box bounds with a real ``BoxMonitor`` on a network whose monitored layer
is the identity, so the test controls the layer vector bit for bit. Each rule has cases that
fail if the rule is changed (see the report of issue 10 for the mutations tried).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from boxhack.attacks.verify import GOALS, AttackResult, as_batch, decide, starting_state, verify
from boxhack.errors import BoxhackError
from boxhack.monitor import BoxMonitor

F32 = np.float32


class FakeMonitor:
    """Verdicts read off a 2-D input: class ``floor(4 * x[0])`` (0..3), accepted iff
    ``x[1] >= 0.5``. Refuses to look at an input outside [0, 1] or non-finite, as a real model
    must never be asked to judge one."""

    def __init__(self):
        self.seen: list[np.ndarray] = []

    def predict(self, model, x):
        x = np.asarray(x)
        self.seen.append(x.copy())
        assert np.isfinite(x).all() and (x >= 0).all() and (x <= 1).all(), \
            "verify showed the monitor an invalid input"
        pred = np.minimum((x[:, 0] * 4).astype(np.int64), 3)
        return pred, x[:, 1] >= 0.5


def pt(cls: int, accepted: bool) -> list[float]:
    """A point FakeMonitor sees as class ``cls``, accepted or not."""
    return [cls / 4 + 0.125, 0.75 if accepted else 0.25]


def run(goal, starts, ends, **kw) -> AttackResult:
    x0 = np.array(starts, dtype=F32)
    x = np.array(ends, dtype=F32)
    return verify(None, FakeMonitor(), x0, x, goal, **kw)


# ------------------------------------------------------------------ range check
def test_candidates_outside_the_pixel_range_or_non_finite_never_succeed():
    # intrude-any from a rejected start: any accepted candidate would succeed
    start = pt(1, False)
    tiny_above = float(np.nextafter(F32(1), F32(2)))
    tiny_below = float(np.nextafter(F32(0), F32(-1)))
    ends = [
        [0.375, 0.75],  # valid: succeeds
        [0.375, 1.0],  # exactly 1: valid (the range is inclusive)
        [0.0, 0.75],  # exactly 0: valid
        [0.375, tiny_above],  # one float32 step above 1
        [tiny_below, 0.75],  # one step below 0
        [0.375, np.nan],
        [np.inf, 0.75],
        [0.375, -np.inf],
    ]
    r = run("intrude-any", [start] * len(ends), ends)
    assert r.success.tolist() == [True, True, True, False, False, False, False, False]
    assert r.eligible.all() and not r.already.any()


class RejectEverything(FakeMonitor):
    def predict(self, model, x):
        pred, _ = super().predict(model, x)
        return pred, np.zeros(len(x), dtype=bool)


def test_an_invalid_candidate_fails_even_if_the_monitor_would_say_success():
    """With the start's verdicts given (as attacks pass them) and a monitor that rejects
    everything, every valid same-class candidate is a DoS success and no invalid one is."""
    x0 = np.array([pt(2, True)] * 3, dtype=F32)
    x = x0.copy()
    x[1, 1] = 1.5
    x[2, 0] = np.nan
    r = verify(None, RejectEverything(), x0, x, "dos", pred0=np.array([2, 2, 2]),
               accepted0=np.array([True, True, True]))
    assert r.success.tolist() == [True, False, False]


def test_the_monitor_never_sees_an_invalid_candidate():
    mon = FakeMonitor()
    x0 = np.array([pt(0, False)] * 2, dtype=F32)
    x = np.array([[0.1, 2.0], [np.nan, 0.7]], dtype=F32)
    r = verify(None, mon, x0, x, "intrude-any")
    assert not r.success.any()
    assert all(np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all() for s in mon.seen)


@pytest.mark.parametrize("bad, message", [
    (np.array([[0.5, 1.01]]), r"\[0, 1\]"),
    (np.array([[-0.01, 0.5]]), r"\[0, 1\]"),
    (np.array([[np.nan, 0.5]]), "NaN"),
    (np.array([[np.inf, 0.5]]), "NaN or infinite"),
    (np.array([["a", "b"]]), "numeric"),
    (np.zeros((0, 2)), "empty"),
])  # fmt: skip
def test_as_batch_range_and_type_checks(bad, message):
    with pytest.raises(BoxhackError, match=message):
        as_batch(bad, input_shape=(2,))


def test_as_batch_accepts_the_closed_range_and_one_sample():
    a = as_batch(np.array([0.0, 1.0]), input_shape=(2,))
    assert a.shape == (1, 2) and a.dtype == F32
    with pytest.raises(BoxhackError, match="per-sample shape"):
        as_batch(np.zeros((3, 3)), input_shape=(2,))


# ------------------------------------------------------------------ goals
def test_dos_needs_rejection_and_the_same_class():
    start = pt(1, True)
    ends = [pt(1, False), pt(2, False), pt(1, True), pt(2, True)]
    r = run("dos", [start] * 4, ends)
    assert r.success.tolist() == [True, False, False, False]


def test_intrude_needs_acceptance_and_the_same_class():
    start = pt(3, False)
    ends = [pt(3, True), pt(0, True), pt(3, False), pt(0, False)]
    assert run("intrude", [start] * 4, ends).success.tolist() == [True, False, False, False]


def test_intrude_any_needs_acceptance_only():
    start = pt(3, False)
    ends = [pt(3, True), pt(0, True), pt(3, False), pt(0, False)]
    assert run("intrude-any", [start] * 4, ends).success.tolist() == [True, True, False, False]


def test_intrude_target_needs_the_target_class_and_acceptance():
    start = pt(0, False)
    ends = [pt(2, True), pt(1, True), pt(2, False), pt(0, True)]
    r = run("intrude-target", [start] * 4, ends, targets=[2, 2, 2, 2])
    assert r.success.tolist() == [True, False, False, False]
    with pytest.raises(BoxhackError, match="target"):
        run("intrude-target", [start], [pt(2, True)])


def test_combined_needs_a_wrong_class_and_acceptance():
    start = pt(1, True)
    ends = [pt(2, True), pt(2, False), pt(1, True), pt(0, True)]
    r = run("combined", [start] * 4, ends)  # reference: the original prediction 1
    assert r.success.tolist() == [True, False, False, True]


def test_combined_and_misclassify_use_the_true_label_when_given():
    # the model predicts 1 on x0, the true label is 2: x0 is misclassified already
    start = pt(1, False)
    ends = [pt(2, True), pt(1, True), pt(3, True)]
    r = run("combined", [start] * 3, ends, labels=[2, 2, 2])
    assert r.success.tolist() == [False, True, True]  # class 2 = the label is no success
    r = run("misclassify", [start] * 3, ends, labels=[2, 2, 2])
    assert r.already.all() and not r.success.any()  # already misclassified: not attacked


def test_misclassify_ignores_the_monitor():
    start = pt(1, True)
    ends = [pt(2, True), pt(2, False), pt(1, False), pt(1, True)]
    r = run("misclassify", [start] * 4, ends)
    assert r.success.tolist() == [True, True, False, False]


def test_unknown_goal_and_shape_mismatch():
    with pytest.raises(BoxhackError, match="unknown goal"):
        run("fly", [pt(0, True)], [pt(0, True)])
    with pytest.raises(BoxhackError, match="shape"):
        verify(None, FakeMonitor(), np.zeros((2, 2), F32), np.zeros((3, 2), F32), "dos")


def test_decide_table():
    """Each goal's rule on the four (same class?, accepted?) combinations."""
    pred0 = np.array([1, 1, 1, 1])
    pred = np.array([1, 1, 2, 2])
    acc = np.array([True, False, True, False])
    expected = {
        "dos": [False, True, False, False],
        "intrude": [True, False, False, False],
        "intrude-any": [True, False, True, False],
        "combined": [False, False, True, False],
        "misclassify": [False, False, True, True],
    }
    for goal, want in expected.items():
        assert decide(goal, pred0, pred, acc).tolist() == want, goal
    assert decide("intrude-target", pred0, pred, acc, targets=np.array([2] * 4)).tolist() == \
        [False, False, True, False]
    assert set(expected) | {"intrude-target"} == set(GOALS)


# ------------------------------------------------------------------ eligible / already
def test_already_met_inputs_are_not_attacked_and_never_successes():
    # DoS from a start the monitor already rejects: already, even though the end is rejected
    r = run("dos", [pt(1, False), pt(1, True)], [pt(1, False), pt(1, False)])
    assert r.already.tolist() == [True, False] and r.eligible.tolist() == [False, True]
    assert r.success.tolist() == [False, True]
    assert r.n_attacked == 1 and r.success_rate == 1.0
    # intrusion from an accepted start
    r = run("intrude", [pt(2, True), pt(2, False)], [pt(2, True), pt(2, False)])
    assert r.already.tolist() == [True, False] and r.success.tolist() == [False, False]
    assert r.n_attacked == 1 and r.success_rate == 0.0
    # intrude-target: already accepted as the target
    r = run("intrude-target", [pt(2, True), pt(1, True)], [pt(2, True), pt(2, True)],
            targets=[2, 2])
    assert r.already.tolist() == [True, False] and r.success.tolist() == [False, True]
    # combined: already misclassified and accepted
    r = run("combined", [pt(1, True), pt(2, True)], [pt(3, True), pt(3, True)], labels=[2, 2])
    assert r.already.tolist() == [True, False] and r.success.tolist() == [False, True]


def test_dos_starts_only_from_correct_inputs_when_labels_are_given():
    # x0 predicted 1 and accepted; true label 0: misclassified, so not eligible for Attack 1
    starts = [pt(1, True), pt(1, True)]
    ends = [pt(1, False), pt(1, False)]
    r = run("dos", starts, ends, labels=[0, 1])
    assert r.eligible.tolist() == [False, True] and r.already.tolist() == [False, False]
    assert r.success.tolist() == [False, True] and r.n_attacked == 1
    # without labels correctness is unknown: both eligible
    assert run("dos", starts, ends).success.tolist() == [True, True]
    # the other goals do not need a correct start
    e, a = starting_state("intrude", np.array([1]), np.array([False]), labels=np.array([0]))
    assert e.tolist() == [True] and a.tolist() == [False]


def test_rates_over_attacked_inputs_and_nan_when_none():
    r = run("dos", [pt(0, False)] * 3, [pt(0, False)] * 3)
    assert r.n_attacked == 0 and np.isnan(r.success_rate) and not r.success.any()
    rows = r.rows()
    assert all(row["already"] and not row["eligible"] and not row["success"] for row in rows)


# ------------------------------------------------------------------ norms
def test_norms_are_exact_float64_of_the_float32_values():
    x0 = np.array([[0.1, 0.9]], dtype=F32)
    x = np.array([[0.3, 1e-4]], dtype=F32)
    r = verify(None, FakeMonitor(), x0, x, "misclassify")
    d = x.astype(np.float64) - x0.astype(np.float64)
    assert r.l1[0] == np.abs(d).sum() and r.linf[0] == np.abs(d).max()
    assert r.l2[0] == np.sqrt((d * d).sum())
    assert r.x.dtype == F32 and r.x0.dtype == F32


def test_candidates_are_judged_as_float32():
    """A float64 candidate is judged by its float32 value, the value a record stores."""
    x0 = np.array([pt(1, False)], dtype=np.float64)
    just_below = np.array([[0.375, 0.5 - 1e-12]])  # float64 below the threshold, float32 0.5
    r = verify(None, FakeMonitor(), x0, just_below, "intrude")
    assert r.x.dtype == F32 and r.x[0, 1] == F32(0.5) and r.success[0]


# ------------------------------------------------------------------ real box bounds
class IdentityNet(nn.Module):
    """The monitored layer ``feat`` is the input itself; the class is 0 when x[0] < 0.5."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(OrderedDict(feat=nn.Identity(), head=nn.Linear(2, 2)))
        with torch.no_grad():
            self.net.head.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
            self.net.head.bias.copy_(torch.tensor([0.5, -0.5]))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def box():
    """Class 0's box is exactly [0.125, 0.375] x [0.25, 0.75] (tolerance 0); class 1 has
    none, so nothing predicted as class 1 is accepted."""
    model = IdentityNet().eval()
    x = np.array([[0.125, 0.25], [0.375, 0.75], [0.25, 0.5]], dtype=F32)
    monitor = BoxMonitor(n_clusters=1, n_classes=2).fit(model, ["net.feat"], x, [0, 0, 0])
    lo, hi = monitor.boxes("net.feat", 0)
    assert lo.tolist() == [[0.125, 0.25]] and hi.tolist() == [[0.375, 0.75]]
    return model, monitor


def _step(v: float, direction: float) -> float:
    return float(np.nextafter(F32(v), F32(direction)))


def test_a_point_exactly_on_a_face_is_accepted(box):
    model, monitor = box
    faces = [[0.125, 0.5], [0.375, 0.5], [0.25, 0.25], [0.25, 0.75], [0.125, 0.25], [0.375, 0.75]]
    x0 = np.array([[0.05, 0.5]] * len(faces), dtype=F32)  # class 0, outside: rejected
    r = verify(model, monitor, x0, np.array(faces, dtype=F32), "intrude")
    assert not r.accepted0.any() and r.accepted.all() and r.success.all()


def test_one_float32_step_outside_a_face_is_rejected(box):
    model, monitor = box
    outside = [[_step(0.125, 0), 0.5], [_step(0.375, 1), 0.5], [0.25, _step(0.25, 0)],
               [0.25, _step(0.75, 1)]]
    inside = [[_step(0.125, 1), 0.5], [_step(0.375, 0), 0.5], [0.25, _step(0.25, 1)],
              [0.25, _step(0.75, 0)]]
    x0 = np.array([[0.25, 0.5]] * 4, dtype=F32)  # the centre: accepted
    r = verify(model, monitor, x0, np.array(outside, dtype=F32), "dos")
    assert r.accepted0.all() and not r.accepted.any() and r.success.all()
    r = verify(model, monitor, x0, np.array(inside, dtype=F32), "dos")
    assert r.accepted.all() and not r.success.any()
    # and from outside, one step inside is an intrusion, one step outside is not
    start = np.array([[0.05, 0.5]] * 4, dtype=F32)
    assert verify(model, monitor, start, np.array(inside, dtype=F32), "intrude").success.all()
    assert not verify(model, monitor, start, np.array(outside, dtype=F32), "intrude").success.any()


def test_a_class_without_boxes_accepts_nothing(box):
    model, monitor = box
    x0 = np.array([[0.25, 0.5]], dtype=F32)
    x = np.array([[0.9, 0.5]], dtype=F32)  # predicted class 1: no boxes
    r = verify(model, monitor, x0, x, "combined")
    assert r.pred.tolist() == [1] and not r.accepted[0] and not r.success[0]
    r = verify(model, monitor, x0, x, "misclassify")
    assert r.success[0]


def test_torch_tensors_are_accepted(box):
    model, monitor = box
    x0 = torch.tensor([[0.25, 0.5]])
    x = torch.tensor([[0.25, _step(0.75, 1)]])
    assert verify(model, monitor, x0, x, "dos").success.tolist() == [True]
