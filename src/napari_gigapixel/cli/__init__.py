"""Command line: ``napari-gigapixel sample|pyramid|train|predict|evaluate|export|demo``.

Each sub-command lives in its own module under ``cli/`` exposing
``add_parser(subparsers)`` and ``run(args) -> int``. Errors that a user can
fix (:class:`UserError` and the core's ``*Error`` value errors) print one clear
line and exit non-zero; nothing else is printed as a traceback wall.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..core.errors import GigapixelError

#: Sub-command modules, in the order ``--help`` lists them.
COMMANDS = ("sample", "pyramid", "train", "predict", "evaluate", "export", "demo")


class UserError(Exception):
    """A problem with the user's input; printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-gigapixel",
        description="Whole-slide deep learning: make slides, train, predict, evaluate.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:  # a sub-command not installed in this build
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``napari-gigapixel`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("napari-gigapixel: interrupted.", file=sys.stderr)
        return 130
    except (UserError, GigapixelError, FileNotFoundError, FileExistsError) as exc:
        # Core errors carry messages written for users: one line, no traceback.
        print(f"napari-gigapixel {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
