#!/usr/bin/env python3
"""Check a boxhack report as a person would see it: render it in headless Chromium.

    python scripts/check_report.py runs/demo/report.html [--png runs/demo/report.png]

Checks that every <img> is an embedded PNG that decodes, that the report holds as many figures
as the run's summaries list, that the browser decodes and displays every one of them, and that
neither the full-page screenshot nor any figure's region in it is blank. Prints the findings as
JSON and exits 0 when all is well, 1 otherwise (2 for bad usage or no Chromium).
Needs Debian's chromium (as root: apt-get install -y chromium); --no-browser skips that part.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from boxhack.errors import BoxhackError
from boxhack.report.browser import CHROMIUM_HINT, find_chromium
from boxhack.workflow import check_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="report.html (or its run directory)")
    parser.add_argument("--png", type=Path, default=None,
                        help="where to write the screenshot (default: next to the report)")
    parser.add_argument("--width", type=int, default=1400, help="window width in px (1400)")
    parser.add_argument("--no-browser", action="store_true",
                        help="only the static checks (no Chromium needed)")
    args = parser.parse_args(argv)

    report = args.report / "report.html" if args.report.is_dir() else args.report
    if not report.is_file():
        print(f"check_report: {report} not found", file=sys.stderr)
        return 2
    if not args.no_browser and find_chromium() is None:
        print(f"check_report: no Chromium found; {CHROMIUM_HINT}", file=sys.stderr)
        return 2
    try:
        result = check_report(report, args.png, width=args.width, browser=not args.no_browser)
    except BoxhackError as exc:
        print(f"check_report: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    if result["ok"]:
        print(f"check_report: OK: {result['images']} figures embedded and displayed"
              + (f"; screenshot {result['png']}" if result.get("png") else ""), file=sys.stderr)
        return 0
    for problem in result["problems"]:
        print(f"check_report: PROBLEM: {problem}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
