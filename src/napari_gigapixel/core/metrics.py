"""Segmentation metrics at full resolution, chunk by chunk, and an Otsu baseline.

A predicted mask and a ground-truth mask may live at different pyramid levels
(the prediction at the model's output stride, the truth at any annotation
level). :func:`confusion` counts level-0 pixels without ever building a
full-resolution array: it walks level-0 tiles aligned to a common stride and
reads both masks per tile through a nearest-neighbour view
(:meth:`AnnotationMask.read_window`). When both downsamples are integers, a
tile is sampled every ``gcd`` level-0 pixels and each sample counts for the
block it stands for; that is exact, since such a block lies inside one pixel of
either mask.

The classic baseline, :func:`otsu_tissue_mask`, thresholds a low pyramid level
with Otsu's method (tissue is darker, or more saturated, than glass).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GigapixelError
from .masks import AnnotationMask, MaskError, infer_downsample

#: Level-0 side of the tiles :func:`confusion` counts at a time.
DEFAULT_CHUNK = 4096
#: :func:`otsu_tissue_mask` picks the finest pyramid level under this many pixels.
OTSU_MAX_PIXELS = 4_000_000


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
    if isinstance(obj, AnnotationMask | _Shifted):
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
        Dask scheduler for the per-tile counts.

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


def otsu_threshold(values: Any, bins: int = 256) -> float:
    """Otsu's threshold: the value ``t`` maximising between-class variance.

    ``values > t`` is the upper class. uint8 input is histogrammed exactly
    (one bin per value, like scikit-image); other dtypes in ``bins`` bins.
    """
    v = np.asarray(values).ravel()
    if v.size == 0:
        raise GigapixelError("otsu_threshold: no values to threshold.")
    if v.dtype == np.uint8:
        counts = np.bincount(v, minlength=256).astype(np.float64)
        centers = np.arange(256, dtype=np.float64)
    else:
        v = v.astype(np.float64)
        lo, hi = float(v.min()), float(v.max())
        if lo == hi:
            return lo
        counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
        counts = counts.astype(np.float64)
        centers = (edges[:-1] + edges[1:]) / 2
    nz = np.flatnonzero(counts)
    if nz.size <= 1:  # one value: nothing to split
        return float(centers[nz[0]]) if nz.size else 0.0
    w0 = np.cumsum(counts)
    w1 = np.cumsum(counts[::-1])[::-1]
    m0 = np.cumsum(counts * centers) / np.maximum(w0, 1e-300)
    m1 = (np.cumsum((counts * centers)[::-1]) / np.maximum(w1[::-1], 1e-300))[::-1]
    between = w0[:-1] * w1[1:] * (m0[:-1] - m1[1:]) ** 2
    return float(centers[int(np.argmax(between))])


def _levels_of(slide_or_levels: Any) -> tuple[list[Any], list[float], str]:
    obj = slide_or_levels
    if hasattr(obj, "levels"):
        return list(obj.levels), [float(d) for d in obj.downsamples], str(obj.path)
    if isinstance(obj, list | tuple):
        levels = list(obj)
    else:
        levels = [obj]
    base = levels[0].shape[:2]
    downs = [
        infer_downsample(lv.shape[:2], base, name=f"level {i}", min_side=1)
        for i, lv in enumerate(levels)
    ]
    return levels, downs, "image"


def _signal(rgb: np.ndarray, channel: str) -> tuple[np.ndarray, bool]:
    """(uint8 signal, tissue_is_high) for grayscale or saturation."""
    rgb = rgb.astype(np.float32)
    if channel == "gray":
        g = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return np.clip(np.rint(g), 0, 255).astype(np.uint8), False
    if channel == "saturation":
        mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
        s = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0) * 255
        return np.clip(np.rint(s), 0, 255).astype(np.uint8), True
    raise GigapixelError(
        f"otsu_tissue_mask: channel must be 'gray' or 'saturation', not {channel!r}."
    )


def otsu_tissue_mask(
    slide_or_levels: Any, level: int | None = None, *, channel: str = "gray"
) -> AnnotationMask:
    """The classic tissue detector: Otsu's threshold on a low pyramid level.

    Parameters
    ----------
    slide_or_levels
        A slide path, a ``Slide`` (``.levels``/``.downsamples``), a list of
        ``(H, W, 3)`` levels (level 0 first), or one RGB array.
    level
        Pyramid level to threshold; default the finest one under
        ``OTSU_MAX_PIXELS`` pixels (a coarser sampling of the coarsest level
        when the slide has no such level).
    channel
        ``"gray"`` (tissue darker than glass) or ``"saturation"`` (tissue more
        saturated).

    Returns
    -------
    AnnotationMask
        uint8 0/1 at that level's downsample.
    """
    if isinstance(slide_or_levels, str | Path):
        from .slide import open_slide

        with open_slide(str(slide_or_levels)) as slide:  # closed once thresholded
            return otsu_tissue_mask(slide, level, channel=channel)
    levels, downs, name = _levels_of(slide_or_levels)
    k = 1
    if level is None:
        small = [i for i, lv in enumerate(levels) if lv.shape[0] * lv.shape[1] <= OTSU_MAX_PIXELS]
        level = small[0] if small else len(levels) - 1
        px = levels[level].shape[0] * levels[level].shape[1]
        k = math.ceil(math.sqrt(px / OTSU_MAX_PIXELS))
    if not 0 <= level < len(levels):
        raise GigapixelError(f"{name}: no pyramid level {level} (it has {len(levels)}).")
    arr, ds = levels[level], downs[level]
    if k > 1:  # no small level: sample block centres of the coarsest one
        arr, ds = arr[k // 2 :: k, k // 2 :: k], ds * k
    sig, high = _signal(np.asarray(arr)[..., :3], channel)
    t = otsu_threshold(sig)
    tissue = sig > t if high else sig <= t
    mask = AnnotationMask(tissue.astype(np.uint8), downsample=ds, kind="dense", name="otsu")
    mask.threshold = t  # type: ignore[attr-defined]
    return mask


def _load_truth(truth: Any, slide_shape: tuple[int, int]) -> AnnotationMask:
    if isinstance(truth, AnnotationMask):
        return truth
    if isinstance(truth, str | Path):
        if not Path(truth).exists():
            raise MaskError(f"{truth}: no such mask file. Check the path.")
        from .mask_io import load_mask

        return load_mask(str(truth), slide_shape)
    arr = truth
    return AnnotationMask(
        arr, downsample=infer_downsample(arr.shape[:2], slide_shape, name="truth"), name="truth"
    )


def score_prediction(
    store: Any, truth: AnnotationMask, *, chunk: int = DEFAULT_CHUNK
) -> Confusion:
    """Level-0 confusion of a stored prediction's region against ``truth``.

    The one count behind ``evaluate`` and the Review widget: the prediction is
    read at its own finest level (the model's output stride), never a
    resampled pyramid level, so both give the same numbers.

    Parameters
    ----------
    store
        An open :class:`~.prediction_store.PredictionStore`.
    truth
        The ground truth over the whole slide (any level).
    """
    # The predicted region in level-0 pixels: its origin (the ROI's, rounded
    # to the working resolution's pixels, maybe fractional) and its extent.
    oy, ox = store.offset
    truth_r = _Shifted(truth, (oy, ox)) if (oy, ox) != (0, 0) else truth
    pred_m = AnnotationMask(store.mask[0], downsample=store.downsample, name=str(store.path))
    return confusion(pred_m, truth_r, shape=store.region_shape, chunk=chunk)


def evaluate(
    pred_path: str | Path,
    truth: Any,
    slide: Any = None,
    *,
    chunk: int = DEFAULT_CHUNK,
    resolution: Any = None,
) -> dict[str, Any]:
    """Score a stored prediction against a ground-truth mask, beside Otsu's baseline.

    Parameters
    ----------
    pred_path
        A prediction written by :func:`napari_gigapixel.core.inference.predict`.
    truth
        Mask path (any level, inferred), :class:`AnnotationMask` or 2-D array.
    slide
        The slide (path, ``Slide`` or levels) for the Otsu baseline; default
        the slide path recorded in the prediction (skipped if unavailable).
    chunk
        Level-0 tile side for the counts.
    resolution
        A :class:`.resolution.Resolution` to compare at (needs the slide):
        each pixel of that resolution counts once, both masks read at its
        centre. Default: level-0 pixels.

    Returns
    -------
    dict
        ``dice``, ``iou``, ``precision``, ``recall``, the counts, and
        ``otsu_dice``/``otsu_iou``/``otsu_threshold`` (None without a slide);
        with a resolution, ``resolution`` (the resolved one) and counts in its
        pixels.
    """
    from .prediction_store import open_prediction

    t0 = time.perf_counter()
    store = open_prediction(pred_path)
    meta = store.metadata
    slide_shape = tuple(int(v) for v in meta["slide_shape"])
    y0, x0, y1, x1 = meta.get("roi") or (0, 0, slide_shape[0], slide_shape[1])
    region = (y1 - y0, x1 - x0)
    truth_m = _load_truth(truth, slide_shape)
    truth_r = _Shifted(truth_m, (y0, x0)) if (y0, x0) != (0, 0) else truth_m
    if slide is None:
        path = meta.get("slide_path")
        slide = path if path and Path(path).exists() else None
    if resolution is not None:
        from .metrics_grid import evaluate_at

        pred_m = AnnotationMask(store.mask[0], downsample=store.downsample, name=str(pred_path))
        return evaluate_at(store, pred_m, truth_m, slide, resolution, (y0, x0, y1, x1), t0)
    c = score_prediction(store, truth_m, chunk=chunk)
    out: dict[str, Any] = {**scores(c), **c.as_dict(), "pixels": c.total}
    out.update(
        pred_downsample=store.downsample,
        truth_downsample=truth_m.downsample,
        otsu_dice=None,
        otsu_iou=None,
        otsu_threshold=None,
        slide=None,
    )
    if slide is not None:
        otsu = otsu_tissue_mask(slide)
        otsu_r = _Shifted(otsu, (y0, x0)) if (y0, x0) != (0, 0) else otsu
        co = confusion(otsu_r, truth_r, shape=region, chunk=chunk)
        out.update(
            otsu_dice=dice(co),
            otsu_iou=iou(co),
            otsu_threshold=float(otsu.threshold),  # type: ignore[attr-defined]
            otsu_downsample=otsu.downsample,
            slide=str(slide) if isinstance(slide, str | Path) else None,
        )
    out["seconds"] = time.perf_counter() - t0
    return out
