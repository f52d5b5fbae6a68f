"""Validation while training: held-out regions scored with the exact tiled forward pass.

A validation region is a separate slide (``TrainConfig.val_images`` /
``val_masks``) or a rectangle of a training slide (``TrainConfig.val_roi``,
level-0 pixels). A rectangle of a training slide is mapped to the working
resolution (:func:`.resolution.map_roi`, outwards), snapped outwards to whole
output pixels of that slide's output grid (:func:`._train_data.snap_rect`) and
its labels are left out of the training loss (weight 0,
:meth:`.ImageData.exclude`), so the training step is exactly the step on the
other pixels and the scored pixels are exactly the left-out ones, at any
resolution. (Their *pixels* still feed the receptive field of neighbouring
training pixels, as any context does.)

Every ``val_every`` steps the model after the step is scored over every
validation region with the trainer's own forward pass
(:func:`.image_step.iter_image_step` with ``forward_only``), and the figures
are pooled over all regions as one image: hard Dice from the summed
confusion counts, soft Dice and the training loss from the summed sums.
The best-checkpoint bookkeeping (:class:`BestTracker`, ``<out>.best.keras``),
the per-step hook and the result figures are in :mod:`._val_best` (re-exported
here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._train_augment import SlideView
from ._val_best import BestTracker as BestTracker
from ._val_best import best_path as best_path
from ._val_best import result_figures as result_figures
from ._val_best import validate_hook as validate_hook
from .events import Progress
from .losses import dice_loss_from_sums, hard_dice, pixel_term, uses_dice
from .masks import MaskError
from .train_config import TrainConfig, TrainConfigError, _describe


def val_rois(cfg: TrainConfig) -> list[Any]:
    """Per training image, ``None`` or the validation rectangle ``(y0, x0, y1, x1)``."""
    n = len(cfg.images)
    roi = cfg.val_roi
    if roi is None:
        return [None] * n
    if isinstance(roi, (list, tuple)) and len(roi) == 4 and all(_is_int(v) for v in roi):
        return [tuple(int(v) for v in roi)] * n
    if isinstance(roi, (list, tuple)) and len(roi) == n:
        return [None if r is None else tuple(int(v) for v in r) for r in roi]
    raise TrainConfigError(
        f"val_roi: give one rectangle (y0, x0, y1, x1) for every training image or a list "
        f"of one per image (None where there is none); got {roi!r}."
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def describe_validation(cfg: TrainConfig) -> str | None:
    """What is validated on, as text (None: no validation); stored in the model's metadata."""
    parts = [f"{_describe(i)}|{_describe(m)}" for i, m in zip(cfg.val_images, cfg.val_masks)]
    parts += [f"image {i} roi {r}" for i, r in enumerate(val_rois(cfg)) if r is not None]
    return "; ".join(parts) or None


def _balance_of(img: Any) -> Any:
    """The white-balance table of one slide (its own glass colour)."""
    from .input_norm import balance_table, white_point

    return balance_table(white_point(img))


def build_validation(
    cfg: TrainConfig,
    datas: list[Any],
    output_stride: int,
    cache_in_memory: Callable[[int], bool],
    resolution: Any = None,
    balanced: bool = False,
) -> Iterator[Any]:
    """Build the validation regions; leave ROI regions out of the training images.

    Validation slides are read at the training's working ``resolution``; a
    validation ROI is snapped to whole output pixels of its training image at
    that resolution. With ``balanced``, each slide is white-balanced by its
    own glass colour, as the training slides are.

    A generator (it yields ``Message`` events) returning the list of
    validation :class:`._train_data.ImageData`; the caller closes them.

    Raises
    ------
    GigapixelError
        A validation slide/mask that cannot be used, a ROI outside its slide,
        or a validation ROI that leaves a training image without labels.
    """
    from .events import Message

    out: list[Any] = []
    kw = dict(
        output_stride=output_stride,
        cache_in_memory=cache_in_memory,
        cache_dir=cfg.cache_dir,
        resolution=resolution,
        kind=cfg.mask_kind,
        balanced=balanced,
    )
    try:
        for i, (img, msk) in enumerate(zip(cfg.val_images, cfg.val_masks)):
            yield Message(f"decoding validation image {i + 1}: {_describe(img)}")
            out.append(build_region(img, msk, None, **kw))
        for i, roi in enumerate(val_rois(cfg)):
            if roi is None:
                continue
            d = datas[i]
            rrect, res = val_roi_rect(cfg.images[i], roi, d, output_stride, resolution)
            out.append(build_region(cfg.images[i], cfg.masks[i], rrect, **kw))
            yield Message(exclude_val_roi(d, roi, rrect, res, output_stride))
    except BaseException:
        for v in out:
            v.close()
        raise
    return out


def build_region(
    img: Any,
    msk: Any,
    rrect: tuple[int, int, int, int] | None,
    *,
    kind: str | None,
    output_stride: int,
    cache_in_memory: Callable[[int], bool],
    cache_dir: str | None,
    resolution: Any,
    balanced: bool,
) -> Any:
    """One validation region: a whole slide (``rrect`` None) or a snapped rectangle of one.

    The unit both trainers build (the distributed one on a worker): with
    ``balanced``, the slide is white-balanced by its own glass colour.
    """
    from . import _train_data as td

    return td.build_image_data(
        img,
        msk,
        roi=None,
        res_roi=rrect,
        kind=kind,
        output_stride=output_stride,
        cache_in_memory=cache_in_memory,
        cache_dir=cache_dir,
        resolution=resolution,
        balance=_balance_of(img) if balanced else None,
    )


def val_roi_rect(
    src: Any, roi: Any, d: Any, output_stride: int, resolution: Any
) -> tuple[tuple[int, int, int, int], Any]:
    """A training image's validation ROI in pixels of the working resolution, snapped.

    ``src`` is the training slide, ``d`` its decoded training region
    (:class:`._train_data.ImageData`: its origin fixes the output grid).
    Returns the rectangle and the resolution resolved on the slide.
    """
    from . import _train_data as td

    slide_shape, res = _slide_resolution(src, resolution)
    rect = td.check_roi(roi, slide_shape, f"{d.name} (validation ROI)")
    return snap_val_roi(rect, res, d.origin_px, output_stride), res


def exclude_val_roi(
    d: Any, roi: Any, rrect: tuple[int, int, int, int], res: Any, output_stride: int
) -> str:
    """Leave a validation ROI's labels out of training image ``d``; returns the message.

    Raises
    ------
    MaskError
        When the ROI held all the labelled tissue of the training region.
    """
    left = d.exclude(rrect, output_stride)
    if d.n_labelled <= 0 or (d.kind == "dense" and d.n_positive <= 0):
        raise MaskError(
            f"{d.name}: the validation ROI {tuple(roi)} covers all the labelled "
            "tissue of this training region; choose a smaller validation ROI."
        )
    where = ",".join(map(str, rrect))
    if res.downsample != 1.0:
        where += f" px of {res.describe()}"
    return (
        f"validation ROI {where} of {d.name}: "
        f"{int(left)} labelled output pixels left out of training"
    )


def snap_val_roi(
    rect: tuple[int, int, int, int], res: Any, origin: tuple[int, int], output_stride: int
) -> tuple[int, int, int, int]:
    """A level-0 validation rectangle in pixels of the working resolution, snapped.

    ``rect`` ``(y0, x0, y1, x1)`` is mapped outwards to whole pixels of the
    resolved resolution ``res`` (:func:`.resolution.map_roi`), then outwards
    to whole output pixels of the training image's grid, which starts at
    ``origin`` (:attr:`._train_data.ImageData.origin_px`) and steps by
    ``output_stride`` pixels; clipped to the resolution's extent.
    """
    from ._train_data import snap_rect
    from .resolution import map_roi

    return snap_rect(map_roi(rect, res), origin, output_stride, tuple(res.shape))


def _slide_resolution(src: Any, resolution: Any) -> tuple[tuple[int, int], Any]:
    """Level-0 shape of a training slide and the working resolution resolved on it."""
    from ._train_data import open_image_source
    from .resolution import Resolution, as_slide, resolve

    arr, _, close = open_image_source(src)
    try:
        res = resolve(as_slide(arr), resolution or Resolution())
        level0 = arr.levels[0] if hasattr(arr, "levels") else arr
        return (int(level0.shape[0]), int(level0.shape[1])), res
    finally:
        close()


@dataclass
class ValidationScore:
    """Figures of one validation pass (pooled over the regions as one image)."""

    dice: float
    soft_dice: float
    loss: float


def iter_validate(
    step_fn: Any,
    vdatas: list[Any],
    grids: list[list[Any]],
    geometry: Any,
    loss: str,
    preview_factor: int,
    *,
    stop: Any = None,
    pool: Any = None,
    label: str = "",
) -> Iterator[Progress]:
    """Score the model on the validation regions (a generator of ``Progress``).

    Returns a :class:`ValidationScore` (``score = yield from ...``); raises
    ``JobStopped`` between tiles when ``stop`` is set.
    """
    sums = []
    for d, grid in zip(vdatas, grids):
        res = yield from iter_region_sums(
            step_fn, d, grid, geometry, loss, preview_factor, stop=stop, pool=pool, label=label
        )
        sums.append(res)
    return pool_scores(sums, loss)


def iter_region_sums(
    step_fn: Any,
    d: Any,
    grid: list[Any],
    geometry: Any,
    loss: str,
    preview_factor: int,
    **kw: Any,
) -> Iterator[Progress]:
    """One region's forward sums (the trainer's forward pass, no augmentation).

    A generator of ``Progress`` (``kw``: ``stop``, ``pool``, ``label``)
    returning ``(stats, n_labelled)``; the distributed trainer runs it on a
    worker and pools the regions with :func:`pool_scores`, as here.
    """
    from .image_step import iter_image_step

    res = yield from iter_image_step(
        step_fn,
        SlideView(d, geometry.output_stride, (0, False, 1.0, 0.0)),
        grid,
        geometry,
        loss,
        d.n_labelled,
        preview_factor,
        forward_only=True,
        stage="validation",
        **kw,
    )
    return res.stats, float(d.n_labelled)


def pool_scores(region_sums: list[tuple[np.ndarray, float]], loss: str) -> ValidationScore:
    """The regions' figures pooled as one image (sums added in region order, float64)."""
    sums = np.zeros(8)
    n_lab = 0.0
    for stats, n in region_sums:
        sums += stats
        n_lab += n
    soft = 1.0 - dice_loss_from_sums(sums[1], sums[2], sums[3])
    value = 0.0
    if pixel_term(loss):
        value += sums[0] / max(n_lab, 1.0)
    if uses_dice(loss):
        value += 1.0 - soft
    return ValidationScore(
        dice=hard_dice(sums[4], sums[5], sums[6]), soft_dice=float(soft), loss=float(value)
    )
