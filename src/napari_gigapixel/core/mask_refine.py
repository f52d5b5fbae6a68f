"""A prediction's mask at level 0: the probability's threshold line, not its blocks.

The model predicts at its output stride (1/4 of the slide by default), so the
stored mask is made of 4 x 4 px blocks and its border can be up to two pixels
off the tissue's. The probability varies smoothly across the border, so
between two output pixels on either side of the threshold the border lies
where the probability, interpolated linearly between their centres, crosses
it. :class:`RefinedMask` reads the mask at any finer grid that way: each
sample takes the bilinear interpolation of the four nearest output pixels'
probabilities (their centres placed at the centres of their blocks, as the
prediction's OME transform says) and is tissue where that reaches the
threshold. Measured on the tuning slides (docs/quality.md): Dice up on every
paired run, the most where the tissue's border is ragged.

The stored mask stays what it says. The interpolated values are those of the
probability *as the clean-up left the mask*: an output pixel the clean-up
removed counts as 0, one it filled as 255, so a removed speck does not come
back and a filled hole stays filled; elsewhere a sample at an output pixel's
centre reads that pixel's own mask value. Each sample depends only on its
position and the output pixels around it, so any window or chunking gives the
same pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class RefinedMask:
    """A stored prediction's mask read at level 0 through its probability.

    Parameters
    ----------
    probability, mask
        The prediction's finest level (uint8 probability 0-255 and 0/1 mask,
        same shape; numpy, dask or zarr), at ``grid`` level-0 pixels per pixel.
    grid
        Level-0 pixels per output pixel (the store's ``downsample``).
    threshold
        The prediction's threshold (0-1).
    name
        Where it came from, for messages.

    Notes
    -----
    It reads like a dense :class:`.masks.AnnotationMask` at level 0
    (``downsample`` 1: :func:`.confusion.confusion` counts every level-0
    pixel), which is what the counts and exports need of it.
    """

    kind = "dense"
    downsample = 1.0

    def __init__(
        self, probability: Any, mask: Any, grid: float, threshold: float, name: str = "prediction"
    ) -> None:
        if tuple(probability.shape) != tuple(mask.shape):
            raise ValueError(
                f"{name}: probability {tuple(probability.shape)} and mask "
                f"{tuple(mask.shape)} differ in shape."
            )
        self.probability = probability
        self.mask = mask
        self.grid = float(grid)
        self.threshold = float(threshold)
        self.name = name

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 extent (the output grid's, rounded)."""
        return self.level0_shape()

    def level0_shape(self) -> tuple[int, int]:
        """The level-0 extent the prediction covers (rounded)."""
        h, w = self.mask.shape
        return int(round(h * self.grid)), int(round(w * self.grid))

    def read_window(self, y0: int, y1: int, x0: int, x1: int, stride: int = 1) -> np.ndarray:
        """0/1 of a level-0 window, sampled every ``stride`` pixels (as AnnotationMask's)."""
        if y1 <= y0 or x1 <= x0:
            return np.zeros((0, 0), np.uint8)
        return self.read_grid(y0, x0, -(-(y1 - y0) // stride), -(-(x1 - x0) // stride), stride)

    def read_grid(self, y0: float, x0: float, ny: int, nx: int, step: float) -> np.ndarray:
        """0/1 at the centres of an ``ny x nx`` grid of level-0 blocks ``step`` wide.

        Samples past the prediction's extent read 0, as a mask's do.
        """
        ny, nx = int(ny), int(nx)
        out = np.zeros((max(ny, 0), max(nx, 0)), np.uint8)
        if ny <= 0 or nx <= 0:
            return out
        h, w = (int(v) for v in self.mask.shape)
        # Sample centres in output-pixel index units: pixel k's centre is at 0.
        uy = (y0 + (np.arange(ny) + 0.5) * step) / self.grid - 0.5
        ux = (x0 + (np.arange(nx) + 0.5) * step) / self.grid - 0.5
        vy = (uy > -0.5) & (uy < h - 0.5)
        vx = (ux > -0.5) & (ux < w - 0.5)
        if not vy.any() or not vx.any():
            return out
        iy, fy = _lerp_index(uy[vy], h)
        ix, fx = _lerp_index(ux[vx], w)
        ry0, ry1 = int(iy.min()), int(iy.max()) + 2
        rx0, rx1 = int(ix.min()), int(ix.max()) + 2
        value = self._values(ry0, min(ry1, h), rx0, min(rx1, w))
        # Pad by edge replication so index + 1 exists at the last row/column.
        value = np.pad(value, ((0, ry1 - min(ry1, h)), (0, rx1 - min(rx1, w))), mode="edge")
        iy, ix = iy - ry0, ix - rx0
        t = np.float32(self.threshold * 255.0)
        side = value >= t
        # A sample between four output pixels on one side of the threshold is on
        # that side too (bilinear is a convex combination): only samples in
        # cells whose corners differ are interpolated (a few % of a slide; 4x
        # faster at 1 Gpx than interpolating every sample).
        c00 = side[:-1, :-1]
        mixed = (c00 != side[1:, :-1]) | (c00 != side[:-1, 1:]) | (c00 != side[1:, 1:])
        got = c00[np.ix_(iy, ix)]
        ys, xs = np.nonzero(mixed[np.ix_(iy, ix)])
        if ys.size:
            a, b, gy, gx = iy[ys], ix[xs], fy[ys], fx[xs]
            top = value[a, b] * (1.0 - gx) + value[a, b + 1] * gx
            bottom = value[a + 1, b] * (1.0 - gx) + value[a + 1, b + 1] * gx
            got[ys, xs] = top * (1.0 - gy) + bottom * gy >= t
        out[np.ix_(vy, vx)] = got
        return out

    def _values(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The probability (float32, 0-255) as the clean-up left the mask, in a window."""
        return cleaned_probability(
            self.probability[y0:y1, x0:x1], self.mask[y0:y1, x0:x1], self.threshold
        )

    def targets_and_weights(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As a dense mask's (when it is compared as the truth)."""
        labels = np.asarray(labels)
        return (labels > 0).astype(np.float32), np.ones(labels.shape, np.float32)


def cleaned_probability(prob: Any, mask: Any, threshold: float) -> np.ndarray:
    """A block of probability (uint8) as its mask (0/1) says: float32 0-255.

    Where the clean-up changed the thresholded probability, the value is 0
    (removed) or 255 (filled); elsewhere the probability itself.
    """
    p = np.asarray(prob).astype(np.float32)
    m = np.asarray(mask) > 0
    raw = p >= np.float32(threshold * 255.0)
    return np.where(m == raw, p, np.where(m, 255.0, 0.0)).astype(np.float32)


def _lerp_index(u: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower neighbour and weight of the upper one for positions ``u`` on ``n`` pixels.

    Beyond the first and last centres the value is held (edge replication).
    """
    u = np.clip(u, 0.0, n - 1.0)
    i = np.minimum(np.floor(u).astype(np.int64), max(n - 2, 0))
    f = (u - i).astype(np.float32)
    return i, f


def refined_mask(store: Any) -> RefinedMask:
    """The :class:`RefinedMask` of an open :class:`.prediction_store.PredictionStore`."""
    return RefinedMask(
        store.probability[0],
        store.mask[0],
        store.downsample,
        float(store.metadata.get("threshold", 0.5)),
        name=str(store.path),
    )
