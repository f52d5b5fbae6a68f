"""The streamed whole-slide trainer: exact whole-image gradients, bounded memory.

One optimizer step sees every pixel of every training slide (batch size 1
per slide, gradients summed over slides), exactly like the MIDL 2023 paper's
whole-image step, but computed tile by tile (see ``DESIGN.md``, "the central
idea"): pixel-separable losses add up over tiles; soft Dice takes a
forward-only pass for its global sums, then per-tile surrogate gradients.
Tile gradients and sums are accumulated in float64. When an image fits the
memory budget in one tile, the step is the plain whole-image step.

:func:`train` is a generator of :mod:`.events` that checks a stop flag between
tiles; TensorFlow is imported inside it only (the process runner calls it in
a spawned worker, never in napari's process).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ._resources import (
    BASELINE_BYTES,
    auto_core,
    bytes_per_pixel,
    cpu_has_bf16,
    current_rss_bytes,
    peak_rss_bytes,
    use_mixed_precision,
)
from ._train_augment import SlideView as _View
from ._train_augment import augment_params as _augment_params
from .events import (
    Message,
    Progress,
    StopFlag,
)
from .image_step import ImageStep, image_step, iter_image_step, preview_factor
from .input_norm import WHITE
from .stain import auto_note, resolve_augment
from .tiling import padded_shape, round_up, tile_grid
from .train_config import (
    LR_FLOOR,
    LR_SCHEDULES,
    TrainConfig,
    TrainConfigError,
    _describe,
    learning_rate,
)
from .train_preflight import _resumed_resolution, preflight

# Re-exported: callers import these from ``training`` (the public face of training).
__all__ = [
    "BASELINE_BYTES",
    "LR_FLOOR",
    "LR_SCHEDULES",
    "ImageStep",
    "TrainConfig",
    "TrainConfigError",
    "auto_core",
    "bytes_per_pixel",
    "cpu_has_bf16",
    "current_rss_bytes",
    "image_step",
    "iter_image_step",
    "learning_rate",
    "peak_rss_bytes",
    "preflight",
    "preview_factor",
    "train",
    "use_mixed_precision",
]


def _make_model(cfg: TrainConfig, mcfg=None):
    """(model, model_config, history, metadata) from scratch (``mcfg``, default
    ``cfg.model``) or from ``cfg.resume``."""
    import keras

    from .unet import build_unet, load_model

    if cfg.resume:
        model, meta = load_model(cfg.resume)
        mcfg = meta.get("model_config") or cfg.model
        if getattr(model, "optimizer", None) is None:
            model.compile(optimizer=keras.optimizers.Adam(cfg.lr))
        return model, mcfg, list(meta.get("history", [])), meta
    mcfg = mcfg or cfg.model
    dtype = "mixed_bfloat16" if use_mixed_precision(cfg.mixed_precision) else cfg.dtype
    model = build_unet(mcfg, seed=cfg.seed, dtype=dtype)
    model.compile(optimizer=keras.optimizers.Adam(cfg.lr))
    return model, mcfg, [], {}


def _fit_to_data(cfg: TrainConfig, model, mcfg, balanced: bool, statistics, counts):
    """Input statistics and head prior from the decoded training data (fresh runs only).

    ``statistics()`` returns the per-channel ``(mean, std)`` of every training
    pixel (asked only when the run standardises); ``counts`` holds each
    image's ``(n_positive, n_labelled)``. The model is rebuilt from the same
    seed with the statistics in its input layer, so its initial weights are
    those of the plain build. Shared by the local and the distributed trainer.
    """
    import dataclasses

    if cfg.resume:
        return model, mcfg, None
    note = []
    if balanced and not (mcfg.white_balance and mcfg.white_field):
        # A fresh white-balanced model is balanced per place (local_balance).
        mcfg = dataclasses.replace(mcfg, white_balance=True, white_field=True)
    if cfg.standardize and mcfg.input_mean is None:
        mean, std = statistics()
        mcfg = dataclasses.replace(mcfg, input_mean=mean, input_std=std)
        model, mcfg, _, _ = _make_model(cfg, mcfg)
        fmt, unit = (".3f", " (optical density)") if mcfg.input_transform == "od" else (".1f", "")
        note.append(
            f"input standardised{unit}: mean "
            + ", ".join(f"{v:{fmt}}" for v in mean)
            + "; std "
            + ", ".join(f"{v:{fmt}}" for v in std)
        )
    if cfg.head_prior:
        pos = sum(p for p, _ in counts)
        lab = sum(n for _, n in counts)
        prior = min(max(pos / lab, 1e-3), 1 - 1e-3)
        bias = model.get_layer("head").bias
        bias.assign(np.full(bias.shape, np.log(prior / (1 - prior)), dtype="float32"))
        note.append(f"head bias at the tissue prior {prior:.3f}")
    return model, mcfg, "; ".join(note) or None


def _resolution_record(resolutions: list[dict[str, Any]]) -> dict[str, Any]:
    """The working resolution recorded in every checkpoint (``predict`` uses it).

    ``resolutions`` holds each training image's ``ImageData.resolution``.
    """
    record = {k: v for k, v in resolutions[0].items() if k != "describe"}
    downsamples = [float(r["downsample"]) for r in resolutions]
    if len({round(d, 6) for d in downsamples}) > 1:
        record["downsamples"] = downsamples
    return record


def train(cfg: TrainConfig, stop: StopFlag | None = None) -> Iterator[Any]:
    """Train a U-Net on whole slides; a generator of :mod:`.events`.

    Each step computes the exact whole-image gradient of the loss summed over
    the images (tile by tile within the memory budget) and applies one Adam
    update. Yields ``Message``, ``Progress`` (stages ``"cache"``, ``"tiles"``
    and ``"validation"``), ``PreviewEvent`` (per image and step, from the
    step's forward pass), ``ValidationEvent`` (every ``val_every`` steps when
    there is validation data), ``StepEvent``, ``CheckpointEvent`` and last
    ``Finished``.

    With ``cfg.scheduler`` set, the steps run on a dask.distributed cluster
    (:func:`.distributed_train.train_distributed`, same weights and events).

    On stop (between tiles) the half-done step is dropped, the model after
    the last complete step is checkpointed, and ``Finished(stopped=True)`` is
    the last event. Nothing is written before the inputs were validated.

    Raises
    ------
    GigapixelError
        Bad configuration, slides, masks or output location (raised by
        :func:`preflight`, before TensorFlow loads and before anything is written).
    """
    if cfg.scheduler:
        from .distributed_train import train_distributed

        yield from train_distributed(cfg, stop)
        return
    preflight(cfg)
    from ._quiet_tf import load_keras_quietly

    load_keras_quietly()
    t_start = time.perf_counter()
    from .unet import model_geometry

    model, mcfg, history, meta = _make_model(cfg)
    geometry = model_geometry(model)
    os_ = geometry.output_stride
    budget = float(cfg.memory_gb) * 2**30
    base = max(BASELINE_BYTES, current_rss_bytes())
    # Keep the decoded cache in memory while it stays a small part of the budget.
    cache_room = [0.35 * max(budget - base, 0)]

    def in_memory(nbytes: int) -> bool:
        if nbytes <= cache_room[0]:
            cache_room[0] -= nbytes
            return True
        return False

    resolution = cfg.resolution
    if resolution is None:
        resolution = _resumed_resolution(cfg.resume)
        if cfg.resume and not resolution.is_level0:
            yield Message(f"continuing at the checkpoint's resolution, {resolution.describe()}")
    datas = []
    vdatas: list[Any] = []
    # A resumed model keeps the input convention it was trained with.
    balanced = mcfg.white_balance or (cfg.white_balance and not cfg.resume)
    if (note := auto_note(cfg.augment, balanced)) is not None:
        yield Message(note)
    try:
        rois = cfg.rois or [None] * len(cfg.images)
        for i, (img, msk) in enumerate(zip(cfg.images, cfg.masks)):
            yield Message(f"decoding image {i + 1}/{len(cfg.images)}: {_describe(img)}")
            table = None
            if balanced:
                from .input_norm import slide_balance

                # A missing or non-RGB slide fails with its own error first.
                _train_data().open_image_source(img)[2]()
                table, _, note = slide_balance(img, local_balance(cfg, mcfg))
                yield Message(note)
            datas.append(
                _train_data().build_image_data(
                    img,
                    msk,
                    roi=rois[i],
                    kind=cfg.mask_kind,
                    output_stride=os_,
                    cache_in_memory=in_memory,
                    cache_dir=cfg.cache_dir,
                    resolution=resolution,
                    balance=table,
                    border_weight=cfg.border_weight,
                )
            )
            datas[-1].pen_weight = int(cfg.pen_weight)
            yield Message(f"image {i + 1} at {datas[-1].resolution['describe']}")
            yield Progress("cache", i + 1, len(cfg.images))
        model, mcfg, note = _fit_to_data(
            cfg,
            model,
            mcfg,
            balanced,
            lambda: _train_data().input_statistics(datas, mcfg.input_transform),
            [(d.n_positive, d.n_labelled) for d in datas],
        )
        if note:
            yield Message(note)
        if cfg.validates:
            from .validation import build_validation

            vdatas = yield from build_validation(
                cfg, datas, os_, in_memory, resolution, balanced=balanced
            )
        yield from _run(
            cfg, stop, model, mcfg, history, meta, geometry, datas, vdatas, budget, t_start
        )
    finally:
        for d in [*datas, *vdatas]:
            d.close()


def _train_data():
    from . import _train_data

    return _train_data


def _run(cfg, stop, model, mcfg, history, meta, geometry, datas, vdatas, budget, t_start):
    from . import _backend
    from ._step_loop import preview_event, run_steps
    from .validation import (
        BestTracker,
        describe_validation,
        iter_validate,
        result_figures,
        validate_hook,
    )

    os_ = geometry.output_stride
    bpp = bytes_per_pixel(model)  # validation windows: never augmented
    train_bpp = bytes_per_pixel(model, augment=drawn_augment(cfg, mcfg))
    # The RSS now holds the interpreter, TensorFlow and the in-memory caches.
    compute_budget = budget - max(BASELINE_BYTES, current_rss_bytes())
    cores = [core_size(cfg, d.shape, geometry, train_bpp, compute_budget) for d in datas]
    grids = [tile_grid(d.shape, c, geometry.halo, geometry.stride) for d, c in zip(datas, cores)]
    n_tiles = sum(len(g) for g in grids)
    vgrids = [
        tile_grid(v.shape, core_size(cfg, v.shape, geometry, bpp, compute_budget), *hs)
        for v in vdatas
        for hs in [(geometry.halo, geometry.stride)]
    ]
    best = BestTracker(os.fspath(cfg.out), describe_validation(cfg))
    if vdatas and cfg.resume:
        note = best.resume_from(meta, cfg.resume)
        if note:
            yield Message(note)
    f = preview_factor(geometry, cfg.preview_downsample)
    step_fn = _backend.TileStep(model, f, cfg.loss)
    yield Message(
        f"model: stride {geometry.stride}, output stride {os_}, halo {geometry.halo}; "
        f"tiles: {n_tiles} (core {max(cores)} px)"
    )
    resolution = _resolution_record([d.resolution for d in datas])
    pool = ThreadPoolExecutor(1)
    # White-balanced slides keep their glass on WHITE under the colour jitter.
    white = WHITE if mcfg.white_balance else None

    def compute(step_no: int):
        out = []
        for i, (d, grid) in enumerate(zip(datas, grids)):
            view = _View(d, os_, _augment_params(cfg.seed, step_no, cfg.augment, white))
            res = yield from iter_image_step(
                step_fn,
                view,
                grid,
                geometry,
                cfg.loss,
                d.n_labelled,
                f,
                stop=stop,
                pool=pool,
                label=f"step {step_no}, image {i + 1}",
            )
            pe = preview_event(i, res, view, f * d.downsample, os_, d.offset)
            out.append((res, pe))
        return out

    def score(step_no: int):
        return (
            yield from iter_validate(
                step_fn,
                vdatas,
                vgrids,
                geometry,
                cfg.loss,
                f,
                stop=stop,
                pool=pool,
                label=f"validation after step {step_no}",
            )
        )

    try:
        yield from run_steps(
            cfg,
            stop,
            model,
            mcfg,
            history,
            geometry,
            compute,
            tile=max(cores),
            n_tiles=n_tiles,
            megapixels=sum(d.shape[0] * d.shape[1] for d in datas) / 1e6,
            t_start=t_start,
            save_meta=lambda: {
                "validation": best.meta() if vdatas else None,
                "resolution": resolution,
            },
            validate=validate_hook(cfg, best, score) if vdatas else None,
            result_extra=lambda: {**result_figures(history, best), "resolution": resolution},
        )
    finally:
        pool.shutdown(wait=True)


def local_balance(cfg: TrainConfig, mcfg) -> bool:
    """Whether a white-balanced run balances per place (:mod:`.white_field`): every
    fresh run, and a resumed one whose checkpoint was (older ones per slide)."""
    return bool(mcfg.white_field) if cfg.resume else True


def drawn_augment(cfg: TrainConfig, mcfg) -> str:
    """The augmentation mode the run's steps draw ("auto" on a white-balanced model
    is the ink and pen strokes), so the tile plan counts the transform's working set."""
    return resolve_augment(cfg.augment, bool(mcfg.white_balance))


def core_size(cfg: TrainConfig, shape, geometry, bpp: float, budget: float) -> int:
    """Core size (level-0 pixels) of an image of ``shape``: ``cfg.tile``, auto or whole."""
    full = max(padded_shape(shape, geometry.stride))
    if cfg.mode == "whole":
        return full
    if cfg.tile == "auto":
        return min(auto_core(shape, geometry, bpp, budget), full)
    return min(round_up(int(cfg.tile), geometry.stride), full)
