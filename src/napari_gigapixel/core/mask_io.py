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
    check_polygons_overlap,
    polygon_downsample,
    polygons_to_geojson,
    read_geojson,
)
from .mask_write import _as_2d, _suffix, write_mask
from .masks import AnnotationMask, MaskError, MaskKind, check_label_values, infer_downsample
from .rasterize import rasterize_polygons, shapes_to_mask

# Polygons, rasterising and writing live in their own modules (re-exported here:
# callers think of all of them as "mask I/O").

_RASTER_SUFFIXES = (".tif", ".tiff", ".png", ".npy", ".zarr")

# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def _open_tiff(path: Path) -> tuple[Any, str | None]:
    """Level 0 of a TIFF mask (lazy) and the kind its metadata records, if any."""
    import dask.array as da
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(str(path)) as tif:
            stored = _stored_kind(tif.shaped_metadata[0] if tif.shaped_metadata else None)
            if not tif.series:
                raise MaskError(f"{path}: this TIFF holds no image.")
        store = tifffile.imread(str(path), aszarr=True, series=0, level=0)
        return da.from_zarr(zarr.open_array(store, mode="r")), stored
    except MaskError:
        raise
    except Exception as exc:  # tifffile raises many types for a bad file
        raise MaskError(f"{path}: cannot read this TIFF ({exc}). Is it a mask image?") from exc


def _stored_kind(meta: object) -> str | None:
    """``"dense"``/``"scribble"`` from a metadata dict that records it, else None."""
    if isinstance(meta, dict):
        kind = meta.get("kind")
        if kind in ("dense", "scribble"):
            return kind
    return None


def _open_zarr(path: Path) -> tuple[Any, str | None]:
    """The first dataset of a zarr mask (lazy) and the kind its attributes record."""
    import dask.array as da
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
        if isinstance(node, zarr.Array):
            return da.from_zarr(node), None
        attrs = node.attrs.asdict()
        ome = attrs.get("ome")
        multiscales = attrs.get("multiscales") or (
            ome.get("multiscales") if isinstance(ome, dict) else None
        )
        stored = _stored_kind(attrs.get("napari_gigapixel"))
        if multiscales:
            try:
                key = str(multiscales[0]["datasets"][0]["path"])
            except (KeyError, IndexError, TypeError) as exc:
                raise MaskError(
                    f"{path}: the multiscales metadata names no dataset path ({exc!r}); "
                    "write the mask again."
                ) from exc
        else:
            keys = sorted(k for k, _ in node.arrays())
            if not keys:
                raise MaskError(f"{path}: this zarr group holds no array; write the mask into it.")
            key = keys[0]
        arr = node[key]
        if not isinstance(arr, zarr.Array):
            raise MaskError(f"{path}: {key!r} is a group, not the mask array.")
        return da.from_zarr(arr), stored
    except MaskError:
        raise
    except Exception as exc:
        raise MaskError(f"{path}: cannot open this zarr store ({exc}).") from exc


def _open_png(path: Path) -> np.ndarray:
    import imagecodecs

    try:
        return imagecodecs.imread(str(path))
    except Exception as exc:
        raise MaskError(f"{path}: cannot decode this image ({exc}).") from exc


def _resolve_kind(requested: str | None, stored: str | None, path: Path) -> MaskKind:
    """The kind to load: the file's own unless asked otherwise (a contradiction is an error)."""
    if requested is not None and requested not in ("dense", "scribble"):
        raise MaskError(f"{path}: kind must be 'dense' or 'scribble', not {requested!r}.")
    if requested and stored and requested != stored:
        raise MaskError(
            f"{path}: the file was saved as a {stored} mask, but it is being loaded as "
            f"{requested}. Load it as {stored} (or leave the kind unset)."
        )
    return requested or stored or "dense"  # type: ignore[return-value]


def load_mask(
    path: str | os.PathLike,
    slide_shape: tuple[int, int],
    kind: MaskKind | None = None,
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
        ``"dense"`` or ``"scribble"`` (see :mod:`.masks`). None (default):
        the kind the file records (:func:`write_mask` stores it), else dense.
        A kind that contradicts the file's is an error.
    name
        Name for messages and layers; default the file name.

    Returns
    -------
    AnnotationMask
        The mask array (dask for rasters, numpy for polygons) and its downsample.

    Raises
    ------
    MaskError
        Missing or unreadable file, a colour or float image, label values the
        kind does not allow, a shape that cannot overlay the slide or is too
        small to tell its level, polygons that all lie outside the slide.
    """
    p = Path(path)
    label = name or p.name
    if not p.exists():
        raise MaskError(f"{p}: no such mask file. Check the path.")
    suffix = _suffix(p)
    slide_shape = (int(slide_shape[0]), int(slide_shape[1]))
    stored: str | None = None
    if suffix in _GEOJSON_SUFFIXES:
        use = _resolve_kind(kind, None, p)
        polygons, values = read_geojson(p, kind=use)
        check_polygons_overlap(polygons, slide_shape, p)
        downsample = polygon_downsample(slide_shape)
        array = rasterize_polygons(polygons, slide_shape, downsample, value=values)
        return AnnotationMask(array, downsample, use, label)
    if suffix in (".tif", ".tiff"):
        raw, stored = _open_tiff(p)
    elif suffix == ".zarr" or (
        p.is_dir()
        and any((p / f).exists() for f in (".zattrs", ".zgroup", ".zarray", "zarr.json"))
    ):
        raw, stored = _open_zarr(p)
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
    use = _resolve_kind(kind, stored, p)
    array = _as_2d(raw, str(p))
    downsample = infer_downsample(array.shape, slide_shape, name=str(p))
    check_label_values(array, use, str(p))
    return AnnotationMask(array, downsample, use, label)


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
