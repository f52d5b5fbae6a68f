"""Load masks from files, rasterise polygons and shapes, write mask pyramids.

Raster masks (TIFF, PNG, ``.npy``, zarr / OME-Zarr) are kept lazy: level 0
of the file becomes a dask array, and :meth:`AnnotationMask.read_window`
reads only the rows and columns a tile touches. The annotation level is
inferred from the shape ratio with :func:`~.masks.infer_downsample`.

Polygons (QuPath-style GeoJSON, napari Shapes) are rasterised at a
power-of-two downsample that keeps the mask under ~16 Mpx, with even-odd
filling so holes stay holes. Rasterising uses ``skimage.draw.polygon``
(scikit-image comes with napari).

Masks are written as OME-Zarr (v0.4 multiscales, scale = downsample) or as a
pyramidal TIFF (SubIFDs, deflate), lower levels by 2x2 max so thin scribbles
survive; always to a temporary path first, then renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .geojson import (
    _BACKGROUND_CLASSES,
    _GEOJSON_SUFFIXES,
    MAX_POLYGON_PIXELS,
    polygon_downsample,
    polygons_to_geojson,
    read_geojson,
)
from .mask_write import _as_2d, _suffix, write_mask
from .masks import AnnotationMask, MaskError, MaskKind, infer_downsample
from .rasterize import rasterize_polygons, shapes_to_mask

# Polygons, rasterising and writing live in their own modules (re-exported here:
# callers think of all of them as "mask I/O").

_RASTER_SUFFIXES = (".tif", ".tiff", ".png", ".npy", ".zarr")

# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def _open_tiff(path: Path) -> Any:
    import dask.array as da
    import tifffile
    import zarr

    try:
        store = tifffile.imread(str(path), aszarr=True, series=0, level=0)
    except Exception as exc:  # tifffile raises many types for a bad file
        raise MaskError(f"{path}: cannot read this TIFF ({exc}). Is it a mask image?") from exc
    return da.from_zarr(zarr.open_array(store, mode="r"))


def _open_zarr(path: Path) -> Any:
    import dask.array as da
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise MaskError(f"{path}: cannot open this zarr store ({exc}).") from exc
    if isinstance(node, zarr.Array):
        return da.from_zarr(node)
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if multiscales:
        key = multiscales[0]["datasets"][0]["path"]
    else:
        keys = sorted(k for k, _ in node.arrays())
        if not keys:
            raise MaskError(f"{path}: this zarr group holds no array; write the mask into it.")
        key = keys[0]
    return da.from_zarr(node[key])


def _open_png(path: Path) -> np.ndarray:
    import imagecodecs

    try:
        return imagecodecs.imread(str(path))
    except Exception as exc:
        raise MaskError(f"{path}: cannot decode this image ({exc}).") from exc


def load_mask(
    path: str | os.PathLike,
    slide_shape: tuple[int, int],
    kind: MaskKind = "dense",
    name: str | None = None,
) -> AnnotationMask:
    """Load a tissue mask from a file, at whatever level it was made.

    Parameters
    ----------
    path
        ``.tif``/``.tiff`` (pyramidal or not; level 0 is used, lazily),
        ``.png``, ``.npy``, ``.zarr``/``.ome.zarr`` (first dataset), or
        QuPath-style ``.geojson``/``.json`` polygons in level-0 pixels.
    slide_shape
        (height, width) of the slide's level 0.
    kind
        ``"dense"`` or ``"scribble"`` (see :mod:`.masks`).
    name
        Name for messages and layers; default the file name.

    Returns
    -------
    AnnotationMask
        The mask array (dask for rasters, numpy for polygons) and its downsample.

    Raises
    ------
    MaskError
        Missing or unreadable file, a colour image, or a shape that cannot
        overlay the slide.
    """
    p = Path(path)
    label = name or p.name
    if not p.exists():
        raise MaskError(f"{p}: no such mask file. Check the path.")
    suffix = _suffix(p)
    slide_shape = (int(slide_shape[0]), int(slide_shape[1]))
    if suffix in _GEOJSON_SUFFIXES:
        polygons, values = read_geojson(p, kind=kind)
        downsample = polygon_downsample(slide_shape)
        array = rasterize_polygons(polygons, slide_shape, downsample, value=values)
        return AnnotationMask(array, downsample, kind, label)
    if suffix in (".tif", ".tiff"):
        raw = _open_tiff(p)
    elif suffix == ".zarr" or (
        p.is_dir()
        and any((p / f).exists() for f in (".zattrs", ".zgroup", ".zarray", "zarr.json"))
    ):
        raw = _open_zarr(p)
    elif suffix == ".npy":
        try:
            raw = np.load(p, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            raise MaskError(f"{p}: cannot read this .npy file ({exc}).") from exc
    elif suffix in (".png", ".jpg", ".jpeg", ".bmp"):
        raw = _open_png(p)
    else:
        raise MaskError(
            f"{p}: unknown mask format {suffix!r}. Use one of "
            f"{', '.join(_RASTER_SUFFIXES + _GEOJSON_SUFFIXES)}."
        )
    array = _as_2d(raw, str(p))
    downsample = infer_downsample(array.shape, slide_shape, name=str(p))
    return AnnotationMask(array, downsample, kind, label)


# --------------------------------------------------------------------------
# Polygons
# --------------------------------------------------------------------------


__all__ = [
    "MAX_POLYGON_PIXELS",
    "_BACKGROUND_CLASSES",
    "load_mask",
    "polygon_downsample",
    "polygons_to_geojson",
    "rasterize_polygons",
    "read_geojson",
    "shapes_to_mask",
    "write_mask",
]
