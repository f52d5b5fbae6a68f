"""``napari-gigapixel predict``: tiled inference of a slide into an OME-Zarr.

Runs a trained model over the whole slide chunk by chunk (dask; local threads,
or a dask.distributed cluster with --scheduler) and writes the probability and
the tissue mask as OME-Zarr pyramids at the model's output stride. The output
appears only when complete; an existing one is replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import json
import os


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``predict`` sub-command."""
    p = sub.add_parser(
        "predict",
        help="predict a tissue mask for a slide with a trained model (OME-Zarr output)",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("--model", required=True, help="model file (.keras) from 'train'")
    p.add_argument("--image", required=True, help="slide to predict")
    p.add_argument("--out", required=True, help="output OME-Zarr folder, e.g. slide_pred.zarr")
    p.add_argument(
        "--scheduler",
        default=None,
        help="dask.distributed scheduler address (tcp://host:port); default: local threads",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="probability at or above which a pixel is tissue (default: %(default)s)",
    )
    p.add_argument(
        "--chunk", type=int, default=None, help="level-0 chunk side in pixels (memory knob)"
    )
    p.add_argument(
        "--roi",
        default=None,
        metavar="Y0,Y1,X0,X1",
        help="predict only this level-0 region",
    )
    p.add_argument(
        "--no-probability", action="store_true", help="keep only level 0 of the probability"
    )
    p.add_argument(
        "--mixed-precision",
        action="store_true",
        help="compute in bfloat16 (faster on CPUs with bf16; probabilities within ~1e-3)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.set_defaults(func=run)


def _parse_roi(text: str | None) -> tuple[int, int, int, int] | None:
    from . import UserError

    if text is None:
        return None
    try:
        y0, y1, x0, x1 = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(
            f"--roi must look like Y0,Y1,X0,X1 (level-0 pixels), not {text!r}"
        ) from None
    return y0, y1, x0, x1


def run(args: argparse.Namespace) -> int:
    """Predict with a tqdm progress bar; 0 on success, 1 when stopped."""
    from ..core.inference import PredictConfig, predict
    from . import UserError
    from ._progress import follow

    if not os.path.exists(args.image):
        raise UserError(f"{args.image}: no such slide. Check the path.")
    if args.chunk is not None and args.chunk < 1:
        raise UserError(f"--chunk must be a positive number of pixels, not {args.chunk}.")
    cfg = PredictConfig(
        model=args.model,
        image=args.image,
        out=args.out,
        overwrite=args.overwrite,
        chunk=args.chunk,
        scheduler=args.scheduler,
        threshold=args.threshold,
        roi=_parse_roi(args.roi),
        write_probability=not args.no_probability,
        mixed_precision=args.mixed_precision,
    )
    finished = follow(predict(cfg), unit="chunk", desc="predict", quiet=args.quiet)
    if finished is None or finished.stopped:
        print("napari-gigapixel predict: stopped; nothing was written.")
        return 1
    res = finished.result
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"wrote {res['out']}: {res['shape'][0]} x {res['shape'][1]} px at 1/"
            f"{res['downsample']:g}, {res['levels']} levels, {res['mpx_per_s']:.1f} Mpx/s, "
            f"tissue {100 * res['tissue_fraction']:.1f}%"
        )
    return 0
