"""Property tests (hypothesis) of BoxMonitor's decisions, margin and files."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from boxhack.monitor import BoxMonitor

F32 = np.float32
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

finite32 = st.floats(-1e4, 1e4, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def fit_data(draw, max_classes=3):
    n = draw(st.integers(1, 30))
    d = draw(st.integers(1, 4))
    x = draw(arrays(F32, (n, d), elements=finite32))
    # some exact repeats and a dead (all-zero) unit, as post-ReLU layers have
    if draw(st.booleans()):
        x[:, 0] = 0.0
    y = draw(arrays(np.int64, (n,), elements=st.integers(0, max_classes - 1)))
    k = draw(st.sampled_from([1, 2, 3, None]))
    return x, y, k


def queries(x, seed, n=60):
    """Query points: training points, their float32 neighbours, and random points."""
    rng = np.random.default_rng(seed)
    pick = x[rng.integers(0, len(x), n)]
    step = np.nextafter(pick, np.where(rng.random(pick.shape) < 0.5, -np.inf, np.inf).astype(F32))
    mixed = np.where(rng.random(pick.shape) < 0.3, step, pick)
    spread = float(np.abs(x).max()) + 1.0
    rand = (rng.uniform(-1, 1, size=(n, x.shape[1])) * spread).astype(F32)
    return np.concatenate([pick, mixed, rand]).astype(F32)


@SETTINGS
@given(fit_data(), st.sampled_from([True, False]))
def test_tolerance_zero_accepts_every_training_vector(data, only_correct):
    x, y, k = data
    m = BoxMonitor(n_clusters=k, only_correct=only_correct, max_clusters=4, n_init=1)
    m.fit_features(x, y)
    assert m.accepts_features(x, y).all()
    assert (m.novelty_score(x, y) == 0).all()
    assert (m.decision_function(x, y) >= 0).all()


@SETTINGS
@given(fit_data(), st.floats(0, 2), st.floats(0, 2), st.booleans(), st.integers(0, 10**6))
def test_larger_tolerance_never_rejects_more(data, e1, e2, relative, seed):
    x, y, k = data
    small, large = sorted([e1, e2])
    m = BoxMonitor(n_clusters=k, tolerance=small, relative_tolerance=relative, max_clusters=4,
                   n_init=1).fit_features(x, y)
    big = m.with_tolerance(large)
    q = queries(x, seed)
    p = np.random.default_rng(seed).integers(0, m.n_classes_, len(q))
    a_small, a_big = m.accepts_features(q, p), big.accepts_features(q, p)
    assert not (a_small & ~a_big).any()
    # the same holds for a monitor refitted from scratch with the larger tolerance
    refit = BoxMonitor(n_clusters=k, tolerance=large, relative_tolerance=relative, max_clusters=4,
                       n_init=1).fit_features(x, y)
    np.testing.assert_array_equal(refit.accepts_features(q, p), a_big)


@SETTINGS
@given(fit_data())
def test_k1_boxes_are_class_min_max(data):
    x, y, _ = data
    m = BoxMonitor(n_clusters=1).fit_features(x, y)
    cls = m.box_class_["features"]
    assert cls.tolist() == sorted(set(y.tolist()))
    for b, c in enumerate(cls):
        np.testing.assert_array_equal(m.lo_["features"][b], x[y == c].min(0))
        np.testing.assert_array_equal(m.hi_["features"][b], x[y == c].max(0))


@SETTINGS
@given(fit_data(), st.floats(0, 1), st.booleans(), st.integers(0, 10**6))
def test_margin_sign_equals_acceptance(data, eps, relative, seed):
    x, y, k = data
    m = BoxMonitor(n_clusters=k, tolerance=eps, relative_tolerance=relative, max_clusters=4,
                   n_init=1).fit_features(x, y)
    q = queries(x, seed)
    p = np.random.default_rng(seed + 1).integers(0, m.n_classes_, len(q))
    acc = m.accepts_features(q, p)
    mg = m.margin(torch.from_numpy(q), torch.from_numpy(p))
    np.testing.assert_array_equal(mg.numpy() >= 0, acc)
    np.testing.assert_array_equal(m.decision_function(q, p) >= 0, acc)
    np.testing.assert_array_equal(m.novelty_score(q, p) == 0, acc)
    # float64 features that are float32 values decide the same
    mg64 = m.margin(torch.from_numpy(q.astype(np.float64)), torch.from_numpy(p))
    np.testing.assert_array_equal(mg64.numpy() >= 0, acc)


@SETTINGS
@given(fit_data(), st.floats(0, 1), st.booleans(), st.integers(0, 10**6))
def test_preactivation_margin_sign_equals_acceptance_of_relu(data, eps, relative, seed):
    x, y, k = data
    v = np.maximum(x, 0)  # post-ReLU training vectors
    m = BoxMonitor(n_clusters=k, tolerance=eps, relative_tolerance=relative, max_clusters=4,
                   n_init=1).fit_features(v, y)
    z = queries(x, seed)  # pre-activations: any sign
    z = np.concatenate([z, -np.abs(z), np.zeros_like(z[:3]), -np.zeros_like(z[:3])])
    p = np.random.default_rng(seed).integers(0, m.n_classes_, len(z))
    acc = m.accepts_features(np.maximum(z, 0), p)
    mg = m.margin(torch.from_numpy(z), torch.from_numpy(p), preactivation=True)
    np.testing.assert_array_equal(mg.numpy() >= 0, acc)


@SETTINGS
@given(st.integers(0, 10**6), st.floats(0, 0.5), st.booleans())
def test_multilayer_margin_with_mixed_preactivation(seed, eps, relative):
    rng = np.random.default_rng(seed)
    n = 40
    a = np.maximum(rng.normal(size=(n, 3)), 0).astype(F32)
    b = rng.normal(size=(n, 2)).astype(F32)
    y = rng.integers(0, 2, n)
    m = BoxMonitor(n_clusters=2, tolerance=eps, relative_tolerance=relative,
                   n_init=1).fit_features({"a": a, "b": b}, y)
    za = (rng.normal(size=(200, 3)) * 1.5).astype(F32)
    zb = (rng.normal(size=(200, 2)) * 1.5).astype(F32)
    za[:40], zb[:40] = a, b  # training rows: accepted at both layers
    p = rng.integers(0, 2, 200)
    p[:40] = y
    acc = m.accepts_features({"a": np.maximum(za, 0), "b": zb}, p)
    assert acc[:40].all()
    mg = m.margin({"a": torch.from_numpy(za), "b": torch.from_numpy(zb)}, torch.from_numpy(p),
                  preactivation={"a": True})
    np.testing.assert_array_equal(mg.numpy() >= 0, acc)


@settings(max_examples=10, deadline=None)
@given(fit_data(), st.floats(0, 1), st.booleans(), st.integers(0, 10**6))
def test_save_load_gives_identical_decisions(tmp_path_factory, data, eps, relative, seed):
    x, y, k = data
    m = BoxMonitor(n_clusters=k, tolerance=eps, relative_tolerance=relative, max_clusters=4,
                   n_init=1).fit_features(x, y)
    path = m.save(tmp_path_factory.mktemp("mon") / "m.npz")
    m2 = BoxMonitor.load(path)
    q = queries(x, seed)
    p = np.random.default_rng(seed).integers(0, m.n_classes_, len(q))
    np.testing.assert_array_equal(m2.accepts_features(q, p), m.accepts_features(q, p))
    np.testing.assert_array_equal(m2.novelty_score(q, p), m.novelty_score(q, p))
