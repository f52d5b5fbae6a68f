"""Export a gigapixel prediction to QuPath GeoJSON: time, memory, fidelity.

Writes (once per run, in ``--work``) a prediction store as ``predict`` would for
a slide of ``--shape`` (default 16,000 x 64,000, 1.024 Gpx): level 0 at the
model's output stride (1/4, 4,000 x 16,000 = 64 Mpx), filled strip by strip
with tissue-like pieces (ellipses with holes, islands in the holes, specks),
and its pyramids built by ``build_pyramids`` (timed: ``pyramid_s``). Then, in
a fresh child process (so that making the store does not count in its memory),
runs ``napari-gigapixel export`` and measures:

* ``export_s``, ``peak_rss_gib`` of the export process;
* ``features``, ``holes``, ``vertices``, ``file_mb``, ``working_downsample``;
* ``dice``: the GeoJSON read back by the project's reader (``load_mask``, which
  rasterises at the power of two under 16 Mpx) against the prediction sampled
  at the same grid.

Prints one JSON object. Example::

    .venv/bin/python benchmarks/bench_export.py --shape 16000x64000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _pieces(shape: tuple[int, int], seed: int) -> list[tuple[float, ...]]:
    """Ellipses (cy, cx, ry, rx, hole fraction) in store pixels."""
    rng = np.random.default_rng(seed)
    h, w = shape
    out = []
    for _ in range(40):
        ry, rx = rng.uniform(0.03, 0.15) * h, rng.uniform(0.01, 0.05) * w
        out.append((rng.uniform(0, h), rng.uniform(0, w), ry, rx, rng.uniform(0.0, 0.5)))
    return out


def _write_store(path: Path, slide_shape: tuple[int, int], seed: int) -> float:
    from napari_gigapixel.core.prediction_store import (
        build_pyramids,
        commit_store,
        create_store,
        mark_complete,
    )

    d = 4
    shape = (-(-slide_shape[0] // d), -(-slide_shape[1] // d))
    meta = {
        "kind": "prediction",
        "downsample": float(d),
        "slide_shape": list(slide_shape),
        "offset": [0, 0],
        "region_shape": list(slide_shape),
        "threshold": 0.5,
    }
    tmp = str(path) + ".partial"
    prob, mask = create_store(tmp, shape, 1024, meta)
    pieces = _pieces(shape, seed)
    rng = np.random.default_rng(seed + 1)
    for y0 in range(0, shape[0], 1024):
        yy, xx = np.mgrid[y0 : min(y0 + 1024, shape[0]), 0 : shape[1]].astype(np.float32)
        m = np.zeros(yy.shape, bool)
        for cy, cx, ry, rx, hole in pieces:
            r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
            ring = (r < 1) & (r >= hole**2)
            m |= ring | (r < (hole / 3) ** 2)  # an island inside the hole
        m ^= rng.random(m.shape) < 1e-4  # specks and pinholes
        prob[y0 : y0 + 1024] = m * np.uint8(255)
        mask[y0 : y0 + 1024] = m
    t0 = time.perf_counter()
    build_pyramids(tmp)
    pyramid_s = time.perf_counter() - t0
    mark_complete(tmp)
    commit_store(tmp, path, overwrite=True)
    return pyramid_s


def _child(store: str, out: str) -> None:
    from napari_gigapixel.core.export import export_geojson

    res = export_geojson(store, out, overwrite=True)
    res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(res))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="16000x64000", help="slide level 0, HxW")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="folder for the store and the GeoJSON")
    p.add_argument("--child", nargs=2, metavar=("STORE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(*args.child)
        return
    h, w = (int(v) for v in args.shape.lower().split("x"))
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_export_"))
    work.mkdir(parents=True, exist_ok=True)
    store, out = work / "pred.zarr", work / "pred.geojson"
    pyramid_s = _write_store(store, (h, w), args.seed)
    t0 = time.perf_counter()
    child = subprocess.run(
        [sys.executable, __file__, "--child", str(store), str(out)],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    )
    wall = time.perf_counter() - t0
    res = json.loads(child.stdout.strip().splitlines()[-1])

    from napari_gigapixel.core.mask_io import load_mask
    from napari_gigapixel.core.prediction_store import open_prediction

    back = load_mask(out, (h, w))
    d = int(back.downsample)
    pred = open_prediction(store)
    from napari_gigapixel.core.masks import AnnotationMask

    truth = AnnotationMask(pred.mask[0], pred.downsample).read_window(0, h, 0, w, d) > 0
    got = np.asarray(back.array)[: truth.shape[0], : truth.shape[1]] > 0
    dice = 2 * float((truth & got).sum()) / max(1, int(truth.sum() + got.sum()))
    print(
        json.dumps(
            {
                "slide_shape": [h, w],
                "store_level0": list(pred.mask[0].shape),
                "pyramid_s": round(pyramid_s, 2),
                "export_s": round(res["seconds"], 2),
                "export_process_s": round(wall, 2),
                "peak_rss_gib": round(res["peak_rss_gib"], 3),
                "working_downsample": res["working_downsample"],
                "features": res["features"],
                "holes": res["holes"],
                "vertices": res["vertices"],
                "file_mb": round(out.stat().st_size / 2**20, 2),
                "reread_downsample": d,
                "dice": round(dice, 5),
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
