"""The abstraction family against independent brute-force implementations of the definitions.

Each brute force below is plain Python/numpy written from docs/abstractions.md: bounds in
float64 (or exact rationals for balls) from the float32 features, rounded outward to float32
by stepping with ``np.nextafter``, then decided by loops over clusters and constraints. The
clusters come from ``cluster_class`` with the monitor's settings (clustering is shared
machinery, tested in test_monitor.py); the union of sets does not depend on cluster order.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch

from boxhack.errors import BoxhackError
from boxhack.monitor import (
    CompositeMonitor,
    ConvexHullMonitor,
    MeanBallMonitor,
    OctagonMonitor,
    PatternMonitor,
    ZoneMonitor,
)
from boxhack.monitor.clustering import cluster_class
from boxhack.monitor.zone import max_width, pair_bytes

F32 = np.float32


# ----------------------------------------------------------------------------- brute force
def down32(v: float) -> np.float32:
    f = F32(v)
    while float(f) > v:
        f = np.nextafter(f, F32(-np.inf))
    return f


def up32(v: float) -> np.float32:
    f = F32(v)
    while float(f) < v:
        f = np.nextafter(f, F32(np.inf))
    return f


def up32_exact(q: Fraction) -> np.float32:
    f = F32(float(q))
    while Fraction(float(f)) < q:
        f = np.nextafter(f, F32(np.inf))
    while Fraction(float(np.nextafter(f, F32(-np.inf)))) >= q:
        f = np.nextafter(f, F32(-np.inf))
    return f


def clusters_of(x, y, n_classes, k, seed=0, n_init=3):
    out = []
    for c in range(n_classes):
        xc = x[y == c]
        if len(xc) == 0:
            continue
        res = cluster_class(xc, n_clusters=k, threshold=0.07, max_clusters=10, seed=seed,
                            n_init=n_init)
        for j in range(res.k):
            out.append((c, xc[res.labels == j]))
    return out


def widen(lo: float, hi: float, eps: float, relative: bool):
    """The tolerance rule on one interval (python floats are float64)."""
    if eps == 0:
        return F32(lo), F32(hi)
    pad = (eps / 2.0) * (hi - lo) if relative else eps
    return down32(lo - pad), up32(hi + pad)


def brute_pair_sets(x, y, n_classes, k, eps=0.0, relative=True, sums=False):
    sets = []
    for c, rows in clusters_of(x, y, n_classes, k):
        d = rows.shape[1]
        cons = []  # (kind, i, j, lo, hi) kind: "box", "diff", "sum"
        for i in range(d):
            lo, hi = widen(float(rows[:, i].min()), float(rows[:, i].max()), eps, relative)
            cons.append(("box", i, i, lo, hi))
        for i, j in itertools.combinations(range(d), 2):
            kinds = [("diff", lambda a, b: a - b)] + ([("sum", lambda a, b: a + b)] if sums else [])
            for kind, op in kinds:
                vals = [op(float(r[i]), float(r[j])) for r in rows]
                lo, hi = down32(min(vals)), up32(max(vals))
                lo, hi = widen(float(lo), float(hi), eps, relative)
                cons.append((kind, i, j, lo, hi))
        sets.append((c, cons))
    return sets


def brute_pair_accept(sets, q, pred):
    out = []
    for v, c in zip(q, pred):
        ok = False
        for cc, cons in sets:
            if cc != c:
                continue
            inside = True
            for kind, i, j, lo, hi in cons:
                if kind == "box":
                    val = v[i]
                elif kind == "diff":
                    val = float(v[i]) - float(v[j])
                else:
                    val = float(v[i]) + float(v[j])
                if not (float(lo) <= float(val) <= float(hi)):
                    inside = False
                    break
            if inside:
                ok = True
                break
        out.append(ok)
    return np.array(out)


def exact_sq(v, c) -> Fraction:
    return sum((Fraction(float(a)) - Fraction(float(b))) ** 2 for a, b in zip(v, c))


def brute_balls(x, y, n_classes, k, eps=0.0, relative=True):
    balls = []
    for c, rows in clusters_of(x, y, n_classes, k):
        center = rows.astype(np.float64).mean(0).astype(F32)
        r2 = up32_exact(max(exact_sq(r, center) for r in rows))
        if eps and relative:
            r2 = up32_exact(Fraction(float(r2)) * (1 + Fraction(eps)) ** 2)
        balls.append((c, center, r2))
    return balls


def brute_ball_accept(balls, q, pred):
    return np.array([any(cc == c and exact_sq(v, ctr) <= Fraction(float(r2))
                         for cc, ctr, r2 in balls) for v, c in zip(q, pred)])


def brute_pattern_accept(x, y, q, pred, gamma):
    stored = {}
    for v, c in zip(x, y):
        stored.setdefault(int(c), set()).add(tuple(bool(t > 0) for t in v))
    out = []
    for v, c in zip(q, pred):
        bits = tuple(bool(t > 0) for t in v)
        out.append(any(sum(a != b for a, b in zip(bits, p)) <= gamma
                       for p in stored.get(int(c), ())))
    return np.array(out)


# ----------------------------------------------------------------------------- data
def post_relu_data(n=80, d=4, classes=3, seed=0, dead=True):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2, size=(classes, 2, d))
    y = rng.integers(0, classes, n)
    x = centers[y, rng.integers(0, 2, n)] + rng.normal(0, 1, size=(n, d))
    x = np.maximum(x, 0).astype(F32)
    if dead:
        x[:, 0] = 0.0  # a flat (dead) unit
    return x, y


def boundary_queries(x, seed, n=120):
    """Training rows, rows with one coordinate one float32 step up/down, random rows."""
    rng = np.random.default_rng(seed)
    pick = x[rng.integers(0, len(x), n)].copy()
    stepped = pick.copy()
    cols = rng.integers(0, x.shape[1], n)
    up = rng.random(n) < 0.5
    for r, (c, u) in enumerate(zip(cols, up)):
        stepped[r, c] = np.nextafter(stepped[r, c], F32(np.inf) if u else F32(-np.inf))
    spread = float(np.abs(x).max()) + 1.0
    rand = rng.uniform(-0.2, 1, size=(n, x.shape[1])).astype(F32) * F32(spread)
    return np.concatenate([pick, stepped, rand]).astype(F32)


# ----------------------------------------------------------------------------- zone / octagon
@pytest.mark.parametrize("cls,sums", [(ZoneMonitor, False), (OctagonMonitor, True)])
@pytest.mark.parametrize("k", [1, 2])
def test_pair_monitors_equal_brute_force(cls, sums, k):
    x, y = post_relu_data(seed=k)
    q = boundary_queries(x, seed=10 + k)
    pred = np.random.default_rng(k).integers(0, 3, len(q))
    for eps, rel in [(0.0, True), (0.3, True), (0.2, False)]:
        m = cls(n_clusters=k, tolerance=eps, relative_tolerance=rel).fit_features(x, y)
        sets = brute_pair_sets(x, y, 3, k, eps, rel, sums)
        got = m.accepts_features(q, pred)
        assert np.array_equal(got, brute_pair_accept(sets, q, pred)), (eps, rel)
        assert m.accepts_features(x, y).all()
        assert np.array_equal(m.decision_function(q, pred) >= 0, got)
        assert np.array_equal(m.novelty_score(q, pred) == 0, got)
    assert 0 < got.mean() < 1  # the queries straddle the boundary


def test_zone_pair_constraint_one_step_past():
    # box [0,1]^2, differences x0 - x1 in [0, 0.5]; octagon sums x0 + x1 in [0, 2]
    x = np.array([[0, 0], [1, 1], [0.5, 0]], F32)
    y = np.zeros(3, np.int64)
    zone = ZoneMonitor(n_clusters=1).fit_features(x, y)
    octa = OctagonMonitor(n_clusters=1).fit_features(x, y)
    inside = np.array([[1.0, 0.5], [0.25, 0.25]], F32)
    past = np.array([[1.0, np.nextafter(F32(0.5), F32(0))],  # x0 - x1 one step above 0.5
                     [np.nextafter(F32(0.25), F32(0)), F32(0.25)]], F32)  # below 0
    for m in (zone, octa):
        assert m.accepts_features(inside, [0, 0]).all()
        assert not m.accepts_features(past, [0, 0]).any()
        assert (m.decision_function(past, [0, 0]) < 0).all()
    # a box accepts them: the pair constraint is what rejects
    assert ((past >= x.min(0)) & (past <= x.max(0))).all()
    # octagon only: x0 + x1 above the largest sum 2 - but also outside the box - and a sum
    # constraint inside the box: points (0,1),(1,0) give sums exactly 1, the box [0,1]^2
    xs = np.array([[0, 1], [1, 0]], F32)
    o = OctagonMonitor(n_clusters=1).fit_features(xs, [0, 0])
    z = ZoneMonitor(n_clusters=1).fit_features(xs, [0, 0])
    q = np.array([[0.5, 0.5], [0.5, np.nextafter(F32(0.5), F32(1))]], F32)
    assert o.accepts_features(q, [0, 0]).tolist() == [True, False]
    assert z.accepts_features(q, [0, 0]).tolist() == [True, True]


def test_pair_relative_tolerance_uses_interval_width():
    # x0 - x1 over the cluster in [-1, 3] (width 4): eps 0.5 widens each end by 1
    x = np.array([[0, 1], [3, 0], [1, 1], [2, 1]], F32)
    m = ZoneMonitor(n_clusters=1, tolerance=0.5).fit_features(x, np.zeros(4, np.int64))
    b = m.bounds()
    assert b["diff_lo"][0, 0] == F32(-2) and b["diff_hi"][0, 0] == F32(4)
    assert b["box_lo"][0].tolist() == [-0.75, -0.25] and b["box_hi"][0].tolist() == [3.75, 1.25]
    t = m.bounds(tight=True)
    assert t["diff_lo"][0, 0] == F32(-1) and t["diff_hi"][0, 0] == F32(3)


def test_pair_bounds_round_outward():
    # 1 - 1e-8 is not a float32: the tight upper bound must be the float32 just above
    x = np.array([[1.0, 1e-8], [0.0, 0.0]], F32)
    m = ZoneMonitor(n_clusters=1).fit_features(x, [0, 0])
    hi = m.bounds(tight=True)["diff_hi"][0, 0]
    assert float(hi) >= 1.0 - float(F32(1e-8)) and hi == up32(1.0 - float(F32(1e-8)))
    assert m.accepts_features(x, [0, 0]).all()


def test_flat_dimensions_one_point_clusters_and_empty_class():
    x = np.array([[0, 1, 2], [0, 1, 2], [0, 3, 1], [0, 2, 2], [5, 5, 5]], F32)
    y = np.array([0, 0, 1, 1, 2])  # class 2: one point; class 3: none
    q = np.array([[0, 1, 2], [np.nextafter(F32(0), F32(1)), 1, 2], [5, 5, 5],
                  [5, 5, np.nextafter(F32(5), F32(6))], [0, 1, 2]], F32)
    pred = np.array([0, 0, 2, 2, 3])
    want = np.array([True, False, True, False, False])
    for m in (ZoneMonitor(1, n_classes=4), OctagonMonitor(1, n_classes=4),
              MeanBallMonitor(1, n_classes=4), PatternMonitor(n_classes=4),
              ConvexHullMonitor(1, n_classes=4)):
        m.fit_features(x, y)
        acc = m.accepts_features(q, pred)
        if isinstance(m, PatternMonitor):  # patterns only see signs: tiny > 0 is "on"
            assert acc.tolist() == [True, False, True, True, False]
        elif isinstance(m, ConvexHullMonitor):  # exact up to lp_tolerance: 1 step is inside
            assert acc[[0, 2, 4]].tolist() == [True, True, False]
        else:
            assert acc.tolist() == want.tolist(), type(m).__name__
        assert np.isinf(m.novelty_score(q[4:], pred[4:])).all()
        assert m.decision_function(q[4:], pred[4:])[0] == -np.inf
        assert m.margin(torch.tensor(q[4:]), pred[4:]).item() == -np.inf


# ----------------------------------------------------------------------------- ball
@pytest.mark.parametrize("k", [1, 2])
def test_ball_equals_exact_brute_force(k):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(60, 3)).astype(F32)
    y = rng.integers(0, 2, 60)
    m = MeanBallMonitor(n_clusters=k).fit_features(x, y)
    balls = brute_balls(x, y, 2, k)
    center, radius = m.balls(tight=True)
    assert np.array_equal(radius, np.sqrt(np.array([float(b[2]) for b in balls])))
    assert np.array_equal(center, np.stack([b[1] for b in balls]))
    assert np.array_equal(m.state_["features"]["radius2"], np.array([b[2] for b in balls]))
    # queries on the spheres: scale each row about its centre to land within float32 steps
    q = []
    for _, ctr, r2 in balls:
        for _ in range(15):
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            base = (ctr + u * np.sqrt(float(r2))).astype(F32)
            q += [base, np.nextafter(base, F32(np.inf)), np.nextafter(base, F32(-np.inf))]
    q = np.concatenate([np.array(q, F32), boundary_queries(x, k, 40)])
    pred = rng.integers(0, 2, len(q))
    got = m.accepts_features(q, pred)
    assert np.array_equal(got, brute_ball_accept(balls, q, pred))
    assert 0 < got.mean() < 1
    assert m.accepts_features(x, y).all()
    m2 = m.with_tolerance(0.25)
    assert np.array_equal(m2.accepts_features(q, pred),
                          brute_ball_accept(brute_balls(x, y, 2, k, 0.25), q, pred))


def test_ball_absolute_tolerance_is_smallest_float32_above():
    x = np.array([[0, 0], [3, 4]], F32)  # mean (1.5, 2), radius 2.5
    m = MeanBallMonitor(1, tolerance=0.5, relative_tolerance=False).fit_features(x, [0, 0])
    r2 = m.derived_["features"]["radius2"][0]
    assert r2 == F32(9.0)  # (2.5 + 0.5)^2 exactly
    assert m.accepts_features(np.array([[1.5, 5.0]], F32), [0]).all()
    assert not m.accepts_features(np.array([[1.5, np.nextafter(F32(5), F32(6))]], F32), [0]).any()


# ----------------------------------------------------------------------------- pattern
@pytest.mark.parametrize("gamma", [0, 1, 2])
def test_pattern_equals_brute_force(gamma):
    rng = np.random.default_rng(gamma)
    z = rng.normal(size=(80, 70)).astype(F32)  # 70 units: two 64-bit words
    x = np.maximum(z, 0)
    y = rng.integers(0, 3, 80)
    m = PatternMonitor(gamma=gamma).fit_features(x, y)
    q = x[rng.integers(0, 80, 150)].copy()
    flips = rng.random(q.shape) < 0.015
    q[flips] = np.where(q[flips] > 0, 0, 1)
    q[:10, 5] = np.nextafter(F32(0), F32(1))  # the smallest "on" value
    pred = rng.integers(0, 3, len(q))
    pred[::2] = y[rng.integers(0, 80, len(q[::2]))]
    got = m.accepts_features(q, pred)
    assert np.array_equal(got, brute_pattern_accept(x, y, q, pred, gamma))
    assert m.accepts_features(x, y).all()
    assert np.array_equal(m.decision_function(q, pred) >= 0, got)


def test_pattern_tolerance_maps_to_hamming_radius():
    m = PatternMonitor(gamma=1, tolerance=0.1).fit_features(np.ones((2, 40), F32), [0, 1])
    assert m.derived_["features"]["gamma"] == 1 + 4
    assert m.with_tolerance(2.7, relative_tolerance=False).derived_["features"]["gamma"] == 3


def test_pattern_margin_is_linf_distance_to_nearest_ball():
    x = np.array([[1, 1, 0, 0]], F32)
    m = PatternMonitor(gamma=1).fit_features(x, [0])
    z = torch.tensor([[0.5, -0.2, -0.3, 0.1],  # 2 disagree: fix -0.2 -> 0.2 away => -0.1
                      [0.5, 0.4, -0.3, 0.05]], requires_grad=True)  # 1 disagrees: accepted
    mg = m.margin(z, [0, 0], preactivation=True)
    assert mg[0].item() == pytest.approx(-0.1) and mg[1].item() == pytest.approx(0.3)
    mg.sum().backward()
    assert z.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- hull
def qhull_accept(x, y, n_classes, k, q, pred, min_gap=1e-4):
    from scipy.spatial import ConvexHull

    acc = np.zeros(len(q), bool)
    gap = np.full(len(q), np.inf)
    for c, rows in clusters_of(x, y, n_classes, k):
        h = ConvexHull(rows.astype(np.float64))
        val = (h.equations[:, :-1] @ q.astype(np.float64).T + h.equations[:, -1:]).max(0)
        sel = pred == c
        acc[sel] |= val[sel] <= 0
        gap[sel] = np.minimum(gap[sel], np.abs(val[sel]))
    return acc, gap > min_gap


@pytest.mark.parametrize("d", [2, 3])
def test_hull_equals_qhull_away_from_faces(d):
    rng = np.random.default_rng(d)
    x = rng.normal(size=(120, d)).astype(F32)
    y = rng.integers(0, 2, 120)
    m = ConvexHullMonitor(n_clusters=2).fit_features(x, y)
    q = (rng.normal(size=(150, d)) * 1.3).astype(F32)
    pred = rng.integers(0, 2, len(q))
    want, clear = qhull_accept(x, y, 2, 2, q, pred)
    got = m.accepts_features(q, pred)
    assert np.array_equal(got[clear], want[clear])
    assert 0.2 < got.mean() < 0.8
    assert m.accepts_features(x, y).all()
    assert np.array_equal(m.novelty_score(q, pred) == 0, got)
    # pushed 1e-3 past a vertex (outward from the centroid): rejected
    c = x[y == 0].mean(0)
    far = x[y == 0][np.argmax(np.linalg.norm(x[y == 0] - c, axis=1))]
    out = (far + 1e-3 * (far - c) / np.linalg.norm(far - c)).astype(F32)
    assert not ConvexHullMonitor(n_clusters=1).fit_features(x, y).accepts_features(
        out[None], [0]).any()


def test_hull_tolerances():
    x = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], F32)  # the unit square
    q = np.array([[1.05, 0.5], [1.2, 0.5], [1.05, 1.05]], F32)
    rel = ConvexHullMonitor(1, tolerance=0.2).fit_features(x, [0] * 4)  # side 1.2 about 0.5
    assert rel.accepts_features(q, [0] * 3).tolist() == [True, False, True]
    ab = ConvexHullMonitor(1, tolerance=0.1, relative_tolerance=False).fit_features(x, [0] * 4)
    assert ab.accepts_features(q, [0] * 3).tolist() == [True, False, True]
    tight = ConvexHullMonitor(1).fit_features(x, [0] * 4)
    assert tight.accepts_features(q, [0] * 3).tolist() == [False, False, False]


# ----------------------------------------------------------------------------- margins
def all_monitors(**kw):
    return [ZoneMonitor(n_clusters=2, **kw), OctagonMonitor(n_clusters=2, **kw),
            MeanBallMonitor(n_clusters=2, **kw), PatternMonitor(gamma=1, **kw),
            ConvexHullMonitor(n_clusters=1, **kw),
            CompositeMonitor([ZoneMonitor(), PatternMonitor()], **kw)]


@pytest.mark.parametrize("eps,rel", [(0.0, True), (0.3, False)])
def test_margin_sign_equals_decision_and_has_gradient(eps, rel):
    x, y = post_relu_data(n=60, d=4, seed=3)
    rng = np.random.default_rng(4)
    z = np.concatenate([
        boundary_queries(x, seed=5, n=40),
        (rng.normal(size=(40, 4)) * 2).astype(F32),  # pre-activations, many negative
    ])
    pred = rng.integers(0, 3, len(z))
    for m in all_monitors(tolerance=eps, relative_tolerance=rel):
        m.fit_features(x, y)
        acc = m.accepts_features(z, pred)
        zt = torch.tensor(z, requires_grad=True)
        mg = m.margin(zt, pred)
        assert mg.dtype == torch.float32
        assert np.array_equal(mg.detach().numpy() >= 0, acc), m.abstraction
        mg.sum().backward()
        assert zt.grad.abs().sum() > 0, m.abstraction
        zp = torch.tensor(z, requires_grad=True)  # the ReLU pre-activation rule
        mp = m.margin(zp, pred, preactivation=True)
        acc_relu = m.accepts_features(np.maximum(z, 0), pred)
        assert np.array_equal(mp.detach().numpy() >= 0, acc_relu), m.abstraction
        for dt in (torch.float64,):
            assert np.array_equal(m.margin(torch.tensor(z, dtype=dt), pred).numpy() >= 0, acc)


def test_pair_margin_value_is_decision_function():
    x, y = post_relu_data(n=60, d=5, seed=8)
    q = boundary_queries(x, seed=9, n=50)
    pred = np.random.default_rng(1).integers(0, 3, len(q))
    for cls in (ZoneMonitor, OctagonMonitor):
        m = cls(n_clusters=2).fit_features(x, y)
        df = m.decision_function(q, pred)
        mg = m.margin(torch.tensor(q, dtype=torch.float64), pred).numpy()
        assert np.array_equal(df, mg)


def test_preactivation_keeps_gradient_through_dead_units():
    x = np.array([[0, 1], [0, 2]], F32)  # unit 0 dead in training
    m = ZoneMonitor(n_clusters=1).fit_features(x, [0, 0])
    z = torch.tensor([[-0.2, 1.5]], requires_grad=True)
    mg = m.margin(z, [0], preactivation=True)
    assert mg.item() > 0
    mg.backward()
    assert z.grad[0, 0] != 0  # relu(z) would give no gradient to the dead unit


# ----------------------------------------------------------------------------- memory limit
def test_max_width_and_memory_refusal():
    for fam in (1, 2):
        w = max_width(30, fam)
        assert pair_bytes(w, 30, fam) <= 1 << 30 < pair_bytes(w + 1, 30, fam)
    assert max_width(30, 2) == 1221 and max_width(30, 1) == 1726
    x = np.random.default_rng(0).normal(size=(20, 40)).astype(F32)
    with pytest.raises(BoxhackError, match="widest layer that fits is"):
        OctagonMonitor(max_memory=100_000).fit_features(x, np.zeros(20, np.int64))
    ZoneMonitor(max_memory=100_000).fit_features(x[:, :20], np.zeros(20, np.int64))


# ----------------------------------------------------------------------------- a model
def test_fit_on_a_model_predict_and_forward_margin():
    from boxhack.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("mnist-mlp", 10)
    inputs = torch.rand(300, 1, 28, 28)
    with torch.no_grad():
        labels = model(inputs).argmax(1)  # every training input correctly classified
    for m in all_monitors():
        m.set_params(n_classes=10)
        m.fit(model, "relu2", inputs, labels)
        pred, acc = m.predict(model, inputs[:120], batch_size=1000)
        logits, mg = m.forward_margin(model, inputs[:120])
        assert np.array_equal(logits.argmax(1).numpy(), pred)
        assert np.array_equal(mg.detach().numpy() >= 0, acc), m.abstraction
        assert acc[:50].sum() > 0  # training inputs are among them
        assert m.accepts(model, inputs).all()
        assert m.score_inputs(model, inputs[:5]).shape == (5,)


# ----------------------------------------------------------------------------- the reference
def test_reference_deviations_script():
    """scripts/reference_deviations.py: at relative eps 0 the reference rules decide exactly
    as boxhack; its relative pair tolerance barely widens; its absolute octagon rejects every
    training vector."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "reference_deviations.py"
    spec = importlib.util.spec_from_file_location("reference_deviations", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = {(r["abstraction"], r["tolerance"], r["eps"]): r for r in mod.run(0)}
    for kind in ("box", "ball", "zone", "octagon"):
        assert rows[kind, "relative", 0.0]["decisions_differ"] == 0
        assert rows[kind, "relative", 0.0]["boxhack_train"] == 1.0
    for kind in ("box", "ball"):
        assert all(r["decisions_differ"] == 0 for k, r in rows.items() if k[0] == kind)
    for kind in ("zone", "octagon"):
        ours, ref = rows[kind, "relative", 0.5], rows[kind, "relative", 0.0]
        assert ours["boxhack_fresh"] - ref["boxhack_fresh"] > 0.15
        assert ours["reference_fresh"] - ref["reference_fresh"] < 0.06
    for eps in (0.0, 0.5):
        r = rows["octagon", "absolute", eps]
        assert r["reference_train"] == 0.0 and r["boxhack_train"] == 1.0


def test_margin_sign_helpers():
    from boxhack.monitor.base import cast_keep_sign, fix_margin_sign

    for dt in (torch.float32, torch.float64):
        m = torch.tensor([1.0, -1.0, 0.0, np.inf, -np.inf, 2.0, -3.0], dtype=dt,
                         requires_grad=True)
        acc = torch.tensor([False, True, False, False, True, True, False])
        out = fix_margin_sign(m, acc)
        assert ((out >= 0) == acc).all()
        assert out[5].item() == 2.0 and out[6].item() == -3.0  # agreeing rows untouched
        out.sum().backward()
        assert m.grad.tolist() == [1, 1, 1, 0, 0, 1, 1]  # straight-through where finite
    tiny = torch.tensor([-1e-300, 1e-300, -0.5], dtype=torch.float64)
    out = cast_keep_sign(tiny, torch.float32)
    assert out.dtype == torch.float32 and (out >= 0).tolist() == [False, True, False]


def test_parallel_and_serial_kernels_agree(monkeypatch):
    from boxhack.monitor import jit

    x, y = post_relu_data(n=200, d=6, seed=11)
    q = boundary_queries(x, seed=12, n=300)
    pred = np.random.default_rng(2).integers(0, 3, len(q))
    monitors = [ZoneMonitor(2), OctagonMonitor(2), MeanBallMonitor(2), PatternMonitor(gamma=1)]
    for m in monitors:
        m.fit_features(x, y)
    monkeypatch.setenv("BOXHACK_KERNEL_THREADS", "1")
    serial = [(m.accepts_features(q, pred), m.decision_function(q, pred),
               m.novelty_score(q, pred)) for m in monitors]
    monkeypatch.delenv("BOXHACK_KERNEL_THREADS")
    monkeypatch.setattr(jit, "PARALLEL_MIN_ROWS", 0)
    monkeypatch.setattr(jit, "contended", lambda: False)
    for m, (acc, dec, nov) in zip(monitors, serial):
        assert np.array_equal(m.accepts_features(q, pred), acc)
        assert np.array_equal(m.decision_function(q, pred), dec)
        assert np.array_equal(m.novelty_score(q, pred), nov)
