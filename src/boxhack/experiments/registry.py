"""The fixed registry of boxhack's experiments: the only modules reproduce and report import.

A run directory is data, and data never names code: an experiment's sub-directory name, or the
``"module"`` a ``run.json`` records, is only *looked up* here. A name that is not a key of
:data:`EXPERIMENTS` is reported ("unknown experiment directory X: ignored") and never imported,
so a results folder from anywhere cannot run code (a directory ``this.zen/`` once printed the
Zen of Python; a module file in the run directory once ran).

:data:`EXPERIMENTS` maps each experiment's name (its sub-directory in a run directory, its
``NAME``) to the module that implements it; the mapping's order is the run and report order.
Every module follows the experiment contract: ``NAME``, ``TITLE``, ``run(out_dir, ...)`` and
``summarise(out_dir)``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from boxhack.errors import BoxhackError

__all__ = ["EXPERIMENTS", "experiment_module", "is_registered", "names"]

EXPERIMENTS: dict[str, str] = {
    "novelty": "boxhack.experiments.novelty",
    "solvers": "boxhack.experiments.solvers",
    "adversarial": "boxhack.experiments.adversarial",
    "combined": "boxhack.experiments.combined",
    "gradient": "boxhack.experiments.gradient",
}


def names() -> tuple[str, ...]:
    """The registered experiment names, in run and report order."""
    return tuple(EXPERIMENTS)


def is_registered(name: object) -> bool:
    return isinstance(name, str) and name in EXPERIMENTS


def experiment_module(name: str) -> ModuleType:
    """The module of registered experiment ``name``.

    Raises :class:`BoxhackError` for a name that is not registered (nothing is imported) and
    for a registered module that cannot be imported (the registry is fixed: that is a broken
    installation, never something to skip quietly).
    """
    if not is_registered(name):
        raise BoxhackError(
            f"unknown experiment {name!r}; the experiments are: {', '.join(EXPERIMENTS)}"
        )
    module_path = EXPERIMENTS[name]
    try:
        return importlib.import_module(module_path)
    except Exception as exc:
        raise BoxhackError(
            f"experiment {name!r}: its module {module_path} cannot be imported "
            f"({type(exc).__name__}: {exc}); the boxhack installation is broken, reinstall it"
        ) from exc
