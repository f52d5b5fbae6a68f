"""``napari-gigapixel train``: exact whole-slide training from the command line.

Example::

    napari-gigapixel train --image slide.tif --mask mask.tif --out model.keras \\
        --steps 100 --loss bce --tile auto --memory-gb 4 --json

The defaults (loss, learning rate and its schedule, steps) are
:class:`~napari_gigapixel.core.training.TrainConfig`'s, the measured recipe.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import UserError, _resolution
from ._common import (
    EXIT_OK,
    PRECISIONS,
    add_overwrite,
    add_precision,
    add_report,
    add_roi,
    integer,
    positive_float,
    positive_int,
    print_json,
    roi,
    stopped_exit,
)


def _val_roi(text: str) -> tuple[int, int, int, int]:
    """``--val-roi``: the ``--roi`` form, its errors naming this flag."""
    try:
        return roi(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--roi", "--val-roi")) from exc


def _tile(text: str) -> int | str:
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--tile wants 'auto' or pixels, got {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--tile must be positive, got {value}")
    return value


def add_parser(subparsers: Any) -> None:
    """Register the ``train`` sub-command."""
    from ..core.losses import FOCAL_WEIGHT, LOSSES
    from ..core.stain import AUGMENT_MODES, augment_mode
    from ..core.train_config import MAX_BORDER_WEIGHT
    from ..core.training import LR_FLOOR, LR_SCHEDULES, TrainConfig
    from ..core.unet import INPUT_TRANSFORMS, PRESET_NOTES, PRESETS, preset_name

    d = TrainConfig  # the dataclass's defaults are the recipe; one place to change it
    model = TrainConfig().model
    # The flags that shape a new model default to None (not given), so that
    # build_config can refuse them with --resume; --help shows the real default.
    p = subparsers.add_parser(
        "train",
        help="train a U-Net on whole slides (exact streamed whole-image steps)",
        description=(
            "Train on whole slides: every step sees every pixel of every slide, computed "
            "tile by tile within a memory budget (the same gradient as a whole-image step)."
        ),
    )
    p.add_argument(
        "--image",
        action="append",
        required=True,
        metavar="SLIDE",
        help="slide file (repeat with --mask for several slides)",
    )
    p.add_argument(
        "--mask",
        action="append",
        required=True,
        metavar="MASK",
        help="mask of the preceding slide, at any level (raster, zarr, GeoJSON)",
    )
    p.add_argument("--out", required=True, metavar="MODEL.keras", help="model file to write")
    add_overwrite(p, "the model file (a run resumed from --out itself continues that file)")
    p.add_argument(
        "--steps",
        type=positive_int("--steps"),
        default=d.steps,
        help="optimizer steps (default %(default)s)",
    )
    p.add_argument(
        "--loss",
        choices=LOSSES,
        default=d.loss,
        help=(
            f"default %(default)s (soft Dice + {FOCAL_WEIGHT:g} x the mean focal term); "
            "'dice' alone can collapse to all-tissue from scratch"
        ),
    )
    p.add_argument(
        "--lr",
        type=positive_float("--lr"),
        default=d.lr,
        help="Adam (peak) learning rate (default %(default)s)",
    )
    p.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=d.lr_schedule,
        help=f"'cosine' (default): down to {LR_FLOOR * 100:g}%% of --lr at the last step; "
        "'constant'",
    )
    p.add_argument(
        "--tile",
        type=_tile,
        default=None,  # None: not given (--mode whole refuses it); resolved in build_config
        help=f"core size in pixels, or 'auto' (largest that fits --memory-gb; default {d.tile}); "
        "--mode stream only",
    )
    p.add_argument(
        "--memory-gb",
        type=positive_float("--memory-gb"),
        default=d.memory_gb,
        help="memory budget of the run: peak resident memory in GiB (default %(default)s)",
    )
    add_roi(
        p,
        "train on a rectangle of the slide (once for all slides, or once per slide)",
        repeat=True,
    )
    p.add_argument(
        "--val-image",
        action="append",
        default=[],
        metavar="SLIDE",
        help="validation slide, never trained on (repeat with --val-mask for several)",
    )
    p.add_argument(
        "--val-mask",
        action="append",
        default=[],
        metavar="MASK",
        help="mask of the preceding validation slide",
    )
    p.add_argument(
        "--val-roi",
        type=_val_roi,
        action="append",
        metavar="Y0,X0,Y1,X1",
        help="validate on a rectangle of the training slide (once for all slides, or once "
        "per slide); its labels are left out of training",
    )
    p.add_argument(
        "--val-every",
        type=positive_int("--val-every"),
        default=d.val_every,
        metavar="N",
        help="score the validation data every N steps and after the last "
        "(default %(default)s); the best model is kept as MODEL.best.keras",
    )
    p.add_argument(
        "--seed",
        type=integer("--seed", 0),
        default=d.seed,
        help="seed of the weights (default %(default)s)",
    )
    p.add_argument("--mask-kind", choices=("dense", "scribble"), default=None)
    p.add_argument(
        "--model-size",
        choices=tuple(PRESETS),
        default=None,
        help="width of a new model: "
        + ", ".join(f"'{k}' ({v})" for k, v in PRESET_NOTES.items())
        + f" (default {preset_name(model)})",
    )
    p.add_argument(
        "--input-transform",
        choices=INPUT_TRANSFORMS,
        default=None,
        help="what a new model's first layer reads: 'od', optical density (pale and dark "
        f"stain on one scale), or 'linear', grey levels (default {model.input_transform})",
    )
    p.add_argument(
        "--output-stride",
        type=int,
        choices=(1, 4),
        default=None,
        help="a new model's logits: 4 at 1/4 resolution (fast), 1 at full resolution "
        f"(default {model.output_stride})",
    )
    add_precision(p, default="auto")
    p.add_argument(
        "--augment",
        nargs="?",
        const="all",
        default=augment_mode(d.augment),
        choices=AUGMENT_MODES,
        metavar="{" + ",".join(AUGMENT_MODES) + "}",
        help="whole-slide augmentation drawn per step, exact under tiling: 'flip' (flips and "
        "quarter turns), 'stain' (H/E/DAB stain, brightness and contrast jitter), 'ink' "
        "(pen, dust and bubble rims on the glass recoloured as a random, possibly paler "
        "ink on half the steps; needs white balance), 'pen' ('ink' plus 1-3 pen strokes "
        "drawn on the glass on half the steps), 'pen+flip' ('pen' and 'flip'), 'all' (flip, "
        "stain and ink; what --augment alone means), 'auto' ('pen' on white-balanced runs, "
        "else none); default "
        "%(default)s",
    )
    p.add_argument(
        "--mode",
        choices=("stream", "whole"),
        default="stream",
        help="'whole' forces one tile per slide (for comparison)",
    )
    _resolution.add_arguments(p, "level 0, every pixel; with --resume, the checkpoint's")
    p.add_argument(
        "--white-balance",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="scale each slide's glass to one white, cell by cell (the lamp's shading goes "
        f"too), here and when predicting (default {_on(d.white_balance)})",
    )
    p.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="standardise the input with the training slides' per-channel statistics "
        f"(default {_on(d.standardize)})",
    )
    p.add_argument(
        "--head-prior",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"start the head's bias at the tissue fraction (default {_on(d.head_prior)})",
    )
    p.add_argument(
        "--warmup",
        type=integer("--warmup", 0),
        default=d.warmup,
        metavar="STEPS",
        help="linear learning-rate warmup steps (default %(default)s)",
    )
    p.add_argument(
        "--border-weight",
        type=integer("--border-weight", 1, MAX_BORDER_WEIGHT),
        default=d.border_weight,
        metavar="W",
        help="loss weight of the labels within 16 px of the other class's (the faint tissue "
        "edge; 1: none; default %(default)s)",
    )
    p.add_argument(
        "--pen-weight",
        type=integer("--pen-weight", 1, MAX_BORDER_WEIGHT),
        default=d.pen_weight,
        metavar="W",
        help="loss weight of the glass under the pen strokes the augmentation draws (with "
        "--border-weight 4, 8 keeps pen on the glass called glass; 1: none; default "
        "%(default)s)",
    )
    p.add_argument(
        "--resume",
        metavar="MODEL.keras",
        help="continue from a checkpoint (it keeps its own size, input transform, output "
        "stride, white balance and standardisation)",
    )
    p.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="run each step across the workers of a dask.distributed cluster (slides and "
        "tiles split over workers; the same recipe, validation and weights as one process); "
        "the slide paths (--image, --val-image) must be readable on the workers",
    )
    p.add_argument(
        "--checkpoint-every",
        type=positive_int("--checkpoint-every"),
        default=d.checkpoint_every,
        metavar="N",
        help="write --out every N steps, at the end and when stopped (default %(default)s)",
    )
    add_report(p)
    p.set_defaults(func=run)


def _on(value: bool) -> str:
    return "on" if value else "off"


#: Flags that shape a new model, and their ``args`` names: a resumed model keeps
#: its own, so giving one with --resume is a contradiction, not a no-op.
NEW_MODEL_FLAGS = {
    "model_size": "--model-size",
    "input_transform": "--input-transform",
    "output_stride": "--output-stride",
    "white_balance": "--white-balance",
    "standardize": "--standardize",
    "head_prior": "--head-prior",
}


def _check_contradictions(args: argparse.Namespace) -> None:
    """Refuse flags that contradict each other (exit 2), before any file is read."""
    if args.resume:
        given = [
            # A switch given as --no-X is named so.
            flag.replace("--", "--no-", 1) if getattr(args, name) is False else flag
            for name, flag in NEW_MODEL_FLAGS.items()
            if getattr(args, name) is not None
        ]
        if given:
            raise UserError(
                f"{', '.join(given)} shape a new model, and --resume {args.resume} continues "
                "a trained one, which keeps its own; leave "
                f"{'it' if len(given) == 1 else 'them'} out, or train a new model without "
                "--resume."
            )
    if args.mode == "whole" and args.tile is not None:
        raise UserError(
            "--tile sets the tile size of --mode stream; --mode whole computes each slide in "
            "one tile. Leave one of them out."
        )


def build_config(args: argparse.Namespace):
    """A :class:`~napari_gigapixel.core.training.TrainConfig` from parsed arguments.

    Raises
    ------
    UserError
        Flags that contradict each other (usage, exit status 2), including a
        configuration that :func:`~napari_gigapixel.core.train_config._validate`
        refuses: no file has been read yet, so the flags alone are at fault.
    """
    from ..core.train_config import TrainConfigError, _validate
    from ..core.training import TrainConfig
    from ..core.unet import preset_config, preset_name

    _check_contradictions(args)
    d = TrainConfig()

    if len(args.image) != len(args.mask):
        raise UserError(
            f"give one --mask per --image (got {len(args.image)} images, {len(args.mask)} masks)."
        )
    rois = None
    if args.roi:
        if len(args.roi) == 1:
            rois = args.roi * len(args.image)
        elif len(args.roi) == len(args.image):
            rois = list(args.roi)
        else:
            raise UserError("give one --roi for all slides or one per --image.")
    if len(args.val_image) != len(args.val_mask):
        raise UserError(
            f"give one --val-mask per --val-image (got {len(args.val_image)} validation "
            f"images, {len(args.val_mask)} masks)."
        )
    val_roi = None
    if args.val_roi:
        if len(args.val_roi) == 1:
            val_roi = args.val_roi[0]
        elif len(args.val_roi) == len(args.image):
            val_roi = list(args.val_roi)
        else:
            raise UserError("give one --val-roi for all slides or one per --image.")
    if not args.out.endswith(".keras"):
        raise UserError(f"--out {args.out}: the model file name must end with '.keras'.")
    cfg = TrainConfig(
        images=list(args.image),
        masks=list(args.mask),
        out=args.out,
        steps=args.steps,
        loss=args.loss,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        tile=d.tile if args.tile is None else args.tile,
        memory_gb=args.memory_gb,
        mode=args.mode,
        rois=rois,
        seed=args.seed,
        model=preset_config(
            args.model_size or preset_name(d.model),
            output_stride=args.output_stride or d.model.output_stride,
            input_transform=args.input_transform or d.model.input_transform,
        ),
        resume=args.resume,
        augment=args.augment,
        mixed_precision=PRECISIONS[args.precision],
        checkpoint_every=args.checkpoint_every,
        mask_kind=args.mask_kind,
        overwrite=args.overwrite,
        val_images=list(args.val_image),
        val_masks=list(args.val_mask),
        val_roi=val_roi,
        val_every=args.val_every,
        resolution=_resolution.from_args(args),
        scheduler=args.scheduler,
        white_balance=_given(args.white_balance, d.white_balance),
        standardize=_given(args.standardize, d.standardize),
        head_prior=_given(args.head_prior, d.head_prior),
        warmup=args.warmup,
        border_weight=args.border_weight,
        pen_weight=args.pen_weight,
    )
    try:
        _validate(cfg)  # the fields only: a refusal here is the flags' (usage)
    except TrainConfigError as exc:
        raise UserError(str(exc)) from exc
    return cfg


def _given(value: bool | None, default: bool) -> bool:
    return default if value is None else value


def run(args: argparse.Namespace) -> int:
    """Run the training; print progress (tqdm on stderr) and, with ``--json``, the figures."""
    from ..core.training import train
    from ._progress import follow

    cfg = build_config(args)
    finished = follow(train(cfg), unit="step", counts="steps", quiet=args.quiet)
    result = finished.result if finished is not None else {}
    stopped = finished is None or finished.stopped
    figures = {
        "steps": result.get("steps"),
        "loss": result.get("loss"),
        "dice": result.get("dice"),
        "seconds_per_step": result.get("seconds_per_step"),
        "peak_rss_bytes": result.get("peak_rss_bytes"),
        "peak_rss_gib": round(result.get("peak_rss_bytes", 0) / 2**30, 3),
        "tile": result.get("tile"),
        "n_tiles": result.get("n_tiles"),
        "megapixels": result.get("megapixels"),
        "out": result.get("out"),
        "val_dice": result.get("val_dice"),
        "val_loss": result.get("val_loss"),
        "best_step": result.get("best_step"),
        "best_val_dice": result.get("best_val_dice"),
        "best_model": result.get("best_model"),
        "resolution": result.get("resolution"),
        "workers": result.get("workers"),
        "stopped": stopped,
    }
    if args.json:
        print_json(figures)
    elif figures["steps"] and not args.quiet:
        print(
            f"wrote {cfg.out}: {figures['steps']} steps, loss {figures['loss']:.4f}, "
            f"dice {figures['dice']:.3f}, {figures['seconds_per_step']:.2f} s/step"
        )
        if figures["best_model"]:
            print(
                f"best validation Dice {figures['best_val_dice']:.4f} at step "
                f"{figures['best_step']}: {figures['best_model']}"
            )
    return stopped_exit("train", args.quiet) if stopped else EXIT_OK
