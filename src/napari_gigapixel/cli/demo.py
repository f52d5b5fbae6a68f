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
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="make the sample slide, train, predict a held-out slide, report Dice, show it",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument(
        "--out-dir", default="runs/demo", help="where results go (default: %(default)s)"
    )
    p.add_argument("--steps", type=int, default=100, help="training steps (default: %(default)s)")
    p.add_argument(
        "--shape", default="4096x16384", help="sample slide shape HxW (default: %(default)s)"
    )
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the trainer's)")
    p.add_argument("--memory-gb", type=float, default=None, help="training memory budget")
    p.add_argument(
        "--no-viewer", action="store_true", help="never open napari; write the PNG overview"
    )
    p.add_argument(
        "--json", action="store_true", help="print the figures as one JSON line at the end"
    )
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
    from ..core.runner import run_job
    from ..core.synthetic import make_synthetic_slide, sample_slide_paths
    from ..core.training import TrainConfig
    from ._progress import follow

    shape = _parse_shape(args.shape)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    print(f"1/4 sample slide {shape[0]} x {shape[1]} (made once, then cached)")
    slide, mask = sample_slide_paths(shape=shape)
    held = out / f"heldout_{shape[0]}x{shape[1]}_seed1.tif"
    held_mask = held.with_name(held.stem + "_mask.tif")
    if not (held.exists() and held_mask.exists()):
        make_synthetic_slide(held, shape=shape, seed=1, mask_out=held_mask)

    print(f"2/4 training on the whole slide, {args.steps} steps (every pixel, every step)")
    model_path = out / "model.keras"
    extra = {}
    if args.lr is not None:
        extra["lr"] = args.lr
    if args.memory_gb is not None:
        extra["memory_gb"] = args.memory_gb
    tcfg = TrainConfig(
        images=[str(slide)], masks=[str(mask)], out=str(model_path), steps=args.steps, **extra
    )
    job = run_job("napari_gigapixel.core.training:train", tcfg)
    train_done = follow(job.events(), unit="step", counts="steps", desc="train")
    t_train = time.perf_counter() - t0

    print("3/4 predicting the held-out slide (tiled, to OME-Zarr)")
    pred_path = out / "heldout_prediction.zarr"
    pcfg = PredictConfig(
        model=str(model_path), image=str(held), out=str(pred_path), overwrite=True
    )
    job = run_job("napari_gigapixel.core.inference:predict", pcfg)
    follow(job.events(), unit="chunk", desc="predict")

    print("4/4 evaluating against the held-out ground truth")
    figures = evaluate(str(pred_path), str(held_mask), slide=str(held))
    tr = train_done.result if train_done is not None else {}
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
    print(
        f"\nHeld-out Dice {figures['dice']:.4f} (IoU {figures['iou']:.4f}, precision "
        f"{figures['precision']:.4f}, recall {figures['recall']:.4f}); Otsu baseline Dice "
        f"{figures['otsu_dice']:.4f}."
    )
    if args.no_viewer or not _has_display():
        png = out / "overview.png"
        write_overview(held, pred_path, held_mask, png)
        summary["overview_png"] = str(png)
        print(f"No display: wrote an overview of the held-out slide to {png}")
    else:
        _show(held, pred_path, held_mask)
    if args.json:
        print(json.dumps(summary))
    return 0


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
