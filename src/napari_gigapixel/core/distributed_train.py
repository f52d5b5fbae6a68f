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

So the weights equal the single-process run's (float32 rounding aside). A
worker lost mid-step: its tasks are rerun elsewhere (dask's ``retries``,
rescheduling); when that fails the step raises
:class:`DistributedTrainError` and the last checkpoint stays as written.

The cluster plumbing lives in :mod:`._dist_cluster` and one step's layout and
reduction in :mod:`._dist_step`; the worker-side tasks in :mod:`._dist_worker`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

from ._dist_cluster import (
    CONNECT_TIMEOUT,
    NO_WORKER_SECONDS,
    POLL_SECONDS,
    RETRIES,
    DistributedTrainError,
    _connect,
    _gather,
    _workers,
)
from ._dist_step import _one_step, _Plan, _plan_images
from .events import Message, StopFlag

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

    Same events, same result keys (plus ``workers``), same checkpoints.

    Raises
    ------
    TrainConfigError
        Images given as arrays (workers read slides from paths).
    DistributedTrainError
        Scheduler unreachable, no workers, or a step that failed on the cluster.
    """
    from . import _dist_worker as dw
    from .image_step import preview_factor
    from .train_config import TrainConfigError, _describe, _validate
    from .training import _make_model

    _validate(cfg)
    if not all(isinstance(p, (str, os.PathLike)) for p in cfg.images):
        raise TrainConfigError(
            "distributed training reads the slides on the workers: give images as paths "
            "that every worker can reach."
        )
    # The slides are checked on the workers (the client may not see their paths);
    # the outputs and the checkpoint here, before anything runs.
    from .model_io import read_model_meta
    from .preflight import check_input, check_output

    if cfg.resume:
        read_model_meta(check_input(cfg.resume, "checkpoint"))
    same = bool(cfg.resume) and os.path.abspath(os.fspath(cfg.resume)) == os.path.abspath(
        os.fspath(cfg.out)
    )
    check_output(cfg.out, overwrite=cfg.overwrite or same, what="model file")
    from ._quiet_tf import load_keras_quietly

    load_keras_quietly()
    from .unet import model_geometry

    t_start = time.perf_counter()
    model, mcfg, history, _meta = _make_model(cfg)
    geometry = model_geometry(model)
    n = len(cfg.images)
    spec = dw.RunSpec(
        run_id=uuid.uuid4().hex,
        images=[os.path.abspath(os.fspath(p)) for p in cfg.images],
        masks=[
            os.path.abspath(os.fspath(m)) if isinstance(m, (str, os.PathLike)) else m
            for m in cfg.masks
        ],
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
    )
    client = _connect(cfg.scheduler)
    try:
        workers = _workers(client)
        yield Message(f"cluster {cfg.scheduler}: {len(workers)} workers")
        spec_f = client.scatter(spec, broadcast=True, hash=False)
        # Each image is decoded (and cached) first on the worker that will train on it.
        slots = list(range(n))
        futs = [
            client.submit(
                dw.describe_image,
                spec_f,
                i,
                workers=[workers[i % len(workers)]],
                allow_other_workers=True,
                retries=RETRIES,
                pure=False,
            )
            for i in range(n)
        ]
        yield Message(
            f"decoding {n} image(s) on the workers: "
            + ", ".join(_describe(v) for v in cfg.images[:4])
            + (" ..." if n > 4 else "")
        )
        infos = yield from _gather(client, futs, stop, [0], n, stage="cache")
        slots = _plan_images([tuple(d["shape"]) for d in infos], len(workers))
        plan = _Plan(
            client,
            spec_f,
            infos,
            _cores(cfg, model, geometry, infos),
            slots,
            split=n < len(workers),
        )
        yield from _run_steps(cfg, stop, model, mcfg, history, geometry, plan, spec, t_start)
    finally:
        try:
            client.run(dw.drop_run, spec.run_id)
        except Exception:  # noqa: BLE001 - best effort: workers may be gone
            pass
        client.close()


def _cores(cfg, model, geometry, infos) -> list[int]:
    """Core size per image, chosen as the single-process trainer chooses it."""
    from ._resources import BASELINE_BYTES, bytes_per_pixel
    from .training import core_size

    bpp = bytes_per_pixel(model)
    # A worker's budget: its RSS holds TensorFlow (the baseline) and the caches.
    budget = float(cfg.memory_gb) * 2**30 - BASELINE_BYTES
    return [core_size(cfg, tuple(d["shape"]), geometry, bpp, budget) for d in infos]


def _run_steps(cfg, stop, model, mcfg, history, geometry, plan: _Plan, spec, t_start):
    """The shared step loop (:func:`._step_loop.run_steps`) over cluster-computed steps."""
    from ._step_loop import run_steps
    from .tiling import tile_grid

    n_tiles = sum(
        len(tile_grid(tuple(d["shape"]), c, geometry.halo, geometry.stride))
        for d, c in zip(plan.infos, plan.cores)
    )
    n_workers = len(_workers(plan.client))
    yield Message(
        f"model: stride {geometry.stride}, output stride {geometry.output_stride}, halo "
        f"{geometry.halo}; tiles: {n_tiles} (core {max(plan.cores)} px) on {n_workers} "
        "workers, " + ("tiles split over the workers" if plan.split else "whole slides per worker")
    )

    def compute(step_no: int):
        weights = [v.numpy() for v in model.trainable_variables]
        return (
            yield from _one_step(plan, spec, weights, step_no, geometry, stop, f"step {step_no}")
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
    )
