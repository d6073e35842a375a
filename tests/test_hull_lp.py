"""The convex-hull monitor's fast paths (exact convex-combination accepts without an LP, the
warm-started HiGHS model, the interior-point fallback) decide exactly as the plain LP: one cold
``scipy.optimize.linprog`` per row and hull, written here from the documented rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

import boxhack.monitor.hull as hull_module
from boxhack.monitor import ConvexHullMonitor


def _data(seed=0, n=240, d=6, classes=3):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = (rng.random((n, d)) * (1 + y[:, None]) + 2.0 * y[:, None]).astype(np.float32)
    x[:, 0] = 0.0  # a dead unit, as ReLU layers have: a flat hull side
    return x, y


def _queries(x, y, seed=1):
    """Inside (mixtures of training vectors), on the boundary (along rays from the centroid
    through training vectors, just in and just out) and random rows, each with its class."""
    rng = np.random.default_rng(seed)
    qs = []
    for c in range(3):
        pts = x[y == c].astype(np.float64)
        w = rng.dirichlet(np.ones(len(pts)) * 0.3, 40)
        qs.append(w @ pts)
        centre = pts.mean(0)
        for s in (0.98, 0.999999, 1.000001, 1.02):
            qs.append(centre + s * (pts[:15] - centre))
        qs.append(rng.random((20, x.shape[1])) * 8)
    q = np.concatenate(qs).astype(np.float32)
    pred = np.concatenate([[c] * (40 + 4 * 15 + 20) for c in range(3)])
    return q, pred


def plain_lp_accepts(monitor, q, pred):
    """The documented rule, one cold LP per row and hull: v' = c + (v - c) / (1 + eps) (relative
    eps) in the hull's scaled coordinates, accepted iff min_lam ||P^T lam - v'||_inf <=
    eps_abs / scale + lp_tolerance for some hull of the predicted class."""
    layer = monitor.layers_[0]
    state = monitor.state_[layer]
    offsets = np.concatenate([[0], np.cumsum(state["point_count"])])
    eps, rel = float(monitor.tolerance), bool(monitor.relative_tolerance)
    out = np.zeros(len(q), dtype=bool)
    for r, (v, c) in enumerate(zip(q.astype(np.float64), pred)):
        for b in np.flatnonzero(state["cluster_class"] == c):
            pts = state["points"][offsets[b]:offsets[b + 1]].astype(np.float64)
            scale = max(1.0, float(np.abs(pts).max()))
            p, vp = pts / scale, v / scale
            centre = p.mean(0)
            if rel:
                vp = centre + (vp - centre) / (1 + eps)
            m, d = p.shape
            res = linprog(np.r_[np.zeros(m), 1.0],
                          A_ub=np.block([[p.T, -np.ones((d, 1))], [-p.T, -np.ones((d, 1))]]),
                          b_ub=np.r_[vp, -vp], A_eq=np.r_[np.ones(m), 0.0][None], b_eq=[1.0],
                          bounds=(0, None), method="highs")  # fmt: skip
            assert res.status == 0
            slack = (0.0 if rel else eps / scale) + monitor.lp_tolerance
            if res.fun <= slack:
                out[r] = True
                break
    return out


@pytest.mark.parametrize(("tolerance", "relative"), [(0.0, True), (0.1, True), (0.05, False)])
def test_fast_paths_decide_as_the_plain_lp(tolerance, relative):
    x, y = _data()
    mon = ConvexHullMonitor(n_clusters=2, tolerance=tolerance, relative_tolerance=relative,
                            seed=0).fit_features(x, y)  # fmt: skip
    q, pred = _queries(x, y)
    want = plain_lp_accepts(mon, q, pred)
    assert 0.2 < want.mean() < 0.9  # both decisions, many rows near a face
    got = mon.accepts_features(q, pred)
    assert np.array_equal(got, want)
    # within one call the convex-combination cache fills: the rows asked twice need fewer
    # LPs the second time; across calls nothing is remembered (results depend on the input)
    first_pass = mon.lp_calls
    again = mon.accepts_features(np.concatenate([q, q]), np.concatenate([pred, pred]))
    assert np.array_equal(again, np.concatenate([want, want]))
    assert mon.lp_calls - first_pass < 2 * first_pass
    assert np.array_equal(mon.decision_function(q, pred), mon.decision_function(q, pred))
    # another order of the same rows: the same decisions, and the same graded values (cold LPs)
    assert np.array_equal(mon.accepts_features(q[::-1], pred[::-1])[::-1], want)
    assert np.array_equal(mon.novelty_score(q[::-1], pred[::-1])[::-1], mon.novelty_score(q, pred))
    # the graded values agree with the decision
    assert np.array_equal(mon.decision_function(q, pred) >= 0, want)


def test_the_interior_point_fallback_decides_as_the_plain_lp(monkeypatch):
    """A dual simplex that reaches its iteration limit (HiGHS can cycle on the degenerate LP of
    a row inside a hull) hands the row to the interior-point method: same decisions."""
    monkeypatch.setattr(hull_module, "SIMPLEX_ITERATIONS", 0)  # every simplex solve stops
    x, y = _data(seed=2)
    mon = ConvexHullMonitor(n_clusters=1, seed=0).fit_features(x, y)
    q, pred = _queries(x, y, seed=3)
    want = plain_lp_accepts(mon, q, pred)
    assert np.array_equal(mon.accepts_features(q, pred), want)
    fallbacks = sum(cl.lp_fallbacks for der in mon.derived_.values() for cl in der["clusters"])
    assert fallbacks > 0


def test_without_highspy_the_cold_lp_decides_the_same(monkeypatch):
    monkeypatch.setattr(hull_module, "_warm_model", lambda cluster: False)
    x, y = _data(seed=4)
    mon = ConvexHullMonitor(n_clusters=2, seed=0).fit_features(x, y)
    q, pred = _queries(x, y, seed=5)
    assert np.array_equal(mon.accepts_features(q, pred), plain_lp_accepts(mon, q, pred))


def test_a_convex_combination_is_accepted_without_an_lp():
    x, y = _data(seed=6)
    mon = ConvexHullMonitor(n_clusters=1, seed=0).fit_features(x, y)
    cl = mon.derived_[mon.layers_[0]]["clusters"][0]
    cl._seed()  # the centroid's point set
    support, _ = cl._simplices[0]
    inner = cl.points[support].mean(0)  # inside that simplex: a convex combination
    ok, resid = cl.inside(inner[None])
    assert ok[0] and resid[0] < 1e-12
    far = cl.points.max(0) + 1.0  # outside the hull: never accepted by the certificate
    assert not cl.inside(far[None])[0][0]
