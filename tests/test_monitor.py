"""BoxMonitor at the feature level: hand-computed cases, the elbow rule, files, errors."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from boxhack.errors import BoxhackError
from boxhack.monitor import BoxMonitor, cluster_class, load_monitor, save_monitor
from boxhack.monitor.base import widen_intervals

F32 = np.float32


def two_points_monitor(**kw) -> BoxMonitor:
    # class 0: box [0, 2] x [0, 1]; class 1: box [10, 11] x [5, 5] (flat in dim 1)
    x = np.array([[0, 0], [2, 1], [10, 5], [11, 5]], dtype=F32)
    y = np.array([0, 0, 1, 1])
    return BoxMonitor(n_clusters=1, **kw).fit_features(x, y)


# ----------------------------------------------------------------------- tolerance numbers
def test_tight_boxes_are_min_max():
    m = two_points_monitor()
    np.testing.assert_array_equal(m.lo_["features"], [[0, 0], [10, 5]])
    np.testing.assert_array_equal(m.hi_["features"], [[2, 1], [11, 5]])
    assert m.lo_["features"].dtype == np.float32
    assert m.n_clusters_["features"].tolist() == [1, 1]
    assert m.box_count_["features"].tolist() == [2, 2]


def test_relative_tolerance_numbers():
    # each side grows by eps/2 of the width: width 2 -> 0.5 per side, width 1 -> 0.25, flat -> 0
    m = two_points_monitor(tolerance=0.5)
    np.testing.assert_array_equal(m.lo_["features"], [[-0.5, -0.25], [9.75, 5]])
    np.testing.assert_array_equal(m.hi_["features"], [[2.5, 1.25], [11.25, 5]])
    # width becomes (1 + eps) x
    np.testing.assert_array_equal(m.hi_["features"][0] - m.lo_["features"][0], [3.0, 1.5])


def test_absolute_tolerance_numbers():
    m = two_points_monitor(tolerance=0.5, relative_tolerance=False)
    np.testing.assert_array_equal(m.lo_["features"], [[-0.5, -0.5], [9.5, 4.5]])
    np.testing.assert_array_equal(m.hi_["features"], [[2.5, 1.5], [11.5, 5.5]])


def test_flat_dimension_does_not_grow_relative_but_does_absolute():
    rel = two_points_monitor(tolerance=1.0)
    q = np.array([[10.5, 5.0], [10.5, np.nextafter(F32(5), F32(6))]], dtype=F32)
    assert rel.accepts_features(q, [1, 1]).tolist() == [True, False]
    ab = two_points_monitor(tolerance=1e-3, relative_tolerance=False)
    assert ab.accepts_features(q, [1, 1]).tolist() == [True, True]


def test_bounds_are_inclusive_and_exact_in_float32():
    m = two_points_monitor()
    lo, hi = m.lo_["features"][0], m.hi_["features"][0]
    inside = np.array([lo, hi, [lo[0], hi[1]]], dtype=F32)
    assert m.accepts_features(inside, [0, 0, 0]).all()
    below = np.array([[np.nextafter(lo[0], F32(-1)), 0.5]], dtype=F32)
    above = np.array([[1.0, np.nextafter(hi[1], F32(2))]], dtype=F32)
    assert not m.accepts_features(below, [0]).any()
    assert not m.accepts_features(above, [0]).any()


def test_widening_rounds_outward():
    tl = np.array([[0.1, -3.3]], dtype=F32)
    th = np.array([[0.3, 7.7]], dtype=F32)
    for eps, rel in [(0.1, True), (0.37, True), (0.1, False), (1e-9, False)]:
        lo, hi = widen_intervals(tl, th, eps, rel)
        lo64, hi64 = tl.astype(np.float64), th.astype(np.float64)
        pad = eps / 2 * (hi64 - lo64) if rel else eps
        assert (lo.astype(np.float64) <= lo64 - pad).all()
        assert (hi.astype(np.float64) >= hi64 + pad).all()
        # and at most one float32 step away
        assert (np.nextafter(lo, F32(np.inf)).astype(np.float64) > lo64 - pad).all()
        assert (np.nextafter(hi, F32(-np.inf)).astype(np.float64) < hi64 + pad).all()


def test_with_tolerance_keeps_clusters():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)).astype(F32)
    y = rng.integers(0, 2, 60)
    m = BoxMonitor(n_clusters=2).fit_features(x, y)
    m2 = m.with_tolerance(0.3)
    np.testing.assert_array_equal(m.tight_lo_["features"], m2.tight_lo_["features"])
    assert m.tolerance == 0 and m2.tolerance == 0.3
    assert (m2.lo_["features"] <= m.lo_["features"]).all()
    np.testing.assert_array_equal(m.lo_["features"], m.tight_lo_["features"])


# ----------------------------------------------------------------------- classes and layers
def test_empty_class_rejects_everything():
    x = np.array([[0, 0], [1, 1], [5, 5]], dtype=F32)
    m = BoxMonitor(n_clusters=1, n_classes=3).fit_features(x, [0, 0, 1])
    assert m.n_clusters_["features"].tolist() == [1, 1, 0]
    q = np.array([[0.5, 0.5], [0.5, 0.5]], dtype=F32)
    assert m.accepts_features(q, [0, 2]).tolist() == [True, False]
    assert m.novelty_score(q, [0, 2]).tolist() == [0.0, np.inf]
    mg = m.margin(torch.from_numpy(q), torch.tensor([0, 2]))
    assert mg[0] == 0.5 and mg[1] == -np.inf
    assert m.decision_function(q, [0, 2])[1] == -np.inf


def test_only_correct_drops_misclassified_rows():
    x = np.array([[0, 0], [1, 1], [9, 9]], dtype=F32)
    m = BoxMonitor(n_clusters=1).fit_features(x, [0, 0, 0], predictions=[0, 0, 1])
    np.testing.assert_array_equal(m.hi_["features"], [[1, 1]])
    assert m.n_fit_.tolist() == [2]
    m_all = BoxMonitor(n_clusters=1, only_correct=False).fit_features(
        x, [0, 0, 0], predictions=[0, 0, 1]
    )
    np.testing.assert_array_equal(m_all.hi_["features"], [[9, 9]])


def test_two_layers_accept_only_if_both_accept():
    a = np.array([[0.0], [1.0]], dtype=F32)
    b = np.array([[0.0, 0.0], [1.0, 1.0]], dtype=F32)
    m = BoxMonitor(n_clusters=1).fit_features({"a": a, "b": b}, [0, 0])
    assert m.layers_ == ["a", "b"] and m.dims_ == {"a": 1, "b": 2}
    q = {"a": np.array([[0.5], [0.5], [2.0]], F32),
         "b": np.array([[0.5, 0.5], [0.5, 2.0], [0.5, 0.5]], F32)}
    assert m.accepts_features(q, [0, 0, 0]).tolist() == [True, False, False]
    mg = m.margin({k: torch.from_numpy(v) for k, v in q.items()}, torch.zeros(3, dtype=torch.long))
    assert mg.tolist() == [0.5, -1.0, -1.0]
    assert (m.novelty_score(q, [0, 0, 0]) > 0).tolist() == [False, True, True]


def test_zero_inertia_class_does_not_crash():
    x = np.ones((50, 4), dtype=F32)
    y = np.zeros(50, dtype=int)
    for kw in ({}, {"n_clusters": 3}, {"clustering_threshold": 0.0}):
        m = BoxMonitor(**kw).fit_features(x, y)
        assert m.n_clusters_["features"].tolist() == [1]
        assert m.accepts_features(x[:2], [0, 0]).all()
    # two distinct points: k never exceeds the number of distinct vectors
    x2 = np.array([[0, 0]] * 10 + [[1, 1]] * 10, dtype=F32)
    m = BoxMonitor(n_clusters=5).fit_features(x2, np.zeros(20, int))
    assert m.n_clusters_["features"].tolist() == [2]
    m = BoxMonitor(clustering_threshold=0.0).fit_features(x2, np.zeros(20, int))
    assert m.n_clusters_["features"].tolist() == [2]


def three_blobs(seed=0, n=90, d=8):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0] * d, [20.0] * d, [-20.0] + [20.0] * (d - 1)])
    return (centers[np.arange(n) % 3] + rng.normal(size=(n, d))).astype(F32)


def test_elbow_rule_picks_three_on_three_blobs():
    x = three_blobs()
    result = cluster_class(x, threshold=0.07, max_clusters=10, seed=0)
    assert result.k == 3
    # the inertias show why: big drops to k=3, a small one after
    i = result.inertias
    assert 1 - i[1] / i[0] >= 0.07 and 1 - i[2] / i[1] >= 0.07 and 1 - i[3] / i[2] < 0.07
    m = BoxMonitor().fit_features(x, np.zeros(len(x), int))
    assert m.n_clusters_["features"].tolist() == [3]
    # each blob gets its own box: the box counts are the blob sizes
    assert sorted(m.box_count_["features"].tolist()) == [30, 30, 30]
    assert BoxMonitor(max_clusters=2).fit_features(x, np.zeros(len(x), int)).n_clusters_[
        "features"
    ].tolist() == [2]


# ----------------------------------------------------------------------- margin and score
def test_margin_values_on_hand_example():
    m = two_points_monitor()
    v = torch.tensor([[0.5, 0.25], [3.0, 0.5], [1.0, 1.0], [10.5, 5.0]])
    got = m.margin(v, torch.tensor([0, 0, 0, 1]))
    assert got.tolist() == [0.25, -1.0, 0.0, 0.0]
    # several boxes: the max over the class's boxes
    x = np.array([[0, 0], [1, 1], [10, 10], [12, 12]], dtype=F32)
    m2 = BoxMonitor(n_clusters=2).fit_features(x, [0, 0, 0, 0])
    got = m2.margin(torch.tensor([[11.0, 10.5], [5.0, 5.0]]), torch.tensor([0, 0]))
    assert got.tolist() == [0.5, -4.0]


def test_margin_gradient_is_nonzero_and_points_inward():
    m = two_points_monitor()
    for point, expected in [([0.5, 0.25], [0.0, 1.0]), ([3.0, 0.5], [-1.0, 0.0])]:
        v = torch.tensor([point], requires_grad=True)
        mg = m.margin(v, torch.tensor([0]))
        mg.sum().backward()
        assert v.grad.tolist() == [expected]
        stepped = v.detach() + 0.1 * v.grad
        assert m.margin(stepped, torch.tensor([0])) > mg.detach()


def test_preactivation_rule_hand_example():
    # relu features with a dead unit (dim 1 is always 0): box [1, 3] x [0, 0]
    x = np.array([[1, 0], [3, 0]], dtype=F32)
    m = BoxMonitor(n_clusters=1).fit_features(x, [0, 0])
    z = torch.tensor([[2.0, -5.0], [2.0, 0.5], [0.5, -1.0]], requires_grad=True)
    mg = m.margin(z, torch.zeros(3, dtype=torch.long), preactivation=True)
    # dim 0 (lo=1>0): min(z-1, 3-z); dim 1 (lo=0): only hi - z = -z
    assert mg.tolist() == [1.0, -0.5, -0.5]
    assert (mg >= 0).tolist() == m.accepts_features(torch.relu(z).detach().numpy(), [0, 0, 0]).tolist()
    mg[1].backward()
    assert z.grad[1].tolist() == [0.0, -1.0]  # push the dead unit back below 0: inward
    # post-activation margin of the same point has no useful gradient on the dead unit
    post = m.margin(torch.relu(z.detach()), torch.zeros(3, dtype=torch.long))
    assert (post >= 0).tolist() == (mg >= 0).tolist()


def test_score_formula():
    m = two_points_monitor()  # class 0 box [0,2]x[0,1], half-diagonal sqrt(5)/2
    q = np.array([[1, 0.5], [5, 0.5], [5, 5], [10.5, 6]], dtype=F32)
    s = m.novelty_score(q, [0, 0, 0, 1])
    r = np.sqrt(5) / 2
    np.testing.assert_allclose(s[:3], [0.0, 3 / r, 5 / r])
    # class 1's box [10,11]x[5,5] has half-diagonal 0.5
    np.testing.assert_allclose(s[3], 1.0 / 0.5)
    # a single-point box uses the plain distance
    single = BoxMonitor(n_clusters=1).fit_features(np.array([[1, 1]], F32), [0])
    np.testing.assert_allclose(single.novelty_score(np.array([[4, 5]], F32), [0]), [5.0])


def test_score_zero_iff_accepted_even_for_tiny_gaps():
    m = two_points_monitor()
    tiny = np.array([[np.nextafter(F32(2), F32(3)), 0.5], [1e-45, 1.0]], dtype=F32)
    acc = m.accepts_features(tiny, [0, 0])
    s = m.novelty_score(tiny, [0, 0])
    assert acc.tolist() == [False, True]
    assert s[0] > 0 and s[1] == 0


def test_many_rows_and_classes_agree_with_simple_reference():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 6)).astype(F32)
    y = rng.integers(0, 7, 3000)
    m = BoxMonitor(n_clusters=3, n_classes=8).fit_features(x, y)
    q = (rng.normal(size=(5000, 6)) * 1.2).astype(F32)
    p = rng.integers(0, 8, 5000)
    lo, hi, cls = m.lo_["features"], m.hi_["features"], m.box_class_["features"]
    inside = ((q[:, None] >= lo) & (q[:, None] <= hi)).all(-1) & (cls[None] == p[:, None])
    np.testing.assert_array_equal(m.accepts_features(q, p), inside.any(1))
    assert 0.05 < inside.any(1).mean() < 0.95


def test_query_chunking_and_blocks(monkeypatch):
    """The torch decision_function in small chunks and blocks, and on busy cores, gives the
    same values; its sign is the kernel's decision."""
    from boxhack.monitor import box

    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 5)).astype(F32)
    y = rng.integers(0, 4, 500)
    m = BoxMonitor(n_clusters=3).fit_features(x, y)
    q = rng.normal(size=(2000, 5)).astype(F32)
    p = rng.integers(0, 4, 2000)
    ref = m.decision_function(q, p)
    np.testing.assert_array_equal(ref >= 0, m.accepts_features(q, p))
    monkeypatch.setattr(box, "_CHUNK_ELEMENTS", 16)
    monkeypatch.setattr(box, "_BLOCK_ELEMENTS", 700)
    np.testing.assert_array_equal(m.decision_function(q, p), ref)
    monkeypatch.setattr(box, "_torch_contended", lambda: True)  # the small-op path
    np.testing.assert_array_equal(m.decision_function(q, p), ref)
    monkeypatch.undo()
    monkeypatch.setattr(box, "_torch_contended", lambda: True)
    np.testing.assert_array_equal(m.decision_function(q, p), ref)
    assert isinstance(box._torch_contended(), bool)


# ----------------------------------------------------------------------- files
def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    feats = {"l1": rng.normal(size=(80, 3)).astype(F32), "l2": rng.normal(size=(80, 5)).astype(F32)}
    y = rng.integers(0, 3, 80)
    m = BoxMonitor(n_clusters=2, tolerance=0.13, n_classes=4).fit_features(
        feats, y, model_sha256="abc123"
    )
    path = m.save(tmp_path / "mon")  # no .npz suffix: written exactly there
    assert path == tmp_path / "mon" and path.is_file()
    m2 = BoxMonitor.load(path)
    assert m2.get_params() == m.get_params()
    assert m2.layers_ == ["l1", "l2"] and m2.n_classes_ == 4
    assert m2.metadata_ == {"model_sha256": "abc123"}
    for layer in m.layers_:
        np.testing.assert_array_equal(m2.lo_[layer], m.lo_[layer])
        np.testing.assert_array_equal(m2.hi_[layer], m.hi_[layer])
    q = {"l1": rng.normal(size=(300, 3)).astype(F32), "l2": rng.normal(size=(300, 5)).astype(F32)}
    p = rng.integers(0, 4, 300)
    np.testing.assert_array_equal(m2.accepts_features(q, p), m.accepts_features(q, p))
    np.testing.assert_array_equal(m2.novelty_score(q, p), m.novelty_score(q, p))
    # the functional wrappers
    save_monitor(m, tmp_path / "m.npz")
    assert load_monitor(tmp_path / "m.npz").n_classes_ == 4


def _rewrite(src, dst, edit):
    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    edit(arrays)
    with open(dst, "wb") as fh:
        np.savez(fh, **arrays)


def test_corrupt_truncated_and_wrong_files(tmp_path):
    m = two_points_monitor(tolerance=0.1)
    good = m.save(tmp_path / "good.npz")
    raw = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    for name in ("trunc.npz", "garbage.npz"):
        with pytest.raises(BoxhackError, match="cannot read monitor file"):
            BoxMonitor.load(tmp_path / name)
    with pytest.raises(BoxhackError, match="not found"):
        BoxMonitor.load(tmp_path / "missing.npz")

    def version(a):
        meta = json.loads(str(a["meta"][()]))
        meta["format_version"] = 99
        a["meta"] = np.array(json.dumps(meta))

    _rewrite(good, tmp_path / "v99.npz", version)
    with pytest.raises(BoxhackError, match="format version 99"):
        BoxMonitor.load(tmp_path / "v99.npz")

    def wrong_format(a):
        a["meta"] = np.array(json.dumps({"format": "something-else"}))

    _rewrite(good, tmp_path / "fmt.npz", wrong_format)
    with pytest.raises(BoxhackError, match="not a valid boxhack monitor"):
        BoxMonitor.load(tmp_path / "fmt.npz")

    def edited_bounds(a):
        a["lo_0"] = a["lo_0"] - np.float32(1)

    _rewrite(good, tmp_path / "edit.npz", edited_bounds)
    with pytest.raises(BoxhackError, match="disagree"):
        BoxMonitor.load(tmp_path / "edit.npz")

    def shape(a):
        a["hi_0"] = a["hi_0"][:, :1]

    _rewrite(good, tmp_path / "shape.npz", shape)
    with pytest.raises(BoxhackError, match="hi_0 has shape"):
        BoxMonitor.load(tmp_path / "shape.npz")

    def missing(a):
        del a["box_class_0"]

    _rewrite(good, tmp_path / "missing_arr.npz", missing)
    with pytest.raises(BoxhackError, match="missing"):
        BoxMonitor.load(tmp_path / "missing_arr.npz")

    # a pickled object array is refused (allow_pickle=False), reported as a BoxhackError
    def pickled(a):
        a["meta"] = np.array([{"format": "boxhack-monitor"}], dtype=object)

    _rewrite(good, tmp_path / "pickle.npz", pickled)
    with pytest.raises(BoxhackError):
        BoxMonitor.load(tmp_path / "pickle.npz")
    assert zipfile.is_zipfile(good)


# ----------------------------------------------------------------------- errors
def test_unfitted_monitor_errors():
    m = BoxMonitor()
    with pytest.raises(BoxhackError, match="not fitted"):
        m.accepts_features(np.zeros((1, 2), F32), [0])
    with pytest.raises(BoxhackError, match="not fitted"):
        m.margin(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    with pytest.raises(BoxhackError, match="not fitted"):
        m.save("x.npz")


def test_bad_features_errors():
    m = two_points_monitor()
    with pytest.raises(BoxhackError, match="NaN or infinite"):
        m.accepts_features(np.array([[np.nan, 0]], F32), [0])
    with pytest.raises(BoxhackError, match="NaN or infinite"):
        m.accepts_features(np.array([[np.inf, 0]], F32), [0])
    with pytest.raises(BoxhackError, match="3 dimensions but the monitor was fitted on 2"):
        m.accepts_features(np.zeros((1, 3), F32), [0])
    with pytest.raises(BoxhackError, match="2-D"):
        m.accepts_features(np.zeros(2, F32), [0])
    with pytest.raises(BoxhackError, match="empty"):
        m.accepts_features(np.zeros((0, 2), F32), [])
    with pytest.raises(BoxhackError, match="class index 2"):
        m.accepts_features(np.zeros((1, 2), F32), [2])
    with pytest.raises(BoxhackError, match="negative"):
        m.accepts_features(np.zeros((1, 2), F32), [-1])
    with pytest.raises(BoxhackError, match="1-D array of 2"):
        m.accepts_features(np.zeros((2, 2), F32), [0])
    with pytest.raises(BoxhackError, match="unknown"):
        m.accepts_features({"features": np.zeros((1, 2), F32), "other": np.zeros((1, 2))}, [0])
    with pytest.raises(BoxhackError, match=r"shape \(1, 3\)"):
        m.margin(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))
    with pytest.raises(BoxhackError, match="out of range"):
        m.margin(torch.zeros(1, 2), torch.tensor([5]))


def test_bad_fit_inputs_and_params():
    x = np.zeros((3, 2), F32)
    with pytest.raises(BoxhackError, match="NaN"):
        BoxMonitor().fit_features(np.array([[0, np.nan]], F32), [0])
    with pytest.raises(BoxhackError, match="empty"):
        BoxMonitor().fit_features(np.zeros((0, 2), F32), [])
    with pytest.raises(BoxhackError, match="class index 5"):
        BoxMonitor(n_classes=3).fit_features(x, [0, 1, 5])
    with pytest.raises(BoxhackError, match="integer class indices"):
        BoxMonitor().fit_features(x, [0.5, 1, 1])
    with pytest.raises(BoxhackError, match="no training vector"):
        BoxMonitor().fit_features(x, [0, 0, 0], predictions=[1, 1, 1])
    for params, name in [
        ({"n_clusters": 0}, "n_clusters=0"),
        ({"tolerance": -0.1}, "tolerance=-0.1"),
        ({"tolerance": float("nan")}, "tolerance=nan"),
        ({"clustering_threshold": 2.0}, "clustering_threshold=2.0"),
        ({"max_clusters": 0}, "max_clusters=0"),
        ({"n_classes": 0}, "n_classes=0"),
        ({"relative_tolerance": "yes"}, "relative_tolerance='yes'"),
    ]:
        with pytest.raises(BoxhackError, match=name):
            BoxMonitor(**params).fit_features(x, [0, 0, 0])
    with pytest.raises(BoxhackError, match="no parameter"):
        BoxMonitor().set_params(k=3)


def test_repr_params_and_summary():
    m = BoxMonitor(n_clusters=2, tolerance=0.1)
    assert repr(m) == "BoxMonitor(n_clusters=2, tolerance=0.1)"
    assert m.set_params(tolerance=0.2) is m and m.tolerance == 0.2
    m.fit_features(np.arange(8, dtype=F32).reshape(4, 2), [0, 0, 1, 1])
    s = m.summary()
    assert s["n_classes"] == 2 and s["layers"] == ["features"]
    json.dumps(s)


# --------------------------------------------------------------- hand-edited / garbled files
def _meta_edit(**changes):
    def edit(a):
        meta = json.loads(str(a["meta"][()]))
        for key, value in changes.items():
            if key.startswith("params."):
                meta["params"][key[7:]] = value
            elif key.startswith("metadata."):
                meta.setdefault("metadata", {})[key[9:]] = value
            else:
                meta[key] = value
        a["meta"] = np.array(json.dumps(meta))

    return edit


def _set(name, value):
    def edit(a):
        a[name] = value(a) if callable(value) else value

    return edit


def _both(*edits):
    def edit(a):
        for e in edits:
            e(a)

    return edit


def _inf_box(a, side, sign):
    """Both the tight and the widened bound of one side set to +-inf (self-consistent)."""
    for name in (f"tight_{side}_0", f"{side}_0"):
        arr = a[name].copy()
        arr[0, 0] = sign * np.inf
        a[name] = arr


GARBLES = {
    # non-finite bounds: an infinite box would accept everything
    "inf hi": (lambda a: _inf_box(a, "hi", +1), "infinite"),
    "-inf lo": (lambda a: _inf_box(a, "lo", -1), "infinite"),
    "inf widened hi only": (_set("hi_0", lambda a: np.full_like(a["hi_0"], np.inf)), "infinite"),
    "nan tight": (_set("tight_lo_0", lambda a: np.full_like(a["tight_lo_0"], np.nan)), "NaN"),
    # n_fit: counts per class
    "n_fit strings": (_set("n_fit", np.array(["3", "2"])), "n_fit"),
    "n_fit nan": (_set("n_fit", np.array([np.nan, 2.0])), "n_fit"),
    "n_fit float": (_set("n_fit", np.array([2.0, 2.0])), "n_fit"),
    "n_fit negative": (_set("n_fit", np.array([-1, 2], dtype=np.int64)), "n_fit"),
    "n_fit wrong shape": (_set("n_fit", np.array([2, 2, 0], dtype=np.int64)), "n_fit"),
    "n_fit missing": (lambda a: a.pop("n_fit"), "n_fit"),
    "n_fit disagrees with boxes": (_set("n_fit", np.array([5, 2], dtype=np.int64)), "n_fit says"),
    "n_fit bool": (_set("n_fit", np.array([True, True])), "n_fit"),
    # metadata fields
    "meta not a string": (_set("meta", np.array([1, 2])), "metadata record"),
    "meta not an object": (_set("meta", np.array(json.dumps([1, 2]))), "format"),
    "layers a string": (_meta_edit(layers="features"), "layers"),
    "layers empty name": (_meta_edit(layers=[""]), "layers"),
    "layers repeat": (_meta_edit(layers=["a", "a"], dims=[2, 2], n_boxes=[2, 2]), "repeat"),
    "dims float": (_meta_edit(dims=[2.5]), "dims"),
    "dims zero": (_meta_edit(dims=[0]), "dims"),
    "dims string": (_meta_edit(dims=["2"]), "dims"),
    "dims wrong width": (_meta_edit(dims=[3]), "tight_lo_0 has shape (2, 2), expected (2, 3)"),
    "n_classes string": (_meta_edit(n_classes="2"), "n_classes"),
    "n_classes bool": (_meta_edit(n_classes=True), "n_classes"),
    "n_classes zero": (_meta_edit(n_classes=0), "n_classes"),
    "n_classes larger": (_meta_edit(n_classes=3), "n_fit must be int64 counts >= 0, one per class (3)"),
    "n_boxes wrong": (_meta_edit(n_boxes=[5]), "boxes"),
    "n_boxes missing": (_meta_edit(n_boxes=None), "n_boxes"),
    "params not a dict": (_meta_edit(params=[1]), "params"),
    "param unknown": (_meta_edit(**{"params.colour": 1}), "unknown parameters"),
    "param tolerance nan": (_meta_edit(**{"params.tolerance": float("nan")}), "tolerance"),
    "param tolerance negative": (_meta_edit(**{"params.tolerance": -0.5}), "tolerance"),
    "param n_classes disagrees": (_meta_edit(**{"params.n_classes": 5}), "n_classes"),
    "metadata a list": (_meta_edit(metadata=[1]), "metadata"),
    "metadata hash a number": (_meta_edit(**{"metadata.model_sha256": 12}), "hash"),
    # arrays
    "box_class float": (_set("box_class_0", lambda a: a["box_class_0"].astype(np.float64)), "box_class"),
    "box_class out of range": (_set("box_class_0", np.array([0, 7], dtype=np.int64)),
                               "box_class_0 holds a class outside 0..1"),
    "box_class unsorted": (_set("box_class_0", np.array([1, 0], dtype=np.int64)), "sorted"),
    "box_count zero": (_set("box_count_0", np.array([0, 2], dtype=np.int64)), "box_count"),
    "box_count float": (_set("box_count_0", np.array([2.0, 2.0])), "box_count"),
    "n_clusters wrong": (_set("n_clusters_0", np.array([2, 0], dtype=np.int64)), "n_clusters"),
    "float64 bounds": (_set("lo_0", lambda a: a["lo_0"].astype(np.float64)),
                       "lo_0 has dtype float64, expected float32"),
    "lo above hi": (_both(_set("tight_lo_0", lambda a: a["tight_hi_0"] + 1),
                          _set("lo_0", lambda a: a["tight_hi_0"] + 1)), "inconsistent"),
    "extra array": (_set("lo_1", np.zeros((2, 2), np.float32)), "unexpected arrays"),
}


@pytest.mark.parametrize("case", list(GARBLES))
def test_garbled_monitor_files_are_refused(tmp_path, case):
    edit, message = GARBLES[case]
    m = two_points_monitor(tolerance=0.1)
    good = m.save(tmp_path / "good.npz")
    _rewrite(good, tmp_path / "bad.npz", edit)
    with pytest.raises(BoxhackError) as exc:
        BoxMonitor.load(tmp_path / "bad.npz")
    assert message in str(exc.value)
    assert str(tmp_path / "bad.npz") in str(exc.value) and "\n" not in str(exc.value)


def test_an_infinite_box_would_accept_everything_so_it_is_refused(tmp_path):
    """The failure the check prevents: widen one class's box to +-inf in every dimension and
    every query of that class is accepted."""
    m = two_points_monitor()
    path = m.save(tmp_path / "m.npz")

    def infinite(a):
        for side, sign in (("lo", -1), ("hi", 1)):
            for name in (f"tight_{side}_0", f"{side}_0"):
                a[name] = np.full_like(a[name], sign * np.inf)

    _rewrite(path, tmp_path / "inf.npz", infinite)
    with pytest.raises(BoxhackError, match="infinite"):
        BoxMonitor.load(tmp_path / "inf.npz")
    far = np.array([[1e30, -1e30]], dtype=F32)
    assert not m.accepts_features(far, [0])[0]  # the real monitor rejects it


def test_save_refuses_a_directory_and_unwritable_places(tmp_path):
    m = two_points_monitor()
    with pytest.raises(BoxhackError, match="directory"):
        m.save(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BoxhackError, match="cannot write the monitor"):
        m.save(blocker / "m.npz")  # parent is a file
    m.metadata_["bad"] = object()
    with pytest.raises(BoxhackError, match="not plain JSON"):
        m.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_overflowing_tolerance_is_refused():
    x = np.array([[0, 0], [3e38, 1]], dtype=F32)
    with pytest.raises(BoxhackError, match="float32 range"):
        BoxMonitor(n_clusters=1, tolerance=1.0).fit_features(x, [0, 0])


@pytest.mark.parametrize("d", [1, 7, 31, 32, 63, 64, 65, 96, 97, 130])
def test_kernels_equal_brute_force_at_every_width(monkeypatch, d):
    """The narrow (one branch-free pass) and wide (blocks of 32 dimensions) kernels, serial
    and parallel, against the definition; queries just inside and just past a face in the
    last block and the tail."""
    from boxhack.monitor import jit

    rng = np.random.default_rng(d)
    x = np.maximum(rng.normal(size=(300, d)) + rng.integers(0, 3, (300, 1)), 0).astype(F32)
    y = rng.integers(0, 4, 300)
    m = BoxMonitor(n_clusters=3, n_classes=5).fit_features(x, y)
    lo, hi, cls = m.lo_["features"], m.hi_["features"], m.box_class_["features"]
    p = rng.integers(0, 5, 900)
    q = np.concatenate([rng.normal(size=(300, d)).astype(F32) * 2 + 1, x[:300], x[:300].copy()])
    last = rng.integers(0, d, 300)
    q[600 + np.arange(300), last] = np.nextafter(hi[0, last], F32(np.inf))  # one step past
    p[300:] = np.concatenate([y[:300], np.zeros(300, int)])
    inside = ((q[:, None] >= lo) & (q[:, None] <= hi)).all(-1) & (cls[None] == p[:, None])
    monkeypatch.setenv("BOXHACK_KERNEL_THREADS", "1")
    serial = m.accepts_features(q, p)
    monkeypatch.delenv("BOXHACK_KERNEL_THREADS")
    monkeypatch.setattr(jit, "PARALLEL_MIN_ROWS", 0)
    monkeypatch.setattr(jit, "contended", lambda: False)
    np.testing.assert_array_equal(serial, inside.any(1))
    np.testing.assert_array_equal(m.accepts_features(q, p), serial)
    np.testing.assert_array_equal(m.decision_function(q, p) >= 0, serial)
    assert serial[300:600].all() and 0 < serial.mean() < 1
