"""The one pyramid rule every writer and reader of this package follows.

Slides (:mod:`.pyramid`, :mod:`._tiff_pyramid`, :mod:`.synthetic`), the lazy
levels of :func:`.slide_base.finish_levels`, masks (:mod:`.mask_write`) and
predictions (:mod:`.prediction_store`) all build their levels here:

* **Shapes**: level ``k`` is ``ceil(H / 2**k) x ceil(W / 2**k)`` (each level
  the ceil-half of the one above); levels are added while the longer side
  exceeds ``smallest`` (:func:`level_shapes`).
* **Reduction**: each level is the 2 x 2 reduction of the level above.
  Images and probabilities (``"mean"``): the mean, rounded half up for
  integers. Labels drawn by people (``"max"``: masks, scribbles): the maximum,
  so a thin scribble or a small tissue island survives at every level and no
  new label value appears (a low-level pixel is tissue when any pixel it
  summarises is). Predicted 0/1 masks (:func:`majority_levels`): area
  majority, tissue where at least half of the level-0 pixels of the block are,
  so a coarse level neither dilates nor shifts the prediction's edges (the
  fraction is carried down in float32 by the mean rule and thresholded per
  level, never a vote of votes).
* **Edge rule**: a partial block at the bottom or right border (odd size) is
  reduced over the pixels that exist (implemented by repeating the last row or
  column, which for a 2 x 2 block is exactly that).
* **Placement**: a pixel of a level with total downsample ``d`` (level-0 pixels
  per pixel, ``d = d0 * 2**k`` for a pyramid whose level 0 is itself at
  ``d0``) summarises the level-0 block ``[d*i, d*i + d)``; pixel centres sit at
  integer coordinates (OME-NGFF, napari), so its centre is level-0
  ``d*i + (d - 1)/2``. Stored as OME-NGFF ``coordinateTransformations``
  ``scale = d * unit`` and ``translation = (d - 1)/2 * unit (+ origin)``
  (:func:`level_transform`). The last, partial block's centre is off by at most
  half a pixel of that level (its existing pixels are fewer).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

Reduction = Literal["mean", "max"]


def level_shapes(shape: tuple[int, int], smallest: int) -> list[tuple[int, int]]:
    """Shapes of the levels, level 0 first: ceil-halve while the longer side > ``smallest``.

    Parameters
    ----------
    shape
        (height, width) of level 0.
    smallest
        The last level fits in a ``smallest`` x ``smallest`` square (at least 1).
    """
    smallest = max(1, int(smallest))
    shapes = [(int(shape[0]), int(shape[1]))]
    while max(shapes[-1]) > smallest:
        h, w = shapes[-1]
        shapes.append((-(-h // 2), -(-w // 2)))
    return shapes


def half_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the next level (ceil-half of the two leading axes)."""
    return (-(-int(shape[0]) // 2), -(-int(shape[1]) // 2), *shape[2:])


def _pad_even(block: np.ndarray) -> np.ndarray:
    h, w = block.shape[:2]
    if h % 2 or w % 2:
        pad = [(0, h % 2), (0, w % 2)] + [(0, 0)] * (block.ndim - 2)
        block = np.pad(block, pad, mode="edge")
    return block


def reduce2(block: np.ndarray, how: Reduction = "mean") -> np.ndarray:
    """One level down: the 2 x 2 reduction of ``block`` (y, x first; any trailing axes).

    ``"mean"``: integer blocks give the mean rounded half up, in their dtype
    (uint8 stays uint8); float blocks the float mean. ``"max"``: the maximum.
    Odd sides are reduced over the pixels that exist (see the module doc).
    The result has shape :func:`half_shape` of the input.
    """
    block = _pad_even(np.asarray(block))
    if how == "max":
        rows = np.maximum(block[0::2], block[1::2])
        return np.maximum(rows[:, 0::2], rows[:, 1::2])
    if how != "mean":
        raise ValueError(f"unknown reduction {how!r}; use 'mean' or 'max'")
    if block.dtype.kind == "f":
        rows = block[0::2] + block[1::2]
        return ((rows[:, 0::2] + rows[:, 1::2]) / 4).astype(block.dtype)
    # Plain strided additions: reshape(...).sum(axis=(1, 3)) is ~20x slower.
    acc = np.uint16 if block.dtype.itemsize == 1 else np.int64
    rows = block[0::2].astype(acc)
    rows += block[1::2]
    total = rows[:, 0::2].copy()
    total += rows[:, 1::2]
    total += 2
    total //= 4
    return total.astype(block.dtype)


def reduce2_dask(level: Any, how: Reduction = "mean", chunk: int = 2048) -> Any:
    """Lazily reduce a dask array ``(H, W, ...)`` by :func:`reduce2` (same rule, same shapes).

    Chunks are made even-sided (``chunk`` on y and x) so that every 2 x 2 block
    lies inside one chunk; only the last chunk of an axis may be odd, and
    :func:`reduce2` handles it.
    """
    import dask.array as da

    h, w = level.shape[:2]
    c = max(2, int(chunk) // 2 * 2)
    x = level.rechunk({0: min(c, h), 1: min(c, w)})
    out_chunks = tuple(tuple(-(-n // 2) for n in ch) for ch in x.chunks[:2]) + x.chunks[2:]
    return da.map_blocks(reduce2, x, how, chunks=out_chunks, dtype=level.dtype)


def majority_levels(level0: Any, n: int, chunk: int = 2048) -> list[Any]:
    """``n`` coarser levels of a 0/1 dask mask by area majority (lazy, uint8 0/1).

    Level ``k`` is 1 where the mean of level 0 over its block (the mean rule,
    same shapes and edge rule as :func:`reduce2`) is at least 0.5.
    """
    frac = level0.astype(np.float32)
    out = []
    for _ in range(int(n)):
        frac = reduce2_dask(frac, "mean", chunk)
        out.append((frac >= 0.5).astype(np.uint8))
    return out


def level_downsample(k: int, base: float = 1.0) -> float:
    """Total downsample of level ``k`` of a pyramid whose level 0 is at ``base``."""
    return float(base) * 2.0**k


def level_transform(
    downsample: float,
    unit: float | tuple[float, float] = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
) -> tuple[list[float], list[float]]:
    """OME-NGFF ``(scale, translation)`` of the y and x axes of a level.

    Parameters
    ----------
    downsample
        Level-0 pixels per pixel of this level (``d``).
    unit
        Physical size of one level-0 pixel (microns; 1.0 for pixel units),
        one number or ``(y, x)``.
    origin
        Level-0 pixel (y, x) where the level's first block starts (a region's
        offset), in level-0 pixels.

    Returns
    -------
    scale, translation
        ``[d*unit]*2`` and ``[(origin + (d - 1)/2) * unit]`` per axis: pixel
        ``i`` of the level is centred on the centre of the level-0 block it
        summarises.
    """
    d = float(downsample)
    shift = (d - 1.0) / 2.0
    uy, ux = (float(unit), float(unit)) if np.isscalar(unit) else (float(u) for u in unit)
    return (
        [d * uy, d * ux],
        [(float(origin[0]) + shift) * uy, (float(origin[1]) + shift) * ux],
    )
