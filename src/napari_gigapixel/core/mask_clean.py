"""Clean-up of a predicted tissue mask: thin strands, specks and small holes.

What a pathologist does in QuPath after a pixel classifier ("Create objects":
minimum object size, minimum hole size; the tissue detector's minimum area),
here applied to the predicted mask so pen strokes, dust and bubbles on the
glass come out as background. Three steps, in this order:

1. an *opening* with a Euclidean disk of radius ``radius_px`` removes strands
   and specks narrower than about ``2 * radius_px``;
2. tissue components (8-connected) of fewer than ``min_object_px`` pixels are
   removed;
3. background components (4-connected, the dual of 8-connected tissue, so a
   diagonal ring of tissue encloses what it surrounds) of fewer than
   ``min_hole_px`` pixels are filled, unless they touch the image border (the
   glass beyond it may continue them: never a hole).

The slide's outside is background. :func:`clean_block` runs on an in-memory
array; :func:`clean_dask` gives the same result pixel for pixel chunk by
chunk, with bounded memory (see there why it is exact). The settings are
physical (:class:`CleanSettings`, um and um^2) and converted to pixels of the
prediction grid by :meth:`CleanSettings.to_pixels`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import GigapixelError

#: Strands and specks narrower than this (um) are removed (opening radius = half).
#: The defaults were chosen on the tuning slides (``benchmarks/tune_quality.py``
#: predictions, docs/quality.md): 4 um and 250 um^2 raised the share of pen, dust
#: and bubble pixels called glass from 0.90 to 0.95 (median) and kept the worst
#: Dice (0.9806 -> 0.9803); 10 um reached 0.965 but cost 0.002 of worst Dice.
DEFAULT_MIN_WIDTH_UM = 4.0
#: Tissue objects smaller than this (um^2) are removed.
DEFAULT_MIN_OBJECT_UM2 = 250.0
#: Enclosed holes smaller than this (um^2) are filled (0: none). Chosen on the
#: same tuning predictions: dust and pen specks on the tissue, which the slide's
#: mask calls tissue, come out as pinholes; filling those under 250 um^2 raised
#: 130 of 192 paired scores and left the worst where it was, where 375 um^2 and
#: more began to fill real gaps between tissue (docs/quality.md).
DEFAULT_MIN_HOLE_UM2 = 250.0
#: Level-0 um/px assumed when neither the slide nor the model records one.
FALLBACK_MPP = 0.5

#: Threads cleaning a band's chunks at once (:func:`clean_zarr_array`).
CLEAN_THREADS = max(1, min(8, os.cpu_count() or 1))
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity (tissue)
_FOUR = None  # scipy's default structure: 4-connectivity (background)


class MaskCleanError(GigapixelError):
    """A clean-up setting that cannot be used (negative, NaN, infinite)."""


@dataclass(frozen=True)
class CleanPixels:
    """Clean-up settings in pixels of the grid it runs on (see :func:`clean_block`)."""

    radius_px: float = 0.0
    min_object_px: float = 0.0
    min_hole_px: float = 0.0

    @property
    def active(self) -> bool:
        """Whether any step does something."""
        return self.radius_px >= 1.0 or self.min_object_px > 1.0 or self.min_hole_px > 1.0


@dataclass(frozen=True)
class CleanSettings:
    """Clean-up settings in physical units; 0 disables a step.

    Parameters
    ----------
    min_width_um
        Strands and specks narrower than this are removed (an opening with a
        disk of radius ``min_width_um / 2``).
    min_object_um2
        Tissue objects smaller than this area are removed.
    min_hole_um2
        Enclosed holes in the tissue smaller than this area are filled.
    """

    min_width_um: float = DEFAULT_MIN_WIDTH_UM
    min_object_um2: float = DEFAULT_MIN_OBJECT_UM2
    min_hole_um2: float = DEFAULT_MIN_HOLE_UM2

    def validate(self) -> CleanSettings:
        """Return self, or raise :class:`MaskCleanError` naming the bad setting."""
        for name, flag in (
            ("min_width_um", "--min-width-um"),
            ("min_object_um2", "--min-object-um2"),
            ("min_hole_um2", "--min-hole-um2"),
        ):
            v = getattr(self, name)
            try:
                ok = math.isfinite(float(v)) and float(v) >= 0.0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise MaskCleanError(
                    f"{name} ({flag}) must be a finite number >= 0 (0 disables it), got {v!r}."
                )
        return self

    @property
    def active(self) -> bool:
        """Whether any setting is non-zero."""
        return bool(self.min_width_um or self.min_object_um2 or self.min_hole_um2)

    def to_pixels(self, grid_mpp: float) -> CleanPixels:
        """The settings in pixels of a grid of ``grid_mpp`` um/px."""
        g = float(grid_mpp)
        # The radius is snapped to a tenth of a pixel: scanners report um/px a
        # little off round figures (0.5014 at 20x), and a disk's pixels jump at
        # whole radii, so 4 um must not mean radius 1 on one 20x slide and no
        # opening on another.
        return CleanPixels(
            radius_px=round(float(self.min_width_um) / 2.0 / g, 1),
            min_object_px=float(self.min_object_um2) / (g * g),
            min_hole_px=float(self.min_hole_um2) / (g * g),
        )

    def describe(self) -> str:
        """The settings in words (a progress message)."""
        return (
            f"strands under {self.min_width_um:g} um, objects under "
            f"{self.min_object_um2:g} um^2, holes under {self.min_hole_um2:g} um^2"
        )

    def to_dict(self) -> dict[str, float]:
        """The settings as recorded in a prediction's metadata."""
        return {
            "min_width_um": float(self.min_width_um),
            "min_object_um2": float(self.min_object_um2),
            "min_hole_um2": float(self.min_hole_um2),
        }


def level0_mpp(slide_mpp: float | None, model_meta: dict[str, Any] | None) -> tuple[float, str]:
    """Level-0 um/px for the clean-up, and where it comes from (a sentence).

    The slide's own um/px; else the level-0 um/px of the slide the model was
    trained on (its metadata's ``resolution``); else :data:`FALLBACK_MPP`.
    """
    if slide_mpp:
        return float(slide_mpp), f"the slide's {float(slide_mpp):.3g} um/px"
    rec = (model_meta or {}).get("resolution") or {}
    m = rec.get("slide_mpp")
    if not m and rec.get("mpp"):
        m = float(rec["mpp"]) / float(rec.get("downsample") or 1.0)
    if m:
        return float(m), (
            f"this slide does not record its um/px: the mask clean-up assumes the "
            f"{float(m):.3g} um/px of the model's training slide"
        )
    return FALLBACK_MPP, (
        "neither this slide nor the model records a um/px: the mask clean-up assumes "
        f"{FALLBACK_MPP:g} um/px"
    )


def plan_clean(
    settings: CleanSettings, slide_mpp: Any, model_meta: dict[str, Any] | None, downsample: float
) -> tuple[CleanPixels, dict[str, Any]]:
    """Pixels of a grid ``downsample`` level-0 pixels wide, and what a prediction records.

    ``slide_mpp`` is the slide's level-0 um/px (a number, ``[y, x]`` or None;
    see :func:`level0_mpp` for what is used without). The record (``clean`` in
    a prediction's metadata and result) holds the settings, ``applied``,
    ``grid_um_per_px``, ``um_per_px_source`` and the pixel values.
    """
    if isinstance(slide_mpp, list | tuple):
        slide_mpp = float(sum(slide_mpp)) / len(slide_mpp) if slide_mpp else None
    mpp0, note = level0_mpp(slide_mpp, model_meta)
    grid = mpp0 * float(downsample)
    px = settings.to_pixels(grid)
    rec = {
        **settings.to_dict(),
        "applied": px.active,
        "grid_um_per_px": grid,
        "um_per_px_source": note,
        "radius_px": px.radius_px,
        "min_object_px": px.min_object_px,
        "min_hole_px": px.min_hole_px,
    }
    return px, rec


# --------------------------------------------------------------------------- operations


def disk(radius: float) -> np.ndarray:
    """Euclidean disk: the offsets ``(dy, dx)`` with ``dy^2 + dx^2 <= radius^2``."""
    r = math.floor(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy * yy + xx * xx) <= radius * radius


def _open(m: np.ndarray, radius: float) -> np.ndarray:
    """Opening with :func:`disk`; the outside of ``m`` is background (zero padding)."""
    from scipy import ndimage

    se = disk(radius)
    eroded = ndimage.binary_erosion(m, structure=se, border_value=0)
    return ndimage.binary_dilation(eroded, structure=se)


def _border_labels(lab: np.ndarray) -> np.ndarray:
    return np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))


def _small(m: np.ndarray, area: float, structure: Any, border_is_large: bool) -> np.ndarray:
    """Pixels of the components of ``m`` with fewer than ``area`` pixels."""
    from scipy import ndimage

    lab, n = ndimage.label(m, structure=structure)
    if n == 0:
        return np.zeros(m.shape, dtype=bool)
    small = np.bincount(lab.ravel(), minlength=n + 1) < area
    small[0] = False
    if border_is_large:
        small[_border_labels(lab)] = False
    return small[lab]


def clean_block(
    mask: np.ndarray, radius_px: float, min_object_px: float, min_hole_px: float
) -> np.ndarray:
    """Clean a whole in-memory mask (uint8 0/1 in, uint8 0/1 out).

    Parameters
    ----------
    mask
        2-D mask, non-zero = tissue.
    radius_px
        Radius (pixels, may be fractional) of the opening's disk; below 1, none.
    min_object_px
        Tissue components (8-connected) with fewer pixels are removed.
    min_hole_px
        Enclosed background components (4-connected, not touching the border)
        with fewer pixels are filled.
    """
    m = np.asarray(mask) != 0
    if radius_px >= 1.0:
        p = 2 * math.ceil(radius_px) + 1
        m = _open(np.pad(m, p), radius_px)[p:-p, p:-p]
    if min_object_px > 1.0:
        m = m & ~_small(m, min_object_px, _EIGHT, border_is_large=False)
    if min_hole_px > 1.0:
        m = m | _small(~m, min_hole_px, _FOUR, border_is_large=True)
    return m.astype(np.uint8)


# --------------------------------------------------------------------------- chunked


def _margins(px: CleanPixels) -> tuple[int, int, int]:
    """Rows lost to each step: 2R for the opening, ceil(A) per component step."""
    r = 2 * math.ceil(px.radius_px) if px.radius_px >= 1.0 else 0
    o = math.ceil(px.min_object_px) if px.min_object_px > 1.0 else 0
    h = math.ceil(px.min_hole_px) if px.min_hole_px > 1.0 else 0
    return r, o, h


def halo(radius_px: float, min_object_px: float, min_hole_px: float) -> int:
    """Halo depth that makes :func:`clean_dask` exact (see there)."""
    return sum(_margins(CleanPixels(radius_px, min_object_px, min_hole_px))) + 1


def _crop(m: np.ndarray, k: int) -> np.ndarray:
    return m[k:-k, k:-k] if k > 0 else m


def _clean_padded(block: np.ndarray, *, px: CleanPixels, depth: int) -> np.ndarray:
    """One chunk with its halo in, the same shape out (only the core is meaningful)."""
    r, o, h = _margins(px)
    m = np.asarray(block) != 0
    if r:
        m = _crop(_open(m, px.radius_px), r)  # trusted only 2R inside the edge
    if o:  # a component touching the window's edge may go on outside it: large
        m = _crop(m & ~_small(m, px.min_object_px, _EIGHT, border_is_large=True), o)
    if h:
        m = _crop(m | _small(~m, px.min_hole_px, _FOUR, border_is_large=True), h)
    core = _crop(m, depth - r - o - h)
    return np.pad(core.astype(np.uint8), depth)  # map_overlap trims the halo


def clean_dask(mask_dask: Any, radius_px: float, min_object_px: float, min_hole_px: float) -> Any:
    """:func:`clean_block` chunk by chunk: the same mask, pixel for pixel.

    Each chunk is cleaned with a halo of ``depth = 2R + ceil(A_obj) +
    ceil(A_hole) + 1`` pixels (``R = ceil(radius_px)``; the slide's outside
    is padded with background). Why it is exact:

    - the opening at a pixel depends on the mask within ``2R`` of it, so it is
      trusted on the window ``2R`` inside the padded block;
    - a component of fewer than ``A`` pixels spans fewer than ``A`` rows and
      columns. Components touching the window's edge are kept as large; any
      pixel at least ``ceil(A)`` inside that edge whose true component is small
      sees all of it inside the window, away from the edge, so its decision is
      exact there; the window shrinks by ``ceil(A)`` for the next step;
    - for holes, background touching the real slide border joins the padded
      outside, which reaches the window's edge: never filled, as in
      :func:`clean_block`.

    Memory: one padded chunk (and its int32 labels) per running task.
    """
    import dask.array as da

    px = CleanPixels(float(radius_px), float(min_object_px), float(min_hole_px))
    arr = mask_dask.astype(np.uint8)
    if not px.active:
        return arr
    depth = halo(px.radius_px, px.min_object_px, px.min_hole_px)
    if any(n <= depth for n in arr.shape):  # thinner than the halo: in one piece
        one = arr.rechunk({i: -1 for i, n in enumerate(arr.shape) if n <= depth})
        if one.numblocks == (1, 1):
            return one.map_blocks(
                clean_block, px.radius_px, px.min_object_px, px.min_hole_px, dtype=np.uint8
            ).rechunk(arr.chunks)
        arr2 = one
    else:
        arr2 = arr
    depths = {i: (0 if arr2.numblocks[i] == 1 else depth) for i in range(2)}
    out = da.map_overlap(
        _clean_padded_axes,
        arr2,
        depth=depths,
        boundary=0,
        trim=True,
        dtype=np.uint8,
        px=px,
        depths=depths,
        full=depth,
    )
    return out.rechunk(arr.chunks)


def _clean_padded_axes(block: np.ndarray, *, px: CleanPixels, depths: dict, full: int):
    """:func:`_clean_padded` when an axis has no halo (one chunk): pad it with background."""
    pad = [(full - depths[0],) * 2, (full - depths[1],) * 2]
    out = _clean_padded(np.pad(np.asarray(block), pad), px=px, depth=full)
    return out[pad[0][0] : out.shape[0] - pad[0][1], pad[1][0] : out.shape[1] - pad[1][1]]


# --------------------------------------------------------------------------- stores


def clean_zarr_array(path: str, px: CleanPixels, stop: Any = None) -> Iterator[Any]:
    """Clean the zarr (format 2) array folder ``path`` chunk by chunk, then swap it in.

    The cleaned mask goes to a sibling ``path + ".clean"`` (the same shape and
    chunks). The source is read one band of chunk rows at a time, with
    :func:`halo` rows above and below (memory: one band, ``(chunk + 2 halo) x
    width`` bytes), and each chunk is cleaned from the band exactly as
    :func:`clean_dask` does (a window of the chunk plus its halo, the slide's
    outside as background), so every zarr chunk is read once, not nine times
    through per-chunk dask graphs. The stop flag is checked between chunks
    (:class:`.events.JobStopped`). Then the sibling replaces ``path``.

    Yields :class:`.events.Progress` (stage ``"clean"``, chunks done of
    total); returns (``StopIteration.value``, so ``yield from`` gives it) the
    cleaned mask's tissue pixel count.
    """
    import shutil

    import zarr

    from .events import JobStopped, Progress, stop_requested

    src = zarr.open_array(path, mode="r", zarr_format=2)
    tmp = path.rstrip("/\\") + ".clean"
    dst = zarr.create_array(
        store=tmp,
        shape=src.shape,
        chunks=src.chunks,
        dtype="uint8",
        fill_value=0,
        zarr_format=2,
        overwrite=True,
    )
    d = halo(px.radius_px, px.min_object_px, px.min_hole_px)
    (h, w), (cy, cx) = src.shape, src.chunks
    total = -(-h // cy) * -(-w // cx)
    n = tissue = 0
    # scipy.ndimage releases the GIL: a band's chunks are cleaned on every core
    # (1.8x on the 2-core machine), results taken in order for the progress.
    with ThreadPoolExecutor(max_workers=CLEAN_THREADS) as pool:
        for y in range(0, h, cy):
            y1 = min(y + cy, h)
            # The band: this chunk row and d rows either side, d columns of
            # background either side (the slide's outside, as clean_dask pads it).
            band = np.zeros((y1 - y + 2 * d, w + 2 * d), np.uint8)
            r0, r1 = max(y - d, 0), min(y1 + d, h)
            band[r0 - (y - d) : r1 - (y - d), d : d + w] = np.asarray(src[r0:r1, :])
            row = np.zeros((y1 - y, w), np.uint8)
            xs = range(0, w, cx)
            futures = [
                pool.submit(_clean_padded, band[:, x : min(x + cx, w) + 2 * d], px=px, depth=d)
                for x in xs
            ]
            try:
                for x, future in zip(xs, futures):
                    if stop_requested(stop):
                        raise JobStopped()
                    x1 = min(x + cx, w)
                    row[:, x:x1] = future.result()[d : d + y1 - y, d : d + x1 - x]
                    n += 1
                    yield Progress("clean", n, total)
            finally:
                for future in futures:  # a stop or an error: drop what has not started
                    future.cancel()
            dst[y:y1, :] = row
            tissue += int(row.sum())
    shutil.rmtree(path)
    os.replace(tmp, path)
    return tissue
