"""Segmentation metrics: scoring a stored prediction (``evaluate``) beside Otsu's baseline.

The pieces live in their own modules and are re-exported here under their
historical names: level-0 counts and scores in :mod:`.confusion`, the Otsu
baseline in :mod:`.otsu`, counts at a working resolution in
:mod:`.metrics_grid`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .confusion import (
    DEFAULT_CHUNK,
    Confusion,
    _Shifted,
    as_mask,
    confusion,
    dice,
    iou,
    precision,
    recall,
    scores,
    sum_in_threads,
)
from .errors import GigapixelError
from .masks import AnnotationMask, MaskError, infer_downsample
from .otsu import OTSU_MAX_PIXELS, otsu_threshold, otsu_tissue_mask

__all__ = [
    "DEFAULT_CHUNK",
    "OTSU_MAX_PIXELS",
    "Confusion",
    "as_mask",
    "confusion",
    "dice",
    "evaluate",
    "iou",
    "otsu_threshold",
    "otsu_tissue_mask",
    "precision",
    "recall",
    "score_prediction",
    "scores",
    "sum_in_threads",
]


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
    read from its own finest level (the model's output stride), never a
    resampled pyramid level, and at level 0 as its probability's threshold
    line (:class:`.mask_refine.RefinedMask`), so both give the same numbers.

    Parameters
    ----------
    store
        An open :class:`~.prediction_store.PredictionStore`.
    truth
        The ground truth over the whole slide (any level).
    """
    from .mask_refine import refined_mask
    from .prediction_store import reading_prediction

    # The predicted region in level-0 pixels: its origin (the ROI's, rounded
    # to the working resolution's pixels, maybe fractional) and its extent.
    oy, ox = store.offset
    truth_r = _Shifted(truth, (oy, ox)) if (oy, ox) != (0, 0) else truth
    # A damaged chunk of the store fails as one line; the truth's own read
    # errors are MaskErrors already and pass through.
    with reading_prediction(store.path):
        return confusion(refined_mask(store), truth_r, shape=store.region_shape, chunk=chunk)


def _check_slide(slide: Any, slide_shape: tuple[int, ...], pred_path: str | Path) -> None:
    """Refuse a slide other than the one the prediction was made on (by its size).

    Otsu's baseline and a ``--mpp``/``--level`` comparison read the slide; one
    of another size would give a meaningless baseline without a word.
    """
    if isinstance(slide, str | Path):
        from .slide import open_slide

        with open_slide(str(slide)) as s:
            shape = tuple(int(v) for v in s.shape[:2])
    elif hasattr(slide, "shape"):  # a Slide, or one RGB array
        shape = tuple(int(v) for v in slide.shape[:2])
    else:  # a list of levels, level 0 first
        shape = tuple(int(v) for v in slide[0].shape[:2])
    if shape != tuple(slide_shape):
        raise GigapixelError(
            f"{slide}: a {shape[0]} x {shape[1]} px slide, but {pred_path} was predicted on "
            f"a {slide_shape[0]} x {slide_shape[1]} px one. Give the slide it was made on "
            "(or leave --image out: the prediction records its slide's path)."
        )


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
    if slide is not None:
        _check_slide(slide, slide_shape, pred_path)
    if resolution is not None:
        from .mask_refine import refined_mask
        from .metrics_grid import evaluate_at

        return evaluate_at(
            store, refined_mask(store), truth_m, slide, resolution, (y0, x0, y1, x1), t0
        )
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
