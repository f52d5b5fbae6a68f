"""Rasterise polygons (GeoJSON) and napari Shapes into masks at an annotation level.

Even-odd filling (``skimage.draw.polygon``) so inner rings are holes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .masks import MaskError


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
        Label of every polygon, or one label per polygon (integers 0 to 255;
        anything else is a :class:`MaskError`, never wrapped); later polygons
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
    values = [_label_value(v) for v in values]
    for rings, val in zip(polygons, values):
        if isinstance(rings, np.ndarray) and rings.ndim == 2:
            rings = [rings]
        # Mask pixel j's centre is level-0 (j + 0.5) * d; skimage tests
        # integer points, so shift the polygon instead of the pixels.
        scaled = [np.asarray(r, float)[:, :2] / d - 0.5 for r in rings if len(r) >= 3]
        if not scaled:
            continue
        allp = np.concatenate(scaled)
        if not np.isfinite(allp).all():
            raise MaskError("a polygon has coordinates that are not finite (NaN or Infinity).")
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


def _label_value(v: object) -> int:
    """A label that fits the uint8 mask exactly: never wrapped (258 is not 2)."""
    try:
        iv = int(v)  # type: ignore[call-overload]
        ok = iv == v and 0 <= iv <= 255
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise MaskError(
            f"label value {v!r} does not fit a mask: use 0 to 255 (dense: 1 = tissue; "
            "scribble: 1 = background, 2 = tissue)."
        )
    return iv


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
