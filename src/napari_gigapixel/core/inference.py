"""Tiled inference of a whole slide into an OME-Zarr prediction.

The model runs over the slide as an aligned dask graph (:mod:`.tiled_model`),
whose outputs over a chunk's core equal those of one whole-image run (the
tests check it to 1e-5); this module reads the slide, creates the stores and
commits them; :mod:`._predict_write` writes the chunks, relays progress and
runs the finishing passes (mask clean-up, pyramids).

The output stays at the model's output stride (1/4 of the slide by default);
see :mod:`.prediction_store` for the layout. The same graph runs on dask's
threaded scheduler or on a ``dask.distributed`` cluster (``scheduler=
"tcp://host:port"``).

Keras/TensorFlow are imported inside functions only: importing this module
loads neither. The model is loaded once per process and shared by its threads.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._predict_input import open_image as _open_image
from ._predict_write import chunk_writes, iter_compute, iter_finish
from .distributed_scheduler import check_scheduler_address, check_scheduler_reachable
from .errors import GigapixelError
from .events import Finished, JobStopped, Message, Progress, StopFlag
from .mask_clean import (
    DEFAULT_MIN_HOLE_UM2,
    DEFAULT_MIN_OBJECT_UM2,
    DEFAULT_MIN_WIDTH_UM,
    CleanSettings,
    plan_clean,
)
from .prediction_store import (
    PredictionError,
    PredictionStore,
    commit_store,
    create_store,
    mark_complete,
    open_prediction,
    remove_tree,
)
from .tiled_model import (
    DEFAULT_TTA,
    ModelRef,
    check_tta,
    default_chunk,
    predict_array,
    predict_dask,
    predict_whole,
)

__all__ = [
    "PredictConfig",
    "PredictionError",
    "PredictionStore",
    "open_prediction",
    "predict",
    "predict_array",
    "predict_dask",
    "predict_whole",
]


#: How the progress message says each mode (``predict --tta``).
_TTA_NOTES = {
    "half-darker": "; each chunk and its 3 mirror images, 2 of them darker, averaged",
    "flips": "; each chunk and its 3 mirror images, averaged",
    "flips+darker": "; each chunk and its 3 mirror images, and the same 4 darker, averaged",
    "none": "",
}


@dataclass
class PredictConfig:
    """What to predict and where to write it.

    Parameters
    ----------
    model
        Path of a ``.keras`` model saved by :func:`napari_gigapixel.core.unet.save_model`.
    image
        Slide path (anything :func:`open_slide` reads) or an ``(H, W, 3)`` uint8
        array (tests, small images).
    out
        Output OME-Zarr folder (conventionally ``*.zarr``).
    overwrite
        Replace an existing ``out`` (only once the new store is complete).
    chunk
        Level-0 chunk side (rounded to a multiple of S, at least the halo);
        default :data:`DEFAULT_CHUNK` (2048). A memory knob only.
    scheduler
        ``None``/``"threads"`` (local threads), ``"sync"`` (one thread), or the
        address of a ``dask.distributed`` scheduler (``"tcp://..."``).
    threshold
        Probability at or above which a pixel is tissue in the mask.
    roi
        Level-0 ``(y0, x0, y1, x1)`` (top-left, then bottom-right corner,
        half-open; the project's one ROI form) to predict instead of the whole
        slide. Stored in the prediction's metadata in the same order.
    write_probability
        Keep the probability pyramid (else level 0 only, for the mask's sake).
    mixed_precision
        Compute in bfloat16 (weights float32), as training can: faster on CPUs
        with bf16 support, probabilities within about 1e-3 of float32.
    resolution
        Working resolution (:class:`.resolution.Resolution`); None (default):
        the one the model was trained at (:func:`.resolution.default_for_model`:
        its um/px when the slide has um/px, else its downsample from level 0).
        The prediction's level 0 then has downsample ``resolution downsample x
        output stride`` relative to the slide's level 0.
    min_width_um, min_object_um2, min_hole_um2
        Mask clean-up (:mod:`.mask_clean`): strands and specks narrower than
        ``min_width_um`` are removed (an opening), then tissue objects smaller
        than ``min_object_um2``, then enclosed holes smaller than
        ``min_hole_um2`` are filled. 0 disables each; all 0: the mask is the
        thresholded probability, as before. The probability is never cleaned.
    tta
        Test-time augmentation (:data:`.tiled_model.TTA_MODES`):
        ``"half-darker"`` (default) predicts the slide, its left-right mirror
        image, and its up-down and both-ways mirror images with every stain
        20% stronger, and averages the probabilities (4x the model's time; on
        the tuning slides it raised 172 of 192 check-slide Dice scores against
        ``"flips"``, docs/quality.md); ``"flips"`` the slide and its three mirror images
        as they are (4x); ``"flips+darker"`` those four and the same four
        darker (8x); ``"none"``: one pass.
    """

    model: str
    image: Any
    out: str
    overwrite: bool = False
    chunk: int | None = None
    scheduler: str | None = None
    threshold: float = 0.5
    roi: tuple[int, int, int, int] | None = None
    write_probability: bool = True
    mixed_precision: bool = False
    resolution: Any = None
    min_width_um: float = DEFAULT_MIN_WIDTH_UM
    min_object_um2: float = DEFAULT_MIN_OBJECT_UM2
    min_hole_um2: float = DEFAULT_MIN_HOLE_UM2
    tta: str = DEFAULT_TTA

    def clean_settings(self) -> CleanSettings:
        """The mask clean-up settings, validated (:class:`.mask_clean.MaskCleanError`)."""
        return CleanSettings(self.min_width_um, self.min_object_um2, self.min_hole_um2).validate()


#: ``PredictConfig.scheduler`` values that run in this process (dask's own names).
LOCAL_SCHEDULERS = ("threads", "sync", "synchronous")


def check_scheduler(scheduler: str | None) -> str | None:
    """``scheduler`` if it is a local one or a dask.distributed address, else refuse it.

    The words are ``train``'s (:func:`.distributed_scheduler.check_scheduler_address`):
    a value such as ``processes`` must not quietly run on local threads.

    Raises
    ------
    SchedulerError
        Neither ``None``, one of :data:`LOCAL_SCHEDULERS`, nor an address.
    """
    if not scheduler or scheduler in LOCAL_SCHEDULERS:
        return scheduler or None
    return check_scheduler_address(scheduler)


def predict(cfg: PredictConfig, stop: StopFlag | None = None) -> Iterator[Any]:
    """Predict a slide into an OME-Zarr, chunk by chunk; a generator of events.

    Yields :class:`Message`, :class:`Progress` (stage ``"chunks"``: chunks
    done of total) and last :class:`Finished` with the output path, timings,
    Mpx/s and the tissue fraction. On stop: the partial store is deleted and
    ``Finished(stopped=True)`` is yielded; an existing ``out`` is untouched.

    Raises
    ------
    PredictionError
        ``out`` exists and ``overwrite`` is off (checked before any work).
    OutputError
        ``out`` is, holds or lies inside the slide or the model file.
    InputError
        The image is a mask or a prediction, not a slide.
    SchedulerError
        ``scheduler`` is no address (``"processes"``), or cannot be reached
        (checked in seconds, before the model is read).
    GigapixelError
        Unreadable model or slide, bad region (the message says which).
    """
    from .preflight import OutputError, check_apart, check_output, check_slide_input
    from .unet import read_model_meta

    t0 = time.perf_counter()
    tta = check_tta(cfg.tta)  # a bad option fails before any file is read
    scheduler = check_scheduler(cfg.scheduler)
    distributed = scheduler is not None and "://" in scheduler
    # Messages show the paths as given; the stores and the workers use absolute ones.
    out = os.path.abspath(os.fspath(cfg.out))
    by_path = isinstance(cfg.image, (str, os.PathLike))
    # Replacing the output deletes what it is or holds: never an input.
    check_apart(cfg.out, ([(cfg.image, "slide")] if by_path else []) + [(cfg.model, "model")])
    try:
        check_output(cfg.out, overwrite=cfg.overwrite, folder=True, what="prediction")
    except OutputError as exc:  # the class this function has always raised for it
        raise PredictionError(str(exc)) from None
    if by_path:
        check_slide_input(cfg.image)  # a mask or a prediction is not a slide
    if distributed:
        check_scheduler_reachable(scheduler)  # in seconds, before the model is read
    model_path = os.path.abspath(os.fspath(cfg.model))
    model_meta = read_model_meta(cfg.model)  # clear error for a foreign file, no Keras
    if not 0.0 <= float(cfg.threshold) <= 1.0:
        raise GigapixelError(f"threshold must be within [0, 1], got {cfg.threshold}.")
    cleaning = cfg.clean_settings()
    from .unet import Geometry

    g = model_meta["geometry"]
    geometry = Geometry(g["stride"], g["output_stride"], g["rf_before"], g["rf_after"])
    os_, s = int(geometry.output_stride), int(geometry.stride)
    chunk = max(geometry.halo, s, int(cfg.chunk or default_chunk(geometry)) // s * s)
    mcfg = model_meta.get("model_config") or {}
    white = balance = None
    flag = mcfg.get if isinstance(mcfg, dict) else lambda k: getattr(mcfg, k, False)
    if flag("white_balance"):
        # The model was trained on white-balanced slides: balance this one the
        # same way, per place (its glass field) or per slide as the model was;
        # a function of each pixel and its place, so exact under chunking.
        from .input_norm import slide_balance

        balance, white, balance_note = slide_balance(cfg.image, bool(flag("white_field")))
    # The slide opens before the model loads: a bad path fails in a second.
    image, info = _open_image(
        cfg.image,
        cfg.roi,
        by_path_chunk=chunk if distributed else None,
        resolution=cfg.resolution,
        model_meta=model_meta,
        balance=balance,
    )
    resolution_note = info.pop("resolution_message")
    d_res = float(info["resolution"]["downsample"])
    clean_px, clean_rec = plan_clean(cleaning, info.get("mpp"), model_meta, d_res * os_)
    # Writable, and room for the stores (uncompressed upper bound: probability
    # and mask, uint8, at the output stride, plus a third for their pyramids).
    rh, rw = info["resolution_shape"]
    check_output(
        cfg.out,
        overwrite=cfg.overwrite,
        folder=True,
        expected_bytes=int(2 * 1.34 * -(-rh // os_) * -(-rw // os_)),
        what="prediction",
    )
    yield Message(resolution_note)
    if cleaning.active and not info.get("mpp"):
        yield Message(clean_rec["um_per_px_source"])
    if white is not None:
        info["white_point"] = list(white)
        info["white_field"] = bool(flag("white_field"))
        yield Message(balance_note)
    ref = ModelRef(model_path, bool(cfg.mixed_precision))
    if distributed:
        model: Any = ref  # each worker process loads it once
    else:
        yield Message(f"loading model {model_path}")
        model = ref.load()
    prob = predict_dask(model, image, geometry, chunk, tta)
    out_chunk = chunk // os_
    store_meta = {
        "kind": "prediction",
        "model": model_path,
        "geometry": geometry.to_dict(),
        "threshold": float(cfg.threshold),
        "downsample": float(os_) * d_res,
        "mixed_precision": bool(cfg.mixed_precision),
        "tta": tta,
        "clean": clean_rec,
        **info,
    }
    tmp = f"{out}.partial-{os.getpid()}"
    remove_tree(tmp)
    abort = threading.Event()
    try:
        # zarr chunks = the regular dask chunks, so no two tasks share a zarr
        # chunk (the merged last chunk spills only into a chunk of its own).
        zchunks = (prob.chunks[0][0], prob.chunks[1][0])
        prob_arr, mask_arr = create_store(tmp, prob.shape, zchunks, store_meta)
        counts = chunk_writes(
            prob, prob_arr, mask_arr, float(cfg.threshold), None if distributed else abort
        )
        total = int(np.prod(counts.numblocks))
        h, w = info["resolution_shape"]
        yield Message(
            f"predicting {h} x {w} px in {total} chunks of {chunk} px "
            f"(output at 1/{os_}, {out_chunk} px chunks" + _TTA_NOTES[tta] + ")"
        )
        yield Progress("chunks", 0, total)
        if distributed:
            yield Message("loading the model on the workers")
        tissue, t_compute = yield from iter_compute(
            counts, total, scheduler, abort, stop, ref if distributed else None, tta
        )
        tissue, downs = yield from iter_finish(
            tmp, tissue, clean_px, cleaning, cfg.write_probability, stop
        )
        seconds = time.perf_counter() - t0
        result = {
            "out": out,
            "shape": [h, w],
            "level0_shape": info["region_shape"],
            "output_shape": list(prob.shape),
            "downsample": float(os_) * d_res,
            "resolution": {**info["resolution"], "note": resolution_note},
            "levels": len(downs),
            "chunks": total,
            "chunk": chunk,
            "seconds": seconds,
            "compute_seconds": t_compute,
            "mpx_per_s": h * w / 1e6 / max(t_compute, 1e-9),
            "tissue_fraction": tissue / max(1, prob.shape[0] * prob.shape[1]),
            "tta": tta,
            "clean": clean_rec,
        }
        mark_complete(tmp, {"result": result})
        commit_store(tmp, out, overwrite=cfg.overwrite)
    except JobStopped:
        abort.set()
        time.sleep(0.1)  # let a chunk already being written land before deleting
        remove_tree(tmp)
        yield Finished(result={"out": None}, stopped=True)
        return
    except BaseException:
        abort.set()
        time.sleep(0.1)
        remove_tree(tmp)
        raise
    yield Finished(result=result)
