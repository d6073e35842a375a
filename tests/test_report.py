"""The HTML report: every figure embedded, tables and the paper's claims present, user strings
escaped, re-rendered from the JSONL alone, and seen by a headless browser as a person would."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from boxhack.cli import main
from boxhack.errors import BoxhackError
from boxhack.experiments import spec
from boxhack.experiments.spec import Settings
from boxhack.report.browser import CHROMIUM_HINT, find_chromium, page_images
from boxhack.workflow import check_report, rebuild_report, render_report, reproduce, run

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import report_fakes  # needs TESTS_DIR on sys.path


def images(html_text: str) -> list[dict[str, str]]:
    return page_images(html_text)


def decoded(img: dict[str, str]) -> bytes:
    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix)
    return base64.b64decode(img["src"][len(prefix):], validate=True)


@pytest.fixture
def fake_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    report_fakes.use(monkeypatch, "fake")
    out = tmp_path / "run"
    reproduce(out, n_jobs=1, progress=False, solve_timeout=7, seed=3)
    return out


def test_report_embeds_every_figure_tables_and_paper_claims(fake_run: Path) -> None:
    report = fake_run / "report.html"
    text = report.read_text(encoding="utf-8")
    summary = json.loads((fake_run / "fake" / "summary.json").read_text())

    imgs = images(text)
    assert [i["data-figure"] for i in imgs] == [f["path"] for f in summary["figures"]]
    for img, fig in zip(imgs, summary["figures"], strict=True):
        assert decoded(img) == (fake_run / "fake" / fig["path"]).read_bytes()
    # self-contained: no resource is fetched from anywhere
    assert not re.search(r'(src|href)="(?!data:|#)', text)
    assert "<link" not in text and "<script" not in text

    # the table, the paper-vs-measured rows (overview and section), configuration, timings
    assert "Squares &amp; &lt;roots&gt;" in text
    assert "<td class=\"num\">16</td>" in text  # 4 squared
    assert text.count("max square 16") == 2
    assert "The paper's results beside boxhack's" in text
    assert "solve_timeout" in text and "7" in text
    assert "Versions" in text and "torch" in text
    assert "1 experiment(s) ok" in text and "2 of 2 figures embedded" in text


def test_report_escapes_user_strings(fake_run: Path) -> None:
    text = (fake_run / "report.html").read_text(encoding="utf-8")
    assert "<script>alert" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "Fake &lt;b&gt;experiment&lt;/b&gt; &amp; &quot;quotes&quot;" in text
    assert "<b>experiment</b>" not in text and "<b>bold?</b>" not in text
    assert "<em>per x</em>" not in text and "&lt;em&gt;per x&lt;/em&gt;" in text


def test_reproduce_passes_its_settings_to_the_experiment(fake_run: Path) -> None:
    given = json.loads((fake_run / "fake" / "given.json").read_text())
    # every experiment gets the settings (solve_timeout too: those without solves ignore it)
    # and every option of its own, at its default unless given
    assert given == {"quick": False, "n_jobs": 1, "seed": 3, "scheduler": None,
                     "solve_timeout": 7.0, "models_root": str(fake_run / "models"),
                     "options": {"n": 5, "extra": None}}
    run = json.loads((fake_run / "run.json").read_text())
    assert run["experiments"]["fake"]["status"] == "ok"
    assert run["experiments"]["fake"]["module"] == "report_fakes.fake"
    assert run["experiments"]["fake"]["timing"]["wall_s"] > 0
    assert run["config"]["seed"] == 3 and run["versions"]["boxhack"]


def test_reproduce_passes_the_scheduler_and_options(tmp_path: Path, monkeypatch) -> None:
    # the campaign runs in-process whatever it is given; only the pass-through is checked
    report_fakes.use(monkeypatch, "fake")
    campaigns = []
    real = spec.run_campaign

    def in_process(jobs, fn, out, **kwargs):
        campaigns.append(kwargs)
        return real(jobs, fn, out, **{**kwargs, "scheduler": None, "n_jobs": 1})

    monkeypatch.setattr(spec, "run_campaign", in_process)
    reproduce(tmp_path, scheduler="tcp://127.0.0.1:8786", quick=True,
              progress=False, options={"fake": {"n": 2, "extra": 1}})
    assert [c["scheduler"] for c in campaigns] == ["tcp://127.0.0.1:8786"]
    given = json.loads((tmp_path / "fake" / "given.json").read_text())
    assert given["scheduler"] == "tcp://127.0.0.1:8786" and given["quick"] is True
    assert given["options"] == {"n": 2, "extra": 1}
    summary = json.loads((tmp_path / "fake" / "summary.json").read_text())
    assert len(summary["tables"][0]["rows"]) == 2
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["machine"]["workers"] == "tcp://127.0.0.1:8786"


def test_missing_figure_is_flagged_not_dropped(fake_run: Path) -> None:
    (fake_run / "fake" / "sub" / "squares.png").unlink()
    report = render_report(fake_run)
    text = report.read_text(encoding="utf-8")
    assert len(images(text)) == 1
    assert "figure missing: sub/squares.png (file not found)" in text
    assert "1 of 2 figures embedded" in text
    result = check_report(report, browser=False)
    assert not result["ok"]
    assert any("missing" in p for p in result["problems"])
    # a file that is not a PNG is not embedded either
    (fake_run / "fake" / "sub" / "squares.png").write_bytes(b"GIF89a not a png")
    text = render_report(fake_run).read_text(encoding="utf-8")
    assert "not a PNG file" in text and len(images(text)) == 1


def test_figure_paths_outside_the_run_are_refused(fake_run: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    shutil.copy(fake_run / "fake" / "curves.png", secret)
    path = fake_run / "fake" / "summary.json"
    summary = json.loads(path.read_text())
    summary["figures"].append({"path": "../../secret.png", "caption": "escape"})
    path.write_text(json.dumps(summary))
    text = render_report(fake_run).read_text(encoding="utf-8")
    assert len(images(text)) == 2
    assert "outside the run directory" in text


def test_report_cli_rerenders_from_the_jsonl_alone(fake_run: Path) -> None:
    before = json.loads((fake_run / "fake" / "summary.json").read_text())
    for p in [*fake_run.glob("fake/**/*.png"), fake_run / "fake" / "summary.json",
              fake_run / "report.html"]:
        p.unlink()
    assert main(["report", str(fake_run)]) == 0
    after = json.loads((fake_run / "fake" / "summary.json").read_text())
    before.pop("timing"), after.pop("timing")
    assert after == before
    text = (fake_run / "report.html").read_text(encoding="utf-8")
    assert len(images(text)) == 2
    for img in images(text):
        assert decoded(img).startswith(b"\x89PNG\r\n\x1a\n")


def test_an_experiment_option_it_does_not_have_is_refused(tmp_path: Path, monkeypatch) -> None:
    report_fakes.use(monkeypatch, "fake")
    with pytest.raises(BoxhackError, match="has no option.*nope; its options: n, extra"):
        run("fake", tmp_path / "run", options={"nope": 1})
    assert not (tmp_path / "run" / "fake").exists()  # refused before anything was written
    with pytest.raises(BoxhackError, match="unknown experiment 'fak'"):
        run("fak", tmp_path / "run")


def test_rebuild_report_shows_a_failing_summarise(fake_run: Path) -> None:
    rows = fake_run / "fake" / "rows.jsonl"
    rows.write_text(rows.read_text().replace('"square":', '"squared":'))  # summarise will fail
    report, errors = rebuild_report(fake_run)
    assert set(errors) == {"fake"} and "KeyError" in errors["fake"]
    assert "re-summarising from the JSONL failed: KeyError" in report.read_text(encoding="utf-8")
    assert main(["report", str(fake_run)]) == 1


def test_report_of_a_missing_or_empty_directory(tmp_path: Path) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    text = render_report(tmp_path / "empty").read_text(encoding="utf-8")
    assert "holds no experiment results yet" in text


def test_report_without_run_record(tmp_path: Path, monkeypatch) -> None:
    """Experiments run one by one (no run.json): the report still renders, and says so."""
    report_fakes.use(monkeypatch, "fake")
    run("fake", tmp_path, Settings(n_jobs=1, progress=False))
    text = render_report(tmp_path).read_text(encoding="utf-8")
    assert "no run.json here" in text and len(images(text)) == 2


@pytest.mark.skipif(find_chromium() is None, reason=f"no Chromium: {CHROMIUM_HINT}")
def test_report_as_seen_in_headless_chromium(fake_run: Path) -> None:
    from PIL import Image

    png = fake_run / "report.png"
    result = check_report(fake_run / "report.html", png, width=1400)
    assert result["ok"], result["problems"]
    assert result["images"] == 2 and result["expected_figures"] == 2
    with Image.open(png) as im:
        assert im.size[0] == 1400 and im.size[1] == result["screenshot_height"] > 900
    # and the browser check does catch a figure it cannot display
    text = (fake_run / "report.html").read_text(encoding="utf-8")
    broken = fake_run / "broken.html"
    good = base64.b64encode((fake_run / "fake" / "curves.png").read_bytes()).decode()
    broken.write_text(text.replace(good, base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
                                   .decode()), encoding="utf-8")
    bad = check_report(broken, fake_run / "broken.png")
    assert not bad["ok"]
    assert any("could not decode" in p or "does not decode" in p for p in bad["problems"])


# --- no code from data ----------------------------------------------------------------------

EVIL = """from pathlib import Path
with open({sentinel!r}, "a") as fh:
    fh.write(__name__ + "\\n")
"""


@pytest.mark.parametrize("summarise", [True, False])
def test_report_imports_nothing_named_by_the_run_directory(
    fake_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, summarise: bool
) -> None:
    """Module files, dotted directories and run.json "module" fields are data: never imported."""
    sentinel = tmp_path / "imported.txt"
    code = EVIL.format(sentinel=str(sentinel))
    # importable modules in the run directory, which is put on sys.path (as the current
    # directory is with `python -m`): anything that imported a name found here would run them
    monkeypatch.syspath_prepend(str(fake_run))
    (fake_run / "evil_in_run.py").write_text(code)
    (fake_run / "evil_record.py").write_text(code)
    (fake_run / "evil_pkg").mkdir()
    (fake_run / "evil_pkg" / "__init__.py").write_text(code)
    rows = (fake_run / "fake" / "rows.jsonl").read_bytes()
    for dotted in ("evil_pkg.sub", "this.zen"):  # importing "a.b" runs a first
        (fake_run / dotted).mkdir()
        (fake_run / dotted / "rows.jsonl").write_bytes(rows)
    run_path = fake_run / "run.json"
    run = json.loads(run_path.read_text())
    run["experiments"]["fake"]["module"] = "evil_in_run"  # a registered name, another module
    run["experiments"]["evil_record"] = {"module": "evil_record", "status": "error"}
    run["order"] = ["evil_record", "fake", "evil_pkg.sub"]
    run_path.write_text(json.dumps(run))
    before = set(sys.modules)

    argv = ["report", str(fake_run)] + ([] if summarise else ["--no-summarise"])
    assert main(argv) == 0

    new = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in
                 ("evil_in_run", "evil_record", "evil_pkg", "this"))
    assert new == [] and not sentinel.exists()
    out, err = capsys.readouterr()
    assert "Beautiful is better than ugly" not in out + err
    for name in ("evil_pkg.sub", "this.zen", "evil_record"):
        assert f"boxhack: unknown experiment directory {name}: ignored" in err
    text = (fake_run / "report.html").read_text(encoding="utf-8")
    for name in ("evil_pkg.sub", "this.zen", "evil_record"):
        assert f"unknown experiment directory {_html_escape(name)}: ignored" in text
    assert len(images(text)) == 2  # the registered experiment still renders, figures and all
    assert "1 experiment(s) ok" in text  # the unknown record's "error" is not counted


def _html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_a_registered_experiment_whose_module_is_missing_is_an_error(
    fake_run: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    report_fakes.use(monkeypatch, "fake", "missing")
    (fake_run / "missing").mkdir()
    shutil.copy(fake_run / "fake" / "rows.jsonl", fake_run / "missing" / "rows.jsonl")
    report, errors = rebuild_report(fake_run)
    assert set(errors) == {"missing"}
    assert "its module report_fakes.missing cannot be imported" in errors["missing"]
    assert "cannot be imported" in report.read_text(encoding="utf-8")
    assert main(["report", str(fake_run)]) == 1
    assert "could not re-summarise missing" in capsys.readouterr().err


def test_figures_are_numbered_once_across_the_report(tmp_path: Path, monkeypatch) -> None:
    report_fakes.use(monkeypatch, "fake", "other")
    report = reproduce(tmp_path / "run", n_jobs=1, progress=False)
    text = report.read_text(encoding="utf-8")
    imgs = images(text)
    assert [i["data-number"] for i in imgs] == ["1", "2", "3", "4"]
    assert [i["data-figure"] for i in imgs] == ["curves.png", "sub/squares.png"] * 2
    captions = re.findall(r"<b>Figure (\d+)\.</b>", text)
    assert captions == ["1", "2", "3", "4"]
    # the second section's figures follow the first's, they do not restart at 1
    other = text[text.index('id="exp-other"'):]
    assert re.findall(r"<b>Figure (\d+)\.</b>", other) == ["3", "4"]
    # a missing figure keeps its number (the next one does not take it)
    (tmp_path / "run" / "fake" / "sub" / "squares.png").unlink()
    text = render_report(tmp_path / "run").read_text(encoding="utf-8")
    assert "figure missing: sub/squares.png (file not found) (Figure 2)" in text
    assert [i["data-number"] for i in images(text)] == ["1", "3", "4"]


# --- clear errors for bad paths ---------------------------------------------------------------


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("boxhack: error: ") and "Traceback" not in err
    return lines[0]


def unwritable_dir(tmp_path: Path) -> Path:
    """An existing directory this process cannot create files in."""
    if os.geteuid() != 0:
        d = tmp_path / "readonly"
        d.mkdir()
        d.chmod(0o555)
        return d
    d = Path("/proc/self")  # root ignores permission bits; /proc refuses new files to anyone
    if not d.is_dir():
        pytest.skip("running as root without /proc: no directory root cannot write into")
    return d


def test_report_paths_that_cannot_work_are_one_line_errors(
    fake_run: Path, tmp_path: Path, capsys
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["report", str(fake_run), "--out", str(tmp_path)], "is a directory"),
        (["report", str(fake_run), "--out", str(a_file / "r.html")], "is a file"),
        (["report", str(a_file)], "is a file"),
        (["report", str(fake_run), "--no-summarise", "--out", str(a_file / "r.html")],
         "is a file"),
        (["report", str(fake_run), "--out", str(unwritable_dir(tmp_path) / "r.html")],
         "writ"),
        (["report", str(unwritable_dir(tmp_path))], "writ"),
    ]
    before = (fake_run / "report.html").read_bytes()
    for argv, needle in cases:
        assert main(argv) == 2, argv
        assert needle in one_error_line(capsys.readouterr().err), argv
    assert (fake_run / "report.html").read_bytes() == before
