"""Export a predicted or annotated mask as QuPath GeoJSON polygons.

A prediction traced at its own level follows its probability's threshold
line (:func:`threshold_field`, the level-0 border :mod:`.mask_refine` reads),
not the edges of its output pixels.

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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from . import _trace
from ._trace import _ring_area, coverage, trace_polygons, working_factor
from .errors import GigapixelError
from .events import Finished, JobStopped, Progress, StopFlag, stop_requested
from .geojson import MAX_POLYGON_PIXELS
from .masks import AnnotationMask, guarded, reading_mask
from .prediction_store import reading_prediction

#: QuPath classes written per mask kind: (label test, name, RGB colour).
TISSUE = ("Tissue", [0, 213, 255])  # the plugin's tissue colour (cyan)
BACKGROUND = ("Background", [255, 157, 0])  # the plugin's background scribble colour


#: Default simplification tolerance (in working pixels) of an outline traced
#: along a prediction's probability: within 0.999 Dice of its level-0 mask
#: (tests/core/test_export.py: 0.9985), where a quarter pixel gave 0.9955.
REFINED_TOLERANCE = 1.0 / 16.0


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
    probability, threshold
        A prediction's probability at the mask's level and its threshold:
        traced at the mask's own level, the outline is then the probability's
        threshold line (:mod:`.mask_refine`), not the edges of the mask's pixels.
    """

    mask: AnnotationMask
    offset: tuple[float, float] = (0.0, 0.0)
    extent: tuple[int, int] | None = None
    name: str = "mask"
    probability: Any = None
    threshold: float = 0.5

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
        ``"dense"`` or ``"scribble"`` for a mask file or a bare array; None:
        what the file records (dense when it records nothing, and for arrays).

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
            _check_prediction_use(source, slide_shape, kind)
        else:
            return _open_mask_file(path, slide_shape, kind)
    if isinstance(source, PredictionStore):
        mask = AnnotationMask(source.mask[0], source.downsample, "dense", Path(source.path).name)
        return ExportSource(
            mask,
            tuple(map(float, source.offset)),
            source.region_shape,
            mask.name,
            probability=source.probability[0],
            threshold=float(source.metadata.get("threshold", 0.5)),
        )
    if hasattr(source, "shape") and len(source.shape) == 2:
        mask = AnnotationMask(source, float(downsample or 1.0), kind or "dense", "array")  # type: ignore[arg-type]
        return ExportSource(mask, name=mask.name)
    raise ExportError(
        f"cannot export a {type(source).__name__}: give a prediction folder, a mask file, "
        "an AnnotationMask or a 2-D label array."
    )


def _check_prediction_use(store: Any, slide_shape: Any, kind: str | None) -> None:
    """Refuse what cannot apply to a prediction instead of ignoring it.

    A prediction knows its slide and is a dense mask: a ``slide_shape`` of
    another size means the wrong slide was given, and ``"scribble"`` would
    export all its tissue as "Background".
    """
    if kind == "scribble":
        raise ExportError(
            f"{store.path}: a prediction is a dense tissue mask; the scribble kind applies to "
            "mask files. Leave --kind out."
        )
    made_on = store.metadata.get("slide_shape")
    if slide_shape is not None and made_on and tuple(made_on) != tuple(slide_shape):
        raise ExportError(
            f"{store.path} was predicted on a {made_on[0]} x {made_on[1]} px slide, not the "
            f"{slide_shape[0]} x {slide_shape[1]} px one given. A prediction knows its place "
            "on its slide: leave --slide out, or give the slide it was made on."
        )


def _open_mask_file(
    path: Path, slide_shape: tuple[int, int] | None, kind: str | None
) -> ExportSource:
    from .mask_io import load_mask

    if not path.exists():
        raise ExportError(f"{path}: no such prediction or mask. Check the path.")
    if slide_shape is None:
        d = _stored_downsample(path)
        if d is None and (path.is_dir() or path.suffix.lower() in (".tif", ".tiff")):
            # An unreadable file records no level either: say it cannot be read.
            from .mask_io import _open_tiff, _open_zarr

            _open_zarr(path) if path.is_dir() else _open_tiff(path)
        if d is None:
            raise ExportError(
                f"{path}: cannot tell which slide level this mask is at. Give the slide "
                "(--slide) so its level-0 size is known."
            )
        # Our own files state their level: level-0 size = mask size x downsample.
        from .mask_io import _open_tiff, _open_zarr
        from .mask_write import _as_2d

        raw, _kind = _open_zarr(path) if path.is_dir() else _open_tiff(path)
        h, w = _as_2d(raw, str(path)).shape
        slide_shape = (int(round(h * d)), int(round(w * d)))
    mask = load_mask(path, slide_shape, kind=kind)  # type: ignore[arg-type]
    return ExportSource(mask, extent=tuple(slide_shape), name=mask.name)  # type: ignore[arg-type]


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
        of the working pixel, which keeps every working pixel centre on its
        side; a sixteenth (:data:`REFINED_TOLERANCE`) for a prediction traced
        along its probability's threshold line, which runs between pixel edges.
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
        ``stage="export"`` once per strip of the coverage (or probability) read.
    Finished
        Last, with ``result``: ``out``, ``features``, ``polygons``, ``holes``,
        ``vertices``, ``area`` (level-0 px^2 per class), ``working_downsample``,
        ``outline`` (``"probability"``: a prediction traced along its
        threshold line; ``"mask"``: the mask's pixels or coverage),
        ``tolerance``, ``min_area``, ``seconds``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() not in (".geojson", ".json"):
        raise ExportError(f"{out}: write GeoJSON to a .geojson (or .json) file.")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; pass --overwrite to replace it.")
    if not out.parent.is_dir():
        raise ExportError(f"{out}: the folder {out.parent} does not exist; create it first.")
    if tolerance is not None and tolerance < 0 or min_area is not None and min_area < 0:
        raise ExportError("tolerance and min-area must be zero or positive.")
    src = open_source(source, slide_shape=slide_shape, kind=kind)
    mask = src.mask
    kind = kind or mask.kind
    f = working_factor(mask.shape, max_pixels)
    pixel = float(mask.downsample) * f
    # A prediction traced at its own level follows its probability's threshold
    # line, as evaluate reads it at level 0; coarser levels trace coverage.
    refine = src.probability is not None and f == 1 and kind == "dense"
    # A sub-pixel line keeps a finer tolerance than pixel edges need.
    tol = (REFINED_TOLERANCE if refine else 0.25) * pixel
    tol = tol if tolerance is None else float(tolerance)
    area_min = pixel * pixel if min_area is None else float(min_area)
    features, n_poly, n_holes, n_vert, areas = [], 0, 0, 0, {}
    if src.probability is not None:  # a prediction store: its own words for the fix
        reading = partial(reading_prediction, src.name)
    else:
        reading = partial(reading_mask, src.name)
    for test, name, colour in _classes(kind):
        cov = None
        cover = (
            threshold_field(src.probability, mask.array, src.threshold, stop)
            if refine
            else coverage(mask.array, f, test, stop)
        )
        for item in guarded(cover, reading):  # a damaged file: one line, no traceback
            if isinstance(item, Progress):
                yield Progress(item.stage, item.done, item.total, f"{name} {item.message}")
            else:
                cov = item
        if refine:  # the probability is held past the last centres, as RefinedMask's
            cov = np.pad(cov, 1, mode="edge")
        polys = trace_polygons(
            cov, pixel=pixel, offset=src.offset, extent=src.extent, tolerance=tol,
            min_area=area_min, margin=1 if refine else 0,
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
            "outline": "probability" if refine else "mask",
            "tolerance": tol,
            "min_area": area_min,
            "seconds": time.perf_counter() - t0,
        }
    )


def threshold_field(
    probability: Any, mask: Any, threshold: float, stop: StopFlag | None = None
) -> Iterator[Progress | np.ndarray]:
    """Yield ``Progress`` per strip, then the field whose 0.5 line is the threshold line.

    The cleaned probability (:func:`.mask_refine.cleaned_probability`) mapped
    affinely so the threshold lands on 0.5: marching squares interpolates
    linearly between pixel centres, and an affine map moves no crossing, so
    the traced outline is the probability's threshold line; on a 0/255
    probability it is the mask's own outline.
    """
    from .mask_refine import cleaned_probability

    h, w = int(mask.shape[0]), int(mask.shape[1])
    out = np.zeros((h, w), np.float32)
    rows = max(1, _trace.STRIP_ELEMENTS // max(1, w))  # read when called (tests shrink it)
    total = math.ceil(h / rows)
    t = np.float32(threshold * 255.0)
    for k, y0 in enumerate(range(0, h, rows)):
        if stop_requested(stop):
            raise JobStopped()
        v = cleaned_probability(probability[y0 : y0 + rows], mask[y0 : y0 + rows], threshold)
        out[y0 : y0 + v.shape[0]] = 0.5 + (v - t) / np.float32(255.0)
        yield Progress("export", k + 1, total, f"probability: strip {k + 1}/{total}")
    yield out


def _write_atomic(out: Path, doc: dict, overwrite: bool) -> None:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "w") as fh:
            json.dump(doc, fh, separators=(",", ":"))
        if out.exists() and not overwrite:  # appeared while we traced
            raise ExportError(f"{out} already exists; pass --overwrite to replace it.")
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
