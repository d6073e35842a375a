"""A fake experiment: squares a few numbers as a campaign, draws two matplotlib figures.

Its strings carry HTML on purpose, to check that the report escapes them. :func:`declare`
makes the same experiment under another name (``other``, ``slow``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from boxhack.experiments.spec import Experiment, Option, RunContext, Settings
from boxhack.infra.campaign import Job
from boxhack.infra.files import atomic_write_json
from boxhack.report.curves import save_png
from boxhack.report.present import Presenter

NAME = "fake"
TITLE = 'Fake <b>experiment</b> & "quotes"'
CLAIM = "Squares grow <script>alert('x')</script> fast"


def job(params: dict[str, Any]) -> dict[str, Any]:
    x = params["x"]
    return {"x": x, "square": x * x, "curve": [x * t / 10 for t in range(11)]}


def configure(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    # what the experiment was given, so tests can check the pass-through
    given = {"quick": settings.quick, "n_jobs": settings.n_jobs, "seed": settings.seed,
             "scheduler": settings.scheduler, "solve_timeout": settings.solve_timeout,
             "options": dict(options)}
    return {"n": options["n"], "seed": settings.seed, "given": given}


def plan(config: dict[str, Any], ctx: RunContext, name: str = NAME) -> tuple[dict, list[Job]]:
    given = {**config["given"], "models_root": str(ctx.models_root)}
    atomic_write_json(ctx.exp_dir(name) / "given.json", given)
    jobs = [Job(f"{name}/x{i}", {"x": i, "seed": config["seed"]}) for i in range(config["n"])]
    return config, jobs


def summarise(config: dict[str, Any], rows: list[dict], ctx: RunContext) -> dict[str, Any]:
    rows = sorted(rows, key=lambda r: r["params"]["x"])
    xs = [r["result"]["x"] for r in rows]
    ys = [r["result"]["square"] for r in rows]
    return {
        "config": {"n": len(rows), "note": "<b>bold?</b>"},
        "tables": [{"title": "Squares & <roots>", "columns": ["x", "x<sup>2</sup>"],
                    "rows": [[x, y] for x, y in zip(xs, ys, strict=True)]}],
        "max_square": max(ys),
    }


def draw(config: dict, rows: list[dict], summary: dict, exp_dir: Path) -> list[dict]:
    rows = sorted(rows, key=lambda r: r["params"]["x"])
    fig = Figure(figsize=(4, 3), dpi=80)
    ax = fig.add_subplot()
    for r in rows:
        ax.plot(r["result"]["curve"], label=f"x={r['result']['x']}")
    ax.set_title("curves")
    save_png(fig, exp_dir / "curves.png")
    fig = Figure(figsize=(4, 3), dpi=80)
    fig.add_subplot().bar([r["result"]["x"] for r in rows],
                          [r["result"]["square"] for r in rows], color="#c62828")
    save_png(fig, exp_dir / "sub" / "squares.png")
    return [{"path": "curves.png", "caption": "Curves <em>per x</em>"},
            {"path": "sub/squares.png", "caption": "Squares as bars"}]


def describe(config: dict, summary: dict) -> dict[str, Any]:
    return {"description": "Squares <i>x</i> for a few x & draws them.",
            "paper": [{"claim": CLAIM, "measured": f"max square {summary['max_square']}",
                       "note": "a & b"}]}


def declare(name: str, title: str, **changes: Any) -> tuple[Experiment, Presenter]:
    """This experiment under another name (its own job keys and directory)."""
    changes.setdefault("plan", lambda config, ctx: plan(config, ctx, name))
    return dataclasses.replace(EXPERIMENT, name=name, title=title, **changes), PRESENTER


EXPERIMENT = Experiment(
    name=NAME, title=TITLE, description="Squares a few numbers.",
    options=(Option("n", int, 5, "how many numbers"),
             Option("extra", int, None, "an option no step uses")),
    configure=configure, plan=plan, job=job, summarise=summarise,
)
PRESENTER = Presenter(draw=draw, describe=describe)
