"""``napari-gigapixel export``: a prediction or a mask as QuPath GeoJSON polygons.

Traces the predicted mask (or any mask file) into a FeatureCollection of
Polygon features with holes, class "Tissue", in level-0 pixel coordinates as
QuPath imports them (File > Import objects, or drag the file onto the slide).
The outline is traced at the mask's own level (a prediction's along its
probability's threshold line), or a coarser one for masks past 16 Mpx, and
simplified within --tolerance level-0 pixels. OUT is replaced only
with --overwrite.
"""

from __future__ import annotations

import argparse

from ._common import EXIT_OK, add_overwrite, add_report, number, print_json, stopped_exit


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``export`` sub-command."""
    p = sub.add_parser(
        "export",
        help="export a prediction or a mask as QuPath GeoJSON (polygons with holes)",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("source", metavar="PRED", help="prediction folder from 'predict', or a mask")
    p.add_argument("out", metavar="OUT", help="GeoJSON file to write, e.g. slide_tissue.geojson")
    p.add_argument(
        "--slide",
        default=None,
        help="the slide, for a mask file whose level is not recorded in it (gives its size)",
    )
    p.add_argument(
        "--kind",
        choices=("dense", "scribble"),
        default=None,
        help="mask file labels: dense (nonzero = tissue) or scribble (1 background, "
        "2 tissue; both are exported) (default: what the file records, else dense)",
    )
    p.add_argument(
        "--tolerance",
        type=number("--tolerance", 0),
        default=None,
        help="simplification tolerance in level-0 pixels (default: a quarter of the traced "
        "pixel, a sixteenth along a prediction's probability, e.g. 0.25 at 1/4; 0 keeps "
        "every vertex)",
    )
    p.add_argument(
        "--min-area",
        type=number("--min-area", 0),
        default=None,
        help="leave out pieces and holes smaller than this, in level-0 pixels squared "
        "(default: one traced pixel)",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="one MultiPolygon annotation instead of one Polygon per piece of tissue",
    )
    add_overwrite(p, "OUT")
    add_report(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export with a progress bar; 0 on success, 130 when stopped."""
    from ..core.export import export_events
    from ..core.preflight import check_input, check_output
    from ._progress import follow

    check_input(args.source, "prediction or mask")
    check_output(args.out, overwrite=args.overwrite, what="GeoJSON file")
    slide_shape = None
    if args.slide is not None:
        from ..core.slide import open_slide

        with open_slide(check_input(args.slide, "slide")) as slide:
            slide_shape = slide.shape
    events = export_events(
        args.source,
        args.out,
        tolerance=args.tolerance,
        min_area=args.min_area,
        overwrite=args.overwrite,
        merge=args.merge,
        slide_shape=slide_shape,
        kind=args.kind,
    )
    finished = follow(events, unit="strip", desc="export", quiet=args.quiet)
    if finished is None or finished.stopped:
        return stopped_exit("export (nothing was written)", args.quiet)
    res = finished.result
    if args.json:
        print_json(res)
    elif not args.quiet:
        print(
            f"wrote {res['out']}: {res['features']} annotations, {res['polygons']} polygons "
            f"with {res['holes']} holes, {res['vertices']} vertices (traced at "
            f"1/{res['working_downsample']:g}"
            + (" along the probability" if res.get("outline") == "probability" else "")
            + f", tolerance {res['tolerance']:g} px)"
        )
    return EXIT_OK
