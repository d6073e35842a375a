"""``boxhack experiment adversarial``: paper figure 8 (a thin layer over
:func:`boxhack.experiments.adversarial.run`)."""

from __future__ import annotations

from boxhack.cli.common import add_campaign_args, positive_int


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
    p.add_argument("--n", type=positive_int, default=None, help="number of test digits (default 100)")
    p.add_argument("--attacks", default=None,
                   help="comma-separated subset of attacks, e.g. fgsm,pgd-linf,hsj")
    add_campaign_args(p)
    p.set_defaults(handler=_handler)


def _handler(args) -> int:
    from boxhack.cli.common import check_campaign_args, print_table
    from boxhack.experiments import adversarial

    check_campaign_args(args)
    options = {}
    if args.n is not None:
        options["n"] = args.n
    if args.attacks:
        options["attacks"] = [a.strip() for a in args.attacks.split(",") if a.strip()]
    summary = adversarial.run(args.out, quick=args.quick, n_jobs=args.jobs,
                              scheduler=args.scheduler, seed=args.seed,
                              progress=not args.quiet, models_root=args.models_root,
                              **options)  # fmt: skip
    table = summary["tables"][0]
    print(table["title"])
    print_table([dict(zip(table["columns"], row)) for row in table["rows"]])
    print(f"summary: {args.out}/{adversarial.NAME}/summary.json")
    return 0
