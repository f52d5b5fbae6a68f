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
_BACKGROUND_CLASSES = {"background", "glass", "negative", "ignore*", "other"}


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
