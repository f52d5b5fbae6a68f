"""``--mpp UM`` / ``--level N`` (mutually exclusive), shared by train, predict and evaluate."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import integer, number


def add_arguments(p: argparse.ArgumentParser, default: str) -> None:
    """Add the two flags; ``default`` says what happens without either."""
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--mpp",
        type=number("--mpp", 0, above=True),
        default=None,
        metavar="UM",
        help="work at UM microns per pixel: the slide's pyramid level within 10%%, else "
        f"an area mean of a finer level (default: {default})",
    )
    g.add_argument(
        "--level",
        type=integer("--level", 0),
        default=None,
        metavar="N",
        help="work at pyramid level N of the slide (0 = full resolution)",
    )


def from_args(args: argparse.Namespace) -> Any:
    """A :class:`~napari_gigapixel.core.resolution.Resolution`, or None when neither flag."""
    from ..core.resolution import Resolution

    if args.mpp is None and args.level is None:
        return None
    return Resolution(mpp=args.mpp, level=args.level)
