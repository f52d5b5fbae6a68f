"""Quality of the default recipe: held-out Dice beside the Otsu baseline.

Trains with the ``napari-gigapixel train`` defaults (a child process running
the real command line) on the sample slide (seed 0, 4096 x 16384 by
default), predicts held-out synthetic slides of other seeds with the tiled
inference, and scores them against their ground truth beside an Otsu
threshold detector. Also reports, per held-out slide, the Dice of the ground
truth itself sampled at the model's output stride and expanded back: the
ceiling any model at that output stride can reach.

Slides come from the sample cache (``$NAPARI_GIGAPIXEL_CACHE``): made once,
reused. Prints one JSON object on stdout. Usage::

    NAPARI_GIGAPIXEL_CACHE=/tmp/gpcache flock /tmp/heavy.lock \\
        python benchmarks/bench_quality.py
    python benchmarks/bench_quality.py --shape 1024x4096 --heldout-seeds 1 2 \\
        --train-args "--steps 30"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train_cli(slide: str, mask: str, model: str, extra: list[str]) -> dict:
    """Run ``napari-gigapixel train`` with its defaults in a child process."""
    cmd = [
        sys.executable,
        "-c",
        "import sys; from napari_gigapixel.cli import main; sys.exit(main(sys.argv[1:]))",
        "train",
        "--image",
        slide,
        "--mask",
        mask,
        "--out",
        model,
        "--overwrite",
        "--json",
        *extra,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"training failed (exit {proc.returncode})")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    figures["wall_seconds"] = wall
    return figures


def ceiling_dice(mask_path: str, shape: tuple[int, int], output_stride: int) -> float:
    """Dice of the ground truth sampled at ``output_stride`` against itself at full size."""
    from napari_gigapixel.core.mask_io import load_mask
    from napari_gigapixel.core.masks import AnnotationMask
    from napari_gigapixel.core.metrics import confusion, dice

    truth = load_mask(mask_path, shape)
    if output_stride <= 1:
        return 1.0
    # Block-centre sampling, the same as the trainer's labels at output stride.
    low = truth.read_window(0, shape[0], 0, shape[1], stride=output_stride)
    coarse = AnnotationMask(low, downsample=float(output_stride), name="truth at output stride")
    return dice(confusion(coarse, truth, shape=shape))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="4096x16384", help="slide shape HxW (default %(default)s)")
    p.add_argument("--train-seed", type=int, default=0, help="seed of the training slide")
    p.add_argument("--heldout-seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--train-args", default="", help="extra 'napari-gigapixel train' arguments (quoted)"
    )
    p.add_argument("--out-dir", default=None, help="keep the model and predictions here")
    args = p.parse_args(argv)

    from napari_gigapixel.core.events import Finished
    from napari_gigapixel.core.inference import PredictConfig, open_prediction, predict
    from napari_gigapixel.core.metrics import evaluate
    from napari_gigapixel.core.synthetic import parse_shape, sample_slide_paths

    shape = parse_shape(args.shape)
    t0 = time.perf_counter()
    slide, mask = sample_slide_paths(shape=shape, seed=args.train_seed)
    held = {s: sample_slide_paths(shape=shape, seed=s) for s in args.heldout_seeds}
    make_seconds = time.perf_counter() - t0

    tmp = None
    if args.out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-quality-")
        out = Path(tmp.name)
    else:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
    try:
        model = str(out / "model.keras")
        tr = train_cli(slide, mask, model, shlex.split(args.train_args))
        results = {}
        for seed, (hslide, hmask) in held.items():
            pred = str(out / f"heldout_seed{seed}.zarr")
            t1 = time.perf_counter()
            for ev in predict(
                PredictConfig(
                    model=model, image=hslide, out=pred, overwrite=True, write_probability=False
                )
            ):
                if isinstance(ev, Finished) and ev.stopped:
                    raise SystemExit("prediction stopped")
            predict_s = time.perf_counter() - t1
            f = evaluate(pred, hmask, slide=hslide)
            os_ = int(round(open_prediction(pred).downsample))
            results[f"seed{seed}"] = {
                "dice": f["dice"],
                "iou": f["iou"],
                "precision": f["precision"],
                "recall": f["recall"],
                "otsu_dice": f["otsu_dice"],
                "otsu_iou": f["otsu_iou"],
                "ceiling_dice_at_output_stride": ceiling_dice(hmask, shape, os_),
                "predict_seconds": predict_s,
            }
    finally:
        if tmp is not None:
            tmp.cleanup()
    dices = [r["dice"] for r in results.values()]
    summary = {
        "benchmark": "quality",
        "shape": list(shape),
        "megapixels": shape[0] * shape[1] / 1e6,
        "train_seed": args.train_seed,
        "train_args": args.train_args,
        "steps": tr.get("steps"),
        "train_final_dice": tr.get("dice"),
        "train_seconds": tr["wall_seconds"],
        "seconds_per_step": tr.get("seconds_per_step"),
        "train_peak_rss_gib": tr.get("peak_rss_gib"),
        "make_slides_seconds": make_seconds,
        "heldout": results,
        "min_heldout_dice": min(dices),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
