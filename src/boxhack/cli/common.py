"""Small helpers shared by the CLI command modules."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from boxhack.errors import BoxhackError


# ------------------------------------------------------------------ checked numeric options
def _number(kind, text: str, *, minimum=None, above=None, maximum=None):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    if minimum is not None and value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
    if above is not None and value <= above:
        raise argparse.ArgumentTypeError(f"must be > {above}, got {text}")
    if maximum is not None and value > maximum:
        raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(int, text, minimum=1)


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0 (seeds, indices, classes)."""
    return _number(int, text, minimum=0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (learning rates, time limits)."""
    return _number(float, text, above=0)


def nonneg_float(text: str) -> float:
    """argparse type: a finite number >= 0 (tolerances, budgets)."""
    return _number(float, text, minimum=0)


def fraction(text: str) -> float:
    """argparse type: a finite number in [0, 1]."""
    return _number(float, text, minimum=0, maximum=1)


# ------------------------------------------------------------------ output paths
def check_output_file(path, what: str) -> Path:
    """Fail early, with one clear line, when output file ``path`` cannot be written: it is a
    directory, or its folder is a file, read-only or cannot be created."""
    from boxhack.infra.files import check_output_dir

    path = Path(path)
    if path.is_dir():
        raise BoxhackError(f"{what} {path} is a directory; give a file name")
    check_output_dir(path.parent if str(path.parent) else Path("."), what=f"{what} folder")
    if path.exists() and not path.is_file():
        raise BoxhackError(f"{what} {path} exists and is not a regular file")
    return path


def check_device(name: str) -> str:
    """A torch device this machine has, or a clear error."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise BoxhackError(f"--device {name!r} is not a torch device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BoxhackError(f"--device {name}: CUDA is not available on this machine; use cpu")
    if device.type not in ("cpu", "cuda"):
        raise BoxhackError(f"--device {name}: only cpu and cuda are supported")
    return name


# ------------------------------------------------------------------ model + monitor + data
def model_dataset(info: dict, model_arg: str):
    """The data set a boxhack model directory records (its test inputs are what is attacked)."""
    from boxhack.data import load_dataset

    name = info.get("dataset")
    if name is None:
        raise BoxhackError(
            f"{model_arg} does not record its data set, so there are no test inputs to attack; "
            f"use a boxhack model directory (see `boxhack train`)"
        )
    return load_dataset(name, info.get("classes"), data_dir=info.get("data_dir"),
                        split_seed=int(info.get("split_seed") or 0))  # fmt: skip


def load_attack_setup(args):
    """``(model, info, monitor, dataset)`` for an attack command: the model (``--model``,
    ``--weights``), its data set, and the monitor (``--monitor``), checked to have been
    fitted on this model (:func:`boxhack.monitor.check_compatible`)."""
    from boxhack.models.io import load_any_model
    from boxhack.monitor import check_compatible
    from boxhack.monitor.registry import load_monitor

    model, info = load_any_model(args.model, args.weights)
    model.eval()
    monitor = load_monitor(args.monitor)
    dataset = model_dataset(info, args.model)
    check_compatible(monitor, model, info, example=dataset.x_test[:1],
                     monitor_name=str(args.monitor), model_name=str(args.model))  # fmt: skip
    return model, info, monitor, dataset


START_STATES = {
    "dos": "correctly classified and accepted",
    "intrude": "rejected",
    "intrude-any": "rejected",
    "intrude-target": "rejected",
    "combined": "correctly classified",
    "misclassify": "correctly classified",
}


def start_mask(goal: str, pred, accepted, labels):
    """Test inputs an attack with ``goal`` may start from: Attack 1 (``dos``) from correctly
    classified and accepted ones, Attack 2 (``intrude*``) from rejected ones, adversarial
    goals (``combined``, ``misclassify``) from correctly classified ones."""
    import numpy as np

    pred, accepted, labels = np.asarray(pred), np.asarray(accepted, bool), np.asarray(labels)
    if goal == "dos":
        return (pred == labels) & accepted
    if goal.startswith("intrude"):
        return ~accepted
    return pred == labels


def select_inputs(model, monitor, dataset, goal: str, index, n, seed: int, default_n: int):
    """Test indices to attack: ``--index`` as given (range-checked), else a seeded,
    class-balanced sample of ``n`` (``default_n``) inputs the goal can start from
    (:func:`start_mask`, :func:`boxhack.data.sampling.sample_balanced`)."""
    import numpy as np

    from boxhack.data.sampling import sample_balanced

    n_test = len(dataset.y_test)
    if index is not None:
        bad = [i for i in index if not 0 <= i < n_test]
        if bad:
            raise BoxhackError(f"--index {bad[0]} is out of range: the test split has {n_test} inputs")
        return np.asarray(index, dtype=np.int64)
    want = default_n if n is None else n
    pred, acc = monitor.predict(model, dataset.x_test)
    mask = start_mask(goal, pred, acc, dataset.y_test)
    if not mask.any():
        raise BoxhackError(f"no test input is {START_STATES[goal]}: nothing to attack with "
                           f"goal {goal!r}")  # fmt: skip
    idx = sample_balanced(dataset.y_test, want, seed, mask=mask)
    if len(idx) < want:
        print(f"boxhack: note: only {len(idx)} test inputs are {START_STATES[goal]} "
              f"(goal {goal!r}); attacking those", file=sys.stderr)  # fmt: skip
    return idx


def save_attack_file(path, result, args, info: dict, budget=None) -> Path:
    """Write ``result`` exactly to ``path`` (``--save``): an attack record
    (:func:`boxhack.attacks.records.attack_record`) with the model directory and monitor file
    referenced by hash, paths relative to the saved file's folder when inside it."""
    from boxhack.attacks.records import attack_record, file_ref, save_attack
    from boxhack.models.io import META, WEIGHTS

    path = Path(path)
    model_dir = Path(args.model)
    if model_dir.name in (META, WEIGHTS):
        model_dir = model_dir.parent
    base = path.parent.resolve()
    record = attack_record(
        result, model=file_ref(model_dir, base=base, sha256=info["sha256"]),
        monitor=file_ref(args.monitor, base=base), budget=budget,
    )  # fmt: skip
    return save_attack(path, record)


def attacked_summary(result) -> dict:
    """Counts that keep a report honest: inputs given, attacked (eligible), already meeting
    the goal (not attacked), not eligible for another reason, verified successes."""
    n = len(result)
    attacked = int(result.eligible.sum())
    already = int(result.already.sum())
    return {"n": n, "attacked": attacked, "already": already,
            "not_eligible": n - attacked - already, "success": int(result.success.sum()),
            "success_rate": result.success_rate}  # fmt: skip


ALREADY_WORDS = {
    "dos": "already rejected", "intrude": "already accepted", "intrude-any": "already accepted",
    "intrude-target": "already accepted as the target", "combined":
    "already misclassified and accepted", "misclassify": "already misclassified",
}  # fmt: skip


def attacked_line(result) -> str:
    """``"3/5 verified attacks on attacked inputs (60%); not attacked: 2 already rejected"``:
    the success count over the inputs really attacked, with the others named apart."""
    s = attacked_summary(result)
    rate = "" if s["attacked"] == 0 else f" ({100 * s['success_rate']:.0f}%)"
    text = f"{s['success']}/{s['attacked']} verified attacks on attacked inputs{rate}"
    apart = []
    if s["already"]:
        apart.append(f"{s['already']} {ALREADY_WORDS.get(result.goal, 'already meeting the goal')}")
    if s["not_eligible"]:
        apart.append(f"{s['not_eligible']} misclassified at the start")
    if apart:
        text += f"; not attacked: {', '.join(apart)}"
    return text


def add_device_arg(parser) -> None:
    parser.add_argument(
        "--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)"
    )


def register_group(sub, name: str, help: str, description: str, prefix: str, members) -> None:
    """Add command group ``name`` whose sub-commands live in modules ``boxhack.cli.<prefix><m>``
    (each exposing ``register(subparsers)``); members whose module is absent are skipped."""
    import importlib

    p = sub.add_parser(name, help=help, description=description)
    group = p.add_subparsers(dest=f"{name}_command", metavar=name.upper())
    group.required = True
    for member in members:
        module_name = f"boxhack.cli.{prefix}{member}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(group)


def add_campaign_args(parser) -> None:
    """The options every experiment command shares: workers, Dask, seed, model cache, progress."""
    parser.add_argument("--jobs", type=positive_int, default=None,
                        help="local worker processes (default: all cores)")
    parser.add_argument("--scheduler", default=None,
                        help="Dask scheduler address, e.g. tcp://host:8786")
    parser.add_argument("--seed", type=nonneg_int, default=0)
    parser.add_argument("--models-root", default=None,
                        help="where networks and monitors are cached (default OUT/models)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_campaign_args(args) -> None:
    from boxhack.errors import BoxhackError

    if args.jobs is not None and args.jobs < 1:
        raise BoxhackError(f"--jobs must be at least 1, got {args.jobs}")
    if args.scheduler is not None:  # a malformed address: said before anything is trained
        from boxhack.infra.campaign import check_scheduler_address

        check_scheduler_address(args.scheduler)


def print_table(rows: list[dict], columns: list[str] | None = None, file=None) -> None:
    """Print a list of dicts as an aligned plain-text table."""
    file = sys.stdout if file is None else file
    if not rows:
        print("(no rows)", file=file)
        return
    columns = columns or list(rows[0])

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)), file=file)


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically (temp file, then rename)."""
    from boxhack.infra.files import atomic_write

    path = Path(path)
    return atomic_write(path, json.dumps(obj, indent=2, default=_default) + "\n")


def _default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
