"""``napari-gigapixel demo``: the main job on the built-in sample slide.

Makes the synthetic sample slide (cached) and a held-out slide of another
seed, trains the U-Net on the whole sample slide, predicts the held-out slide,
prints Dice beside the Otsu baseline and shows the result in napari, or writes
a PNG overview where there is no display.

Training and inference run in spawned worker processes (``core.runner``): this
process may open a napari viewer afterwards, and TensorFlow and a napari canvas
must never share a process.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from ._common import (
    EXIT_OK,
    EXIT_STOPPED,
    add_overwrite,
    add_report,
    positive_float,
    positive_int,
    print_json,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="make the sample slide, train, predict a held-out slide, report Dice, show it",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument(
        "--out-dir", default="runs/demo", help="where results go (default: %(default)s)"
    )
    from ..core.train_config import TrainConfig

    p.add_argument(
        "--steps",
        type=positive_int("--steps"),
        default=TrainConfig.steps,
        help="training steps (default: %(default)s, the training recipe's)",
    )
    p.add_argument(
        "--shape", default="4096x16384", help="sample slide shape HxW (default: %(default)s)"
    )
    p.add_argument(
        "--lr",
        type=positive_float("--lr"),
        default=None,
        help="learning rate (default: the trainer's)",
    )
    p.add_argument(
        "--memory-gb",
        type=positive_float("--memory-gb"),
        default=None,
        help="training memory budget, GiB of peak memory (default: the trainer's)",
    )
    p.add_argument(
        "--no-viewer", action="store_true", help="never open napari; write the PNG overview"
    )
    add_overwrite(p, "the results of an earlier demo in --out-dir (model, prediction)")
    add_report(p)
    p.set_defaults(func=run)


def _parse_shape(text: str) -> tuple[int, int]:
    from . import UserError

    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--shape must look like 4096x16384, not {text!r}") from None
    if h < 256 or w < 256:
        raise UserError(f"--shape {text}: use at least 256 x 256 pixels.")
    return h, w


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run(args: argparse.Namespace) -> int:
    from ..core.inference import PredictConfig
    from ..core.metrics import evaluate
    from ..core.preflight import check_output
    from ..core.runner import run_job
    from ..core.synthetic import make_synthetic_slide, sample_slide_paths
    from ..core.training import TrainConfig
    from ._progress import follow

    shape = _parse_shape(args.shape)
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        from ..core.preflight import OutputError

        # mkdir would say only "File exists".
        raise OutputError(
            f"--out-dir {out}: is a file, not a folder; give a folder for the demo's results "
            "(it is created if missing), or move the file away."
        )
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "model.keras"
    pred_path = out / "heldout_prediction.zarr"
    # Before any compute: an earlier demo's results are replaced only on request.
    check_output(model_path, overwrite=args.overwrite, what="model file")
    check_output(pred_path, overwrite=args.overwrite, folder=True, what="prediction")
    say = (lambda *a, **k: None) if args.quiet else print
    t0 = time.perf_counter()

    say(f"1/4 sample slide {shape[0]} x {shape[1]} (made once, then cached)")
    slide, mask = sample_slide_paths(shape=shape)
    held = out / f"heldout_{shape[0]}x{shape[1]}_seed1.tif"
    held_mask = held.with_name(held.stem + "_mask.tif")
    if not (held.exists() and held_mask.exists()):
        make_synthetic_slide(held, shape=shape, seed=1, mask_out=held_mask)

    say(f"2/4 training on the whole slide, {args.steps} steps (every pixel, every step)")
    extra = {}
    if args.lr is not None:
        extra["lr"] = args.lr
    if args.memory_gb is not None:
        extra["memory_gb"] = args.memory_gb
    tcfg = TrainConfig(
        images=[str(slide)],
        masks=[str(mask)],
        out=str(model_path),
        steps=args.steps,
        overwrite=True,  # checked above
        **extra,
    )
    with run_job("napari_gigapixel.core.training:train", tcfg) as job:
        train_done = follow(
            job.events(), unit="step", counts="steps", desc="train", quiet=args.quiet
        )
    if train_done is None or train_done.stopped:
        return EXIT_STOPPED
    t_train = time.perf_counter() - t0

    say("3/4 predicting the held-out slide (tiled, to OME-Zarr)")
    pcfg = PredictConfig(
        model=str(model_path), image=str(held), out=str(pred_path), overwrite=True
    )
    with run_job("napari_gigapixel.core.inference:predict", pcfg) as job:
        done = follow(job.events(), unit="chunk", desc="predict", quiet=args.quiet)
    if done is None or done.stopped:
        return EXIT_STOPPED

    say("4/4 evaluating against the held-out ground truth")
    figures = evaluate(str(pred_path), str(held_mask), slide=str(held))
    tr = train_done.result
    summary = {
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()},
        "train_slide": str(slide),
        "heldout": str(held),
        "model": str(model_path),
        "prediction": str(pred_path),
        "steps": args.steps,
        "train_seconds": round(t_train, 1),
        "seconds_per_step": tr.get("seconds_per_step"),
        "final_train_dice": tr.get("final_dice", tr.get("dice")),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    say(
        f"\nHeld-out Dice {figures['dice']:.4f} (IoU {figures['iou']:.4f}, precision "
        f"{figures['precision']:.4f}, recall {figures['recall']:.4f}); Otsu baseline Dice "
        f"{figures['otsu_dice']:.4f}."
    )
    if args.no_viewer or not _has_display():
        png = out / "overview.png"
        write_overview(held, pred_path, held_mask, png)
        summary["overview_png"] = str(png)
        say(f"No display: wrote an overview of the held-out slide to {png}")
    else:
        _show(held, pred_path, held_mask)
    if args.json:
        print_json(summary)
    return EXIT_OK


def _overview_level(levels, max_side: int = 2048) -> int:
    for i, lvl in enumerate(levels):
        if max(lvl.shape[:2]) <= max_side:
            return i
    return len(levels) - 1


def write_overview(slide_path, pred_path, truth_path, png_path) -> None:
    """Write a PNG: the slide at a low level, prediction in green, misses in magenta."""
    import imagecodecs

    from ..core.inference import open_prediction
    from ..core.mask_io import load_mask
    from ..core.masks import AnnotationMask
    from ..core.slide import open_slide

    with open_slide(slide_path) as slide:
        li = _overview_level(slide.levels)
        rgb = np.asarray(slide.levels[li]).astype(np.float32)
        shape = slide.shape
    h, w = rgb.shape[:2]
    d = shape[0] / h
    stride = int(round(d))
    pred = open_prediction(pred_path)
    # Both masks read through the same nearest-neighbour window view, at the
    # overview's pixel size: nothing at full resolution.
    p = (
        AnnotationMask(pred.mask[0], downsample=pred.downsample).read_window(
            0, shape[0], 0, shape[1], stride=stride
        )[:h, :w]
        > 0
    )
    truth = load_mask(str(truth_path), shape)
    t = truth.read_window(0, shape[0], 0, shape[1], stride=stride)[:h, :w] > 0
    out = rgb.copy()
    green = np.array([0, 200, 0], np.float32)
    magenta = np.array([230, 0, 200], np.float32)
    out[p] = 0.55 * out[p] + 0.45 * green
    miss = p != t
    out[miss] = 0.3 * out[miss] + 0.7 * magenta
    tmp = Path(str(png_path) + ".partial")
    tmp.write_bytes(imagecodecs.png_encode(np.clip(out, 0, 255).astype(np.uint8)))
    os.replace(tmp, png_path)


def build_viewer(slide_path, pred_path, truth_path, *, show: bool = True):
    """A napari viewer with the held-out slide, its ground truth and the prediction.

    The Predict and Review widgets are docked; the prediction is added by the
    Predict widget (so it overlays the slide whatever the slide's micron scale)
    and the Review widget has compared it with the ground truth.

    Returns
    -------
    (napari.Viewer, ReviewWidget)
    """
    import napari

    from .._sample_data import slide_and_truth_layers

    viewer = napari.Viewer(title="napari-gigapixel demo: held-out slide", show=show)
    layers = [
        getattr(viewer, f"add_{kind}")(data, **kwargs)
        for data, kwargs, kind in slide_and_truth_layers(
            str(slide_path), str(truth_path), "held-out slide"
        )
    ]
    _, predict = viewer.window.add_plugin_dock_widget("napari-gigapixel", "Predict tissue mask")
    predict.show_prediction(str(pred_path), layers[0])
    _, review = viewer.window.add_plugin_dock_widget("napari-gigapixel", "Review prediction")
    review.mask.value = layers[1]
    review.compare()
    return viewer, review


def _show(slide_path, pred_path, truth_path) -> None:  # pragma: no cover - needs a display
    import napari

    build_viewer(slide_path, pred_path, truth_path)
    napari.run()
