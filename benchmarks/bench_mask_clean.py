"""Speed and memory of the mask clean-up pass (``core/mask_clean.py``); prints JSON.

A synthetic predicted mask (smoothed noise, thresholded, with 1-px specks) of
``--height x --width`` pixels at the prediction's grid (a 1.024 Gpx slide at
output stride 4 is 4000 x 16000) is written to a zarr store in ``--chunk``
chunks, then cleaned by ``clean_zarr_array`` with the default settings at
``--grid-mpp`` um/px, as ``predict`` does. Reports seconds, Mpx/s and the
peak memory the clean pass allocates (with --memory,
tracemalloc, numpy buffers included; a separate run, as tracing slows it).

    python benchmarks/bench_mask_clean.py --height 4000 --width 16000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import tracemalloc

import numpy as np


def _mask(shape, chunk, seed=0):
    """Blobs of a few hundred pixels across plus specks, built chunk-row by chunk-row."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    rows = []
    for y in range(0, shape[0], chunk):
        h = min(chunk, shape[0] - y)
        f = ndimage.gaussian_filter(rng.standard_normal((h, shape[1])).astype(np.float32), 8)
        m = f > 0.2 * f.std()
        m ^= rng.random((h, shape[1])) < 0.002
        rows.append(m.astype(np.uint8))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--height", type=int, default=4000)
    p.add_argument("--width", type=int, default=16000)
    p.add_argument("--chunk", type=int, default=512, help="zarr chunk (predict: 2048 / 4)")
    p.add_argument("--grid-mpp", type=float, default=2.0, help="um/px of the grid")
    p.add_argument(
        "--memory", action="store_true", help="trace the peak allocation (slows the run)"
    )
    args = p.parse_args()

    import zarr

    from napari_gigapixel.core.mask_clean import CleanSettings, clean_zarr_array

    shape = (args.height, args.width)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "0")
        arr = zarr.create_array(
            store=path, shape=shape, chunks=(args.chunk,) * 2, dtype="uint8", zarr_format=2
        )
        y = 0
        for row in _mask(shape, args.chunk):
            arr[y : y + row.shape[0]] = row
            y += row.shape[0]
        settings = CleanSettings()
        px = settings.to_pixels(args.grid_mpp)
        if args.memory:
            tracemalloc.start()
        t0 = time.perf_counter()
        gen = clean_zarr_array(path, px)
        while True:
            try:
                next(gen)
            except StopIteration as fin:
                tissue = int(fin.value)
                break
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] if args.memory else None
        tracemalloc.stop()
    print(
        json.dumps(
            {
                "shape": list(shape),
                "chunk": args.chunk,
                "settings": settings.to_dict(),
                "radius_px": px.radius_px,
                "min_object_px": px.min_object_px,
                "seconds": round(seconds, 2),
                "mpx_per_s": round(shape[0] * shape[1] / 1e6 / seconds, 1),
                "peak_traced_mib": None if peak is None else round(peak / 2**20, 1),
                "tissue_fraction": tissue / (shape[0] * shape[1]),
                "cpu_count": os.cpu_count(),
                "note": "2 CPU cores shared with other jobs",
            }
        )
    )


if __name__ == "__main__":
    main()
