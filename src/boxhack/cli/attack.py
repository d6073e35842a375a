"""``boxhack attack optimise|adversarial|gradient``: attack a model and its monitor on test
inputs of its data set. Each command loads its target (:func:`boxhack.workflow.target.load_target`),
picks the inputs (:func:`boxhack.workflow.target.select_inputs`), calls one attack family of
:mod:`boxhack.attacks` and prints; every success is decided by :mod:`boxhack.attacks.verify`.

The attack libraries are imported inside the handlers: that keeps ``boxhack --help`` from
importing torch, SciPy and Foolbox.
"""

from __future__ import annotations

import argparse
import json
import sys

from boxhack.cli.common import (
    add_goal_args,
    add_group,
    add_output_args,
    add_sample_args,
    add_target_args,
    check_output_args,
    eps_value,
    load_target_args,
    nonneg_int,
    pick_inputs,
    positive_float,
    positive_int,
    print_table,
    write_rows,
)
from boxhack.errors import BoxhackError

# the libraries' names, here so that building the parser imports neither SciPy nor Foolbox
SOLVERS = ("slsqp", "cobyla", "shgo", "de")
ENCODINGS = ("margin", "indicator")
FOOLBOX_ATTACKS = ("fgsm", "fgm-l2", "pgd-linf", "pgd-l2", "deepfool-linf", "deepfool-l2",
                   "cw-l2", "boundary", "hsj", "pgd", "deepfool", "cw", "hopskipjump")  # fmt: skip
GRADIENT_METHODS = ("gradient", "orthogonal")
MODES = ("minimal", "budget")
START_WORDS = {
    "optimise": "correctly classified and accepted ones for dos, rejected ones for intrude*, "
                "correctly classified ones for combined",
    "adversarial": "correctly classified ones",
    "gradient": "correctly classified and accepted ones for dos, rejected ones for intrude*, "
                "correctly classified ones for combined",
}  # fmt: skip


def register(sub) -> None:
    add_group(sub, "attack", "attack a model and its monitor",
              "Attack a classifier and its monitor; every success is re-verified.",
              _register_optimise, _register_adversarial, _register_gradient)  # fmt: skip


# ------------------------------------------------------------------ what every attack prints
ALREADY_WORDS = {
    "dos": "already rejected", "intrude": "already accepted", "intrude-any": "already accepted",
    "intrude-target": "already accepted as the target", "combined":
    "already misclassified and accepted", "misclassify": "already misclassified",
}  # fmt: skip


def attacked_summary(result) -> dict:
    """Counts that keep a report honest: inputs given, attacked (eligible), already meeting
    the goal (not attacked), not eligible for another reason, verified successes."""
    n = len(result)
    attacked = int(result.eligible.sum())
    already = int(result.already.sum())
    return {"n": n, "attacked": attacked, "already": already,
            "not_eligible": n - attacked - already, "success": int(result.success.sum()),
            "success_rate": result.success_rate}  # fmt: skip


def attacked_line(result) -> str:
    """``"3/5 verified attacks on attacked inputs (60%); not attacked: 2 already rejected"``:
    the success count over the inputs really attacked, with the others named apart."""
    s = attacked_summary(result)
    rate = "" if s["attacked"] == 0 else f" ({100 * s['success_rate']:.0f}%)"
    text = f"{s['success']}/{s['attacked']} verified attacks on attacked inputs{rate}"
    apart = []
    if s["already"]:
        apart.append(f"{s['already']} {ALREADY_WORDS.get(result.goal, 'already meeting the goal')}")
    if s["not_eligible"]:
        apart.append(f"{s['not_eligible']} misclassified at the start")
    if apart:
        text += f"; not attacked: {', '.join(apart)}"
    return text


def _write_outputs(args, target, result, idx, rows, budget=None) -> None:
    """``--out`` (the rows as JSONL), ``--save`` (the exact record), ``--png``."""
    if args.out:
        write_rows(args.out, rows)
    if args.save:
        from boxhack.workflow.target import save_attack_file

        save_attack_file(args.save, result, target, budget=budget)
    if args.png:
        _draw(args.png, result, idx, target.dataset.input_shape)


def _draw(path, result, idx, shape) -> None:
    import numpy as np

    from boxhack.infra.files import atomic_path
    from boxhack.report.curves import plot_before_after

    ok = result.success
    show = np.flatnonzero(ok)[:8] if ok.any() else np.arange(min(8, len(idx)))
    titles = [f"#{idx[i]} {result.pred0[i]}->{result.pred[i]} "
              f"{'acc' if result.accepted[i] else 'rej'}" for i in show]  # fmt: skip
    fig = plot_before_after(result.x0[show], result.x[show], titles=titles, shape=shape)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def _print_rows(args, rows, columns, last_line: str) -> None:
    print_table(rows[:20], columns)
    if len(rows) > 20:
        print(f"... {len(rows) - 20} more rows" + (f" in {args.out}" if args.out else ""))
    print(last_line)


def _wrote(args) -> None:
    for path in (args.out, args.png, args.save):
        if path:
            print(f"wrote {path}", file=sys.stderr)


def _budget(norm: str, eps) -> dict | None:
    return None if eps is None else {"norm": norm, "eps": eps}


# ------------------------------------------------------------------ attack optimise
def _register_optimise(asub) -> None:
    p = asub.add_parser(
        "optimise",
        help="SciPy optimisation attacks: Attack 1 (valid -> invalid), Attack 2 (invalid -> valid)",
        description=(
            "Solve the paper's optimisation attacks on test inputs: Attack 1 (goal dos) finds the "
            "closest input with the same prediction that the monitor rejects (from an accepted "
            "input), Attack 2 (goal intrude) the closest input with the same prediction that it "
            "accepts (from a rejected one); goal combined: misclassified and accepted. L1 "
            "(auxiliary variables) or L2 distance; SciPy's SLSQP, COBYLA, SHGO or differential "
            "evolution; each solve in its own process under a time and memory limit, on the CPU. "
            "Every result is re-checked with the exact model and monitor."
        ),
    )
    add_target_args(p)
    add_goal_args(p, ("dos", "intrude", "intrude-any", "combined"), "dos",
                  "what the attack must achieve")
    p.add_argument("--norm", default="l2", type=str.lower, choices=("l1", "l2"),
                   help="distance to minimise (default l2)")
    p.add_argument("--solver", default="slsqp", choices=SOLVERS,
                   help="SciPy solver (default slsqp)")
    p.add_argument("--encoding", default="margin", choices=ENCODINGS,
                   help="constraints as continuous margins with gradients (default) or the "
                        "paper-literal 0/1 indicators")
    p.add_argument("--space", default="input",
                   help="search space: input (default), pca:K (top-K PCA components of the "
                        "training inputs) or blocks:B (B x B pixel blocks)")
    add_sample_args(p, default_n=1, what=START_WORDS["optimise"])
    p.add_argument("--maxiter", type=positive_int, default=None,
                   help="budget: solver iterations (SLSQP), evaluations (COBYLA) or generations "
                        "(DE); default: the solver's setting in boxhack.attacks.optimisation."
                        "solver_settings")
    p.add_argument("--max-evals", type=positive_int, default=None,
                   help="budget: points evaluated per solve (default: no cap beyond the solver's)")
    p.add_argument("--time-limit", type=positive_float, default=600.0,
                   help="safety net: kill a solve still running this many seconds after it "
                        "started (default 600; outcome 'timeout'); results come from the budgets")
    p.add_argument("--memory-limit", type=positive_float, default=4096,
                   help="MiB of extra memory a solve may use (default 4096)")
    p.add_argument("--jobs", type=positive_int, default=1, help="solves in parallel (default 1)")
    add_output_args(p)
    p.set_defaults(handler=_optimise)


def _optimise(args) -> int:
    import numpy as np

    from boxhack.attacks.optimisation import optimise_attack

    check_output_args(args)
    target = load_target_args(args)
    ds = target.dataset
    idx = pick_inputs(args, target, args.goal)
    kind = args.space.split(":")[0].strip().lower()
    result = optimise_attack(
        target.model, target.monitor, ds.x_test[idx], goal=args.goal, norm=args.norm,
        solver=args.solver, encoding=args.encoding, space=args.space, labels=ds.y_test[idx],
        time_limit=args.time_limit, memory_limit_mb=args.memory_limit, max_evals=args.max_evals,
        n_jobs=args.jobs, train_inputs=ds.x_train if kind == "pca" else None,
        seed=args.seed, input_shape=ds.input_shape,
        solver_options=None if args.maxiter is None else {"maxiter": args.maxiter},
    )  # fmt: skip
    info = result.info
    rows = [{"index": int(idx[i]), "label": int(ds.y_test[idx[i]]), **row,
             "outcome": info["outcome"][i], "wall_s": round(info["wall_s"][i], 3),
             "nfev": info["nfev"][i], "message": info["message"][i]}
            for i, row in enumerate(result.rows())]  # fmt: skip
    settings = {k: info[k] for k in ("goal", "solver", "norm", "encoding", "space", "time_limit",
                                     "memory_limit_mb", "max_evals", "budget")}  # fmt: skip
    _write_outputs(args, target, result, idx, rows)
    if args.json:
        print(json.dumps({"settings": settings, **attacked_summary(result)}, indent=2))
    else:
        cols = ["index", "outcome", "eligible", "pred0", "pred", "accepted0", "accepted", "l1",
                "l2", "linf", "wall_s", "nfev", "message"]
        _print_rows(args, rows, cols, f"{attacked_line(result)} ({args.solver}, {args.norm}, "
                                      f"{args.encoding}, {args.space})")  # fmt: skip
    _wrote(args)
    return 0 if np.all(np.isin(info["outcome"], ("success", "failed", "timeout"))) else 1


# ------------------------------------------------------------------ attack adversarial
def _param(text: str) -> list[tuple[str, object]]:
    """``KEY=VALUE[,KEY=VALUE...]``; a value is JSON when it parses (``steps=100``), else text."""
    import re

    out = []
    for part in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", text):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {part!r}")
        try:
            out.append((key.strip(), json.loads(value)))
        except json.JSONDecodeError:
            out.append((key.strip(), value))
    return out


def _register_adversarial(asub) -> None:
    p = asub.add_parser(
        "adversarial",
        help="Foolbox adversarial attacks (FGSM, PGD, DeepFool, C&W, Boundary, HopSkipJump)",
        description=(
            "Run a Foolbox attack on test inputs of the model's data set and report, per sample, "
            "whether the prediction flipped, whether the monitor accepts the result, and the "
            "L1/L2/Linf perturbation. With --goal combined the attack searches for inputs that "
            "are misclassified AND accepted by the monitor. Every verdict is re-checked with "
            "the exact model and monitor."
        ),
    )
    add_target_args(p)
    p.add_argument("--method", default="fgsm", choices=FOOLBOX_ATTACKS, metavar="NAME",
                   help=f"Foolbox attack (default fgsm): {', '.join(FOOLBOX_ATTACKS)}")
    add_goal_args(p, ("misclassify", "combined"), "misclassify",
                  "what the attack must achieve (combined: misclassified and accepted)")
    p.add_argument("--criterion", dest="goal", choices=("misclassify", "combined"),
                   help=argparse.SUPPRESS)  # the old spelling of --goal
    p.add_argument("--eps", type=eps_value, default=0.1, metavar="EPS",
                   help="budget in the attack's norm (Linf for fgsm/pgd-linf/deepfool-linf, L2 "
                        "otherwise; default 0.1); 'none' = no clipping (minimal and decision "
                        "attacks)")
    add_sample_args(p, default_n=100, what=START_WORDS["adversarial"])
    p.add_argument("--budget", default="default", choices=("default", "quick"),
                   help="iteration budget of the attack (quick: small, for a first look)")
    p.add_argument("--param", type=_param, action="extend", default=[], metavar="KEY=VALUE",
                   help="Foolbox attack parameters, e.g. steps=100,stepsize=0.01 "
                        "(comma-separated or repeated)")
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
    add_output_args(p)
    p.set_defaults(handler=_adversarial)


def _adversarial_summary(result, spec, args, y) -> dict:
    import numpy as np

    from boxhack.attacks.adversarial import flip_counts

    flipped = (result.pred != y) & result.eligible  # flips of inputs really attacked
    counts = {k: v for k, v in attacked_summary(result).items() if k != "n"}
    return {
        "attack": spec.name, "norm": spec.norm, "epsilon": args.eps, "goal": args.goal,
        **flip_counts(result), **counts, "flipped_attacked": int(flipped.sum()),
        "median_l2_flipped": float(np.median(result.l2[flipped])) if flipped.any() else None,
        "median_linf_flipped": float(np.median(result.linf[flipped])) if flipped.any() else None,
        "attack_s": round(float(result.info.get("attack_s", 0.0)), 3),
        "monitor_queries": result.info.get("queries"),
    }  # fmt: skip


def _adversarial(args) -> int:
    from boxhack.attacks.adversarial import get_spec, run_adversarial

    spec = get_spec(args.method)
    if spec.kind == "fixed" and args.eps is None:
        raise BoxhackError(f"{spec.name} is a fixed-budget attack: give --eps")
    check_output_args(args)
    target = load_target_args(args)
    ds = target.dataset
    idx = pick_inputs(args, target, args.goal)
    x, y = ds.x_test[idx], ds.y_test[idx]
    kwargs = dict(args.param)
    if spec.kind == "decision":
        kwargs.update(start=args.start, pool=ds.x_train[: args.pool])
    if spec.kind == "fixed":
        kwargs.update(eps_steps=args.eps_steps, restarts=args.restarts)
    elif spec.kind == "minimal":
        kwargs.update(restarts=args.restarts)
    result = run_adversarial(target.model, target.monitor, x, y, spec.name, args.eps,
                             criterion=args.goal, budget=args.budget, seed=args.seed,
                             **kwargs)  # fmt: skip
    rows = [{"index": i, "attack": spec.name, "epsilon": args.eps, "criterion": args.goal,
             "flipped": row["pred"] != row["label"], **row}
            for i, row in zip(idx.tolist(), result.rows())]  # fmt: skip
    summary = _adversarial_summary(result, spec, args, y)
    _write_outputs(args, target, result, idx, rows, budget=_budget(spec.norm, args.eps))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{spec.name} ({spec.norm} epsilon {args.eps}), goal {args.goal}, "
              f"{summary['n']} test inputs")  # fmt: skip
        print_table([{k: summary[k] for k in ("attacked", "flipped_attacked", "accepted",
                                               "flipped_and_accepted", "success",
                                               "median_l2_flipped", "median_linf_flipped",
                                               "attack_s")}])  # fmt: skip
        print(attacked_line(result))
    _wrote(args)
    return 0


# ------------------------------------------------------------------ attack gradient
def _register_gradient(asub) -> None:
    p = asub.add_parser(
        "gradient",
        help="monitor-aware gradient attacks (fast, batched, minimal or fixed-budget)",
        description=(
            "Batched white-box attacks on the classifier and its monitor together: dos "
            "(keep the class, get rejected), intrude (get accepted as the same class), "
            "intrude-any, intrude-target, combined (misclassified and accepted); L1, L2 or Linf; "
            "minimal perturbation or PGD within a budget. Every result is re-checked with the "
            "exact model and monitor (on the CPU)."
        ),
    )
    add_target_args(p, device=True)
    add_goal_args(p, ("dos", "intrude", "intrude-any", "intrude-target", "combined"), "dos",
                  "attack goal")
    p.add_argument("--norm", default="l2", type=str.lower, choices=("l1", "l2", "linf"),
                   help="perturbation norm (default l2)")
    p.add_argument("--method", default="gradient", choices=GRADIENT_METHODS,
                   help="gradient: the minimal-norm (FMN-style) attack (default); orthogonal: "
                        "the Orthogonal-PGD-style attack")
    p.add_argument("--orthogonal", dest="method", action="store_const", const="orthogonal",
                   help=argparse.SUPPRESS)  # the old spelling of --method orthogonal
    p.add_argument("--mode", default="minimal", choices=MODES,
                   help="minimal: smallest perturbation that succeeds (default); budget: PGD "
                        "within --eps")
    p.add_argument("--eps", type=eps_value, default=None,
                   help="budget (required with --mode budget; an upper bound in minimal mode)")
    p.add_argument("--steps", type=positive_int, default=None, help="gradient steps per sample")
    p.add_argument("--target", type=nonneg_int, default=None,
                   help="target class for intrude-target")
    add_sample_args(p, default_n=100, what=START_WORDS["gradient"])
    p.add_argument("--batch-size", type=positive_int, default=512, help="rows optimised at once")
    add_output_args(p)
    p.set_defaults(handler=_gradient)


def _check_gradient_args(args) -> None:
    if args.goal == "intrude-target" and args.target is None:
        raise BoxhackError("--goal intrude-target needs --target CLASS")
    if args.target is not None and args.goal != "intrude-target":
        raise BoxhackError("--target is only for --goal intrude-target")
    if args.mode == "budget" and args.eps is None:
        raise BoxhackError("--mode budget needs --eps, the budget epsilon of the perturbation")


def _gradient(args) -> int:
    import numpy as np

    from boxhack.attacks.gradient import MonitorAttack
    from boxhack.attacks.orthogonal import OrthogonalAttack

    _check_gradient_args(args)
    check_output_args(args)
    target = load_target_args(args)
    n_classes = target.monitor.n_classes_
    if args.target is not None and args.target >= n_classes:
        raise BoxhackError(f"--target {args.target} is not a class of this model "
                           f"(classes 0..{n_classes - 1})")  # fmt: skip
    idx = pick_inputs(args, target, args.goal)
    cls = OrthogonalAttack if args.method == "orthogonal" else MonitorAttack
    attack = cls(goal=args.goal, norm=args.norm, mode=args.mode, epsilon=args.eps,
                 steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                 device=target.device)  # fmt: skip
    x0, y = target.dataset.x_test[idx], target.dataset.y_test[idx]
    targets = None if args.target is None else np.full(len(idx), args.target)
    result = attack(target.model, target.monitor, x0, labels=y, targets=targets)
    rows = [{"index": int(idx[i]), **row} for i, row in enumerate(result.rows())]
    ok = result.success
    med = (lambda a: float(np.median(a[ok])) if ok.any() else None)
    summary = {
        "attack": result.info["attack"], "goal": args.goal, "norm": args.norm, "mode": args.mode,
        "epsilon": args.eps, **attacked_summary(result),
        "median_l1": med(result.l1), "median_l2": med(result.l2), "median_linf": med(result.linf),
        "wall_s": result.info["wall_s"], "samples_per_s": result.info["samples_per_s"],
    }  # fmt: skip
    _write_outputs(args, target, result, idx, rows, budget=_budget(args.norm, args.eps))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        median = ("" if summary["median_l2"] is None
                  else f"; median L2 of the successes {summary['median_l2']:.4g}")  # fmt: skip
        cols = ["index", "success", "eligible", "already", "pred0", "pred", "accepted0",
                "accepted", "l1", "l2", "linf"]
        last = (f"{attacked_line(result)} ({summary['attack']}, {args.goal}, {args.norm}, "
                f"{args.mode}){median}")  # fmt: skip
        _print_rows(args, rows, cols, last)
    _wrote(args)
    return 0

