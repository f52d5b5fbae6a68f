"""Seconds per full-slide training step and peak RSS, streamed and whole-image.

Each configuration runs in its own child process (so peak RSS is its own) on
a synthetic H&E-like slide made lazily as a dask array: the trainer decodes
it once into its uint8 cache (in memory, or a file when the budget says so),
exactly as it does for a JPEG slide, so the step itself is what is timed.
The mask is a 1/16 annotation-level array. Prints one JSON object.

Usage::

    flock /tmp/heavy.lock python benchmarks/bench_train.py            # all sizes
    python benchmarks/bench_train.py --sizes 16 67 --steps 2 --modes stream whole
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

SIZES = {  # megapixels -> (H, W)
    16: (4096, 4096),
    67: (4096, 16384),
    268: (8192, 32768),
    1024: (16000, 64000),
}


def synthetic(shape, block=2048):
    """A lazy (H, W, 3) uint8 dask array with tissue-like blobs, and its 1/16 mask."""
    import dask.array as da
    import numpy as np

    h, w = shape

    def tissue(y, x):
        return (np.sin(y / 900.0) * np.cos(x / 1300.0) + 0.3 * np.sin((x + y) / 211.0)) > 0.15

    def make(block_info=None):
        (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
        yy = np.arange(y0, y1, dtype=np.float32)[:, None]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :]
        t = tissue(yy, xx)
        rng = np.random.default_rng(y0 * 131 + x0)
        noise = rng.integers(0, 24, (y1 - y0, x1 - x0, 1), dtype=np.uint8)
        out = np.where(
            t[..., None], np.array([170, 80, 150], np.uint8), np.array([232, 228, 234], np.uint8)
        )
        # In 16 bits and clipped: uint8 wrapped glass blue (234 + 23) round to 0-1,
        # bright yellow specks on 8% of the glass, which the ink then recoloured.
        return np.minimum(out.astype(np.uint16) + noise, 255).astype(np.uint8)

    arr = da.empty((h, w, 3), dtype=np.uint8, chunks=(block, block, 3)).map_blocks(
        lambda b, block_info=None: make(block_info), dtype=np.uint8
    )
    my = np.arange(0, h, 16, dtype=np.float32)[:, None] + 8
    mx = np.arange(0, w, 16, dtype=np.float32)[None, :] + 8
    return arr, tissue(my, mx).astype(np.uint8)


def child(args) -> dict:
    """One configuration in this process."""
    from napari_gigapixel.core.events import Finished, StepEvent
    from napari_gigapixel.core.masks import AnnotationMask
    from napari_gigapixel.core.training import TrainConfig, train
    from napari_gigapixel.core.unet import preset_config

    shape = SIZES[args.size]
    image, mask = synthetic(shape)
    cfg = TrainConfig(
        images=[image],
        masks=[AnnotationMask(mask, 16.0, "dense", "synthetic")],
        out=args.out,
        steps=args.steps,
        loss=args.loss,
        tile=args.tile if args.tile == "auto" else int(args.tile),
        memory_gb=args.memory_gb,
        mode=args.mode,
        model=preset_config(args.model_size, output_stride=args.output_stride),
        mixed_precision={"auto": "auto", "mixed": True, "float32": False}[args.precision],
        checkpoint_every=0,
        overwrite=True,  # the benchmark's own scratch model
        augment=args.augment,
    )
    t0 = time.perf_counter()
    steps = []
    result = {}
    for ev in train(cfg):
        if isinstance(ev, StepEvent):
            steps.append(ev.seconds)
        elif isinstance(ev, Finished):
            result = ev.result
    mpx = shape[0] * shape[1] / 1e6
    steady = steps[1:] or steps  # the first step traces and compiles
    best = min(steady)
    return {
        "size_mpx": round(mpx, 1),
        "mode": args.mode,
        "loss": args.loss,
        "output_stride": args.output_stride,
        "precision": args.precision,
        "model_size": args.model_size,
        "step_seconds": [round(s, 3) for s in steps],
        "augment": args.augment,
        "seconds_per_step": round(best, 3),
        # Over a run: the recipe's ink is drawn on about half the steps, which
        # the best step leaves out and the mean of the steady steps keeps.
        "mean_seconds_per_step": round(sum(steady) / len(steady), 3),
        "mpx_per_s": round(mpx / best, 1),
        "peak_rss_gib": round(result["peak_rss_bytes"] / 2**30, 3),
        "tile": result["tile"],
        "n_tiles": result["n_tiles"],
        "total_seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    from _bench_common import add_model_size

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 67, 268, 1024])
    p.add_argument("--modes", nargs="+", default=["stream", "whole"])
    p.add_argument("--whole-max", type=int, default=67, help="largest size run whole-image")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--loss", default="dice")
    p.add_argument("--tile", default="auto")
    p.add_argument("--memory-gb", type=float, default=3.5)
    p.add_argument("--output-stride", type=int, default=4)
    p.add_argument("--precision", choices=("auto", "mixed", "float32"), default="auto")
    p.add_argument(
        "--augment", default="auto", help="train --augment mode (default: the recipe's, auto)"
    )
    add_model_size(p)
    p.add_argument("--out", default="/tmp/bench_train.keras")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="stream", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    runs = []
    for size in args.sizes:
        for mode in args.modes:
            if mode == "whole" and size > args.whole_max:
                continue
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--size",
                str(size),
                "--mode",
                mode,
                "--steps",
                str(args.steps),
                "--loss",
                args.loss,
                "--tile",
                args.tile,
                "--memory-gb",
                str(args.memory_gb),
                "--output-stride",
                str(args.output_stride),
                "--out",
                args.out,
            ]
            cmd += ["--precision", args.precision, "--model-size", args.model_size]
            cmd += ["--augment", args.augment]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                runs.append({"size_mpx": size, "mode": mode, "error": proc.stderr[-800:]})
            else:
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), file=sys.stderr)
    print(json.dumps({"benchmark": "train", "runs": runs}))


if __name__ == "__main__":
    main()
