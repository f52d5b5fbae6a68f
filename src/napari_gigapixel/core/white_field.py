"""Local white balance: the glass colour estimated cell by cell, brought to one white.

A slide's glass is not one colour: the lamp, the condenser and the scanner's
shading make it 3-6% brighter at one end than at the other (measured on the
tuning slides: glass from 236 to 250 on one, 229 to 241 on another), while
pale stroma is 2-4% darker than the glass beside it. A single gain per slide
(:mod:`.input_norm`) leaves that shading in, and a model that learned the
training slide's glass calls a darker stretch of another slide's glass tissue
(the tinted ends of a tuning slide, the recurrent worst case of the recipe).

:class:`WhiteField` holds the glass colour of each cell of about 64 um: the
95th percentile of the cell's pixels per channel (a cell with 5% glass shows
its glass), the largest of each 3 x 3 cells (a cell full of tissue takes its
neighbours' glass) but at least 96% of the brightest within 8 cells (inside
a large section, where no glass is that near, tissue is not taken for
glass), smoothed over a cell and held within 85-105% of the slide's own
white point (:func:`.input_norm.white_point`), so a dark scanner border or a
slide full of tissue is never scaled to white. It is found in one
pass over a small pyramid level before any tile is processed.

Applied, every pixel is multiplied by ``WHITE / glass`` at its place, in
fixed point (``GAIN_BITS``), one gain per block of :data:`GAIN_BLOCK` pixels
on a grid fixed in the slide's own pixels at the working resolution: every
pixel's value is a function of its value and its position only, so tiles,
chunks and whole images see the same pixels (exact under tiling). The gain
changes by less than 0.1% from block to block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .input_norm import WHITE, glass_colour, glass_note, read_sample

#: Side of the cells the glass is estimated in (um), or in level-0 pixels for
#: slides without a pixel size.
CELL_UM = 64.0
CELL_PX = 128
#: Per-channel percentile of a cell's pixels taken as its glass.
CELL_PERCENTILE = 95.0
#: Sample pixels per cell side at least (a coarser field on huge slides).
MIN_CELL_SAMPLES = 16
#: The local glass is held within these fractions of the slide's white point.
FIELD_RANGE = (0.85, 1.05)
#: ... and at least FLOOR_SHARE of the brightest cell within FLOOR_REACH cells
#: (about 0.5 mm) each side: the lamp's shading changes by about 3% per mm on
#: the tuning slides, and tissue is never raised by more than 4% against the
#: glass around it (without it, by up to 17% inside the sample slide's sections).
FLOOR_SHARE = 0.96
FLOOR_REACH = 8
#: Working-resolution pixels per gain block (one gain per block and channel).
GAIN_BLOCK = 16
#: Fixed-point bits of the gains.
GAIN_BITS = 12


@dataclass(frozen=True)
class WhiteField:
    """The glass colour of a slide, per cell.

    Attributes
    ----------
    grid
        ``(gh, gw, 3)`` float64 glass colour at the cells' centres.
    cell
        Cell side in level-0 pixels.
    white
        The slide's white point (per-channel 99th percentile), which bounds the field.
    """

    grid: np.ndarray
    cell: float
    white: tuple[float, float, float]

    def gains(self, y0: int, y1: int, x0: int, x1: int, downsample: float = 1.0) -> np.ndarray:
        """Fixed-point gains ``(nby, nbx, 3)`` uint32 of the :data:`GAIN_BLOCK` blocks
        covering rows ``[y0, y1)`` and columns ``[x0, x1)`` of the slide at a
        working resolution of ``downsample`` level-0 pixels per pixel (blocks
        from ``y0 // GAIN_BLOCK``, ``x0 // GAIN_BLOCK``)."""
        b = GAIN_BLOCK
        ys = (np.arange(y0 // b, -(-y1 // b)) + 0.5) * (b * downsample) / self.cell - 0.5
        xs = (np.arange(x0 // b, -(-x1 // b)) + 0.5) * (b * downsample) / self.cell - 0.5
        rows = _lerp(self.grid, ys, 0)
        field = _lerp(rows, xs, 1)
        return np.rint((WHITE / field) * (1 << GAIN_BITS)).astype(np.uint32)

    def apply(self, block: np.ndarray, y0: int, x0: int, downsample: float = 1.0) -> np.ndarray:
        """``block`` (uint8 ``(h, w, 3)``, top-left pixel ``(y0, x0)`` of the slide at
        ``downsample``) with its glass brought to :data:`.input_norm.WHITE`."""
        block = np.ascontiguousarray(np.asarray(block)[..., :3], dtype=np.uint8)
        h, w = block.shape[:2]
        out = np.empty((h, w, 3), np.uint8)
        if h == 0 or w == 0:
            return out
        b = GAIN_BLOCK
        g = self.gains(y0, y0 + h, x0, x0 + w, downsample)
        # Each column's gains (a block's repeated over its columns), as the rows lie.
        gx = np.repeat(g, b, axis=1)[:, x0 % b : x0 % b + w].reshape(g.shape[0], w * 3)
        src, dst = block.reshape(h, w * 3), out.reshape(h, w * 3)
        # One row of gain blocks at a time: the uint32 products stay in cache
        # (3 ns per pixel, against 6 for the per-slide lookup table).
        tmp = np.empty((b, w * 3), np.uint32)
        r0 = 0
        for i in range(g.shape[0]):
            r1 = min(h, (y0 // b + i + 1) * b - y0)
            t = tmp[: r1 - r0]
            np.multiply(src[r0:r1], gx[i], out=t, dtype=np.uint32)
            t += 1 << (GAIN_BITS - 1)
            t >>= GAIN_BITS
            np.minimum(t, 255, out=t)
            dst[r0:r1] = t
            r0 = r1
        return out

    def describe(self) -> str:
        """What the user is told: the slide's glass and how much it varies."""
        lo, hi = self.grid.min(axis=(0, 1)), self.grid.max(axis=(0, 1))
        spread = ", ".join(f"{a:.0f}-{b:.0f}" for a, b in zip(lo, hi))
        return (
            glass_note(self.white) + f"; balanced per {self.cell:.0f} px cell "
            f"({self.grid.shape[0]} x {self.grid.shape[1]}; local glass {spread})"
        )


def _lerp(grid: np.ndarray, at: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``grid`` along ``axis`` at fractional indices ``at``
    (clamped to the first and last cell)."""
    n = grid.shape[axis]
    at = np.clip(at, 0.0, n - 1.0)
    i0 = np.floor(at).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    f = (at - i0).reshape((-1,) + (1,) * (grid.ndim - 1 - axis))
    a, c = np.take(grid, i0, axis=axis), np.take(grid, i1, axis=axis)
    return a * (1.0 - f) + c * f


def white_field(source: Any) -> WhiteField:
    """The glass colour of a slide per cell (:class:`WhiteField`).

    Parameters
    ----------
    source
        A slide path, an open :class:`.slide_base.Slide` (a small pyramid level
        is read, as :func:`.input_norm.white_point` does), or an ``(H, W, 3)``
        uint8 array-like taken as level 0.
    """
    from scipy import ndimage

    px, ds, um = read_sample(source)
    white = glass_colour(px)
    cell0 = CELL_UM / um if um else float(CELL_PX)
    cs = max(MIN_CELL_SAMPLES, int(round(cell0 / ds)))  # sample pixels per cell side
    h, w = px.shape[:2]
    gh, gw = -(-h // cs), -(-w // cs)
    padded = np.pad(px, ((0, gh * cs - h), (0, gw * cs - w), (0, 0)), mode="edge")
    cells = padded.reshape(gh, cs, gw, cs, 3).transpose(0, 2, 1, 3, 4).reshape(gh, gw, -1, 3)
    glass = np.percentile(cells, CELL_PERCENTILE, axis=2)
    lo, hi = (np.array(white) * f for f in FIELD_RANGE)
    grid = np.empty_like(glass)
    for c in range(3):
        # A cell full of tissue takes its neighbours' glass; then smooth over a cell.
        g = ndimage.maximum_filter(glass[..., c], size=3, mode="nearest")
        # A cell of tissue with no glass in reach of the 3 x 3 cells (inside a
        # large section) would take its own brightest pixels for glass and be
        # raised towards white; its glass is at least FLOOR_SHARE of the
        # brightest within FLOOR_REACH cells.
        reach = 2 * FLOOR_REACH + 1
        floor = FLOOR_SHARE * ndimage.maximum_filter(glass[..., c], size=reach, mode="nearest")
        g = ndimage.gaussian_filter(np.maximum(g, floor), 1.0, mode="nearest")
        grid[..., c] = np.clip(g, lo[c], hi[c])
    return WhiteField(grid=grid, cell=cs * ds, white=(white[0], white[1], white[2]))


__all__ = ["CELL_UM", "GAIN_BLOCK", "WhiteField", "white_field"]
