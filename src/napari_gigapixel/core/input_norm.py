"""Per-slide white balance: every slide's glass brought to one white before the model.

Slides differ in the colour and brightness of their glass (scanner, lamp,
mounting medium): a glass of (229, 232, 235) on one slide is the colour of
pale stroma on a slide whose glass is (247, 243, 240). A model trained on one
slide then calls the other's glass tissue. So the trainer and the predictor
both scale each slide's channels so its glass (the per-channel 99th
percentile of its pixels: glass is the brightest thing on a slide) lands on
:data:`WHITE`.

The gain is one constant per slide and channel, found in a first pass over a
small level of the slide before any tile is processed, and applied by a
per-channel lookup table on uint8 pixels: an element-wise map, so streamed
tiles, whole images and any chunking see the same pixels (exact under
tiling). Models record that they expect it (``ModelConfig.white_balance``);
:func:`.inference.predict` applies it to each slide it predicts.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

#: The white every slide's glass is scaled to.
WHITE = 240.0
#: Percentile of each channel taken as the slide's glass colour.
PERCENTILE = 99.0
#: Pixels sampled for the percentile at most (a pyramid level near this size is used).
SAMPLE_PIXELS = 4_000_000


def _sample(arr: Any, level0: Any = None) -> tuple[np.ndarray, float]:
    """An (H, W, 3) array-like on a regular grid of at most SAMPLE_PIXELS pixels, uint8
    ``(h, w, 3)``, and its level-0 pixels per pixel (``level0``: the level-0 array)."""
    h, w = int(arr.shape[0]), int(arr.shape[1])
    step = max(1, math.ceil(math.sqrt(h * w / SAMPLE_PIXELS)))
    block = arr[::step, ::step, :3]
    if hasattr(block, "compute"):
        block = block.compute()
    full = int((level0 if level0 is not None else arr).shape[1])
    return np.asarray(block, dtype=np.uint8), step * full / max(w, 1)


def _small_level(slide: Any) -> Any:
    """The smallest pyramid level with at least a quarter of SAMPLE_PIXELS pixels."""
    arr = slide.levels[0]
    for lev in slide.levels[1:]:
        if int(lev.shape[0]) * int(lev.shape[1]) >= SAMPLE_PIXELS // 4:
            arr = lev
    return arr


def read_sample(source: Any) -> tuple[np.ndarray, float, float | None]:
    """A small copy of a slide: uint8 ``(h, w, 3)``, its level-0 pixels per pixel and
    the level-0 pixel size in um (None when unknown).

    ``source``: a slide path (the smallest pyramid level with at least a
    quarter of :data:`SAMPLE_PIXELS` pixels is read, whole, then sampled), an
    open :class:`.slide_base.Slide` (the same), or an ``(H, W, 3)`` uint8
    array-like (sampled on a regular grid, taken as level 0).
    """
    if isinstance(source, str | os.PathLike):
        from .slide import open_slide

        with open_slide(os.fspath(source)) as slide:
            return (*_sample(_small_level(slide), slide.levels[0]), _um(slide))
    if hasattr(source, "levels"):  # an open Slide (e.g. an array at a resolution)
        return (*_sample(_small_level(source), source.levels[0]), _um(source))
    return (*_sample(source), None)


def _um(slide: Any) -> float | None:
    mpp = getattr(slide, "mpp", None)
    return float(mpp[1]) if mpp else None


def glass_colour(px: np.ndarray) -> tuple[float, float, float]:
    """Per-channel :data:`PERCENTILE` of uint8 pixels ``(..., 3)`` (at least 1)."""
    flat = np.asarray(px, np.uint8).reshape(-1, 3)
    out = []
    for c in range(3):
        cum = np.cumsum(np.bincount(flat[:, c], minlength=256))
        out.append(float(max(1, np.searchsorted(cum, PERCENTILE / 100.0 * cum[-1]))))
    return out[0], out[1], out[2]


def white_point(source: Any) -> tuple[float, float, float]:
    """The glass colour of a slide: per-channel 99th percentile of its pixels.

    Parameters
    ----------
    source
        A slide path, an open :class:`.slide_base.Slide` or an ``(H, W, 3)``
        uint8 array-like (:func:`read_sample`).

    Returns
    -------
    (r, g, b)
        Grey levels (at least 1).
    """
    return glass_colour(read_sample(source)[0])


def balance_table(white: tuple[float, float, float]) -> np.ndarray:
    """Lookup table ``(3, 256)`` uint8 that scales each channel's ``white`` to :data:`WHITE`."""
    levels = np.arange(256, dtype=np.float64)
    return np.stack(
        [np.clip(np.rint(levels * (WHITE / max(float(w), 1.0))), 0, 255) for w in white]
    ).astype(np.uint8)


def apply_balance(block: np.ndarray, table: np.ndarray) -> np.ndarray:
    """White-balance an ``(..., 3)`` uint8 block with a :func:`balance_table`."""
    out = np.empty(block.shape, np.uint8)
    for c in range(3):
        out[..., c] = table[c][block[..., c]]
    return out


def balance_pixels(
    block: np.ndarray, balance: Any, y0: int = 0, x0: int = 0, downsample: float = 1.0
) -> np.ndarray:
    """``block`` white-balanced by ``balance``: a :func:`balance_table` (one gain per
    slide and channel) or a :class:`.white_field.WhiteField` (a gain per place:
    ``(y0, x0)`` is the block's top-left pixel in the slide at a working
    resolution of ``downsample`` level-0 pixels per pixel); None: unchanged."""
    if balance is None:
        return block
    if isinstance(balance, np.ndarray):
        return apply_balance(block, balance)
    return balance.apply(block, y0, x0, downsample)


def slide_balance(source: Any, local: bool) -> tuple[Any, tuple[float, float, float], str]:
    """How to balance a slide: ``(balance, white point, message)``, per place
    (:func:`.white_field.white_field`) when ``local``, else per slide."""
    if local:
        from .white_field import white_field

        field = white_field(source)
        return field, field.white, field.describe()
    white = white_point(source)
    return balance_table(white), white, glass_note(white)


def glass_note(white: tuple[float, float, float]) -> str:
    """What the user is told about a slide's glass colour."""
    return "glass colour " + ", ".join(f"{v:.0f}" for v in white)


__all__ = [
    "PERCENTILE",
    "WHITE",
    "apply_balance",
    "balance_pixels",
    "balance_table",
    "glass_colour",
    "glass_note",
    "read_sample",
    "slide_balance",
    "white_point",
]
