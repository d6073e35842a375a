"""Monitor files of every abstraction: exact round trips, and hand-edited or garbled files
refused with a clear one-line error (the strict checks live in the protocol's base, so every
abstraction gets them; box files are format version 1, the others version 2)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from boxhack.errors import BoxhackError, NotFittedError
from boxhack.monitor import (
    BoxMonitor,
    CompositeMonitor,
    ConvexHullMonitor,
    MeanBallMonitor,
    Monitor,
    OctagonMonitor,
    PatternMonitor,
    ZoneMonitor,
)
from boxhack.monitor.registry import load_monitor

F32 = np.float32


def data(seed=0, n=90, d=5):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(size=(n, d)) + rng.integers(0, 3, (n, 1)), 0).astype(F32)
    y = rng.integers(0, 3, n)
    q = np.maximum(rng.normal(size=(80, d)) * 1.5 + 1, 0).astype(F32)
    return x, y, q, rng.integers(0, 3, 80)


def monitors():
    return {
        "box": BoxMonitor(n_clusters=2, tolerance=0.1),
        "zone": ZoneMonitor(n_clusters=2, tolerance=0.1),
        "octagon": OctagonMonitor(n_clusters=2, tolerance=0.2, relative_tolerance=False),
        "ball": MeanBallMonitor(n_clusters=2, tolerance=0.05),
        "pattern": PatternMonitor(gamma=1),
        "hull": ConvexHullMonitor(n_clusters=1),
        "composite": CompositeMonitor([ZoneMonitor(n_clusters=2), PatternMonitor(),
                                       MeanBallMonitor(), BoxMonitor(n_clusters=3)],
                                      tolerance=0.1),
    }


@pytest.mark.parametrize("name", sorted(monitors()))
def test_round_trip_gives_identical_decisions(tmp_path, name):
    x, y, q, pred = data()
    m = monitors()[name]
    m.fit_features({"a": x, "b": x[:, ::-1] * 2}, y, metadata={"note": name})
    feats = {"a": q, "b": q[:, ::-1] * 2}
    path = m.save(tmp_path / "m.npz")
    back = load_monitor(path)
    assert type(back) is type(m) and back.get_params() == m.get_params()
    assert back.summary() == m.summary()
    assert np.array_equal(back.accepts_features(feats, pred), m.accepts_features(feats, pred))
    assert np.array_equal(back.decision_function(feats, pred), m.decision_function(feats, pred))
    assert np.array_equal(back.novelty_score(feats, pred), m.novelty_score(feats, pred))
    mt = {k: torch.from_numpy(v.copy()) for k, v in feats.items()}
    assert torch.equal(back.margin(mt, pred), m.margin(mt, pred))
    other = back.with_tolerance(0.4)
    assert np.array_equal(other.accepts_features(feats, pred),
                          m.with_tolerance(0.4).accepts_features(feats, pred))
    assert type(m).load(path).abstraction == m.abstraction
    assert Monitor.load(path).abstraction == name
    wrong = ZoneMonitor if name != "zone" else BoxMonitor
    with pytest.raises(BoxhackError, match="load it with"):
        wrong.load(path)


def _edit(path, out, **changes):
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            del arrays[key]
        elif callable(value):
            arrays[key] = value(arrays[key])
        else:
            arrays[key] = value
    with open(out, "wb") as fh:
        np.savez(fh, **arrays)
    return out


def _meta(edit):
    def apply(a):
        meta = json.loads(str(a[()]))
        edit(meta)
        return np.array(json.dumps(meta))
    return apply


def _nan(a):
    a = a.copy()
    a.flat[0] = np.nan
    return a


def _inf(a):
    a = a.copy()
    a.flat[0] = np.inf
    return a


EDITS = {
    "box": [
        ({"tight_lo_0": _nan}, "tight_lo_0 contains NaN or infinite"),
        ({"hi_0": _inf}, "hi_0 contains NaN or infinite"),
        ({"lo_0": lambda a: a - 1}, "disagree with the tolerance"),
        ({"box_class_0": lambda a: a[::-1].copy()}, "box_class_0 is not sorted"),
        ({"n_clusters_0": lambda a: a + 1}, "n_clusters_0 does not match"),
        ({"meta": _meta(lambda m: m.update(n_boxes=[1]))}, "its metadata says 1"),
        ({"meta": _meta(lambda m: m.update(n_boxes=None))}, "n_boxes"),
        ({"tight_hi_0": lambda a: a - 100}, "tight_lo_0 > tight_hi_0"),
        ({"box_count_0": None}, "'box_count_0' missing"),
    ],
    "zone": [
        ({"L0__box_lo": _nan}, "NaN or infinite"),
        ({"L0__diff_hi": lambda a: a[:, :-1]}, "shape"),
        ({"L0__box_hi": lambda a: a.astype(np.float64)}, "dtype"),
        ({"L0__diff_lo": lambda a: a + 100}, "lo > hi"),
        ({"L0__cluster_class": lambda a: a[::-1].copy()}, "not sorted"),
        ({"L0__cluster_class": lambda a: a + 5}, "outside"),
        ({"L0__sum_lo": np.zeros((2, 2), F32),
          "meta": _meta(lambda m: m["state"]["0"].append("sum_lo"))}, "unexpected arrays"),
        ({"L0__diff_lo": None}, "missing"),
        ({"meta": _meta(lambda m: m["params"].update(max_memory=1000))}, "max_memory"),
    ],
    "octagon": [({"L0__sum_hi": _inf}, "NaN or infinite")],
    "ball": [
        ({"L0__radius2": _inf}, "NaN or infinite"),
        ({"L0__radius2": lambda a: -a}, "negative"),
        ({"L0__center": lambda a: a.astype(np.float64)}, "dtype"),
    ],
    "pattern": [
        ({"L0__patterns": lambda a: a | np.uint64(1 << 63)}, "beyond the layer width"),
        ({"L0__patterns": lambda a: a[::-1].copy()}, "sorted and distinct"),
        ({"L0__patterns": lambda a: a.astype(np.int64)}, "dtype"),
        ({"L0__pattern_count": lambda a: a * 0}, "without training vectors"),
    ],
    "hull": [
        ({"L0__points": _nan}, "NaN or infinite"),
        ({"L0__point_count": lambda a: a + 1}, "sums to"),
    ],
    "composite": [
        ({"L0__m1.patterns": lambda a: a | np.uint64(1 << 63)}, "member 1 \\(pattern\\)"),
        ({"L0__m3.lo": _nan}, "m3.lo contains NaN"),
        ({"L0__m3.cluster_count": lambda a: a + 1}, "member 3 holds"),
        ({"meta": _meta(lambda m: m["params"]["members"].append(
            {"abstraction": "composite", "params": {}}))}, "cannot contain"),
        ({"meta": _meta(lambda m: m["params"]["members"].append(
            {"abstraction": "nope", "params": {}}))}, "unknown abstraction"),
    ],
}


def _header(**changes):
    return {"meta": _meta(lambda m: m.update(changes))}


def _array(name, value):
    return {name: value}


def _first_state_array(path):
    """The name of the first float array of layer 0 (v2: ``L0.x``; v1 box: ``tight_lo_0``),
    or ``None`` (patterns hold none)."""
    with np.load(path, allow_pickle=False) as f:
        return next((k for k in f.files if k != "meta" and f[k].dtype.kind == "f"), None)


# header field types and n_fit, the same for every abstraction (the base checks them)
COMMON = [
    (_header(abstraction="os.system", format_version=2), "unknown abstraction"),
    (_header(format_version=99), "format version"),
    (_header(format_version=True), "format version"),
    ({"meta": _meta(lambda m: m["params"].update(bogus=1))}, "unknown parameters"),
    ({"meta": _meta(lambda m: m["params"].update(tolerance=-1))}, "tolerance"),
    ({"meta": _meta(lambda m: m["params"].update(tolerance=float("nan")))}, "tolerance"),
    ({"meta": _meta(lambda m: m["params"].update(n_classes=7))}, "n_classes=7"),
    (_header(params=[1]), "'params' is not a JSON object"),
    (_header(layers="features"), "'layers' is not a non-empty list"),
    (_header(layers=[""]), "'layers' is not a non-empty list"),
    (_header(layers=[1]), "'layers' is not a non-empty list"),
    (_header(layers=["a", "a"], dims=[5, 5]), "repeats a name"),
    (_header(dims=[5.0]), "'dims'"),
    (_header(dims=[True]), "'dims'"),
    (_header(dims=[0]), "'dims'"),
    (_header(dims=["5"]), "'dims'"),
    (_header(dims=[5, 5]), "widths"),
    (_header(n_classes="3"), "'n_classes'"),
    (_header(n_classes=True), "'n_classes'"),
    (_header(n_classes=3.0), "'n_classes'"),
    (_header(n_classes=0), "'n_classes'"),
    (_header(metadata=[1]), "'metadata' is not a JSON object"),
    (_header(metadata={"model_sha256": 12}), "not a hash string"),
    (_header(metadata={"model_state_sha256": ["x"]}), "not a hash string"),
    ({"n_fit": lambda a: a[:1]}, "n_fit"),
    ({"n_fit": lambda a: a.astype(np.float64)}, "n_fit"),
    ({"n_fit": lambda a: a.astype(np.int32)}, "n_fit"),
    ({"n_fit": lambda a: a > 0}, "n_fit"),
    ({"n_fit": lambda a: a - 1000}, "n_fit"),
    ({"n_fit": lambda a: a.astype(str)}, "n_fit"),
    ({"n_fit": None}, "n_fit"),
    ({"n_fit": lambda a: a + np.arange(len(a))}, "n_fit says"),
    ({"bogus": np.zeros(3)}, "unexpected arrays ['bogus']"),
    ({"meta": lambda a: np.array([1, 2])}, "metadata record"),
    ({"meta": lambda a: np.array("{not json")}, "not JSON"),
    ({"meta": lambda a: np.array("[1, 2]")}, "format"),
    ({"meta": None}, "no metadata record"),
]


@pytest.mark.parametrize("name", sorted(EDITS))
def test_hand_edited_files_are_refused(tmp_path, name):
    x, y, _, _ = data()
    path = monitors()[name].fit_features(x, y).save(tmp_path / "m.npz")
    load_monitor(path)
    first = _first_state_array(path)
    cases = EDITS[name] + COMMON
    if first:
        cases.append(({first.replace(".", "__"): _nan}, "NaN or infinite"))
    for i, (changes, message) in enumerate(cases):
        bad = _edit(path, tmp_path / f"bad{i}.npz", **changes)
        with pytest.raises(BoxhackError) as exc:
            load_monitor(bad)
        text = str(exc.value)
        assert message in text or re.search(message, text), (i, changes, text)
        assert str(bad) in text and "\n" not in text


def test_unfitted_and_bad_inputs():
    m = ZoneMonitor()
    with pytest.raises(NotFittedError):
        m.accepts_features(np.zeros((1, 2), F32), [0])
    x, y, q, pred = data()
    m.fit_features(x, y)
    with pytest.raises(BoxhackError, match="dimensions"):
        m.accepts_features(q[:, :3], pred)
    with pytest.raises(BoxhackError, match="class index"):
        m.accepts_features(q, pred + 7)
    with pytest.raises(BoxhackError, match="NaN"):
        m.accepts_features(np.full_like(q, np.nan), pred)
    with pytest.raises(BoxhackError, match="max_memory"):
        ZoneMonitor(max_memory=0).fit_features(x, y)
    with pytest.raises(BoxhackError, match="gamma"):
        PatternMonitor(gamma=-1).fit_features(x, y)
    with pytest.raises(BoxhackError, match="lp_tolerance"):
        ConvexHullMonitor(lp_tolerance=1.0).fit_features(x, y)
    with pytest.raises(BoxhackError, match="members"):
        CompositeMonitor([]).fit_features(x, y)
    with pytest.raises(BoxhackError, match="bad parameters"):
        CompositeMonitor([{"abstraction": "zone", "params": {"gamma": 1}}]).fit_features(x, y)
