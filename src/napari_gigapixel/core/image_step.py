"""One image's exact whole-image gradient, computed tile by tile.

:func:`iter_image_step` is the heart of the streamed trainer: pixel-separable
losses add up over tiles; soft Dice takes a forward-only pass for its global
sums, then per-tile surrogate gradients (``DESIGN.md``, "the central idea").
Tile gradients and sums are accumulated in float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._train_augment import SlideView as _View
from .events import JobStopped, Progress, StopFlag, stop_requested
from .geometry import Geometry
from .losses import (
    dice_grad_coefficients,
    dice_loss_from_sums,
    hard_dice,
    pixel_term,
    uses_dice,
)
from .tiling import Tile


@dataclass
class ImageStep:
    """What one image contributed to a step."""

    grads: list[np.ndarray]
    loss: float
    dice: float
    soft_dice: float
    preview: np.ndarray
    #: Float64 sums over the image (order of :data:`._backend.STATS`).
    stats: np.ndarray | None = None


def _tile_inputs(view: _View, tile: Tile, os_: int):
    """Window pixels, core labels and the core's offset in the window's output."""
    h, w = view.shape
    vy0, vy1, vx0, vx1 = tile.valid_core((h, w))
    oy0, ox0 = vy0 // os_, vx0 // os_
    oy1, ox1 = -(-vy1 // os_), -(-vx1 // os_)
    x = view.window(tile.window)
    if oy1 <= oy0 or ox1 <= ox0:
        return None
    y, wgt = view.labels(oy0, oy1, ox0, ox1)
    return (
        x,
        y,
        wgt,
        (tile.core[0] - tile.window[0]) // os_,
        (tile.core[2] - tile.window[2]) // os_,
    )


def iter_image_step(
    step_fn: Any,
    view: _View,
    tiles: list[Tile],
    geometry: Geometry,
    loss: str,
    n_labelled: float,
    preview_factor: int,
    *,
    stop: StopFlag | None = None,
    pool: ThreadPoolExecutor | None = None,
    label: str = "",
    forward_only: bool = False,
    stage: str = "tiles",
) -> Iterator[Progress]:
    """Exact whole-image loss gradient of one image, computed tile by tile.

    A generator: yields ``Progress("tiles", done, total)`` after every tile
    and returns the :class:`ImageStep` (``result = yield from ...``).

    Parameters
    ----------
    step_fn
        A :class:`._backend.TileStep` of the model.
    view
        The (augmented) image and labels.
    tiles
        :func:`.tiling.tile_grid` of the image with the model's halo and stride.
    loss
        One of :data:`.losses.LOSSES` (``step_fn`` must compute the same).
    n_labelled
        Number of labelled output pixels of the image (BCE is their mean).
    label
        Message of the progress events.
    forward_only
        Score only (validation): one forward pass over the tiles, no
        gradient; the loss, Dice and sums are those of the whole image.
    stage
        Stage name of the progress events.

    Raises
    ------
    JobStopped
        When ``stop`` is set between two tiles (nothing was applied).
    """
    os_ = geometry.output_stride
    h, w = view.shape
    ho, wo = -(-h // os_), -(-w // os_)
    f = preview_factor
    preview = np.zeros((-(-ho // f), -(-wo // f)), np.float32)
    use_dice = uses_dice(loss)
    c_bce = 1.0 / n_labelled if pixel_term(loss) else 0.0
    one_tile = len(tiles) == 1
    if forward_only:
        passes = ["forward"]
    else:
        passes = ["grad"] if one_tile or not use_dice else ["forward", "grad"]
    total = len(tiles) * len(passes)
    done = 0
    grads: list[np.ndarray] | None = None
    stats_f = np.zeros(8)
    stats_g = np.zeros(8)
    coeff = (0.0, 0.0)
    own_pool = pool is None
    pool = pool or ThreadPoolExecutor(1)
    # A turned slide's step: the mirrored pixels with transposed kernels.
    try:
        with step_fn.transposed(view.transposed):
            for which in passes:
                if which == "grad" and use_dice and not one_tile:
                    coeff = dice_grad_coefficients(stats_f[1], stats_f[2], stats_f[3])
                # Read the next tile while the current one computes (TF drops the GIL).
                pending = pool.submit(_tile_inputs, view, tiles[0], os_)
                for i, tile in enumerate(tiles):
                    if stop_requested(stop):
                        raise JobStopped()
                    inputs = pending.result()
                    if i + 1 < len(tiles):
                        pending = pool.submit(_tile_inputs, view, tiles[i + 1], os_)
                    if inputs is not None:
                        x, y, wgt, oy, ox = inputs
                        if which == "forward":
                            r = step_fn.forward(x, y, wgt, oy, ox)
                            stats_f += r.stats
                        else:
                            r = step_fn.gradient(
                                x,
                                y,
                                wgt,
                                oy,
                                ox,
                                c_bce=c_bce,
                                c_da=coeff[0],
                                c_db=coeff[1],
                                c_dice=1.0 if (use_dice and one_tile) else 0.0,
                            )
                            stats_g += r.stats
                            if grads is None:
                                grads = [g.astype(np.float64) for g in r.grads]
                            else:
                                for acc, g in zip(grads, r.grads):
                                    acc += g
                        if which == passes[0]:
                            py, px = tile.core[0] // os_ // f, tile.core[2] // os_ // f
                            pv = r.preview
                            preview[py : py + pv.shape[0], px : px + pv.shape[1]] = pv
                    done += 1
                    yield Progress(stage, done, total, label)
    finally:
        if own_pool:
            pool.shutdown(wait=True)
    stats = stats_f if passes[0] == "forward" else stats_g
    value = 0.0
    if c_bce:
        value += (stats_f if forward_only else stats_g)[0] / n_labelled
    soft = 1.0 - dice_loss_from_sums(stats[1], stats[2], stats[3])
    if use_dice:
        value += 1.0 - soft
    return ImageStep(
        grads=grads or [],
        loss=float(value),
        dice=hard_dice(stats[4], stats[5], stats[6]),
        soft_dice=float(soft),
        preview=preview,
        stats=stats.copy(),
    )


def image_step(*args: Any, **kwargs: Any) -> ImageStep:
    """:func:`iter_image_step` run to the end (its progress events dropped)."""
    gen = iter_image_step(*args, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


def preview_factor(geometry: Geometry, preview_downsample: int) -> int:
    """Output pixels per preview pixel: divides ``S / output_stride`` so cores align."""
    per_core = geometry.stride // geometry.output_stride
    want = max(1, int(preview_downsample) // geometry.output_stride)
    return math.gcd(want, per_core) if want <= per_core else per_core
