"""``boxhack attack gradient``: monitor-aware white-box attacks on test inputs of a model's data
set; a thin layer over :class:`boxhack.attacks.gradient.MonitorAttack` (and
:class:`boxhack.attacks.orthogonal.OrthogonalAttack` with ``--orthogonal``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from boxhack.errors import BoxhackError

# kept here so that `boxhack --help` does not import torch
GOALS = ("dos", "intrude", "intrude-any", "intrude-target", "combined")
NORMS = ("l1", "l2", "linf")
MODES = ("minimal", "budget")


def register(asub) -> None:
    p = asub.add_parser(
        "gradient",
        help="monitor-aware gradient attacks (fast, batched, minimal or fixed-budget)",
        description=(
            "Batched white-box attacks on the classifier and its box monitor together: dos "
            "(keep the class, get rejected), intrude (get accepted as the same class), "
            "intrude-any, intrude-target, combined (misclassified and accepted); L1, L2 or Linf; "
            "minimal perturbation or PGD within a budget. Every result is re-checked with the "
            "exact model and monitor."
        ),
    )
    p.add_argument("--model", required=True,
                   help="a boxhack model directory, a TorchScript file, or package.module:ClassName")
    p.add_argument("--weights", default=None, help="state-dict file for the ClassName form")
    p.add_argument("--monitor", required=True, help="monitor .npz written by `boxhack monitor fit`")
    p.add_argument("--goal", default="dos", choices=GOALS, help="attack goal (default dos)")
    p.add_argument("--norm", default="l2", choices=NORMS, help="perturbation norm (default l2)")
    p.add_argument("--mode", default="minimal", choices=MODES,
                   help="minimal: smallest perturbation that succeeds (default); budget: PGD "
                        "within --eps")
    p.add_argument("--eps", type=float, default=None,
                   help="budget (required with --mode budget; an upper bound in minimal mode)")
    p.add_argument("--steps", type=int, default=None, help="gradient steps per sample")
    p.add_argument("--target", type=int, default=None, help="target class for intrude-target")
    p.add_argument("--orthogonal", action="store_true",
                   help="use the Orthogonal-PGD-style attack instead")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--index", type=int, action="append", default=None,
                     help="attack this test input (repeatable)")
    sel.add_argument("--n", type=int, default=None,
                     help="attack the first N test inputs the goal can start from (default 100): "
                          "accepted ones for dos, rejected ones for intrude*, correctly "
                          "classified ones for combined")
    p.add_argument("--batch-size", type=int, default=512, help="rows optimised at once")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write one JSON row per sample to this JSONL file")
    p.add_argument("--png", default=None, help="write before/after images to this PNG")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_handler)


def _dataset(info: dict, model_arg: str):
    from boxhack.data import load_dataset

    name = info.get("dataset")
    if name is None:
        raise BoxhackError(
            f"{model_arg} does not record its data set, so there are no test inputs to attack; "
            f"use a boxhack model directory (see `boxhack train`)"
        )
    return load_dataset(name, info.get("classes"), data_dir=info.get("data_dir"),
                        split_seed=int(info.get("split_seed") or 0))  # fmt: skip


def select(model, monitor, dataset, goal: str, index, n):
    """Test indices to attack: ``index`` as given, or the first ``n`` (100) the goal can start
    from (accepted for dos, rejected for intrude*, correctly classified for combined)."""
    import numpy as np

    n_test = len(dataset.y_test)
    if index is not None:
        bad = [i for i in index if not 0 <= i < n_test]
        if bad:
            raise BoxhackError(f"--index {bad[0]} is out of range: the test split has {n_test} inputs")
        return np.asarray(index, dtype=np.int64)
    want = 100 if n is None else n
    if want < 1:
        raise BoxhackError(f"--n must be at least 1, got {want}")
    pred, acc = monitor.predict(model, dataset.x_test)
    if goal == "dos":
        ok, what = acc, "accepts"
    elif goal == "combined":
        ok, what = pred == dataset.y_test, "has correctly classified"
    else:
        ok, what = ~acc, "rejects"
    pool = np.flatnonzero(ok)
    if len(pool) == 0:
        raise BoxhackError(f"the monitor {what} no test input: nothing to attack with goal {goal!r}")
    if len(pool) < want:
        print(f"note: only {len(pool)} test inputs fit goal {goal!r}; attacking those",
              file=sys.stderr)
    return pool[:want]


def _handler(args) -> int:
    import numpy as np

    from boxhack.attacks.gradient import MonitorAttack
    from boxhack.attacks.orthogonal import OrthogonalAttack
    from boxhack.cli.common import print_table
    from boxhack.infra.jsonl import encode_row
    from boxhack.models.io import load_any_model
    from boxhack.monitor import BoxMonitor

    if args.goal == "intrude-target" and args.target is None:
        raise BoxhackError("--goal intrude-target needs --target CLASS")
    if args.target is not None and args.goal != "intrude-target":
        raise BoxhackError("--target is only for --goal intrude-target")
    model, info = load_any_model(args.model, args.weights)
    model.eval()
    monitor = BoxMonitor.load(args.monitor)
    dataset = _dataset(info, args.model)
    idx = select(model, monitor, dataset, args.goal, args.index, args.n)
    cls = OrthogonalAttack if args.orthogonal else MonitorAttack
    attack = cls(goal=args.goal, norm=args.norm, mode=args.mode, epsilon=args.eps,
                 steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                 device=args.device)  # fmt: skip
    x0, y = dataset.x_test[idx], dataset.y_test[idx]
    targets = None if args.target is None else np.full(len(idx), args.target)
    result = attack(model, monitor, x0, labels=y, targets=targets)
    rows = [{"index": int(idx[i]), **row,
             "already_met": bool(result.info["already_met"][i])}
            for i, row in enumerate(result.rows())]  # fmt: skip
    ok = result.success
    med = (lambda a: float(np.median(a[ok])) if ok.any() else None)
    summary = {
        "attack": result.info["attack"], "goal": args.goal, "norm": args.norm, "mode": args.mode,
        "epsilon": args.eps, "n": len(idx), "success_rate": result.success_rate,
        "median_l1": med(result.l1), "median_l2": med(result.l2), "median_linf": med(result.linf),
        "wall_s": result.info["wall_s"], "samples_per_s": result.info["samples_per_s"],
    }  # fmt: skip
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.writelines(encode_row(row) for row in rows)
    if args.png:
        from boxhack.report.curves import plot_before_after

        show = np.flatnonzero(ok)[:8] if ok.any() else np.arange(min(8, len(idx)))
        titles = [f"#{idx[i]} {result.pred0[i]}->{result.pred[i]} "
                  f"{'acc' if result.accepted[i] else 'rej'}" for i in show]  # fmt: skip
        fig = plot_before_after(x0[show], result.x[show], titles=titles,
                                shape=dataset.input_shape)  # fmt: skip
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=110)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        cols = ["index", "success", "pred0", "pred", "accepted0", "accepted", "l1", "l2", "linf"]
        print_table(rows[:20], cols)
        if len(rows) > 20:
            print(f"... {len(rows) - 20} more rows" + (f" in {args.out}" if args.out else ""))
        print(f"{int(ok.sum())}/{len(ok)} verified attacks ({summary['attack']}, {args.goal}, "
              f"{args.norm}, {args.mode}); median L2 {summary['median_l2']}, "
              f"{summary['samples_per_s']:.0f} samples/s")  # fmt: skip
    for path in (args.out, args.png):
        if path:
            print(f"wrote {path}", file=sys.stderr)
    return 0
