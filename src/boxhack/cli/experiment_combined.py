"""``boxhack experiment combined``: paper section 4.2 / figure 9 (a thin layer over
:func:`boxhack.experiments.combined.run`)."""

from __future__ import annotations

from boxhack.cli.common import add_campaign_args, nonneg_float, positive_float, positive_int


def register(esub) -> None:
    p = esub.add_parser(
        "combined",
        help="figure 9: FGSM, then repair the rejected samples so they pass the monitor",
        description=(
            "FGSM on N (300) correctly classified MNIST test digits, then an Attack 2 without "
            "the same-prediction constraint (misclassified and accepted) on every sample that "
            "misses that goal. Writes OUT/combined/rows.jsonl (resumable), summary.json, "
            "figure9.png (projections before/after) and figure9_examples.png."
        ),
    )
    p.add_argument("--out", required=True, help="run directory, e.g. runs/paper")
    p.add_argument("--quick", action="store_true", help="30 digits")
    p.add_argument("--n", type=positive_int, default=None, help="number of test digits (default 300)")
    p.add_argument("--repair", default="gradient", choices=("gradient", "slsqp", "shgo", "none"),
                   help="gradient (default: monitor-aware gradient attack), slsqp or shgo (SciPy, "
                        "slow), none")
    p.add_argument("--norm", default="l1", choices=("l1", "l2"), help="repair distance (default l1)")
    p.add_argument("--eps", type=nonneg_float, default=0.1, help="FGSM budget (Linf, default 0.1)")
    p.add_argument("--max-evals", type=positive_int, default=None,
                   help="slsqp/shgo: evaluations per sample, the budget that decides the "
                        "result (default 5000, quick 2000)")
    p.add_argument("--time-limit", type=positive_float, default=None,
                   help="slsqp/shgo: wall-clock safety net per sample in seconds (default 600; "
                        "only stops a solver stuck in C code)")
    p.add_argument("--space", default=None,
                   help="slsqp/shgo: search space of the SciPy attack: pca:20 (default), input "
                        "(the paper's 784 pixels), pca:K or blocks:B")
    add_campaign_args(p)
    p.set_defaults(handler=_handler)


def _handler(args) -> int:
    from boxhack.cli.common import check_campaign_args, print_table
    from boxhack.errors import BoxhackError
    from boxhack.experiments import combined

    check_campaign_args(args)
    if args.eps < 0:
        raise BoxhackError(f"--eps must be >= 0, got {args.eps}")
    options = {"repair": args.repair, "norm": args.norm, "epsilon": args.eps}
    if args.n is not None:
        options["n"] = args.n
    if args.time_limit is not None:
        options["time_limit"] = args.time_limit
    if args.max_evals is not None:
        options["max_evals"] = args.max_evals
    if args.space is not None:
        if args.repair not in ("slsqp", "shgo"):
            raise BoxhackError("--space is for the SciPy repairs (--repair slsqp or shgo)")
        options["repair_options"] = {"space": args.space}
    summary = combined.run(args.out, quick=args.quick, n_jobs=args.jobs, scheduler=args.scheduler,
                           seed=args.seed, progress=not args.quiet,
                           models_root=args.models_root, **options)  # fmt: skip
    for table in summary["tables"]:
        print(table["title"])
        print_table([dict(zip(table["columns"], row)) for row in table["rows"]])
        print()
    for claim in summary["paper"]:
        print(f"paper: {claim['claim']}\nboxhack: {claim['measured']}")
    print(f"summary: {args.out}/{combined.NAME}/summary.json")
    return 0
