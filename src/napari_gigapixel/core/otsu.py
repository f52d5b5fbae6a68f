"""The classic tissue-detection baseline: Otsu's threshold on a low pyramid level.

Tissue is darker (or more saturated) than glass; :func:`otsu_tissue_mask`
thresholds the finest level under :data:`OTSU_MAX_PIXELS` pixels, so it never
reads level 0 of a gigapixel slide. :mod:`.metrics` re-exports it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GigapixelError
from .masks import AnnotationMask, infer_downsample

#: :func:`otsu_tissue_mask` picks the finest pyramid level under this many pixels.
OTSU_MAX_PIXELS = 4_000_000


def otsu_threshold(values: Any, bins: int = 256) -> float:
    """Otsu's threshold: the value ``t`` maximising between-class variance.

    ``values > t`` is the upper class. uint8 input is histogrammed exactly
    (one bin per value, like scikit-image); other dtypes in ``bins`` bins.
    """
    v = np.asarray(values).ravel()
    if v.size == 0:
        raise GigapixelError("otsu_threshold: no values to threshold.")
    if v.dtype == np.uint8:
        counts = np.bincount(v, minlength=256).astype(np.float64)
        centers = np.arange(256, dtype=np.float64)
    else:
        v = v.astype(np.float64)
        lo, hi = float(v.min()), float(v.max())
        if lo == hi:
            return lo
        counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
        counts = counts.astype(np.float64)
        centers = (edges[:-1] + edges[1:]) / 2
    nz = np.flatnonzero(counts)
    if nz.size <= 1:  # one value: nothing to split
        return float(centers[nz[0]]) if nz.size else 0.0
    w0 = np.cumsum(counts)
    w1 = np.cumsum(counts[::-1])[::-1]
    m0 = np.cumsum(counts * centers) / np.maximum(w0, 1e-300)
    m1 = (np.cumsum((counts * centers)[::-1]) / np.maximum(w1[::-1], 1e-300))[::-1]
    between = w0[:-1] * w1[1:] * (m0[:-1] - m1[1:]) ** 2
    return float(centers[int(np.argmax(between))])


def _levels_of(slide_or_levels: Any) -> tuple[list[Any], list[float], str]:
    obj = slide_or_levels
    if hasattr(obj, "levels"):
        return list(obj.levels), [float(d) for d in obj.downsamples], str(obj.path)
    if isinstance(obj, list | tuple):
        levels = list(obj)
    else:
        levels = [obj]
    base = levels[0].shape[:2]
    downs = [
        infer_downsample(lv.shape[:2], base, name=f"level {i}", min_side=1)
        for i, lv in enumerate(levels)
    ]
    return levels, downs, "image"


def _signal(rgb: np.ndarray, channel: str) -> tuple[np.ndarray, bool]:
    """(uint8 signal, tissue_is_high) for grayscale or saturation."""
    rgb = rgb.astype(np.float32)
    if channel == "gray":
        g = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return np.clip(np.rint(g), 0, 255).astype(np.uint8), False
    if channel == "saturation":
        mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
        s = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0) * 255
        return np.clip(np.rint(s), 0, 255).astype(np.uint8), True
    raise GigapixelError(
        f"otsu_tissue_mask: channel must be 'gray' or 'saturation', not {channel!r}."
    )


def otsu_tissue_mask(
    slide_or_levels: Any, level: int | None = None, *, channel: str = "gray"
) -> AnnotationMask:
    """The classic tissue detector: Otsu's threshold on a low pyramid level.

    Parameters
    ----------
    slide_or_levels
        A slide path, a ``Slide`` (``.levels``/``.downsamples``), a list of
        ``(H, W, 3)`` levels (level 0 first), or one RGB array.
    level
        Pyramid level to threshold; default the finest one under
        ``OTSU_MAX_PIXELS`` pixels (a coarser sampling of the coarsest level
        when the slide has no such level).
    channel
        ``"gray"`` (tissue darker than glass) or ``"saturation"`` (tissue more
        saturated).

    Returns
    -------
    AnnotationMask
        uint8 0/1 at that level's downsample.
    """
    if isinstance(slide_or_levels, str | Path):
        from .slide import open_slide

        with open_slide(str(slide_or_levels)) as slide:  # closed once thresholded
            return otsu_tissue_mask(slide, level, channel=channel)
    levels, downs, name = _levels_of(slide_or_levels)
    k = 1
    if level is None:
        small = [i for i, lv in enumerate(levels) if lv.shape[0] * lv.shape[1] <= OTSU_MAX_PIXELS]
        level = small[0] if small else len(levels) - 1
        px = levels[level].shape[0] * levels[level].shape[1]
        k = math.ceil(math.sqrt(px / OTSU_MAX_PIXELS))
    if not 0 <= level < len(levels):
        raise GigapixelError(f"{name}: no pyramid level {level} (it has {len(levels)}).")
    arr, ds = levels[level], downs[level]
    if k > 1:  # no small level: sample block centres of the coarsest one
        arr, ds = arr[k // 2 :: k, k // 2 :: k], ds * k
    sig, high = _signal(np.asarray(arr)[..., :3], channel)
    t = otsu_threshold(sig)
    tissue = sig > t if high else sig <= t
    mask = AnnotationMask(tissue.astype(np.uint8), downsample=ds, kind="dense", name="otsu")
    mask.threshold = t  # type: ignore[attr-defined]
    return mask
