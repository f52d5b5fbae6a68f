"""Training inputs checked and opened: slides or arrays, masks, regions of interest.

What :mod:`._train_data` decodes comes through here: :func:`open_image_source`
(a slide path, a ``Slide`` or an RGB array), :func:`open_mask_source` (a mask
that overlays it), :func:`check_roi` (the project's one ROI form, level-0
``(y0, x0, y1, x1)``) and :func:`snap_rect` (a rectangle grown to whole output
pixels of a grid). :mod:`._train_data` re-exports them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import GigapixelError
from .masks import AnnotationMask, MaskError, infer_downsample


class SlideInputError(GigapixelError):
    """A training image that cannot be used (not RGB, ROI outside it, unreadable)."""


def open_image_source(src: Any) -> tuple[Any, str, Callable[[], None]]:
    """A slide or an (H, W, 3) uint8 array, a name for messages, and its closer.

    Paths are opened as a :class:`.slide_base.Slide` (so a working resolution
    can pick a pyramid level); Slides are returned as is; arrays are checked.
    Call the closer once the pixels are decoded: it releases the slide file.
    """
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.exists(path):
            raise SlideInputError(f"{path}: no such slide file. Check the path.")
        from .slide import open_slide

        slide = open_slide(path)
        return slide, path, slide.close
    if hasattr(src, "levels") and hasattr(src, "downsamples"):
        return src, str(getattr(src, "path", "<slide>")), lambda: None
    arr = src
    name = "<array>"
    if getattr(arr, "ndim", 0) != 3 or arr.shape[2] != 3:
        raise SlideInputError(
            f"{name}: a training image must be RGB (H, W, 3); "
            f"got shape {getattr(arr, 'shape', '?')}."
        )
    if np.dtype(arr.dtype) != np.uint8:
        raise SlideInputError(f"{name}: a training image must be uint8, got {arr.dtype}.")
    return arr, name, lambda: None


def open_mask_source(src: Any, slide_shape: tuple[int, int], kind: str | None) -> AnnotationMask:
    """An :class:`AnnotationMask` for a slide, from a path, an array or a mask.

    ``kind`` None: a file's own kind (dense when it records none), dense for arrays.
    """
    if isinstance(src, AnnotationMask):
        mask = src
        name = mask.name
    elif isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.exists(path):
            raise MaskError(f"{path}: no such mask file. Check the path.")
        from .mask_io import load_mask

        return load_mask(path, slide_shape, kind=kind)
    else:
        arr = np.asarray(src)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        ds = infer_downsample(arr.shape[:2], slide_shape)
        mask = AnnotationMask(arr, ds, kind or "dense", "<array>")
        return mask
    lh, lw = mask.level0_shape()
    if (
        abs(lh - slide_shape[0]) > mask.downsample + 1
        or abs(lw - slide_shape[1]) > mask.downsample + 1
    ):
        raise MaskError(
            f"{name}: this mask covers {lh} x {lw} level-0 pixels but the slide is "
            f"{slide_shape[0]} x {slide_shape[1]}; use a mask made for this slide."
        )
    return mask


def check_roi(roi: Any, slide_shape: tuple[int, int], name: str) -> tuple[int, int, int, int]:
    """Validate an ROI ``(y0, x0, y1, x1)`` (None: the whole slide)."""
    h, w = slide_shape
    if roi is None:
        return (0, 0, h, w)
    try:
        y0, x0, y1, x1 = (int(v) for v in roi)
    except (TypeError, ValueError) as exc:
        raise SlideInputError(
            f"{name}: an ROI is four integers y0,x0,y1,x1; got {roi!r}."
        ) from exc
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
        raise SlideInputError(
            f"{name}: ROI {y0},{x0},{y1},{x1} is not inside the {h} x {w} slide "
            "(y0,x0,y1,x1 with 0 <= y0 < y1 <= height, 0 <= x0 < x1 <= width)."
        )
    return (y0, x0, y1, x1)


def snap_rect(
    rect: tuple[int, int, int, int],
    origin: tuple[int, int],
    os_: int,
    slide_shape: tuple[int, int],
) -> tuple[int, int, int, int]:
    """Grow ``rect`` (y0, x0, y1, x1) to whole output pixels of a grid starting at ``origin``.

    A validation ROI snapped to the training image's output grid covers
    whole output pixels of it, so the pixels left out of training are
    exactly the pixels scored. Clipped to the slide (a start that would fall
    before 0 moves in by less than one output pixel). All in one unit: pixels
    of the working resolution (``rect`` from :func:`.resolution.map_roi`,
    ``origin`` :attr:`ImageData.origin_px`, ``slide_shape`` the resolution's).
    """
    h, w = slide_shape
    y0, x0, y1, x1 = rect
    oy, ox = origin
    sy0 = oy + (y0 - oy) // os_ * os_
    sx0 = ox + (x0 - ox) // os_ * os_
    # Before the slide: move in by whole output pixels (less than one past 0).
    sy0 = sy0 - sy0 // os_ * os_ if sy0 < 0 else sy0
    sx0 = sx0 - sx0 // os_ * os_ if sx0 < 0 else sx0
    sy1 = min(h, oy + -(-(y1 - oy) // os_) * os_)
    sx1 = min(w, ox + -(-(x1 - ox) // os_) * os_)
    return (sy0, sx0, sy1, sx1)
