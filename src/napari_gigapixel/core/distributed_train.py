"""Exact data-parallel training on a ``dask.distributed`` cluster.

The step is the single-process trainer's (:mod:`.training`), cut along the
sums it is made of: the whole-image gradient is a sum over images and, within
an image, over tiles. Each step:

1. the client sends the weights (about 20 KB) with every task;
2. whole images, or shares of an image's tiles when there are fewer images
   than workers, run on the workers, which read the slides from their paths
   and keep TensorFlow, the model and the decoded slides between steps
   (:mod:`._dist_worker`);
3. for a Dice loss over an image split across workers, the workers first
   return the forward sums of their tiles; the client adds them up (float64)
   and sends Dice's closed-form coefficients back for the gradient pass;
4. the client sums the gradients in float64, in a fixed order, applies one
   Adam update and writes the checkpoints.

The recipe is the single-process trainer's: the workers decode each slide at
the working resolution (``TrainConfig.resolution``), white-balanced by its own
glass colour, and return its pixel histograms, which the client adds up into
the input statistics (exact: integer counts) before it builds the model; a
validation ROI's labels are left out on every worker that decodes its slide;
validation regions are scored by worker tasks (one region per task, the
trainer's forward pass) and pooled on the client, which keeps the best model.

So the weights equal the single-process run's (float32 rounding aside). A
worker lost mid-step: its tasks are rerun elsewhere (dask's ``retries``,
rescheduling), and a step whose task the scheduler cancelled instead
(:func:`._dist_cluster.cancelled_by_cluster`) runs once more; when that fails
the step raises :class:`DistributedTrainError` and the last checkpoint stays
as written.

The cluster plumbing lives in :mod:`._dist_cluster` and one step's layout and
reduction in :mod:`._dist_step`; the worker-side tasks in :mod:`._dist_worker`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ._dist_cluster import (
    CONNECT_TIMEOUT,
    NO_WORKER_SECONDS,
    POLL_SECONDS,
    RETRIES,
    STEP_RETRIES,
    DistributedTrainError,
    _connect,
    _gather,
    _workers,
    cancelled_by_cluster,
)
from ._dist_step import _one_step, _Plan, _plan_images, _score_validation
from .events import Message, StopFlag
from .stain import auto_note

__all__ = [
    "CONNECT_TIMEOUT",
    "NO_WORKER_SECONDS",
    "POLL_SECONDS",
    "RETRIES",
    "DistributedTrainError",
    "train_distributed",
]


def _model_dtype(model: Any) -> str:
    if any(getattr(ly.dtype_policy, "name", "") == "mixed_bfloat16" for ly in model.layers):
        return "mixed_bfloat16"
    return "float64" if str(model.trainable_variables[0].dtype) == "float64" else "float32"


def train_distributed(cfg: Any, stop: StopFlag | None = None) -> Iterator[Any]:
    """:func:`.training.train` across the workers of ``cfg.scheduler``.

    Same recipe (white balance, input standardisation, head prior, working
    resolution, validation), same events, same result keys (plus ``workers``
    and ``scheduler``), same checkpoints and model metadata.

    Raises
    ------
    TrainConfigError
        Images given as arrays (workers read slides from paths).
    DistributedTrainError
        Scheduler unreachable, no workers, or a step that failed on the cluster.
    """
    import dataclasses

    from . import _dist_worker as dw
    from ._train_data import statistics_from_histograms
    from .image_step import preview_factor
    from .input_norm import WHITE
    from .train_config import _describe, _validate
    from .train_preflight import _resumed_resolution, preflight
    from .training import _fit_to_data, _make_model, drawn_augment, local_balance
    from .validation import best_path, val_rois

    _validate(cfg)
    vrois = val_rois(cfg)  # a malformed val_roi fails here
    if _client_sees(cfg):
        # Every slide and mask is reachable here too (a shared disk): the local
        # run's checks, labels, checkpoint and outputs included, before any
        # worker decodes a pixel.
        preflight(cfg, on_workers=True)
    else:
        # The workers check the slides (the client cannot see their paths);
        # the checkpoint and the outputs are checked here, before anything runs.
        from .model_io import read_model_meta
        from .preflight import check_input, check_output

        if cfg.resume:
            read_model_meta(check_input(cfg.resume, "checkpoint"))
        same = bool(cfg.resume) and os.path.abspath(os.fspath(cfg.resume)) == os.path.abspath(
            os.fspath(cfg.out)
        )
        check_output(cfg.out, overwrite=cfg.overwrite or same, what="model file")
        if cfg.validates:
            check_output(
                best_path(cfg.out), overwrite=cfg.overwrite or same, what="best model file"
            )
    from ._quiet_tf import load_keras_quietly

    load_keras_quietly()
    from .unet import model_geometry

    t_start = time.perf_counter()
    model, mcfg, history, meta = _make_model(cfg)
    geometry = model_geometry(model)
    resolution = cfg.resolution
    if resolution is None:
        resolution = _resumed_resolution(cfg.resume)
        if cfg.resume and not resolution.is_level0:
            yield Message(f"continuing at the checkpoint's resolution, {resolution.describe()}")
    # A resumed model keeps the input convention it was trained with (as train()).
    balanced = mcfg.white_balance or (cfg.white_balance and not cfg.resume)
    if (note := auto_note(cfg.augment, balanced)) is not None:
        yield Message(note)
    fit_stats = bool(cfg.standardize and mcfg.input_mean is None and not cfg.resume)
    n = len(cfg.images)
    paths = [os.path.abspath(os.fspath(p)) for p in cfg.images]
    masks = [
        os.path.abspath(os.fspath(m)) if isinstance(m, (str, os.PathLike)) else m
        for m in cfg.masks
    ]
    regions = [
        (os.path.abspath(os.fspath(img)), _abs(msk), None, None)
        for img, msk in zip(cfg.val_images, cfg.val_masks)
    ] + [(paths[i], masks[i], i, r) for i, r in enumerate(vrois) if r is not None]
    spec = dw.RunSpec(
        run_id=uuid.uuid4().hex,
        images=paths,
        masks=masks,
        rois=list(cfg.rois or [None] * n),
        mask_kind=cfg.mask_kind,
        loss=cfg.loss,
        seed=cfg.seed,
        augment=cfg.augment,
        memory_gb=cfg.memory_gb,
        cache_dir=cfg.cache_dir,
        model_config=mcfg.to_dict(),
        dtype=_model_dtype(model),
        output_stride=geometry.output_stride,
        preview_factor=preview_factor(geometry, cfg.preview_downsample),
        geometry={
            "stride": geometry.stride,
            "output_stride": geometry.output_stride,
            "rf_before": geometry.rf_before,
            "rf_after": geometry.rf_after,
        },
        resolution=resolution,
        balanced=balanced,
        local_balance=local_balance(cfg, mcfg),
        val_rois=vrois,
        val_regions=regions,
        histograms=fit_stats,
        border_weight=cfg.border_weight,
        pen_weight=cfg.pen_weight,
    )
    client = _connect(cfg.scheduler)
    try:
        workers = _workers(client)
        yield Message(f"cluster {cfg.scheduler}: {len(workers)} workers")
        spec_f = client.scatter(spec, broadcast=True, hash=False)
        # Each image is decoded (and cached) first on the worker that will train on it.
        futs = [
            _submit(client, dw.describe_image, spec_f, i, workers[i % len(workers)])
            for i in range(n)
        ]
        yield Message(
            f"decoding {n} image(s) on the workers: "
            + ", ".join(_describe(v) for v in cfg.images[:4])
            + (" ..." if n > 4 else "")
        )
        infos = yield from _gather(client, futs, stop, [0], n, stage="cache")
        for i, d in enumerate(infos):
            if d["white"] is not None:
                yield Message(f"image {i + 1} {d['balance_note']}")
            yield Message(f"image {i + 1} at {d['resolution'].get('describe', 'level 0')}")
        model, mcfg, note = _fit_to_data(
            cfg,
            model,
            mcfg,
            balanced,
            lambda: statistics_from_histograms(
                [d["histogram"] for d in infos], mcfg.input_transform
            ),
            [tuple(d["counts"]) for d in infos],
        )
        if note:
            yield Message(note)
        yield from (Message(d["note"]) for d in infos if d["note"])
        # The workers build the model the client trains (its input statistics, its
        # glass convention); the decoded images stay cached under the same run id.
        spec = dataclasses.replace(
            spec,
            model_config=mcfg.to_dict(),
            dtype=_model_dtype(model),
            keep_white=WHITE if mcfg.white_balance else None,
        )
        spec_f = client.scatter(spec, broadcast=True, hash=False)
        slots = _plan_images([tuple(d["shape"]) for d in infos], len(workers))
        vslots = [slots[i] if i is not None else j for j, (_, _, i, _) in enumerate(regions)]
        vinfos = []
        if regions:
            yield Message(f"decoding {len(regions)} validation region(s) on the workers")
            futs = [
                _submit(client, dw.describe_region, spec_f, j, workers[k % len(workers)])
                for j, k in enumerate(vslots)
            ]
            vinfos = yield from _gather(client, futs, stop, [0], len(futs), stage="cache")
        plan = _Plan(
            client,
            spec_f,
            infos,
            _cores(cfg, model, geometry, infos, augment=drawn_augment(cfg, mcfg)),
            slots,
            split=n < len(workers),
        )
        val = _Validation(regions, vinfos, vslots, _cores(cfg, model, geometry, vinfos), meta)
        yield from _run_steps(cfg, stop, model, mcfg, history, geometry, plan, spec, t_start, val)
    finally:
        try:
            client.run(dw.drop_run, spec.run_id)
        except Exception:  # noqa: BLE001 - best effort: workers may be gone
            pass
        client.close()


def _client_sees(cfg: Any) -> bool:
    """Whether every slide and mask path of ``cfg`` exists on the client's disks.

    Masks given as arrays travel with the run and need no path.
    """
    paths = [*cfg.images, *cfg.val_images]
    paths += [m for m in (*cfg.masks, *cfg.val_masks) if isinstance(m, (str, os.PathLike))]
    return all(os.path.exists(p) for p in paths)


def _abs(p: Any) -> Any:
    return os.path.abspath(os.fspath(p)) if isinstance(p, (str, os.PathLike)) else p


def _submit(client, fn, spec_f, j, worker):
    return client.submit(
        fn,
        spec_f,
        j,
        workers=[worker],
        allow_other_workers=True,
        retries=RETRIES,
        pure=False,
    )


@dataclass
class _Validation:
    """The run's validation regions on the cluster (empty: no validation)."""

    regions: list[Any]
    infos: list[dict[str, Any]]
    slots: list[int]
    cores: list[int]
    meta: dict[str, Any]


def _cores(cfg, model, geometry, infos, augment: str = "none") -> list[int]:
    """Core size per image, chosen as the single-process trainer chooses it
    (``augment``: the mode training windows draw; validation never augments)."""
    from ._resources import BASELINE_BYTES, bytes_per_pixel
    from .training import core_size

    bpp = bytes_per_pixel(model, augment=augment)
    # A worker's budget: its RSS holds TensorFlow (the baseline) and the caches.
    budget = float(cfg.memory_gb) * 2**30 - BASELINE_BYTES
    return [core_size(cfg, tuple(d["shape"]), geometry, bpp, budget) for d in infos]


def _run_steps(cfg, stop, model, mcfg, history, geometry, plan: _Plan, spec, t_start, val):
    """The shared step loop (:func:`._step_loop.run_steps`) over cluster-computed steps."""
    from ._step_loop import run_steps
    from .tiling import tile_grid
    from .training import _resolution_record
    from .validation import (
        BestTracker,
        describe_validation,
        result_figures,
        validate_hook,
    )

    n_tiles = sum(
        len(tile_grid(tuple(d["shape"]), c, geometry.halo, geometry.stride))
        for d, c in zip(plan.infos, plan.cores)
    )
    n_workers = len(_workers(plan.client))
    best = BestTracker(os.fspath(cfg.out), describe_validation(cfg))
    if val.regions and cfg.resume:
        note = best.resume_from(val.meta, cfg.resume)
        if note:
            yield Message(note)
    yield Message(
        f"model: stride {geometry.stride}, output stride {geometry.output_stride}, halo "
        f"{geometry.halo}; tiles: {n_tiles} (core {max(plan.cores)} px) on {n_workers} "
        "workers, " + ("tiles split over the workers" if plan.split else "whole slides per worker")
    )
    resolution = _resolution_record([d["resolution"] for d in plan.infos])
    vgrids = [
        tile_grid(tuple(d["shape"]), c, geometry.halo, geometry.stride)
        for d, c in zip(val.infos, val.cores)
    ]

    def weights():
        return [v.numpy() for v in model.trainable_variables]

    def compute(step_no: int):
        label = f"step {step_no}"
        for attempt in range(STEP_RETRIES + 1):
            try:
                w = weights()
                return (yield from _one_step(plan, spec, w, step_no, geometry, stop, label))
            except DistributedTrainError as exc:
                if attempt == STEP_RETRIES or not cancelled_by_cluster(exc):
                    raise
                yield Message(f"{label}: the cluster cancelled a task ({exc.__cause__}); again")
                # A restarted worker can take the scattered spec's last copy with
                # it ("lost dependencies"): every task needs it, so send it again.
                plan.spec = plan.client.scatter(spec, broadcast=True, hash=False)

    def score(step_no: int):
        return (
            yield from _score_validation(
                plan, val.slots, vgrids, weights(), stop, cfg.loss, step_no
            )
        )

    yield from run_steps(
        cfg,
        stop,
        model,
        mcfg,
        history,
        geometry,
        compute,
        tile=max(plan.cores),
        n_tiles=n_tiles,
        megapixels=sum(d["shape"][0] * d["shape"][1] for d in plan.infos) / 1e6,
        t_start=t_start,
        extra={"workers": n_workers, "scheduler": cfg.scheduler},
        save_meta=lambda: {
            "validation": best.meta() if val.regions else None,
            "resolution": resolution,
        },
        validate=validate_hook(cfg, best, score) if val.regions else None,
        result_extra=lambda: {**result_figures(history, best), "resolution": resolution},
    )
