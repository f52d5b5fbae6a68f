"""The command-line contract, in one place: shared flags, ROI form, exit codes.

Every sub-command builds its common flags here, so one concept has one form
in every command (``docs/cli.md`` is the user-facing statement):

* ``--roi Y0,X0,Y1,X1``: top-left then bottom-right corner, level-0 pixels,
  half-open (:func:`roi`);
* ``--overwrite``: without it no command replaces an existing output
  (:func:`add_overwrite`);
* ``--json`` (the last line of standard output is one JSON object) and
  ``--quiet`` (no progress bar, no messages on standard error) on every
  command (:func:`add_report`);
* ``--precision auto|mixed|float32`` wherever the model runs
  (:func:`add_precision`);
* exit codes (:data:`EXIT_OK` ...): 0 done, 1 error (bad input, a failed
  job, an OS error), 2 usage (argparse, or flags that contradict each other),
  130 stopped (Ctrl-C or a stopped job; nothing half-written is left).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

#: Exit codes of every command.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_STOPPED = 130

#: ``--precision`` choices and what they mean for ``mixed_precision`` configs.
PRECISIONS = {"auto": "auto", "mixed": True, "float32": False}


def roi(text: str) -> tuple[int, int, int, int]:
    """Parse ``Y0,X0,Y1,X1`` (level-0 pixels, top-left then bottom-right corner).

    An argparse ``type``: a malformed value is a usage error (exit 2) that
    shows the expected form.
    """
    try:
        parts = tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--roi wants Y0,X0,Y1,X1 integers (level-0 pixels), got {text!r}"
        ) from exc
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--roi wants four numbers Y0,X0,Y1,X1, got {text!r}")
    y0, x0, y1, x1 = parts
    if y0 < 0 or x0 < 0 or y1 <= y0 or x1 <= x0:
        raise argparse.ArgumentTypeError(
            f"--roi {text}: wants 0 <= Y0 < Y1 and 0 <= X0 < X1 (top-left, then bottom-right)"
        )
    return parts  # type: ignore[return-value]


def number(name: str, lo: float | None = None, hi: float | None = None, *, above: bool = False):
    """An argparse ``type`` for a finite number within ``[lo, hi]`` (``(lo, hi]`` if ``above``).

    A value the flag can never take (NaN, infinity, out of its range) is a
    usage error (exit 2), in every command alike; values that fail against the
    data (a level the slide lacks) are checked later, exit 1.
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{name} wants a number, got {text!r}") from exc
        low_bad = lo is not None and (value <= lo if above else value < lo)
        if not math.isfinite(value) or low_bad or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{name} must be {_range(lo, hi, above)}, got {text}")
        return value

    return parse


def integer(name: str, lo: int | None = None, hi: int | None = None):
    """An argparse ``type`` for a whole number within ``[lo, hi]`` (usage error outside)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{name} wants a whole number, got {text!r}") from exc
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(
                f"{name} must be a whole number {_range(lo, hi, False, finite=False)}, got {value}"
            )
        return value

    return parse


def _range(lo, hi, above: bool, finite: bool = True) -> str:
    what = "a finite number " if finite else ""
    if lo is not None and hi is not None:
        return f"{what}{'>' if above else '>='} {lo:g} and <= {hi:g}".strip()
    if lo is not None:
        return f"{what}{'>' if above else '>='} {lo:g}".strip()
    if hi is not None:
        return f"{what}<= {hi:g}".strip()
    return what.strip() or "a number"


def positive_float(name: str):
    """An argparse ``type`` for a finite number > 0 (NaN, inf and negatives refused)."""
    return number(name, 0, above=True)


def positive_int(name: str):
    """An argparse ``type`` for an integer >= 1."""
    return integer(name, 1)


def add_overwrite(p: argparse.ArgumentParser, what: str = "the output") -> None:
    """``--overwrite``: the only way any command replaces an existing output."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} if it exists (otherwise the command refuses, exit 1)",
    )


def add_report(p: argparse.ArgumentParser) -> None:
    """``--json`` and ``--quiet``, on every command."""
    p.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON object on the last line of standard output",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress bar and no messages on standard error"
    )


def add_precision(p: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--precision auto|mixed|float32`` (bfloat16 compute where 'mixed')."""
    p.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default=default,
        help="'mixed': bfloat16 compute; 'auto': mixed where the CPU has native bf16; "
        "'float32' (default: %(default)s)",
    )


def add_roi(p: argparse.ArgumentParser, help_text: str, *, repeat: bool = False) -> None:
    """``--roi Y0,X0,Y1,X1`` (once, or repeated per slide)."""
    p.add_argument(
        "--roi",
        type=roi,
        action="append" if repeat else "store",
        default=None,
        metavar="Y0,X0,Y1,X1",
        help=help_text + " (level-0 pixels: top-left, then bottom-right corner)",
    )


def print_json(result: dict[str, Any]) -> None:
    """Print ``result`` as one JSON line (NaN and inf become null: strict JSON)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    print(json.dumps(clean(result), default=str))


def stopped_exit(what: str, quiet: bool = False) -> int:
    """Say a job was stopped (standard error) and return :data:`EXIT_STOPPED`."""
    import sys

    if not quiet:
        print(f"napari-gigapixel {what}: stopped.", file=sys.stderr)
    return EXIT_STOPPED
