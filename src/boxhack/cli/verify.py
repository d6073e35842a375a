"""``boxhack verify PATH``: re-check every stored attack success (a thin layer over
:func:`boxhack.experiments.recheck.verify_path`)."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="re-check every stored attack success of a run directory or a --save file",
        description=(
            "Re-check, with the exact model and monitor, every attack success stored in a run "
            "directory (every <experiment>/rows.jsonl, newest row per key) or in a file written "
            "by an attack command's --save. The model directory and monitor file each record "
            "names must still have the SHA-256 it recorded. Prints how many stored successes "
            "hold, per experiment, and lists those that do not, each with the first check it fails "
            "(input bounds, budget, eligibility, prediction, monitor decision). Also re-derives "
            "what the summaries and reports are built from: each row's recorded per-sample "
            "outcomes and norms of its stored attacks, and each summary.json from its rows; "
            "every disagreement is listed. Exit status: 0 all hold and nothing disagrees, 1 "
            "some do not hold or disagree, 2 bad input (missing or changed files, damaged "
            "records)."
        ),
    )
    p.add_argument("path", metavar="PATH", help="run directory or a file written by --save")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--model", default=None,
                   help="the model the attacks were made with, when it is Python code "
                        "(package.module:ClassName): boxhack never imports code a results file "
                        "names; its state hash must match the record's")
    p.add_argument("--weights", default=None, help="state-dict file for --model")
    p.set_defaults(handler=_handler)


def _where(summary, f: dict) -> str:
    if summary.kind == "run":
        return f"{f['experiment']} row {f['key']!r} record {f['record']} sample {f['sample']}"
    return f"{f['experiment']} sample {f['sample']}"


def _model_loader(args):
    """Loads models that are not boxhack directories; ``--model`` stands in for the one a
    record names as Python code."""
    from boxhack.workflow.target import load_model_ref

    def load(ref: dict, base):
        if args.model is not None and ref.get("kind") == "class":
            ref = {**ref, "path": args.model, "weights": args.weights}
            return load_model_ref(ref, None, allow_code=True)
        return load_model_ref(ref, base)

    return load


def _handler(args) -> int:
    from boxhack.workflow.verification import verify_run  # keeps --help fast (torch)

    summary = verify_run(args.path, model_loader=_model_loader(args))
    if args.json:
        json.dump(summary.to_dict(), sys.stdout, indent=2)
        print()
        return 0 if summary.ok else 1
    if summary.kind == "run":
        for name, c in summary.experiments.items():
            print(f"{name}: {c['claimed']} stored successes in {c['records']} records "
                  f"({c['samples']} inputs): {c['hold']} hold")  # fmt: skip
    print(f"{summary.claimed} stored successes re-checked: {summary.hold} hold")
    for f in summary.failures:
        print(f"FAILS: {_where(summary, f)}: goal {f['goal']}: {f['reason']}")
    if len(summary.failures) < summary.claimed - summary.hold:
        print(f"(only the first {len(summary.failures)} failures are listed)")
    if summary.kind == "run":
        print(f"recorded outcomes re-derived for {summary.linked} of {summary.records} records, "
              f"{summary.summaries} summaries re-derived from their rows: "
              f"{len(summary.disagreements)} disagreements")
    for d in summary.disagreements:
        where = d.get("file") or f"{d['experiment']} row {d['key']!r} record {d['record']}"
        sample = "" if d.get("sample") is None else f" sample {d['sample']}"
        print(f"DISAGREES: {where}: {d['field']}{sample}: recorded {d['recorded']!r}, "
              f"re-computed {d['recomputed']!r}")
    return 0 if summary.ok else 1
