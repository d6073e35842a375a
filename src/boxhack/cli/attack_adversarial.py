"""``boxhack attack adversarial``: a Foolbox attack on a model and its monitor, every sample
verified (a thin layer over :func:`boxhack.attacks.adversarial.run_adversarial`)."""

from __future__ import annotations

import argparse
import json
import math
import sys

from boxhack.cli.common import nonneg_int, positive_int
from boxhack.errors import BoxhackError

# kept here (not imported from the adapter) so that `boxhack --help` does not import Foolbox
ATTACK_NAMES = ("fgsm", "fgm-l2", "pgd-linf", "pgd-l2", "deepfool-linf", "deepfool-l2",
                "cw-l2", "boundary", "hsj", "pgd", "deepfool", "cw", "hopskipjump")  # fmt: skip


def _eps(text: str) -> float | None:
    if text.lower() in ("none", "min", "minimal"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"epsilon must be a finite number >= 0, got {text}")
    return value


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def register(asub) -> None:
    p = asub.add_parser(
        "adversarial",
        help="Foolbox adversarial attacks (FGSM, PGD, DeepFool, C&W, Boundary, HopSkipJump)",
        description=(
            "Run a Foolbox attack on test inputs of the model's data set and report, per sample, "
            "whether the prediction flipped, whether the monitor accepts the result, and the "
            "L1/L2/Linf perturbation. With --criterion combined the attack searches for inputs "
            "that are misclassified AND accepted by the monitor. Every verdict is re-checked "
            "with the exact model and monitor."
        ),
    )
    p.add_argument("--model", required=True,
                   help="a boxhack model directory, a TorchScript file, or package.module:ClassName")
    p.add_argument("--weights", default=None, help="state-dict file for the ClassName form")
    p.add_argument("--monitor", required=True, help="monitor .npz written by `boxhack monitor fit`")
    p.add_argument("--attack", default="fgsm", choices=ATTACK_NAMES, metavar="NAME",
                   help=f"attack (default fgsm): {', '.join(ATTACK_NAMES)}")
    p.add_argument("--eps", type=_eps, default=0.1, metavar="EPS",
                   help="budget in the attack's norm (Linf for fgsm/pgd-linf/deepfool-linf, L2 "
                        "otherwise; default 0.1); 'none' = no clipping (minimal and decision "
                        "attacks)")
    p.add_argument("--criterion", default="misclassify", choices=("misclassify", "combined"),
                   help="what the attack must achieve: misclassify (default) or combined "
                        "(misclassified and accepted by the monitor)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--n", type=positive_int, default=None,
                     help="attack a seeded, class-balanced sample of N correctly classified "
                          "test inputs (default 100)")
    sel.add_argument("--index", type=nonneg_int, action="append", default=None,
                     help="attack this test input (repeatable)")
    p.add_argument("--budget", default="default", choices=("default", "quick"),
                   help="iteration budget of the attack (quick: small, for a first look)")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                   help="Foolbox attack parameter, e.g. steps=100 (repeatable)")
    p.add_argument("--eps-steps", type=positive_int, default=None,
                   help="fixed-budget attacks: budgets searched up to --eps (default 1 for "
                        "misclassify, 8 for combined)")
    p.add_argument("--restarts", type=positive_int, default=1,
                   help="run the attack this many times")
    p.add_argument("--start", default="auto", choices=("auto", "dataset", "noise"),
                   help="decision attacks: how starting points are found (default auto)")
    p.add_argument("--pool", type=positive_int, default=1000,
                   help="decision attacks: training images searched for starting points "
                        "(default 1000)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seed of the sample (--n) and of the attack (default 0)")
    p.add_argument("--out", default=None, help="write one JSON row per sample to this .jsonl")
    p.add_argument("--save", default=None, metavar="FILE",
                   help="write the inputs found, exactly, to this .npz (re-check it with "
                        "`boxhack verify FILE`)")
    p.add_argument("--png", default=None,
                   help="write the first inputs before/after the attack to this PNG")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_handler)


def _handler(args) -> int:
    import numpy as np

    from boxhack.attacks.adversarial import flip_counts, get_spec, run_adversarial
    from boxhack.cli.common import (
        attacked_line,
        attacked_summary,
        check_output_file,
        load_attack_setup,
        print_table,
        save_attack_file,
        select_inputs,
    )
    from boxhack.infra.files import atomic_path, atomic_write
    from boxhack.infra.jsonl import encode_row

    spec = get_spec(args.attack)
    if spec.kind == "fixed" and args.eps is None:
        raise BoxhackError(f"{spec.name} is a fixed-budget attack: give --eps")
    for option, path in (("--out", args.out), ("--png", args.png), ("--save", args.save)):
        if path:
            check_output_file(path, option)
    model, info, monitor, dataset = load_attack_setup(args)
    idx = select_inputs(model, monitor, dataset, args.criterion, args.index, args.n, args.seed,
                        100)  # fmt: skip
    x, y = dataset.x_test[idx], dataset.y_test[idx]
    kwargs = dict(args.param)
    if spec.kind == "decision":
        kwargs.update(start=args.start, pool=dataset.x_train[: args.pool])
    if spec.kind == "fixed":
        kwargs.update(eps_steps=args.eps_steps, restarts=args.restarts)
    elif spec.kind == "minimal":
        kwargs.update(restarts=args.restarts)
    result = run_adversarial(model, monitor, x, y, spec.name, args.eps, criterion=args.criterion,
                             budget=args.budget, seed=args.seed, **kwargs)  # fmt: skip
    counts = flip_counts(result)
    # flips of inputs really attacked (correctly classified at the start)
    flipped = (result.pred != y) & result.eligible
    summary = {
        "attack": spec.name, "norm": spec.norm, "epsilon": args.eps, "criterion": args.criterion,
        **counts, **{f"{k}_attacked" if k in ("n", "success") else k: v
                     for k, v in attacked_summary(result).items()},
        "flipped_attacked": int(flipped.sum()),
        "median_l2_flipped": float(np.median(result.l2[flipped])) if flipped.any() else None,
        "median_linf_flipped": float(np.median(result.linf[flipped])) if flipped.any() else None,
        "attack_s": round(float(result.info.get("attack_s", 0.0)), 3),
        "monitor_queries": result.info.get("queries"),
    }  # fmt: skip
    summary["success"] = summary.pop("success_attacked")
    summary.pop("n_attacked")
    if args.out:
        atomic_write(args.out, b"".join(
            encode_row({"index": i, "attack": spec.name, "epsilon": args.eps,
                        "criterion": args.criterion, "flipped": row["pred"] != row["label"],
                        **row})
            for i, row in zip(idx.tolist(), result.rows())))  # fmt: skip
        summary["rows"] = str(args.out)
    if args.save:
        budget = None if args.eps is None else {"norm": spec.norm, "eps": args.eps}
        save_attack_file(args.save, result, args, info, budget=budget)
        summary["saved"] = str(args.save)
    if args.png:
        from boxhack.report.adversarial_figures import plot_images

        k = min(8, len(x))
        caps = [[f"label {int(y[i])}" for i in range(k)],
                [f"pred {int(result.pred[i])}, {'acc.' if result.accepted[i] else 'rej.'}"
                 for i in range(k)]]  # fmt: skip
        if x.shape[1:] in ((1, 28, 28), (28, 28)):
            fig = plot_images([("before", x[:k]), (spec.name, result.x[:k])], caps)
            with atomic_path(args.png) as tmp:
                fig.savefig(tmp, dpi=110, format="png")
            summary["png"] = str(args.png)
        else:
            print("boxhack: note: --png only draws 28x28 images; skipped", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{spec.name} ({spec.norm} epsilon {args.eps}), criterion {args.criterion}, "
              f"{counts['n']} test inputs")  # fmt: skip
        print_table([{k: summary[k] for k in ("attacked", "flipped_attacked", "accepted",
                                               "flipped_and_accepted", "success",
                                               "median_l2_flipped", "median_linf_flipped",
                                               "attack_s")}])  # fmt: skip
        print(attacked_line(result))
        for key, what in (("rows", "rows"), ("saved", "saved inputs")):
            if key in summary:
                print(f"{what}: {summary[key]}")
    return 0
