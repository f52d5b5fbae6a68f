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
import logging
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
    # tifffile logs every damaged tag it reads around (warnings and errors); the
    # command's own one-line error says what is wrong with the file.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return _failed(args, EXIT_STOPPED, "stopped.")
    except UserError as exc:
        return _failed(args, EXIT_USAGE, f"error: {exc}")
    except GigapixelError as exc:
        # Core errors carry messages written for users: one line, no traceback.
        return _failed(args, EXIT_ERROR, f"error: {exc}")
    except OSError as exc:  # permission, no space, is-a-directory ... at any moment
        return _failed(args, EXIT_ERROR, f"error: {os_error_message(exc)}")


def _failed(args: argparse.Namespace, code: int, message: str) -> int:
    """Say why a command ended early and return its exit ``code``.

    The message goes to standard error (a stop is not said under ``--quiet``;
    an error always is); with ``--json`` the last line of standard output is
    still one JSON object, so a script reading it learns what happened.
    """
    from ._common import EXIT_STOPPED, print_json

    stopped = code == EXIT_STOPPED
    if not (stopped and getattr(args, "quiet", False)):
        print(f"napari-gigapixel {args.command}: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        error = None if stopped else message.removeprefix("error: ")
        report = {"command": args.command, "exit_code": code, "error": error}
        print_json({**report, "stopped": stopped})
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
