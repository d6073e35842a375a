"""Run every benchmark and write its JSON under benchmarks/results/ (``make bench``).

Each benchmark module exposes ``main(out_dir) -> dict``. Numbers are compared side by side
within one run (ratios), because the machines are shared and noisy.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("monitor", "attacks", "audit")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    out = HERE / "results"
    out.mkdir(parents=True, exist_ok=True)
    chosen = argv or list(BENCHMARKS)
    failed = []
    for name in chosen:
        if not (HERE / f"{name}.py").is_file():
            print(f"[bench] {name}: no benchmarks/{name}.py, skipped", file=sys.stderr)
            continue
        print(f"[bench] {name} ...", file=sys.stderr)
        started = time.perf_counter()
        try:
            _load(name).main(out)
        except Exception as exc:  # noqa: BLE001 - keep the other benchmarks' results
            failed.append(name)
            print(f"[bench] {name} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"[bench] {name} done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    index = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    print(json.dumps({k: v.get("summary", "see file") for k, v in index.items()}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
