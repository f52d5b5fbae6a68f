"""``napari-gigapixel predict``: tiled inference of a slide into an OME-Zarr.

Runs a trained model over the whole slide chunk by chunk (dask; local threads,
or a dask.distributed cluster with --scheduler) and writes the probability and
the tissue mask as OME-Zarr pyramids at the model's output stride. The output
appears only when complete; an existing one is replaced only with --overwrite.
Several --image (or a folder, or a list file) predict a cohort into the --out
folder, one slide per cluster task with --scheduler; a slide that fails is
reported and the others go on (exit status 1 at the end). A folder's
predictions and masks are left out; no output may be, hold or lie inside an
input slide or the model.
"""

from __future__ import annotations

import argparse
import os
import sys

from ._common import (
    EXIT_OK,
    PRECISIONS,
    add_overwrite,
    add_precision,
    add_report,
    add_roi,
    number,
    positive_int,
    print_json,
    stopped_exit,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``predict`` sub-command."""
    p = sub.add_parser(
        "predict",
        help="predict a tissue mask for a slide with a trained model (OME-Zarr output)",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("--model", required=True, help="model file (.keras) from 'train'")
    p.add_argument(
        "--image",
        required=True,
        action="append",
        help="slide to predict; repeat it, or give a folder of slides or a list file "
        "(.txt, one path a line) to predict many",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output OME-Zarr folder, e.g. slide_pred.zarr; for many slides a folder that "
        "gets <name>_pred.zarr per slide",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        help="dask.distributed scheduler address (tcp://host:port); default: local threads",
    )
    add_overwrite(p, "OUT")
    p.add_argument(
        "--threshold",
        type=number("--threshold", 0, 1),
        default=0.5,
        help="probability at or above which a pixel is tissue (default: %(default)s)",
    )
    p.add_argument(
        "--chunk",
        type=positive_int("--chunk"),
        default=None,
        help="chunk side in level-0 pixels (memory knob; default: the model's)",
    )
    add_roi(p, "predict only this region")
    from ..core import mask_clean as mc

    p.add_argument(
        "--min-width-um",
        type=number("--min-width-um", 0),
        default=mc.DEFAULT_MIN_WIDTH_UM,
        help="mask clean-up: remove strands and specks (pen, dust, fibres) narrower than this "
        "many um (an opening; 0 disables; default: %(default)s)",
    )
    p.add_argument(
        "--min-object-um2",
        type=number("--min-object-um2", 0),
        default=mc.DEFAULT_MIN_OBJECT_UM2,
        help="mask clean-up: remove tissue objects smaller than this many um^2 "
        "(0 disables; default: %(default)s)",
    )
    p.add_argument(
        "--min-hole-um2",
        type=number("--min-hole-um2", 0),
        default=mc.DEFAULT_MIN_HOLE_UM2,
        help="mask clean-up: fill enclosed holes in the tissue smaller than this many um^2 "
        "(0 disables; default: %(default)s)",
    )
    p.add_argument(
        "--no-probability", action="store_true", help="keep only level 0 of the probability"
    )
    from ..core.inference import PredictConfig
    from ..core.tiled_model import TTA_MODES

    p.add_argument(
        "--tta",
        choices=TTA_MODES,
        default=PredictConfig.tta,
        help="test-time augmentation: 'half-darker' averages the probabilities of the slide, "
        "its left-right mirror image, and its up-down and both-ways mirror images with every "
        "stain 20%% stronger (4x the model's time, the most accurate on the tuning slides); "
        "'flips' the slide and its three mirror images as they are (4x); 'flips+darker' "
        "those four and the same four darker (8x); 'none': one pass (default: %(default)s)",
    )
    add_precision(p, default="float32")
    from . import _resolution

    _resolution.add_arguments(p, "the model's training resolution")
    add_report(p)
    p.set_defaults(func=run)


def _is_many(items: list[str]) -> bool:
    from ..core.predict_many import LIST_EXTENSIONS
    from ..core.slide import is_slide_path

    if len(items) != 1:
        return True
    p = items[0]
    return (os.path.isdir(p) and not is_slide_path(p)) or (
        os.path.isfile(p) and p.lower().endswith(LIST_EXTENSIONS)
    )


def run(args: argparse.Namespace) -> int:
    """Predict with a tqdm progress bar; 0 on success, 130 when stopped.

    Many slides: 1 when any slide failed (the others are still predicted).
    """
    from ..core.inference import PredictConfig, check_scheduler, predict
    from ..core.training import use_mixed_precision
    from . import _resolution
    from ._progress import follow

    cfg = PredictConfig(
        model=args.model,
        image=args.image[0],
        out=args.out,
        overwrite=args.overwrite,
        chunk=args.chunk,
        scheduler=args.scheduler,
        threshold=args.threshold,
        roi=args.roi,
        write_probability=not args.no_probability,
        mixed_precision=use_mixed_precision(PRECISIONS[args.precision]),
        resolution=_resolution.from_args(args),
        min_width_um=args.min_width_um,
        min_object_um2=args.min_object_um2,
        min_hole_um2=args.min_hole_um2,
        tta=args.tta,
    )
    cfg.clean_settings()  # a bad value fails here, before any slide or model is read
    check_scheduler(cfg.scheduler)  # "processes" would otherwise run on local threads
    if _is_many(args.image):
        return _run_many(cfg, args)
    finished = follow(predict(cfg), unit="chunk", desc="predict", quiet=args.quiet)
    if finished is None or finished.stopped:
        return stopped_exit("predict (nothing was written)", args.quiet)
    res = finished.result
    if args.json:
        print_json(res)
    elif not args.quiet:
        print(
            f"wrote {res['out']}: {res['shape'][0]} x {res['shape'][1]} px "
            f"(downsample {res['resolution']['downsample']:.4g}) at 1/"
            f"{res['downsample']:g}, {res['levels']} levels, {res['mpx_per_s']:.1f} Mpx/s, "
            f"tissue {100 * res['tissue_fraction']:.1f}%"
        )
    return EXIT_OK


def _run_many(cfg, args: argparse.Namespace) -> int:
    """A cohort into the --out folder: 0 all done, 1 a slide failed, 130 stopped."""
    from ..core.model_io import read_model_meta
    from ..core.predict_many import expand_images, predict_many
    from ._progress import follow

    skipped: list[str] = []
    images = expand_images(args.image, skipped)
    if skipped and not args.quiet:
        # An earlier run's predictions, or masks beside their slides: not slides.
        names = ", ".join(os.path.basename(q) for q in skipped)
        print(
            f"napari-gigapixel predict: left out {len(skipped)} predictions or masks: {names}",
            file=sys.stderr,
        )
    read_model_meta(cfg.model)  # a bad model fails once, not once per slide
    finished = follow(
        predict_many(cfg, images, args.out), unit="slide", desc="slides", quiet=args.quiet
    )
    if finished is None or finished.stopped:
        return stopped_exit("predict (finished slides are kept)", args.quiet)
    res = {**finished.result, "skipped": skipped}
    if args.json:
        print_json(res)
    elif not args.quiet:
        print(
            f"predicted {res['ok']} of {res['total']} slides into {args.out}"
            + (f"; {res['failed']} failed" if res["failed"] else "")
        )
    return 1 if res["failed"] else EXIT_OK
