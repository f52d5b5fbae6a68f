"""Training inputs: the once-per-run uint8 caches of slide pixels and labels.

The working resolution's pixels (level 0 by default, see :mod:`.resolution`)
are decoded once per run (JPEG tiles are slow to decode) into
a uint8 cache, in memory or, when the memory budget says so, in a temporary
file read back with positioned reads (``os.preadv`` into a fresh buffer): a
memory map that the step touches would count every page it read in the
process's RSS. Labels are cached the same way at the model's output stride,
read from the annotation-level mask by nearest neighbour, band by band, so
no full-resolution mask ever exists.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._array_cache import ArrayCache
from .errors import GigapixelError
from .masks import AnnotationMask, MaskError, infer_downsample

#: Label code of output pixels left out of the loss (a validation region of a
#: training slide). Label caches hold codes, not raw mask values: dense 0/1,
#: scribbles 0 (unlabelled) / 1 (background) / 2 (tissue).
EXCLUDED = 255


def label_codes(raw: np.ndarray, kind: str) -> np.ndarray:
    """Raw mask values -> the cache's label codes (see :data:`EXCLUDED`)."""
    if kind == "dense":
        return (raw > 0).view(np.uint8)
    return np.where(raw == 2, 2, (raw > 0).view(np.uint8)).astype(np.uint8)


def codes_yw(lab: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Target and weight (uint8 0/1) of label codes."""
    if kind == "dense":
        return (lab == 1).view(np.uint8), (lab != EXCLUDED).view(np.uint8)
    return (lab == 2).view(np.uint8), ((lab == 1) | (lab == 2)).view(np.uint8)


class SlideInputError(GigapixelError):
    """A training image that cannot be used (not RGB, ROI outside it, unreadable)."""


@dataclass
class ImageData:
    """One training image (a slide or its ROI) with its labels, ready for tiling."""

    name: str
    image: ArrayCache
    labels: ArrayCache  # label codes at output stride (see ``label_codes``)
    kind: str
    shape: tuple[int, int]  # (H, W) of the ROI in pixels of the working resolution
    offset: tuple[float, float]  # ROI origin in the slide, level-0 pixels
    n_labelled: float
    n_positive: float
    downsample: float = 1.0  # level-0 pixels per pixel of the working resolution
    resolution: dict[str, Any] | None = None  # the resolved resolution and the model record
    origin: tuple[int, int] | None = None  # ROI origin in pixels of the working resolution

    @property
    def origin_px(self) -> tuple[int, int]:
        """The ROI's origin in pixels of the working resolution (integers)."""
        if self.origin is not None:
            return self.origin
        d = float(self.downsample)
        return (int(round(self.offset[0] / d)), int(round(self.offset[1] / d)))

    def labels_yw(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Target and weight (uint8 0/1) of output pixels ``[y0, y1) x [x0, x1)``."""
        return codes_yw(self.labels.read(y0, y1, x0, x1), self.kind)

    def output_rect(self, rect: tuple[int, int, int, int], os_: int) -> tuple[int, ...] | None:
        """Output-pixel rows/columns ``(oy0, oy1, ox0, ox1)`` of a slide rectangle.

        ``rect`` is ``(y0, x0, y1, x1)`` in pixels of the working resolution
        of the whole slide (level-0 pixels at level 0), aligned on this
        image's output grid (:func:`snap_rect`); None when it misses the image.
        """
        ho, wo = self.labels.shape
        oy, ox = self.origin_px
        y0, x0, y1, x1 = rect
        oy0, ox0 = max(0, (y0 - oy) // os_), max(0, (x0 - ox) // os_)
        oy1 = min(ho, -(-(y1 - oy) // os_))
        ox1 = min(wo, -(-(x1 - ox) // os_))
        if oy1 <= oy0 or ox1 <= ox0:
            return None
        return (oy0, oy1, ox0, ox1)

    def exclude(self, rect: tuple[int, int, int, int], os_: int) -> float:
        """Leave the labels of a slide rectangle out of the loss; return how many were labelled.

        ``rect`` as in :meth:`output_rect` (pixels of the working resolution).
        The rectangle's output pixels get the :data:`EXCLUDED` code (weight 0),
        so the training loss is exactly the loss of the other pixels;
        ``n_labelled`` and ``n_positive`` drop by what it held.
        """
        r = self.output_rect(rect, os_)
        if r is None:
            return 0.0
        oy0, oy1, ox0, ox1 = r
        rows = self.labels.read(oy0, oy1, 0, self.labels.shape[1])
        y, w = codes_yw(rows[:, ox0:ox1], self.kind)
        n_lab, n_pos = float(w.sum(dtype=np.int64)), float((y & w).sum(dtype=np.int64))
        rows[:, ox0:ox1] = EXCLUDED
        self.labels.write_rows(oy0, rows)
        self.n_labelled -= n_lab
        self.n_positive -= n_pos
        return n_lab

    def close(self) -> None:
        self.image.close()
        self.labels.close()


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


def build_image_data(
    image_src: Any,
    mask_src: Any,
    *,
    roi: Any,
    kind: str | None,
    output_stride: int,
    cache_in_memory: Callable[[int], bool],
    cache_dir: str | None = None,
    band_rows: int = 2048,
    on_band: Callable[[int, int], None] | None = None,
    resolution: Any = None,
    balance: np.ndarray | None = None,
    res_roi: tuple[int, int, int, int] | None = None,
) -> ImageData:
    """Decode one image (its ROI) and its labels into caches, band by band.

    ``resolution`` (a :class:`.resolution.Resolution`, default level 0) is
    resolved against the slide; the caches then hold that resolution's pixels
    (read from its pyramid level, or area-averaged lazily from a finer one),
    and labels are read from the mask at the centre of each output pixel's
    level-0 block (nearest neighbour), whatever the mask's level. ``roi`` stays
    in level-0 pixels ``(y0, x0, y1, x1)`` and is mapped to the resolution
    (rounded outwards to whole pixels). ``balance`` is a
    :func:`.input_norm.balance_table` applied to the pixels as they are cached
    (per-slide white balance). ``res_roi`` ``(y0, x0, y1, x1)`` in pixels of
    the working resolution replaces ``roi``'s mapping (a validation ROI
    snapped to a training image's output grid: exactly those pixels).

    Raises
    ------
    SlideInputError, MaskError, ResolutionError
        Non-RGB slide, ROI outside the slide, mask that does not overlay the
        slide, a mask with no labelled pixel (nothing to learn from), or a
        resolution the slide cannot serve.
    """
    from .resolution import Resolution

    source, name, close = open_image_source(image_src)
    try:
        return _build_image_data(
            source,
            name,
            mask_src,
            roi,
            kind,
            output_stride,
            cache_in_memory,
            cache_dir,
            band_rows,
            on_band,
            resolution or Resolution(),
            balance,
            res_roi,
        )
    finally:
        close()  # the pixels are in the caches now: release the slide file


def _build_image_data(
    source: Any,
    name: str,
    mask_src: Any,
    roi: Any,
    kind: str | None,
    output_stride: int,
    cache_in_memory: Callable[[int], bool],
    cache_dir: str | None,
    band_rows: int,
    on_band: Callable[[int, int], None] | None,
    resolution: Any,
    balance: np.ndarray | None = None,
    res_roi: tuple[int, int, int, int] | None = None,
) -> ImageData:
    from .resolution import as_slide, map_roi, model_resolution, resolution_array, resolve

    slide = as_slide(source)
    level0 = slide.levels[0]
    if len(level0.shape) != 3 or level0.shape[2] != 3:
        raise SlideInputError(f"{name}: a training image must be RGB; got shape {level0.shape}.")
    slide_shape = (int(level0.shape[0]), int(level0.shape[1]))
    mask = open_mask_source(mask_src, slide_shape, kind)
    y0, x0, y1, x1 = check_roi(roi, slide_shape, name)
    res = resolve(slide, resolution)
    d = res.downsample
    if res.downsample == 1.0 and isinstance(source, np.ndarray):
        array: Any = source
        ry0, rx0, ry1, rx1 = y0, x0, y1, x1
    else:
        array = resolution_array(slide, res)
        ry0, rx0, ry1, rx1 = map_roi((y0, x0, y1, x1), res)
    if res_roi is not None:
        ry0, rx0, ry1, rx1 = (int(v) for v in res_roi)
        rh, rw = res.shape
        if not (0 <= ry0 < ry1 <= rh and 0 <= rx0 < rx1 <= rw):
            raise SlideInputError(
                f"{name}: region {ry0},{rx0},{ry1},{rx1} is not inside the {rh} x {rw} "
                f"pixels of {res.describe()}."
            )
    h, w = ry1 - ry0, rx1 - rx0
    os_ = output_stride
    ho, wo = -(-h // os_), -(-w // os_)
    if isinstance(array, np.ndarray):
        roi_px = array[ry0:ry1, rx0:rx1]
        if balance is not None:
            from .input_norm import apply_balance

            roi_px = apply_balance(roi_px, balance)
        image = ArrayCache.wrap(roi_px)
    else:
        image = ArrayCache((h, w, 3), in_memory=cache_in_memory(h * w * 3), folder=cache_dir)
    labels = ArrayCache((ho, wo), in_memory=cache_in_memory(ho * wo), folder=cache_dir)
    n_lab = 0.0
    n_pos = 0.0
    try:
        band = max(os_, band_rows // os_ * os_)
        for by in range(0, h, band):
            by1 = min(by + band, h)
            if not isinstance(array, np.ndarray):
                block = np.asarray(array[ry0 + by : ry0 + by1, rx0:rx1])
                if balance is not None:
                    from .input_norm import apply_balance

                    block = apply_balance(block, balance)
                image.write_rows(by, block)
            # Output pixel (i, j) covers resolution pixels [i os, (i+1) os): its
            # label is the mask at the centre of that block in level-0 pixels.
            lab = mask.read_grid((ry0 + by) * d, rx0 * d, -(-(by1 - by) // os_), wo, os_ * d)
            labels.write_rows(by // os_, label_codes(lab, mask.kind))
            if mask.kind == "dense":
                n_lab += lab.size
                n_pos += float(np.count_nonzero(lab))
            else:
                n_lab += float(np.count_nonzero(lab))
                n_pos += float(np.count_nonzero(lab == 2))
            if on_band is not None:
                on_band(by1, h)
    except BaseException:
        image.close()
        labels.close()
        raise
    mname = mask.name
    if n_lab == 0 or (mask.kind == "dense" and n_pos == 0):
        image.close()
        labels.close()
        what = "no labelled pixel" if n_lab == 0 else "no tissue (all zero)"
        raise MaskError(
            f"{mname}: the mask has {what} over the training region of {name}; "
            "draw tissue (dense masks: nonzero = tissue; scribbles: 1 background, 2 tissue)."
        )
    return ImageData(
        name=name,
        image=image,
        labels=labels,
        kind=mask.kind,
        shape=(h, w),
        offset=(ry0 * d, rx0 * d) if d != 1.0 else (ry0, rx0),
        n_labelled=n_lab,
        n_positive=n_pos,
        downsample=d,
        resolution={**model_resolution(slide, res), "describe": res.describe()},
        origin=(ry0, rx0),
    )


def input_statistics(
    datas: list[ImageData], band_rows: int = 1024
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of every pixel of the training images.

    One pass over the decoded caches, band by band, with float64 sums (the
    same figures whatever the band size, up to rounding). A standard
    deviation below 1 grey level is raised to 1 (a flat image).
    """
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for d in datas:
        h, w = d.shape
        for y0 in range(0, h, band_rows):
            block = d.image.read(y0, min(h, y0 + band_rows), 0, w).reshape(-1, 3)
            f = block.astype(np.float64)
            total += f.sum(axis=0)
            squares += np.einsum("ij,ij->j", f, f)
            count += block.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return tuple(float(v) for v in mean), tuple(float(max(v, 1.0)) for v in std)
