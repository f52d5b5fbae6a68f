"""Tracing a mask into GeoJSON-ready polygons, strip by strip (used by :mod:`.export`).

A coverage image at a working level (the mask's own, or the smallest power of
two coarsening under 16 Mpx) is traced with marching squares; rings become
polygons with holes by nesting, exterior rings counter-clockwise and holes
clockwise (RFC 7946), simplified within a tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .events import JobStopped, Progress, StopFlag, stop_requested
from .geojson import MAX_POLYGON_PIXELS

#: Level-0 elements read per strip while computing the coverage (~64 MB of uint8).
STRIP_ELEMENTS = 64_000_000


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
    margin: int = 0,
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
    margin
        Working pixels of ``cov`` beyond the region on every side (a field
        held past its last pixel centre, so its line reaches the region's
        edge instead of turning back before it); ``offset`` stays the region's.
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
        r0, c0 = sl[0].start - 1 - margin, sl[1].start - 1 - margin
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
