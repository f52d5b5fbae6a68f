"""Segmentation counts at a working resolution (``evaluate --mpp/--level``).

Each pixel of the resolution (:mod:`.resolution`) counts once: both masks are
read at its centre by nearest neighbour (:meth:`AnnotationMask.read_grid`),
chunk by chunk, so nothing full-resolution is built. Level-0 counts stay in
:mod:`.metrics`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .confusion import Confusion, _Shifted, dice, iou, scores, sum_in_threads
from .otsu import otsu_tissue_mask


def _count_grid(pred, truth, y0: float, x0: float, ny: int, nx: int, step: float) -> np.ndarray:
    lp = pred.read_grid(y0, x0, ny, nx, step)
    lt = truth.read_grid(y0, x0, ny, nx, step)
    t, w = truth.targets_and_weights(lt)
    p = (lp > 0).astype(np.float64)
    pw, tw = p * w, t * w
    tp = float((pw * t).sum())
    fp = float(pw.sum()) - tp
    fn = float(tw.sum()) - tp
    tn = float(w.sum()) - tp - fp - fn
    return np.array([tp, fp, fn, tn])


def confusion_grid(
    pred: Any,
    truth: Any,
    *,
    origin: tuple[float, float],
    shape: tuple[int, int],
    step: float,
    chunk: int = 1024,
    scheduler: str = "threads",
) -> Confusion:
    """Count TP, FP, FN, TN over the pixels of a working resolution.

    Pixel ``(i, j)`` is the level-0 block ``[origin + i*step, origin + (i+1)*step)``
    (``step`` the resolution's downsample, maybe fractional); both masks are
    read at its centre (nearest neighbour), so the counts are in pixels of
    that resolution. ``chunk``: resolution pixels per side counted at a time.
    """
    oy, ox = origin
    h, w = int(shape[0]), int(shape[1])
    blocks = [
        (oy + i * step, ox + j * step, min(chunk, h - i), min(chunk, w - j))
        for i in range(0, h, chunk)
        for j in range(0, w, chunk)
    ]
    if not blocks:
        return Confusion(0, 0, 0, 0)
    totals = sum_in_threads(lambda b: _count_grid(pred, truth, *b, step), blocks, scheduler)
    tp, fp, fn, tn = (int(round(v)) for v in totals)
    return Confusion(tp, fp, fn, tn)


def evaluate_at(store, pred_m, truth_m, slide, resolution, roi, t0) -> dict[str, Any]:
    """:func:`evaluate` at a working resolution: counts in its pixels."""
    from .resolution import ResolutionError, as_slide, map_roi, resolve

    if slide is None:
        raise ResolutionError(
            f"{store.path}: comparing at {resolution.describe()} needs the slide (its "
            "pyramid and um/px); the one recorded in the prediction is missing. Give it "
            "with --image."
        )
    sl = as_slide(slide)
    res = resolve(sl, resolution)
    y0, x0, y1, x1 = roi
    ry0, rx0, ry1, rx1 = map_roi((y0, x0, y1, x1), res)
    d = res.downsample
    oy, ox = store.offset
    # The prediction's pixels are relative to its own origin: shift to level 0.
    pred_abs = _Shifted(pred_m, (-oy, -ox))
    grid = {"origin": (ry0 * d, rx0 * d), "shape": (ry1 - ry0, rx1 - rx0), "step": d}
    c = confusion_grid(pred_abs, truth_m, **grid)
    out: dict[str, Any] = {**scores(c), **c.as_dict(), "pixels": c.total}
    out.update(
        pred_downsample=store.downsample,
        truth_downsample=truth_m.downsample,
        resolution=res.to_dict(),
        otsu_dice=None,
        otsu_iou=None,
        otsu_threshold=None,
        slide=str(slide) if isinstance(slide, str | Path) else None,
    )
    otsu = otsu_tissue_mask(sl)
    co = confusion_grid(otsu, truth_m, **grid)
    out.update(
        otsu_dice=dice(co),
        otsu_iou=iou(co),
        otsu_threshold=float(otsu.threshold),  # type: ignore[attr-defined]
        otsu_downsample=otsu.downsample,
    )
    out["seconds"] = time.perf_counter() - t0
    return out
