"""The optimizer-step loop shared by the local and the distributed trainer.

Both trainers compute one step's per-image results their own way (tiles in
this process, or tasks on a dask cluster) and hand them to :func:`run_steps`,
which owns everything around them: the learning-rate schedule, the float64
sum of the images' gradients in image order, the Adam update, the history,
previews, step events, checkpoints, stop handling and the final result. So
the two produce the same weights and the same events.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import numpy as np

from ._resources import peak_rss_bytes
from .events import (
    CheckpointEvent,
    Finished,
    JobStopped,
    PreviewEvent,
    StepEvent,
    StopFlag,
    stop_requested,
)
from .train_config import learning_rate

#: ``compute(step_no) -> generator of events returning [(ImageStep, PreviewEvent | None)]``.
StepCompute = Callable[[int], Generator[Any, None, list]]


def run_steps(
    cfg: Any,
    stop: StopFlag | None,
    model: Any,
    mcfg: Any,
    history: list[dict[str, Any]],
    geometry: Any,
    compute: StepCompute,
    *,
    tile: int,
    n_tiles: int,
    megapixels: float,
    t_start: float,
    extra: dict[str, Any] | None = None,
    save_meta: Callable[[], dict[str, Any]] | None = None,
    validate: Callable[[int, bool, Callable[[str], Any]], Generator[Any, None, Any]] | None = None,
    result_extra: Callable[[], dict[str, Any]] | None = None,
) -> Iterator[Any]:
    """Run ``cfg.steps`` optimizer steps; yields the trainer's events, ``Finished`` last.

    Parameters
    ----------
    compute
        Called with the 1-based step number (after the weights of the previous
        step are in ``model``); a generator (its events are passed on) that
        returns one ``(ImageStep, PreviewEvent or None)`` per image.
    tile, n_tiles, megapixels
        Reported in the step events and the result.
    extra
        Added to every step event's ``extra`` and to the result.
    save_meta
        Extra metadata of every checkpoint (``save_model`` keywords: the
        validation bookkeeping, the working resolution), asked at each save.
    validate
        ``validate(step_no, last, save)`` after each update: a generator (its
        events are passed on) returning None (not due) or figures added to the
        step's history entry and event (``val_dice``, ...); ``save(path)``
        writes a checkpoint there (the best model).
    result_extra
        Figures added to the final result, asked at the end.
    """
    from . import _backend
    from .model_io import save_model

    extra = dict(extra or {})
    start_step = len(history)
    last_saved = start_step if cfg.resume else -1
    completed = start_step
    step_seconds: list[float] = []
    train_config = cfg.to_dict()

    def checkpoint(path: Any = None):
        path = cfg.out if path is None else path
        save_model(
            model,
            path,
            geometry=geometry,
            model_config=mcfg,
            train_config=train_config,
            history=history,
            **(save_meta() if save_meta is not None else {}),
        )
        return CheckpointEvent(path=os.fspath(path), step=completed)

    stopped = False
    try:
        for k in range(int(cfg.steps)):
            step_no = start_step + k + 1
            t0 = time.perf_counter()
            # Set per step (not a Keras schedule object: a resumed run's optimizer
            # comes from the file). Steps count from the first run, so stop +
            # resume follows the same curve as the uninterrupted run.
            lr_k = learning_rate(
                cfg.lr,
                cfg.lr_schedule,
                start_step + k,
                start_step + int(cfg.steps),
                int(getattr(cfg, "warmup", 0)),
            )
            model.optimizer.learning_rate = lr_k
            per_image = yield from compute(step_no)
            if stop_requested(stop):
                raise JobStopped()
            # Images' gradients summed in float64, in image order.
            total = [np.array(g, np.float64) for g in per_image[0][0].grads]
            for res, _ in per_image[1:]:
                for acc, g in zip(total, res.grads):
                    acc += g
            _backend.apply_gradients(model, total)
            completed = step_no
            seconds = time.perf_counter() - t0
            step_seconds.append(seconds)
            entry = {
                "step": step_no,
                "loss": float(sum(r.loss for r, _ in per_image)),
                "dice": float(np.mean([r.dice for r, _ in per_image])),
                "soft_dice": float(np.mean([r.soft_dice for r, _ in per_image])),
                "seconds": seconds,
                "lr": lr_k,
            }
            history.append(entry)
            yield from (p for _, p in per_image if p is not None)
            step_extra = {"soft_dice": entry["soft_dice"], "lr": lr_k, **extra}
            if validate is not None:
                figures = yield from validate(step_no, k + 1 == int(cfg.steps), checkpoint)
                if figures:
                    entry.update(figures)
                    step_extra.update(val_dice=figures["val_dice"], val_loss=figures["val_loss"])
            yield StepEvent(
                step=step_no,
                total_steps=start_step + int(cfg.steps),
                loss=entry["loss"],
                dice=entry["dice"],
                seconds=seconds,
                peak_rss_bytes=peak_rss_bytes(),
                tile=tile,
                n_tiles=n_tiles,
                extra=step_extra,
            )
            if cfg.checkpoint_every and (k + 1) % int(cfg.checkpoint_every) == 0:
                yield checkpoint()
                last_saved = completed
    except JobStopped:
        stopped = True
    if completed != last_saved and completed > 0:
        yield checkpoint()
    steady = step_seconds[1:] or step_seconds
    result = {
        "steps": completed - start_step,
        "total_steps": completed,
        "loss": history[-1]["loss"] if history else None,
        "dice": history[-1]["dice"] if history else None,
        "seconds_per_step": float(np.mean(steady)) if steady else None,
        "first_step_seconds": step_seconds[0] if step_seconds else None,
        "peak_rss_bytes": peak_rss_bytes(),
        "tile": tile,
        "n_tiles": n_tiles,
        "megapixels": megapixels,
        "seconds": time.perf_counter() - t_start,
        "out": os.fspath(cfg.out) if completed != start_step or cfg.resume else None,
        "geometry": geometry.to_dict(),
        **extra,
        **(result_extra() if result_extra is not None else {}),
    }
    yield Finished(result=result, stopped=stopped)


def preview_event(i: int, res: Any, view: Any, f: float, os_: int, offset) -> PreviewEvent | None:
    """The preview of image ``i`` (none for a flipped or turned view).

    ``f * os_`` is its pixel size in level-0 pixels (``f`` includes the working
    resolution's downsample when that is not level 0).
    """
    if view.geometric or res.preview is None:
        return None
    return PreviewEvent(
        image_index=i, probability=res.preview, downsample=float(f * os_), offset=tuple(offset)
    )
