"""The monitor protocol: a new abstraction in under 50 lines, and every registered abstraction
held to the same contract (decisions, scores, margins, files, errors, model checks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from boxhack.errors import BoxhackError, NotFittedError
from boxhack.monitor import (
    MONITORS,
    BoxMonitor,
    CompositeMonitor,
    Monitor,
    MonitorLike,
    check_compatible,
    load_monitor,
    monitor_class,
    register,
)
from boxhack.monitor.base import array_problem, cast_keep_sign

F32 = np.float32


# ------------------------------------------- the worked example: a new monitor in < 50 lines
@register
class LinfBallMonitor(Monitor):
    """Per class, the L-inf ball around the class mean that holds its training vectors."""

    abstraction = "linf-ball"

    def _fit_layer(self, layer, x, starts):
        center, radius = np.zeros((len(starts) - 1, x.shape[1])), np.zeros(len(starts) - 1)
        for c in range(len(starts) - 1):
            xc = x[starts[c]:starts[c + 1]].astype(np.float64)
            if len(xc):
                center[c] = xc.mean(0)
                radius[c] = np.abs(xc - center[c]).max()
        return {"center": center, "radius": radius, "count": np.diff(starts)}

    def _derive(self, layer, state):  # the tolerance, applied at load and with_tolerance too
        r, eps = state["radius"], float(self.tolerance)
        return {"radius": r * (1 + eps) if self.relative_tolerance else r + eps}

    def _decision_layer(self, layer, x, pred):  # >= 0 exactly when accepted
        dist = np.abs(x - self.state_[layer]["center"][pred]).max(1)
        m = self.derived_[layer]["radius"][pred] - dist
        return np.where(self.state_[layer]["count"][pred] > 0, m, -np.inf)

    def _accept_layer(self, layer, x, pred):
        return self._decision_layer(layer, x, pred) >= 0

    def _novelty_layer(self, layer, x, pred):  # 0 inside, larger = farther outside
        return np.maximum(-self._decision_layer(layer, x, pred), 0.0)

    def _margin_layer(self, layer, z, cl, preactivation):  # the same float64 operations
        center = torch.from_numpy(self.state_[layer]["center"]).to(z.device)[cl]
        radius = torch.from_numpy(self.derived_[layer]["radius"]).to(z.device)[cl]
        m = radius - (z.double() - center).abs().amax(1)
        has = torch.from_numpy(self.state_[layer]["count"] > 0).to(z.device)[cl]
        return cast_keep_sign(torch.where(has, m, torch.full_like(m, -torch.inf)), z.dtype)

    def _check_layer_state(self, layer, state, d, n_classes):  # what a loaded file must hold
        if set(state) != {"center", "radius", "count"}:
            return f"arrays {sorted(state)}; expected center, radius, count"
        return (array_problem(state, "center", np.float64, (n_classes, d))
                or array_problem(state, "radius", np.float64, (n_classes,))
                or array_problem(state, "count", np.int64, (n_classes,))
                or ("a negative radius" if (state["radius"] < 0).any() else None))

    def _fit_counts(self, state, n_classes):  # checked against n_fit when a file is loaded
        return state["count"]


# ----------------------------------------------------------------------------- data
def data(seed=0, n=120, d=4, classes=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = np.maximum(rng.normal(size=(n, d)) + y[:, None] * 1.5, 0).astype(F32)
    q = np.maximum(rng.normal(size=(150, d)) * 1.6 + 1.5, 0).astype(F32)
    q[:30] = x[:30]
    return x, y, q, rng.integers(0, classes, 150)


def make(name: str) -> Monitor:
    if name == "composite":
        return CompositeMonitor([BoxMonitor(n_clusters=2), LinfBallMonitor()], tolerance=0.05)
    cls = monitor_class(name)
    return cls(n_clusters=2) if "n_clusters" in cls.PARAMS else cls()


NAMES = sorted(MONITORS)


# ----------------------------------------------------------------------------- the example
def test_the_example_fits_decides_and_round_trips(tmp_path):
    x, y, q, pred = data()
    m = LinfBallMonitor(tolerance=0.1).fit_features(x, y)
    assert m.accepts_features(x, y).all()  # every training vector is inside its ball
    acc = m.accepts_features(q, pred)
    assert 0 < acc.mean() < 1
    back = load_monitor(m.save(tmp_path / "linf.npz"))
    assert type(back) is LinfBallMonitor and back.get_params() == m.get_params()
    np.testing.assert_array_equal(back.decision_function(q, pred), m.decision_function(q, pred))
    assert LinfBallMonitor.load(tmp_path / "linf.npz").abstraction == "linf-ball"
    with pytest.raises(BoxhackError, match="load it with"):
        BoxMonitor.load(tmp_path / "linf.npz")


# ----------------------------------------------------------------------------- every abstraction
@pytest.mark.parametrize("name", NAMES)
def test_every_abstraction_keeps_the_contract(tmp_path, name):
    x, y, q, pred = data()
    m = make(name).fit_features({"a": x, "b": x[:, ::-1] * 2}, y)
    feats = {"a": q, "b": q[:, ::-1] * 2}
    assert isinstance(m, MonitorLike) and m.abstraction == name and m.layers_ == ["a", "b"]
    assert m.accepts_features({"a": x, "b": x[:, ::-1] * 2}, y).all()
    acc = m.accepts_features(feats, pred)
    dec = m.decision_function(feats, pred)
    nov = m.novelty_score(feats, pred)
    np.testing.assert_array_equal(dec >= 0, acc)
    np.testing.assert_array_equal(nov == 0, acc)
    assert (nov >= 0).all() and np.array_equal(m.score_samples(feats, pred), -nov)
    zt = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in feats.items()}
    mg = m.margin(zt, torch.from_numpy(pred))
    np.testing.assert_array_equal((mg >= 0).numpy(), acc)
    mg.sum().backward()
    assert all(v.grad is not None for v in zt.values())
    wider = m.with_tolerance(0.5)
    assert (wider.accepts_features(feats, pred) >= acc).all() and m.tolerance != 0.5
    back = load_monitor(m.save(tmp_path / "m.npz"))
    assert type(back) is type(m) and back.summary() == m.summary()
    np.testing.assert_array_equal(back.decision_function(feats, pred), dec)
    assert back.summary()["abstraction"] == name


@pytest.mark.parametrize("name", NAMES)
def test_every_abstraction_refuses_use_before_fit(tmp_path, name):
    m = make(name)
    assert not m.is_fitted and not isinstance(m, MonitorLike)
    model = nn.Sequential(nn.Linear(4, 3))
    z = np.zeros((1, 4), F32)
    calls = [
        lambda: m.accepts_features(z, [0]), lambda: m.decision_function(z, [0]),
        lambda: m.novelty_score(z, [0]), lambda: m.score_samples(z, [0]),
        lambda: m.margin(torch.zeros(1, 4), torch.zeros(1, dtype=torch.long)),
        lambda: m.forward_margin(model, torch.zeros(1, 4)),
        lambda: m.predict(model, torch.zeros(1, 4)), lambda: m.accepts(model, torch.zeros(1, 4)),
        lambda: m.score_inputs(model, torch.zeros(1, 4)), lambda: m.with_tolerance(0.1),
        lambda: m.summary(), lambda: m.save(tmp_path / "m.npz"),
        lambda: check_compatible(m, model),
    ]
    for call in calls:
        with pytest.raises(NotFittedError, match="not fitted"):
            call()
    assert not (tmp_path / "m.npz").exists()


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("name", NAMES)
def test_every_abstraction_records_its_model_and_is_checked_against_it(tmp_path, name):
    x, y, _, _ = data()
    model = _mlp(0)
    inputs = torch.from_numpy(x)
    m = make(name).fit(model, ["1", "2"], inputs, y, model_sha256="weights-file-hash")
    assert m.metadata_["model_sha256"] == "weights-file-hash"
    assert len(m.metadata_["model_state_sha256"]) == 64
    back = load_monitor(m.save(tmp_path / "m.npz"))
    assert back.metadata_ == m.metadata_
    check_compatible(back, model, example=inputs[:1])
    with pytest.raises(BoxhackError, match="weights hash to"):
        check_compatible(back, _mlp(1), example=inputs[:1])
    with pytest.raises(BoxhackError, match="weights sha256"):
        check_compatible(back, model, {"sha256": "another"})
    pred, acc = back.predict(model, inputs)
    logits, margin = back.forward_margin(model, inputs)
    np.testing.assert_array_equal(logits.argmax(1).numpy(), pred)
    np.testing.assert_array_equal((margin >= 0).numpy(), acc)


def test_composite_with_a_box_member_equals_its_members():
    x, y, q, pred = data(seed=3)
    box, ball = BoxMonitor(n_clusters=2), LinfBallMonitor()
    both = CompositeMonitor([box, ball]).fit_features(x, y)
    box.fit_features(x, y)
    ball.fit_features(x, y)
    np.testing.assert_array_equal(both.accepts_features(q, pred),
                                  box.accepts_features(q, pred) & ball.accepts_features(q, pred))
    np.testing.assert_array_equal(both.decision_function(q, pred),
                                  np.minimum(box.decision_function(q, pred),
                                             ball.decision_function(q, pred)))
    np.testing.assert_array_equal(both.members_[0].lo_["features"], box.lo_["features"])


def test_registry_refuses_a_second_class_under_a_taken_name():
    class Other(Monitor):
        abstraction = "box"

    with pytest.raises(TypeError, match="already registered"):
        register(Other)
    assert MONITORS["box"] is BoxMonitor
