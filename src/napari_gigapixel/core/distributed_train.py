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
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import GigapixelError
from .events import (
    JobStopped,
    Message,
    Progress,
    StopFlag,
    stop_requested,
)

#: Times a task is retried (on another worker) before the step fails.
RETRIES = 2
#: Seconds to wait for the scheduler.
CONNECT_TIMEOUT = 30.0
#: How often a step checks the stop flag and the workers while it waits.
POLL_SECONDS = 0.5
#: A step fails after the cluster had no worker this long.
NO_WORKER_SECONDS = 60.0


class DistributedTrainError(GigapixelError):
    """A distributed step that cannot complete (scheduler unreachable, workers lost)."""


def _model_dtype(model: Any) -> str:
    if any(getattr(ly.dtype_policy, "name", "") == "mixed_bfloat16" for ly in model.layers):
        return "mixed_bfloat16"
    return "float64" if str(model.trainable_variables[0].dtype) == "float64" else "float32"


def _connect(address: str):
    try:
        from distributed import Client
    except ImportError as exc:  # pragma: no cover - distributed ships with the extras
        raise DistributedTrainError(
            "distributed training needs the 'distributed' package: pip install distributed."
        ) from exc
    try:
        return Client(address, set_as_default=False, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise DistributedTrainError(
            f"{address}: cannot reach the dask scheduler ({exc}); start it "
            "(dask scheduler / dask worker) or check the address."
        ) from exc


def _workers(client) -> list[str]:
    workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        raise DistributedTrainError(
            "the dask cluster has no workers; start some with `dask worker SCHEDULER`."
        )
    return workers


def _gather(
    client,
    futures: list,
    stop: StopFlag | None,
    done: list[int],
    total: int,
    *,
    stage: str = "tiles",
    label: str = "",
):
    """Results of ``futures`` in order; yields Progress as they complete.

    Polls every :data:`POLL_SECONDS`: checks the stop flag, and fails the step
    when the cluster has had no worker for :data:`NO_WORKER_SECONDS` (tasks
    would otherwise wait forever).
    """
    pending = list(futures)
    waited = 0.0
    without_workers = 0.0
    try:
        while pending:
            if stop_requested(stop):
                client.cancel(futures)
                raise JobStopped()
            newly = [f for f in pending if f.done()]
            if not newly:
                time.sleep(0.02)
                waited += 0.02
                if waited >= POLL_SECONDS:
                    waited = 0.0
                    if client.scheduler_info()["workers"]:
                        without_workers = 0.0
                    else:
                        without_workers += POLL_SECONDS
                    if without_workers >= NO_WORKER_SECONDS:
                        raise DistributedTrainError(
                            f"the dask cluster has had no worker for {without_workers:.0f} s "
                            "in the middle of a step; the last checkpoint is unchanged. "
                            "Start workers, then resume from the checkpoint."
                        )
                continue
            pending = [f for f in pending if not f.done()]
            for _ in newly:
                done[0] += 1
                yield Progress(stage, done[0], total, label)
        return client.gather(futures)
    except (JobStopped, GigapixelError):
        raise
    except Exception as exc:  # KilledWorker, CommClosedError, worker-side bugs
        client.cancel(futures)
        raise DistributedTrainError(
            f"a distributed training step failed ({type(exc).__name__}: {exc}); the last "
            "checkpoint is unchanged. Check the workers' logs and memory, then resume "
            "from the checkpoint."
        ) from exc


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
    from .losses import dice_grad_coefficients
    from .tiling import tile_grid

    workers = _workers(plan.client)
    submit = _submitter(plan, workers)
    os_, f = spec.output_stride, spec.preview_factor
    use_dice = spec.loss in ("dice", "dice+bce")
    bce_on = spec.loss in ("bce", "dice+bce")
    aug = augment_params(spec.seed, step_no, spec.augment)
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
        offset = plan.infos[i]["offset"]
        out.append((res, preview_event(i, res, views[i], f, os_, offset)))
    return out


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
