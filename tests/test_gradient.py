"""Monitor-aware gradient attacks (boxhack.attacks.gradient / .orthogonal).

A tiny ReLU MLP on 6x6 inputs (trained in about a second) with a one-box-per-class monitor on
its second ReLU layer keeps these tests fast while exercising everything the MNIST networks do.
Every success asserted here is re-checked independently with ``monitor.predict``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_nets import SHAPE, tiny_relu_mlp  # tests/ is on sys.path

from boxhack.attacks.gradient import (
    GOALS_SUPPORTED,
    MonitorAttack,
    fit_to_budget,
    l1_fill,
    lp_norm,
    project_ball,
)
from boxhack.attacks.orthogonal import OrthogonalAttack
from boxhack.attacks.records import norm_of, within_budget
from boxhack.errors import BoxhackError
from boxhack.monitor import BoxMonitor


@pytest.fixture(scope="module")
def setup():
    net, x, y = tiny_relu_mlp(1400)
    monitor = BoxMonitor(n_clusters=1).fit(net, ["relu2"], x[:500], y[:500])
    held = x[500:]
    _, acc = monitor.predict(net, held)
    return {
        "model": net, "monitor": monitor, "accepted": held[acc][:40], "rejected": held[~acc][:24],
        "labels_acc": y[500:][acc][:40], "labels_rej": y[500:][~acc][:24],
    }


def _meets(goal, pred0, pred, acc, labels=None, targets=None):
    if goal == "dos":
        return (pred == pred0) & ~acc
    if goal == "intrude":
        return (pred == pred0) & acc
    if goal == "intrude-any":
        return acc
    if goal == "intrude-target":
        return (pred == targets) & acc
    return (pred != (labels if labels is not None else pred0)) & acc


def recheck(setup, result, goal, labels=None, targets=None):
    """Independent re-check of each sample's reported success: the goal holds at ``x`` and the
    input was attacked (the goal did not hold at ``x0``; Attack 1 with labels: ``x0`` correct)."""
    model, monitor = setup["model"], setup["monitor"]
    pred0, acc0 = monitor.predict(model, result.x0)
    pred, acc = monitor.predict(model, result.x)
    attacked = ~_meets(goal, pred0, pred0, acc0, labels, targets)
    if goal == "dos" and labels is not None:
        attacked &= pred0 == labels
    return _meets(goal, pred0, pred, acc, labels, targets) & attacked


def assert_valid(result, x0):
    assert result.x.shape == x0.shape and result.x.dtype == np.float32
    assert np.isfinite(result.x).all()
    assert result.x.min() >= 0.0 and result.x.max() <= 1.0


# ----------------------------------------------------------------------------- successes
@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_dos_minimal_succeeds_and_is_verified(setup, norm):
    x0 = setup["accepted"]
    r = MonitorAttack(goal="dos", norm=norm)(setup["model"], setup["monitor"], x0)
    assert_valid(r, x0)
    assert r.success.mean() >= 0.95
    np.testing.assert_array_equal(r.success, recheck(setup, r, "dos"))
    assert (getattr(r, norm)[r.success] > 0).all()  # x0 itself is accepted: something moved


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_intrude_minimal_succeeds_and_is_verified(setup, norm):
    x0 = setup["rejected"]
    r = MonitorAttack(goal="intrude", norm=norm)(setup["model"], setup["monitor"], x0)
    assert_valid(r, x0)
    assert r.success.mean() >= 0.9
    np.testing.assert_array_equal(r.success, recheck(setup, r, "intrude"))
    assert (r.pred[r.success] == r.pred0[r.success]).all()


@pytest.mark.parametrize("goal", ["intrude-any", "intrude-target", "combined"])
def test_other_goals(setup, goal):
    x0, y = setup["rejected"], setup["labels_rej"]
    targets = (y + 1) % 3 if goal == "intrude-target" else None
    r = MonitorAttack(goal=goal)(setup["model"], setup["monitor"], x0, labels=y, targets=targets)
    assert_valid(r, x0)
    assert r.success.mean() >= 0.8
    np.testing.assert_array_equal(r.success, recheck(setup, r, goal, y, targets))
    if goal == "combined":
        assert (r.pred[r.success] != y[r.success]).all()


def test_combined_from_starts_measures_distance_to_inputs(setup):
    """The combined attack starts at given points (e.g. FGSM outputs) but measures to x0."""
    x0, y = setup["accepted"][:16], setup["labels_acc"][:16]
    rng = np.random.default_rng(1)
    starts = np.clip(x0 + rng.normal(0, 0.3, x0.shape), 0, 1).astype(np.float32)
    r = MonitorAttack(goal="combined")(setup["model"], setup["monitor"], x0, labels=y,
                                       starts=starts)
    assert_valid(r, x0)
    np.testing.assert_array_equal(r.success, recheck(setup, r, "combined", y))
    d = (r.x - x0).reshape(len(x0), -1).astype(np.float64)
    np.testing.assert_allclose(r.l2, np.sqrt((d**2).sum(1)), rtol=1e-6)
    assert r.success.mean() >= 0.8


def test_orthogonal_attack(setup):
    for goal, x0 in (("dos", setup["accepted"]), ("intrude", setup["rejected"])):
        r = OrthogonalAttack(goal=goal)(setup["model"], setup["monitor"], x0)
        assert_valid(r, x0)
        assert r.success.mean() >= 0.9
        np.testing.assert_array_equal(r.success, recheck(setup, r, goal))
        assert r.info["attack"] == "orthogonal-pgd"


def test_l1_attack_really_reduces_l1(setup):
    x0 = setup["accepted"]
    r1 = MonitorAttack(goal="dos", norm="l1")(setup["model"], setup["monitor"], x0)
    r2 = MonitorAttack(goal="dos", norm="l2")(setup["model"], setup["monitor"], x0)
    both = r1.success & r2.success
    assert np.median(r1.l1[both]) < 0.9 * np.median(r2.l1[both])
    # and the L1 answers are sparse: most pixels untouched
    changed = (np.abs(r1.x - x0).reshape(len(x0), -1) > 1e-6).mean(1)
    assert np.median(changed[both]) < 0.5


# ----------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("linf", 0.1), ("l2", 0.2), ("l1", 0.5)])
def test_budget_stays_within_epsilon(setup, norm, eps):
    x0 = np.concatenate([setup["accepted"][:20], setup["rejected"][:4]])
    r = MonitorAttack(goal="dos", norm=norm, mode="budget", epsilon=eps)(
        setup["model"], setup["monitor"], x0)
    assert_valid(r, x0)
    # exactly as `boxhack verify` measures it: float64 of the float32 difference
    assert within_budget(r.x0, r.x, {"norm": norm, "eps": eps}).all()
    assert r.success[:20].any() and not r.success[20:].any()  # the rejected were not attacked
    np.testing.assert_array_equal(r.success, recheck(setup, r, "dos"))


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
@pytest.mark.parametrize("goal", ["dos", "intrude"])
def test_budget_exact_in_float32_even_with_random_start(setup, norm, goal):
    """Budgets that are not float32 numbers (0.1 is not) are never exceeded, random start
    or not, whatever the goal."""
    x0 = setup["accepted"] if goal == "dos" else setup["rejected"]
    for eps in ({"l1": 0.1, "l2": 0.1, "linf": 0.0123456789}[norm], 0.5):
        for random_start in (False, True):
            r = MonitorAttack(goal=goal, norm=norm, mode="budget", epsilon=eps,
                              random_start=random_start, steps=20)(
                setup["model"], setup["monitor"], x0)
            assert_valid(r, x0)
            assert within_budget(r.x0, r.x, {"norm": norm, "eps": eps}).all()
            np.testing.assert_array_equal(r.success, recheck(setup, r, goal))


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_orthogonal_budget_and_cap_exact_in_float32(setup, norm):
    x0 = setup["accepted"][:16]
    eps = {"l1": 0.3, "l2": 0.1, "linf": 0.03}[norm]
    for mode in ("budget", "minimal"):  # minimal: epsilon is a cap
        r = OrthogonalAttack(goal="dos", norm=norm, mode=mode, epsilon=eps, steps=30)(
            setup["model"], setup["monitor"], x0)
        assert_valid(r, x0)
        assert within_budget(r.x0, r.x, {"norm": norm, "eps": eps}).all()
        np.testing.assert_array_equal(r.success, recheck(setup, r, "dos"))


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_fit_to_budget_is_exact_and_minimal(norm):
    """fit_to_budget: every sample ends within the budget as records.norm_of measures it;
    samples already within are untouched bit for bit; the others keep their direction and end
    close to the budget (not pulled back further than float32 rounding needs)."""
    rng = np.random.default_rng(3)
    x0 = rng.random((200, 1, 6, 6), dtype=np.float32)
    x = np.clip(x0 + rng.normal(0, 0.2, x0.shape), 0, 1).astype(np.float32)
    n0 = norm_of(x0, x, norm)
    for eps in (float(np.median(n0)), 0.1, 1e-7, np.linspace(0.0, 2 * n0.max(), len(x))):
        y = fit_to_budget(x0, x, norm, eps)
        assert y.dtype == np.float32 and y.shape == x.shape
        assert ((y >= 0) & (y <= 1)).all()
        e = np.broadcast_to(np.asarray(eps, float), (len(x),))
        assert (norm_of(x0, y, norm) <= e).all()
        inside = n0 <= e
        np.testing.assert_array_equal(y[inside], x[inside])
        over = ~inside & (e > 1e-3)
        if over.any() and norm != "linf":  # scaled: the same direction, nearly at the budget
            assert (norm_of(x0, y, norm)[over] >= e[over] * (1 - 1e-5)).all()
        if over.any() and norm == "linf":  # clipped: nearly at the budget
            assert (norm_of(x0, y, norm)[over] >= e[over] - 1e-7).all()
    # a float32 value just above x0 + eps is stepped back below it
    x0 = np.zeros((1, 4), np.float32)
    x = np.full((1, 4), np.float32(0.1))  # float32(0.1) = 0.10000000149 > 0.1
    y = fit_to_budget(x0, x, "linf", 0.1)
    assert norm_of(x0, y, "linf")[0] <= 0.1 and y[0, 0] == np.nextafter(np.float32(0.1), 0)


@pytest.fixture
def one_thread():
    """The search is deterministic for a given thread count (no clock, no unseeded randomness);
    one thread makes float32 reductions, and so the results, the same on any machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_minimal_never_larger_than_a_successful_budget_run(setup, norm, one_thread):
    """What this property is: an empirical one, of two heuristics. Box exits have local optima
    and PGD's success is not monotone in the budget, so no search can promise to beat every
    PGD run; the fast default (one face per sample, no refinement) is beaten on 1-2 of these
    40 samples per norm. With ``faces=3`` (search from the three nearest faces) and
    ``refine=2`` (two PGD runs below each found norm, bisecting), no successful budget run at
    any of 11 budgets from 0.3x to 2x the median beats the minimal mode on this network."""
    x0 = setup["accepted"]
    minimal = MonitorAttack(goal="dos", norm=norm, faces=3, refine=2)(
        setup["model"], setup["monitor"], x0)
    nm = getattr(minimal, norm)
    scale = float(np.median(nm[minimal.success]))
    checked = 0
    for factor in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0):
        eps = factor * scale
        budget = MonitorAttack(goal="dos", norm=norm, mode="budget", epsilon=eps)(
            setup["model"], setup["monitor"], x0)
        ok = budget.success
        checked += int(ok.sum())
        assert minimal.success[ok].all()
        assert (nm[ok] <= eps).all(), (norm, eps, nm[ok].max())
    assert checked > 100


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_refinement_never_makes_a_norm_larger(setup, norm, one_thread):
    """What refine guarantees by construction: it keeps a PGD point only when it verified with
    a smaller norm, so no sample gets larger or loses its success; and it does find smaller
    ones (the default misses nearer exits on a few of these samples)."""
    x0 = setup["accepted"]
    plain = MonitorAttack(goal="dos", norm=norm)(setup["model"], setup["monitor"], x0)
    refined = MonitorAttack(goal="dos", norm=norm, refine=3)(setup["model"], setup["monitor"], x0)
    assert refined.success[plain.success].all()
    both = plain.success & refined.success
    assert (getattr(refined, norm)[both] <= getattr(plain, norm)[both] * (1 + 1e-6)).all()
    assert refined.info["refine_runs"] >= 1
    assert refined.info["row_steps"] > plain.info["row_steps"]
    np.testing.assert_array_equal(refined.success, recheck(setup, refined, "dos"))


def test_minimal_with_epsilon_cap(setup):
    x0 = setup["accepted"]
    free = MonitorAttack(goal="dos")(setup["model"], setup["monitor"], x0)
    cap = float(np.median(free.l2[free.success]))
    for refine in (0, 2):
        capped = MonitorAttack(goal="dos", epsilon=cap, refine=refine)(
            setup["model"], setup["monitor"], x0)
        assert within_budget(capped.x0, capped.x, {"norm": "l2", "eps": cap}).all()
        assert 0 < capped.success.sum() < len(x0)


# ----------------------------------------------------------------------------- batches
def test_mixed_batch_reports_each_samples_own_result(setup):
    """A batch mixing already-rejected inputs (goal met at x0: not attacked, never a success),
    attackable ones and ones out of reach of a tiny budget: every sample gets its own verdict,
    and the same as when attacked alone; rates are over the attacked inputs only."""
    model, monitor = setup["model"], setup["monitor"]
    x0 = np.concatenate([setup["accepted"][:6], setup["rejected"][:3]])
    eps = 0.05
    atk = MonitorAttack(goal="dos", norm="linf", mode="budget", epsilon=eps)
    r = atk(model, monitor, x0)
    assert r.already[6:].all() and not r.already[:6].any()
    np.testing.assert_array_equal(r.info["already_met"], r.already)
    np.testing.assert_array_equal(r.eligible, ~r.already)
    assert not r.success[6:].any() and (r.linf[6:] == 0).all()  # reported apart, unchanged
    np.testing.assert_array_equal(r.x[6:], x0[6:])
    assert r.n_attacked == 6 and r.success_rate == r.success[:6].mean()
    np.testing.assert_array_equal(r.success, recheck(setup, r, "dos"))
    alone = np.array([atk(model, monitor, x0[i : i + 1]).success[0] for i in range(len(x0))])
    np.testing.assert_array_equal(r.success, alone)
    # different outcomes really occur in the batch (a tight and a loose budget)
    loose = MonitorAttack(goal="dos", norm="linf", mode="budget", epsilon=0.5)(model, monitor, x0)
    tight = MonitorAttack(goal="dos", norm="linf", mode="budget", epsilon=1e-4)(model, monitor, x0)
    assert loose.success[:6].all() and loose.success_rate == 1.0
    assert not tight.success.any() and tight.success_rate == 0.0


def test_dos_with_labels_attacks_only_correct_and_accepted_inputs(setup):
    """Attack 1 starts from correctly classified, accepted inputs: with labels, a misclassified
    accepted input is neither attacked nor counted (nor 'already' a DoS)."""
    model, monitor = setup["model"], setup["monitor"]
    x0, y = setup["accepted"][:12], setup["labels_acc"][:12].copy()
    pred0, _ = monitor.predict(model, x0)
    y[:4] = (pred0[:4] + 1) % 3  # pretend the first 4 are misclassified
    y[4:] = pred0[4:]
    r = MonitorAttack(goal="dos", norm="l2")(model, monitor, x0, labels=y)
    assert not r.eligible[:4].any() and r.eligible[4:].all()
    assert not r.already.any() and not r.success[:4].any()
    np.testing.assert_array_equal(r.x[:4], x0[:4])  # not attacked: returned unchanged
    assert r.n_attacked == 8 and r.success[4:].all()
    np.testing.assert_array_equal(r.success, recheck(setup, r, "dos", labels=y))


def test_batches_and_refill_give_the_same_results(setup):
    """Small slot counts (rows queue and refill) find the same points as one big batch."""
    x0 = setup["accepted"]
    a = MonitorAttack(goal="dos", batch_size=512)(setup["model"], setup["monitor"], x0)
    b = MonitorAttack(goal="dos", batch_size=7)(setup["model"], setup["monitor"], x0)
    np.testing.assert_array_equal(a.success, b.success)
    np.testing.assert_allclose(a.l2, b.l2, rtol=1e-3, atol=1e-5)


def test_intrude_from_accepted_input_is_reported_not_attacked(setup):
    x0 = setup["accepted"][:3]
    r = MonitorAttack(goal="intrude")(setup["model"], setup["monitor"], x0)
    assert r.already.all() and not r.eligible.any() and not r.success.any()
    assert r.n_attacked == 0 and np.isnan(r.success_rate)
    np.testing.assert_array_equal(r.x, x0)
    assert (r.l2 == 0).all() and r.info["rows"] == 0


def test_class_without_boxes_cannot_be_entered(setup):
    """intrude-target into a class the monitor has no box for: reported impossible, failed."""
    model = setup["model"]
    crippled = BoxMonitor(n_clusters=1, n_classes=3)
    feats = {"relu2": np.random.default_rng(0).random((20, 12)).astype(np.float32)}
    crippled.fit_features(feats, np.array([0, 1] * 10))  # class 2: no box
    r = MonitorAttack(goal="intrude-target", steps=5)(
        model, crippled, setup["rejected"][:4], targets=np.full(4, 2))
    assert not r.success.any()
    assert r.info["impossible"].all()


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,match", [
    ({"goal": "steal"}, "unknown goal"),
    ({"norm": "l3"}, "unknown norm"),
    ({"mode": "fast"}, "unknown mode"),
    ({"mode": "budget"}, "needs epsilon"),
    ({"epsilon": -1.0}, "epsilon"),
    ({"epsilon": float("nan")}, "epsilon"),
    ({"steps": 0}, "steps"),
    ({"lr": 0}, "lr"),
    ({"batch_size": 0}, "batch_size"),
    ({"refine": -1}, "refine"),
    ({"refine_drop": 1.0}, "refine_drop"),
])  # fmt: skip
def test_bad_parameters(kwargs, match):
    with pytest.raises(BoxhackError, match=match):
        MonitorAttack(**kwargs)


def test_bad_inputs(setup):
    model, monitor = setup["model"], setup["monitor"]
    x0 = setup["accepted"][:4]
    atk = MonitorAttack(goal="dos")
    bad = x0.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(BoxhackError, match="NaN"):
        atk(model, monitor, bad)
    with pytest.raises(BoxhackError, match=r"\[0, 1\]"):
        atk(model, monitor, x0 * 2 + 0.5)
    with pytest.raises(BoxhackError, match="model cannot run|shape"):
        atk(model, monitor, np.zeros((4, 5), np.float32))
    with pytest.raises(BoxhackError, match="empty"):
        atk(model, monitor, np.zeros((0, *SHAPE), np.float32))
    with pytest.raises(BoxhackError, match="starts"):
        atk(model, monitor, x0, starts=x0[:2])
    with pytest.raises(BoxhackError, match="labels"):
        MonitorAttack(goal="combined")(model, monitor, x0, labels=[0, 1])
    with pytest.raises(BoxhackError, match="labels"):
        MonitorAttack(goal="combined")(model, monitor, x0, labels=[0, 1, 2, 7])
    with pytest.raises(BoxhackError, match="needs targets"):
        MonitorAttack(goal="intrude-target")(model, monitor, x0)
    with pytest.raises(BoxhackError, match="not fitted"):
        atk(model, BoxMonitor(), x0)


def test_goals_supported_constant():
    assert GOALS_SUPPORTED == ("dos", "intrude", "intrude-any", "intrude-target", "combined")


# ----------------------------------------------------------------------------- helpers
def test_projections_and_l1_fill():
    rng = np.random.default_rng(0)
    d = torch.as_tensor(rng.normal(size=(50, 30)).astype(np.float32))
    eps = torch.as_tensor(rng.random(50).astype(np.float32) * 3)
    for norm in ("l1", "l2", "linf"):
        p = project_ball(d, eps, norm)
        assert (lp_norm(p, norm) <= eps * (1 + 1e-5) + 1e-6).all()
    # L1 projection is the Euclidean one: no other point of the ball is closer (spot check)
    p = project_ball(d, eps, "l1")
    for _ in range(20):
        q = project_ball(p + 0.05 * torch.randn_like(p), eps, "l1")
        assert ((q - d).norm(dim=1) >= (p - d).norm(dim=1) - 1e-4).all()
    # greedy L1 fill: exact for a linear function with the pixel box
    g = torch.tensor([[3.0, -2.0, 1.0, 0.5]])
    x = torch.tensor([[0.5, 0.5, 0.0, 1.0]])
    cost, step = l1_fill(g, x, torch.tensor([2.0]))  # 0.5 of pixel 0 gives 1.5, then pixel 1
    assert abs(float(cost) - 0.75) < 1e-6
    assert abs(float((g * step).sum()) - 2.0) < 1e-5
    assert ((x + step >= 0) & (x + step <= 1)).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_device(setup):
    x0 = setup["accepted"]
    r = MonitorAttack(goal="dos", device="cuda")(setup["model"], setup["monitor"], x0)
    assert r.success.mean() >= 0.95
    np.testing.assert_array_equal(r.success, recheck(setup, r, "dos"))
