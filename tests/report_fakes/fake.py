"""A fake experiment: squares a few numbers as a campaign, draws two matplotlib figures.

Its strings carry HTML on purpose, to check that the report escapes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from boxhack.infra.campaign import Job, run_campaign
from boxhack.infra.files import atomic_write, atomic_write_json
from boxhack.infra.jsonl import latest_by_key, read_rows
from boxhack.infra.locks import exclusive

NAME = "fake"
TITLE = 'Fake <b>experiment</b> & "quotes"'
CLAIM = "Squares grow <script>alert('x')</script> fast"


def job(params: dict[str, Any]) -> dict[str, Any]:
    x = params["x"]
    return {"x": x, "square": x * x, "curve": [x * t / 10 for t in range(11)]}


def run(out_dir, *, quick=False, n_jobs=None, scheduler=None, seed=0, progress=True,
        models_root=None, solve_timeout=None, n=5, **options):
    return run_as(NAME, out_dir, quick=quick, n_jobs=n_jobs, scheduler=scheduler, seed=seed,
                  progress=progress, models_root=models_root, solve_timeout=solve_timeout, n=n,
                  **options)


def run_as(name, out_dir, *, quick=False, n_jobs=None, scheduler=None, seed=0, progress=True,
           models_root=None, solve_timeout=None, n=5, **options):
    d = Path(out_dir) / name
    # as the real experiments do: lock the experiment's own directory before writing into it
    # (reproduce holds the run directory's lock meanwhile: a different lock file)
    with exclusive(d, "experiment directory"):
        write_rows(name, d, n, seed)
        # what run() was given, so tests can check reproduce's pass-through
        atomic_write(d / "given.json", json.dumps({
            "quick": quick, "n_jobs": n_jobs, "seed": seed, "scheduler": scheduler,
            "solve_timeout": solve_timeout, "models_root": str(models_root),
            "options": sorted(options)}))
    return summarise_as(name, out_dir)


def write_rows(name: str, d: Path, n: int, seed: int) -> None:
    jobs = [Job(f"{name}/x{i}", {"x": i, "seed": seed}) for i in range(n)]
    run_campaign(jobs, job, d / "rows.jsonl", n_jobs=1, progress=False)


def summarise(out_dir) -> dict[str, Any]:
    return summarise_as(NAME, out_dir)


def summarise_as(name, out_dir) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    d = Path(out_dir) / name
    rows = sorted(latest_by_key(read_rows(d / "rows.jsonl")).values(),
                  key=lambda r: r["params"]["x"])
    xs = [r["result"]["x"] for r in rows]
    ys = [r["result"]["square"] for r in rows]
    fig = Figure(figsize=(4, 3), dpi=80)
    ax = fig.add_subplot()
    for r in rows:
        ax.plot(r["result"]["curve"], label=f"x={r['result']['x']}")
    ax.set_title("curves")
    fig.savefig(d / "curves.png")
    fig = Figure(figsize=(4, 3), dpi=80)
    fig.add_subplot().bar(xs, ys, color="#c62828")
    (d / "sub").mkdir(exist_ok=True)
    fig.savefig(d / "sub" / "squares.png")
    summary = {
        "name": name,
        "title": TITLE if name == NAME else f"{name}: {TITLE}",
        "description": "Squares <i>x</i> for a few x & draws them.",
        "config": {"n": len(rows), "note": "<b>bold?</b>"},
        "tables": [{"title": "Squares & <roots>", "columns": ["x", "x<sup>2</sup>"],
                    "rows": [[x, y] for x, y in zip(xs, ys, strict=True)]}],
        "figures": [{"path": "curves.png", "caption": "Curves <em>per x</em>"},
                    {"path": "sub/squares.png", "caption": "Squares as bars"}],
        "paper": [{"claim": CLAIM, "measured": f"max square {max(ys)}", "note": "a & b"}],
        "timing": {"wall_s": sum(r["wall_s"] for r in rows), "jobs": len(rows)},
    }
    atomic_write_json(d / "summary.json", summary, indent=2)
    return summary
