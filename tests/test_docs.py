"""The worked examples of docs/architecture.md are the code the protocol tests run: a change to
either that the other does not follow fails here, so the page cannot drift from what works."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", doc, flags=re.DOTALL)


@pytest.mark.parametrize(
    ("name", "test_file"),
    [("class LinfBallMonitor", "test_monitor_protocol.py"),
     ("class RandomNoiseAttack", "test_attack_protocol.py")],
)
def test_architecture_examples_are_the_tested_code(name, test_file):
    blocks = [b for b in _python_blocks((ROOT / "docs/architecture.md").read_text()) if name in b]
    assert len(blocks) == 1, f"docs/architecture.md should show {name} once"
    start = blocks[0].index(name)
    start = blocks[0].rfind("\n\n", 0, start) + 2  # with its decorator, if any
    example = blocks[0][start:].strip()
    assert example in (ROOT / "tests" / test_file).read_text()
    assert len(example.splitlines()) < 50


def test_architecture_names_every_layer_of_the_contract():
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c["layers"] for c in contracts["contracts"] if c["type"] == "layers")
    doc = (ROOT / "docs/architecture.md").read_text()
    assert all(layer in doc for layer in layers)


def _conflict_checker():
    import importlib.machinery
    import importlib.util

    path = ROOT / "scripts" / "check-conflict-markers"
    loader = importlib.machinery.SourceFileLoader("check_conflict_markers", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_no_tracked_file_holds_a_merge_conflict_marker():
    """docs/abstractions.md once landed with `<<<<<<< HEAD` ... `>>>>>>> h13e` in it."""
    import shutil

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    checker = _conflict_checker()
    hits = {str(p.relative_to(ROOT)): checker.markers(p.read_text(errors="replace"))
            for p in checker.tracked_files(ROOT) if p.is_file()
            and b"\0" not in p.read_bytes()[:8192]}
    assert {k: v for k, v in hits.items() if v} == {}


def test_the_conflict_checker_finds_markers_and_spares_underlines(tmp_path):
    checker = _conflict_checker()
    conflicted = "a\n<<<<<<< HEAD\nours\n=======\ntheirs\n>>>>>>> branch\nb\n"
    assert [n for n, _ in checker.markers(conflicted)] == [2, 4, 6]
    assert checker.markers("Title\n=======\n\ntext with <<<<<<<< in it\n") == []
    bad = tmp_path / "bad.md"
    bad.write_text(conflicted)
    assert checker.main([str(bad)]) == 1
    assert checker.main([str(tmp_path / "missing.md")]) == 0
