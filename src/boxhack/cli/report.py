"""``boxhack report RUN_DIR``: re-render a run's report from its JSONL rows alone (a thin layer
over :func:`boxhack.workflow.rebuild_report`)."""

from __future__ import annotations

import sys
from pathlib import Path

from boxhack.errors import BoxhackError


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="re-render RUN_DIR/report.html from the experiments' JSONL rows",
        description=(
            "Re-compute every experiment's tables and figures from RUN_DIR/<experiment>/"
            "rows.jsonl (summary.json and the PNGs are rewritten) and render the "
            "self-contained RUN_DIR/report.html. Only boxhack's own experiments are read; "
            "nothing found in RUN_DIR is ever imported or run (other sub-directories are "
            "listed as ignored)."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/paper")
    p.add_argument("--out", default=None,
                   help="where to write the HTML (default RUN_DIR/report.html)")
    p.add_argument("--no-summarise", action="store_true",
                   help="only render the summaries already on disk (do not recompute them)")
    p.add_argument("--png", "--open-png", dest="png", nargs="?", const="", default=None,
                   metavar="FILE",
                   help="also screenshot the report in headless Chromium to FILE (default: "
                        "next to the HTML) and check that every figure is displayed")
    p.set_defaults(handler=_report)


def _report(args) -> int:
    # imported here: keeps `boxhack --help` fast (torch, matplotlib)
    from boxhack.workflow import check_report, rebuild_report, render_report, unknown_experiments

    run_dir = Path(args.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise BoxhackError(f"RUN_DIR {run_dir} is a file; give a run directory")
    if not run_dir.is_dir():
        raise BoxhackError(f"run directory {run_dir} does not exist")
    errors: dict[str, str] = {}
    if args.no_summarise:
        report = render_report(run_dir, args.out)
    else:
        report, errors = rebuild_report(run_dir, out=args.out)
    print(report)
    for other in unknown_experiments(run_dir):
        print(f"boxhack: unknown experiment directory {other}: ignored", file=sys.stderr)
    status = 0
    for name, error in errors.items():
        print(f"boxhack: could not re-summarise {name}: {error}", file=sys.stderr)
        status = 1
    if args.png is not None:
        result = check_report(report, args.png or None)
        print(result["png"])
        for problem in result["problems"]:
            print(f"boxhack: report problem: {problem}", file=sys.stderr)
        if not result["ok"]:
            status = 1
    return status
