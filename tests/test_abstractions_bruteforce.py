"""Every abstraction (box, ball, zone, octagon, pattern, hull, and a composite) against an
independent brute force of its definition, on one adversarial data set: a dead (all-zero) unit,
a flat non-zero unit, a class of one point, a class of one point repeated, and queries pushed
one float32 step past (and onto) every face of every set.

The brute forces are plain Python loops over sets and constraints (the helpers of
``test_abstractions.py`` for zones, octagons, balls and patterns; the box's and the absolute
ball's are here): bounds from the float32 training vectors, computed in float64 or exactly,
rounded outward to float32 by ``np.nextafter`` steps. Clusters come from ``cluster_class`` with
the monitor's settings (shared machinery, tested in test_monitor.py). The hull's decisions are
exact only up to its LP tolerance (docs/abstractions.md), so its brute force is an
independent LP (the reference's feasibility formulation, with presolve) and decisions are
compared where the L-inf distance to the hull is clearly 0 or clearly above the tolerance.
"""

from __future__ import annotations

import itertools
from decimal import Decimal, getcontext
from fractions import Fraction

import numpy as np
import pytest
from test_abstractions import (
    brute_ball_accept,
    brute_balls,
    brute_pair_accept,
    brute_pair_sets,
    brute_pattern_accept,
    clusters_of,
    up32_exact,
    widen,
)

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
N_CLASSES = 6  # class 5 has no training vector: everything predicted 5 is rejected
TOLERANCES = [(0.0, True), (0.0, False), (0.4, True), (0.15, False)]


def adversarial_data(seed: int, d: int = 5):
    """Classes 0-2: post-ReLU Gaussian modes; class 3: one point; class 4: one point twice.
    Unit 0 is dead (0 everywhere), unit 1 is flat at 2.5 in every class."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2, size=(3, 2, d))
    y = rng.integers(0, 3, 70)
    x = np.maximum(centers[y, rng.integers(0, 2, 70)] + rng.normal(0, 1, (70, d)), 0)
    one = np.abs(rng.normal(1, 1, (1, d)))
    twice = np.abs(rng.normal(2, 1, (1, d)))
    x = np.concatenate([x, one, twice, twice]).astype(F32)
    y = np.concatenate([y, [3, 4, 4]])
    x[:, 0] = 0.0
    x[:, 1] = 2.5
    return x, y


def step(v, up: bool):
    return np.nextafter(F32(v), F32(np.inf) if up else F32(-np.inf))


def face_queries(x, y, k, eps, rel, sums: bool):
    """For every cluster and every interval constraint (box side, and pair difference / sum
    when ``sums`` is not None), the training row attaining its extreme pushed one step
    outward, one step inward, and its coordinate put exactly on the widened bound and one
    step past it."""
    rows_q, pred_q = [], []
    for c, rows in clusters_of(x, y, N_CLASSES, k):
        d = rows.shape[1]
        for i in range(d):
            col = rows[:, i].astype(np.float64)
            lo, hi = widen(float(col.min()), float(col.max()), eps, rel)
            for arg, bound, up in ((col.argmax(), hi, True), (col.argmin(), lo, False)):
                for value in (step(rows[arg, i], up), step(rows[arg, i], not up), bound,
                              step(bound, up)):
                    v = rows[arg].copy()
                    v[i] = value
                    rows_q.append(v)
                    pred_q.append(c)
        if sums is None:
            continue
        for i, j in itertools.combinations(range(d), 2):
            kinds = [(rows[:, i].astype(np.float64) - rows[:, j], -1)]
            if sums:
                kinds.append((rows[:, i].astype(np.float64) + rows[:, j], 1))
            for vals, sign in kinds:
                for arg, up in ((vals.argmax(), True), (vals.argmin(), False)):
                    for target, direction in ((i, up), (j, up if sign > 0 else not up)):
                        v = rows[arg].copy()
                        v[target] = step(v[target], direction)
                        rows_q.append(v)
                        pred_q.append(c)
    return np.array(rows_q, F32), np.array(pred_q)


def with_random(x, q, pred, seed, n=80):
    rng = np.random.default_rng(seed)
    spread = float(np.abs(x).max()) + 1.0
    rand = (rng.uniform(-0.1, 1, size=(n, x.shape[1])) * spread).astype(F32)
    rand[: n // 2, 1] = 2.5  # on the flat unit, so they are not rejected by it alone
    rand[: n // 4, 0] = 0.0
    q = np.concatenate([q, x, rand])
    pred = np.concatenate([pred, rng.integers(0, N_CLASSES, len(x) + n)])
    return q, pred


# ----------------------------------------------------------------------------- brute forces
def brute_box_accept(x, y, k, eps, rel, q, pred):
    boxes = []
    for c, rows in clusters_of(x, y, N_CLASSES, k):
        bounds = [widen(float(rows[:, i].min()), float(rows[:, i].max()), eps, rel)
                  for i in range(rows.shape[1])]
        boxes.append((c, bounds))
    out = []
    for v, c in zip(q, pred):
        out.append(any(cc == c and all(float(lo) <= float(t) <= float(hi)
                                       for t, (lo, hi) in zip(v, bounds))
                       for cc, bounds in boxes))
    return np.array(out)


def smallest_f32_at_least_sq(r: Decimal) -> np.float32:
    """The smallest float32 >= r^2 (r a high-precision decimal)."""
    target = r * r
    f = F32(float(target))
    while Decimal(float(f)) < target:
        f = step(f, True)
    while Decimal(float(step(f, False))) >= target:
        f = step(f, False)
    return f


def brute_balls_absolute(x, y, k, eps):
    getcontext().prec = 200
    balls = []
    for c, center, r2 in brute_balls(x, y, N_CLASSES, k):
        if eps == 0:
            balls.append((c, center, r2))
            continue
        r = Decimal(float(r2)).sqrt() + Decimal(eps)
        balls.append((c, center, smallest_f32_at_least_sq(r)))
    return balls


def hull_distance(points, v):
    """L-inf distance of v to conv(points): an independent LP (presolve on, HiGHS' default
    method), in the original coordinates."""
    from scipy.optimize import linprog

    p = points.astype(np.float64)
    m, d = p.shape
    # variables: lam (m), t; |P^T lam - v| <= t
    a_ub = np.block([[p.T, -np.ones((d, 1))], [-p.T, -np.ones((d, 1))]])
    b_ub = np.concatenate([v, -v]).astype(np.float64)
    res = linprog(np.r_[np.zeros(m), 1.0], A_ub=a_ub, b_ub=b_ub,
                  A_eq=np.r_[np.ones(m), 0.0][None], b_eq=[1.0], bounds=(0, None))
    assert res.status == 0
    return float(res.fun)


# ----------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("name", ["box", "zone", "octagon"])
def test_interval_abstractions_equal_brute_force_on_every_face(name, k, seed):
    x, y = adversarial_data(seed)
    cls, sums = {"box": (BoxMonitor, None), "zone": (ZoneMonitor, False),
                 "octagon": (OctagonMonitor, True)}[name]
    base = cls(n_clusters=k, n_classes=N_CLASSES).fit_features(x, y)
    assert base.accepts_features(x, y).all()  # every training vector, at tolerance 0
    for eps, rel in TOLERANCES:
        m = base.with_tolerance(eps, relative_tolerance=rel)
        faces = face_queries(x, y, k, eps, rel, sums)
        q, pred = with_random(x, *faces, seed=seed)
        if sums is None:
            want = brute_box_accept(x, y, k, eps, rel, q, pred)
        else:
            want = brute_pair_accept(brute_pair_sets(x, y, N_CLASSES, k, eps, rel, sums),
                                     q, pred)
        got = m.accepts_features(q, pred)
        np.testing.assert_array_equal(got, want, err_msg=f"{name} eps={eps} rel={rel}")
        assert 0.1 < got[: len(faces[0])].mean() < 0.9  # the queries straddle the faces
        np.testing.assert_array_equal(m.decision_function(q, pred) >= 0, got)
        assert m.accepts_features(x, y).all()
        assert not m.accepts_features(x, np.full(len(x), N_CLASSES - 1)).any()


@pytest.mark.parametrize("k", [1, 2])
def test_ball_equals_exact_brute_force_with_flat_units_and_one_point_clusters(k):
    x, y = adversarial_data(3)
    rng = np.random.default_rng(k)
    base = MeanBallMonitor(n_clusters=k, n_classes=N_CLASSES).fit_features(x, y)
    assert base.accepts_features(x, y).all()
    for eps, rel in TOLERANCES:
        balls = (brute_balls_absolute(x, y, k, eps) if not rel
                 else brute_balls(x, y, N_CLASSES, k, eps, rel))
        q, pred = [], []
        for c, ctr, r2 in balls:  # on each sphere (radius 0: the centre), and one step off
            for _ in range(8):
                u = rng.normal(size=x.shape[1])
                u[:2] = 0.0  # stay on the flat units' values
                u /= np.linalg.norm(u)
                on = (ctr + u * np.sqrt(float(r2))).astype(F32)
                j = int(rng.integers(2, x.shape[1]))
                for v in (on, np.nextafter(on, F32(np.inf)), np.nextafter(on, F32(-np.inf))):
                    q.append(v)
                    pred.append(c)
                w = on.copy()
                w[j] = step(w[j], bool(u[j] >= 0))  # one step further out along u
                q.append(w)
                pred.append(c)
        q, pred = with_random(x, np.array(q, F32), np.array(pred), seed=k)
        got = base.with_tolerance(eps, relative_tolerance=rel).accepts_features(q, pred)
        np.testing.assert_array_equal(got, brute_ball_accept(balls, q, pred),
                                      err_msg=f"eps={eps} rel={rel}")
        assert 0.1 < got.mean() < 0.9


def test_ball_one_point_cluster_is_exactly_its_point():
    x, y = adversarial_data(4)
    m = MeanBallMonitor(n_clusters=2, n_classes=N_CLASSES).fit_features(x, y)
    one = x[y == 3][0]
    q = [one]
    for i in range(2, x.shape[1]):
        for up in (True, False):
            v = one.copy()
            v[i] = step(v[i], up)
            q.append(v)
    assert m.accepts_features(np.array(q), [3] * len(q)).tolist() == [True] + [False] * (len(q) - 1)
    assert Fraction(float(m.state_["features"]["radius2"][
        list(m.state_["features"]["cluster_class"]).index(3)])) == 0
    assert up32_exact(Fraction(0)) == 0


@pytest.mark.parametrize("gamma", [0, 1, 3])
def test_pattern_equals_brute_force_at_the_sign_boundary(gamma):
    x, y = adversarial_data(5, d=9)
    rng = np.random.default_rng(gamma)
    tiny = np.nextafter(F32(0), F32(1))
    q = x[rng.integers(0, len(x), 200)].copy()
    cols = rng.integers(0, x.shape[1], len(q))
    values = np.array([0.0, -0.0, tiny, -tiny, 1.0], F32)[rng.integers(0, 5, len(q))]
    q[np.arange(len(q)), cols] = values  # flip (or not) one unit at the sign boundary
    flips = rng.random(q.shape) < 0.1
    q[flips] = np.where(q[flips] > 0, -0.0, tiny)
    q, pred = with_random(x, q, y[rng.integers(0, len(y), len(q))], seed=gamma)
    for eps, rel in [(0.0, True), (0.0, False), (0.25, True), (2.0, False)]:
        m = PatternMonitor(gamma=gamma, n_classes=N_CLASSES, tolerance=eps,
                           relative_tolerance=rel).fit_features(x, y)
        radius = gamma + (int(np.floor(eps * x.shape[1])) if rel else int(np.floor(eps)))
        got = m.accepts_features(q, pred)
        np.testing.assert_array_equal(got, brute_pattern_accept(x, y, q, pred, radius))
        assert m.accepts_features(x, y).all()
        assert 0.05 < got.mean() < 0.95


def test_composite_is_the_conjunction_of_brute_forces():
    x, y = adversarial_data(6)
    k = 2
    m = CompositeMonitor([BoxMonitor(n_clusters=k), PatternMonitor(gamma=1)],
                         n_classes=N_CLASSES).fit_features(x, y)
    q, pred = with_random(x, *face_queries(x, y, k, 0.0, True, None), seed=6)
    want = brute_box_accept(x, y, k, 0.0, True, q, pred) & brute_pattern_accept(x, y, q, pred, 1)
    got = m.accepts_features(q, pred)
    np.testing.assert_array_equal(got, want)
    assert m.accepts_features(x, y).all() and 0.2 < got.mean() < 0.8


@pytest.mark.parametrize("k", [1, 2])
def test_hull_equals_independent_lp_with_flat_units_and_one_point_clusters(k):
    x, y = adversarial_data(7, d=4)
    m = ConvexHullMonitor(n_clusters=k, n_classes=N_CLASSES).fit_features(x, y)
    assert m.accepts_features(x, y).all()  # every training vector, exactly
    rng = np.random.default_rng(k)
    q, pred = [], []
    for c, rows in clusters_of(x, y, N_CLASSES, k):
        ctr = rows.astype(np.float64).mean(0)
        for _ in range(6):  # convex combinations (inside), and rows pushed out from the centre
            w = rng.dirichlet(np.ones(len(rows)))
            q.append(w @ rows.astype(np.float64))
            r = rows[rng.integers(0, len(rows))].astype(np.float64)
            q.append(r + 0.05 * (r - ctr) + 0.01 * rng.normal(size=x.shape[1]))
            pred += [c, c]
        q.append(rows[0].astype(np.float64))
        pred.append(c)
        v = rows[0].copy()  # the flat unit pushed one step: outside by one step
        v[1] = step(v[1], True)
        q.append(v.astype(np.float64))
        pred.append(c)
    q = np.array(q).astype(F32)
    q, pred = with_random(x, q, np.array(pred), seed=k, n=30)
    got = m.accepts_features(q, pred)
    clusters = clusters_of(x, y, N_CLASSES, k)
    tau = 1e-6 * max(1.0, float(np.abs(x).max()))
    decided = 0
    for v, c, g in zip(q.astype(np.float64), pred, got):
        dist = min([hull_distance(rows, v) for cc, rows in clusters if cc == c], default=np.inf)
        if dist <= 1e-12 or dist > 10 * tau:  # clear cases; between, either is allowed
            assert g == (dist <= 1e-12), (v, c, dist)
            decided += 1
        else:
            assert dist <= 10 * tau
    assert decided >= 0.8 * len(q) and 0.1 < got.mean() < 0.9


@pytest.mark.parametrize("gamma", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("d", [24, 70, 130])
def test_pattern_pigeonhole_index_equals_brute_force(monkeypatch, gamma, d):
    """The hash-table candidate search (gamma 0: one exact probe) against the brute force, on
    layers of one to three 64-bit words, with it forced on (every class) and with its
    defaults (and, forced off, the binary search / plain scan)."""
    from boxhack.monitor import pattern

    rng = np.random.default_rng(d + gamma)
    protos = rng.random((4, d)) < 0.4
    y = rng.integers(0, 4, 300)
    bits = protos[y] ^ (rng.random((300, d)) < min(0.06, 2.0 * gamma / d))
    x = np.where(bits, rng.random((300, d)) + 0.1, -rng.random((300, d))).astype(F32)
    x[:, 0] = 0.0  # a dead unit
    q = x[rng.integers(0, 300, 400)].copy()
    flips = rng.random(q.shape) < (gamma + 1) / d
    q[flips] = np.where(q[flips] > 0, -0.0, np.nextafter(F32(0), F32(1)))
    pred = np.where(rng.random(400) < 0.8, y[rng.integers(0, 300, 400)], rng.integers(0, 4, 400))
    want = brute_pattern_accept(x, y, q, pred, gamma)
    for forced in (True, False, None):
        if forced:
            monkeypatch.setattr(pattern, "INDEX_MIN_PATTERNS", 0)
            monkeypatch.setattr(pattern, "INDEX_MIN_CHUNK_BITS", 1)
        elif forced is None:  # no index: the binary search (gamma 0) or the plain scan
            monkeypatch.setattr(pattern, "INDEX_MIN_PATTERNS", 10**9)
        m = PatternMonitor(gamma=gamma).fit_features(x, y)
        if forced is not None:
            assert (m.derived_["features"]["index"] is not None) or not forced
        else:
            assert m.derived_["features"]["index"] is None
        got = m.accepts_features(q, pred)
        np.testing.assert_array_equal(got, want, err_msg=f"forced={forced}")
        np.testing.assert_array_equal(m.decision_function(q, pred) >= 0, got)
        assert m.accepts_features(x, y).all()
        monkeypatch.undo()



@pytest.mark.parametrize("d", [1, 5, 32, 63, 64, 65, 130])
def test_pattern_packing_compiled_equals_numpy(monkeypatch, d):
    """The compiled one-pass packing gives the words numpy's packbits gives: signed zeros and
    the smallest subnormal included, float32 and float64."""
    from boxhack.monitor import pattern

    rng = np.random.default_rng(d)
    x = rng.normal(size=(200, d)).astype(F32)
    x[0], x[1], x[2, 0] = 0.0, -0.0, np.nextafter(F32(0), F32(1))
    fast = pattern.pack_patterns(x)
    monkeypatch.setattr(pattern, "HAVE_NUMBA", False)
    slow = pattern.pack_patterns(x)
    monkeypatch.undo()
    assert fast.dtype == slow.dtype == np.uint64 and fast.shape == slow.shape
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_array_equal(pattern.pack_patterns(x.astype(np.float64)), slow)
