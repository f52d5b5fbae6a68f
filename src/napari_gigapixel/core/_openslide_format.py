"""The OpenSlide formats (MIRAX, SCN, VMS/VMU, BIF, ...) through openslide-python."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .slide_base import (
    NotASlideError,
    Slide,
    SlideError,
    _make_slide,
    chunk_plan,
    lazy_array,
    mpp_or_none,
)


def open_openslide(path: str) -> Slide:
    """Open an OpenSlide-format slide; levels read through ``read_region`` per chunk."""
    try:
        import openslide
    except (ImportError, OSError) as exc:
        ext = os.path.splitext(path)[1]
        raise SlideError(
            f"{path}: reading {ext} slides needs OpenSlide, which is not available "
            f"({exc}). Install it with: pip install 'napari-gigapixel[openslide]'."
        ) from exc
    try:
        osr = openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise NotASlideError(
            f"{path}: OpenSlide does not recognise this file as a slide ({exc})."
        ) from exc
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlideError(
            f"{path}: OpenSlide cannot read this slide ({exc}). The file (or, for "
            ".mrxs/.vms, its companion data folder) may be incomplete or corrupt."
        ) from exc
    try:
        return _openslide_slide(osr, path)
    except BaseException:
        osr.close()
        raise


def _openslide_slide(osr: Any, path: str) -> Slide:
    props = dict(osr.properties)
    meta: dict[str, Any] = {
        "format": f"openslide:{props.get('openslide.vendor', 'unknown')}",
        "grayscale": False,
        "alpha_dropped": True,
    }
    levels, downsamples = [], []
    for k in range(osr.level_count):
        w, h = osr.level_dimensions[k]
        ds = float(osr.level_downsamples[k])
        tw = int(props.get(f"openslide.level[{k}].tile-width", 256) or 256)
        th = int(props.get(f"openslide.level[{k}].tile-height", 256) or 256)
        chunks = chunk_plan((th, tw, 3), (h, w, 3), (0, 1))
        levels.append(
            lazy_array(_region_reader(osr, k, ds), (h, w, 3), np.uint8, chunks, path, f"level {k}")
        )
        downsamples.append(ds)
    th0 = int(props.get("openslide.level[0].tile-height", 0) or 0)
    tw0 = int(props.get("openslide.level[0].tile-width", 0) or 0)
    meta["tile"] = [th0, tw0] if th0 and tw0 else None
    mpp = mpp_or_none(props.get("openslide.mpp-y"), props.get("openslide.mpp-x"))
    return _make_slide(path, levels, downsamples, mpp, meta, osr.close)


def _region_reader(osr: Any, level: int, ds: float):
    def read(key: tuple[slice, ...]) -> np.ndarray:
        ys, xs, cs = key
        # read_region takes the top-left corner in level-0 coordinates.
        x0, y0 = int(round(xs.start * ds)), int(round(ys.start * ds))
        rgba = np.asarray(
            osr.read_region((x0, y0), level, (xs.stop - xs.start, ys.stop - ys.start))
        )
        # Empty areas come back transparent (alpha 0, black): show them as
        # white glass, which is what they are.
        alpha = rgba[..., 3:4].astype(np.uint16)
        rgb = (rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
        return rgb.astype(np.uint8)[..., cs]

    return read
