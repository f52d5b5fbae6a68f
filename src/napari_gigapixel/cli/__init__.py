"""Command line: ``napari-gigapixel sample|pyramid|train|predict|evaluate|export|demo``.

Each sub-command lives in its own module under ``cli/`` exposing
``add_parser(subparsers)`` and ``run(args) -> int``, and takes its shared flags
from :mod:`._common` (the contract: ``docs/cli.md``). Exit codes: 0 done,
1 error (the core's ``GigapixelError`` and OS errors: one line naming the file
and the cause, no traceback), 2 usage (argparse, :class:`UserError`), 130
stopped.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..core.errors import GigapixelError

#: Sub-command modules, in the order ``--help`` lists them.
COMMANDS = ("sample", "pyramid", "train", "predict", "evaluate", "export", "demo")


class UserError(Exception):
    """Flags that cannot go together or are malformed; one line, exit status 2 (usage)."""


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
    from ..core.preflight import os_error_message
    from ._common import EXIT_ERROR, EXIT_STOPPED, EXIT_USAGE

    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 here (argparse)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"napari-gigapixel {args.command}: stopped.", file=sys.stderr)
        return EXIT_STOPPED
    except UserError as exc:
        print(f"napari-gigapixel {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except GigapixelError as exc:
        # Core errors carry messages written for users: one line, no traceback.
        print(f"napari-gigapixel {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # permission, no space, is-a-directory ... at any moment
        print(f"napari-gigapixel {args.command}: error: {os_error_message(exc)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
