"""``boxhack experiment solvers``: paper figures 5-7 (a thin layer over
:func:`boxhack.experiments.solvers.run`)."""

from __future__ import annotations

from boxhack.cli.common import add_campaign_args


def register(esub) -> None:
    p = esub.add_parser(
        "solvers",
        help="figures 5-7: SLSQP, COBYLA, SHGO, DE on Attack 1/2 x L1/L2 x four networks",
        description=(
            "4 SciPy solvers x 4 problems (Attack 1 / Attack 2 x L1 / L2) x 4 networks (XOR, "
            "tanh, MNIST 0-1, MNIST 0-2) x 2 constraint encodings x 20 starting points. Every "
            "solve is ended by its evaluation/iteration budget (per problem class, in "
            "config.json and in every row), so the same command gives the same rows on any "
            "machine; a wall-clock safety net only kills a solve stuck in C code. Every "
            "success is verified and stored exactly (boxhack verify OUT). Writes "
            "OUT/solvers/rows.jsonl (resumable), summary.json, fig5_success_rates.png, "
            "fig6_digits.png, fig7_projections.png and solver_gallery.png."
        ),
    )
    p.add_argument("--out", required=True, help="run directory, e.g. runs/paper")
    p.add_argument("--quick", action="store_true",
                   help="small grid (XOR + MNIST 0-1, 2 starting points)")
    p.add_argument("--solve-timeout", type=float, default=None, metavar="S",
                   help="safety net: kill a solve still running S seconds after it started "
                        "(default per problem class, far above its normal run time; results "
                        "come from the budgets, not from this)")
    p.add_argument("--n", type=int, default=None, help="starting points per attack (default 20)")
    p.add_argument("--networks", default=None, help="comma-separated subset: xor,tanh,mnist2,mnist3")
    p.add_argument("--solvers", default=None, help="comma-separated subset: slsqp,cobyla,shgo,de")
    p.add_argument("--encodings", default=None, help="comma-separated subset: margin,indicator")
    add_campaign_args(p)
    p.set_defaults(handler=_handler)


def _split(text):
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _handler(args) -> int:
    from boxhack.cli.common import check_campaign_args, print_table
    from boxhack.experiments import solvers

    check_campaign_args(args)
    options = {}
    if args.n is not None:
        options["n_samples"] = args.n
    for name in ("networks", "solvers", "encodings"):
        value = _split(getattr(args, name))
        if value:
            options[name] = value
    summary = solvers.run(
        args.out, quick=args.quick, n_jobs=args.jobs, scheduler=args.scheduler, seed=args.seed,
        progress=not args.quiet, models_root=args.models_root,
        solve_timeout=args.solve_timeout, **options,
    )  # fmt: skip
    for table in summary["tables"][:-1]:
        print(table["title"])
        print_table([dict(zip(table["columns"], row)) for row in table["rows"]])
        print()
    print(f"wall time {summary['timing']['wall_s']:.0f} s; "
          f"summary: {args.out}/{solvers.NAME}/summary.json")  # fmt: skip
    return 0
