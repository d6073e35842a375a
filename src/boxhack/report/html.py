"""The self-contained HTML report of a run directory.

A run directory (written by :func:`boxhack.workflow.reproduction`, or by running experiments one
by one into the same directory) holds one sub-directory per experiment with its
``config.json``, ``rows.jsonl`` and ``summary.json``, plus ``run.json``, the record of the
``reproduce`` invocations (configuration, seeds, versions, per-experiment status and wall
time). :func:`render_report` turns it into ``report.html``: one file, no external resource,
every figure embedded as a ``data:`` URI, every user-provided string HTML-escaped.

It only reads what is on disk, and imports nothing it finds there: the experiments it shows
are the ``registered`` names its caller gives (:mod:`boxhack.workflow.registry`); any other
sub-directory holding results, or a ``run.json`` record of an unregistered name, is listed as
"unknown experiment directory X: ignored". Figures are numbered once, 1..N, across the whole
report. Re-computing the summaries from the JSONL rows is the job of
:func:`boxhack.workflow.rebuild_report` (``boxhack report RUN_DIR``); seeing the report in a
headless browser is :mod:`boxhack.report.browser`'s.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from boxhack.errors import BoxhackError
from boxhack.infra.files import atomic_write, check_output_dir
from boxhack.infra.jsonl import latest_by_key, read_rows

__all__ = [
    "REPORT_FILE",
    "RUN_FILE",
    "check_report_out",
    "expected_figures",
    "find_experiments",
    "load_run",
    "load_summaries",
    "render_report",
    "rows_stats",
]

RUN_FILE = "run.json"
REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.json"
ROWS_FILE = "rows.jsonl"

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
         ".gif": "image/gif", ".webp": "image/webp"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"



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


def find_experiments(
    run_dir: str | Path, registered: Sequence[str]
) -> tuple[list[str], list[str]]:
    """``(known, unknown)`` experiment names of ``run_dir``, from names only (nothing imported).

    ``known``: the ``registered`` experiments (in that order) that ``run.json`` records or that
    have a sub-directory holding ``summary.json`` or ``rows.jsonl``. ``unknown``: every other
    such name (a sub-directory with results, or a ``run.json`` record), sorted; they are shown
    as ignored, never imported or rendered.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    records = run.get("experiments") if isinstance(run.get("experiments"), Mapping) else {}
    found: set[str] = {n for n in records if isinstance(n, str)}
    for sub in run_dir.iterdir():
        if sub.is_dir() and ((sub / SUMMARY_FILE).is_file() or (sub / ROWS_FILE).is_file()):
            found.add(sub.name)
    known = [n for n in registered if n in found]
    unknown = sorted(found - set(known))
    return known, unknown


def load_summaries(
    run_dir: str | Path, registered: Sequence[str]
) -> list[tuple[str, dict[str, Any] | None, str | None]]:
    """``[(name, summary or None, why it is missing or None)]`` for every registered experiment
    of the run (see :func:`find_experiments`)."""
    run_dir = Path(run_dir)
    out = []
    for name in find_experiments(run_dir, registered)[0]:
        value, err = _read_json(run_dir / name / SUMMARY_FILE)
        if value is not None and not isinstance(value, dict):
            value, err = None, f"{SUMMARY_FILE} holds a JSON {type(value).__name__}, not an object"
        out.append((name, value, err))
    return out


def rows_stats(rows_path: str | Path) -> dict[str, Any] | None:
    """Counts from an experiment's JSONL: rows, ok, errors, summed job seconds, first errors."""
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


def _section_head(name: str, title: str, record: Mapping[str, Any],
                  summary: Mapping[str, Any] | None, stats: Mapping[str, Any] | None) -> str:  # fmt: skip
    """The section's heading and its meta line (status, wall time, rows)."""
    status = record.get("status")
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
    return (f'<section id="{_e(_slug(name))}"><h2>{_e(title)}</h2>'
            f'<p class="meta">{" · ".join(meta)}</p>')


def _section_problems(record: Mapping[str, Any], stats: Mapping[str, Any] | None,
                      extra_error: str | None) -> list[str]:  # fmt: skip
    """Notes on what went wrong: the experiment's error, a failed re-summarise, job errors."""
    parts = []
    if record.get("status") == "skipped":
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
    return parts


def _section_body(summary: Mapping[str, Any], exp_dir: Path, run_dir: Path,
                  first_figure: int) -> tuple[list[str], int, int]:  # fmt: skip
    """Description, paper comparison, notes, tables, figures (numbered from
    ``first_figure``) and configuration; returns ``(parts, embedded, expected)``."""
    parts = []
    if summary.get("description"):
        parts.append(f'<p class="desc">{_e(summary["description"])}</p>')
    paper = _paper_rows(summary)
    if paper:
        parts.append("<h3>The paper vs boxhack</h3>")
        parts.append(_table(["The paper", "boxhack measured", "Note"], paper, cls="paper"))
    notes = summary.get("notes") or []
    if isinstance(notes, list) and notes:
        items = "".join(f"<li>{_e(_fmt(n))}</li>" for n in notes)
        parts.append(f'<h3>Notes</h3><ul class="notes">{items}</ul>')
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
            block, ok = _figure(exp_dir, run_dir, fig, first_figure + i)
            embedded += ok
            parts.append(block)
        parts.append("</div>")
    config = summary.get("config")
    if config:
        parts.append("<details><summary>configuration</summary>")
        parts.append(_kv_table(config) if isinstance(config, Mapping) else
                     f"<pre>{_e(_fmt(config))}</pre>")
        parts.append("</details>")
    return parts, embedded, len(figures)


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
    parts = [_section_head(name, title, record, summary, stats)]
    parts += _section_problems(record, stats, extra_error)
    if summary is None:
        if record.get("status") != "skipped":
            parts.append(_note(f"no summary: {missing}", "bad"))
        parts.append("</section>")
        return "".join(parts), 0, 0
    body, embedded, expected = _section_body(summary, run_dir / name, run_dir, first_figure)
    parts += body
    parts.append("</section>")
    return "".join(parts), embedded, expected


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


def _status_line(run: Mapping[str, Any], experiments: Mapping[str, Any], n_fig: int,
                 n_expected: int) -> str:  # fmt: skip
    """The header's one-line verdict: experiments ok / failed / skipped, figures embedded."""
    statuses = [str(r.get("status")) for r in experiments.values() if isinstance(r, Mapping)]
    n_err = sum(s in ("error", "interrupted") for s in statuses)
    n_skip = statuses.count("skipped")
    if not run:
        return _note("no run.json here (experiments were run one by one): configuration, "
                     "versions and run timings are not recorded; "
                     + f"{n_fig} of {n_expected} figures embedded",
                     "warn" if n_fig == n_expected else "bad")
    bits = [f"{statuses.count('ok')} experiment(s) ok"]
    if n_err:
        bits.append(f"{n_err} failed")
    if n_skip:
        bits.append(f"{n_skip} skipped (module not available)")
    bits.append(f"{n_fig} of {n_expected} figures embedded")
    if _clock(run, "wall_s") is not None:
        bits.append(f"total wall time {_seconds(_clock(run, 'wall_s'))}")
    kind = "bad" if n_err or n_fig < n_expected else ("warn" if n_skip else "good")
    return _note(" · ".join(bits), kind)


def _run_config(run: Mapping[str, Any]) -> list[str]:
    """Configuration and seeds of the run (left column of the run block)."""
    cfg = dict(run.get("config") if isinstance(run.get("config"), Mapping) else {})
    solve = cfg.get("solve_timeout")
    cfg["per-solve safety net"] = (
        f"{solve} s per solve (--solve-timeout); results come from evaluation budgets"
        if solve is not None else
        "each experiment's default, far above a solve's normal time (results come from "
        "evaluation budgets; see the solvers and combined configurations below)")
    parts = ["<h3>Configuration</h3>", _kv_table(cfg)]
    seeds = run.get("seeds")
    if isinstance(seeds, Mapping) and seeds:
        parts += ["<h3>Seeds</h3>", _kv_table(seeds)]
    return parts


def _run_timings(run: Mapping[str, Any], experiments: Mapping[str, Any]) -> list[str]:
    """Timings, versions and machine of the run (right column of the run block)."""
    timing_rows = [("started", _clock(run, "started")),
                   ("finished", _clock(run, "finished")),
                   ("total wall time (last invocation)", _seconds(_clock(run, "wall_s")))]
    for n, r in experiments.items():
        if isinstance(r, Mapping) and _clock(r, "wall_s") is not None:
            timing_rows.append((f"{n}", _seconds(_clock(r, "wall_s"))))
    parts = ["<h3>Timings</h3>", _kv_table(timing_rows)]
    for key, title in (("versions", "Versions"), ("machine", "Machine")):
        value = run.get(key)
        if isinstance(value, Mapping) and value:
            parts += [f"<h3>{title}</h3>", _kv_table(value)]
    return parts


def _invocations(run: Mapping[str, Any]) -> list[str]:
    invocations = run.get("invocations")
    if not isinstance(invocations, list) or len(invocations) <= 1:
        return []
    table = _table(
        ["started", "wall time", "experiments", "quick", "jobs", "scheduler"],
        [[_clock(i, "started"), _seconds(_clock(i, "wall_s")),
          ", ".join(map(str, i.get("experiments") or [])),
          (i.get("config") or {}).get("quick"), (i.get("config") or {}).get("n_jobs"),
          (i.get("config") or {}).get("scheduler")]
         for i in invocations if isinstance(i, Mapping)])  # fmt: skip
    return ["<details><summary>all invocations into this directory</summary>", table,
            "</details>"]


def _header(run_dir: Path, run: Mapping[str, Any], overview: list[list[Any]],
            paper_all: list[list[Any]], n_fig: int, n_expected: int,
            registered: Sequence[str], unknown: Sequence[str] = ()) -> str:  # fmt: skip
    name = run.get("name") or run_dir.name
    experiments = run.get("experiments") if isinstance(run.get("experiments"), Mapping) else {}
    experiments = {k: v for k, v in experiments.items() if k in registered}
    parts = [
        "<header>",
        f"<h1>boxhack: reproducing “Hack The Box” — run <code>{_e(name)}</code></h1>",
        ('<p class="meta">Hajj Ibrahim &amp; Nassar, “Hack The Box: Fooling Deep Learning '
        "Abstraction-Based Monitors”, attacking the Outside-the-Box monitors of Henzinger, "
        "Lukina &amp; Schilling (ECAI 2020). Every number below is re-measured by boxhack on the "
        f"embedded data; report rendered {_e(_now())}.</p>"),
        _status_line(run, experiments, n_fig, n_expected),
    ]
    for other in unknown:
        parts.append(_note(f"unknown experiment directory {other}: ignored (not one of "
                           f"boxhack's experiments: {', '.join(registered)}; nothing "
                           f"in it is read or run)", "warn"))
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
        parts += ['<div class="grid2"><div>', *_run_config(run), "</div><div>",
                  *_run_timings(run, experiments), "</div></div>", *_invocations(run)]
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


def _sections(run_dir: Path, records: Mapping[str, Any], errors: Mapping[str, str],
              summaries) -> tuple[list[str], list[list[Any]], list[list[Any]], int, int]:  # fmt: skip
    """Every experiment's section, the overview rows and the paper rows of all experiments;
    figures numbered across the report. Returns ``(sections, overview, paper_all, embedded,
    expected)``."""
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
    return sections, overview, paper_all, n_fig, n_expected


def render_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    registered: Sequence[str],
    errors: Mapping[str, str] | None = None,
) -> Path:
    """Render ``run_dir`` into one self-contained HTML file; returns its path.

    Args:
        run_dir: the run directory (experiment sub-directories, optional ``run.json``).
        out: where to write (default ``run_dir/report.html``).
        registered: the experiments to show, in order (the registry's names); every other
            name found in ``run_dir`` is listed as ignored.
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
    _, unknown = find_experiments(run_dir, registered)
    summaries = load_summaries(run_dir, registered)
    sections, overview, paper_all, n_fig, n_expected = _sections(
        run_dir, records, dict(errors or {}), summaries)
    if not summaries:
        sections.append(_note("this directory holds no experiment results yet "
                              "(no sub-directory with rows.jsonl or summary.json)", "bad"))
    head = _header(run_dir, run, overview, paper_all, n_fig, n_expected, registered, unknown)
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
    return atomic_write(out, page)


def expected_figures(run_dir: str | Path, registered: Sequence[str]) -> int:
    """How many figures the summaries of ``run_dir``'s registered experiments list."""
    return sum(len(summary.get("figures") or [])
               for _, summary, _ in load_summaries(run_dir, registered) if summary)  # fmt: skip


def check_report_out(out: str | Path | None) -> Path | None:
    """A report ``--out``: ``None``, or a file path whose directory can be written to.

    Raises :class:`BoxhackError` for a directory given as the file, or a directory that cannot
    be created or written (read-only, a file in the way).
    """
    if out is None:
        return None
    out = Path(out)
    if out.is_dir():
        raise BoxhackError(f"--out {out} is a directory; give the HTML file's path, e.g. "
                           f"{out / REPORT_FILE}")
    check_output_dir(out.parent, "--out's")
    return out
