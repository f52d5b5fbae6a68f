"""Cost of the whole-slide augmentation per training step, against no augmentation.

One process per slide size: the synthetic slide of ``bench_train.py`` is
decoded once, then full training steps' gradients (``image_step``, the
trainer's own tile path, default model and loss, ``tile="auto"`` within
``--memory-gb``) are timed with each augmentation mode in turn, round after
round (interleaved, so host noise hits every mode alike); the median per mode
is reported with its extra cost over "none", in wall-clock seconds and in the
process's CPU seconds (all threads; steadier than wall time on a shared host).
Also times the augmentation of one window alone (``SlideView.window``).
Modes are drawn as a white-balanced run (the default) draws them: ``stain``
keeps the glass white, and ``ink`` (drawn on half of a run's steps) is on in
every round, so its figure is the cost of a step that recolours; ``pen`` (the
recipe's) is the ink plus one draw of pen strokes, both on in every round;
``pen-weighted`` is "pen" with the strokes' glass weighed 8 in the loss
(``--pen-weight 8``: the labels' cover of the strokes on each tile).
Prints one JSON object.

Usage::

    python benchmarks/bench_augment.py --sizes 16 67 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODES = ("none", "flip", "stain", "ink", "pen", "pen-weighted", "all")
#: The loss weight of "pen-weighted" (``TrainConfig.pen_weight``).
PEN_WEIGHT = 8


def child(size: int, rounds: int, memory_gb: float, loss: str, model_size: str) -> dict:
    import numpy as np
    from bench_train import SIZES, synthetic

    from napari_gigapixel.core import _backend
    from napari_gigapixel.core._quiet_tf import load_keras_quietly
    from napari_gigapixel.core._resources import auto_core, bytes_per_pixel, current_rss_bytes
    from napari_gigapixel.core._train_augment import SlideView
    from napari_gigapixel.core._train_data import build_image_data
    from napari_gigapixel.core.image_step import image_step
    from napari_gigapixel.core.input_norm import WHITE
    from napari_gigapixel.core.masks import AnnotationMask
    from napari_gigapixel.core.stain import Augmentation, draw_augmentation
    from napari_gigapixel.core.tiling import tile_grid
    from napari_gigapixel.core.unet import build_unet, model_geometry, preset_config

    load_keras_quietly()
    shape = SIZES[size]
    image, mask = synthetic(shape)
    data = build_image_data(
        np.asarray(image),
        AnnotationMask(mask, 16.0, "dense", "synthetic"),
        roi=None,
        kind="dense",
        output_stride=4,
        cache_in_memory=lambda n: True,
    )
    from napari_gigapixel.core._resources import use_mixed_precision

    dtype = "mixed_bfloat16" if use_mixed_precision("auto") else "float32"
    model = build_unet(preset_config(model_size), seed=0, dtype=dtype)
    geo = model_geometry(model)
    budget = memory_gb * 2**30 - current_rss_bytes()
    core = auto_core(data.shape, geo, bytes_per_pixel(model), budget)
    step = _backend.TileStep(model, 8)
    # One ink for every round (a step of seed 0 whose draw turns it on).
    ink = next(
        a.ink
        for a in (draw_augmentation(0, s, "ink", keep_white=WHITE) for s in range(1, 100))
        if a.ink is not None
    )
    # One set of pen strokes for every round ("pen": these and the ink).
    pen = next(
        a.pen
        for a in (draw_augmentation(0, s, "pen", keep_white=WHITE) for s in range(1, 100))
        if a.pen is not None
    )
    times: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    window_times: dict[str, list[float]] = {m: [] for m in MODES}
    n_tiles = {}
    for r in range(rounds + 1):  # round 0 warms up (tracing, XLA compiles)
        for mode in MODES:
            # White-balanced runs (the default) keep the glass white; the ink
            # needs that white, and is drawn on half the steps: timed here on
            # every step (its cost when on), with one ink for all rounds.
            weighted = mode == "pen-weighted"
            aug = draw_augmentation(0, 1 + r, "pen" if weighted else mode, keep_white=WHITE)
            # The same turn every round, so the tile grid is the same.
            aug = Augmentation(
                1 if aug.geometric else 0,
                aug.geometric,
                aug.colour,
                ink if mode in ("ink", "pen", "pen-weighted", "all") else None,
                pen if mode in ("pen", "pen-weighted") else None,
            )
            data.pen_weight = PEN_WEIGHT if weighted else 1
            view = SlideView(data, 4, aug)
            grid = tile_grid(view.shape, core, geo.halo, geo.stride)
            n_tiles[mode] = len(grid)
            t0 = time.perf_counter()
            view.window(grid[0].window)
            t1, c1 = time.perf_counter(), time.process_time()
            image_step(step, view, grid, geo, loss, data.n_labelled, 8)
            t2, c2 = time.perf_counter(), time.process_time()
            if r:
                window_times[mode].append(t1 - t0)
                times[mode].append(t2 - t1)
                cpu[mode].append(c2 - c1)
    med = {m: float(np.median(v)) for m, v in times.items()}
    cpu_med = {m: float(np.median(v)) for m, v in cpu.items()}
    return {
        "size_mpx": round(shape[0] * shape[1] / 1e6, 1),
        "loss": loss,
        "precision": dtype,
        "tile": core,
        "n_tiles": n_tiles,
        "step_seconds_median": {m: round(v, 3) for m, v in med.items()},
        "extra_vs_none": {m: round(med[m] / med["none"] - 1, 3) for m in MODES},
        "cpu_seconds_median": {m: round(v, 3) for m, v in cpu_med.items()},
        "cpu_extra_vs_none": {m: round(cpu_med[m] / cpu_med["none"] - 1, 3) for m in MODES},
        "first_window_seconds_median": {
            m: round(float(np.median(v)), 3) for m, v in window_times.items()
        },
        "step_seconds": {m: [round(x, 3) for x in v] for m, v in times.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 67])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--memory-gb", type=float, default=3.5)
    p.add_argument("--loss", default="dice+bce")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    from _bench_common import add_model_size

    add_model_size(p)
    args = p.parse_args()
    if args.child:
        print(
            json.dumps(child(args.child, args.rounds, args.memory_gb, args.loss, args.model_size))
        )
        return
    runs = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--child", str(size), "--rounds", str(args.rounds)]
        cmd += ["--memory-gb", str(args.memory_gb), "--loss", args.loss]
        cmd += ["--model-size", args.model_size]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            runs.append({"size_mpx": size, "error": proc.stderr[-800:]})
        else:
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), file=sys.stderr)
    print(json.dumps({"benchmark": "augment", "runs": runs}))


if __name__ == "__main__":
    main()
