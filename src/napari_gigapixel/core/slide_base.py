"""The :class:`Slide` type, its errors, and the lazy-array helpers every format reader uses.

A slide is a list of ``(H, W, 3)`` uint8 dask arrays built on the file's own
tile grid (nothing is read until a region is asked for). The format readers
(:mod:`._slide_formats`) build them with :func:`lazy_array`, :func:`to_yxc` and
:func:`finish_levels`; :mod:`.slide` dispatches a path to its reader.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from .errors import GigapixelError
from .pyramid_levels import reduce2_dask

#: Add lazily downsampled levels while the smallest level's longer side exceeds this.
MIN_LEVEL_SIDE = 1024
#: Dask chunks are the file's tiles grouped until a side reaches this many pixels.
#: Measured on a 1 Gpx JPEG slide (2 cores): 1024 reads large regions 3x faster
#: than 512 (zarr's per-call overhead) and a screen-sized region as fast.
TARGET_CHUNK = 1024
#: Upper bound of one dask chunk (strips of very wide images are not grouped past it).
MAX_CHUNK_BYTES = 32 * 2**20

_UNIT_TO_UM = {
    "angstrom": 1e-4,
    "nanometer": 1e-3,
    "nm": 1e-3,
    "micrometer": 1.0,
    "micron": 1.0,
    "um": 1.0,
    "µm": 1.0,
    "\u03bcm": 1.0,
    "millimeter": 1e3,
    "mm": 1e3,
    "centimeter": 1e4,
    "cm": 1e4,
    "meter": 1e6,
    "m": 1e6,
}


class SlideError(GigapixelError):
    """A slide that cannot be read (corrupt tile, missing codec, missing reader)."""


class NotASlideError(SlideError):
    """The file is not a slide this package reads (the message says why)."""


@dataclass(eq=False)
class Slide:
    """A whole-slide image as a lazy pyramid.

    Attributes
    ----------
    path
        The file or directory opened.
    name
        File name without its extension(s), for layer names.
    levels
        ``(H, W, 3)`` uint8 dask arrays, level 0 (full resolution) first,
        each smaller than the one before.
    downsamples
        Level-0 pixels per pixel of each level (``1.0`` first).
    mpp
        Microns per level-0 pixel ``(y, x)``, or None when the file says nothing.
    metadata
        JSON-serialisable facts about the file (format, tile size, series, ...).
    """

    path: str
    name: str
    levels: list[da.Array]
    downsamples: list[float]
    mpp: tuple[float, float] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    _closers: list[Callable[[], Any]] = field(default_factory=list, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of level 0."""
        return int(self.levels[0].shape[0]), int(self.levels[0].shape[1])

    def close(self) -> None:
        """Release the open file handles (the dask arrays are unusable afterwards)."""
        while self._closers:
            try:
                self._closers.pop()()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Source:
    """Array-like that dask slices chunk by chunk.

    It turns decoder failures (corrupt tile, truncated file, missing codec)
    into one :class:`SlideError` that names the file, so that a failure while
    panning in napari reads as a message, not as a codec traceback.
    """

    def __init__(
        self,
        read: Callable[[tuple[slice, ...]], Any],
        shape: tuple[int, ...],
        dtype: np.dtype,
        path: str,
        what: str,
    ) -> None:
        self._read = read
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self._path = path
        self._what = what

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        try:
            return np.asarray(self._read(key))
        except GigapixelError:
            raise
        except Exception as exc:
            where = ", ".join(f"{s.start}:{s.stop}" for s in key if isinstance(s, slice))
            raise SlideError(
                f"{self._path}: cannot decode {self._what} at [{where}]: "
                f"{type(exc).__name__}: {exc}. The file may be corrupt or truncated, "
                "or compressed with a codec that is not installed "
                "(pip install --upgrade imagecodecs)."
            ) from exc


def slide_name(path: str) -> str:
    """File name of ``path`` without directory and known extensions (``a.ome.tiff`` -> ``a``)."""
    base = os.path.basename(os.path.normpath(path))
    lower = base.lower()
    for ext in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if lower.endswith(ext):
            return base[: -len(ext)]
    stem, _ = os.path.splitext(base)
    return stem or base


def chunk_plan(
    src_chunks: tuple[int, ...],
    shape: tuple[int, ...],
    spatial: tuple[int, int],
    itemsize: int = 1,
) -> tuple[int, ...]:
    """Dask chunks for a stored array: its own chunks, grouped along y and x.

    Grouping whole stored chunks keeps every stored tile decoded once per
    dask chunk, while fewer, larger chunks keep dask graphs small.
    """
    chunks = [max(1, min(int(c), int(s))) for c, s in zip(src_chunks, shape)]
    for ax in spatial:
        mult = max(1, math.ceil(TARGET_CHUNK / chunks[ax]))
        chunks[ax] = min(int(shape[ax]), chunks[ax] * mult)

    def nbytes() -> int:
        return int(np.prod(chunks)) * itemsize

    # Very wide strips: give back grouping until one chunk is bounded again.
    for ax in spatial:
        while nbytes() > MAX_CHUNK_BYTES and chunks[ax] > src_chunks[ax]:
            chunks[ax] = max(int(src_chunks[ax]), chunks[ax] // 2)
    return tuple(chunks)


def lazy_array(
    read: Callable[[tuple[slice, ...]], Any],
    shape: tuple[int, ...],
    dtype: Any,
    chunks: tuple[int, ...],
    path: str,
    what: str,
) -> da.Array:
    """Dask array over ``read`` (called with a tuple of slices per chunk)."""
    src = _Source(read, shape, np.dtype(dtype), path, what)
    try:
        stamp: Any = os.stat(path).st_mtime_ns
    except OSError:
        stamp = None
    name = "slide-" + tokenize(os.path.abspath(path), stamp, what, shape, chunks)
    return da.from_array(
        src,
        chunks=chunks,
        name=name,
        asarray=False,
        fancy=False,
        lock=False,
        meta=np.empty((0,) * len(shape), dtype=src.dtype),
    )


def to_yxc(
    arr: da.Array,
    axes: str,
    path: str,
    meta: dict[str, Any],
    *,
    alpha: bool = False,
    channels_are: str = "the file does not say that the fourth channel is alpha",
) -> da.Array:
    """Lazily bring an array with named ``axes`` to ``(y, x, 3)`` uint8.

    ``axes`` uses ``Y``, ``X``, ``C`` for the channel (tifffile's ``S`` too)
    and any other letter for axes that must have length 1. Records
    ``grayscale`` / ``alpha_dropped`` in ``meta``.

    Four channels are RGBA only when the file says so (``alpha=True``: TIFF
    ExtraSamples alpha, OME channel names); otherwise (CMYK, 4-channel
    fluorescence) they are a :class:`NotASlideError` whose message includes
    ``channels_are`` (what the file says instead).
    """
    axes = axes.upper()
    if "S" in axes:  # tifffile: S = samples per pixel, C = separate channel pages
        if "C" not in axes:
            axes = axes.replace("S", "C")
        elif arr.shape[axes.index("C")] == 1:
            axes = axes.replace("C", "Q").replace("S", "C")
    if len(axes) != arr.ndim:
        raise SlideError(f"{path}: axes {axes!r} do not match the array shape {arr.shape}.")
    if "Y" not in axes or "X" not in axes:
        raise NotASlideError(
            f"{path}: the image has axes {axes!r} (shape {arr.shape}) without both y and x; "
            "napari-gigapixel reads 2-D RGB slides."
        )
    index: list[Any] = []
    kept = ""
    for ax, n in zip(axes, arr.shape):
        if ax in "YXC" and ax not in kept:
            index.append(slice(None))
            kept += ax
        elif n == 1:
            index.append(0)
        else:
            raise NotASlideError(
                f"{path}: the image has an axis {ax!r} of length {n} (axes {axes!r}, shape "
                f"{arr.shape}); napari-gigapixel reads one 2-D RGB plane. Export a single "
                "plane (one z, one time point) as RGB first."
            )
    arr = arr[tuple(index)]
    if arr.dtype != np.uint8:
        raise NotASlideError(
            f"{path}: pixels are {arr.dtype}, not 8-bit; napari-gigapixel reads 8-bit RGB "
            "(brightfield) slides. Convert the image to 8-bit RGB first."
        )
    if "C" not in kept:
        arr = arr[..., None]
        kept += "C"
    arr = arr.transpose([kept.index(a) for a in "YXC"])
    n_c = arr.shape[2]
    if n_c == 4 and not alpha:
        raise NotASlideError(
            f"{path}: the image has 4 channels and {channels_are}, so they are not RGB plus "
            "alpha (CMYK or 4-channel fluorescence would get wrong colours). Export an RGB "
            "(or RGBA with ExtraSamples alpha) rendering."
        )
    meta["grayscale"] = n_c == 1
    meta["alpha_dropped"] = n_c == 4
    if n_c == 1:
        arr = arr.map_blocks(
            np.repeat, 3, axis=2, chunks=(arr.chunks[0], arr.chunks[1], (3,)), dtype=np.uint8
        )
    elif n_c in (3, 4):
        arr = arr[:, :, :3]
        if len(arr.chunks[2]) > 1:  # planar storage: one chunk holds all three channels
            arr = arr.rechunk({2: 3})
    else:
        raise NotASlideError(
            f"{path}: the image has {n_c} channels; napari-gigapixel reads RGB (3), RGBA (4) "
            "or grayscale (1) slides, not multi-channel fluorescence. Export an RGB rendering."
        )
    return arr


def snap_downsample(d: float) -> float:
    """Snap a measured level ratio to the power of two it rounds from (within 2%)."""
    if d <= 1:
        return 1.0
    p2 = 2.0 ** round(math.log2(d))
    return p2 if abs(p2 - d) / d < 0.02 else float(d)


def halve(level: da.Array) -> da.Array:
    """Lazily downsample ``(H, W, 3)`` by 2: :func:`.pyramid_levels.reduce2_dask` (mean)."""
    return reduce2_dask(level, "mean", 2 * TARGET_CHUNK)


def finish_levels(
    levels: list[da.Array], downsamples: list[float], meta: dict[str, Any]
) -> tuple[list[da.Array], list[float]]:
    """Drop levels that do not shrink, then add lazy levels down to :data:`MIN_LEVEL_SIDE`.

    The lazy levels follow :mod:`.pyramid_levels` (ceil-half shapes, 2 x 2 mean,
    partial border blocks averaged over the pixels that exist) until the
    longer side is at most :data:`MIN_LEVEL_SIDE`.
    """
    kept, kept_ds = [levels[0]], [1.0]
    for lvl, d in zip(levels[1:], downsamples[1:]):
        prev = kept[-1]
        if lvl.shape[0] < prev.shape[0] and lvl.shape[1] < prev.shape[1]:
            kept.append(lvl)
            kept_ds.append(d)
    meta["stored_levels"] = len(kept)
    while max(kept[-1].shape[:2]) > MIN_LEVEL_SIDE:
        kept.append(halve(kept[-1]))
        kept_ds.append(kept_ds[-1] * 2)
    return kept, kept_ds


def mpp_or_none(my: float | None, mx: float | None) -> tuple[float, float] | None:
    """``(my, mx)`` when both are plausible microns per pixel (0.01 to 50), else None.

    The bounds reject the 72/96/300 dpi defaults that image editors write.
    """
    try:
        my_f, mx_f = float(my), float(mx)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if all(math.isfinite(v) and 0.01 <= v <= 50 for v in (my_f, mx_f)):
        return (my_f, mx_f)
    return None


def unit_to_um(unit: str | None) -> float | None:
    """Microns per ``unit`` (OME / OME-NGFF spellings), None if unknown."""
    if unit is None:
        return 1.0
    return _UNIT_TO_UM.get(str(unit).strip().lower().replace("\u00b5", "µ"))


# -- helpers of the format back-ends (_slide_formats, _zarr_format, _openslide_format) --


def _make_slide(
    path: str,
    levels: list[da.Array],
    downsamples: list[float],
    mpp: tuple[float, float] | None,
    meta: dict[str, Any],
    *closers: Any,
) -> Slide:
    """The :class:`Slide` every back-end returns: stored levels finished
    (:func:`finish_levels`), named after the file, ``closers`` run on close."""
    levels, downsamples = finish_levels(levels, downsamples, meta)
    return Slide(
        path=path,
        name=slide_name(path),
        levels=levels,
        downsamples=downsamples,
        mpp=mpp,
        metadata=meta,
        _closers=list(closers),
    )


def _ratio_downsamples(levels: list[da.Array]) -> list[float]:
    h0, w0 = levels[0].shape[:2]
    return [snap_downsample((h0 / lvl.shape[0] + w0 / lvl.shape[1]) / 2) for lvl in levels]


def channel_names_are_rgba(names: list[Any]) -> bool:
    """True for four channel names that spell red, green, blue, alpha (R/G/B/A too)."""
    want = (("r", "red"), ("g", "green"), ("b", "blue"), ("a", "alpha"))
    if len(names) != 4:
        return False
    return all(str(n).strip().lower() in ok for n, ok in zip(names, want))
