"""Seconds of the level-0 count behind ``evaluate``: a prediction read as blocks or
along its probability's threshold line (``core/mask_refine.py``); prints JSON.

A smooth synthetic probability at the prediction's grid (a 1.024 Gpx slide at
output stride 4 is 4000 x 16000), its thresholded mask, and a truth at 1/16
(an annotation level) are counted over the ``--height x --width`` level-0
pixels with :func:`napari_gigapixel.core.confusion.confusion`, as
:func:`~napari_gigapixel.core.metrics.score_prediction` does: once with the mask
as 4 x 4 blocks (one sample per block, the count before the refined reading)
and once refined (every level-0 pixel).

    python benchmarks/bench_evaluate.py --height 16000 --width 64000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--height", type=int, default=16000, help="level-0 height (px)")
    p.add_argument("--width", type=int, default=64000, help="level-0 width (px)")
    args = p.parse_args()

    from napari_gigapixel.core.confusion import confusion, dice
    from napari_gigapixel.core.mask_refine import RefinedMask
    from napari_gigapixel.core.masks import AnnotationMask

    h0, w0 = args.height, args.width
    h, w = -(-h0 // 4), -(-w0 // 4)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Blobs a few hundred level-0 pixels across with ragged, sloped borders.
    f = np.sin(yy / 225.0) * np.cos(xx / 325.0) + 0.3 * np.sin((xx + yy) / 53.0) - 0.15
    prob = np.clip(127.5 + 400.0 * f, 0, 255).astype(np.uint8)
    del yy, xx, f
    mask = (prob >= 128).astype(np.uint8)
    truth = AnnotationMask(np.ascontiguousarray(mask[::4, ::4]), 16.0, "dense", "truth")
    runs = {}
    for name, pred in (
        ("blocks", AnnotationMask(mask, 4.0, "dense", "blocks")),
        ("refined", RefinedMask(prob, mask, 4.0, 0.5, "refined")),
    ):
        t0 = time.perf_counter()
        c = confusion(pred, truth, shape=(h0, w0))
        s = time.perf_counter() - t0
        runs[name] = {
            "seconds": round(s, 2),
            "mpx_per_s": round(h0 * w0 / 1e6 / s, 1),
            "dice": round(dice(c), 6),
        }
    print(
        json.dumps(
            {
                "benchmark": "evaluate",
                "level0_shape": [h0, w0],
                "megapixels": round(h0 * w0 / 1e6, 1),
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
