"""Benchmark: generate a synthetic slide + mask (default 16,000 x 64,000) and print one JSON line.

Run heavy sizes under the shared lock::

    flock /tmp/heavy.lock .venv/bin/python benchmarks/bench_synthetic.py
    .venv/bin/python benchmarks/bench_synthetic.py --shape 4096x16384

Figures: ``seconds`` (wall, scene tables + slide + mask, all pyramid
levels), ``mpx_per_s`` (level-0 megapixels per second), ``peak_rss_gib``
(``ru_maxrss`` of this process; target < 2 GiB), file sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

from napari_gigapixel.core.synthetic import make_synthetic_slide, parse_shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="16000x64000", help="HEIGHTxWIDTH")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compression", default="jpeg")
    parser.add_argument("--out", default=None, help="folder to keep the files in")
    args = parser.parse_args(argv)
    shape = parse_shape(args.shape)
    folder = args.out or tempfile.mkdtemp(prefix="bench-synthetic-")
    try:
        start = time.perf_counter()
        slide, mask = make_synthetic_slide(
            os.path.join(folder, "bench.ome.tif"),
            shape=shape,
            seed=args.seed,
            compression=args.compression,
        )
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        if sys.platform == "darwin":
            peak //= 1024  # bytes on macOS
        mpx = shape[0] * shape[1] / 1e6
        print(
            json.dumps(
                {
                    "benchmark": "synthetic_slide",
                    "shape": list(shape),
                    "compression": args.compression,
                    "megapixels": mpx,
                    "seconds": round(seconds, 2),
                    "mpx_per_s": round(mpx / seconds, 2),
                    "peak_rss_gib": round(peak / 2**30, 3),
                    "slide_mb": round(os.path.getsize(slide) / 1e6, 1),
                    "mask_mb": round(os.path.getsize(mask) / 1e6, 1),
                    "cpus": os.cpu_count(),
                    "machine": platform.machine(),
                }
            )
        )
    finally:
        if args.out is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
