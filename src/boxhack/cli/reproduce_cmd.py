"""``boxhack reproduce``: every experiment of the paper into one run directory and report."""

from __future__ import annotations

import sys

from boxhack.errors import BoxhackError


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def register(sub) -> None:
    from boxhack.experiments.registry import names

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
    p.add_argument("--jobs", type=_positive_int, default=None, metavar="N",
                   help="local worker processes (default: all usable cores)")
    p.add_argument("--scheduler", default=None, metavar="URL",
                   help="run the grids on a Dask cluster, e.g. tcp://HOST:8786 (workers must "
                        "see the run directory, e.g. on a shared file system)")
    p.add_argument("--solve-timeout", type=_seconds, default=None, metavar="S",
                   help="per-solve wall-clock safety net in seconds for the optimisation "
                        "experiments (solvers, combined); results come from evaluation budgets, "
                        "this only stops a solver stuck in C code (default: their own, stated "
                        "in the report)")
    p.add_argument("--only", default=None, metavar="NAMES",
                   help="comma-separated subset, e.g. solvers,adversarial")
    p.add_argument("--seed", type=int, default=0, help="seed for networks, monitors, samples (0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_reproduce)


def _reproduce(args) -> int:
    from boxhack.experiments.reproduce import failed_experiments, reproduce, resolve_only

    if args.only is not None:
        resolve_only(args.only)  # a typo fails before anything runs
    if args.seed < 0:
        raise BoxhackError(f"--seed must be >= 0, got {args.seed}")
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
