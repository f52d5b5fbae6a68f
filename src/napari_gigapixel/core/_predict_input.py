"""What ``predict`` runs the model over: the slide at its working resolution, ROI applied.

Kept apart from :mod:`.inference` (which writes the store and relays
progress). The resolution is resolved by :mod:`.resolution`; a slide on a
distributed cluster is read by tasks that open it by path.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from .tiled_model import _MODELS_LOCK

_SLIDES: dict[str, Any] = {}


def balance_chunk(block, balance, origin, downsample, block_info=None):
    """One chunk white-balanced (:func:`.input_norm.balance_pixels`) at its place."""
    from .input_norm import balance_pixels

    (y0, _), (x0, _) = block_info[0]["array-location"][:2]
    return balance_pixels(block, balance, origin[0] + y0, origin[1] + x0, downsample)


def _read_slide_block(path: str, block_info=None, level: int = 0) -> np.ndarray:
    """One chunk of a slide's level, read by path (picklable: for distributed workers)."""
    from .slide import open_slide

    with _MODELS_LOCK:
        if path not in _SLIDES:
            _SLIDES[path] = open_slide(path)
        slide = _SLIDES[path]
    (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
    # Synchronously: this runs inside a worker's task already.
    arr = slide.levels[level][y0:y1, x0:x1, :3]
    return np.ascontiguousarray(arr.compute(scheduler="sync"))


def open_image(
    image: Any,
    roi: Any,
    by_path_chunk: int | None = None,
    resolution: Any = None,
    model_meta: dict[str, Any] | None = None,
    balance: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """The dask array to predict (working resolution, ROI applied) and its metadata.

    ``roi`` is level-0 ``(y0, x0, y1, x1)`` (as training's); it is mapped to
    the resolution's pixels (rounded outwards). ``info["offset"]`` is the region's origin in
    level-0 pixels, ``info["resolution"]`` the resolved resolution and
    ``info["resolution_message"]`` what to tell the user about it.

    With ``by_path_chunk``, a slide is read by tasks that open it by path (one
    handle per process) in chunks of that side: a distributed scheduler must
    pickle the graph, and an open file handle does not pickle.

    ``balance`` (a :func:`.input_norm.balance_table` or a
    :class:`.white_field.WhiteField`) white-balances the pixels at the working
    resolution, chunk by chunk, each at its place in the slide. It is applied here, to
    the array the slide's closers are tied to: a caller that wrapped the
    returned array and dropped it would close the slide before reading it.
    """
    import dask.array as da

    from .resolution import area_average, as_slide, default_for_model, map_roi, resolve

    info: dict[str, Any] = {"slide_path": None, "mpp": None}
    closers: list[Any] = []
    if isinstance(image, str | Path):
        from .slide import open_slide

        slide = open_slide(str(image))
        closers = list(slide._closers)  # released once the prediction drops its graph
        info["slide_path"] = os.path.abspath(slide.path)
        info["mpp"] = list(slide.mpp) if slide.mpp else None
    else:
        slide = as_slide(image)
        info["mpp"] = list(slide.mpp) if slide.mpp else None
    if resolution is None:
        res, why = default_for_model(slide, model_meta or {})
    else:
        res, why = resolve(slide, resolution), None
    info["resolution"] = res.to_dict()
    info["resolution_message"] = why or f"predicting at {res.describe()}"
    arr = slide.levels[res.level]
    if by_path_chunk and info["slide_path"]:
        lh, lw = int(arr.shape[0]), int(arr.shape[1])
        c = by_path_chunk * res.factor
        chunks = tuple((c,) * (n // c) + ((n % c,) if n % c else ()) for n in (lh, lw))
        arr = da.map_blocks(
            _read_slide_block,
            path=info["slide_path"],
            level=res.level,
            chunks=(*chunks, (3,)),
            dtype=np.uint8,
            name=f"read-slide-{os.path.basename(slide.path)}-{res.level}",
        )
    arr = area_average(arr, res.factor)
    h, w = (int(v) for v in slide.shape)
    info["slide_shape"] = [h, w]
    d = res.downsample
    if roi is not None:
        from ._train_data import check_roi  # one ROI form and check for training and predict

        y0, x0, y1, x1 = check_roi(roi, (h, w), info["slide_path"] or "image")
        ry0, rx0, ry1, rx1 = map_roi((y0, x0, y1, x1), res)
        arr = arr[ry0:ry1, rx0:rx1]
        info["roi"] = [y0, x0, y1, x1]
        oy, ox = (ry0 * d, rx0 * d) if d != 1.0 else (ry0, rx0)
        info["offset"] = [oy, ox]
        # The level-0 extent the prediction covers (the ROI rounded outwards).
        info["region_shape"] = [
            int(round(min(ry1 * d, h) - oy)),
            int(round(min(rx1 * d, w) - ox)),
        ]
    else:
        info["roi"] = None
        info["offset"] = [0, 0]
        info["region_shape"] = [h, w]
    info["resolution_shape"] = [int(arr.shape[0]), int(arr.shape[1])]
    if balance is not None:
        # The chunk's place in the slide at this resolution (a local balance's gains
        # depend on it): the ROI's origin plus the chunk's place in the region.
        origin = (ry0, rx0) if roi is not None else (0, 0)
        arr = arr.map_blocks(
            balance_chunk, balance=balance, origin=origin, downsample=d, dtype=np.uint8
        )
    if closers:
        weakref.finalize(arr, _run_closers, closers)
    return arr, info


def _run_closers(closers: list[Any]) -> None:
    for close in closers:
        close()
