"""Benchmark tiled inference on a gigapixel slide; prints one JSON object.

Measures, each in a fresh subprocess (so peak RSS is per scenario):

- ``decode``: reading (JPEG-decoding) the slide's level 0 through dask, alone;
- ``compute``: inference and OME-Zarr writing of a slide-sized image that
  needs no decoding (a generated pattern), i.e. the model's cost alone;
- ``threads``: end to end, slide file to OME-Zarr, local threaded scheduler;
- ``distributed``: the same on a local ``dask.distributed`` cluster of two
  single-threaded worker processes (peak RSS summed over the workers).

Run it alone on the machine (``flock /tmp/heavy.lock``)::

    flock /tmp/heavy.lock .venv/bin/python benchmarks/bench_predict.py
    .venv/bin/python benchmarks/bench_predict.py --shape 4096x16384   # quick

The slide (synthetic, JPEG, 16,000 x 64,000 = 1.024 Gpx by default) is made
once into the cache folder and reused. The model is the recipe's U-Net with
random weights (inference cost does not depend on the weights), standardised
and white-balanced as a trained model is.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCENARIOS = ("decode", "compute", "threads", "distributed")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _make_model(path: Path, size: str) -> None:
    from napari_gigapixel.core.unet import build_unet, model_geometry, preset_config, save_model

    # The form a trained recipe model has: standardised input (per-channel
    # statistics in its input layer) and the local white balance (predict
    # balances each slide per cell), so both costs are in the figures.
    mcfg = preset_config(
        size,
        input_mean=(205.0, 185.0, 210.0),
        input_std=(40.0, 50.0, 35.0),
        white_balance=True,
        white_field=True,
    )
    model = build_unet(mcfg, seed=0)
    save_model(model, path, geometry=model_geometry(model), model_config=mcfg)


def _run_predict(cfg) -> dict:
    from napari_gigapixel.core.events import Finished
    from napari_gigapixel.core.inference import predict

    for event in predict(cfg):
        if isinstance(event, Finished):
            return event.result
    raise RuntimeError("predict ended without a result")


def scenario(name: str, args: argparse.Namespace) -> dict:
    """Run one scenario in this process; return its figures."""
    import dask.array as da
    import numpy as np

    from napari_gigapixel.core.inference import PredictConfig

    h, w = args.shape
    mpx = h * w / 1e6
    if args.work:
        os.makedirs(args.work, exist_ok=True)
    out_dir = Path(tempfile.mkdtemp(prefix="bench-predict-", dir=args.work))
    out = str(out_dir / "pred.zarr")
    t0 = time.perf_counter()
    if name == "decode":
        from napari_gigapixel.core.slide import open_slide

        level0 = open_slide(args.slide).levels[0]
        level0.max().compute(scheduler="threads")
        secs = time.perf_counter() - t0
        return {"seconds": secs, "mpx_per_s": mpx / secs, "peak_rss_bytes": _peak_rss()}
    if name == "compute":
        tile = np.random.default_rng(0).integers(0, 256, (4096, 4096, 3), dtype=np.uint8)

        def pattern(block_info=None):
            (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
            return tile[: y1 - y0, : x1 - x0].copy()

        chunks = tuple((4096,) * (n // 4096) + ((n % 4096,) if n % 4096 else ()) for n in (h, w))
        image = da.map_blocks(pattern, chunks=(*chunks, (3,)), dtype=np.uint8)
        cfg = PredictConfig(
            model=args.model,
            image=image,
            out=out,
            chunk=args.chunk,
            mixed_precision=args.mixed,
            tta=args.tta,
        )
        res = _run_predict(cfg)
    elif name == "threads":
        cfg = PredictConfig(
            model=args.model,
            image=args.slide,
            out=out,
            chunk=args.chunk,
            mixed_precision=args.mixed,
            tta=args.tta,
        )
        res = _run_predict(cfg)
    elif name == "distributed":
        from distributed import Client, LocalCluster

        with (
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
            Client(cluster) as client,
        ):
            cfg = PredictConfig(
                model=args.model,
                image=args.slide,
                out=out,
                chunk=args.chunk,
                scheduler=cluster.scheduler_address,
                mixed_precision=args.mixed,
                tta=args.tta,
            )
            res = _run_predict(cfg)
            workers = client.run(_peak_rss)
        res["worker_peak_rss_bytes"] = sorted(workers.values())
        res["peak_rss_workers_sum_bytes"] = int(sum(workers.values()))
    else:
        raise SystemExit(f"unknown scenario {name!r}")
    secs = time.perf_counter() - t0
    shutil.rmtree(out_dir, ignore_errors=True)
    return {
        "seconds_total": secs,  # including model loading and pyramid building
        "seconds_predict": res["compute_seconds"],
        "mpx_per_s": res["mpx_per_s"],
        "chunks": res["chunks"],
        "chunk": res["chunk"],
        "peak_rss_bytes": _peak_rss(),
        **{k: v for k, v in res.items() if k.startswith(("worker_", "peak_rss_workers"))},
    }


def _shape(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def main() -> int:
    from napari_gigapixel.core.tiled_model import DEFAULT_TTA, TTA_MODES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=_shape, default=(16000, 64000), help="HxW of the slide")
    p.add_argument("--slide", default=None, help="slide to use (default: a cached synthetic one)")
    p.add_argument("--model", default=None, help="model (default: random default U-Net)")
    p.add_argument("--chunk", type=int, default=None, help="level-0 chunk side")
    p.add_argument("--mixed", action="store_true", help="mixed bfloat16 inference")
    p.add_argument(
        "--tta",
        choices=TTA_MODES,
        default=DEFAULT_TTA,
        help="test-time augmentation, as predict --tta (default %(default)s, predict's)",
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    p.add_argument("--work", default=None, help="folder for outputs (default: system temp)")
    p.add_argument("--scenario", default=None, help=argparse.SUPPRESS)  # child mode
    from _bench_common import add_model_size

    add_model_size(p)
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.scenario:
        print(json.dumps(scenario(args.scenario, args)))
        return 0

    h, w = args.shape
    if args.slide is None:
        from napari_gigapixel.core.synthetic import default_cache_dir, make_synthetic_slide

        folder = default_cache_dir() / "bench"
        folder.mkdir(parents=True, exist_ok=True)
        slide = folder / f"bench_{h}x{w}_seed0.tif"
        if not slide.exists():
            t = time.perf_counter()
            make_synthetic_slide(slide, shape=(h, w), seed=0)
            print(f"made {slide} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        args.slide = str(slide)
    tmp = tempfile.mkdtemp(prefix="bench-predict-model-")
    if args.model is None:
        args.model = str(Path(tmp) / "model.keras")
        _make_model(Path(args.model), args.model_size)
    report: dict = {
        "benchmark": "predict",
        "shape": [h, w],
        "gpx": h * w / 1e9,
        "slide": args.slide,
        "cpus": os.cpu_count(),
        "mixed_precision": args.mixed,
        "tta": args.tta,
    }
    for name in args.scenarios.split(","):
        cmd = [sys.executable, __file__, "--scenario", name, "--shape", f"{h}x{w}"]
        cmd += ["--slide", args.slide, "--model", args.model]
        if args.chunk:
            cmd += ["--chunk", str(args.chunk)]
        if args.mixed:
            cmd += ["--mixed"]
        cmd += ["--tta", args.tta]
        if args.work:
            cmd += ["--work", args.work]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            report[name] = {"error": res.stderr.strip().splitlines()[-1:]}
            continue
        report[name] = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{name}: {report[name]}", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
