"""The aligned tile grid of the streamed trainer and of tiled inference.

Cores partition the image padded to a multiple of the model's total stride
``S``; each window adds ``halo`` pixels of real neighbours on every side,
clipped at the padded border (never zero-padded past it). Core sizes, window
origins and window sizes are all multiples of ``S``, so every layer of the
network samples the same grid, with the same ``same``-padding, as a run on the
whole padded image: the outputs over a core are then exactly the whole-image
outputs there, provided the halo covers the receptive field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import GigapixelError

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Tile:
    """One tile in level-0 coordinates of the (region of the) image.

    Attributes
    ----------
    core
        ``(y0, y1, x0, x1)``: the pixels whose outputs (and loss) this tile owns.
        Cores partition the padded image; clip to the image for the valid part.
    window
        ``(y0, y1, x0, x1)``: the pixels the model reads: the core plus the halo,
        clipped at the padded border.
    """

    core: Box
    window: Box

    @property
    def window_shape(self) -> tuple[int, int]:
        return (self.window[1] - self.window[0], self.window[3] - self.window[2])

    def valid_core(self, shape: tuple[int, int]) -> Box:
        """The core clipped to the unpadded image of ``shape`` (may be empty)."""
        y0, y1, x0, x1 = self.core
        return (y0, min(y1, shape[0]), x0, min(x1, shape[1]))


def round_up(n: int, m: int) -> int:
    """Smallest multiple of ``m`` that is >= ``n``."""
    return m * math.ceil(n / m)


def padded_shape(shape: tuple[int, int], stride: int) -> tuple[int, int]:
    """The image shape padded bottom/right to a multiple of ``stride``."""
    return (round_up(int(shape[0]), stride), round_up(int(shape[1]), stride))


def tile_grid(
    shape: tuple[int, int], core: int | tuple[int, int], halo: int, stride: int
) -> list[Tile]:
    """The tiles of an image, row-major.

    Parameters
    ----------
    shape
        (H, W) of the image (any size; it is padded to a multiple of ``stride``).
    core
        Core size (or (height, width)); rounded down to a multiple of ``stride``
        (at least ``stride``). A core as large as the image gives one tile:
        the whole-image computation.
    halo
        Pixels of context per side; must be a multiple of ``stride``.
    stride
        The model's total stride ``S``.

    Returns
    -------
    list[Tile]
    """
    if stride < 1:
        raise GigapixelError(f"tile grid: stride must be positive, got {stride}.")
    if halo < 0 or halo % stride:
        raise GigapixelError(
            f"tile grid: the halo ({halo}) must be a non-negative multiple of the stride "
            f"({stride}), or tiles would not sample the whole-image grid."
        )
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise GigapixelError(f"tile grid: empty image of shape {h} x {w}.")
    cy, cx = (core, core) if isinstance(core, int) else (int(core[0]), int(core[1]))
    hp, wp = padded_shape((h, w), stride)
    # Never larger than the padded image, always a positive multiple of S.
    cy = max(stride, min(cy, hp) // stride * stride)
    cx = max(stride, min(cx, wp) // stride * stride)
    tiles = []
    for y0 in range(0, hp, cy):
        y1 = min(y0 + cy, hp)
        for x0 in range(0, wp, cx):
            x1 = min(x0 + cx, wp)
            window = (max(0, y0 - halo), min(hp, y1 + halo), max(0, x0 - halo), min(wp, x1 + halo))
            tiles.append(Tile(core=(y0, y1, x0, x1), window=window))
    return tiles
