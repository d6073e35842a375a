"""Property tests (hypothesis) of the abstraction family: tolerance monotonicity, training
vectors accepted, margin sign = decision, on adversarially drawn float32 data."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from boxhack.monitor import (
    BoxMonitor,
    CompositeMonitor,
    ConvexHullMonitor,
    MeanBallMonitor,
    OctagonMonitor,
    PatternMonitor,
    ZoneMonitor,
)

F32 = np.float32
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
finite32 = st.floats(-1e4, 1e4, width=32, allow_nan=False, allow_infinity=False)
FAST = {
    "zone": lambda k: ZoneMonitor(n_clusters=k, max_clusters=4, n_init=1),
    "octagon": lambda k: OctagonMonitor(n_clusters=k, max_clusters=4, n_init=1),
    "ball": lambda k: MeanBallMonitor(n_clusters=k, max_clusters=4, n_init=1),
    "pattern": lambda k: PatternMonitor(gamma=(k or 0) % 2),
    "box": lambda k: BoxMonitor(n_clusters=k, max_clusters=4, n_init=1),
    "composite": lambda k: CompositeMonitor([
        BoxMonitor(n_clusters=k, max_clusters=4, n_init=1), PatternMonitor(gamma=1),
        MeanBallMonitor(n_clusters=k, max_clusters=4, n_init=1)]),
}


@st.composite
def fit_data(draw, max_classes=3, max_d=4):
    n = draw(st.integers(1, 30))
    d = draw(st.integers(1, max_d))
    x = draw(arrays(F32, (n, d), elements=finite32))
    if draw(st.booleans()):
        x[:, 0] = 0.0  # a dead unit
    if draw(st.booleans()) and n > 2:
        x[1] = x[0]  # an exact repeat
    y = draw(arrays(np.int64, (n,), elements=st.integers(0, max_classes - 1)))
    k = draw(st.sampled_from([1, 2, 3, None]))
    return x, y, k


def queries(x, seed, n=60):
    rng = np.random.default_rng(seed)
    pick = x[rng.integers(0, len(x), n)]
    step = np.nextafter(pick, np.where(rng.random(pick.shape) < 0.5, -np.inf, np.inf).astype(F32))
    mixed = np.where(rng.random(pick.shape) < 0.3, step, pick)
    spread = float(np.abs(x).max()) + 1.0
    rand = (rng.uniform(-1, 1, size=(n, x.shape[1])) * spread).astype(F32)
    return np.concatenate([pick, mixed, rand]).astype(F32)


@SETTINGS
@given(fit_data(), st.sampled_from(sorted(FAST)), st.booleans())
def test_tolerance_zero_accepts_every_training_vector(data, name, only_correct):
    x, y, k = data
    m = FAST[name](k).set_params(only_correct=only_correct).fit_features(x, y)
    assert m.accepts_features(x, y).all()
    assert (m.novelty_score(x, y) == 0).all()
    assert (m.decision_function(x, y) >= 0).all()
    assert (m.margin(torch.from_numpy(x), y).numpy() >= 0).all()


@SETTINGS
@given(fit_data(), st.sampled_from(sorted(FAST)), st.floats(0, 2), st.floats(0, 2),
       st.booleans(), st.integers(0, 10**6))
def test_larger_tolerance_never_rejects_more(data, name, e1, e2, relative, seed):
    x, y, k = data
    small, large = sorted([e1, e2])
    m = FAST[name](k).set_params(relative_tolerance=relative).fit_features(x, y)
    q = queries(x, seed)
    pred = np.random.default_rng(seed).integers(0, int(y.max()) + 1, len(q))
    a_small = m.with_tolerance(small).accepts_features(q, pred)
    a_large = m.with_tolerance(large).accepts_features(q, pred)
    assert not (a_small & ~a_large).any()
    assert m.with_tolerance(0).accepts_features(x, y).all()


@SETTINGS
@given(fit_data(), st.sampled_from(sorted(FAST)), st.floats(0, 1), st.booleans(),
       st.integers(0, 10**6))
def test_margin_sign_is_the_decision(data, name, eps, relative, seed):
    x, y, k = data
    m = FAST[name](k).set_params(tolerance=eps, relative_tolerance=relative).fit_features(x, y)
    q = queries(x, seed)
    pred = np.random.default_rng(seed).integers(0, int(y.max()) + 1, len(q))
    acc = m.accepts_features(q, pred)
    assert np.array_equal(m.margin(torch.from_numpy(q), pred).numpy() >= 0, acc)
    assert np.array_equal(m.decision_function(q, pred) >= 0, acc)
    assert np.array_equal(m.novelty_score(q, pred) == 0, acc)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6), st.floats(0, 1), st.floats(0, 1), st.booleans())
def test_hull_larger_tolerance_never_rejects_more(seed, e1, e2, relative):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 3)).astype(F32)
    y = rng.integers(0, 2, 40)
    small, large = sorted([e1, e2])
    m = ConvexHullMonitor(n_clusters=2, relative_tolerance=relative, n_init=1).fit_features(x, y)
    q = (rng.normal(size=(30, 3)) * 1.5).astype(F32)
    pred = rng.integers(0, 2, 30)
    a_small = m.with_tolerance(small).accepts_features(q, pred)
    a_large = m.with_tolerance(large).accepts_features(q, pred)
    assert not (a_small & ~a_large).any()
    assert m.with_tolerance(small).accepts_features(x, y).all()
