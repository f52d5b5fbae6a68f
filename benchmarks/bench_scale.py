"""Scaling of a training step: slides per step, and a LocalCluster against one process.

Writes N synthetic H&E-like slides (tiled uncompressed TIFFs, so the workers read
them by path) with 1/16 masks, then, each in its own child process, runs
``train`` for a few steps:

- one process with 1, 2 and 4 slides per step;
- the same on a ``dask.distributed`` LocalCluster of 2 worker processes
  (``train --scheduler``): 1 slide (its tiles split over the workers, Dice's
  sums reduced on the client) and 2 and 4 slides (whole slides per worker).

Prints one JSON object: per configuration the step times, the best steady
step, Mpx/s, the bytes a step sends between client and workers (weights out,
float64 gradients and previews back; counted from the model and the plan),
and the roofline fraction when ``--limit-s-per-gpx`` (from
``bench_roofline.py``) is given.

Usage::

    python benchmarks/bench_scale.py --side 4096 --steps 3 --limit-s-per-gpx 4.35
    python benchmarks/bench_scale.py --slides 1 --tile 2048 --limit-s-per-gpx 4.35
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def make_slides(folder: str, n: int, side: int) -> list[tuple[str, str]]:
    """``n`` slides of ``side x side`` pixels with their 1/16 masks (cached by name)."""
    import numpy as np
    import tifffile

    sys.path.insert(0, HERE)
    from bench_train import synthetic

    out = []
    for i in range(n):
        img_p = os.path.join(folder, f"slide{i}_{side}.tif")
        msk_p = os.path.join(folder, f"slide{i}_{side}_mask.tif")
        if not (os.path.exists(img_p) and os.path.exists(msk_p)):
            arr, mask = synthetic((side, side + 512 * i))  # different sizes: real cohorts
            tifffile.imwrite(img_p + ".tmp", np.asarray(arr), tile=(512, 512))
            tifffile.imwrite(msk_p, mask)
            os.replace(img_p + ".tmp", img_p)
        out.append((img_p, msk_p))
    return out


def child(args) -> dict:
    """One configuration in this process (a LocalCluster when ``--workers`` > 0)."""
    from napari_gigapixel.core.events import Finished, StepEvent
    from napari_gigapixel.core.training import TrainConfig, train

    pairs = json.loads(args.pairs)
    cluster = None
    scheduler = None
    if args.workers:
        from distributed import LocalCluster

        cluster = LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        )
        scheduler = cluster.scheduler_address
    cfg = TrainConfig(
        images=[p[0] for p in pairs],
        masks=[p[1] for p in pairs],
        out=os.path.join(args.work, f"scale_{os.getpid()}.keras"),
        steps=args.steps,
        loss=args.loss,
        tile=args.tile if args.tile == "auto" else int(args.tile),
        memory_gb=args.memory_gb,
        checkpoint_every=0,
        scheduler=scheduler,
        overwrite=True,  # the recipe's defaults, white balance and standardisation included
    )
    t0 = time.perf_counter()
    steps, result = [], {}
    try:
        for ev in train(cfg):
            if isinstance(ev, StepEvent):
                steps.append(ev.seconds)
            elif isinstance(ev, Finished):
                result = ev.result
    finally:
        if cluster is not None:
            cluster.close()
    best = min(steps[1:] or steps)
    mpx = result["megapixels"]
    from napari_gigapixel.core.unet import count_params, load_model

    return {
        # The model the run built (the recipe's unless told otherwise): what a
        # step sends, weights out and gradients back, is counted from it.
        "parameters": count_params(load_model(cfg.out)[0]),
        "slides": len(pairs),
        "workers": args.workers or 1,
        "mode": "LocalCluster" if args.workers else "one process",
        "megapixels": round(mpx, 1),
        "n_tiles": result["n_tiles"],
        "step_seconds": [round(s, 3) for s in steps],
        "seconds_per_step": round(best, 3),
        "mpx_per_s": round(mpx / best, 1),
        "client_peak_rss_gib": round(result["peak_rss_bytes"] / 2**30, 2),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }


def bytes_per_step(
    n_slides: int, workers: int, n_tiles: int, mpx: float, loss: str, params: int
) -> int:
    """Client <-> worker bytes of one step: weights out (float32), float64 gradients
    and previews back, for a model of ``params`` trainable parameters."""
    if workers <= 1:
        return 0
    split = n_slides < workers and n_tiles > n_slides  # tiles shared out (one slide here)
    tasks = min(workers, n_tiles) if split else n_slides
    rounds = 2 if (split and "dice" in loss) else 1
    preview = mpx * 1e6 / 32**2 * 4  # float32 preview at 1/32
    return int(tasks * rounds * 4 * params + tasks * 8 * params + preview)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=4096, help="slide height (width grows per slide)")
    p.add_argument("--slides", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--cluster-workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--loss", default="dice+bce")
    p.add_argument("--memory-gb", type=float, default=3.5)
    p.add_argument("--tile", default="auto", help="core size: 'auto' or pixels")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bench_scale"))
    p.add_argument("--limit-s-per-gpx", type=float, default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pairs", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    os.makedirs(args.work, exist_ok=True)
    pairs = make_slides(args.work, max(args.slides), args.side)
    runs = []
    for workers in (0, args.cluster_workers):
        for n in args.slides:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--pairs",
                json.dumps(pairs[:n]),
                "--workers",
                str(workers),
                "--steps",
                str(args.steps),
                "--loss",
                args.loss,
                "--memory-gb",
                str(args.memory_gb),
                "--tile",
                str(args.tile),
                "--work",
                args.work,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                runs.append({"slides": n, "workers": workers, "error": proc.stderr[-1500:]})
            else:
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r["bytes_per_step"] = bytes_per_step(
                    n, r["workers"], r["n_tiles"], r["megapixels"], args.loss, r["parameters"]
                )
                if args.limit_s_per_gpx:
                    limit = args.limit_s_per_gpx * r["megapixels"] / 1024.0
                    r["fraction_of_limit"] = round(limit / r["seconds_per_step"], 3)
                runs.append(r)
            print(json.dumps(runs[-1]), file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "scale",
                "cpu_count": os.cpu_count(),
                "loss": args.loss,
                "side": args.side,
                "tile": args.tile,
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
