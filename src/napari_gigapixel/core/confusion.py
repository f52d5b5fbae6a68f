"""Level-0 confusion counts of a binary segmentation, chunk by chunk.

A predicted mask and a ground-truth mask may live at different pyramid levels
(the prediction at the model's output stride, the truth at any annotation
level). :func:`confusion` counts level-0 pixels without ever building a
full-resolution array: it walks level-0 tiles aligned to a common stride and
reads both masks per tile through a nearest-neighbour view
(:meth:`AnnotationMask.read_window`). When both downsamples are integers, a
tile is sampled every ``gcd`` level-0 pixels and each sample counts for the
block it stands for; that is exact, since such a block lies inside one pixel of
either mask.

The scores (:func:`dice`, :func:`iou`, ...) and the thread-pool summation
(:func:`sum_in_threads`) live here too; :mod:`.metrics` re-exports them all.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .masks import AnnotationMask, MaskError

#: Level-0 side of the tiles :func:`confusion` counts at a time.
DEFAULT_CHUNK = 4096


@dataclass(frozen=True)
class Confusion:
    """Pixel counts of a binary segmentation against its ground truth."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _counts(c: Confusion | dict[str, int]) -> tuple[int, int, int, int]:
    if isinstance(c, Confusion):
        return c.tp, c.fp, c.fn, c.tn
    return int(c["tp"]), int(c["fp"]), int(c["fn"]), int(c.get("tn", 0))


def dice(c: Confusion | dict[str, int]) -> float:
    """Dice = 2 TP / (2 TP + FP + FN); 1.0 when prediction and truth are both empty."""
    tp, fp, fn, _ = _counts(c)
    den = 2 * tp + fp + fn
    return 1.0 if den == 0 else 2.0 * tp / den


def iou(c: Confusion | dict[str, int]) -> float:
    """IoU (Jaccard) = TP / (TP + FP + FN); 1.0 when both are empty."""
    tp, fp, fn, _ = _counts(c)
    den = tp + fp + fn
    return 1.0 if den == 0 else tp / den


def precision(c: Confusion | dict[str, int]) -> float:
    """TP / (TP + FP). With no predicted tissue: 1.0 if there was none to find, else 0.0."""
    tp, fp, fn, _ = _counts(c)
    if tp + fp == 0:
        return 1.0 if fn == 0 else 0.0
    return tp / (tp + fp)


def recall(c: Confusion | dict[str, int]) -> float:
    """TP / (TP + FN). With no tissue in the truth: 1.0 if none was predicted, else 0.0."""
    tp, fp, fn, _ = _counts(c)
    if tp + fn == 0:
        return 1.0 if fp == 0 else 0.0
    return tp / (tp + fn)


def scores(c: Confusion | dict[str, int]) -> dict[str, float]:
    """Dice, IoU, precision and recall of a confusion in one dictionary."""
    return {"dice": dice(c), "iou": iou(c), "precision": precision(c), "recall": recall(c)}


class _Shifted:
    """A mask read with a level-0 offset (a prediction made on a region of interest)."""

    def __init__(self, mask: AnnotationMask, offset: tuple[int, int]) -> None:
        self.mask = mask
        self.offset = offset
        self.downsample = mask.downsample

    def read_window(self, y0: int, y1: int, x0: int, x1: int, stride: int = 1) -> np.ndarray:
        oy, ox = self.offset
        return self.mask.read_window(y0 + oy, y1 + oy, x0 + ox, x1 + ox, stride)

    def read_grid(self, y0: float, x0: float, ny: int, nx: int, step: float) -> np.ndarray:
        oy, ox = self.offset
        return self.mask.read_grid(y0 + oy, x0 + ox, ny, nx, step)

    def targets_and_weights(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.mask.targets_and_weights(labels)


def as_mask(obj: Any, *, downsample: float | None = None, name: str = "mask") -> AnnotationMask:
    """Wrap a 2-D array (numpy, dask, zarr) as a dense :class:`AnnotationMask`."""
    from .mask_refine import RefinedMask

    if isinstance(obj, AnnotationMask | _Shifted | RefinedMask):
        return obj  # type: ignore[return-value]
    return AnnotationMask(obj, downsample=float(downsample or 1.0), kind="dense", name=name)


def _common_stride(d1: float, d2: float) -> int:
    """Largest level-0 stride that samples both masks exactly (1 if not integers)."""
    i1, i2 = round(d1), round(d2)
    if i1 >= 1 and i2 >= 1 and abs(d1 - i1) < 1e-9 and abs(d2 - i2) < 1e-9:
        return math.gcd(i1, i2)
    return 1


def _block_weights(a0: int, a1: int, stride: int) -> np.ndarray:
    """Number of level-0 pixels each stride-sample of [a0, a1) stands for."""
    starts = np.arange(a0, a1, stride)
    return (np.minimum(starts + stride, a1) - starts).astype(np.float64)


def _count_tile(pred, truth, y0: int, y1: int, x0: int, x1: int, stride: int) -> np.ndarray:
    lp = pred.read_window(y0, y1, x0, x1, stride)
    lt = truth.read_window(y0, y1, x0, x1, stride)
    t, w = truth.targets_and_weights(lt)
    if stride == 1:
        # Every sample is one pixel: integer counts of boolean maps, without the
        # float64 copies the block weights need (a level-0 prediction, such as
        # a refined one, is counted at every pixel).
        pb, tb, wb = lp > 0, t > 0, w > 0
        n_w = int(np.count_nonzero(wb))
        n_p = int(np.count_nonzero(pb & wb))
        n_t = int(np.count_nonzero(tb & wb))
        tp_ = int(np.count_nonzero(pb & tb & wb))
        return np.array([tp_, n_p - tp_, n_t - tp_, n_w - n_p - n_t + tp_], dtype=np.float64)
    p = (lp > 0).astype(np.float64)
    t = t.astype(np.float64)
    w = w.astype(np.float64)
    wy = _block_weights(y0, y1, stride)
    wx = _block_weights(x0, x1, stride)

    def total(a: np.ndarray) -> float:
        # Row weights @ a @ column weights: every sample counts for its block.
        return float(wy @ a @ wx)

    pw, tw = p * w, t * w
    tp = total(pw * t)
    fp = total(pw) - tp
    fn = total(tw) - tp
    tn = total(w) - tp - fp - fn
    return np.array([tp, fp, fn, tn])


def sum_in_threads(count: Any, items: list[Any], scheduler: str = "threads") -> np.ndarray:
    """``sum(count(item) for item in items)``, the items counted in a thread pool.

    Each count reads only its own windows of the masks. (Not dask.delayed: it
    unpacks dataclass arguments, so the masks' whole dask arrays became inputs
    of every task and a 1 Gpx truth was computed whole: 24 GB resident.)
    ``scheduler="sync"`` counts in this thread.
    """
    from concurrent.futures import ThreadPoolExecutor

    workers = 1 if scheduler == "sync" else max(1, min(len(items), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return np.sum(list(pool.map(count, items)), axis=0)


def confusion(
    pred: Any,
    truth: Any,
    *,
    shape: tuple[int, int] | None = None,
    pred_downsample: float | None = None,
    truth_downsample: float | None = None,
    chunk: int = DEFAULT_CHUNK,
    scheduler: str = "threads",
) -> Confusion:
    """Count TP, FP, FN, TN over level-0 pixels, tile by tile.

    Parameters
    ----------
    pred
        Predicted mask: an :class:`AnnotationMask` or a 2-D array (nonzero =
        tissue) at level ``pred_downsample``.
    truth
        Ground truth: an :class:`AnnotationMask` (dense, or scribbles whose
        unlabelled pixels are left out of every count) or a 2-D array at level
        ``truth_downsample``.
    shape
        Level-0 (height, width) to count over; default the truth's extent.
    pred_downsample, truth_downsample
        Level-0 pixels per mask pixel, for plain arrays (default 1).
    chunk
        Level-0 side of the tiles counted at a time (memory knob).
    scheduler
        ``"threads"`` (a thread pool, :func:`sum_in_threads`) or ``"sync"``.

    Returns
    -------
    Confusion
        Integer counts of level-0 pixels.
    """
    pred_m = as_mask(pred, downsample=pred_downsample, name="prediction")
    truth_m = as_mask(truth, downsample=truth_downsample, name="truth")
    if shape is None:
        if not isinstance(truth_m, AnnotationMask):
            raise MaskError("confusion: give the level-0 shape to count over.")
        shape = truth_m.level0_shape()
    h, w = int(shape[0]), int(shape[1])
    stride = _common_stride(pred_m.downsample, truth_m.downsample)
    step = max(stride, (int(chunk) // stride) * stride)
    windows = [
        (y0, min(y0 + step, h), x0, min(x0 + step, w))
        for y0 in range(0, h, step)
        for x0 in range(0, w, step)
    ]
    if not windows:
        return Confusion(0, 0, 0, 0)
    totals = sum_in_threads(
        lambda win: _count_tile(pred_m, truth_m, *win, stride), windows, scheduler
    )
    tp, fp, fn, tn = (int(round(v)) for v in totals)
    return Confusion(tp, fp, fn, tn)
