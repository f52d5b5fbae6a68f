"""What each working resolution costs and gives: train at level 0, 1 and 2, score held out.

Makes two synthetic slides of the same size (pyramidal JPEG TIFFs at 0.5 um/px,
levels at downsample 1, 2, 4, ...; different seeds), trains a model on slide A
at each ``--level`` with the CLI (each run its own process, so the peak RSS is
its own), predicts the held-out slide B at the model's own resolution (the
default of ``predict``) and scores it with ``evaluate`` in level-0 pixels,
so the Dice of every resolution is measured on the same pixels. Prints one
JSON object.

Usage::

    python benchmarks/bench_resolution.py                      # 8192 x 8192 (67 Mpx)
    python benchmarks/bench_resolution.py --side 16384 --steps 20 --levels 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def _cli(*args: str) -> dict:
    cmd = [sys.executable, "-m", "napari_gigapixel", *args, "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=8192, help="level-0 side of the square slides")
    p.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--memory-gb", type=float, default=3.5)
    p.add_argument("--work", default=None, help="folder for the slides (default: a temp one)")
    args = p.parse_args()

    from napari_gigapixel.core.synthetic import make_synthetic_slide

    work = args.work or tempfile.mkdtemp(prefix="bench-resolution-")
    os.makedirs(work, exist_ok=True)
    shape = (args.side, args.side)
    slides = {}
    t0 = time.perf_counter()
    for name, seed in (("train", 0), ("held_out", 1)):
        path = os.path.join(work, f"{name}.tif")
        mask = os.path.join(work, f"{name}_mask.tif")
        if not (os.path.exists(path) and os.path.exists(mask)):
            make_synthetic_slide(path, shape=shape, seed=seed, mask_out=mask)
        slides[name] = (path, mask)
    make_seconds = time.perf_counter() - t0
    runs = []
    for level in args.levels:
        model = os.path.join(work, f"level{level}.keras")
        pred = os.path.join(work, f"level{level}.zarr")
        tr = _cli(
            "train",
            "--image",
            slides["train"][0],
            "--mask",
            slides["train"][1],
            "--out",
            model,
            "--steps",
            str(args.steps),
            "--level",
            str(level),
            "--memory-gb",
            str(args.memory_gb),
            "--checkpoint-every",
            str(args.steps),
        )
        pr = _cli(
            "predict",
            "--model",
            model,
            "--image",
            slides["held_out"][0],
            "--out",
            pred,
            "--overwrite",
            "--quiet",
        )
        ev = _cli("evaluate", "--pred", pred, "--truth", slides["held_out"][1])
        res = tr["resolution"]
        runs.append(
            {
                "level": level,
                "um_per_px": res["mpp"],
                "downsample": res["downsample"],
                "train_megapixels": round(tr["megapixels"], 2),
                "seconds_per_step": round(tr["seconds_per_step"], 3),
                "peak_rss_gib": tr["peak_rss_gib"],
                "tiles": tr["n_tiles"],
                "train_dice": round(tr["dice"], 4),
                "held_out_dice": round(ev["dice"], 4),
                "otsu_dice": round(ev["otsu_dice"], 4) if ev["otsu_dice"] is not None else None,
                "predict_seconds": round(pr["seconds"], 1),
            }
        )
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "benchmark": "resolution",
                "slide_megapixels": round(shape[0] * shape[1] / 1e6, 1),
                "steps": args.steps,
                "memory_gb": args.memory_gb,
                "make_slides_seconds": round(make_seconds, 1),
                "cpus": os.cpu_count(),
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
