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

import json
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .masks import AnnotationMask, MaskError, MaskKind, infer_downsample

#: Polygon masks are rasterised at the smallest power-of-two downsample that
#: keeps them at or under this many pixels.
MAX_POLYGON_PIXELS = 16_000_000

_RASTER_SUFFIXES = (".tif", ".tiff", ".png", ".npy", ".zarr")
_GEOJSON_SUFFIXES = (".geojson", ".json")
#: QuPath class names that mean "background" in scribble masks.
_BACKGROUND_CLASSES = {"background", "glass", "negative", "ignore*", "other"}


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def _suffix(path: Path) -> str:
    name = path.name.lower().rstrip("/")
    for ext in (".ome.zarr", ".ome.tiff", ".ome.tif"):
        if name.endswith(ext):
            return "." + ext.rsplit(".", 1)[1]
    return path.suffix.lower()


def _as_2d(array: Any, name: str) -> Any:
    """Drop singleton axes (OME ``(t, c, z, y, x)``, ``(y, x, 1)``); refuse colour images."""
    import dask.array as da

    arr = array if isinstance(array, da.Array) else da.from_array(array, chunks="auto")
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        raise MaskError(
            f"{name}: this is a {arr.shape[-1]}-channel (RGB/colour) image of shape "
            f"{tuple(arr.shape)}, not a mask. Save the mask as a single-channel image "
            "(0 = background, nonzero = tissue)."
        )
    if arr.ndim != 2:
        raise MaskError(
            f"{name}: a mask must be a 2-D image; this file holds shape {tuple(arr.shape)}. "
            "Save one 2-D label image per slide."
        )
    if arr.dtype.kind not in "biu":
        raise MaskError(
            f"{name}: mask values must be integers or booleans, not {arr.dtype}. "
            "Threshold probabilities first (e.g. > 0.5) and save as uint8."
        )
    return arr


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


def polygon_downsample(
    slide_shape: tuple[int, int], max_pixels: int = MAX_POLYGON_PIXELS
) -> float:
    """Smallest power of two that keeps a slide-sized mask at or under ``max_pixels``."""
    d = 1
    while math.ceil(slide_shape[0] / d) * math.ceil(slide_shape[1] / d) > max_pixels:
        d *= 2
    return float(d)


def _class_value(properties: dict | None, kind: MaskKind) -> int:
    if kind == "dense":
        return 1
    cls = (properties or {}).get("classification") or {}
    cls_name = cls.get("name", "") if isinstance(cls, dict) else str(cls)
    return 1 if cls_name.strip().lower() in _BACKGROUND_CLASSES else 2


def _geometry_polygons(geometry: dict | None, path: Path) -> list[list[np.ndarray]]:
    if not geometry:
        return []
    gtype = geometry.get("type")
    coords = geometry.get("coordinates")
    try:
        if gtype == "Polygon":
            return [[np.asarray(ring, float)[:, :2] for ring in coords]]
        if gtype == "MultiPolygon":
            return [[np.asarray(ring, float)[:, :2] for ring in poly] for poly in coords]
    except (TypeError, IndexError, ValueError) as exc:
        raise MaskError(f"{path}: a {gtype} has malformed coordinates ({exc}).") from exc
    if gtype == "GeometryCollection":
        out: list[list[np.ndarray]] = []
        for g in geometry.get("geometries", []):
            out += _geometry_polygons(g, path)
        return out
    return []  # points and lines carry no area


def read_geojson(
    path: str | os.PathLike, kind: MaskKind = "dense"
) -> tuple[list[list[np.ndarray]], list[int]]:
    """Read polygons from a QuPath-style GeoJSON file.

    Accepts a FeatureCollection, a list of Features, one Feature or a bare
    geometry. Polygon and MultiPolygon rings are ``(N, 2)`` arrays of level-0
    ``(x, y)``; the first ring is the outline, the others are holes.

    Returns
    -------
    polygons
        One list of rings per polygon.
    values
        Label per polygon: 1 for dense masks; for scribbles 1 (background
        classes: Background, Glass, Negative, Other) or 2 (anything else).
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MaskError(f"{p}: not a readable GeoJSON file ({exc}).") from exc
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features", [])
    elif isinstance(doc, list):
        features = doc
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, dict) and ("coordinates" in doc or "geometries" in doc):
        features = [{"type": "Feature", "geometry": doc, "properties": {}}]
    else:
        raise MaskError(f"{p}: not GeoJSON (no FeatureCollection, Feature or geometry).")
    polygons: list[list[np.ndarray]] = []
    values: list[int] = []
    for feat in features:
        if not isinstance(feat, dict):
            continue
        polys = _geometry_polygons(feat.get("geometry"), p)
        polygons += polys
        values += [_class_value(feat.get("properties"), kind)] * len(polys)
    if not polygons:
        raise MaskError(
            f"{p}: holds no Polygon or MultiPolygon; export the tissue annotations as polygons."
        )
    return polygons, values


def rasterize_polygons(
    polygons: Sequence[Sequence[np.ndarray]],
    slide_shape: tuple[int, int],
    downsample: float,
    value: int | Sequence[int] = 1,
) -> np.ndarray:
    """Rasterise polygons given in level-0 ``(x, y)`` into a mask at ``downsample``.

    Parameters
    ----------
    polygons
        Each polygon is a sequence of rings, ``(N, 2)`` arrays of level-0
        ``(x, y)`` (GeoJSON order); rings are combined even-odd, so inner
        rings are holes. A bare ``(N, 2)`` array counts as a one-ring polygon.
    slide_shape
        (height, width) of level 0.
    downsample
        Level-0 pixels per mask pixel.
    value
        Label of every polygon, or one label per polygon; later polygons
        overwrite earlier ones where they overlap.

    Returns
    -------
    np.ndarray
        uint8 of shape ``(ceil(H/d), ceil(W/d))``; a mask pixel is set when
        its centre lies inside the polygon.

    Notes
    -----
    Coordinates are continuous: level-0 pixel ``(i, j)`` spans
    ``[i, i+1) x [j, j+1)`` (QuPath's convention), so mask pixel ``j`` has
    its centre at ``(j + 0.5) * d``.
    """
    from skimage.draw import polygon as draw_polygon

    d = float(downsample)
    if not d > 0:
        raise MaskError(f"downsample must be positive, got {downsample}.")
    shape = (math.ceil(slide_shape[0] / d), math.ceil(slide_shape[1] / d))
    out = np.zeros(shape, np.uint8)
    values = [value] * len(polygons) if np.isscalar(value) else list(value)
    if len(values) != len(polygons):
        raise MaskError(f"got {len(values)} values for {len(polygons)} polygons.")
    for rings, val in zip(polygons, values):
        if isinstance(rings, np.ndarray) and rings.ndim == 2:
            rings = [rings]
        # Mask pixel j's centre is level-0 (j + 0.5) * d; skimage tests
        # integer points, so shift the polygon instead of the pixels.
        scaled = [np.asarray(r, float)[:, :2] / d - 0.5 for r in rings if len(r) >= 3]
        if not scaled:
            continue
        allp = np.concatenate(scaled)
        c0 = max(int(np.floor(allp[:, 0].min())), 0)
        r0 = max(int(np.floor(allp[:, 1].min())), 0)
        c1 = min(int(np.ceil(allp[:, 0].max())) + 1, shape[1])
        r1 = min(int(np.ceil(allp[:, 1].max())) + 1, shape[0])
        if r1 <= r0 or c1 <= c0:
            continue
        inside = np.zeros((r1 - r0, c1 - c0), bool)
        for ring in scaled:
            rr, cc = draw_polygon(ring[:, 1] - r0, ring[:, 0] - c0, inside.shape)
            inside[rr, cc] ^= True  # even-odd: a hole flips its pixels back
        out[r0:r1, c0:c1][inside] = val
    return out


def _ellipse_ring(corners: np.ndarray, n: int = 96) -> np.ndarray:
    """Polygon of the ellipse inscribed in napari's 4-corner (possibly rotated) box."""
    centre = corners.mean(axis=0)
    e1 = (corners[1] - corners[0]) / 2
    e2 = (corners[3] - corners[0]) / 2
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None]
    return centre + np.cos(t) * e1 + np.sin(t) * e2


def _path_rings(points: np.ndarray, width: float) -> list[np.ndarray]:
    """Polygons (in (y, x)) covering a polyline of ``width``: segments plus round joints."""
    half = width / 2
    rings = []
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    disk = np.stack([np.sin(t), np.cos(t)], axis=1) * half
    for a, b in zip(points[:-1], points[1:]):
        v = b - a
        length = float(np.hypot(*v))
        if length == 0:
            continue
        nrm = np.array([-v[1], v[0]]) / length * half
        rings.append(np.array([a + nrm, b + nrm, b - nrm, a - nrm]))
    rings += [p + disk for p in points]
    return rings


def shapes_to_mask(
    shapes_data: Sequence[np.ndarray],
    shape_types: Sequence[str] | str,
    slide_shape: tuple[int, int],
    downsample: float,
    value: int | Sequence[int] = 1,
    widths: float | Sequence[float] | None = None,
) -> np.ndarray:
    """Rasterise a napari Shapes layer's data into a mask at ``downsample``.

    Parameters
    ----------
    shapes_data
        One ``(N, 2)`` array per shape in continuous level-0 ``(y, x)`` (pixel
        edges at integers). napari puts pixel centres at integer data
        coordinates, so add 0.5 to a Shapes layer's level-0 data coordinates.
    shape_types
        ``layer.shape_type``: ``polygon``, ``rectangle``, ``ellipse``,
        ``path`` or ``line`` (paths and lines need ``widths``: level-0 pixels;
        default one mask pixel).
    slide_shape, downsample, value
        As :func:`rasterize_polygons`.

    Returns
    -------
    np.ndarray
        uint8 mask of shape ``(ceil(H/d), ceil(W/d))``.
    """
    n = len(shapes_data)
    types = [shape_types] * n if isinstance(shape_types, str) else list(shape_types)
    vals = [value] * n if np.isscalar(value) else list(value)
    if widths is None or np.isscalar(widths):
        wlist = [float(widths) if widths is not None else float(downsample)] * n
    else:
        wlist = [float(w) for w in widths]
    if not (len(types) == len(vals) == len(wlist) == n):
        raise MaskError(f"got {n} shapes but {len(types)} types / {len(vals)} values.")
    polygons: list[list[np.ndarray]] = []
    poly_values: list[int] = []
    for data, kind, val, width in zip(shapes_data, types, vals, wlist):
        yx = np.asarray(data, float)[:, -2:]  # drop leading (z, t) axes if any
        if kind in ("polygon", "rectangle"):
            parts = [[yx]]
        elif kind == "ellipse":
            parts = [[_ellipse_ring(yx)]]
        elif kind in ("path", "line"):
            # Each piece is its own polygon: overlapping pieces must union, not XOR.
            parts = [[ring] for ring in _path_rings(yx, width)]
        else:
            raise MaskError(
                f"shape type {kind!r} cannot be rasterised; use polygon, rectangle, "
                "ellipse, path or line."
            )
        for rings in parts:
            polygons.append([ring[:, ::-1] for ring in rings])  # (y, x) -> (x, y)
            poly_values.append(val)
    return rasterize_polygons(polygons, slide_shape, downsample, value=poly_values)


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def _to_dask(array: Any, name: str) -> Any:
    import dask.array as da

    arr = _as_2d(array, name)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr.rechunk((1024, 1024)) if isinstance(arr, da.Array) else da.from_array(arr)


def _max_pyramid(level0: Any, min_size: int = 256) -> list[Any]:
    """2x2 max pyramid (lazy) until the longer side is at most ``min_size``."""
    import dask.array as da

    levels = [level0]
    while max(levels[-1].shape) > min_size:
        a = levels[-1]
        h, w = a.shape
        if h % 2 or w % 2:
            a = da.pad(a, ((0, h % 2), (0, w % 2)), mode="constant")
        levels.append(da.coarsen(np.max, a, {0: 2, 1: 2}).astype(a.dtype))
    return levels


def _partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.partial")


def _write_zarr(tmp: Path, levels: list[Any], downsample: float, kind: str, name: str) -> None:
    import zarr

    root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
    datasets = []
    for i, level in enumerate(levels):
        arr = root.create_array(
            str(i), shape=level.shape, dtype=level.dtype, chunks=(1024, 1024), fill_value=0
        )
        # Strip by strip, so a dask source is never materialised whole.
        for y0 in range(0, level.shape[0], 1024):
            arr[y0 : y0 + 1024] = np.asarray(level[y0 : y0 + 1024])
        scale = float(downsample) * 2**i
        datasets.append(
            {
                "path": str(i),
                "coordinateTransformations": [{"type": "scale", "scale": [scale, scale]}],
            }
        )
    root.attrs.update(
        {
            "multiscales": [
                {
                    "version": "0.4",
                    "name": name,
                    "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                    "datasets": datasets,
                    "metadata": {"method": "2x2 max (labels)"},
                }
            ],
            "napari_gigapixel": {"downsample": float(downsample), "kind": kind},
        }
    )


def _write_tiff(tmp: Path, levels: list[Any], downsample: float, kind: str) -> None:
    import tifffile

    tile = 256

    def tiles(level: Any):
        h, w = level.shape
        for y0 in range(0, h, tile):
            strip = np.asarray(level[y0 : y0 + tile])
            for x0 in range(0, w, tile):
                yield strip[:, x0 : x0 + tile]

    with tifffile.TiffWriter(str(tmp), bigtiff=True) as tw:
        for i, level in enumerate(levels):
            kwargs: dict[str, Any] = (
                {"subifds": len(levels) - 1, "metadata": {"downsample": downsample, "kind": kind}}
                if i == 0
                else {"subfiletype": 1}
            )
            tw.write(
                tiles(level),
                shape=level.shape,
                dtype=level.dtype,
                tile=(tile, tile),
                compression="adobe_deflate",
                photometric="minisblack",
                **kwargs,
            )


def write_mask(
    path: str | os.PathLike,
    array: Any,
    downsample: float = 1.0,
    kind: MaskKind = "dense",
    overwrite: bool = False,
) -> str:
    """Write a mask as an OME-Zarr multiscale or a pyramidal TIFF, atomically.

    Parameters
    ----------
    path
        ``.zarr``/``.ome.zarr`` (OME-Zarr v0.4, scale = downsample per level)
        or ``.tif``/``.tiff`` (SubIFD pyramid, deflate; downsample and kind in
        the JSON description).
    array
        2-D integer or boolean mask: numpy, dask or zarr; written strip by strip.
    downsample
        Level-0 slide pixels per mask pixel.
    kind
        ``"dense"`` or ``"scribble"`` (recorded in the metadata).
    overwrite
        Replace an existing file; otherwise an existing path is an error.

    Returns
    -------
    str
        The path written. On any failure the previous file, if any, is intact
        and no partial output remains.
    """
    p = Path(path)
    suffix = _suffix(p)
    if suffix not in (".zarr", ".tif", ".tiff"):
        raise MaskError(
            f"{p}: cannot write a mask as {suffix or 'no extension'}; use .ome.zarr or .tif."
        )
    if not float(downsample) > 0:
        raise MaskError(f"{p}: downsample must be positive, got {downsample}.")
    if p.exists() and not overwrite:
        raise MaskError(
            f"{p}: already exists; pass overwrite=True (or --overwrite) to replace it."
        )
    if not p.parent.is_dir():
        raise MaskError(f"{p}: the folder {p.parent} does not exist; create it first.")
    levels = _max_pyramid(_to_dask(array, str(p)))
    tmp = _partial_path(p)
    try:
        if suffix == ".zarr":
            _write_zarr(tmp, levels, float(downsample), kind, p.name)
        else:
            _write_tiff(tmp, levels, float(downsample), kind)
        _replace(tmp, p)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    return str(p)


def _replace(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``; an old directory is removed only once the new one is in."""
    if tmp.is_dir() and final.exists():
        old = final.with_name(f".{final.name}.{os.getpid()}.old")
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:
            os.replace(old, final)  # put the previous mask back
            raise
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    elif final.is_dir():  # a file replacing a directory
        old = final.with_name(f".{final.name}.{os.getpid()}.old")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def polygons_to_geojson(polygons: Iterable[Sequence[np.ndarray]], name: str = "Tissue") -> dict:
    """A QuPath-style FeatureCollection of ``polygons`` (rings of level-0 ``(x, y)``)."""
    features = [
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [np.asarray(r, float).tolist() for r in rings],
            },
            "properties": {"objectType": "annotation", "classification": {"name": name}},
        }
        for rings in polygons
    ]
    return {"type": "FeatureCollection", "features": features}
