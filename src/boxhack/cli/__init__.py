"""The ``boxhack`` command: a thin argparse layer over the library.

One module per command group, each exposing ``register(subparsers)``; a handler receives the
parsed ``argparse.Namespace``, calls the library and prints, and returns an exit code. User
errors (``BoxhackError``) print one line and exit 2. Shared options: :mod:`boxhack.cli.common`.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from boxhack import __version__
from boxhack.cli import (
    attack,
    audit,
    data,
    experiment,
    monitor,
    report,
    reproduce,
    train,
    verify,
)
from boxhack.errors import BoxhackError

#: the command groups, in the order of --help
COMMANDS = (data, train, monitor, attack, audit, experiment, reproduce, report, verify)


class BoxhackParser(argparse.ArgumentParser):
    """Usage errors on one line (what was wrong, and where the help is), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = BoxhackParser(
        prog="boxhack",
        description=(
            "Attack, test and harden abstraction-based (Outside-the-Box) novelty monitors "
            "of neural networks."
        ),
    )
    parser.add_argument("--version", action="version", version=f"boxhack {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except BoxhackError as exc:
        print(f"boxhack: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("boxhack: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a file the user named: missing, unreadable, disk full, read-only
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"boxhack: error: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
