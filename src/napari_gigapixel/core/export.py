"""Export a predicted or annotated mask as QuPath GeoJSON polygons.

The mask is traced at a *working level*: its own resolution when that is at
most :data:`~.mask_io.MAX_POLYGON_PIXELS` (the budget mask_io rasterises
polygons at), else the smallest power-of-two coarsening under it. The working
image is the *coverage* (fraction of mask pixels that hold the class in each
working pixel), computed strip by strip, so no full-resolution mask is ever in
memory; its 0.5 iso-line is traced with marching squares
(:func:`skimage.measure.find_contours`), which puts the outline of a binary
mask on its pixel edges and of a coverage image within a fraction of a pixel.

Each 4-connected component becomes one Polygon: its outer ring and its holes
(islands in a hole are components of their own). Rings follow RFC 7946 on the
numbers: exterior counter-clockwise, holes clockwise by the shoelace sign of
``(x, y)`` (clockwise *on screen*, where y points down; QuPath accepts both).

Coordinates are level-0 pixels with QuPath's convention: pixel ``(i, j)`` spans
``[j, j+1) x [i, i+1)``, so a mask pixel ``k`` at downsample ``d`` spans
``[k*d, (k+1)*d)`` plus the mask's level-0 offset (a region prediction's
origin). :func:`~.mask_io.read_geojson` and QuPath read them back unchanged.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GigapixelError
from .events import Finished, JobStopped, Progress, StopFlag, stop_requested
from .geojson import MAX_POLYGON_PIXELS
from .masks import AnnotationMask

#: QuPath classes written per mask kind: (label test, name, RGB colour).
TISSUE = ("Tissue", [0, 213, 255])  # the plugin's tissue colour (cyan)
BACKGROUND = ("Background", [255, 157, 0])  # the plugin's background scribble colour
#: Level-0 elements read per strip while computing the coverage (~64 MB of uint8).
STRIP_ELEMENTS = 64_000_000


class ExportError(GigapixelError):
    """A mask that cannot be exported, or an output that cannot be written."""


@dataclass
class ExportSource:
    """A mask placed on its slide: what :func:`export_geojson` traces.

    Attributes
    ----------
    mask
        The labels and their downsample (level-0 pixels per mask pixel).
    offset
        Level-0 ``(y, x)`` of mask pixel ``(0, 0)``'s top-left corner.
    extent
        Level-0 ``(height, width)`` the mask covers; polygons are clipped to it.
    name
        Where it came from, for messages and the result.
    """

    mask: AnnotationMask
    offset: tuple[float, float] = (0.0, 0.0)
    extent: tuple[int, int] | None = None
    name: str = "mask"

    def __post_init__(self) -> None:
        if self.extent is None:
            self.extent = self.mask.level0_shape()


def _stored_downsample(path: Path) -> float | None:
    """The downsample :func:`~.mask_io.write_mask` recorded in the file, if any."""
    try:
        if path.is_dir():
            attrs = json.loads((path / ".zattrs").read_text())
            return float(attrs["napari_gigapixel"]["downsample"])
        import tifffile

        with tifffile.TiffFile(str(path)) as tif:
            meta = tif.shaped_metadata or ()
            return float(meta[0]["downsample"]) if meta and "downsample" in meta[0] else None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def open_source(
    source: Any,
    *,
    slide_shape: tuple[int, int] | None = None,
    downsample: float | None = None,
    kind: str | None = None,
) -> ExportSource:
    """Place a prediction or a mask on its slide for export.

    Parameters
    ----------
    source
        A prediction folder or :class:`~.prediction_store.PredictionStore`
        (its level-0 mask, downsample and region offset are used); a mask
        file that :func:`~.mask_io.load_mask` reads; an
        :class:`~.masks.AnnotationMask` or :class:`ExportSource`; or a 2-D
        numpy/dask/zarr label array with ``downsample``.
    slide_shape
        Level-0 ``(height, width)`` of the slide, needed for a mask file
        unless :func:`~.mask_io.write_mask` recorded its downsample in it.
    downsample
        Level-0 pixels per pixel of a bare array (default 1).
    kind
        ``"dense"`` or ``"scribble"`` for a mask file (default: the kind the
        file records, else dense) or a bare array (default dense).

    Raises
    ------
    ExportError
        When the mask's place on the slide cannot be known.
    """
    from .prediction_store import PredictionStore, is_prediction_path, open_prediction

    if isinstance(source, ExportSource):
        return source
    if isinstance(source, AnnotationMask):
        return ExportSource(source, name=source.name)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if is_prediction_path(path):
            source = open_prediction(path)
        else:
            return _open_mask_file(path, slide_shape, kind)
    if isinstance(source, PredictionStore):
        mask = AnnotationMask(source.mask[0], source.downsample, "dense", Path(source.path).name)
        return ExportSource(mask, tuple(map(float, source.offset)), source.region_shape, mask.name)
    if hasattr(source, "shape") and len(source.shape) == 2:
        mask = AnnotationMask(source, float(downsample or 1.0), kind or "dense", "array")  # type: ignore[arg-type]
        return ExportSource(mask, name=mask.name)
    raise ExportError(
        f"cannot export a {type(source).__name__}: give a prediction folder, a mask file, "
        "an AnnotationMask or a 2-D label array."
    )


def _open_mask_file(
    path: Path, slide_shape: tuple[int, int] | None, kind: str | None
) -> ExportSource:
    from .mask_io import load_mask

    if not path.exists():
        raise ExportError(f"{path}: no such prediction or mask. Check the path.")
    if slide_shape is None:
        d = _stored_downsample(path)
        if d is None:
            raise ExportError(
                f"{path}: cannot tell which slide level this mask is at. Give the slide "
                "(--slide) so its level-0 size is known."
            )
        # Our own files state their level: level-0 size = mask size x downsample.
        from .mask_io import _open_tiff, _open_zarr
        from .mask_write import _as_2d

        raw, _ = _open_zarr(path) if path.is_dir() else _open_tiff(path)
        h, w = _as_2d(raw, str(path)).shape
        slide_shape = (int(round(h * d)), int(round(w * d)))
    mask = load_mask(path, slide_shape, kind=kind)  # type: ignore[arg-type]
    return ExportSource(mask, extent=tuple(slide_shape), name=mask.name)  # type: ignore[arg-type]


def working_factor(shape: tuple[int, int], max_pixels: int = MAX_POLYGON_PIXELS) -> int:
    """Smallest power of two that coarsens ``shape`` to at most ``max_pixels``."""
    f = 1
    while math.ceil(shape[0] / f) * math.ceil(shape[1] / f) > max_pixels:
        f *= 2
    return f


def coverage(
    array: Any,
    factor: int,
    test: Callable[[np.ndarray], np.ndarray],
    stop: StopFlag | None = None,
) -> Iterator[Progress | np.ndarray]:
    """Yield ``Progress`` per strip, then the coverage image (float32, 0..1).

    Working pixel ``(i, j)`` holds the fraction of mask pixels
    ``[i*f, (i+1)*f) x [j*f, (j+1)*f)`` for which ``test`` holds (pixels past
    the mask count as not holding). Reads ``array`` one strip of rows at a time.
    """
    h, w = int(array.shape[0]), int(array.shape[1])
    f = int(factor)
    out = np.zeros((math.ceil(h / f), math.ceil(w / f)), np.float32)
    rows = max(1, STRIP_ELEMENTS // max(1, w * f)) * f  # mask rows per strip, a multiple of f
    total = math.ceil(h / rows)
    for k, y0 in enumerate(range(0, h, rows)):
        if stop_requested(stop):
            raise JobStopped()
        strip = test(np.asarray(array[y0 : y0 + rows]))
        if f > 1:
            sh, sw = strip.shape
            strip = np.pad(strip, ((0, -sh % f), (0, -sw % f)))
            strip = strip.reshape(strip.shape[0] // f, f, strip.shape[1] // f, f).sum(
                axis=(1, 3), dtype=np.float32
            ) / np.float32(f * f)
        out[y0 // f : y0 // f + strip.shape[0]] = strip
        yield Progress("export", k + 1, total, f"coverage: strip {k + 1}/{total}")
    yield out


def _ring_area(ring: np.ndarray) -> float:
    """Shoelace area of an ``(N, 2)`` ``(x, y)`` ring (positive: counter-clockwise)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def trace_polygons(
    cov: np.ndarray,
    *,
    pixel: float,
    offset: tuple[float, float] = (0.0, 0.0),
    extent: tuple[float, float] | None = None,
    tolerance: float = 0.0,
    min_area: float = 0.0,
) -> list[list[np.ndarray]]:
    """Polygons (exterior then holes, level-0 ``(x, y)``, closed) of ``cov >= 0.5``.

    Parameters
    ----------
    cov
        Coverage (or a binary mask) at the working level.
    pixel
        Level-0 pixels per working pixel.
    offset, extent
        Level-0 ``(y, x)`` of working pixel ``(0, 0)``'s corner; the level-0
        ``(height, width)`` past the offset that rings are clipped to.
    tolerance
        Douglas-Peucker tolerance in level-0 pixels (0: no simplification).
    min_area
        Components and holes under this area (level-0 pixels squared) are
        dropped (holes: filled).
    """
    from scipy import ndimage
    from skimage.measure import approximate_polygon, find_contours

    inside = cov >= 0.5
    # find_contours (fully_connected="low") joins tissue pixels only by edges.
    labels, n = ndimage.label(inside)
    if n == 0:
        return []
    sizes = ndimage.sum_labels(inside, labels, index=np.arange(1, n + 1))
    ey, ex = extent if extent is not None else (math.inf, math.inf)
    oy, ox = offset
    tol = tolerance / pixel
    polygons = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        # A component's traced area is at most its pixel count (corners get cut).
        if sl is None or sizes[k - 1] * pixel * pixel < min_area:
            continue
        crop = np.where(labels[sl] == k, cov[sl], np.where(labels[sl] == 0, cov[sl], 0))
        crop = np.pad(crop.astype(np.float32), 1)  # closes every ring
        r0, c0 = sl[0].start - 1, sl[1].start - 1
        rings = []
        for rc in find_contours(crop, 0.5):
            if tol > 0:
                rc = approximate_polygon(rc, tol)
            if len(rc) < 4:
                continue
            # Working pixel i's centre is level-0 (i + 0.5) * pixel past the offset.
            xy = np.stack([ox + (rc[:, 1] + c0 + 0.5) * pixel, oy + (rc[:, 0] + r0 + 0.5) * pixel])
            xy = xy.T
            xy[:, 0] = np.clip(xy[:, 0], ox, ox + ex)
            xy[:, 1] = np.clip(xy[:, 1], oy, oy + ey)
            rings.append((abs(_ring_area(xy)), xy))
        if not rings:
            continue
        rings.sort(key=lambda t: -t[0])
        area, outer = rings[0]
        if area < min_area or area == 0:
            continue
        holes = [ring for a, ring in rings[1:] if a >= max(min_area, 1e-12)]
        outer = outer if _ring_area(outer) > 0 else outer[::-1]
        polygons.append([outer] + [h if _ring_area(h) < 0 else h[::-1] for h in holes])
    return polygons


def _classes(kind: str) -> list[tuple[Callable[[np.ndarray], np.ndarray], str, list[int]]]:
    if kind == "scribble":
        return [(lambda a: a == 2, *TISSUE), (lambda a: a == 1, *BACKGROUND)]
    return [(lambda a: a > 0, *TISSUE)]


def _feature(polys: list[list[np.ndarray]], name: str, colour: list[int], merge: bool) -> dict:
    def coords(rings: list[np.ndarray]) -> list:
        return [np.round(r, 3).tolist() for r in rings]

    geometry = (
        {"type": "MultiPolygon", "coordinates": [coords(p) for p in polys]}
        if merge
        else {"type": "Polygon", "coordinates": coords(polys[0])}
    )
    return {
        "type": "Feature",
        "geometry": geometry,
        "properties": {
            "objectType": "annotation",
            "classification": {"name": name, "color": list(colour)},
        },
    }


def export_events(
    source: Any,
    out: str | os.PathLike,
    *,
    tolerance: float | None = None,
    min_area: float | None = None,
    overwrite: bool = False,
    merge: bool = False,
    max_pixels: int = MAX_POLYGON_PIXELS,
    slide_shape: tuple[int, int] | None = None,
    kind: str | None = None,
    stop: StopFlag | None = None,
) -> Iterator[Any]:
    """Export ``source`` to a GeoJSON FeatureCollection at ``out``, yielding events.

    Parameters
    ----------
    source
        Anything :func:`open_source` takes (prediction folder or store, mask
        file, :class:`~.masks.AnnotationMask`, :class:`ExportSource`).
    out
        ``.geojson`` (or ``.json``) file; written to a temporary name, then renamed.
    tolerance
        Simplification tolerance in level-0 pixels: no vertex of the written
        outline is further than this from the traced one. Default: a quarter
        of the working pixel, which keeps every working pixel centre on its side.
    min_area
        Pieces and holes smaller than this (level-0 pixels squared) are left
        out (holes filled). Default: one working pixel's area.
    overwrite
        Replace an existing ``out``; otherwise that is an :class:`ExportError`.
    merge
        One MultiPolygon feature per class instead of one Polygon per piece.
    max_pixels
        Budget of the working level (default as mask_io's rasterisation level).
    slide_shape, kind
        As :func:`open_source` (``kind`` overrides an AnnotationMask's own).

    Yields
    ------
    Progress
        ``stage="export"`` once per strip of the coverage computation.
    Finished
        Last, with ``result``: ``out``, ``features``, ``polygons``, ``holes``,
        ``vertices``, ``area`` (level-0 px^2 per class), ``working_downsample``,
        ``tolerance``, ``min_area``, ``seconds``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() not in (".geojson", ".json"):
        raise ExportError(f"{out}: write GeoJSON to a .geojson (or .json) file.")
    if out.exists() and not overwrite:
        raise ExportError(f"{out}: already exists; pass overwrite (--overwrite) to replace it.")
    if not out.parent.is_dir():
        raise ExportError(f"{out}: the folder {out.parent} does not exist; create it first.")
    if tolerance is not None and tolerance < 0 or min_area is not None and min_area < 0:
        raise ExportError("tolerance and min-area must be zero or positive.")
    src = open_source(source, slide_shape=slide_shape, kind=kind)
    mask = src.mask
    kind = kind or mask.kind
    f = working_factor(mask.shape, max_pixels)
    pixel = float(mask.downsample) * f
    tol = 0.25 * pixel if tolerance is None else float(tolerance)
    area_min = pixel * pixel if min_area is None else float(min_area)
    features, n_poly, n_holes, n_vert, areas = [], 0, 0, 0, {}
    for test, name, colour in _classes(kind):
        cov = None
        for item in coverage(mask.array, f, test, stop):
            if isinstance(item, Progress):
                yield Progress(item.stage, item.done, item.total, f"{name} {item.message}")
            else:
                cov = item
        polys = trace_polygons(
            cov, pixel=pixel, offset=src.offset, extent=src.extent, tolerance=tol,
            min_area=area_min,
        )  # fmt: skip
        del cov
        if stop_requested(stop):
            raise JobStopped()
        if not polys:
            continue
        n_poly += len(polys)
        n_holes += sum(len(p) - 1 for p in polys)
        n_vert += sum(len(r) for p in polys for r in p)
        areas[name] = float(sum(_ring_area(r) for p in polys for r in p))
        groups = [polys] if merge else [[p] for p in polys]
        features += [_feature(g, name, colour, merge) for g in groups]
    doc = {"type": "FeatureCollection", "features": features}
    _write_atomic(out, doc, overwrite)
    yield Finished(
        result={
            "out": str(out),
            "source": src.name,
            "features": len(features),
            "polygons": n_poly,
            "holes": n_holes,
            "vertices": n_vert,
            "area": areas,
            "working_downsample": pixel,
            "tolerance": tol,
            "min_area": area_min,
            "seconds": time.perf_counter() - t0,
        }
    )


def _write_atomic(out: Path, doc: dict, overwrite: bool) -> None:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "w") as fh:
            json.dump(doc, fh, separators=(",", ":"))
        if out.exists() and not overwrite:  # appeared while we traced
            raise ExportError(f"{out}: already exists; pass overwrite to replace it.")
        os.replace(tmp, out)
    except OSError as exc:
        raise ExportError(f"{out}: cannot write ({exc}).") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def export_geojson(source: Any, out: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
    """Run :func:`export_events` to the end; return its result dict."""
    result: dict[str, Any] = {}
    for event in export_events(source, out, **kwargs):
        if isinstance(event, Finished):
            result = event.result
    return result


__all__ = [
    "ExportError",
    "ExportSource",
    "coverage",
    "export_events",
    "export_geojson",
    "open_source",
    "trace_polygons",
    "working_factor",
]
