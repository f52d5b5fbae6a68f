"""``napari-gigapixel evaluate``: score a prediction against a ground-truth mask.

Counts level-0 pixels chunk by chunk (never materialising a full-resolution
mask) and prints Dice, IoU, precision and recall, beside the Dice of an Otsu
tissue detector on the same slide (the classic baseline). The truth may be at
any level of the slide (inferred from its shape); the slide for Otsu is read
from the prediction's metadata, or given with --image.
"""

from __future__ import annotations

import argparse

from ._common import EXIT_OK, add_report, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``evaluate`` sub-command."""
    p = sub.add_parser(
        "evaluate",
        help="Dice/IoU/precision/recall of a prediction, beside an Otsu baseline",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("--pred", required=True, help="prediction folder written by 'predict'")
    p.add_argument("--truth", required=True, help="ground-truth mask (tif/png/npy/zarr/geojson)")
    p.add_argument(
        "--image", default=None, help="the slide, for the Otsu baseline (default: from --pred)"
    )
    from . import _resolution

    _resolution.add_arguments(p, "level-0 pixels")
    add_report(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the figures; 0 on success."""
    from ..core.metrics import evaluate
    from ..core.preflight import check_input
    from . import _resolution

    for what, path in (("prediction", args.pred), ("mask", args.truth), ("slide", args.image)):
        if path is not None:
            check_input(path, what)
    res = evaluate(args.pred, args.truth, slide=args.image, resolution=_resolution.from_args(args))
    if args.json:
        print_json(res)
        return EXIT_OK
    unit = "level-0 pixels"
    if res.get("resolution"):
        unit = f"pixels at downsample {res['resolution']['downsample']:.4g}"
    print(f"prediction {args.pred} against {args.truth} ({res['pixels']:,} {unit})")
    for key in ("dice", "iou", "precision", "recall"):
        print(f"  {key:<10} {res[key]:.4f}")
    if res["otsu_dice"] is None:
        print("  Otsu baseline: skipped (no slide; give --image)")
    else:
        print(
            f"  Otsu Dice  {res['otsu_dice']:.4f}  (threshold {res['otsu_threshold']:.0f} "
            f"at 1/{res['otsu_downsample']:g})"
        )
    return EXIT_OK
