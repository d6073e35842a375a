"""``boxhack attack gradient``: monitor-aware white-box attacks on test inputs of a model's data
set; a thin layer over :class:`boxhack.attacks.gradient.MonitorAttack` (and
:class:`boxhack.attacks.orthogonal.OrthogonalAttack` with ``--orthogonal``)."""

from __future__ import annotations

import json
import sys

from boxhack.cli.common import nonneg_float, nonneg_int, positive_int
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
    p.add_argument("--eps", type=nonneg_float, default=None,
                   help="budget (required with --mode budget; an upper bound in minimal mode)")
    p.add_argument("--steps", type=positive_int, default=None, help="gradient steps per sample")
    p.add_argument("--target", type=nonneg_int, default=None,
                   help="target class for intrude-target")
    p.add_argument("--orthogonal", action="store_true",
                   help="use the Orthogonal-PGD-style attack instead")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--index", type=nonneg_int, action="append", default=None,
                     help="attack this test input (repeatable)")
    sel.add_argument("--n", type=positive_int, default=None,
                     help="attack a seeded, class-balanced sample of N test inputs the goal can "
                          "start from (default 100): correctly classified and accepted ones for "
                          "dos, rejected ones for intrude*, correctly classified ones for "
                          "combined")
    p.add_argument("--batch-size", type=positive_int, default=512, help="rows optimised at once")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seed of the sample (--n) and of random starts (default 0)")
    p.add_argument("--out", default=None, help="write one JSON row per sample to this JSONL file")
    p.add_argument("--save", default=None, metavar="FILE",
                   help="write the inputs found, exactly, to this .npz (re-check it with "
                        "`boxhack verify FILE`)")
    p.add_argument("--png", default=None, help="write before/after images to this PNG")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_handler)


def _handler(args) -> int:
    import numpy as np

    from boxhack.attacks.gradient import MonitorAttack
    from boxhack.attacks.orthogonal import OrthogonalAttack
    from boxhack.cli.common import (
        attacked_line,
        attacked_summary,
        check_device,
        check_output_file,
        load_attack_setup,
        print_table,
        save_attack_file,
        select_inputs,
    )
    from boxhack.infra.files import atomic_path, atomic_write
    from boxhack.infra.jsonl import encode_row

    if args.goal == "intrude-target" and args.target is None:
        raise BoxhackError("--goal intrude-target needs --target CLASS")
    if args.target is not None and args.goal != "intrude-target":
        raise BoxhackError("--target is only for --goal intrude-target")
    if args.mode == "budget" and args.eps is None:
        raise BoxhackError("--mode budget needs --eps, the budget epsilon of the perturbation")
    check_device(args.device)
    for option, path in (("--out", args.out), ("--png", args.png), ("--save", args.save)):
        if path:
            check_output_file(path, option)
    model, info, monitor, dataset = load_attack_setup(args)
    if args.target is not None and args.target >= monitor.n_classes_:
        raise BoxhackError(f"--target {args.target} is not a class of this model "
                           f"(classes 0..{monitor.n_classes_ - 1})")  # fmt: skip
    idx = select_inputs(model, monitor, dataset, args.goal, args.index, args.n, args.seed, 100)
    cls = OrthogonalAttack if args.orthogonal else MonitorAttack
    attack = cls(goal=args.goal, norm=args.norm, mode=args.mode, epsilon=args.eps,
                 steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                 device=args.device)  # fmt: skip
    x0, y = dataset.x_test[idx], dataset.y_test[idx]
    targets = None if args.target is None else np.full(len(idx), args.target)
    result = attack(model, monitor, x0, labels=y, targets=targets)
    rows = [{"index": int(idx[i]), **row} for i, row in enumerate(result.rows())]
    ok = result.success
    med = (lambda a: float(np.median(a[ok])) if ok.any() else None)
    counts = attacked_summary(result)
    summary = {
        "attack": result.info["attack"], "goal": args.goal, "norm": args.norm, "mode": args.mode,
        "epsilon": args.eps, **counts,
        "median_l1": med(result.l1), "median_l2": med(result.l2), "median_linf": med(result.linf),
        "wall_s": result.info["wall_s"], "samples_per_s": result.info["samples_per_s"],
    }  # fmt: skip
    if args.out:
        atomic_write(args.out, b"".join(encode_row(row) for row in rows))
    if args.save:
        budget = None if args.eps is None else {"norm": args.norm, "eps": args.eps}
        save_attack_file(args.save, result, args, info, budget=budget)
    if args.png:
        from boxhack.report.curves import plot_before_after

        show = np.flatnonzero(ok)[:8] if ok.any() else np.arange(min(8, len(idx)))
        titles = [f"#{idx[i]} {result.pred0[i]}->{result.pred[i]} "
                  f"{'acc' if result.accepted[i] else 'rej'}" for i in show]  # fmt: skip
        fig = plot_before_after(x0[show], result.x[show], titles=titles,
                                shape=dataset.input_shape)  # fmt: skip
        with atomic_path(args.png) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        cols = ["index", "success", "eligible", "already", "pred0", "pred", "accepted0",
                "accepted", "l1", "l2", "linf"]
        print_table(rows[:20], cols)
        if len(rows) > 20:
            print(f"... {len(rows) - 20} more rows" + (f" in {args.out}" if args.out else ""))
        median = ("" if summary["median_l2"] is None
                  else f"; median L2 of the successes {summary['median_l2']:.4g}")  # fmt: skip
        print(f"{attacked_line(result)} ({summary['attack']}, {args.goal}, {args.norm}, "
              f"{args.mode}){median}")  # fmt: skip
    for path in (args.out, args.png, args.save):
        if path:
            print(f"wrote {path}", file=sys.stderr)
    return 0
