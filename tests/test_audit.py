"""``boxhack audit`` on a user-style model (a BatchNorm CNN with functional activations, not
Sequential, given as ``module:Class`` + a state dict) and an ``.npz`` data set with ``x_ood``:
every measure runs, the files are written, the run resumes without redoing work, the stored
attacks re-check with ``boxhack verify``, and the attack commands take the same model/data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from boxhack.cli import main
from boxhack.errors import BoxhackError
from boxhack.infra.jsonl import read_rows
from boxhack.workflow.audit import AuditSettings, audit

K = 3  # classes


class UserNet(nn.Module):
    """What a user writes: conv + BatchNorm, functional ReLU, a non-Sequential forward."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, K)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        h = F.relu(self.fc1(torch.flatten(h, 1)))
        return self.fc2(h)


def _data(rng, n_per_class):
    x, y = [], []
    for c in range(K):
        base = np.zeros((8, 8), np.float32)
        base[c * 2:c * 2 + 3, :] = 0.8  # a bright band per class
        imgs = np.clip(base + 0.15 * rng.standard_normal((n_per_class, 8, 8)), 0, 1)
        x.append(imgs[:, None].astype(np.float32))
        y.append(np.full(n_per_class, c))
    return np.concatenate(x), np.concatenate(y)


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    rng = np.random.default_rng(0)
    x_tr, y_tr = _data(rng, 80)
    x_te, y_te = _data(rng, 20)
    ood = np.clip(rng.random((30, 1, 8, 8)), 0, 1).astype(np.float32)
    np.savez(root / "data.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, x_ood=ood)
    torch.manual_seed(0)
    net = UserNet()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    xt, yt = torch.as_tensor(x_tr), torch.as_tensor(y_tr)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(net(xt), yt).backward()
        opt.step()
    net.eval()
    torch.save(net.state_dict(), root / "net.pt")
    return {"root": root, "data": str(root / "data.npz"), "weights": str(root / "net.pt")}


SMALL = AuditSettings(n=5, n_combined=3, steps=8, eps_l2=(0.5, 2.0), eps_linf=(0.1, 0.3),
                      sweep_clusters=(1, 2), sweep_tolerances=(0.0, 0.25))


def test_audit_measures_everything_and_resumes(user, tmp_path):
    out = tmp_path / "audit"
    s = audit("test_audit:UserNet", user["data"], "fc1", out, weights=user["weights"],
              settings=SMALL, progress=False)
    assert not s["errors"], s["errors"]
    m = s["monitor"]
    assert m["accuracy"] > 0.9 and m["n_novel"] == 30 and m["auroc"] is not None
    assert set(s["robustness"]) == {"dos/l2", "dos/linf", "intrude/l2", "intrude/linf"}
    for r in s["robustness"].values():
        assert r["n"] <= 5 and len(r["curve"]) == 2
        rates = [c["rate"] for c in r["curve"] if c["rate"] is not None]
        assert rates == sorted(rates)  # more budget never fewer successes
    assert s["robustness"]["dos/l2"]["success"] > 0  # boxes at tolerance 0 are easy to leave
    adv = s["adversarial"]["fgsm"]
    assert adv["monitors"] == ["audited", "k1-tol0", "k1-tol0.25", "k2-tol0", "k2-tol0.25"]
    for pe in adv["per_eps"]:
        assert all(v <= pe["flipped"] for v in pe["accepted"].values())
        assert pe["accepted"]["k1-tol0"] <= pe["accepted"]["k1-tol0.25"]  # wider boxes accept more
    assert s["combined"]["attacked"] <= 3
    html = (out / "report.html").read_text()
    assert "Classifier and monitor" in html and "data:image/png;base64," in html
    assert 'src="http' not in html and "<link" not in html  # self-contained
    assert json.loads((out / "summary.json").read_text())["stored_attacks"] == s["stored_attacks"]
    rows = read_rows(out / "audit" / "rows.jsonl")
    assert len(rows) == 1 + 4 + 2 + 1
    # resumed: nothing is measured again, the same summary comes back
    again = audit("test_audit:UserNet", user["data"], "fc1", out, weights=user["weights"],
                  settings=SMALL, progress=False)
    assert len(read_rows(out / "audit" / "rows.jsonl")) == len(rows)
    assert again["robustness"] == s["robustness"]
    # other settings in the same directory are refused
    with pytest.raises(BoxhackError, match="another model, data or settings"):
        audit("test_audit:UserNet", user["data"], "fc1", out, weights=user["weights"],
              settings=AuditSettings(n=3, n_combined=0), progress=False)


def test_audit_cli_and_verify(user, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["audit", "--model", "test_audit:UserNet", "--weights", user["weights"],
                 "--data", user["data"], "--layer", "fc1", "--out", str(out), "--n", "4",
                 "--n-combined", "3", "--steps", "10", "--attacks", "fgsm",
                 "--sweep-clusters", "1", "--sweep-tolerances", "0", "-q"])
    assert code == 0
    printed = capsys.readouterr()
    assert "Accuracy" in printed.out and "boxhack verify" in printed.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stored_attacks"] > 0
    # a Python model named in a results file is not imported without the user naming it
    assert main(["verify", str(out)]) == 2
    assert "boxhack does not import code" in capsys.readouterr().err
    assert main(["verify", str(out), "--model", "test_audit:UserNet", "--weights",
                 user["weights"]]) == 0
    assert "hold" in capsys.readouterr().out
    # a changed model is caught by its state hash
    net = UserNet()
    net.load_state_dict(torch.load(user["weights"], weights_only=True))
    with torch.no_grad():
        net.fc2.bias += 1
    other = tmp_path / "other.pt"
    torch.save(net.state_dict(), other)
    assert main(["verify", str(out), "--model", "test_audit:UserNet", "--weights",
                 str(other)]) == 2
    assert "model changed" in capsys.readouterr().err


def test_attack_commands_take_user_model_and_data_and_save(user, tmp_path, capsys):
    mon = tmp_path / "mon.npz"
    common = ["--model", "test_audit:UserNet", "--weights", user["weights"], "--data",
              user["data"]]
    assert main(["monitor", "fit", *common, "--layer", "fc1", "--clusters", "1",
                 "--out", str(mon)]) == 0
    saved = tmp_path / "found.npz"
    assert main(["attack", "gradient", *common, "--monitor", str(mon), "--n", "3", "--steps",
                 "10", "--save", str(saved)]) == 0
    capsys.readouterr()
    assert main(["verify", str(saved), "--model", "test_audit:UserNet", "--weights",
                 user["weights"]]) == 0
    assert main(["attack", "adversarial", *common, "--monitor", str(mon), "--n", "3",
                 "--save", str(tmp_path / "adv.npz")]) == 0
    capsys.readouterr()
    assert main(["monitor", "evaluate", *common, "--monitor", str(mon), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_novel"] == 30  # the .npz's x_ood, without --novel-classes


def test_audit_needs_a_layer(user, tmp_path):
    with pytest.raises(BoxhackError, match="give --layer"):
        audit("test_audit:UserNet", user["data"], None, tmp_path / "x", weights=user["weights"],
              settings=SMALL, progress=False)


def test_audit_fits_any_abstraction(user, tmp_path, capsys):
    """--abstraction: the audited monitor is a zone (or any registered abstraction); its file
    says so and its robustness successes re-verify; gamma belongs to patterns only."""
    out = tmp_path / "zone"
    code = main(["audit", "--model", "test_audit:UserNet", "--weights", user["weights"],
                 "--data", user["data"], "--layer", "fc1", "--out", str(out), "--n", "4",
                 "--n-combined", "0", "--steps", "10", "--attacks", "fgsm",
                 "--sweep-clusters", "1", "--sweep-tolerances", "0", "--clusters", "2",
                 "--abstraction", "zone", "-q"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    from boxhack.monitor import load_monitor

    assert load_monitor(out / "monitor.npz").abstraction == "zone"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stored_attacks"] > 0
    assert main(["verify", str(out), "--model", "test_audit:UserNet", "--weights",
                 user["weights"]]) == 0
    capsys.readouterr()
    with pytest.raises(BoxhackError, match="gamma applies to the pattern"):
        audit("test_audit:UserNet", user["data"], "fc1", tmp_path / "g", weights=user["weights"],
              settings=AuditSettings(n=1, n_combined=0, gamma=1), progress=False)


def test_default_budgets_follow_the_input_bounds():
    """Budgets left unset are the [0, 1] defaults scaled by the width of the model's bounds;
    given ones are kept as they are."""
    s = AuditSettings().for_bounds(0.0, 255.0)
    assert s.eps_linf == pytest.approx((12.75, 25.5, 51.0, 76.5))
    assert s.eps_l2 == pytest.approx((127.5, 255.0, 510.0, 765.0))
    assert s.combined_eps == pytest.approx(25.5)
    unit = AuditSettings(eps_l2=(0.25,)).for_bounds(0.0, 1.0)
    assert unit.eps_l2 == (0.25,) and unit.eps_linf == (0.05, 0.1, 0.2, 0.3)
    assert unit.combined_eps == 0.1


@pytest.mark.parametrize("budget", [1, None])
def test_a_hull_audit_is_bounded_by_its_lp_budget(user, tmp_path, capsys, budget):
    """A convex-hull monitor's attack measures stop starting new inputs once they have solved
    --hull-lps LPs (counted, so the same on any machine); the rows and the summary say how many
    LPs and inputs, the rates are over the inputs reached, and everything re-verifies."""
    out = tmp_path / "hull"
    argv = ["audit", "--model", "test_audit:UserNet", "--weights", user["weights"],
            "--data", user["data"], "--layer", "fc1", "--out", str(out), "--n", "12",
            "--n-combined", "0", "--steps", "6", "--attacks", "fgsm",
            "--sweep-clusters", "1", "--sweep-tolerances", "0", "--clusters", "1",
            "--abstraction", "hull", "-q"]  # fmt: skip
    if budget is not None:
        argv += ["--hull-lps", str(budget)]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    measured = [m for m in summary["robustness"].values() if "hull_lps" in m]
    assert measured, summary["robustness"]
    for m in measured:
        assert m["hull_budget"] == (1000 if budget is None else budget)
        assert m["n_planned"] == 12 and m["n"] == m["n_attacked_within_budget"]
        if budget == 1:  # the first chunk of 5 spends it: 5 inputs attacked, not 12
            assert m["hull_lps"] >= 1 and m["n"] == 5
    assert main(["verify", str(out), "--model", "test_audit:UserNet", "--weights",
                 user["weights"]]) == 0
    assert "0 disagreements" in capsys.readouterr().out
