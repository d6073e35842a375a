"""``boxhack experiment adversarial``: paper figure 8 (a thin layer over
:func:`boxhack.experiments.adversarial.run`)."""

from __future__ import annotations


def register(esub) -> None:
    p = esub.add_parser(
        "adversarial",
        help="figure 8: do adversarial samples pass the monitor? (clusters x tolerance)",
        description=(
            "Foolbox attacks (FGSM, PGD, DeepFool, C&W, Boundary, HopSkipJump) on 100 correctly "
            "classified MNIST test digits at several budgets; every adversarial sample judged by "
            "monitors with 1, 2, 3 boxes per class x tolerance 0, 0.1, 0.25. Writes "
            "OUT/adversarial/rows.jsonl (resumable), summary.json and figure8*.png."
        ),
    )
    p.add_argument("--out", required=True, help="run directory, e.g. runs/paper")
    p.add_argument("--quick", action="store_true",
                   help="20 digits, 6 attacks, 2 budgets, small iteration budgets, monitors "
                        "k=1,3 x tolerance 0, 0.25")
    p.add_argument("--n", type=int, default=None, help="number of test digits (default 100)")
    p.add_argument("--attacks", default=None,
                   help="comma-separated subset of attacks, e.g. fgsm,pgd-linf,hsj")
    p.add_argument("--jobs", type=int, default=None, help="local worker processes (default: all cores)")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models-root", default=None,
                   help="where networks and monitors are cached (default OUT/models)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_handler)


def _handler(args) -> int:
    from boxhack.cli.common import print_table
    from boxhack.errors import BoxhackError
    from boxhack.experiments import adversarial

    if args.jobs is not None and args.jobs < 1:
        raise BoxhackError(f"--jobs must be at least 1, got {args.jobs}")
    options = {}
    if args.n is not None:
        options["n"] = args.n
    if args.attacks:
        options["attacks"] = [a.strip() for a in args.attacks.split(",") if a.strip()]
    summary = adversarial.run(args.out, quick=args.quick, n_jobs=args.jobs,
                              scheduler=args.scheduler, seed=args.seed,
                              progress=not args.no_progress, models_root=args.models_root,
                              **options)  # fmt: skip
    table = summary["tables"][0]
    print(table["title"])
    print_table([dict(zip(table["columns"], row)) for row in table["rows"]])
    print(f"summary: {args.out}/{adversarial.NAME}/summary.json")
    return 0
