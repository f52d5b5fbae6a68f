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

import math
import os
import resource
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._train_augment import SlideView as _View
from ._train_augment import augment_params as _augment_params
from .errors import GigapixelError
from .events import (
    CheckpointEvent,
    Finished,
    JobStopped,
    Message,
    PreviewEvent,
    Progress,
    StepEvent,
    StopFlag,
    stop_requested,
)
from .losses import dice_grad_coefficients, dice_loss_from_sums, hard_dice
from .tiling import Tile, padded_shape, round_up, tile_grid
from .unet import Geometry, ModelConfig

#: Resident memory of the worker before any tile (interpreter + TensorFlow).
BASELINE_BYTES = int(0.8 * 2**30)
#: Compute working set per window pixel per byte of layer outputs: forward
#: activations kept for the backward pass, their gradients and the kernels'
#: temporaries. Calibrated with ``benchmarks/bench_train.py`` on TF 2.21 CPU:
#: the default model measured ~45 B/px (float32) and ~27 B/px (bf16) against
#: 71 and 55 B/px of layer outputs, so 2.0 keeps a margin of about 10%.
ACTIVATION_FACTOR = 2.0
#: Learning-rate schedules, and the fraction of ``lr`` the cosine ends at.
LR_SCHEDULES = ("cosine", "constant")
LR_FLOOR = 0.05


class TrainConfigError(GigapixelError):
    """A training configuration that cannot run (the message says which field)."""


@dataclass
class TrainConfig:
    """Everything a training run needs; a plain, picklable dataclass.

    Parameters
    ----------
    images
        Slides: paths (any format :func:`.slide.open_slide` reads) or
        ``(H, W, 3)`` uint8 numpy arrays.
    masks
        One per image: a path (raster at any level, zarr, GeoJSON), an
        :class:`.masks.AnnotationMask`, or a 2-D numpy array at any level of
        the slide (the level is inferred from the shape ratio).
    out
        Model file (``.keras``) written at every checkpoint, atomically.
    steps
        Optimizer steps to run (each sees every pixel of every image).
    loss
        ``"dice+bce"`` (default), ``"bce"`` or ``"dice"``. The defaults
        (``dice+bce``, ``lr`` 1e-2, cosine schedule, 100 steps) are the recipe
        measured by ``benchmarks/bench_quality.py``: held-out Dice >= 0.98 on
        synthetic slides. ``"dice"`` alone is not a good start from random
        weights: for a near-uniform prediction, raising every probability
        always raises soft Dice, so it runs to "everything is tissue", the
        sigmoid saturates and its gradient vanishes (stuck at Dice
        ``2f / (1 + f)`` for a tissue fraction ``f``). ``"bce"`` alone can let
        the last decoder layer's few ReLUs die on a slide that is half tissue
        (the prediction then stays at the base rate). Use ``"dice"`` to
        fine-tune (``resume``) a model that already separates tissue.
    lr
        Adam learning rate (the peak of the schedule).
    lr_schedule
        ``"cosine"`` (default): the rate falls from ``lr`` along half a cosine
        to ``lr * LR_FLOOR`` at the last step, so the model written at the end
        sits in a minimum instead of wherever the last large step threw it;
        ``"constant"``: ``lr`` throughout. Steps count from the first run: a
        run resumed for ``steps`` more follows one curve over all its steps
        (stop + resume gives the uninterrupted run's weights).
    tile
        Core size in level-0 pixels (rounded to the model's stride), or
        ``"auto"``: the largest that fits ``memory_gb``; the whole image in one
        tile when it fits.
    memory_gb
        Memory budget of the run (peak resident set), used by ``tile="auto"``
        and to decide whether the decoded-pixel cache lives in memory or in a
        temporary file.
    mode
        ``"stream"`` (tiles) or ``"whole"`` (one tile per image, for comparison).
    rois
        Per image, ``None`` or a rectangle ``(y0, x0, y1, x1)`` in level-0
        pixels to train on part of the slide.
    seed
        Seeds the initial weights: the same seed gives the same model.
    model
        Architecture (:class:`.unet.ModelConfig`).
    resume
        A checkpoint to continue from (its weights, optimizer state, model
        config and history); ``steps`` more steps are run.
    augment
        Whole-slide augmentations, exact under tiling: a random flip / 90-degree
        turn and a brightness/contrast jitter of the whole slide, drawn per step
        from ``seed``.
    mixed_precision
        bfloat16 compute (float32 weights; transposed convolutions and the
        head stay float32). ``"auto"`` (default): on when the CPU has native
        bfloat16 instructions (AVX512-BF16 or AMX), where it measured 1.3-1.5x
        faster; off elsewhere (emulated bf16 is slower than float32).
    dtype
        ``"float32"`` or ``"float64"`` when ``mixed_precision`` is off.
    checkpoint_every
        Write ``out`` every this many steps (and at the end and on stop).
    preview_downsample
        Pixel size (level-0 pixels) of the live preview.
    mask_kind
        ``"dense"`` or ``"scribble"`` for masks given as paths or arrays.
    cache_dir
        Folder for the decoded-pixel cache file (default: the system's temp).
    """

    images: list[Any] = field(default_factory=list)
    masks: list[Any] = field(default_factory=list)
    out: str = "model.keras"
    steps: int = 100
    loss: str = "dice+bce"
    lr: float = 1e-2
    lr_schedule: str = "cosine"
    tile: int | str = "auto"
    memory_gb: float = 3.5
    mode: str = "stream"
    rois: list[Any] | None = None
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    resume: str | None = None
    augment: bool = False
    mixed_precision: bool | str = "auto"
    dtype: str = "float32"
    checkpoint_every: int = 10
    preview_downsample: int = 32
    mask_kind: str = "dense"
    cache_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (arrays are described, not stored)."""
        d = asdict(self) if not self._has_arrays() else dict(self.__dict__)
        d["images"] = [_describe(v) for v in self.images]
        d["masks"] = [_describe(v) for v in self.masks]
        d["model"] = self.model.to_dict()
        return d

    def _has_arrays(self) -> bool:
        return any(not isinstance(v, (str, os.PathLike)) for v in [*self.images, *self.masks])


def _describe(v: Any) -> str:
    if isinstance(v, (str, os.PathLike)):
        return os.fspath(v)
    name = getattr(v, "name", None)
    shape = getattr(v, "shape", None)
    return f"<{type(v).__name__} {name or ''} {tuple(shape) if shape is not None else ''}>"


def cpu_has_bf16() -> bool:
    """Whether this (Linux) CPU has native bfloat16 instructions."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read(1 << 16)
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_mixed_precision(setting: bool | str) -> bool:
    """Resolve ``TrainConfig.mixed_precision`` (True, False or ``"auto"``)."""
    if setting == "auto":
        return cpu_has_bf16()
    return bool(setting)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def current_rss_bytes() -> int:
    """Current resident set size (psutil), or the peak when unavailable."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil missing or restricted: be conservative
        return peak_rss_bytes()


def bytes_per_pixel(model: Any) -> float:
    """Working set of one training tile per window pixel, from the model's layers.

    Sums every layer output's bytes per level-0 pixel (channels over stride
    squared, times the item size) and scales by :data:`ACTIVATION_FACTOR`.
    """
    total = 3.0  # the uint8 window itself
    for layer in model.layers:
        out = getattr(layer, "output", None)
        if out is None or len(out.shape) != 4:
            continue
        tensor_stride = _tensor_stride(model, layer)
        item = np.dtype(str(out.dtype)).itemsize if str(out.dtype) != "bfloat16" else 2
        total += ACTIVATION_FACTOR * item * int(out.shape[-1]) / tensor_stride**2
    return total


def _tensor_stride(model: Any, layer: Any) -> int:
    # Cumulative stride of a layer's output, from the builder's naming scheme
    # and layer types (model_geometry walks the same graph).
    from .unet import _layer_geometry

    memo: dict[int, tuple[int, int, int]] = {}

    def visit(tensor):
        key = id(tensor)
        if key not in memo:
            op, ni, _ = tensor._keras_history
            parents = list(op._inbound_nodes[ni].input_tensors)
            memo[key] = (
                (1, 0, 0) if not parents else _layer_geometry(op, [visit(p) for p in parents])
            )
        return memo[key]

    return visit(layer.output)[0]


def auto_core(shape: tuple[int, int], geometry: Geometry, bpp: float, budget_bytes: float) -> int:
    """Largest aligned core whose window fits ``budget_bytes`` (whole image if it fits)."""
    s, h = geometry.stride, geometry.halo
    hp, wp = padded_shape(shape, s)
    if hp * wp * bpp <= budget_bytes:
        return max(hp, wp)
    side = math.sqrt(max(budget_bytes, 0) / bpp)
    core = int(side - 2 * h) // s * s
    return max(s, core)


# --------------------------------------------------------------------------- streaming


@dataclass
class ImageStep:
    """What one image contributed to a step."""

    grads: list[np.ndarray]
    loss: float
    dice: float
    soft_dice: float
    preview: np.ndarray


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
        ``"bce"``, ``"dice"`` or ``"dice+bce"``.
    n_labelled
        Number of labelled output pixels of the image (BCE is their mean).
    label
        Message of the progress events.

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
    use_dice = loss in ("dice", "dice+bce")
    c_bce = 1.0 / n_labelled if loss in ("bce", "dice+bce") else 0.0
    one_tile = len(tiles) == 1
    passes = ["grad"] if one_tile or not use_dice else ["forward", "grad"]
    total = len(tiles) * len(passes)
    done = 0
    grads: list[np.ndarray] | None = None
    stats_f = np.zeros(8)
    stats_g = np.zeros(8)
    coeff = (0.0, 0.0)
    own_pool = pool is None
    pool = pool or ThreadPoolExecutor(1)
    try:
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
                yield Progress("tiles", done, total, label)
    finally:
        if own_pool:
            pool.shutdown(wait=True)
    stats = stats_f if passes[0] == "forward" else stats_g
    value = 0.0
    if c_bce:
        value += stats_g[0] / n_labelled
    soft = 1.0 - dice_loss_from_sums(stats[1], stats[2], stats[3])
    if use_dice:
        value += 1.0 - soft
    return ImageStep(
        grads=grads or [],
        loss=float(value),
        dice=hard_dice(stats[4], stats[5], stats[6]),
        soft_dice=float(soft),
        preview=preview,
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


# --------------------------------------------------------------------------- the run


def _validate(cfg: TrainConfig) -> None:
    from .losses import check_loss

    check_loss(cfg.loss)
    if not cfg.images:
        raise TrainConfigError("training needs at least one image (TrainConfig.images).")
    if len(cfg.masks) != len(cfg.images):
        raise TrainConfigError(
            f"training needs one mask per image: got {len(cfg.images)} images and "
            f"{len(cfg.masks)} masks."
        )
    if cfg.rois is not None and len(cfg.rois) != len(cfg.images):
        raise TrainConfigError("rois: give one entry (or None) per image.")
    if int(cfg.steps) < 0:
        raise TrainConfigError(f"steps must be >= 0, got {cfg.steps}.")
    if cfg.mode not in ("stream", "whole"):
        raise TrainConfigError(f"mode must be 'stream' or 'whole', not {cfg.mode!r}.")
    if not (cfg.tile == "auto" or (isinstance(cfg.tile, int) and cfg.tile > 0)):
        raise TrainConfigError(
            f"tile must be 'auto' or a positive number of pixels, not {cfg.tile!r}."
        )
    if not str(cfg.out).endswith(".keras"):
        raise TrainConfigError(f"{cfg.out}: the output model file name must end with '.keras'.")
    if cfg.mask_kind not in ("dense", "scribble"):
        raise TrainConfigError(f"mask_kind must be 'dense' or 'scribble', not {cfg.mask_kind!r}.")
    if not cfg.lr > 0:
        raise TrainConfigError(f"lr must be positive, got {cfg.lr}.")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise TrainConfigError(
            f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not {cfg.lr_schedule!r}."
        )


def learning_rate(lr: float, schedule: str, k: int, steps: int) -> float:
    """Learning rate of step ``k`` (0-based) of a run of ``steps`` steps.

    ``"cosine"`` goes from ``lr`` at the first step to ``lr * LR_FLOOR`` at the
    last; ``"constant"`` is ``lr``.
    """
    if schedule == "constant" or steps <= 1:
        return float(lr)
    t = k / (steps - 1)
    return float(lr) * (LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * t)))


def _make_model(cfg: TrainConfig):
    """(model, model_config, history) from scratch or from ``cfg.resume``."""
    import keras

    from .unet import build_unet, load_model

    if cfg.resume:
        model, meta = load_model(cfg.resume)
        mcfg = meta.get("model_config") or cfg.model
        if getattr(model, "optimizer", None) is None:
            model.compile(optimizer=keras.optimizers.Adam(cfg.lr))
        return model, mcfg, list(meta.get("history", []))
    dtype = "mixed_bfloat16" if use_mixed_precision(cfg.mixed_precision) else cfg.dtype
    model = build_unet(cfg.model, seed=cfg.seed, dtype=dtype)
    model.compile(optimizer=keras.optimizers.Adam(cfg.lr))
    return model, cfg.model, []


def train(cfg: TrainConfig, stop: StopFlag | None = None) -> Iterator[Any]:
    """Train a U-Net on whole slides; a generator of :mod:`.events`.

    Each step computes the exact whole-image gradient of the loss summed over
    the images (tile by tile within the memory budget) and applies one Adam
    update. Yields ``Message``, ``Progress`` (stages ``"cache"`` and
    ``"tiles"``), ``PreviewEvent`` (per image and step, from the step's forward
    pass), ``StepEvent``, ``CheckpointEvent`` and last ``Finished``.

    On stop (between tiles) the half-done step is dropped, the model after
    the last complete step is checkpointed, and ``Finished(stopped=True)`` is
    the last event. Nothing is written before the inputs were validated.

    Raises
    ------
    GigapixelError
        Bad configuration, slides or masks (raised before anything is written).
    """
    _validate(cfg)
    from ._quiet_tf import load_keras_quietly

    load_keras_quietly()
    t_start = time.perf_counter()
    from .unet import model_geometry

    model, mcfg, history = _make_model(cfg)
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

    datas = []
    try:
        rois = cfg.rois or [None] * len(cfg.images)
        for i, (img, msk) in enumerate(zip(cfg.images, cfg.masks)):
            yield Message(f"decoding image {i + 1}/{len(cfg.images)}: {_describe(img)}")
            datas.append(
                _train_data().build_image_data(
                    img,
                    msk,
                    roi=rois[i],
                    kind=cfg.mask_kind,
                    output_stride=os_,
                    cache_in_memory=in_memory,
                    cache_dir=cfg.cache_dir,
                )
            )
            yield Progress("cache", i + 1, len(cfg.images))
        yield from _run(cfg, stop, model, mcfg, history, geometry, datas, budget, t_start)
    finally:
        for d in datas:
            d.close()


def _train_data():
    from . import _train_data

    return _train_data


def _run(cfg, stop, model, mcfg, history, geometry, datas, budget, t_start):
    from . import _backend
    from .unet import save_model

    os_ = geometry.output_stride
    bpp = bytes_per_pixel(model)
    # The RSS now holds the interpreter, TensorFlow and the in-memory caches.
    compute_budget = budget - max(BASELINE_BYTES, current_rss_bytes())
    grids: list[list[Tile]] = []
    cores: list[int] = []
    for d in datas:
        if cfg.mode == "whole":
            core = max(padded_shape(d.shape, geometry.stride))
        elif cfg.tile == "auto":
            core = auto_core(d.shape, geometry, bpp, compute_budget)
        else:
            core = round_up(int(cfg.tile), geometry.stride)
        grid = tile_grid(d.shape, core, geometry.halo, geometry.stride)
        cores.append(min(core, max(padded_shape(d.shape, geometry.stride))))
        grids.append(grid)
    n_tiles = sum(len(g) for g in grids)
    f = preview_factor(geometry, cfg.preview_downsample)
    step_fn = _backend.TileStep(model, f)
    yield Message(
        f"model: stride {geometry.stride}, output stride {os_}, halo {geometry.halo}; "
        f"tiles: {n_tiles} (core {max(cores)} px)"
    )
    start_step = len(history)
    last_saved = start_step if cfg.resume else -1
    completed = start_step
    step_seconds: list[float] = []
    train_config = cfg.to_dict()

    def checkpoint():
        save_model(
            model,
            cfg.out,
            geometry=geometry,
            model_config=mcfg,
            train_config=train_config,
            history=history,
        )
        return CheckpointEvent(path=os.fspath(cfg.out), step=completed)

    pool = ThreadPoolExecutor(1)
    stopped = False
    try:
        for k in range(int(cfg.steps)):
            step_no = start_step + k + 1
            t0 = time.perf_counter()
            # Set per step (not a Keras schedule object: a resumed run's optimizer
            # comes from the file). Steps count from the first run, so stop +
            # resume follows the same curve as the uninterrupted run.
            lr_k = learning_rate(
                cfg.lr, cfg.lr_schedule, start_step + k, start_step + int(cfg.steps)
            )
            model.optimizer.learning_rate = lr_k
            total_grads: list[np.ndarray] | None = None
            losses, dices, softs = [], [], []
            previews = []
            for i, (d, grid) in enumerate(zip(datas, grids)):
                view = _View(d, os_, _augment_params(cfg.seed, step_no, cfg.augment))
                if (view.k or view.flip) and view.shape != d.shape:
                    grid = tile_grid(view.shape, cores[i], geometry.halo, geometry.stride)
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
                if total_grads is None:
                    total_grads = res.grads
                else:
                    for acc, g in zip(total_grads, res.grads):
                        acc += g
                losses.append(res.loss)
                dices.append(res.dice)
                softs.append(res.soft_dice)
                if not (view.k or view.flip):
                    previews.append(
                        PreviewEvent(
                            image_index=i,
                            probability=res.preview,
                            downsample=float(f * os_),
                            offset=d.offset,
                        )
                    )
            if stop_requested(stop):
                raise JobStopped()
            _backend.apply_gradients(model, total_grads)
            completed = step_no
            seconds = time.perf_counter() - t0
            step_seconds.append(seconds)
            entry = {
                "step": step_no,
                "loss": float(sum(losses)),
                "dice": float(np.mean(dices)),
                "soft_dice": float(np.mean(softs)),
                "seconds": seconds,
                "lr": lr_k,
            }
            history.append(entry)
            yield from previews
            yield StepEvent(
                step=step_no,
                total_steps=start_step + int(cfg.steps),
                loss=entry["loss"],
                dice=entry["dice"],
                seconds=seconds,
                peak_rss_bytes=peak_rss_bytes(),
                tile=max(cores),
                n_tiles=n_tiles,
                extra={"soft_dice": entry["soft_dice"], "lr": lr_k},
            )
            if cfg.checkpoint_every and (k + 1) % int(cfg.checkpoint_every) == 0:
                yield checkpoint()
                last_saved = completed
    except JobStopped:
        stopped = True
    finally:
        pool.shutdown(wait=True)
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
        "tile": max(cores),
        "n_tiles": n_tiles,
        "megapixels": sum(d.shape[0] * d.shape[1] for d in datas) / 1e6,
        "seconds": time.perf_counter() - t_start,
        "out": os.fspath(cfg.out) if completed != start_step or cfg.resume else None,
        "geometry": geometry.to_dict(),
    }
    yield Finished(result=result, stopped=stopped)
