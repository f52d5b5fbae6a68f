"""QuPath-style GeoJSON: read polygons (with holes and classes), write FeatureCollections.

Coordinates are level-0 pixels ``(x, y)``, as QuPath exports and imports them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .masks import MaskError, MaskKind

#: Polygon masks are rasterised at the smallest power-of-two downsample that
#: keeps them at or under this many pixels.
MAX_POLYGON_PIXELS = 16_000_000

_GEOJSON_SUFFIXES = (".geojson", ".json")
#: QuPath class names that mean "background" in scribble masks.
_BACKGROUND_CLASSES = {"background", "glass", "negative", "other"}
#: QuPath's "Ignore*" class (and any class named "ignore..."): unlabelled (0).
_IGNORE_PREFIX = "ignore"
#: GeometryCollections nested deeper than this are refused (a crafted file
#: must not exhaust the stack).
_MAX_DEPTH = 32


def polygon_downsample(
    slide_shape: tuple[int, int], max_pixels: int = MAX_POLYGON_PIXELS
) -> float:
    """Smallest power of two that keeps a slide-sized mask at or under ``max_pixels``."""
    d = 1
    while math.ceil(slide_shape[0] / d) * math.ceil(slide_shape[1] / d) > max_pixels:
        d *= 2
    return float(d)


def class_name(properties: object) -> str:
    """The QuPath class name of a feature's ``properties`` ('' when it has none)."""
    if not isinstance(properties, dict):
        return ""
    cls = properties.get("classification")
    if isinstance(cls, dict):
        cls = cls.get("name", "")
    return cls.strip() if isinstance(cls, str) else ""


def _class_value(properties: object, kind: MaskKind) -> int:
    """Label of a polygon: Ignore* 0 (unlabelled); dense 1; scribble 1 background, 2 tissue."""
    name = class_name(properties).lower()
    if name.startswith(_IGNORE_PREFIX):
        return 0
    if kind == "dense":
        return 1
    return 1 if name in _BACKGROUND_CLASSES else 2


def _ring(ring: object, gtype: str, path: Path) -> np.ndarray:
    try:
        arr = np.asarray(ring, dtype=float)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MaskError(f"{path}: a {gtype} has malformed coordinates ({exc}).") from exc
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise MaskError(
            f"{path}: a {gtype} ring must be a list of [x, y] points; got an array of "
            f"shape {arr.shape}."
        )
    if not np.isfinite(arr[:, :2]).all():
        raise MaskError(
            f"{path}: a {gtype} has coordinates that are not finite numbers (NaN or "
            "Infinity). Export the annotations again."
        )
    return arr[:, :2]


def _rings(rings: object, gtype: str, path: Path) -> list[np.ndarray]:
    if not isinstance(rings, list):
        raise MaskError(f"{path}: a {gtype} needs a list of rings, got {type(rings).__name__}.")
    return [_ring(r, gtype, path) for r in rings]


def _geometry_polygons(geometry: object, path: Path, depth: int = 0) -> list[list[np.ndarray]]:
    if not geometry:
        return []
    if not isinstance(geometry, dict):
        raise MaskError(
            f"{path}: a geometry must be a JSON object, got {type(geometry).__name__}."
        )
    gtype = geometry.get("type")
    coords = geometry.get("coordinates")
    if gtype == "Polygon":
        return [_rings(coords, gtype, path)]
    if gtype == "MultiPolygon":
        if not isinstance(coords, list):
            raise MaskError(f"{path}: a MultiPolygon needs a list of polygons.")
        return [_rings(poly, gtype, path) for poly in coords]
    if gtype == "GeometryCollection":
        parts = geometry.get("geometries")
        if parts is None:
            return []
        if not isinstance(parts, list) or depth >= _MAX_DEPTH:
            raise MaskError(f"{path}: a GeometryCollection needs a (shallow) list of geometries.")
        out: list[list[np.ndarray]] = []
        for g in parts:
            out += _geometry_polygons(g, path, depth + 1)
        return out
    return []  # points and lines carry no area


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number GeoJSON allows")


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
        Label per polygon: 0 for QuPath's ``Ignore*`` class (unlabelled; any
        class whose name starts with "ignore"); otherwise 1 for dense masks;
        for scribbles 1 (background classes: Background, Glass, Negative,
        Other) or 2 (anything else).

    Raises
    ------
    MaskError
        Not JSON, NaN/Infinity coordinates, wrong types (``"features": null``,
        a ring that is not a list of points), or no polygon at all.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(), parse_constant=_reject_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MaskError(f"{p}: not a readable GeoJSON file ({exc}).") from exc
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features")
        if not isinstance(features, list):
            raise MaskError(
                f"{p}: the FeatureCollection's 'features' must be a list, not "
                f"{json.dumps(features)[:40]}. Export the annotations again."
            )
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


def check_polygons_overlap(
    polygons: Sequence[Sequence[np.ndarray]], slide_shape: tuple[int, int], path: object
) -> None:
    """Raise :class:`MaskError` when no polygon touches the ``(H, W)`` slide at all.

    The usual cause is coordinates in micrometres (or of another slide):
    QuPath exports level-0 pixels.
    """
    h, w = slide_shape
    outlines = [np.asarray(rings[0]) for rings in polygons if len(rings) and len(rings[0])]
    if not outlines:
        return
    lo = np.min([o.min(axis=0) for o in outlines], axis=0)
    hi = np.max([o.max(axis=0) for o in outlines], axis=0)
    for o in outlines:
        x0, y0 = o.min(axis=0)
        x1, y1 = o.max(axis=0)
        if x1 > 0 and y1 > 0 and x0 < w and y0 < h:
            return
    raise MaskError(
        f"{path}: all {len(outlines)} polygons lie outside the {h} x {w} slide (they span "
        f"x {lo[0]:.6g} to {hi[0]:.6g}, y {lo[1]:.6g} to {hi[1]:.6g}). Coordinates must be "
        "level-0 pixels of this slide (QuPath exports pixels); micrometres or another "
        "slide's annotations do not fit."
    )


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
