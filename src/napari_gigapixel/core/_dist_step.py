"""One distributed training step: the images' layout on the workers and their results.

Whole images run on one worker each; with fewer images than workers, an
image's tiles are split in contiguous shares over all workers, with a forward
round for Dice's global sums (reduced here in float64) before the gradient
round. Validation regions are scored the same way: one region per task, or
with fewer regions than workers, each region's tiles in shares over all
workers (their float64 sums added here). Used by :mod:`.distributed_train`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._dist_cluster import RETRIES, _gather, _workers


def _plan_images(shapes: list[tuple[int, int]], n_workers: int) -> list[int]:
    """Worker slot of each whole image: largest first, to the least-loaded slot."""
    load = [0] * n_workers
    slot = [0] * len(shapes)
    for i in sorted(range(len(shapes)), key=lambda j: -shapes[j][0] * shapes[j][1]):
        k = int(np.argmin(load))
        slot[i] = k
        load[k] += shapes[i][0] * shapes[i][1]
    return slot


@dataclass
class _Plan:
    """The run's layout on the cluster (fixed at the start of the run)."""

    client: Any
    spec: Any  # a future of the scattered RunSpec
    infos: list[dict[str, Any]]
    cores: list[int]
    slots: list[int]
    split: bool


def _submitter(plan: _Plan, workers: list[str]):
    def submit(fn, k, *args):
        return plan.client.submit(
            fn,
            plan.spec,
            *args,
            workers=[workers[k % len(workers)]],
            allow_other_workers=True,
            retries=RETRIES,
            pure=False,
        )

    return submit


def _reduce_split(got, first, coeff, view_shape, os_, f, bce_on, use_dice):
    """One split image's gradient, loss, Dice and preview from its shares' results."""
    from .losses import dice_loss_from_sums, hard_dice

    stats_g = np.sum([r["stats"] for r in got], axis=0)
    grads = [np.sum(gs, axis=0) for gs in zip(*[r["grads"] for r in got if r["grads"]])]
    stats = np.sum([r["stats"] for r in first], axis=0)
    h, w = view_shape
    ho, wo = -(-h // os_), -(-w // os_)
    preview = np.zeros((-(-ho // f), -(-wo // f)), np.float32)
    for r in first:
        for py, px, pv in r["patches"]:
            preview[py : py + pv.shape[0], px : px + pv.shape[1]] = pv
    value = stats_g[0] * coeff[0] if bce_on else 0.0
    soft = 1.0 - dice_loss_from_sums(stats[1], stats[2], stats[3])
    if use_dice:
        value += 1.0 - soft
    return {
        "grads": grads,
        "loss": float(value),
        "dice": hard_dice(stats[4], stats[5], stats[6]),
        "soft_dice": float(soft),
        "preview": preview,
    }


def _one_step(plan: _Plan, spec, weights, step_no: int, geometry, stop, label: str):
    """Per-image results of one step over all images (a generator of Progress).

    Whole images run on one worker each (both Dice passes there); an image
    split over workers runs a forward round for Dice's sums, reduced here,
    then a gradient round. Returns ``(ImageStep, PreviewEvent or None)`` per
    image, as :func:`._step_loop.run_steps` wants.
    """
    from types import SimpleNamespace

    from . import _dist_worker as dw
    from ._step_loop import preview_event
    from ._train_augment import SlideView, augment_params
    from .image_step import ImageStep
    from .losses import dice_grad_coefficients, pixel_term, uses_dice
    from .tiling import tile_grid

    workers = _workers(plan.client)
    submit = _submitter(plan, workers)
    os_, f = spec.output_stride, spec.preview_factor
    use_dice = uses_dice(spec.loss)
    bce_on = pixel_term(spec.loss) is not None
    aug = augment_params(spec.seed, step_no, spec.augment, spec.keep_white)
    whole: dict[int, Any] = {}
    parts: dict[int, list[list[Any]]] = {}
    views = {}
    for i, d in enumerate(plan.infos):
        view = SlideView(SimpleNamespace(shape=tuple(d["shape"])), os_, aug)
        grid = tile_grid(view.shape, plan.cores[i], geometry.halo, geometry.stride)
        views[i] = view
        p = min(len(workers), len(grid)) if plan.split else 1
        if p <= 1:
            whole[i] = submit(dw.whole_image, plan.slots[i], weights, i, step_no, grid)
        else:
            bounds = np.linspace(0, len(grid), p + 1).round().astype(int)
            parts[i] = [grid[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    total = len(whole) + sum(len(v) for v in parts.values()) * (2 if use_dice else 1)
    done = [0]
    fwd: dict[int, list[dict]] = {}
    if use_dice and parts:
        zero = (0.0, 0.0, 0.0)
        futs = [
            submit(dw.tile_share, k, weights, i, step_no, share, "forward", zero)
            for i, ps in parts.items()
            for k, share in enumerate(ps)
        ]
        it = iter((yield from _gather(plan.client, futs, stop, done, total, label=label)))
        fwd = {i: [next(it) for _ in ps] for i, ps in parts.items()}
    coeff: dict[int, tuple[float, float, float]] = {}
    for i in parts:
        da, db = 0.0, 0.0
        if use_dice:  # Dice's global sums, reduced over the shares (float64)
            sf = np.sum([r["stats"] for r in fwd[i]], axis=0)
            da, db = dice_grad_coefficients(sf[1], sf[2], sf[3])
        coeff[i] = (1.0 / plan.infos[i]["n_labelled"] if bce_on else 0.0, da, db)
    futs = list(whole.values()) + [
        submit(dw.tile_share, k, weights, i, step_no, share, "grad", coeff[i])
        for i, ps in parts.items()
        for k, share in enumerate(ps)
    ]
    it = iter((yield from _gather(plan.client, futs, stop, done, total, label=label)))
    per_image: dict[int, dict[str, Any]] = {i: next(it) for i in whole}
    for i, ps in parts.items():
        got = [next(it) for _ in ps]
        per_image[i] = _reduce_split(
            got, fwd[i] if use_dice else got, coeff[i], views[i].shape, os_, f, bce_on, use_dice
        )
    out = []
    for i in range(len(plan.infos)):
        res = ImageStep(**per_image[i])
        d = plan.infos[i]
        out.append((res, preview_event(i, res, views[i], f * d["downsample"], os_, d["offset"])))
    return out


def _score_validation(plan: _Plan, slots, grids, weights, stop, loss: str, step_no: int):
    """The validation score after ``step_no`` from the workers (a generator of Progress).

    Region ``j`` runs on worker slot ``slots[j]``, or, with fewer regions than
    workers, in contiguous shares of its tiles over all workers; each
    region's sums are added in share order (float64) and the regions pooled
    as :func:`.validation.iter_validate` pools them.
    """
    from . import _dist_worker as dw
    from .validation import pool_scores

    workers = _workers(plan.client)
    submit = _submitter(plan, workers)
    shares: list[list[Any]] = []
    for grid in grids:
        p = min(len(workers), len(grid)) if len(grids) < len(workers) else 1
        bounds = np.linspace(0, len(grid), p + 1).round().astype(int)
        shares.append([grid[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
    futs = [
        submit(dw.score_region, slots[j] + k, weights, j, share)
        for j, ps in enumerate(shares)
        for k, share in enumerate(ps)
    ]
    label = f"validation after step {step_no}"
    got = yield from _gather(
        plan.client, futs, stop, [0], len(futs), stage="validation", label=label
    )
    it = iter(got)
    regions = []
    for ps in shares:
        parts = [next(it) for _ in ps]
        regions.append((np.sum([np.asarray(s) for s, _ in parts], axis=0), float(parts[0][1])))
    return pool_scores(regions, loss)
