"""Monitor files of the abstraction family: exact round trips, and hand-edited files refused
with a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from boxhack.errors import BoxhackError, NotFittedError
from boxhack.monitor import (
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
        "zone": ZoneMonitor(n_clusters=2, tolerance=0.1),
        "octagon": OctagonMonitor(n_clusters=2, tolerance=0.2, relative_tolerance=False),
        "ball": MeanBallMonitor(n_clusters=2, tolerance=0.05),
        "pattern": PatternMonitor(gamma=1),
        "hull": ConvexHullMonitor(n_clusters=1),
        "composite": CompositeMonitor([ZoneMonitor(n_clusters=2), PatternMonitor(),
                                       MeanBallMonitor()], tolerance=0.1),
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
    wrong = ZoneMonitor if name != "zone" else MeanBallMonitor
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
        ({"meta": _meta(lambda m: m["params"]["members"].append(
            {"abstraction": "composite", "params": {}}))}, "cannot contain"),
        ({"meta": _meta(lambda m: m["params"]["members"].append(
            {"abstraction": "nope", "params": {}}))}, "unknown abstraction"),
    ],
}


@pytest.mark.parametrize("name", sorted(EDITS))
def test_hand_edited_files_are_refused(tmp_path, name):
    x, y, _, _ = data()
    path = monitors()[name].fit_features(x, y).save(tmp_path / "m.npz")
    load_monitor(path)
    common = [
        ({"meta": _meta(lambda m: m.update(abstraction="os.system"))}, "unknown abstraction"),
        ({"meta": _meta(lambda m: m["params"].update(bogus=1))}, "unknown parameters"),
        ({"meta": _meta(lambda m: m.update(format_version=99))}, "format version"),
        ({"n_fit": lambda a: a[:1]}, "n_fit"),
        ({"meta": _meta(lambda m: m["params"].update(tolerance=-1))}, "tolerance"),
    ]
    for i, (changes, message) in enumerate(EDITS[name] + common):
        bad = _edit(path, tmp_path / f"bad{i}.npz", **changes)
        with pytest.raises(BoxhackError, match=message):
            load_monitor(bad)


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
