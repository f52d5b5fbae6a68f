"""Two training tiles at once, each on one core, against one tile at a time on all cores.

A probe for issue 11 (README, Roofline): TensorFlow's intra-op pool is
process-wide and fixed once TensorFlow starts, so each mode runs in its own
process. ``one``: the default pool, tiles one after another. ``two``: the pool
at one thread and two Python threads, each computing its own tiles (TensorFlow
drops the GIL). Both run the trainer's compiled tile functions
(:class:`napari_gigapixel.core._backend.TileStep`, the recipe's loss) on a core
of ``--core`` pixels with the model's halo, and report seconds per tile and
megapixels of core per second. Prints one JSON object.

    python benchmarks/bench_concurrent_tiles.py --core 4096 --tiles 8 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

from _bench_common import add_model_size


def _measure(mode: str, kind: str, core: int, tiles: int, size: str) -> dict:
    """This process's seconds per tile (``mode`` must be set before TF starts)."""
    import tensorflow as tf

    if mode == "two":
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(2)
    import dataclasses

    import numpy as np

    from napari_gigapixel.core._backend import TileStep
    from napari_gigapixel.core.geometry import model_geometry
    from napari_gigapixel.core.train_config import TrainConfig
    from napari_gigapixel.core.unet import PRESETS, build_unet

    cfg = TrainConfig(images=["-"], masks=["-"], out="-")
    mcfg = dataclasses.replace(cfg.model, **PRESETS[size])  # the recipe's, at that size
    model = build_unet(mcfg, seed=0, dtype="mixed_bfloat16")
    geo = model_geometry(model)
    step = TileStep(model, 16, cfg.loss)
    os_, halo = geo.output_stride, geo.halo
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (core + 2 * halo, core + 2 * halo, 3), dtype=np.uint8)
    y = (rng.random((core // os_, core // os_)) > 0.5).astype(np.uint8)
    w = np.ones_like(y)
    o = halo // os_

    def one() -> None:
        if kind == "gradient":
            step.gradient(x, y, w, o, o, c_bce=1e-6, c_da=1e-6, c_db=1e-6)
        else:
            step.forward(x, y, w, o, o)

    one()
    one()  # traced and warm
    t0 = time.perf_counter()
    if mode == "one":
        for _ in range(tiles):
            one()
    else:
        workers = [
            threading.Thread(target=lambda k=k: [one() for _ in range(k)])
            for k in (tiles // 2, tiles - tiles // 2)
        ]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    dt = time.perf_counter() - t0
    rate = tiles * core**2 / dt / 1e6
    return {"s_per_tile": round(dt / tiles, 4), "core_mpx_per_s": round(rate, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--core", type=int, default=4096, help="tile core side (pixels)")
    p.add_argument("--tiles", type=int, default=8, help="tiles per measurement")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per mode")
    p.add_argument("--_child", nargs=2, metavar=("MODE", "KIND"), help=argparse.SUPPRESS)
    add_model_size(p)
    args = p.parse_args()
    if args._child:
        mode, kind = args._child
        print(json.dumps(_measure(mode, kind, args.core, args.tiles, args.model_size)))
        return
    out: dict = {
        "benchmark": "concurrent_tiles",
        "core": args.core,
        "tiles": args.tiles,
        "model_size": args.model_size,
        "cpus": os.cpu_count(),
    }
    for kind in ("gradient", "forward"):
        for _ in range(args.rounds):
            for mode in ("one", "two"):
                cmd = [sys.executable, __file__, "--core", str(args.core), "--tiles"]
                cmd += [str(args.tiles), "--model-size", args.model_size, "--_child", mode, kind]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                row = json.loads(res.stdout.splitlines()[-1])
                out.setdefault(f"{kind}_{mode}", []).append(row)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
