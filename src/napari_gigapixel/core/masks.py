"""Tissue masks at an annotation level.

A full-resolution mask of a 1 Gpx slide is 1 GB, and napari cannot paint on
multiscale labels, so a mask lives at an *annotation level*: a 2-D array whose
pixels are ``downsample`` level-0 pixels wide. Training reads it through
:meth:`AnnotationMask.read_window`, a nearest-neighbour view upsampled per
tile, so no full-resolution mask is ever materialised.

Label values (checked, never guessed; see ``docs/architecture.md``, "Mask semantics"):

* ``kind="dense"``: 0 = background, any positive integer = tissue (bool or
  any integer dtype; a label image with instance ids is tissue wherever it is
  nonzero). Negative values are an error.
* ``kind="scribble"``: 0 = unlabelled (ignored by the loss), 1 = background,
  2 = tissue. Any other value is an error that names the bad values.

Floats are refused (threshold them first). Values are never wrapped into 8
bits: a napari label 258 is an error in a scribble mask and tissue (clipped to
255, not 2) in a dense one.

Loading masks from files and writing them lives in :mod:`.mask_io`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from .errors import GigapixelError, decoding

T = TypeVar("T")

MaskKind = Literal["dense", "scribble"]

#: A mask whose short side is below this (and is not the slide's own size) is
#: too small to tell its level: one pixel of rounding is then more than ~6%.
MIN_MASK_SIDE = 16
#: At most this many bad values are listed in an error message.
_MAX_LISTED = 8


class MaskError(GigapixelError):
    """A mask that cannot be used with its slide (the message says why and what to do)."""


def infer_downsample(
    mask_shape: tuple[int, int],
    slide_shape: tuple[int, int],
    *,
    name: str = "mask",
    min_side: int = MIN_MASK_SIDE,
) -> float:
    """Infer the annotation level of a mask from its shape and the slide's.

    Parameters
    ----------
    mask_shape, slide_shape
        (height, width) of the mask and of the slide's level 0.
    name
        Used in the error message (typically the mask's file name).
    min_side
        A mask with a shorter side than this (other than the slide's own
        size) is too small to tell its level (one pixel of rounding is more
        than the 2% tolerance), an error.

    Returns
    -------
    float
        Level-0 pixels per mask pixel (1, 2, 4, ... or any ratio a pyramid used).

    Raises
    ------
    MaskError
        When the two axes disagree (the mask cannot overlay the slide), the
        mask is too small to tell its level, or the ratio is neither a power of
        two nor one consistent downsample.
    """
    mh, mw = int(mask_shape[0]), int(mask_shape[1])
    sh, sw = int(slide_shape[0]), int(slide_shape[1])
    if mh <= 0 or mw <= 0:
        raise MaskError(f"{name}: the mask is empty (shape {mh} x {mw}).")
    if (mh, mw) == (sh, sw):
        return 1.0
    fy, fx = sh / mh, sw / mw
    d = (fy + fx) / 2
    if d < 1 - 1e-9 and _fits(mh, sh, 1 / d) and _fits(mw, sw, 1 / d):
        # The ratios match, but the mask is larger than the slide: finer than level 0.
        raise MaskError(
            f"{name}: a {mh} x {mw} mask is larger than the {sh} x {sw} slide "
            f"({1 / d:.2f} x its level 0); a mask cannot be finer than the slide. "
            "Use the mask made for this slide, or the slide this mask was made for."
        )
    if d < 1 - 1e-9 or not (_fits(sh, mh, d) and _fits(sw, mw, d)):
        raise MaskError(
            f"{name}: a {mh} x {mw} mask cannot overlay a {sh} x {sw} slide "
            f"(height ratio {fy:.3f}, width ratio {fx:.3f}; they must match). "
            "Use a mask made for this slide, at level 0 or any downsampled level."
        )
    if min(mh, mw) < min_side:
        raise MaskError(
            f"{name}: a {mh} x {mw} mask is too small to infer its level on a {sh} x {sw} "
            f"slide (ratio {d:.1f}, uncertain by one pixel in {min(mh, mw)}). Save the mask "
            f"at a level at least {MIN_MASK_SIDE} pixels on its short side."
        )
    # Snap to the nearest power of two when close: pyramid levels are 2^k.
    p2 = 2 ** round(math.log2(d)) if d >= 1 else 1
    if abs(p2 - d) / d < 0.02 and _fits(sh, mh, p2) and _fits(sw, mw, p2):
        return float(p2)
    # Any other ratio must be one downsample for both axes (to 2%).
    if abs(fy - fx) / d > 0.02:
        raise MaskError(
            f"{name}: a {mh} x {mw} mask has no consistent downsample on a {sh} x {sw} "
            f"slide (height ratio {fy:.3f}, width ratio {fx:.3f}, not a power of two). "
            "Use a mask made for this slide, at level 0 or any downsampled level."
        )
    return float(d)


def _fits(side: int, mask_side: int, d: float) -> bool:
    """A level of downsample ``d`` may have ``mask_side`` pixels (ceil or floor, 1 px slack)."""
    return abs(math.ceil(side / d) - mask_side) <= 1 or abs(math.floor(side / d) - mask_side) <= 1


def bad_label_values(values: np.ndarray, kind: MaskKind) -> np.ndarray:
    """The distinct values of ``values`` that a ``kind`` mask may not hold (sorted)."""
    v = np.asarray(values)
    if v.dtype == bool or v.size == 0:
        return np.zeros(0, np.int64)
    if kind == "scribble":
        bad = v[(v < 0) | (v > 2)]
    else:
        bad = v[v < 0]
    return np.unique(bad)


def label_error(name: str, kind: MaskKind, bad: np.ndarray) -> MaskError:
    """The :class:`MaskError` for a ``kind`` mask holding the values ``bad``."""
    listed = ", ".join(str(int(b)) for b in bad[:_MAX_LISTED])
    more = f" (and {len(bad) - _MAX_LISTED} more)" if len(bad) > _MAX_LISTED else ""
    if kind == "scribble":
        allowed = "0 (unlabelled), 1 (background) and 2 (tissue)"
    else:
        allowed = "0 (background) and positive values (tissue)"
    return MaskError(
        f"{name}: a {kind} mask holds the values {listed}{more}; it may hold only "
        f"{allowed}. Relabel the mask (or load it as the other kind)."
    )


def reading_mask(name: str):
    """A context in which a decoder's error reading mask pixels is one :class:`MaskError`.

    A lazy mask is decoded only when a window is read, so a truncated or
    damaged file fails there (:func:`.errors.decoding`).
    """
    return decoding(
        name,
        "the mask's pixels",
        "The file is damaged or incomplete: save or copy the mask again.",
        MaskError,
    )


def guarded(items: Iterable[T], reading: Callable[[], Any]) -> Iterator[T]:
    """``items`` as they come, each made inside a fresh ``reading()`` context.

    For generators that read a file strip by strip (the GeoJSON export's
    coverage): ``reading`` is :func:`reading_mask` or the prediction store's
    counterpart bound to the file, so a decoder's error becomes one line where
    the strip is read, not where the caller yields (a stop or a closed
    generator passes as is).
    """
    it = iter(items)
    while True:
        with reading():
            try:
                item = next(it)
            except StopIteration:
                return
        yield item


def check_label_values(array: Any, kind: MaskKind, name: str = "mask") -> None:
    """Raise :class:`MaskError` when ``array`` holds values a ``kind`` mask may not.

    Reads the array chunk by chunk (dask/zarr arrays are never materialised
    whole): first its minimum and maximum, and the offending values only when
    those are out of range.
    """
    import dask.array as da

    dtype = np.dtype(array.dtype)
    if dtype.kind == "b":
        return
    if dtype.kind not in "iu":
        raise MaskError(
            f"{name}: mask values must be integers or booleans, not {dtype}. "
            "Threshold probabilities first (e.g. > 0.5) and save as uint8."
        )
    if kind == "dense" and dtype.kind == "u":
        return  # every unsigned value is background (0) or tissue
    if isinstance(array, np.ndarray):
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
    else:
        arr = array if isinstance(array, da.Array) else da.from_array(array, chunks="auto")
        with reading_mask(name):
            lo, hi = (int(v) for v in da.compute(arr.min(), arr.max())) if arr.size else (0, 0)
    top = 2 if kind == "scribble" else np.iinfo(dtype).max
    if lo >= 0 and hi <= top:
        return
    if isinstance(array, np.ndarray):
        bad = bad_label_values(array, kind)
    else:
        parts = [
            bad_label_values(np.asarray(arr.blocks[i]), kind) for i in np.ndindex(arr.numblocks)
        ]
        bad = np.unique(np.concatenate(parts))
    raise label_error(name, kind, bad)


def labels_to_uint8(array: Any, kind: MaskKind, name: str = "mask") -> np.ndarray:
    """Checked 8-bit labels: values beyond 255 clip to 255 (dense tissue), never wrap."""
    a = np.asarray(array)
    check_label_values(a, kind, name)
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


@dataclass
class AnnotationMask:
    """A 2-D label array at an annotation level of a slide.

    Parameters
    ----------
    array
        2-D integer array (numpy, dask, zarr: anything sliceable with
        ``np.asarray`` on a slice) at the annotation level.
    downsample
        Level-0 pixels per mask pixel (1 for a full-resolution mask).
    kind
        ``"dense"`` (0 background, nonzero tissue) or ``"scribble"``
        (0 unlabelled, 1 background, 2 tissue).
    name
        Where it came from, for messages.
    """

    array: Any
    downsample: float = 1.0
    kind: MaskKind = "dense"
    name: str = "mask"

    def __post_init__(self) -> None:
        if len(self.array.shape) != 2:
            raise MaskError(
                f"{self.name}: a mask must be 2-D (height, width); got shape "
                f"{tuple(self.array.shape)}."
            )
        if self.kind not in ("dense", "scribble"):
            raise MaskError(f"{self.name}: kind must be 'dense' or 'scribble', not {self.kind!r}.")
        if not self.downsample > 0:
            raise MaskError(f"{self.name}: downsample must be positive, got {self.downsample}.")
        if isinstance(self.array, np.ndarray):
            # In memory: cheap to check now. Lazy arrays are checked by load_mask
            # (chunk by chunk) and per window by read_window.
            check_label_values(self.array, self.kind, self.name)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.array.shape[0]), int(self.array.shape[1]))

    def level0_shape(self) -> tuple[int, int]:
        """The level-0 extent this mask covers (rounded)."""
        return (
            int(round(self.shape[0] * self.downsample)),
            int(round(self.shape[1] * self.downsample)),
        )

    def read_window(self, y0: int, y1: int, x0: int, x1: int, stride: int = 1) -> np.ndarray:
        """Labels of a level-0 window, sampled every ``stride`` level-0 pixels.

        Output pixel ``(i, j)`` stands for the level-0 block starting at
        ``(y0 + i*stride, x0 + j*stride)`` and takes the mask value at the
        block's centre (nearest neighbour). Output shape is
        ``(ceil((y1-y0)/stride), ceil((x1-x0)/stride))``. Pixels past the
        mask's extent read 0 (unlabelled for scribbles, background for dense
        masks; callers exclude pixels past the slide from the loss anyway).

        Only the mask rows and columns the window touches are read.
        """
        if y1 <= y0 or x1 <= x0:
            return np.zeros((0, 0), np.uint8)
        ny = -(-(y1 - y0) // stride)
        nx = -(-(x1 - x0) // stride)
        return self.read_grid(y0, x0, ny, nx, stride)

    def read_grid(self, y0: float, x0: float, ny: int, nx: int, step: float) -> np.ndarray:
        """Labels of an ``ny x nx`` grid of level-0 blocks ``step`` pixels wide.

        Output pixel ``(i, j)`` takes the mask value at the centre of the
        level-0 block ``[y0 + i*step, y0 + (i+1)*step) x [x0 + j*step, ...)``
        (nearest neighbour). ``y0``, ``x0`` and ``step`` may be fractional:
        this is how a working resolution whose downsample is not an integer
        (:mod:`.resolution`) reads labels. Pixels past the mask read 0.
        """
        ny, nx = int(ny), int(nx)
        out = np.zeros((max(ny, 0), max(nx, 0)), np.uint8)
        if ny <= 0 or nx <= 0:
            return out
        cy = y0 + (np.arange(ny) + 0.5) * step
        cx = x0 + (np.arange(nx) + 0.5) * step
        iy = np.floor(cy / self.downsample + 1e-9).astype(np.int64)
        ix = np.floor(cx / self.downsample + 1e-9).astype(np.int64)
        h, w = self.shape
        vy = (iy >= 0) & (iy < h)
        vx = (ix >= 0) & (ix < w)
        if not vy.any() or not vx.any():
            return out
        ry0, ry1 = int(iy[vy].min()), int(iy[vy].max()) + 1
        rx0, rx1 = int(ix[vx].min()), int(ix[vx].max()) + 1
        with reading_mask(self.name):
            block = np.asarray(self.array[ry0:ry1, rx0:rx1])
        sub = block[np.ix_(iy[vy] - ry0, ix[vx] - rx0)]
        if sub.dtype != np.uint8 or self.kind == "scribble":
            bad = bad_label_values(sub, self.kind)
            if bad.size:
                raise label_error(self.name, self.kind, bad)
        # Clip, never wrap: a dense 258 stays tissue (255), it does not become 2.
        out[np.ix_(vy, vx)] = np.clip(sub, 0, 255).astype(np.uint8)
        return out

    def targets_and_weights(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Turn raw labels into (target in {0,1}, weight in {0,1}) float32 arrays."""
        labels = np.asarray(labels)
        if self.kind == "dense":
            return (labels > 0).astype(np.float32), np.ones(labels.shape, np.float32)
        return (labels == 2).astype(np.float32), (labels > 0).astype(np.float32)
