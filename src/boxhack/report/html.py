"""The self-contained HTML report of a run directory, and a headless-browser check of it.

A run directory (written by :func:`boxhack.experiments.reproduce.reproduce`, or by running
experiments one by one into the same directory) holds one sub-directory per experiment with its
``rows.jsonl`` and ``summary.json`` (the experiment contract), plus ``run.json``, the record of
the ``reproduce`` invocations (configuration, seeds, versions, per-experiment status and wall
time). :func:`render_report` turns it into ``report.html``: one file, no external resource,
every figure embedded as a ``data:`` URI, every user-provided string HTML-escaped.

It only reads what is on disk, and imports nothing it finds there: the experiments it shows
are the registered ones (:mod:`boxhack.experiments.registry`); any other sub-directory holding
results, or a ``run.json`` record of an unregistered name, is listed as "unknown experiment
directory X: ignored". Figures are numbered once, 1..N, across the whole report. Re-computing
the summaries from the JSONL rows is the job of
:func:`boxhack.experiments.reproduce.rebuild_report` (``boxhack report RUN_DIR``).

:func:`inspect_page` and :func:`screenshot` drive Debian's ``chromium`` in headless mode to see
the report as a person would: how tall the page is, and whether every ``<img>`` decoded.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from boxhack.errors import BoxhackError

__all__ = [
    "CHROMIUM_FLAGS",
    "RUN_FILE",
    "check_report",
    "check_report_out",
    "find_chromium",
    "find_experiments",
    "inspect_page",
    "load_run",
    "load_summaries",
    "render_report",
    "rows_stats",
    "screenshot",
]

RUN_FILE = "run.json"
REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.json"
ROWS_FILE = "rows.jsonl"

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
         ".gif": "image/gif", ".webp": "image/webp"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Flags for a headless, offline, throw-away Chromium (a fresh --user-data-dir is added per call).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
)
CHROMIUM_HINT = "install Debian's chromium (as root: apt-get install -y chromium)"


# ---------------------------------------------------------------------------------- reading


def _read_json(path: Path) -> tuple[Any, str | None]:
    """``(value, None)`` or ``(None, why it could not be read)``."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return None, f"{path.name} not found"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"cannot read {path.name}: {exc}"


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The run record ``run_dir/run.json`` (``{}`` when there is none or it is unreadable)."""
    value, _ = _read_json(Path(run_dir) / RUN_FILE)
    return value if isinstance(value, dict) else {}


def find_experiments(run_dir: str | Path) -> tuple[list[str], list[str]]:
    """``(known, unknown)`` experiment names of ``run_dir``, from names only (nothing imported).

    ``known``: the registered experiments (registry order) that ``run.json`` records or that
    have a sub-directory holding ``summary.json`` or ``rows.jsonl``. ``unknown``: every other
    such name (a sub-directory with results, or a ``run.json`` record), sorted; they are shown
    as ignored, never imported or rendered.
    """
    from boxhack.experiments import registry

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    records = run.get("experiments") if isinstance(run.get("experiments"), Mapping) else {}
    found: set[str] = {n for n in records if isinstance(n, str)}
    for sub in run_dir.iterdir():
        if sub.is_dir() and ((sub / SUMMARY_FILE).is_file() or (sub / ROWS_FILE).is_file()):
            found.add(sub.name)
    known = [n for n in registry.names() if n in found]
    unknown = sorted(found - set(known))
    return known, unknown


def load_summaries(run_dir: str | Path) -> list[tuple[str, dict[str, Any] | None, str | None]]:
    """``[(name, summary or None, why it is missing or None)]`` for every registered experiment
    of the run (see :func:`find_experiments`)."""
    run_dir = Path(run_dir)
    out = []
    for name in find_experiments(run_dir)[0]:
        value, err = _read_json(run_dir / name / SUMMARY_FILE)
        if value is not None and not isinstance(value, dict):
            value, err = None, f"{SUMMARY_FILE} holds a JSON {type(value).__name__}, not an object"
        out.append((name, value, err))
    return out


def rows_stats(rows_path: str | Path) -> dict[str, Any] | None:
    """Counts from an experiment's JSONL: rows, ok, errors, summed job seconds, first errors."""
    from boxhack.infra.jsonl import latest_by_key, read_rows

    path = Path(rows_path)
    if not path.is_file():
        return None
    try:
        rows = list(latest_by_key(read_rows(path)).values())
    except BoxhackError as exc:
        return {"rows": None, "ok": None, "errors": None, "job_s": None, "messages": [str(exc)]}
    errors = [r for r in rows if r.get("status") != "ok"]
    messages: list[str] = []
    for r in errors:
        msg = str(r.get("error"))
        if msg not in messages:
            messages.append(msg)
    job_s = sum(float(r.get("wall_s") or 0.0) for r in rows)
    return {"rows": len(rows), "ok": len(rows) - len(errors), "errors": len(errors),
            "job_s": job_s, "messages": messages[:5]}


# ---------------------------------------------------------------------------------- formatting


def _e(value: Any) -> str:
    """HTML-escape any value's text."""
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """A table cell's text (not escaped)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    text = json.dumps(value, separators=(", ", ": "), default=str)
    return text if len(text) <= 300 else text[:297] + "..."


def _seconds(value: Any) -> str:
    try:
        s = float(value)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(s):
        return "–"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {s % 60:02.0f} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _clock(record: Any, key: str) -> Any:
    """``record["timing"][key]`` (run.json version 2), or ``record[key]`` (version 1)."""
    if not isinstance(record, Mapping):
        return None
    timing = record.get("timing")
    if isinstance(timing, Mapping) and key in timing:
        return timing.get(key)
    return record.get(key)


def _slug(name: str) -> str:
    return "exp-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _table(columns: Sequence[Any], rows: Sequence[Sequence[Any]], *, cls: str = "") -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = row if isinstance(row, (list, tuple)) else [row]
        tds = []
        for v in cells:
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            tds.append(f'<td class="num">{_e(_fmt(v))}</td>' if num else f"<td>{_e(_fmt(v))}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    klass = f' class="{cls}"' if cls else ""
    return (f"<div class=\"scroll\"><table{klass}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _kv_table(items: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> str:
    pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in pairs)
    return f'<div class="scroll"><table class="kv"><tbody>{rows}</tbody></table></div>'


def _note(text: str, kind: str = "warn") -> str:
    return f'<div class="note {kind}">{_e(text)}</div>'


def _badge(status: str) -> str:
    kind = {"ok": "ok", "error": "bad", "skipped": "skip", "interrupted": "bad"}.get(status, "skip")
    return f'<span class="badge {kind}">{_e(status)}</span>'


# ---------------------------------------------------------------------------------- figures


def _image_data_uri(path: Path) -> tuple[str | None, str | None]:
    """``(data URI, None)`` or ``(None, why not)``."""
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        return None, f"unsupported figure type {path.suffix!r} (use PNG)"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "file not found"
    except OSError as exc:
        return None, f"cannot read it: {exc}"
    if not data:
        return None, "the file is empty"
    if mime == "image/png" and not data.startswith(_PNG_SIGNATURE):
        return None, "not a PNG file (bad signature)"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}", None


def _figure(exp_dir: Path, run_dir: Path, fig: Any, number: int) -> tuple[str, bool]:
    """Figure ``number`` of the report (numbered across all sections) as a ``<figure>``, or a
    note saying why it cannot be shown; returns ``(html, embedded?)``."""
    if isinstance(fig, str):
        fig = {"path": fig}
    if not isinstance(fig, Mapping) or not isinstance(fig.get("path"), str):
        return _note(f"Figure {number}: malformed entry {_fmt(fig)}", "bad"), False
    rel = fig["path"]
    caption = str(fig.get("caption", ""))
    path = (exp_dir / rel).resolve()
    if not path.is_relative_to(run_dir.resolve()):
        return _note(f"Figure {number} {rel!r}: outside the run directory, not embedded",
                     "bad"), False
    uri, why = _image_data_uri(path)
    if uri is None:
        return _note(f"figure missing: {rel} ({why}) (Figure {number})", "bad"), False
    alt = caption or rel
    return (
        f'<figure id="figure-{number}"><img src="{uri}" alt="{_e(alt)}" '
        f'data-figure="{_e(rel)}" data-number="{number}">'
        f"<figcaption><b>Figure {number}.</b> {_e(caption)} "
        f'<span class="path">{_e(rel)}</span></figcaption></figure>'
    ), True


# ---------------------------------------------------------------------------------- sections


def _paper_rows(summary: Mapping[str, Any]) -> list[list[Any]]:
    rows = []
    for item in summary.get("paper") or []:
        if isinstance(item, Mapping):
            rows.append([item.get("claim", ""), item.get("measured", ""), item.get("note", "")])
        else:
            rows.append([item, "", ""])
    return rows


def _section(
    name: str,
    summary: Mapping[str, Any] | None,
    missing: str | None,
    record: Mapping[str, Any],
    stats: Mapping[str, Any] | None,
    run_dir: Path,
    extra_error: str | None,
    first_figure: int = 1,
) -> tuple[str, int, int]:
    """One experiment's section, its figures numbered from ``first_figure``; returns
    ``(html, figures embedded, figures expected)``."""
    title = (summary or {}).get("title") or record.get("title") or name
    status = record.get("status")
    parts = [f'<section id="{_e(_slug(name))}"><h2>{_e(title)}</h2>']
    meta = [f"<code>{_e(name)}</code>"]
    if status:
        meta.append(_badge(str(status)))
    if _clock(record, "wall_s") is not None:
        meta.append(f"wall time {_e(_seconds(_clock(record, 'wall_s')))} (this run)")
    timing = (summary or {}).get("timing")
    if isinstance(timing, Mapping) and timing.get("wall_s") is not None:
        jobs = timing.get("jobs")
        meta.append(f"experiment timing {_e(_seconds(timing.get('wall_s')))}"
                    + (f", {_e(jobs)} jobs" if jobs is not None else ""))
    if stats and stats.get("rows") is not None:
        meta.append(f"{stats['rows']} rows ({stats['errors']} errors), "
                    f"{_e(_seconds(stats['job_s']))} of job time")
    parts.append(f'<p class="meta">{" · ".join(meta)}</p>')
    if status == "skipped":
        parts.append(_note(record.get("note") or "not run: its module is not available", "skip"))
    if record.get("error"):
        parts.append(_note(f"this experiment failed: {record['error']}", "bad"))
        if record.get("traceback"):
            parts.append(f"<details><summary>traceback</summary><pre>{_e(record['traceback'])}"
                         f"</pre></details>")
    if extra_error:
        parts.append(_note(f"re-summarising from the JSONL failed: {extra_error}", "bad"))
    if stats and stats.get("errors"):
        msgs = "".join(f"<li><code>{_e(m)}</code></li>" for m in stats["messages"])
        parts.append(f'<div class="note warn">{stats["errors"]} job(s) ended in an error; '
                     f"first distinct messages:<ul>{msgs}</ul></div>")
    if summary is None:
        if status != "skipped":
            parts.append(_note(f"no summary: {missing}", "bad" if status != "skipped" else "skip"))
        parts.append("</section>")
        return "".join(parts), 0, 0

    if summary.get("description"):
        parts.append(f'<p class="desc">{_e(summary["description"])}</p>')
    paper = _paper_rows(summary)
    if paper:
        parts.append("<h3>The paper vs boxhack</h3>")
        parts.append(_table(["The paper", "boxhack measured", "Note"], paper, cls="paper"))
    for t in summary.get("tables") or []:
        if not isinstance(t, Mapping):
            parts.append(_note(f"malformed table entry: {_fmt(t)}", "bad"))
            continue
        if t.get("title"):
            parts.append(f"<h3>{_e(t['title'])}</h3>")
        rows = t.get("rows") or []
        columns = t.get("columns") or ([""] * max((len(r) for r in rows if isinstance(r, list)),
                                                  default=0))
        parts.append(_table(columns, rows))
    figures = summary.get("figures") or []
    embedded = 0
    if figures:
        parts.append('<div class="figures">')
        for i, fig in enumerate(figures):
            block, ok = _figure(run_dir / name, run_dir, fig, first_figure + i)
            embedded += ok
            parts.append(block)
        parts.append("</div>")
    config = summary.get("config")
    if config:
        parts.append("<details><summary>configuration</summary>")
        parts.append(_kv_table(config) if isinstance(config, Mapping) else
                     f"<pre>{_e(_fmt(config))}</pre>")
        parts.append("</details>")
    parts.append("</section>")
    return "".join(parts), embedded, len(figures)


_CSS = """
:root{--fg:#1d2330;--muted:#5d6675;--line:#d9dde4;--bg:#fff;--alt:#f5f7fa;--accent:#2457a6}
*{box-sizing:border-box}
body{font:15px/1.5 -apple-system,"Segoe UI",Roboto,"DejaVu Sans",Helvetica,Arial,sans-serif;
 color:var(--fg);background:var(--bg);margin:0}
main{max-width:1240px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:21px;margin:40px 0 4px;padding-top:16px;border-top:2px solid var(--line)}
h3{font-size:16px;margin:20px 0 6px}
p.meta{color:var(--muted);margin:0 0 10px;font-size:13px}
p.desc{max-width:960px}
code,pre{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12.5px}
pre{background:var(--alt);padding:10px;overflow:auto;white-space:pre-wrap}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13.5px}
th,td{border:1px solid var(--line);padding:4px 9px;text-align:left;vertical-align:top}
thead th{background:#e9edf3}
tbody tr:nth-child(even){background:var(--alt)}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{background:var(--alt);font-weight:600;white-space:nowrap}
table.paper{width:100%}table.paper td:first-child{width:38%}table.paper td:nth-child(2){width:34%}
table.paper-all{width:100%}table.paper-all td.exp{width:15%;background:#fff;font-weight:600}
table.paper-all td.claim{width:32%}table.paper-all td.measured{width:30%}
.figures{display:flex;flex-wrap:wrap;gap:18px;margin-top:10px}
figure{margin:0;display:table;max-width:100%;border:1px solid var(--line);padding:8px;
 background:#fff}
figure img{display:block;max-width:100%;height:auto;margin:0 auto}
figure figcaption{display:table-caption;caption-side:bottom;border:1px solid var(--line);
 border-top:0;padding:0 8px 8px;background:#fff}
figcaption{font-size:13px;color:var(--muted)}
figcaption .path{font-family:monospace;font-size:11px;color:#8a93a1}
.note{padding:8px 12px;margin:8px 0;border-left:4px solid;font-size:14px}
.note.warn{background:#fff8e6;border-color:#e0a800}
.note.bad{background:#fdecec;border-color:#c62828}
.note.skip{background:#f1f2f4;border-color:#9aa2ad}
.note.good{background:#eaf6ec;border-color:#2e7d32}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;font-weight:600;
 color:#fff}
.badge.ok{background:#2e7d32}.badge.bad{background:#c62828}.badge.skip{background:#8a93a1}
nav ol{margin:4px 0 0 0;padding-left:22px}
a{color:var(--accent)}
details{margin:6px 0}summary{cursor:pointer;color:var(--muted)}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:8px 28px}
@media (max-width:900px){.grid2{grid-template-columns:1fr}}
"""


def _header(run_dir: Path, run: Mapping[str, Any], overview: list[list[Any]],
            paper_all: list[list[Any]], n_fig: int, n_expected: int,
            unknown: Sequence[str] = ()) -> str:
    from boxhack.experiments import registry

    name = run.get("name") or run_dir.name
    config = run.get("config") if isinstance(run.get("config"), Mapping) else {}
    experiments = run.get("experiments") if isinstance(run.get("experiments"), Mapping) else {}
    experiments = {k: v for k, v in experiments.items() if registry.is_registered(k)}
    parts = [
        "<header>",
        f"<h1>boxhack: reproducing “Hack The Box” — run <code>{_e(name)}</code></h1>",
        ('<p class="meta">Hajj Ibrahim &amp; Nassar, “Hack The Box: Fooling Deep Learning '
        "Abstraction-Based Monitors”, attacking the Outside-the-Box monitors of Henzinger, "
        "Lukina &amp; Schilling (ECAI 2020). Every number below is re-measured by boxhack on the "
        f"embedded data; report rendered {_e(_now())}.</p>"),
    ]
    statuses = [str(r.get("status")) for r in experiments.values() if isinstance(r, Mapping)]
    n_err = sum(s in ("error", "interrupted") for s in statuses)
    n_skip = statuses.count("skipped")
    bits = [f"{statuses.count('ok')} experiment(s) ok"]
    if n_err:
        bits.append(f"{n_err} failed")
    if n_skip:
        bits.append(f"{n_skip} skipped (module not available)")
    bits.append(f"{n_fig} of {n_expected} figures embedded")
    if _clock(run, "wall_s") is not None:
        bits.append(f"total wall time {_seconds(_clock(run, 'wall_s'))}")
    kind = "bad" if n_err or n_fig < n_expected else ("warn" if n_skip else "good")
    if run:
        parts.append(_note(" · ".join(bits), kind))
    else:
        parts.append(_note("no run.json here (experiments were run one by one): configuration, "
                           "versions and run timings are not recorded; "
                           + f"{n_fig} of {n_expected} figures embedded",
                           "warn" if n_fig == n_expected else "bad"))

    for other in unknown:
        parts.append(_note(f"unknown experiment directory {other}: ignored (not one of "
                           f"boxhack's experiments: {', '.join(registry.names())}; nothing "
                           f"in it is read or run)", "warn"))

    # contents + overview
    parts.append("<h2>Experiments</h2>")
    parts.append(_table(["Experiment", "Title", "Status", "Wall time (this run)", "Rows",
                         "Job errors", "Job time (sum)"], overview))
    links = "".join(f'<li><a href="#{_e(_slug(n))}">{_e(t)}</a></li>' for n, t, *_ in overview)
    parts.append(f"<nav><b>Contents</b><ol>{links}</ol></nav>")

    if paper_all:
        parts.append("<h2 id=\"paper\">The paper's results beside boxhack's</h2>")
        parts.append(_paper_all_table(paper_all))

    if run:
        parts.append('<h2 id="run">Run configuration, seeds, versions, timings</h2>')
        parts.append('<div class="grid2"><div><h3>Configuration</h3>')
        cfg = dict(config)
        solve = cfg.get("solve_timeout")
        cfg["per-solve safety net"] = (
            f"{solve} s per solve (--solve-timeout); results come from evaluation budgets"
            if solve is not None else
            "each experiment's default, far above a solve's normal time (results come from "
            "evaluation budgets; see the solvers and combined configurations below)")
        parts.append(_kv_table(cfg))
        seeds = run.get("seeds")
        if isinstance(seeds, Mapping) and seeds:
            parts.append("<h3>Seeds</h3>")
            parts.append(_kv_table(seeds))
        parts.append("</div><div><h3>Timings</h3>")
        timing_rows = [("started", _clock(run, "started")),
                       ("finished", _clock(run, "finished")),
                       ("total wall time (last invocation)", _seconds(_clock(run, "wall_s")))]
        for n, r in experiments.items():
            if isinstance(r, Mapping) and _clock(r, "wall_s") is not None:
                timing_rows.append((f"{n}", _seconds(_clock(r, "wall_s"))))
        parts.append(_kv_table(timing_rows))
        versions = run.get("versions")
        if isinstance(versions, Mapping) and versions:
            parts.append("<h3>Versions</h3>")
            parts.append(_kv_table(versions))
        machine = run.get("machine")
        if isinstance(machine, Mapping) and machine:
            parts.append("<h3>Machine</h3>")
            parts.append(_kv_table(machine))
        parts.append("</div></div>")
        invocations = run.get("invocations")
        if isinstance(invocations, list) and len(invocations) > 1:
            parts.append("<details><summary>all invocations into this directory</summary>")
            parts.append(_table(
                ["started", "wall time", "experiments", "quick", "jobs", "scheduler"],
                [[_clock(i, "started"), _seconds(_clock(i, "wall_s")),
                  ", ".join(map(str, i.get("experiments") or [])),
                  (i.get("config") or {}).get("quick"), (i.get("config") or {}).get("n_jobs"),
                  (i.get("config") or {}).get("scheduler")]
                 for i in invocations if isinstance(i, Mapping)]))
            parts.append("</details>")
    parts.append("</header>")
    return "".join(parts)


def _paper_all_table(paper_all: list[list[Any]]) -> str:
    """``[[name, title, claim, measured, note]]`` grouped by experiment (one rowspan cell)."""
    body = []
    i = 0
    while i < len(paper_all):
        name, title = paper_all[i][0], paper_all[i][1]
        j = i
        while j < len(paper_all) and paper_all[j][0] == name:
            j += 1
        for k in range(i, j):
            _, _, claim, measured, note = paper_all[k]
            first = (f'<td class="exp" rowspan="{j - i}"><a href="#{_e(_slug(name))}">'
                     f"{_e(title)}</a></td>") if k == i else ""
            body.append(f"<tr>{first}<td class=\"claim\">{_e(_fmt(claim))}</td>"
                        f"<td class=\"measured\">{_e(_fmt(measured))}</td>"
                        f"<td>{_e(_fmt(note))}</td></tr>")
        i = j
    head = "".join(f"<th>{h}</th>" for h in ("Experiment", "The paper", "boxhack measured", "Note"))
    return (f'<div class="scroll"><table class="paper-all"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


def render_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    errors: Mapping[str, str] | None = None,
) -> Path:
    """Render ``run_dir`` into one self-contained HTML file; returns its path.

    Args:
        run_dir: the run directory (experiment sub-directories, optional ``run.json``).
        out: where to write (default ``run_dir/report.html``).
        errors: extra per-experiment error messages to show (e.g. a failed re-summarise).

    Figures a summary lists but that cannot be embedded are shown as red notes and counted in
    the header ("k of n figures embedded"), never silently dropped.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BoxhackError(f"run directory {run_dir} does not exist; run `boxhack reproduce "
                           f"--out {run_dir}` first")
    out = check_report_out(out) or run_dir / REPORT_FILE
    run = load_run(run_dir)
    records = run.get("experiments") if isinstance(run.get("experiments"), Mapping) else {}
    errors = dict(errors or {})
    _, unknown = find_experiments(run_dir)
    summaries = load_summaries(run_dir)
    sections: list[str] = []
    overview: list[list[Any]] = []
    paper_all: list[list[Any]] = []
    n_fig = n_expected = 0
    for name, summary, missing in summaries:
        record = records.get(name) if isinstance(records.get(name), Mapping) else {}
        stats = rows_stats(run_dir / name / ROWS_FILE)
        block, got, expected = _section(name, summary, missing, record, stats, run_dir,
                                        errors.get(name), first_figure=n_expected + 1)
        sections.append(block)
        n_fig += got
        n_expected += expected
        title = (summary or {}).get("title") or record.get("title") or name
        status = record.get("status") or ("ok" if summary is not None else "no summary")
        if errors.get(name):
            status = "error"
        overview.append([name, title, status, _seconds(_clock(record, "wall_s")),
                         None if stats is None else stats["rows"],
                         None if stats is None else stats["errors"],
                         None if stats is None else _seconds(stats["job_s"])])
        for claim, measured, note in _paper_rows(summary or {}):
            paper_all.append([name, title, claim, measured, note])
    if not summaries:
        sections.append(_note("this directory holds no experiment results yet "
                              "(no sub-directory with rows.jsonl or summary.json)", "bad"))
    head = _header(run_dir, run, overview, paper_all, n_fig, n_expected, unknown)
    title = f"boxhack report: {run.get('name') or run_dir.name}"
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="boxhack"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head><body><main>"
        + head + "".join(sections)
        + '<footer><p class="meta">Generated by <code>boxhack report</code> from the JSONL rows '
        "and summaries in this directory; self-contained (no external resources).</p></footer>"
        "</main></body></html>\n"
    )
    from boxhack.infra.files import atomic_write

    return atomic_write(out, page)


def check_report_out(out: str | Path | None) -> Path | None:
    """A report ``--out``: ``None``, or a file path whose directory can be written to.

    Raises :class:`BoxhackError` for a directory given as the file, or a directory that cannot
    be created or written (read-only, a file in the way).
    """
    if out is None:
        return None
    from boxhack.infra.files import check_output_dir

    out = Path(out)
    if out.is_dir():
        raise BoxhackError(f"--out {out} is a directory; give the HTML file's path, e.g. "
                           f"{out / REPORT_FILE}")
    check_output_dir(out.parent, "--out's")
    return out


# ---------------------------------------------------------------------------------- browser


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable, or None (``$BOXHACK_CHROMIUM`` wins)."""
    env = os.environ.get("BOXHACK_CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise BoxhackError(f"no Chromium found to render the report; {CHROMIUM_HINT}")
    with tempfile.TemporaryDirectory(prefix="boxhack-chromium-") as profile:
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BoxhackError(f"Chromium did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise BoxhackError(f"Chromium failed (exit {proc.returncode}): {' | '.join(tail)}")
    return proc


_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.map.call(document.images, function (i) {
    var r = i.getBoundingClientRect();
    return {figure: i.getAttribute('data-figure') || '', complete: i.complete,
            natural: [i.naturalWidth, i.naturalHeight], shown: [r.width, r.height],
            top: r.top + window.scrollY, left: r.left + window.scrollX};
  });
  var d = document.documentElement;
  document.body.setAttribute('data-boxhack-probe', JSON.stringify(
    {height: Math.max(d.scrollHeight, document.body.scrollHeight), width: d.scrollWidth,
     images: imgs, title: document.title,
     sections: document.querySelectorAll('section').length}));
});
</script>"""


def inspect_page(html_path: str | Path, *, width: int = 1400, timeout: float = 120) -> dict:
    """Load ``html_path`` in headless Chromium at ``width`` px; report what the browser saw.

    Returns ``{"height", "width", "title", "sections", "images": [{"figure", "complete",
    "natural": [w, h], "shown": [w, h], "top"}]}`` — ``natural`` is (0, 0) for an image the
    browser could not decode.
    """
    html_path = Path(html_path)
    text = html_path.read_text(encoding="utf-8")
    marker = text.rfind("</body>")
    probed = (text[:marker] + _PROBE + text[marker:]) if marker >= 0 else text + _PROBE
    with tempfile.TemporaryDirectory(prefix="boxhack-probe-") as tmp:
        page = Path(tmp) / "probe.html"
        page.write_text(probed, encoding="utf-8")
        proc = _chromium([f"--window-size={width},900", "--virtual-time-budget=10000",
                          "--dump-dom", page.as_uri()], timeout)
    dom = proc.stdout.decode("utf-8", "replace")
    key = 'data-boxhack-probe="'
    start = dom.find(key)
    if start < 0:
        raise BoxhackError("Chromium loaded the page but the probe script did not run")
    end = dom.find('"', start + len(key))
    return json.loads(html.unescape(dom[start + len(key):end]))


def screenshot(
    html_path: str | Path,
    png_path: str | Path,
    *,
    width: int = 1400,
    height: int | None = None,
    timeout: float = 180,
) -> dict:
    """Screenshot ``html_path`` in headless Chromium to ``png_path`` (the whole page by default).

    Returns :func:`inspect_page`'s findings plus ``"png"`` (the path) and ``"height"`` used.
    """
    html_path = Path(html_path).resolve()
    png_path = Path(png_path).resolve()
    info = inspect_page(html_path, width=width, timeout=timeout)
    h = int(height or info["height"])
    h = max(200, min(h, 30000))  # beyond ~32k px the compositor gives up
    png_path.parent.mkdir(parents=True, exist_ok=True)
    if png_path.exists():
        png_path.unlink()
    _chromium([f"--window-size={width},{h}", "--virtual-time-budget=10000",
               f"--screenshot={png_path}", html_path.as_uri()], timeout)
    if not png_path.is_file():
        raise BoxhackError(f"Chromium ran but wrote no screenshot to {png_path}")
    return {**info, "png": str(png_path), "screenshot_height": h}


# ---------------------------------------------------------------------------------- checking


class _ImgParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a)


def _decode_png(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of a PNG, fully decoded (raises on a broken image)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.format != "PNG":
            raise ValueError(f"a {im.format} image, not PNG")
        im.load()
        return im.size


def check_report(
    html_path: str | Path,
    png_path: str | Path | None = None,
    *,
    width: int = 1400,
    browser: bool = True,
) -> dict[str, Any]:
    """Check a rendered report as a reader would see it; returns findings with ``"ok"``.

    1. Static: every ``<img>`` is an embedded PNG ``data:`` URI that decodes to a non-empty
       image, and there are as many as the run directory's summaries list figures (when the
       report sits in its run directory); no "figure missing" note.
    2. Browser (``browser=True``, needs Chromium): the page is loaded headless, every image
       decoded and is displayed with a non-zero size; a full-page screenshot is written to
       ``png_path`` (default: next to the report, ``.png``), and neither it nor any figure's
       region in it is blank (a single flat colour).
    """
    html_path = Path(html_path)
    text = html_path.read_text(encoding="utf-8")
    problems: list[str] = []
    parser = _ImgParser()
    parser.feed(text)
    figures = []
    for i, img in enumerate(parser.images):
        src = img.get("src", "")
        name = img.get("data-figure") or f"image {i + 1}"
        prefix = "data:image/png;base64,"
        if not src.startswith(prefix):
            problems.append(f"{name}: not an embedded PNG data URI ({src[:40]!r})")
            continue
        try:
            size = _decode_png(base64.b64decode(src[len(prefix):], validate=True))
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a finding
            problems.append(f"{name}: the embedded PNG does not decode ({exc})")
            continue
        if size[0] <= 0 or size[1] <= 0:
            problems.append(f"{name}: empty image {size}")
        figures.append({"figure": name, "size": list(size)})
    n_missing = text.count("figure missing:")
    if n_missing:
        problems.append(f"{n_missing} figure(s) listed by a summary are missing from the report")
    expected = None
    run_dir = html_path.parent
    if any((p / SUMMARY_FILE).is_file() for p in run_dir.iterdir() if p.is_dir()):
        expected = 0
        for _, summary, _ in load_summaries(run_dir):
            if summary:
                expected += len(summary.get("figures") or [])
        if expected != len(parser.images):
            problems.append(f"the summaries list {expected} figures but the report has "
                            f"{len(parser.images)} images")
    result: dict[str, Any] = {"report": str(html_path), "images": len(parser.images),
                              "expected_figures": expected, "figures": figures}
    if browser:
        png_path = Path(png_path) if png_path is not None else html_path.with_suffix(".png")
        seen = screenshot(html_path, png_path, width=width)
        result.update(png=seen["png"], page_height=seen["height"],
                      screenshot_height=seen["screenshot_height"])
        shown = seen["images"]
        if len(shown) != len(parser.images):
            problems.append(f"the browser shows {len(shown)} images, the file has "
                            f"{len(parser.images)}")
        for img in shown:
            nat, disp = img.get("natural") or [0, 0], img.get("shown") or [0, 0]
            if not img.get("complete") or nat[0] <= 0 or nat[1] <= 0:
                problems.append(f"{img.get('figure')}: the browser could not decode it")
            elif disp[0] < 50 or disp[1] < 50:
                problems.append(f"{img.get('figure')}: displayed at {disp[0]:.0f}x{disp[1]:.0f} "
                                f"px only")
        problems += _blank_regions(Path(seen["png"]), shown)
    result["problems"] = problems
    result["ok"] = not problems
    return result


def _blank_regions(png: Path, shown: list[dict[str, Any]]) -> list[str]:
    """A blank screenshot, or a figure whose screen region is one flat colour, is a problem."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    problems = []
    if pixels.size == 0 or pixels.std() < 2.0:
        problems.append(f"the screenshot {png} is blank")
        return problems
    for img in shown:
        top, left = int(img.get("top", 0)), int(img.get("left", 0))
        w, h = (int(v) for v in (img.get("shown") or [0, 0]))
        region = pixels[max(top, 0):top + h, max(left, 0):left + w]
        if region.size == 0:
            problems.append(f"{img.get('figure')}: outside the screenshot (top {top} px)")
        elif region.std() < 2.0:
            problems.append(f"{img.get('figure')}: its region of the screenshot is blank")
    return problems
