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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._array_cache import ArrayCache
from ._train_inputs import (
    SlideInputError,
    check_roi,
    open_image_source,
    open_mask_source,
    snap_rect,
)
from .masks import MaskError

__all__ = [
    "EXCLUDED",
    "ImageData",
    "SlideInputError",
    "build_image_data",
    "check_region_labels",
    "check_roi",
    "codes_yw",
    "image_histogram",
    "input_statistics",
    "label_codes",
    "open_image_source",
    "open_mask_source",
    "snap_rect",
    "statistics_from_histograms",
]


#: Label code of output pixels left out of the loss (a validation region of a
#: training slide). Label caches hold codes, not raw mask values: dense 0/1,
#: scribbles 0 (unlabelled) / 1 (background) / 2 (tissue), each maybe with
#: :data:`BORDER_FLAG`.
EXCLUDED = 255
#: Bit set on a labelled output pixel near the other class's labels
#: (:func:`flag_borders`); the loss weighs it ``border_weight`` times.
BORDER_FLAG = 0x80
#: How near (pixels of the working resolution) the other class's labels must
#: be for a labelled pixel to count as border (:func:`flag_borders`).
BORDER_PX = 16


def label_codes(raw: np.ndarray, kind: str) -> np.ndarray:
    """Raw mask values -> the cache's label codes (see :data:`EXCLUDED`)."""
    if kind == "dense":
        return (raw > 0).view(np.uint8)
    return np.where(raw == 2, 2, (raw > 0).view(np.uint8)).astype(np.uint8)


def check_region_labels(
    mask_name: str,
    name: str,
    kind: str,
    labelled: bool,
    tissue: bool,
    background: bool,
    where: str | None = None,
) -> None:
    """Refuse a region whose labels teach nothing: none, no tissue, or (scribbles) one class.

    Parameters
    ----------
    mask_name, name
        The mask and the slide, for the message.
    kind
        ``"dense"`` or ``"scribble"``.
    labelled, tissue, background
        Whether the region holds a labelled pixel, a tissue label and a
        background label (for a dense mask every pixel is labelled).
    where
        The region in words (default: the training region of ``name``).

    Raises
    ------
    MaskError
        No labelled pixel, no tissue, or a scribble mask without background:
        a run on it would learn one class (a 0/1 mask loaded as scribbles is
        all background, and trained to Dice 0).
    """
    where = where or f"the training region of {name}"
    if not labelled or (kind == "dense" and not tissue):
        what = "no labelled pixel" if not labelled else "no tissue (all zero)"
        raise MaskError(
            f"{mask_name}: the mask has {what} over {where}; "
            "draw tissue (dense masks: nonzero = tissue; scribbles: 1 background, 2 tissue)."
        )
    if kind == "scribble" and not (tissue and background):
        what, code = ("tissue", 2) if not tissue else ("background", 1)
        raise MaskError(
            f"{mask_name}: the scribble mask has no {what} ({code}) label over {where}; "
            "scribbles need both, 1 background and 2 tissue: draw some "
            f"{what}, or load a 0 = background / nonzero = tissue mask as dense "
            "(--mask-kind dense)."
        )


def codes_yw(lab: np.ndarray, kind: str, border: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Target (uint8 0/1) and weight (uint8) of label codes.

    The weight is 0 or 1, or ``border`` on pixels flagged :data:`BORDER_FLAG`
    (the default 1 ignores the flag: validation counts every pixel once).
    """
    base = lab & np.uint8(~BORDER_FLAG & 0xFF)  # EXCLUDED reads 127: neither class
    if kind == "dense":
        y, w = (base == 1).view(np.uint8), (lab != EXCLUDED).view(np.uint8)
    else:
        y, w = (base == 2).view(np.uint8), ((base == 1) | (base == 2)).view(np.uint8)
    if border != 1:
        flagged = (lab & np.uint8(BORDER_FLAG)).astype(bool) & (w > 0)
        w = np.where(flagged, np.uint8(border), w).astype(np.uint8)
    return y, w


def flag_borders(labels: ArrayCache, kind: str, radius: float, band_rows: int = 1024) -> None:
    """Set :data:`BORDER_FLAG` on labelled output pixels within ``radius`` of the
    other class's labels (Euclidean, pixel centres), and only there, in place,
    band by band.

    The U-Net paper's border weights: the loss weighs the pixels where the two
    classes meet more, where a tissue model's errors are (pale stroma at the
    tissue's edge). Each band reads ``radius`` rows more on each side, so the
    flags are those of the whole label map, whatever the bands: a function of
    the labels alone, so the streamed step stays the whole-image step.
    """
    r = int(np.floor(radius))
    if r < 1:
        return
    lh, lw = labels.shape
    band = max(1, int(band_rows))
    for by in range(0, lh, band):
        by1 = min(lh, by + band)
        y0, y1 = max(0, by - r), min(lh, by1 + r)
        codes = labels.read(y0, y1, 0, lw)
        y, w = codes_yw(codes, kind)
        tissue = (w > 0) & (y == 1)
        glass = (w > 0) & (y == 0)
        near = (tissue & _within(glass, radius)) | (glass & _within(tissue, radius))
        rows = codes[by - y0 : by1 - y0]
        # Flags set afresh: a label left out since (exclude) flags nothing.
        rows = np.where(rows == EXCLUDED, rows, rows & np.uint8(~BORDER_FLAG & 0xFF))
        rows[near[by - y0 : by1 - y0]] |= np.uint8(BORDER_FLAG)
        labels.write_rows(by, rows.astype(np.uint8))


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
    # Per window, the blocks the ink may recolour (``SlideView._ink_blocks``).
    ink_index: dict = field(default_factory=dict, repr=False, compare=False)
    # Loss weight of labels flagged BORDER_FLAG (1: none flagged, or not weighed).
    border_weight: int = 1
    # Loss weight of background labels under a step's drawn pen strokes
    # (``SlideView.labels``; 1: not weighed). Training images only.
    pen_weight: int = 1

    @property
    def origin_px(self) -> tuple[int, int]:
        """The ROI's origin in pixels of the working resolution (integers)."""
        if self.origin is not None:
            return self.origin
        d = float(self.downsample)
        return (int(round(self.offset[0] / d)), int(round(self.offset[1] / d)))

    def labels_yw(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Target and weight (uint8) of output pixels ``[y0, y1) x [x0, x1)``."""
        return codes_yw(self.labels.read(y0, y1, x0, x1), self.kind, self.border_weight)

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
        ``n_labelled`` and ``n_positive`` drop by what it held. Border flags
        are set again without it (a run with it is the run on a mask without
        those labels).
        """
        r = self.output_rect(rect, os_)
        if r is None:
            return 0.0
        oy0, oy1, ox0, ox1 = r
        rows = self.labels.read(oy0, oy1, 0, self.labels.shape[1])
        y, w = codes_yw(rows[:, ox0:ox1], self.kind, self.border_weight)
        n_lab, n_pos = float(w.sum(dtype=np.int64)), float((y & w).sum(dtype=np.int64))
        rows[:, ox0:ox1] = EXCLUDED
        self.labels.write_rows(oy0, rows)
        self.ink_index.clear()  # the ink's blocks follow the labels
        if self.border_weight > 1:
            # The region's labels flagged their neighbours as border: flag again
            # from the labels left, as if the region had never been labelled.
            flag_borders(self.labels, self.kind, BORDER_PX / os_)
            self.n_labelled, self.n_positive = _weighted_counts(
                self.labels, self.kind, self.border_weight
            )
            return n_lab
        self.n_labelled -= n_lab
        self.n_positive -= n_pos
        return n_lab

    def close(self) -> None:
        self.image.close()
        self.labels.close()


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
    balance: Any = None,
    res_roi: tuple[int, int, int, int] | None = None,
    border_weight: int = 1,
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
    ``border_weight`` > 1 flags the labels within :data:`BORDER_PX` of the
    other class's (:func:`flag_borders`) and weighs them that much in the
    loss; ``n_labelled`` and ``n_positive`` are then the weighted counts.

    Raises
    ------
    SlideInputError, MaskError, ResolutionError
        Non-RGB slide, ROI outside the slide, mask that does not overlay the
        slide, a mask with no labelled pixel or no tissue over the region, a
        scribble mask without both classes there (:func:`check_region_labels`),
        or a resolution the slide cannot serve.
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
            int(border_weight),
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
    balance: Any = None,
    res_roi: tuple[int, int, int, int] | None = None,
    border_weight: int = 1,
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
            from .input_norm import balance_pixels

            roi_px = balance_pixels(roi_px, balance, ry0, rx0, d)
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
                    from .input_norm import balance_pixels

                    block = balance_pixels(block, balance, ry0 + by, rx0, d)
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
    try:
        # The preflight checked this at the mask's level; the output grid's
        # samples can still miss thin scribbles, so it is checked again here.
        check_region_labels(mask.name, name, mask.kind, n_lab > 0, n_pos > 0, n_pos < n_lab)
    except MaskError:
        image.close()
        labels.close()
        raise
    if border_weight > 1:
        try:
            flag_borders(labels, mask.kind, BORDER_PX / os_)
            n_lab, n_pos = _weighted_counts(labels, mask.kind, border_weight)
        except BaseException:
            image.close()
            labels.close()
            raise
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
        border_weight=max(1, int(border_weight)),
    )


def _within(src: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within ``radius`` (Euclidean, pixel centres) of a True pixel of ``src``.

    A disk dilation for small radii (0.02 s per Mpx at 4 px); past 6 px the
    distance transform, whose cost does not grow with the radius (0.3 s
    against 0.08 s per Mpx at 16 px, the full-resolution head's radius).
    """
    from scipy import ndimage as ndi

    if not src.any():
        return np.zeros(src.shape, bool)
    if radius > 6:
        return ndi.distance_transform_edt(~src) <= radius
    r = int(np.floor(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return ndi.binary_dilation(src, yy * yy + xx * xx <= radius * radius)


def _weighted_counts(labels: ArrayCache, kind: str, border: int) -> tuple[float, float]:
    """Weighted counts of labelled and tissue output pixels, band by band."""
    n_lab = n_pos = 0.0
    lh, lw = labels.shape
    for y0 in range(0, lh, 1024):
        y, w = codes_yw(labels.read(y0, min(lh, y0 + 1024), 0, lw), kind, border)
        n_lab += float(w.sum(dtype=np.int64))
        n_pos += float((w * y).sum(dtype=np.int64))
    return n_lab, n_pos


def image_histogram(d: ImageData, band_rows: int = 1024) -> np.ndarray:
    """Per-channel histogram of one image's pixels: ``(3, 256)`` counts in float64.

    One pass over the decoded cache band by band. Counts are integers, so the
    histograms are exact below 2**53 pixels and adding images' histograms in
    any order, or on different machines, gives the same figures
    (:func:`input_statistics`, the distributed trainer's workers). A histogram
    rather than sums: the statistics of any per-value input transform
    (:data:`.unet.INPUT_TRANSFORMS`) follow from it exactly.
    """
    hist = np.zeros((3, 256))
    h, w = d.shape
    for y0 in range(0, h, band_rows):
        block = d.image.read(y0, min(h, y0 + band_rows), 0, w).reshape(-1, 3)
        for c in range(3):
            hist[c] += np.bincount(block[:, c], minlength=256)
    return hist


def statistics_from_histograms(
    hists: list[np.ndarray], transform: str = "linear"
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation, after ``transform``, from :func:`image_histogram`.

    The values are those the model's input layer computes from each grey
    level (:func:`._keras_layers.input_transform_table`). A standard deviation below
    the transform's step at glass (one grey level) is raised to it (a flat image).
    """
    from ._keras_layers import input_transform_floor, input_transform_table

    h = np.sum(hists, axis=0)
    table = input_transform_table(transform)
    count = h.sum(axis=1)
    mean = (h * table).sum(axis=1) / count
    std = np.sqrt(np.maximum((h * table * table).sum(axis=1) / count - mean * mean, 0.0))
    floor = input_transform_floor(transform)
    return tuple(float(v) for v in mean), tuple(float(max(v, floor)) for v in std)


def input_statistics(
    datas: list[ImageData], transform: str = "linear", band_rows: int = 1024
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of every pixel of the training images.

    Taken after the model's input ``transform`` (``"linear"`` grey levels or
    ``"od"`` optical density), from one pass over the decoded caches band by
    band (exact: see :func:`image_histogram`). A standard deviation below one
    grey level's step is raised to it (a flat image).
    """
    return statistics_from_histograms([image_histogram(d, band_rows) for d in datas], transform)
