"""Worker side of distributed training: tasks that run inside dask workers.

Each worker process keeps, between steps, TensorFlow, the model and its
compiled tile step (keyed by the model config and dtype) and the decoded
training images and validation regions (keyed by the run), so a step only
ships the weights (about 20 KB) and returns gradients of the same size. The
tasks reuse the single-process trainer's functions (the decoding with its
white balance at the working resolution, :func:`._train_data.build_image_data`;
the validation ROI's exclusion and regions, :mod:`.validation`; the per-tile
step, :func:`.image_step._tile_inputs`, :class:`._backend.TileStep`,
:func:`.image_step.image_step`), so a unit of work computes exactly what the
trainer computes for those pixels.

A unit is either a whole image (both Dice passes run on the worker, one round
trip) or a share of an image's tiles (``"forward"``: Dice's global sums;
``"grad"``: gradients with the client-reduced Dice coefficients).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: One lock per worker process: tasks share the model's variables.
_LOCK = threading.Lock()
#: The worker's cache: ``model_key``, ``model``, ``step_fn``, ``run``, ``images``.
_STATE: dict[str, Any] = {"model_key": None, "run": None, "images": {}, "info": {}}


@dataclass
class RunSpec:
    """What every task of one run needs (sent once, as a scattered future).

    Attributes
    ----------
    run_id
        Unique per training run: the worker drops images of other runs.
    images, masks, rois
        Slide paths (readable on the workers), masks (paths or
        :class:`.masks.AnnotationMask`) and ROIs, one per image.
    mask_kind, loss, seed, augment, memory_gb, cache_dir, border_weight, pen_weight
        As in :class:`.training.TrainConfig`.
    model_config
        :meth:`.unet.ModelConfig.to_dict` of the model.
    dtype
        ``"float32"``, ``"float64"`` or ``"mixed_bfloat16"``.
    output_stride, preview_factor
        Geometry of the outputs and of the preview.
    resolution
        The working resolution (:class:`.resolution.Resolution`).
    balanced
        White-balance every slide by its own glass colour (:mod:`.input_norm`).
    local_balance
        With ``balanced``: per place (:mod:`.white_field`), not per slide.
    keep_white
        The colour jitter keeps the glass on this white (white-balanced runs).
    val_rois
        Per training image, None or its validation ROI (left out of its labels).
    val_regions
        Validation regions in the trainer's order: ``(image, mask, i, roi)``,
        ``i`` None for a validation slide, else the training image whose
        ``roi`` it is.
    histograms
        Return each image's pixel histograms (:func:`._train_data.image_histogram`)
        for the input statistics.
    """

    run_id: str
    images: list[str]
    masks: list[Any]
    rois: list[Any]
    mask_kind: str
    loss: str
    seed: int
    augment: bool
    memory_gb: float
    cache_dir: str | None
    model_config: dict[str, Any]
    dtype: str
    output_stride: int
    preview_factor: int
    geometry: dict[str, int] = field(default_factory=dict)
    resolution: Any = None
    balanced: bool = False
    local_balance: bool = False
    keep_white: float | None = None
    val_rois: list[Any] = field(default_factory=list)
    val_regions: list[Any] = field(default_factory=list)
    histograms: bool = False
    border_weight: int = 1
    pen_weight: int = 1


def _model(spec: RunSpec):
    """The worker's model and tile step for this spec (built once per config)."""
    key = json.dumps(
        [spec.model_config, spec.dtype, spec.preview_factor, spec.loss], sort_keys=True
    )
    if _STATE["model_key"] != key:
        from ._quiet_tf import load_keras_quietly

        load_keras_quietly()
        from . import _backend
        from .unet import ModelConfig, build_unet

        model = build_unet(ModelConfig.from_dict(spec.model_config), seed=0, dtype=spec.dtype)
        _STATE["model"] = model
        _STATE["step_fn"] = _backend.TileStep(model, spec.preview_factor, spec.loss)
        _STATE["model_key"] = key
    return _STATE["model"], _STATE["step_fn"]


def _room(spec: RunSpec):
    """``cache_in_memory`` as the trainer's: a part of the budget left after the RSS."""
    from ._resources import BASELINE_BYTES, current_rss_bytes

    budget = float(spec.memory_gb) * 2**30
    room = [0.35 * max(budget - max(BASELINE_BYTES, current_rss_bytes()), 0)]

    def in_memory(nbytes: int) -> bool:
        if nbytes <= room[0]:
            room[0] -= nbytes
            return True
        return False

    return in_memory


def _image(spec: RunSpec, i: Any):
    """Decoded image ``i`` of the run (decoded once per worker and run).

    ``i`` an int: a training image, white-balanced by its glass colour when
    the run is, with its validation ROI's labels left out; ``("val", j)``:
    validation region ``j``. Both exactly as :func:`.training.train` builds them.
    """
    if _STATE["run"] != spec.run_id:
        for d in _STATE["images"].values():
            d.close()
        _STATE["images"] = {}
        _STATE["info"] = {}
        _STATE["run"] = spec.run_id
    if i not in _STATE["images"]:
        import dask

        # Inside a task, dask would send the slide's read graph (open file
        # handles) to the cluster: decode synchronously in this worker.
        with dask.config.set(scheduler="sync"):
            if isinstance(i, tuple):
                _STATE["images"][i] = _region(spec, i[1])
            else:
                _STATE["images"][i], _STATE["info"][i] = _training_image(spec, i)
    return _STATE["images"][i]


def _training_image(spec: RunSpec, i: int):
    from ._train_data import build_image_data, open_image_source
    from .validation import exclude_val_roi, val_roi_rect

    info: dict[str, Any] = {}
    table = None
    if spec.balanced:
        from .input_norm import slide_balance

        # A missing or non-RGB slide fails with its own error first.
        open_image_source(spec.images[i])[2]()
        table, info["white"], info["balance_note"] = slide_balance(
            spec.images[i], spec.local_balance
        )
    d = build_image_data(
        spec.images[i],
        spec.masks[i],
        roi=spec.rois[i],
        kind=spec.mask_kind,
        output_stride=spec.output_stride,
        cache_in_memory=_room(spec),
        cache_dir=spec.cache_dir,
        resolution=spec.resolution,
        balance=table,
        border_weight=spec.border_weight,
    )
    d.pen_weight = int(spec.pen_weight)
    # The head prior counts the labels before the validation ROI is left out.
    info["counts"] = (float(d.n_positive), float(d.n_labelled))
    roi = spec.val_rois[i] if spec.val_rois else None
    if roi is not None:
        try:
            rrect, res = val_roi_rect(spec.images[i], roi, d, spec.output_stride, spec.resolution)
            info["note"] = exclude_val_roi(d, roi, rrect, res, spec.output_stride)
        except BaseException:
            d.close()
            raise
    return d, info


def _region(spec: RunSpec, j: int):
    from .validation import build_region, val_roi_rect

    img, msk, i, roi = spec.val_regions[j]
    rrect = None
    if i is not None:  # a rectangle of training image i, on that image's output grid
        rrect, _ = val_roi_rect(img, roi, _image(spec, i), spec.output_stride, spec.resolution)
    return build_region(
        img,
        msk,
        rrect,
        kind=spec.mask_kind,
        output_stride=spec.output_stride,
        cache_in_memory=_room(spec),
        cache_dir=spec.cache_dir,
        resolution=spec.resolution,
        balanced=spec.balanced,
    )


def _set_weights(model: Any, weights: list[np.ndarray]) -> None:
    for v, w in zip(model.trainable_variables, weights):
        v.assign(w)


def describe_image(spec: RunSpec, i: int) -> dict[str, Any] | Any:
    """Decode image ``i`` on this worker: what the client needs to plan and report.

    Its shape, offset, labelled pixels (after the validation ROI), the counts
    before it (head prior), resolution, glass colour, the validation ROI's
    message and, with ``spec.histograms``, its pixel histograms. A bad input (slide,
    mask, ROI) comes back as an :class:`._dist_cluster.InputFailure`.
    """
    from ._dist_cluster import InputFailure
    from ._train_data import image_histogram
    from .errors import GigapixelError

    with _LOCK:
        try:
            d = _image(spec, i)
        except GigapixelError as exc:  # the same on every worker: not retried
            return InputFailure(exc)
        info = _STATE["info"][i]
        return {
            "name": d.name,
            "shape": tuple(d.shape),
            "offset": tuple(d.offset),
            "n_labelled": float(d.n_labelled),
            "counts": info["counts"],
            "downsample": float(d.downsample),
            "resolution": dict(d.resolution or {}),
            "white": info.get("white"),
            "balance_note": info.get("balance_note"),
            "note": info.get("note"),
            "histogram": image_histogram(d) if spec.histograms else None,
        }


def describe_region(spec: RunSpec, j: int) -> dict[str, Any] | Any:
    """Decode validation region ``j`` on this worker; its name, shape and labelled pixels."""
    from ._dist_cluster import InputFailure
    from .errors import GigapixelError

    with _LOCK:
        try:
            d = _image(spec, ("val", j))
        except GigapixelError as exc:  # the same on every worker: not retried
            return InputFailure(exc)
        return {"name": d.name, "shape": tuple(d.shape), "n_labelled": float(d.n_labelled)}


def score_region(
    spec: RunSpec, weights: list[np.ndarray], j: int, tiles: list[Any]
) -> tuple[np.ndarray, float]:
    """Forward sums of validation region ``j`` (:func:`.validation.iter_region_sums`)."""
    from .geometry import Geometry
    from .validation import iter_region_sums

    with _LOCK:
        model, step_fn = _model(spec)
        _set_weights(model, weights)
        gen = iter_region_sums(
            step_fn,
            _image(spec, ("val", j)),
            tiles,
            Geometry(**spec.geometry),
            spec.loss,
            spec.preview_factor,
        )
        while True:
            try:
                next(gen)
            except StopIteration as done:
                return done.value


def _view(spec: RunSpec, i: int, step_no: int):
    from ._train_augment import SlideView, augment_params

    d = _image(spec, i)
    aug = augment_params(spec.seed, step_no, spec.augment, spec.keep_white)
    return SlideView(d, spec.output_stride, aug)


def whole_image(
    spec: RunSpec, weights: list[np.ndarray], i: int, step_no: int, tiles: list[Any]
) -> dict[str, Any]:
    """The exact step of a whole image on this worker (the trainer's own function)."""
    from .geometry import Geometry
    from .image_step import image_step

    with _LOCK:
        model, step_fn = _model(spec)
        _set_weights(model, weights)
        d = _image(spec, i)
        res = image_step(
            step_fn,
            _view(spec, i, step_no),
            tiles,
            Geometry(**spec.geometry),
            spec.loss,
            d.n_labelled,
            spec.preview_factor,
        )
        return {
            "grads": res.grads,
            "loss": res.loss,
            "dice": res.dice,
            "soft_dice": res.soft_dice,
            "preview": res.preview,
        }


def tile_share(
    spec: RunSpec,
    weights: list[np.ndarray] | None,
    i: int,
    step_no: int,
    tiles: list[Any],
    which: str,
    coeff: tuple[float, float, float],
) -> dict[str, Any]:
    """Forward sums (``which="forward"``) or gradients (``"grad"``) of some tiles.

    ``coeff`` is ``(c_bce, c_da, c_db)``: the BCE weight ``1/N`` and Dice's
    closed-form coefficients from the client-reduced forward sums.
    """
    from .image_step import _tile_inputs

    with _LOCK:
        model, step_fn = _model(spec)
        if weights is not None:
            _set_weights(model, weights)
        view = _view(spec, i, step_no)
        os_, f = spec.output_stride, spec.preview_factor
        stats = np.zeros(8)
        grads: list[np.ndarray] | None = None
        patches = []
        with step_fn.transposed(view.transposed):  # a turned slide (image_step)
            for tile in tiles:
                inputs = _tile_inputs(view, tile, os_)
                if inputs is None:
                    continue
                x, y, wgt, oy, ox = inputs
                if which == "forward":
                    r = step_fn.forward(x, y, wgt, oy, ox)
                else:
                    r = step_fn.gradient(
                        x, y, wgt, oy, ox, c_bce=coeff[0], c_da=coeff[1], c_db=coeff[2]
                    )
                    if grads is None:
                        grads = [g.astype(np.float64) for g in r.grads]
                    else:
                        for acc, g in zip(grads, r.grads):
                            acc += g
                stats += r.stats
                patches.append((tile.core[0] // os_ // f, tile.core[2] // os_ // f, r.preview))
        return {"stats": stats, "grads": grads, "patches": patches}


def drop_run(run_id: str) -> bool:
    """Free a finished run's decoded images on this worker (``client.run``)."""
    with _LOCK:
        if _STATE["run"] == run_id:
            for d in _STATE["images"].values():
                d.close()
            _STATE["images"] = {}
            _STATE["info"] = {}
            _STATE["run"] = None
            return True
        return False
