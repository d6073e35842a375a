"""``boxhack reproduce``: every experiment of the paper into one run directory and report (a
thin layer over :func:`boxhack.workflow.reproduction`)."""

from __future__ import annotations

import sys

from boxhack.cli.common import add_campaign_args
from boxhack.workflow.registry import names


def register(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="run every experiment of the paper and write a self-contained HTML report",
        description=(
            "Run the paper's experiments end to end on the embedded data (train the networks, "
            "fit the monitors, run every grid as a resumable campaign) and write "
            "OUT/report.html. Running again into the same OUT resumes. Experiments, in order: "
            + ", ".join(names()) + "."
        ),
    )
    p.add_argument("--out", default="runs/paper", help="run directory (default: runs/paper)")
    p.add_argument("--quick", action="store_true",
                   help="small grids that finish in a few minutes (the demo)")
    p.add_argument("--only", default=None, metavar="NAMES",
                   help="comma-separated subset, e.g. solvers,adversarial")
    add_campaign_args(p)
    p.set_defaults(handler=_reproduce)


def _reproduce(args) -> int:
    from boxhack.workflow import failed_experiments, reproduce, resolve_only  # fast --help

    if args.only is not None:
        resolve_only(args.only)  # a typo fails before anything runs
    report = reproduce(
        args.out, quick=args.quick, n_jobs=args.jobs, scheduler=args.scheduler,
        solve_timeout=args.solve_timeout, seed=args.seed, progress=not args.quiet,
        only=args.only,
    )
    print(report)
    failed = failed_experiments(args.out)
    if failed:
        for name, error in failed.items():
            print(f"boxhack: experiment {name} failed: {error}", file=sys.stderr)
        print(f"boxhack: {len(failed)} experiment(s) failed; the others' results are in "
              f"{report}", file=sys.stderr)
        return 1
    return 0
