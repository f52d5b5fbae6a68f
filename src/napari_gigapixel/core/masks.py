"""Tissue masks at an annotation level.

A full-resolution mask of a 1 Gpx slide is 1 GB, and napari cannot paint on
multiscale labels, so a mask lives at an *annotation level*: a 2-D array whose
pixels are ``downsample`` level-0 pixels wide. Training reads it through
:meth:`AnnotationMask.read_window`, a nearest-neighbour view upsampled per
tile, so no full-resolution mask is ever materialised.

Label values: ``kind="dense"``: 0 = background, nonzero = tissue;
``kind="scribble"``: 0 = unlabelled (ignored), 1 = background, 2 = tissue.

Loading masks from files and writing them lives in :mod:`.mask_io`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import GigapixelError

MaskKind = Literal["dense", "scribble"]


class MaskError(GigapixelError):
    """A mask that cannot be used with its slide (the message says why and what to do)."""


def infer_downsample(
    mask_shape: tuple[int, int], slide_shape: tuple[int, int], *, name: str = "mask"
) -> float:
    """Infer the annotation level of a mask from its shape and the slide's.

    Parameters
    ----------
    mask_shape, slide_shape
        (height, width) of the mask and of the slide's level 0.
    name
        Used in the error message (typically the mask's file name).

    Returns
    -------
    float
        Level-0 pixels per mask pixel (1, 2, 4, ... or any ratio a pyramid used).

    Raises
    ------
    MaskError
        When the two axes disagree, i.e. the mask cannot overlay the slide.
    """
    mh, mw = int(mask_shape[0]), int(mask_shape[1])
    sh, sw = int(slide_shape[0]), int(slide_shape[1])
    if mh <= 0 or mw <= 0:
        raise MaskError(f"{name}: the mask is empty (shape {mh} x {mw}).")
    fy, fx = sh / mh, sw / mw
    # Pyramid levels round their sizes (ceil or floor), so allow one pixel of
    # slack per axis at the mask's resolution.
    d = (fy + fx) / 2
    ok_y = abs(math.ceil(sh / d) - mh) <= 1 or abs(math.floor(sh / d) - mh) <= 1
    ok_x = abs(math.ceil(sw / d) - mw) <= 1 or abs(math.floor(sw / d) - mw) <= 1
    if d < 1 - 1e-9 or not (ok_y and ok_x):
        raise MaskError(
            f"{name}: a {mh} x {mw} mask cannot overlay a {sh} x {sw} slide "
            f"(height ratio {fy:.3f}, width ratio {fx:.3f}; they must match). "
            "Use a mask made for this slide, at level 0 or any downsampled level."
        )
    # Snap to the nearest power of two when close: pyramid levels are 2^k.
    p2 = 2 ** round(math.log2(d)) if d >= 1 else 1
    if abs(p2 - d) / d < 0.02:
        return float(p2)
    return float(d)


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
        cy = y0 + np.arange(ny) * stride + stride / 2.0
        cx = x0 + np.arange(nx) * stride + stride / 2.0
        iy = np.floor(cy / self.downsample).astype(np.int64)
        ix = np.floor(cx / self.downsample).astype(np.int64)
        h, w = self.shape
        vy = (iy >= 0) & (iy < h)
        vx = (ix >= 0) & (ix < w)
        out = np.zeros((ny, nx), np.uint8)
        if not vy.any() or not vx.any():
            return out
        ry0, ry1 = int(iy[vy].min()), int(iy[vy].max()) + 1
        rx0, rx1 = int(ix[vx].min()), int(ix[vx].max()) + 1
        block = np.asarray(self.array[ry0:ry1, rx0:rx1])
        sub = block[np.ix_(iy[vy] - ry0, ix[vx] - rx0)]
        out[np.ix_(vy, vx)] = np.clip(sub, 0, 255).astype(np.uint8)
        return out

    def targets_and_weights(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Turn raw labels into (target in {0,1}, weight in {0,1}) float32 arrays."""
        labels = np.asarray(labels)
        if self.kind == "dense":
            return (labels > 0).astype(np.float32), np.ones(labels.shape, np.float32)
        return (labels == 2).astype(np.float32), (labels > 0).astype(np.float32)
