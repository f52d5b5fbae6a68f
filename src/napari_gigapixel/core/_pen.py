"""Pen strokes drawn on the glass of a training slide, exactly under tiling.

A training slide may carry no pen at all, or pen over the tissue only (the
sample slide's black tick), while the next slide has a blue circle on the
glass: a model that never saw pen labelled background calls it tissue, as it
is darker than glass. :class:`.stain.PenStrokes` draws a few pen strokes per
step, in a random ink, on the pixels the mask labels background, so it does
see them (the labels stay true: the strokes only go where the mask already
says background).

A stroke is a polyline of straight segments with a soft edge, composited in
optical density (``v * exp(-alpha * od)``, as ink absorbs light). Every pixel
is a function of its slide coordinates, its value and its label, computed in
float64 from integer coordinates, so a window of the drawn slide is the drawn
window (tests: streamed gradients equal whole-image ones). Each segment is cut
along its length into pieces about four widths long, and each pixel is drawn
by exactly one piece (the one its projection on the segment falls into), so
the work is about the stroke's area, not its bounding box, and no piece is
drawn twice. :func:`pen_cover` says which output pixels a step's strokes
cover, for the loss weight of the glass under them (``TrainConfig.pen_weight``).
"""

from __future__ import annotations

import numpy as np

from .stain import PenStrokes


def stroke_segments(
    pens: PenStrokes, shape: tuple[int, int]
) -> list[tuple[np.ndarray, np.ndarray, float, np.ndarray]]:
    """``(p, q, half_width, od)`` of every segment, in pixels of a slide of ``shape``."""
    h, w = int(shape[0]), int(shape[1])
    short = float(min(h, w))
    out = []
    for start, steps, width, od in zip(pens.starts, pens.steps, pens.widths, pens.ods):
        pts = np.asarray(start, np.float64) * (h, w) + np.concatenate(
            [np.zeros((1, 2)), np.cumsum(np.asarray(steps, np.float64) * short, axis=0)]
        )
        for p, q in zip(pts[:-1], pts[1:]):
            out.append((p, q, 0.5 * float(width) * short, np.asarray(od, np.float64)))
    return out


def _pieces(pens: PenStrokes, shape: tuple[int, int], scale: float, bounds: tuple[int, ...]):
    """Every segment cut along its length into pieces about four widths long, with
    the box of grid cells (``scale`` slide pixels each) whose centres may lie
    within the stroke's half width of the piece, clipped to ``bounds``
    ``(y0, y1, x0, x1)``; pieces whose box is empty are skipped.

    Yields ``(p, d, hw, od, k, pieces, (ya, yb, xa, xb))`` with ``p`` the
    segment's start, ``d`` its direction (``q - p``) and ``k`` the piece's
    index. Pieces keep the work about the stroke's area, not its bounding box.
    """
    by0, by1, bx0, bx1 = bounds
    for p, q, hw, od in stroke_segments(pens, shape):
        d = q - p
        length2 = float(d @ d)
        if length2 <= 0:
            continue
        pieces = max(1, int(np.ceil(np.sqrt(length2) / (4 * hw))))
        for k in range(pieces):
            a, b = p + (k / pieces) * d, p + ((k + 1) / pieces) * d
            ya = max(int(np.floor((min(a[0], b[0]) - hw) / scale)), by0)
            yb = min(int(np.ceil((max(a[0], b[0]) + hw) / scale)) + 1, by1)
            xa = max(int(np.floor((min(a[1], b[1]) - hw) / scale)), bx0)
            xb = min(int(np.ceil((max(a[1], b[1]) + hw) / scale)) + 1, bx1)
            if ya < yb and xa < xb:
                yield p, d, hw, od, k, pieces, (ya, yb, xa, xb)


def draw_pens(
    src: np.ndarray,
    background: np.ndarray,
    factor: int,
    origin: tuple[int, int],
    pens: PenStrokes,
    shape: tuple[int, int],
) -> np.ndarray:
    """Draw ``pens`` into uint8 ``(h, w, 3)`` ``src`` in place, on background pixels only.

    ``src`` is the part of a slide of ``shape`` whose top-left pixel is
    ``origin`` (original frame); ``background`` (uint8, 1 where the mask
    labels background) is at 1/``factor``, aligned with ``src``'s top-left
    corner (on the output grid).
    """
    h, w = src.shape[:2]
    y0, x0 = int(origin[0]), int(origin[1])
    bounds = (y0, y0 + h, x0, x0 + w)
    for p, d, hw, od, k, pieces, (ya, yb, xa, xb) in _pieces(pens, shape, 1.0, bounds):
        t0, t1 = k / pieces, (k + 1) / pieces
        yy = np.arange(ya, yb, dtype=np.float64)[:, None] + 0.5
        xx = np.arange(xa, xb, dtype=np.float64)[None, :] + 0.5
        t = ((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / float(d @ d)
        # This piece draws the pixels whose projection falls in [t0, t1)
        # (the first and last also the round caps beyond the ends).
        mine = (t >= t0 if k else True) & (t < t1 if k < pieces - 1 else True)
        tc = np.clip(t, 0.0, 1.0)
        dist2 = (yy - (p[0] + tc * d[0])) ** 2 + (xx - (p[1] + tc * d[1])) ** 2
        rows = (np.arange(ya, yb) - y0) // factor
        cols = (np.arange(xa, xb) - x0) // factor
        on = mine & (dist2 < hw * hw) & (background[rows][:, cols] > 0)
        if not on.any():
            continue
        # Only the pixels under the stroke from here on (a third of the piece's box).
        s = np.clip((hw - np.sqrt(dist2[on])) / (0.3 * hw), 0.0, 1.0)
        alpha = s * s * (3 - 2 * s)
        region = src[ya - y0 : yb - y0, xa - x0 : xb - x0]
        v = region[on].astype(np.float64)
        new = np.rint(v * np.exp(-alpha[:, None] * od))
        region[on] = np.clip(new, 0, 255).astype(np.uint8)
    return src


def pen_cover(
    pens: PenStrokes, shape: tuple[int, int], factor: int, rect: tuple[int, int, int, int]
) -> np.ndarray:
    """Which output pixels of ``rect`` lie under a stroke (bool, original frame).

    ``rect`` is ``(oy0, oy1, ox0, ox1)`` on the 1/``factor`` output grid of a
    slide of ``shape``; an output pixel is under a stroke when its centre (in
    slide pixels) is within the stroke's half width of one of its segments,
    the extent :func:`draw_pens` darkens. A function of the output pixel's
    coordinates alone, so any window gives the whole map's values.
    """
    oy0, oy1, ox0, ox1 = (int(v) for v in rect)
    out = np.zeros((max(0, oy1 - oy0), max(0, ox1 - ox0)), bool)
    f = float(factor)
    # A centre within hw of the segment is within hw of its nearest point, so
    # inside that point's piece's box: the union over pieces is the segment's.
    for p, d, hw, _od, _k, _n, (ya, yb, xa, xb) in _pieces(pens, shape, f, (oy0, oy1, ox0, ox1)):
        yy = (np.arange(ya, yb, dtype=np.float64)[:, None] + 0.5) * f
        xx = (np.arange(xa, xb, dtype=np.float64)[None, :] + 0.5) * f
        t = np.clip(((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / float(d @ d), 0.0, 1.0)
        dist2 = (yy - (p[0] + t * d[0])) ** 2 + (xx - (p[1] + t * d[1])) ** 2
        out[ya - oy0 : yb - oy0, xa - ox0 : xb - ox0] |= dist2 < hw * hw
    return out
