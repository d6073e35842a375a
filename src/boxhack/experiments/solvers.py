"""Experiment ``solvers``: the paper's optimisation-solver comparison (figures 5, 6 and 7).

Grid: 4 solvers (SLSQP, COBYLA, SHGO, DE) x 4 problems ({Attack 1, Attack 2} x {L1, L2}) x
4 networks (XOR circuit, tanh circuit, MNIST 0-1, MNIST 0-2) x 2 constraint encodings
(``margin``, ``indicator``) x 20 starting points each; every solve is one campaign job (one
JSONL row), run in a sandbox process.

Budgets, not clocks: every solve's outcome is decided by its evaluation and iteration budget
(:data:`BUDGETS`, per problem class, written into the config and into every row), so the same
command gives the same rows on a quiet and on a busy machine, uninterrupted or killed and
resumed (timing fields aside; ``scripts/diff-rows`` compares two runs). A wall-clock safety net
per class (:data:`SAFETY_NET_S`, 20 times the longest normal solve measured for the class, or
more) only kills a solve stuck in C code; such a ``timeout`` is reported, never hidden.

Starting points (the same ones for every solver, norm and encoding, so comparisons are
paired), drawn with a seeded generator:

- Attack 1 (``dos``): random test inputs the monitor accepts and the network classifies
  correctly (the attack's definition).
- Attack 2 (``intrude``): inputs the monitor rejects. On the toys hardly any test point is
  rejected (their monitors accept > 99% of the test set), so random points of [0, 1]^2 that the
  monitor rejects are used. On MNIST: random digits of the full 10-class MNIST test split that
  the monitor rejects; most of them are digits of classes the network never saw (the
  intruder of the paper's story), the rest misfits of its own classes.

Search spaces: the toys are solved in their 2-D input space; on MNIST the local solvers work
on the raw 784 pixels as in the paper, while SHGO and DE search ``pca:8`` (the top 8 principal
components of the training digits, around x0): SHGO's triangulation is infeasible beyond ~10
dimensions (see docs/reproduction.md) and DE's population grows with the dimension.

Every row stores its attack exactly (:func:`boxhack.attacks.records.attack_record`: float32
``x0`` and ``x``, the model directory and monitor file with their hashes, paths relative to the
run directory), so ``boxhack verify RUN_DIR`` re-checks every stored success.

Figure 6 adds SHGO Attack 1 (L1) on one accepted digit per class of the 10-class network
(``mnist2`` in quick mode); figure 7 projects the monitored layer of SHGO L1 attacks (before ->
after) with the monitor's boxes. Declared as :data:`EXPERIMENT`; the figures and sentences are
:mod:`boxhack.report.solvers`.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from boxhack.attacks.optimisation import optimise_attack
from boxhack.attacks.records import OUTCOMES, attack_record, file_ref
from boxhack.data import load_dataset
from boxhack.errors import BoxhackError
from boxhack.experiments.prepared import monitor_path, prepare_monitor
from boxhack.experiments.spec import Experiment, Option, RunContext, Settings
from boxhack.infra.arrays import encode_array
from boxhack.infra.campaign import Job
from boxhack.models.layers import collect

NAME = "solvers"
TITLE = "Optimisation solvers, images and projections (paper figures 5-7)"

NETWORKS = ("xor", "tanh", "mnist2", "mnist3")
TOYS = ("xor", "tanh")
PROBLEMS = (("dos", "l1"), ("dos", "l2"), ("intrude", "l1"), ("intrude", "l2"))
PROBLEM_NAMES = {
    ("dos", "l1"): "Attack 1, L1",
    ("dos", "l2"): "Attack 1, L2",
    ("intrude", "l1"): "Attack 2, L1",
    ("intrude", "l2"): "Attack 2, L2",
}
SOLVER_ORDER = ("slsqp", "cobyla", "shgo", "de")
ENCODING_ORDER = ("margin", "indicator")
FIG6_NETWORK = "mnist10"
MNIST_GLOBAL_SPACE = "pca:8"
MEMORY_LIMIT_MB = 3072

# Budgets per problem class (see budget_class): ``max_evals`` (points evaluated) and the
# solver's own limits (``solver_options``, on top of boxhack.attacks.optimisation's
# solver_settings); ``max_samples`` caps the starting points of a class whose smallest useful
# budget is expensive. Chosen from measured run times so that the full grid takes about as long
# as the old wall-clock caps did (~15 min on 2 cores); the measurements are in
# docs/reproduction.md.
BUDGETS: dict[str, dict[str, Any]] = {
    # toys: every solver ends by itself well within its own default limits
    "toy": {"max_evals": 50_000, "solver_options": {}},
    # raw MNIST pixels, L2: SLSQP iterations (~0.35 s each; 785 evaluations per
    # finite-difference gradient with the indicator encoding)
    "mnist-slsqp-l2": {"max_evals": 2_000, "solver_options": {"maxiter": 3}},
    # raw MNIST pixels, L1 with 1,568 auxiliary-variable SLSQP variables: one iteration
    # (~12 s of CPU) is the smallest budget that does anything, so fewer starting points
    "mnist-slsqp-l1": {"max_evals": 4_000, "solver_options": {"maxiter": 1}, "max_samples": 2},
    # the same with indicators: the finite-difference gradient alone takes 1,569 evaluations
    # and the first step ~70 s of CPU; the budget stops it inside that gradient
    "mnist-slsqp-l1-indicator": {"max_evals": 1_000, "solver_options": {"maxiter": 1},
                                 "max_samples": 2},
    # COBYLA on raw pixels: 60 evaluations (its first model alone needs n + 1 = 785 or 1,569)
    "mnist-cobyla": {"max_evals": 60, "solver_options": {}},
    # pca:8: SHGO's default sampling for 8 variables (257 simplicial vertices), 5 local SLSQP
    "mnist-shgo": {"max_evals": 20_000, "solver_options": {}},
    # pca:8: DE generations of 15 x 8 = 120 points
    "mnist-de": {"max_evals": 20_000, "solver_options": {"maxiter": 100}},
    # figure 6: SHGO L1 in pca:8 on the 10-class network
    "fig6": {"max_evals": 20_000, "solver_options": {}},
}
QUICK_BUDGETS: dict[str, dict[str, Any]] = {"mnist-slsqp-l1": {"max_samples": 1},
                                             "mnist-slsqp-l1-indicator": {"max_samples": 1}}

# Safety nets per class (seconds of wall clock from the solve's real start): at least 20 x the
# longest normal solve measured for the class on a quiet machine (docs/reproduction.md).
SAFETY_NET_S: dict[str, float] = {
    "toy": 60.0,
    "mnist-slsqp-l2": 60.0,
    "mnist-slsqp-l1": 600.0,
    "mnist-slsqp-l1-indicator": 120.0,
    "mnist-cobyla": 60.0,
    "mnist-shgo": 300.0,
    "mnist-de": 120.0,
    "fig6": 120.0,
}
_BUDGET_KEYS = ("max_evals", "solver_options", "max_samples")

_CACHE: dict[tuple, Any] = {}  # per worker process: loaded networks, monitors, data sets



# ============================================================================================
# Grid construction (parent process).


def _rng(seed: int, *parts: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(p.encode()) for p in parts)])


def _mnist_all():
    key = ("mnist-all",)
    if key not in _CACHE:
        _CACHE[key] = load_dataset("mnist", "0-9")
    return _CACHE[key]


def _load(network: str, models_root: str):
    key = ("net", str(models_root), network)
    if key not in _CACHE:
        model, monitor, info, dataset = prepare_monitor(network, models_root)
        model.eval()
        _CACHE[key] = (model, monitor, info, dataset)
    return _CACHE[key]


def starting_points(network: str, models_root: str, n: int, seed: int) -> dict[str, list]:
    """The ``n`` starting points of each attack: ``{"dos": [...], "intrude": [...]}``, each
    entry a JSON-able reference ``["test", i]``, ``["mnist-all", i]`` or ``["point", [x, y]]``.

    Attack 1 starts from test inputs that are accepted *and* correctly classified; Attack 2
    from inputs the monitor rejects."""
    model, monitor, _, dataset = _load(network, models_root)
    pred, acc = monitor.predict(model, dataset.x_test)
    rng = _rng(seed, network, "dos")
    ok = np.flatnonzero(acc & (np.asarray(pred) == dataset.y_test))
    if len(ok) < n:
        raise BoxhackError(f"{network}: only {len(ok)} accepted, correctly classified test "
                           f"inputs, need {n}")  # fmt: skip
    dos = [["test", int(i)] for i in np.sort(rng.choice(ok, n, replace=False))]
    rng = _rng(seed, network, "intrude")
    if network in TOYS:
        points: list[np.ndarray] = []
        for _ in range(100):
            u = rng.uniform(0.0, 1.0, size=(4096, 2)).astype(np.float32)
            _, a = monitor.predict(model, u)
            points.extend(u[~a])
            if len(points) >= n:
                break
        if len(points) < n:
            raise BoxhackError(f"{network}: the monitor rejects almost no point of [0, 1]^2")
        intrude = [["point", [float(v) for v in p]] for p in points[:n]]
    else:
        full = _mnist_all()
        _, a = monitor.predict(model, full.x_test)
        rejected = np.flatnonzero(~a)
        if len(rejected) < n:
            raise BoxhackError(f"{network}: only {len(rejected)} rejected MNIST test digits")
        intrude = [["mnist-all", int(i)] for i in np.sort(rng.choice(rejected, n, replace=False))]
    return {"dos": dos, "intrude": intrude}


def _x0_of(ref, dataset) -> tuple[np.ndarray, int | None]:
    """The input a starting-point reference names, and its true label (None if unknown)."""
    kind, value = ref
    if kind == "test":
        return dataset.x_test[int(value)], int(dataset.y_test[int(value)])
    if kind == "point":
        return np.asarray(value, dtype=np.float32), None
    if kind == "mnist-all":
        full = _mnist_all()
        digit = int(full.classes[int(full.y_test[int(value)])])
        label = dataset.classes.index(digit) if digit in dataset.classes else None
        return full.x_test[int(value)], label
    raise BoxhackError(f"unknown starting-point reference {ref!r}")


def budget_class(network: str, solver: str, norm: str, encoding: str = "margin",
                 part: str = "grid") -> str:  # fmt: skip
    """The problem class whose budget a solve gets (a key of :data:`BUDGETS`)."""
    if part == "fig6":
        return "fig6"
    if network in TOYS:
        return "toy"
    if solver == "slsqp":
        return f"mnist-slsqp-{norm}" + ("-indicator" if norm == "l1" and encoding == "indicator"
                                        else "")  # fmt: skip
    return f"mnist-{solver}"


def _budgets(quick: bool, overrides: dict | None) -> dict[str, dict]:
    """:data:`BUDGETS` (with :data:`QUICK_BUDGETS` in quick mode), then ``overrides``
    (``{class: {"max_evals": .., "solver_options": {..}, "max_samples": ..}}``)."""
    out = {k: {**v, "solver_options": dict(v["solver_options"])} for k, v in BUDGETS.items()}
    if overrides is not None and not isinstance(overrides, dict):
        raise BoxhackError(f"budgets: give {{class: {{key: value}}}} with classes among "
                           f"{', '.join(out)}, got {overrides!r}")
    for layer in ((QUICK_BUDGETS if quick else {}), overrides or {}):
        for cls, change in layer.items():
            if cls not in out:
                raise BoxhackError(f"unknown budget class {cls!r}; classes are {', '.join(out)}")
            if not isinstance(change, dict) or set(change) - set(_BUDGET_KEYS):
                raise BoxhackError(f"budget {cls!r}: give a dict with keys among {_BUDGET_KEYS}")
            for key in ("max_evals", "max_samples"):
                v = change.get(key)
                if v is not None and not (isinstance(v, int) and v >= 1):
                    raise BoxhackError(f"budget {cls!r}: {key} must be a positive integer")
            out[cls] = {**out[cls], **change}
    return out


def _safety_nets(solve_timeout: float | None) -> dict[str, float]:
    """Per-class safety nets; ``solve_timeout`` replaces every one of them."""
    if solve_timeout is None:
        return dict(SAFETY_NET_S)
    if not (isinstance(solve_timeout, (int, float)) and 0 < solve_timeout < float("inf")):
        raise BoxhackError(f"solve_timeout must be a positive number of seconds, got {solve_timeout!r}")
    return {k: float(solve_timeout) for k in SAFETY_NET_S}


def _space(network: str, solver: str) -> str:
    if network in TOYS or solver in ("slsqp", "cobyla"):
        return "input"
    return MNIST_GLOBAL_SPACE


def _budget_tag(cls: str, budget: dict) -> str:
    """A short stable name of a budget for job keys: a changed budget is a new job."""
    text = json.dumps({k: budget.get(k) for k in ("max_evals", "solver_options")}, sort_keys=True)
    return f"{cls}-{zlib.crc32(text.encode()):08x}"


def _grid_job(config: dict, refs: dict, part: str, network: str, goal: str, norm: str, solver: str,
         encoding: str, space: str, s: int, ref) -> Any:  # fmt: skip
    cls = budget_class(network, solver, norm, encoding, part)
    budget = config["budgets"][cls]
    prefix = f"{NAME}/fig6" if part == "fig6" else NAME
    key = f"{prefix}/{network}/{goal}/{norm}/{solver}/{encoding}/{space}/{_budget_tag(cls, budget)}/{s}"
    return Job(key, {
        "part": part, "network": network, "goal": goal, "norm": norm, "solver": solver,
        "encoding": encoding, "space": space, "sample": s, "ref": ref,
        "budget_class": cls, "max_evals": budget["max_evals"],
        "solver_options": budget["solver_options"],
        "safety_net_s": config["safety_net_s"][cls],
        "models_root": config["models_root"], "seed": config["seed"],
        "model_ref": refs[network]["model"], "monitor_ref": refs[network]["monitor"],
    })  # fmt: skip


def build_jobs(config: dict, pools: dict, refs: dict) -> list:
    """Every solve of the grid (and of figure 6) as a campaign job."""
    jobs = []
    for network in config["networks"]:
        for goal, norm in PROBLEMS:
            for solver in config["solvers"]:
                for encoding in config["encodings"]:
                    budget = config["budgets"][budget_class(network, solver, norm, encoding)]
                    n = min(len(pools[network][goal]), budget.get("max_samples") or 10**9)
                    for s, ref in enumerate(pools[network][goal][:n]):
                        jobs.append(_grid_job(config, refs, "grid", network, goal, norm, solver,
                                         encoding, _space(network, solver), s, ref))  # fmt: skip
    fig6 = config["fig6"]
    for s, ref in enumerate(pools.get("fig6", [])):
        jobs.append(_grid_job(config, refs, "fig6", fig6["network"], "dos", fig6["norm"],
                         fig6["solver"], "margin", fig6["space"], s, ref))  # fmt: skip
    return jobs


def _fig6_pool(network: str, models_root: str, n: int) -> list:
    """One accepted, correctly classified test digit per class (the first of each), n in all."""
    model, monitor, _, dataset = _load(network, models_root)
    pred, acc = monitor.predict(model, dataset.x_test)
    ok = acc & (pred == dataset.y_test)
    refs = []
    for c in range(dataset.n_classes):
        idx = np.flatnonzero(ok & (dataset.y_test == c))
        if len(idx):
            refs.append(["test", int(idx[0])])
        if len(refs) >= n:
            break
    return refs


def _file_refs(network: str, models_root: str, run_dir) -> dict:
    """References (path relative to the run directory when inside it, and hash) of the model
    directory and monitor file a network's attacks are checked against."""
    _, _, info, _ = _load(network, models_root)
    model_dir = Path(models_root) / "models" / network
    monitor_file = monitor_path(models_root, network, 1, 0.0, info["default_layer"])
    return {
        "model": file_ref(model_dir, base=run_dir, sha256=info["sha256"]),
        "monitor": file_ref(monitor_file, base=run_dir),
    }



# ============================================================================================
# Configuration and plan (parent process).


def _subset(what: str, values, allowed) -> list:
    values = list(values or allowed)
    for v in values:
        if v not in allowed:
            raise BoxhackError(f"unknown {what} {v!r}; choose from {', '.join(allowed)}")
    return values


def make_config(
    *,
    quick: bool = False,
    seed: int = 0,
    solve_timeout: float | None = None,
    n_samples: int | None = None,
    networks=None,
    solvers=None,
    encodings=None,
    n_fig6: int | None = None,
    budgets: dict | None = None,
) -> dict:
    """The experiment's settings (written to config.json; :func:`plan` adds where the models
    are, the starting points and the job keys)."""
    networks = _subset("network", networks or (("xor", "mnist2") if quick else None), NETWORKS)
    solvers = _subset("solver", solvers, SOLVER_ORDER)
    encodings = _subset("encoding", encodings, ENCODING_ORDER)
    n = int(n_samples if n_samples is not None else (2 if quick else 20))
    if n < 1:
        raise BoxhackError(f"n_samples must be >= 1, got {n}")
    fig6_net = "mnist2" if quick else FIG6_NETWORK
    if n_fig6 is None:  # figure 6 only when the grid has MNIST networks
        n_fig6 = (2 if quick else 10) if any(net not in TOYS for net in networks) else 0
    if isinstance(n_fig6, bool) or not isinstance(n_fig6, int) or n_fig6 < 0:
        raise BoxhackError(f"n_fig6 must be an integer >= 0, got {n_fig6!r}")
    return {
        "quick": bool(quick),
        "seed": int(seed),
        "networks": networks,
        "solvers": solvers,
        "encodings": encodings,
        "n_samples": n,
        "budgets": _budgets(quick, budgets),
        "safety_net_s": _safety_nets(solve_timeout),
        "memory_limit_mb": MEMORY_LIMIT_MB,
        "mnist_global_space": MNIST_GLOBAL_SPACE,
        "fig6": {"network": fig6_net, "solver": "shgo", "norm": "l1",
                 "space": MNIST_GLOBAL_SPACE, "n": int(n_fig6)},
    }  # fmt: skip


def configure(settings: Settings, options: Mapping[str, Any]) -> dict:
    return make_config(
        quick=settings.quick, seed=settings.seed, solve_timeout=settings.solve_timeout,
        n_samples=options["n"], networks=options["networks"], solvers=options["solvers"],
        encodings=options["encodings"], n_fig6=options["n_fig6"], budgets=options["budgets"],
    )  # fmt: skip


def _relative_root(models_root, out_dir) -> str:
    """``models_root`` relative to the run directory when it lies inside it (job parameters
    then hold no absolute path of ``--out``)."""
    root = Path(models_root).resolve()
    try:
        return str(root.relative_to(Path(out_dir).resolve()))
    except ValueError:
        return str(root)


def _models_root(params: Mapping[str, Any], run_dir) -> str:
    root = Path(params["models_root"])
    return str(root if root.is_absolute() or run_dir is None else Path(run_dir) / root)


def plan(config: dict, ctx: RunContext) -> tuple[dict, list[Job]]:
    """Train the networks and fit their monitors (cached), draw the starting points (stored in
    the config as ``pools``), and build every solve as a job."""
    config = {**config, "models_root": _relative_root(ctx.models_root, ctx.out_dir)}
    root = _models_root(config, ctx.out_dir)
    pools: dict[str, Any] = {}
    refs: dict[str, Any] = {}
    for network in config["networks"]:
        prepare_monitor(network, root)
        pools[network] = starting_points(network, root, config["n_samples"], config["seed"])
        refs[network] = _file_refs(network, root, ctx.out_dir)
    if config["fig6"]["n"] > 0:
        net = config["fig6"]["network"]
        prepare_monitor(net, root)
        pools["fig6"] = _fig6_pool(net, root, config["fig6"]["n"])
        refs[net] = _file_refs(net, root, ctx.out_dir)
    jobs = build_jobs(config, pools, refs)
    return {**config, "pools": pools}, jobs


# ============================================================================================
# The job (runs in campaign workers).


def job(params: dict, run_dir=None) -> dict:
    """One solve: load the cached network and monitor, attack one x0, return a JSON row.

    ``run_dir``: the run directory (``models_root`` in the parameters is relative to it when
    the models live inside it, so that parameters hold no absolute path of ``--out``)."""
    model, monitor, _, dataset = _load(params["network"], _models_root(params, run_dir))
    x0, label = _x0_of(params["ref"], dataset)
    kind = params["space"].split(":")[0]
    # Attack 1 is defined from correctly classified inputs: with the label, verify checks it
    labels = [label] if params["goal"] == "dos" and label is not None else None
    result = optimise_attack(
        model, monitor, x0[None],
        goal=params["goal"], norm=params["norm"], solver=params["solver"],
        encoding=params["encoding"], space=params["space"], labels=labels,
        time_limit=params["safety_net_s"], memory_limit_mb=MEMORY_LIMIT_MB,
        max_evals=params["max_evals"], solver_options=params["solver_options"], n_jobs=1,
        seed=int(params["seed"]) + int(params["sample"]),
        train_inputs=dataset.x_train if kind == "pca" else None,
        input_shape=dataset.input_shape,
    )  # fmt: skip
    info = result.info
    layer = monitor.layers_[0]
    _, feats = collect(model, [layer], np.concatenate([result.x0, result.x]))
    return {
        **{k: params[k] for k in ("part", "network", "goal", "norm", "solver", "encoding",
                                  "space", "sample", "budget_class", "safety_net_s")},
        "budget": info["budget"],
        **result.rows()[0],
        "true_label": label,
        "outcome": info["outcome"][0],
        "stopped_by": info["stopped_by"][0],
        "message": info["message"][0][:300],
        "nfev": info["nfev"][0],
        "nit": info["nit"][0],
        "solve_s": info["wall_s"][0],
        "layer": layer,
        "feat0": encode_array(np.asarray(feats[layer][0], np.float32)),
        "feat": encode_array(np.asarray(feats[layer][1], np.float32)),
        "input_shape": list(dataset.input_shape),
        "attacks": [attack_record(result, model=params["model_ref"], monitor=params["monitor_ref"],
                                  outcomes={k: k for k in OUTCOMES})],
    }


# ============================================================================================
# Summary data: tables and the numbers the report's sentences state.

Cell = tuple[str, str, str, str, str]  # network, goal, norm, solver, encoding


def count_cells(grid: list[dict], err_rows: list[dict]) -> dict[Cell, list[int]]:
    """Per cell ``[successes, attacked, not attacked]``: successes over the inputs really
    attacked (eligible); inputs not attacked (already in the goal's end state, or for Attack 1
    misclassified) apart; a job that crashed counts as attacked without success."""
    counts: dict[Cell, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in grid:
        c = counts[(r["network"], r["goal"], r["norm"], r["solver"], r["encoding"])]
        if r.get("eligible", True):
            c[0] += int(bool(r["success"]))
            c[1] += 1
        else:
            c[2] += 1
    for r in err_rows:
        p = r.get("params", {})
        if p.get("part") == "grid":
            counts[(p["network"], p["goal"], p["norm"], p["solver"], p["encoding"])][1] += 1
    return counts


def budget_spent(r: dict) -> bool:
    """Did this solve end because its budget ran out (rather than by the solver's own test)?"""
    if r.get("stopped_by") == "eval-limit":
        return True
    maxiter = (r.get("budget") or {}).get("solver", {}).get("maxiter")
    if maxiter is None or r.get("stopped_by") != "solver":
        return False
    used = r["nfev"] if r["solver"] == "cobyla" else r["nit"]
    return used >= maxiter


def _median(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.median(vals)) if vals else None


def _top_message(rows: list[dict]) -> tuple[str, int]:
    """The most common first sentence of the solvers' messages, and how often."""
    msgs = Counter(r.get("message", "").split(". ")[0][:60] for r in rows)
    return msgs.most_common(1)[0] if msgs else ("-", 0)


def _select(grid, **match) -> list[dict]:
    def keep(r):
        return all(r.get(key) in (value if isinstance(value, (list, tuple, set)) else (value,))
                   for key, value in match.items())  # fmt: skip

    return [r for r in grid if keep(r)]


def few_samples(config: dict) -> list[list]:
    """``[[budget class, starting points]]`` of the classes that ran on fewer starting points."""
    return [[cls, b["max_samples"]] for cls, b in config["budgets"].items()
            if b.get("max_samples") and b["max_samples"] < config["n_samples"]]  # fmt: skip


def _samples_note(config: dict) -> str:
    return "".join(f"; {cls}: {k}" for cls, k in few_samples(config))


def _rate_cell(c) -> str:
    succ, total, skipped = c
    if not total and not skipped:
        return "-"
    return f"{succ}/{total}" + (f" (+{skipped} not attacked)" if skipped else "")


def _tables(config: dict, grid: list[dict], counts) -> list[dict]:
    tables = []
    for enc in config["encodings"]:
        trows = []
        for net in config["networks"]:
            for goal, norm in PROBLEMS:
                cells = [_rate_cell(counts[(net, goal, norm, s, enc)]) for s in config["solvers"]]
                trows.append([net, PROBLEM_NAMES[(goal, norm)], *cells])
        tables.append({
            "title": f"Successful attacks out of the attacked starting points ({enc} "
                     f"encoding; figure 5); {config['n_samples']} per cell"
                     f"{_samples_note(config)}",
            "columns": ["network", "problem", *config["solvers"]],
            "rows": trows,
        })  # fmt: skip
    by_sn: dict[tuple, list[dict]] = defaultdict(list)
    for r in grid:
        by_sn[(r["network"], r["solver"], r["encoding"])].append(r)
    stats_rows = [_stats_row(net, enc, s, by_sn[(net, s, enc)])
                  for net in config["networks"] for enc in config["encodings"]
                  for s in config["solvers"] if by_sn.get((net, s, enc))]  # fmt: skip
    tables.append({
        "title": "Per solver and network: successes over attacked inputs, median L2 / Linf of "
                 "successful attacks, median solve time (s) and evaluations, solves that spent "
                 "their budget, safety-net timeouts / out-of-memory / errors, most common "
                 "solver message",
        "columns": ["network", "encoding", "solver", "success", "median L2", "median Linf",
                    "median s", "median nfev", "budget spent", "timeouts", "oom", "errors",
                    "top message"],
        "rows": stats_rows,
    })  # fmt: skip
    return tables


def _stats_row(net: str, enc: str, solver: str, rs: list[dict]) -> list:
    attacked = [r for r in rs if r.get("eligible", True)]
    succ = [r for r in attacked if r["success"]]
    outc = Counter(r["outcome"] for r in rs)
    text, n = _top_message(rs)
    return [
        net, enc, solver, f"{len(succ)}/{len(attacked)}",
        _median([r["l2"] for r in succ]), _median([r["linf"] for r in succ]),
        _median([r["solve_s"] for r in rs]), _median([r["nfev"] for r in rs]),
        sum(budget_spent(r) for r in rs), outc.get("timeout", 0),
        outc.get("out-of-memory", 0), outc.get("error", 0), f"{text} ({n}x)",
    ]  # fmt: skip


def _local_facts(grid: list[dict], mnist: list[str]) -> dict[str, Any]:
    """The local solvers on MNIST: how many solves spent their budget; budget and median
    solve time per solver and norm."""
    local = [s for s in ("slsqp", "cobyla") if any(r["solver"] == s for r in grid)]
    rs = _select(grid, network=mnist, solver=local)
    costs = []
    for s in local:
        for norm in ("l2", "l1"):
            sel = _select(rs, solver=s, norm=norm)
            if sel:
                costs.append({"solver": s, "norm": norm, "budget": sel[0]["budget"],
                              "median_solve_s": _median([r["solve_s"] for r in sel])})
    return {"solves": len(rs), "budget_spent": sum(budget_spent(r) for r in rs), "costs": costs}


def _indicator_facts(grid: list[dict], toys: list[str]) -> dict[str, Any]:
    ind = _select(grid, solver="slsqp", encoding="indicator")
    top, n_top = _top_message(ind)
    toy_margin = _select(grid, solver="slsqp", encoding="margin", network=toys)
    return {"solves": len(ind), "successes": sum(r["success"] for r in ind),
            "top_message": top, "top_count": n_top,
            "toy_margin_successes": sum(r["success"] for r in toy_margin)}  # fmt: skip


def _facts(config: dict, grid: list[dict], fig6_rows: list[dict]) -> dict[str, Any]:
    """The numbers behind the paper comparison (:mod:`boxhack.report.solvers` words them)."""
    mnist = [n for n in config["networks"] if n not in TOYS]
    toys = [n for n in config["networks"] if n in TOYS]
    enc0 = config["encodings"][0]
    medians = {}
    for s in (s for s in ("shgo", "de") if s in config["solvers"]):
        rs = _select(grid, network=mnist, solver=s, encoding=enc0, success=True)
        medians[s] = {"l2": _median([r["l2"] for r in rs]),
                      "linf": _median([r["linf"] for r in rs])}  # fmt: skip
    attacked = [r for r in fig6_rows if r.get("eligible", True)]
    return {
        "local": _local_facts(grid, mnist),
        "indicator": _indicator_facts(grid, toys),
        "global_medians": medians,
        "fig6": {"rows": len(fig6_rows), "attacked": len(attacked),
                 "paper_network": FIG6_NETWORK,
                 "l2": [r["l2"] for r in attacked if r["success"]]},
        "time": {"solves": len(grid), "solve_s": sum(float(r.get("solve_s", 0.0)) for r in grid),
                 "shgo_median_s": _median([r["solve_s"] for r in grid if r["solver"] == "shgo"])},
    }  # fmt: skip


def summarise(config: dict, rows: list[dict], ctx: RunContext) -> dict:
    """Tables and numbers from the rows (and config.json): ``tables``; ``cells`` (per network,
    problem, solver and encoding: successes, attacked, not attacked); ``solves`` (rows that
    ran); ``timeouts`` (solves stopped by their safety net); ``few_samples``; ``toys`` (the
    grid's toy circuits; the other networks are MNIST); ``facts`` (the numbers behind the
    paper comparison)."""
    ok_rows = [r["result"] for r in rows if r.get("status") == "ok" and r.get("result")]
    err_rows = [r for r in rows if r.get("status") != "ok"]
    grid = [r for r in ok_rows if r.get("part") == "grid"]
    fig6_rows = [r for r in ok_rows if r.get("part") == "fig6"]
    counts = count_cells(grid, err_rows)
    timeouts = [r for r in ok_rows if r["outcome"] == "timeout"]
    return {
        "config": {k: v for k, v in config.items() if k not in ("keys", "pools")},
        "tables": _tables(config, grid, counts),
        "cells": [{"network": c[0], "goal": c[1], "norm": c[2], "solver": c[3], "encoding": c[4],
                   "successes": n[0], "attacked": n[1], "not_attacked": n[2]}
                  for c, n in sorted(counts.items())],
        "solves": len(ok_rows),
        "timeouts": [{k: r[k] for k in ("network", "goal", "norm", "solver", "encoding",
                                         "sample", "nfev", "safety_net_s")} for r in timeouts],
        "few_samples": few_samples(config),
        "toys": [n for n in config["networks"] if n in TOYS],
        "facts": _facts(config, grid, fig6_rows),
    }  # fmt: skip


EXPERIMENT = Experiment(
    name=NAME,
    title=TITLE,
    description=(
        "4 SciPy solvers x 4 problems (Attack 1 / Attack 2 x L1 / L2) x 4 networks (XOR, "
        "tanh, MNIST 0-1, MNIST 0-2) x 2 constraint encodings x 20 starting points. Every "
        "solve is ended by its evaluation/iteration budget (per problem class, in config.json "
        "and in every row), so the same command gives the same rows on any machine; a "
        "wall-clock safety net (--solve-timeout) only kills a solve stuck in C code. Every "
        "success is verified and stored exactly (boxhack verify OUT). Writes "
        "OUT/solvers/rows.jsonl (resumable), summary.json, fig5_success_rates.png, "
        "fig6_digits.png, fig7_projections.png and solver_gallery.png."
    ),
    options=(
        Option("n", int, 20, "starting points per attack", quick=2, minimum=1),
        Option("networks", "list", list(NETWORKS), "networks of the grid", choices=NETWORKS,
               quick=["xor", "mnist2"]),
        Option("solvers", "list", list(SOLVER_ORDER), "solvers of the grid",
               choices=SOLVER_ORDER),
        Option("encodings", "list", list(ENCODING_ORDER), "constraint encodings",
               choices=ENCODING_ORDER),
        Option("n_fig6", int, None, "digits in figure 6; auto: 10 (--quick: 2), none when "
               "the grid has no MNIST network", minimum=0),
        Option("budgets", "json", None, "per-class budget overrides as JSON, e.g. "
               '\'{"mnist-de": {"max_evals": 5000}}\'; classes: ' + ", ".join(BUDGETS)),
    ),
    configure=configure,
    plan=plan,
    job=job,
    summarise=summarise,
    job_in_run_dir=True,
)
