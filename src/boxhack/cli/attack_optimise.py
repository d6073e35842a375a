"""``boxhack attack optimise``: the paper's SciPy optimisation attacks (Attack 1 / Attack 2,
L1 / L2) on test inputs of a model's data set; a thin layer over
:func:`boxhack.attacks.optimisation.optimise_attack`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from boxhack.cli.common import nonneg_int, positive_int

# kept here so that `boxhack --help` does not import SciPy or torch
SOLVERS = ("slsqp", "cobyla", "shgo", "de")
NORMS = ("l1", "l2")
ENCODINGS = ("margin", "indicator")
ATTACKS = {"1": "dos", "2": "intrude", "2-any": "intrude-any"}


def register(asub) -> None:
    p = asub.add_parser(
        "optimise",
        help="SciPy optimisation attacks: Attack 1 (valid -> invalid), Attack 2 (invalid -> valid)",
        description=(
            "Solve the paper's optimisation attacks on test inputs: Attack 1 finds the closest "
            "input with the same prediction that the monitor rejects (from an accepted input), "
            "Attack 2 the closest input with the same prediction that it accepts (from a "
            "rejected one). L1 (auxiliary variables) or L2 distance; SciPy's SLSQP, COBYLA, SHGO "
            "or differential evolution; each solve in its own process under a time and memory "
            "limit. Every result is re-checked with the exact model and monitor."
        ),
    )
    p.add_argument("--model", required=True,
                   help="a boxhack model directory, a TorchScript file, or package.module:ClassName")
    p.add_argument("--weights", default=None, help="state-dict file for the ClassName form")
    p.add_argument("--monitor", required=True, help="monitor .npz written by `boxhack monitor fit`")
    p.add_argument("--attack", default="1", choices=list(ATTACKS),
                   help="1: valid -> invalid (default); 2: invalid -> valid, same prediction; "
                        "2-any: invalid -> valid, any prediction")
    p.add_argument("--norm", default="l2", choices=NORMS, help="distance to minimise (default l2)")
    p.add_argument("--solver", default="slsqp", choices=SOLVERS, help="SciPy solver (default slsqp)")
    p.add_argument("--encoding", default="margin", choices=ENCODINGS,
                   help="constraints as continuous margins with gradients (default) or the "
                        "paper-literal 0/1 indicators")
    p.add_argument("--space", default="input",
                   help="search space: input (default), pca:K (top-K PCA components of the "
                        "training inputs) or blocks:B (B x B pixel blocks)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--index", type=nonneg_int, action="append", default=None,
                     help="attack this test input (repeatable; default: one input drawn as for "
                          "--n 1)")
    sel.add_argument("--n", type=positive_int, default=None,
                     help="attack a seeded, class-balanced sample of N test inputs the attack "
                          "can start from (correctly classified and accepted ones for attack 1, "
                          "rejected ones for attack 2)")
    p.add_argument("--maxiter", type=positive_int, default=None,
                   help="budget: solver iterations (SLSQP), evaluations (COBYLA) or generations "
                        "(DE); default: the solver's setting in boxhack.attacks.optimisation."
                        "solver_settings")
    p.add_argument("--max-evals", type=positive_int, default=None,
                   help="budget: points evaluated per solve (default: no cap beyond the solver's)")
    p.add_argument("--time-limit", type=float, default=600.0,
                   help="safety net: kill a solve still running this many seconds after it "
                        "started (default 600; outcome 'timeout'); results come from the budgets")
    p.add_argument("--memory-limit", type=float, default=4096,
                   help="MiB of extra memory a solve may use (default 4096)")
    p.add_argument("--jobs", type=int, default=1, help="solves in parallel (default 1)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seed of the sample (--n) and of differential evolution (default 0)")
    p.add_argument("--out", default=None, help="write the result (per-sample rows) to this JSON file")
    p.add_argument("--save", default=None, metavar="FILE",
                   help="write the inputs found, exactly, to this .npz (re-check it with "
                        "`boxhack verify FILE`)")
    p.add_argument("--png", default=None, help="write the inputs before/after to this PNG")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_handler)


def _handler(args) -> int:
    import numpy as np

    from boxhack.attacks.optimisation import optimise_attack
    from boxhack.cli.common import (
        attacked_line,
        check_output_file,
        load_attack_setup,
        print_table,
        save_attack_file,
        select_inputs,
        write_json,
    )

    goal = ATTACKS[args.attack]
    for option, path in (("--out", args.out), ("--png", args.png), ("--save", args.save)):
        if path:
            check_output_file(path, option)
    model, info, monitor, dataset = load_attack_setup(args)
    idx = select_inputs(model, monitor, dataset, goal, args.index, args.n, args.seed, 1)
    kind = args.space.split(":")[0].strip().lower()
    result = optimise_attack(
        model, monitor, dataset.x_test[idx], goal=goal, norm=args.norm, solver=args.solver,
        encoding=args.encoding, space=args.space, labels=dataset.y_test[idx],
        time_limit=args.time_limit, memory_limit_mb=args.memory_limit, max_evals=args.max_evals,
        n_jobs=args.jobs, train_inputs=dataset.x_train if kind == "pca" else None,
        seed=args.seed, input_shape=dataset.input_shape,
        solver_options=None if args.maxiter is None else {"maxiter": args.maxiter},
    )  # fmt: skip
    rows = []
    for i, row in enumerate(result.rows()):
        rows.append({
            "index": int(idx[i]), "label": int(dataset.y_test[idx[i]]), **row,
            "outcome": result.info["outcome"][i], "wall_s": round(result.info["wall_s"][i], 3),
            "nfev": result.info["nfev"][i], "message": result.info["message"][i],
        })  # fmt: skip
    settings = {k: result.info[k] for k in ("goal", "solver", "norm", "encoding", "space",
                                            "time_limit", "memory_limit_mb", "max_evals",
                                            "budget")}
    doc = {"settings": settings, "success_rate": result.success_rate,
           "attacked": result.n_attacked, "already": int(result.already.sum()), "rows": rows,
           "x0": result.x0.tolist(), "x": result.x.tolist()}  # fmt: skip
    if args.out:
        write_json(args.out, doc)
    if args.save:
        save_attack_file(args.save, result, args, info)
    if args.png:
        _write_png(Path(args.png), result, idx, dataset.input_shape)
    if args.json:
        json.dump({k: v for k, v in doc.items() if k not in ("x0", "x")}, sys.stdout, indent=2)
        print()
    else:
        cols = ["index", "outcome", "eligible", "pred0", "pred", "accepted0", "accepted", "l1",
                "l2", "linf", "wall_s", "nfev", "message"]
        print_table(rows, cols)
        print(f"{attacked_line(result)} ({args.solver}, {args.norm}, {args.encoding}, "
              f"{args.space})")  # fmt: skip
    for path in (args.out, args.png, args.save):
        if path:
            print(f"wrote {path}", file=sys.stderr)
    return 0 if np.all(np.isin(result.info["outcome"], ("success", "failed", "timeout"))) else 1


def _write_png(path: Path, result, idx, input_shape) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    n = min(len(result), 8)
    image = len(input_shape) >= 2
    if image:
        fig = Figure(figsize=(1.6 * max(n, 2), 3.6))
        axes = fig.subplots(2, max(n, 2), squeeze=False)
        for j in range(n):
            for i, (arr, pred, acc) in enumerate(((result.x0, result.pred0, result.accepted0),
                                                  (result.x, result.pred, result.accepted))):
                a = np.asarray(arr[j]).reshape(input_shape)
                a = a[0] if a.ndim == 3 else a
                ax = axes[i][j]
                ax.imshow(a, cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                text = f"#{idx[j]} pred {pred[j]}, {'acc' if acc[j] else 'REJ'}"
                if i == 1:
                    text += f"\nL2 {result.l2[j]:.2f}{'' if result.success[j] else ' (failed)'}"
                ax.set_title(text, fontsize=6)
        for j in range(n, axes.shape[1]):
            axes[0][j].set_visible(False)
            axes[1][j].set_visible(False)
    else:
        fig = Figure(figsize=(4.5, 4.5))
        ax = fig.add_subplot()
        x0 = result.x0.reshape(len(result), -1)
        x = result.x.reshape(len(result), -1)
        ax.quiver(x0[:, 0], x0[:, 1], x[:, 0] - x0[:, 0], x[:, 1] - x0[:, 1], angles="xy",
                  scale_units="xy", scale=1, width=0.004, color="0.4")  # fmt: skip
        ax.scatter(x0[:, 0], x0[:, 1], c="0.5", s=14, label="before")
        ax.scatter(x[:, 0], x[:, 1], c=np.where(result.success, "tab:red", "tab:blue"), s=18,
                   label="after (red: verified attack)")  # fmt: skip
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    from boxhack.infra.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
