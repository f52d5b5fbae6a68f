"""Open whole-slide images as lazy multiscale dask arrays.

:func:`open_slide` turns a slide file into a :class:`Slide`: a list of
``(H, W, 3)`` uint8 dask arrays, level 0 first, built on the file's own tile
grid so that nothing is read until a region is asked for. Formats:

* pyramidal TIFF, OME-TIFF, Aperio SVS, Hamamatsu NDPI (and any TIFF that
  tifffile reads) through tifffile's zarr store;
* zarr arrays and OME-Zarr multiscales (v0.1 to v0.5, zarr format 2 or 3);
* the other OpenSlide formats (``.mrxs``, ``.scn``, ``.vms``, ``.vmu``,
  ``.bif``, ``.svslide``) through openslide-python when it is installed.

Layouts: ``(y, x, c)``, ``(c, y, x)`` (planar TIFF, OME-Zarr) and layouts with
extra singleton axes are transposed lazily to ``(y, x, 3)``; an alpha channel
is dropped; a grayscale (one channel) image is expanded to RGB lazily by
repeating its channel, so it can be viewed and fed to the RGB model (the
``metadata["grayscale"]`` flag says so). Anything else (16-bit, multi-channel
fluorescence, z-stacks, time series) is not a slide for this package and
raises :class:`NotASlideError` with the reason.

A file whose smallest stored level still has a side above
:data:`MIN_LEVEL_SIDE` pixels gets extra, lazily computed levels (2 x 2 mean
per level), so a viewer always has a small level to show zoomed out.
"""

from __future__ import annotations

import os

import numpy as np

from ._slide_formats import open_openslide, open_tiff, open_zarr
from .slide_base import (
    MAX_CHUNK_BYTES,
    MIN_LEVEL_SIDE,
    TARGET_CHUNK,
    NotASlideError,
    Slide,
    SlideError,
    slide_name,
)

#: Extensions opened with tifffile (anything with TIFF magic bytes is tried too).
TIFF_EXTENSIONS = (".tif", ".tiff", ".svs", ".ndpi", ".btf", ".tf8", ".qptiff")
#: Extensions opened with openslide-python (some are TIFF inside, but OpenSlide
#: knows their vendor layouts: stitching, overlaps, several images per file).
OPENSLIDE_EXTENSIONS = (".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# The type, its errors and the constants live in slide_base (the format readers
# import them from there); re-exported here, the public face of slides.
__all__ = [
    "MAX_CHUNK_BYTES",
    "MIN_LEVEL_SIDE",
    "NotASlideError",
    "OPENSLIDE_EXTENSIONS",
    "Slide",
    "SlideError",
    "TARGET_CHUNK",
    "TIFF_EXTENSIONS",
    "is_slide_path",
    "open_slide",
    "read_region",
    "slide_name",
]


def is_slide_path(path: str | os.PathLike) -> bool:
    """Tell cheaply (extension, magic bytes, zarr metadata) whether ``path`` may be a slide.

    Parameters
    ----------
    path
        A file or directory.

    Returns
    -------
    bool
        True for TIFF files (by magic bytes), OpenSlide extensions and zarr
        directories; False for anything else, including missing paths.
    """
    p = os.fspath(path)
    if os.path.isdir(p):
        return _is_zarr_dir(p)
    if not os.path.isfile(p):
        return False
    if p.lower().endswith(OPENSLIDE_EXTENSIONS):
        return True
    return _has_tiff_magic(p)


def open_slide(path: str | os.PathLike) -> Slide:
    """Open a slide lazily as a multiscale pyramid of ``(H, W, 3)`` uint8 dask arrays.

    Only metadata and one small tile of the smallest level are read here (the
    tile proves that the file decodes, so a corrupt file fails now rather than
    later while panning).

    Parameters
    ----------
    path
        A TIFF-family slide (TIFF, OME-TIFF, SVS, NDPI), a zarr / OME-Zarr
        directory, or an OpenSlide format file.

    Returns
    -------
    Slide

    Raises
    ------
    NotASlideError
        ``path`` is not an image this package reads (text file, 16-bit or
        multi-channel image, z-stack, zarr group without an image).
    SlideError
        A slide that cannot be read: missing file, corrupt data, missing
        codec, OpenSlide not installed.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise SlideError(f"{p}: no such file or directory. Check the path.")
    if os.path.isdir(p):
        if not _is_zarr_dir(p):
            raise NotASlideError(
                f"{p}: a directory that is not a zarr store (no zarr.json, .zgroup "
                "or .zarray inside). Open a slide file or an OME-Zarr directory."
            )
        slide = open_zarr(p)
    elif p.lower().endswith(OPENSLIDE_EXTENSIONS):
        slide = open_openslide(p)
    elif _has_tiff_magic(p):
        slide = open_tiff(p)
    else:
        raise NotASlideError(
            f"{p}: not a slide (not a TIFF, zarr or OpenSlide file). napari-gigapixel "
            "reads TIFF/OME-TIFF/SVS/NDPI, zarr/OME-Zarr and OpenSlide formats."
        )
    try:
        _check_decodes(slide)
    except BaseException:
        slide.close()
        raise
    return slide


def read_region(slide: Slide, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Read a level-0 region into memory.

    Parameters
    ----------
    slide
        An open slide.
    y0, y1, x0, x1
        Half-open level-0 bounds; they must lie inside the slide.

    Returns
    -------
    numpy.ndarray
        ``(y1 - y0, x1 - x0, 3)`` uint8.

    Raises
    ------
    SlideError
        Bounds outside the slide, or a tile that does not decode.
    """
    h, w = slide.shape
    if not (0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w):
        raise SlideError(
            f"{slide.path}: region y {y0}:{y1}, x {x0}:{x1} lies outside the "
            f"{h} x {w} slide. Clip the region to the slide first."
        )
    return np.ascontiguousarray(slide.levels[0][y0:y1, x0:x1].compute())


# -- helpers shared by the format modules ---------------------------------------------


def _has_tiff_magic(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def _is_zarr_dir(path: str) -> bool:
    return any(
        os.path.isfile(os.path.join(path, marker))
        for marker in ("zarr.json", ".zgroup", ".zarray")
    )


def _check_decodes(slide: Slide) -> None:
    """Decode one small tile of the smallest stored level (a corrupt file fails here)."""
    k = max(0, int(slide.metadata.get("stored_levels", len(slide.levels))) - 1)
    lvl = slide.levels[k]
    ch = min(lvl.chunks[0][0], 256)
    cw = min(lvl.chunks[1][0], 256)
    lvl[:ch, :cw].compute(scheduler="sync")
