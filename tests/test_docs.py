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
