"""``napari-gigapixel pyramid``: write an OME-Zarr pyramid cache of a slide.

Converts any slide that napari-gigapixel reads (TIFF, OME-TIFF, SVS, NDPI,
zarr, OpenSlide formats) into an OME-Zarr (v0.4, zarr format 2) pyramid,
tile by tile with bounded memory, written atomically. Refuses to replace an
existing output unless --overwrite is given.
"""

from __future__ import annotations

import argparse

from ._common import EXIT_OK, add_overwrite, add_report, positive_int, print_json, stopped_exit


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``pyramid`` sub-command."""
    p = sub.add_parser(
        "pyramid",
        help="write an OME-Zarr pyramid cache of a slide",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("slide", help="slide to convert (file or zarr directory)")
    p.add_argument("out", help="output OME-Zarr directory, e.g. slide.ome.zarr")
    add_overwrite(p, "OUT")
    p.add_argument(
        "--chunk",
        type=positive_int("--chunk"),
        default=1024,
        help="chunk side of the output store in pixels (default: %(default)s)",
    )
    p.add_argument(
        "--min-size",
        type=positive_int("--min-size"),
        default=1024,
        help="stop adding levels at this short side (default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=positive_int("--workers"),
        default=None,
        help="threads (default: CPU count)",
    )
    add_report(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the pyramid with a tqdm progress bar; 0 on success, 130 when stopped."""
    from ..core.preflight import check_input, check_output
    from ..core.pyramid import build_pyramid
    from ._progress import follow

    check_input(args.slide, "slide")
    check_output(args.out, overwrite=args.overwrite, folder=True, what="pyramid")

    events = build_pyramid(
        args.slide,
        args.out,
        tile=args.chunk,
        min_size=args.min_size,
        overwrite=args.overwrite,
        workers=args.workers,
    )
    finished = follow(events, unit="tile", desc="pyramid", quiet=args.quiet)
    if finished is None or finished.stopped:
        return stopped_exit("pyramid", args.quiet)
    result = finished.result
    if args.json:
        # "out", as every other command names what it wrote ("path" kept for old scripts).
        print_json({"out": result["path"], **result})
    elif not args.quiet:
        print(
            f"wrote {result['path']}: {result['levels']} levels, level 0 "
            f"{result['shape'][0]} x {result['shape'][1]}, {result['seconds']:.1f} s"
        )
    return EXIT_OK
