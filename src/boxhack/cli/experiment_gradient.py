"""``boxhack experiment gradient``: robustness curves of the monitor-aware attacks (a thin
layer over :func:`boxhack.experiments.gradient.run`)."""

from __future__ import annotations

from boxhack.cli.common import add_campaign_args, positive_int


def register(esub) -> None:
    p = esub.add_parser(
        "gradient",
        help="beyond the paper: success rate vs budget of the monitor-aware gradient attacks",
        description=(
            "For each goal (dos, intrude, intrude-any, combined), norm (L1, L2, Linf) and attack "
            "(gradient = minimal FMN-style, orthogonal = Orthogonal-PGD-style, pgd = fixed "
            "budgets), the success rate against the perturbation budget on MNIST test digits. "
            "Writes OUT/gradient/rows.jsonl (resumable), summary.json, curves_<goal>.png and "
            "examples.png."
        ),
    )
    p.add_argument("--out", required=True, help="run directory, e.g. runs/paper")
    p.add_argument("--quick", action="store_true",
                   help="12 digits per goal on the 3-class network, 3 goals, 2 PGD budgets")
    p.add_argument("--n", type=positive_int, default=None, help="digits per goal (default 100)")
    p.add_argument("--goals", nargs="+", default=None,
                   choices=("dos", "intrude", "intrude-any", "combined"), help="subset of goals")
    p.add_argument("--norms", nargs="+", default=None, choices=("l1", "l2", "linf"),
                   help="subset of norms")
    p.add_argument("--attacks", nargs="+", default=None, choices=("gradient", "orthogonal", "pgd"),
                   help="subset of attacks")
    add_campaign_args(p)
    p.set_defaults(handler=_handler)


def _handler(args) -> int:
    from boxhack.cli.common import check_campaign_args, print_table
    from boxhack.experiments import gradient

    check_campaign_args(args)
    options = {k: v for k, v in (("n", args.n), ("goals", args.goals), ("norms", args.norms),
                                 ("attacks", args.attacks)) if v is not None}
    summary = gradient.run(args.out, quick=args.quick, n_jobs=args.jobs, scheduler=args.scheduler,
                           seed=args.seed, progress=not args.quiet,
                           models_root=args.models_root, **options)  # fmt: skip
    for table in summary["tables"]:
        print(table["title"])
        print_table([dict(zip(table["columns"], row)) for row in table["rows"]])
        print()
    for claim in summary["paper"]:
        print(f"paper: {claim['claim']}\nboxhack: {claim['measured']}")
    print(f"summary: {args.out}/{gradient.NAME}/summary.json")
    return 0
