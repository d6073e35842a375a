"""The one table of boxhack's experiments: each name pairs a declaration with its presenter.

:data:`EXPERIMENTS` maps each experiment's name (its sub-directory in a run directory) to an
:class:`Entry`: the module declaring its ``EXPERIMENT`` (:class:`boxhack.experiments.spec.
Experiment`: options, configure, plan, job, summarise) and the module declaring its
``PRESENTER`` (:class:`boxhack.report.present.Presenter`: draw, describe). The table's order is
the run and report order. ``reproduce``, ``report`` and the CLI's ``boxhack experiment NAME``
commands all read it; nothing else names an experiment.

A run directory is data, and data never names code: an experiment's sub-directory name, or the
``"module"`` a ``run.json`` records, is only *looked up* here (:func:`is_registered`). A name
that is not a key of :data:`EXPERIMENTS` is an error or is reported as ignored, and is never
imported, so a results folder from anywhere cannot run code (a directory ``this.zen/`` once
printed the Zen of Python; a module file in the run directory once ran).

The modules of the table are fixed strings, imported on first use (:func:`load`) so that one
experiment whose module is broken fails alone, with an error that names it (``reproduce``
records it and runs the others), instead of taking every command down with it. An unknown
name, a module that cannot be imported, or one that does not declare ``EXPERIMENT`` /
``PRESENTER`` is an error, never a silent skip.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from boxhack.errors import BoxhackError
from boxhack.experiments.spec import Experiment
from boxhack.report.present import Presenter

__all__ = ["EXPERIMENTS", "Entry", "Registered", "declaration", "is_registered", "load", "names"]


@dataclass(frozen=True)
class Entry:
    """Where an experiment's two halves are declared (module paths, fixed in this file)."""

    experiment: str  # the module declaring EXPERIMENT
    presenter: str  # the module declaring PRESENTER
    summary: str = ""  # one line for `boxhack experiment --help` (modules not loaded)


@dataclass(frozen=True)
class Registered:
    """A registered experiment, loaded: its declaration and its presenter."""

    name: str
    experiment: Experiment
    presenter: Presenter
    module: str  # the module declaring EXPERIMENT (recorded in run.json)

    @property
    def title(self) -> str:
        return self.experiment.title


EXPERIMENTS: dict[str, Entry] = {
    "novelty": Entry("boxhack.experiments.novelty", "boxhack.report.novelty",
                     "the networks and the monitor's novelty detection (Outside the Box)"),
    "solvers": Entry("boxhack.experiments.solvers", "boxhack.report.solvers",
                     "the SciPy optimisation attacks, solver by solver (paper figures 5-7)"),
    "adversarial": Entry("boxhack.experiments.adversarial", "boxhack.report.adversarial",
                         "adversarial samples against classifier and monitor (paper figure 8)"),
    "combined": Entry("boxhack.experiments.combined", "boxhack.report.combined",
                      "adversarial samples repaired to pass the monitor (paper figure 9)"),
    "gradient": Entry("boxhack.experiments.gradient", "boxhack.report.gradient",
                      "monitor-aware gradient attacks: robustness curves (beyond the paper)"),
    "abstractions": Entry("boxhack.experiments.abstractions", "boxhack.report.abstractions",
                          "every abstraction compared: novelty detection vs robustness"),
}


def names() -> tuple[str, ...]:
    """The registered experiment names, in run and report order."""
    return tuple(EXPERIMENTS)


def is_registered(name: object) -> bool:
    return isinstance(name, str) and name in EXPERIMENTS


def check_name(name: object) -> str:
    """``name`` if it is registered; otherwise one error listing the experiments."""
    if not is_registered(name):
        raise BoxhackError(
            f"unknown experiment {name!r}; the experiments are: {', '.join(EXPERIMENTS)}"
        )
    return str(name)


def _attribute(name: str, module_path: str, attribute: str, kind: type):
    try:
        module = importlib.import_module(module_path)
    except Exception as exc:
        raise BoxhackError(
            f"experiment {name!r}: its module {module_path} cannot be imported "
            f"({type(exc).__name__}: {exc}); the boxhack installation is broken, reinstall it"
        ) from exc
    value = getattr(module, attribute, None)
    if not isinstance(value, kind):
        raise BoxhackError(
            f"experiment {name!r}: {module_path} does not follow the experiment contract: it "
            f"needs {attribute} = {kind.__name__}(...)"
        )
    return value


def declaration(name: str) -> Experiment:
    """Registered experiment ``name``'s declaration alone (what the CLI's flags come from;
    the presenter, and with it the plotting libraries, is not imported)."""
    entry = EXPERIMENTS[check_name(name)]
    experiment = _attribute(name, entry.experiment, "EXPERIMENT", Experiment)
    if experiment.name != name:
        raise BoxhackError(f"experiment {name!r}: {entry.experiment}.EXPERIMENT is named "
                           f"{experiment.name!r}; it must be named after its registry entry")
    return experiment


def load(name: str) -> Registered:
    """Registered experiment ``name``: its declaration and presenter.

    Raises :class:`BoxhackError` for a name that is not registered (nothing is imported), and
    for a registered module that cannot be imported or does not declare what it must (the
    table is fixed: that is a broken installation, never something to skip quietly).
    """
    experiment = declaration(name)
    entry = EXPERIMENTS[name]
    presenter = _attribute(name, entry.presenter, "PRESENTER", Presenter)
    return Registered(name=name, experiment=experiment, presenter=presenter,
                      module=entry.experiment)  # fmt: skip
