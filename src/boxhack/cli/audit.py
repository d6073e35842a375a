"""``boxhack audit``: how easily is my monitor fooled? A thin layer over
:func:`boxhack.workflow.audit.audit`."""

from __future__ import annotations

import json
import sys

from boxhack.cli.common import (
    add_device_arg,
    add_quiet_arg,
    add_target_args,
    comma_list,
    fraction,
    nonneg_float,
    nonneg_int,
    positive_int,
)
from boxhack.cli.monitor import ABSTRACTIONS, abstraction_arg


def register(sub) -> None:
    p = sub.add_parser(
        "audit",
        help="audit a model's monitor: acceptance, novelty, attacks; writes report.html",
        description=(
            "Audit a classifier (any model kind) and its abstraction-based monitor on a data "
            "set (any data kind). Fits a monitor when --monitor is not given (--abstraction, default box: k-means boxes "
            "per class by the elbow rule or --clusters, tolerance 0, correctly classified "
            "training inputs), then measures in one resumable campaign: accuracy; acceptance "
            "of correct and incorrect predictions; novelty detection (--novel-classes or the "
            ".npz's x_ood) with the graded score's AUROC; DoS and intrusion robustness "
            "curves (monitor-aware minimal-norm attacks, L2 and Linf); FGSM and PGD judged by "
            "monitors of clusters x tolerance; the combined attack. Writes OUT/report.html, "
            "OUT/summary.json and the attacks found, exactly (`boxhack verify OUT`). Run it "
            "again with the same options to resume."
        ),
    )
    add_target_args(p, monitor=False, novel=True)
    add_device_arg(p)
    p.add_argument("--monitor", default=None,
                   help="audit this monitor file (any abstraction) instead of fitting one")
    p.add_argument("--layer", type=comma_list(), action="extend", default=None,
                   metavar="NAME[,NAME...]",
                   help="layer(s) to monitor (see `boxhack monitor layers --model ...`)")
    p.add_argument("--out", required=True, metavar="DIR", help="audit directory")
    k = p.add_mutually_exclusive_group()
    k.add_argument("--clusters", type=positive_int, default=None,
                   help="boxes per class (default: the elbow rule)")
    k.add_argument("--threshold", type=fraction, default=0.07,
                   help="elbow-rule threshold on the relative inertia drop (default 0.07)")
    p.add_argument("--max-clusters", type=positive_int, default=10,
                   help="cap of the elbow rule (default 10)")
    p.add_argument("--tolerance", type=nonneg_float, default=0.0,
                   help="relative tolerance of the fitted monitor (default 0)")
    p.add_argument("--abstraction", type=abstraction_arg, default="box", metavar="NAME",
                   help=f"abstraction of the fitted monitor: {', '.join(ABSTRACTIONS)} (default "
                        f"box), or several joined by '+' (a composite); the figure-8 sweep "
                        f"judges with boxes")
    p.add_argument("--gamma", type=nonneg_int, default=None,
                   help="pattern abstraction: accepted Hamming distance (default its own, 0)")
    p.add_argument("--n", type=nonneg_int, default=100,
                   help="inputs per robustness measure and per adversarial attack (default 100;"
                        " 0: skip them)")
    p.add_argument("--n-combined", type=nonneg_int, default=50,
                   help="inputs of the combined attack (default 50; 0: skip it)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="gradient steps per input of the robustness attacks (default: the "
                        "attack's, 50)")
    p.add_argument("--eps-l2", type=comma_list(float), default=None, metavar="E[,E...]",
                   help="L2 budgets in input units (default 0.5,1,2,3 for inputs in [0, 1], times "
                        "hi - lo for other --bounds)")
    p.add_argument("--eps-linf", type=comma_list(float), default=None, metavar="E[,E...]",
                   help="Linf budgets in input units (default 0.05,0.1,0.2,0.3 for inputs in [0, 1], "
                        "times hi - lo for other --bounds)")
    p.add_argument("--attacks", type=comma_list(), default=None, metavar="NAME[,NAME...]",
                   help="Foolbox attacks judged by the monitors (default fgsm,pgd-linf)")
    p.add_argument("--sweep-clusters", type=comma_list(int), default=None, metavar="K[,K...]",
                   help="boxes per class of the judging monitors (default 1,2,3)")
    p.add_argument("--sweep-tolerances", type=comma_list(float), default=None,
                   metavar="T[,T...]", help="tolerances of the judging monitors "
                                            "(default 0,0.1,0.25)")
    p.add_argument("--hull-lps", type=nonneg_int, default=1000, metavar="N",
                   help="convex-hull monitor: LPs one attack measure may solve (default "
                        "1000): inputs are attacked 5 at a time until it is spent, the rest "
                        "are not attacked; the summary records the LPs and the inputs reached")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of samples and attacks")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_quiet_arg(p)
    p.set_defaults(handler=_handler)


def _handler(args) -> int:
    from boxhack.workflow.audit import AuditSettings, audit  # keeps --help fast (torch)

    given = {"eps_l2": args.eps_l2, "eps_linf": args.eps_linf, "attacks": args.attacks,
             "sweep_clusters": args.sweep_clusters, "sweep_tolerances": args.sweep_tolerances}
    settings = AuditSettings(
        n=args.n, n_combined=args.n_combined, clusters=args.clusters,
        threshold=args.threshold, max_clusters=args.max_clusters, tolerance=args.tolerance,
        abstraction=args.abstraction, gamma=args.gamma,
        steps=args.steps, seed=args.seed, hull_lps=args.hull_lps,
        **{k: tuple(v) for k, v in given.items() if v is not None},
    )  # fmt: skip
    summary = audit(args.model, args.data, args.layer, args.out, monitor=args.monitor,
                    weights=args.weights, classes=args.classes,
                    novel_classes=args.novel_classes, data_dir=args.data_dir,
                    split_seed=args.split_seed, device=args.device, settings=settings,
                    progress=not args.quiet, model_args=args.model_args, bounds=args.bounds,
                    preprocessing=args.preprocessing)  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        for line in summary["headline"]:
            print(line)
        for name, err in summary["errors"].items():
            print(f"measure {name} failed: {err}", file=sys.stderr)
    again = f"boxhack verify {args.out}"
    if summary["config"].get("model_kind") == "class":  # Python code is named, never recorded
        again += f" --model {args.model}" + (f" --weights {args.weights}" if args.weights else "")
    print(f"wrote {args.out}/report.html, {args.out}/summary.json; re-check the stored attacks "
          f"with `{again}`", file=sys.stderr)  # fmt: skip
    return 1 if summary["errors"] else 0
