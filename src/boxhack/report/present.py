"""How an experiment is presented: its figures and the sentences about its results.

Presentation lives here, in :mod:`boxhack.report`, and nowhere else. Each experiment has a
:class:`Presenter`; :mod:`boxhack.workflow` pairs it with the experiment's declaration
(:class:`boxhack.experiments.spec.Experiment`) in the registry.

- ``draw(config, rows, summary, exp_dir) -> [{"path": "fig.png", "caption": "..."}]`` writes
  the figures into ``exp_dir`` (atomically) from the rows and the summary data alone;
- ``describe(config, summary) -> {"description": str, "paper": [{"claim", "measured",
  "note"}], "notes": [str]}``: every sentence that states a result is generated from the
  numbers (a tie is a tie; only what ran is named).

Captions must describe what is plotted (the network, monitor and budgets that ran).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Presenter"]

Figure = dict[str, str]


@dataclass(frozen=True)
class Presenter:
    draw: Callable[[dict, list[dict], dict, Path], list[Figure]]
    describe: Callable[[dict, dict], dict[str, Any]]
