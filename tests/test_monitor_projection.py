"""2-D projections of a monitored layer with its boxes (report.projection)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from boxhack.errors import BoxhackError
from boxhack.monitor import BoxMonitor
from boxhack.report.projection import plot_projection, project_boxes, projection_matrix


def test_projected_box_ranges_are_exact():
    rng = np.random.default_rng(0)
    d = 4
    lo = rng.normal(size=(3, d))
    hi = lo + rng.random((3, d))
    w = rng.normal(size=(2, d))
    mu = rng.normal(size=d)
    got = project_boxes(lo, hi, w, mu)
    for b in range(3):
        corners = np.array([np.where(bits, hi[b], lo[b]) for bits in itertools.product([0, 1], repeat=d)])
        p = (corners - mu) @ w.T
        np.testing.assert_allclose(got[b, :, 0], p.min(0))
        np.testing.assert_allclose(got[b, :, 1], p.max(0))


def test_projection_matrix_units_and_pca():
    x = np.random.default_rng(1).normal(size=(50, 5)) * [5, 1, 1, 0.1, 0.1]
    w, mu = projection_matrix(x, (3, 1))
    assert w[0, 3] == 1 and w[1, 1] == 1 and (mu == 0).all()
    w, mu = projection_matrix(x, "pca")
    assert abs(w[0, 0]) > 0.9  # the wide dimension comes first
    np.testing.assert_allclose(w @ w.T, np.eye(2), atol=1e-9)
    with pytest.raises(BoxhackError, match="out of range"):
        projection_matrix(x, (0, 9))
    with pytest.raises(BoxhackError, match="unknown projection"):
        projection_matrix(x, "tsne")


def test_plot_projection_draws_boxes_points_and_arrows(tmp_path):
    rng = np.random.default_rng(2)
    x = np.maximum(rng.normal(size=(120, 6)), 0).astype(np.float32)
    y = rng.integers(0, 3, 120)
    m = BoxMonitor(n_clusters=2, tolerance=0.1).fit_features({"relu2": x}, y)
    q = (x[:40] + rng.normal(0, 0.3, (40, 6))).astype(np.float32)
    p = y[:40]
    acc = m.accepts_features({"relu2": q}, p)
    assert acc.any() and not acc.all()
    fig = plot_projection({"relu2": q}, p, acc, m, title="after", before={"relu2": x[:40]})
    ax = fig.axes[0]
    n_boxes = len(m.box_class_["relu2"])
    assert len(ax.patches) == 2 * n_boxes  # widened and tight boxes
    assert ax.get_title() == "after"
    fig.savefig(tmp_path / "pca.png")
    assert (tmp_path / "pca.png").stat().st_size > 1000
    fig2 = plot_projection(q, p, acc, m, "relu2", method=(0, 1))
    rect = fig2.axes[0].patches[0]
    lo, hi = m.boxes("relu2")
    cls0 = m.box_class_["relu2"] == min(p.tolist())
    assert rect.get_x() == pytest.approx(float(lo[cls0][0, 0]))
    assert rect.get_width() == pytest.approx(float(hi[cls0][0, 0] - lo[cls0][0, 0]))
    # a shared projection for several panels
    proj = projection_matrix(x, "pca")
    fig4 = plot_projection(q, p, acc, m, projection=proj)
    assert len(fig4.axes[0].patches) == 2 * n_boxes
    with pytest.raises(BoxhackError, match="projection must be"):
        plot_projection(q, p, acc, projection=(np.eye(2), np.zeros(2)))
    # without a monitor: points only
    fig3 = plot_projection(q, p, acc)
    assert len(fig3.axes[0].patches) == 0
    with pytest.raises(BoxhackError, match="differ in length"):
        plot_projection(q, p[:3], acc)
    with pytest.raises(BoxhackError, match="dimensions"):
        plot_projection(q[:, :3], p, acc, m)
