"""Training parameters: :class:`TrainConfig`, its validation and the learning-rate schedule.

Shared by the trainer, the CLI (``train``) and the Train widget: the dataclass's
defaults are the measured recipe, so there is one place to change it.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .distributed_scheduler import check_scheduler_address
from .errors import GigapixelError
from .resolution import Resolution
from .unet import ModelConfig, preset_config

#: The recipe's model size (:data:`.unet.PRESETS`).
DEFAULT_MODEL_SIZE = "medium"

#: Learning-rate schedules, and the fraction of ``lr`` the cosine ends at.
LR_SCHEDULES = ("cosine", "constant")
LR_FLOOR = 0.05
#: Largest ``border_weight`` and ``pen_weight``: label weights are uint8.
MAX_BORDER_WEIGHT = 64


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
        ``"dice+focal"`` (default), ``"dice+bce"``, ``"focal"``, ``"bce"`` or
        ``"dice"`` (:data:`.losses.LOSSES`): soft Dice plus a per-pixel term,
        BCE or focal (``-(1 - p_t)**2 log p_t``, which keeps the rare pixels
        the model gets wrong, pen and dust on the glass, from being drowned by
        millions of easy ones), each the mean over labelled pixels; the focal
        term weighs :data:`.losses.FOCAL_WEIGHT` (3) against Dice. The defaults
        (``dice+focal``, the ``medium`` model, ``lr`` 1e-2, cosine schedule,
        150 steps, white balance and input standardisation, ``augment``
        ``"auto"``: the ink and pen strokes on white-balanced runs) are the
        recipe chosen with
        ``benchmarks/tune_quality.py`` on tuning slides and measured by
        ``benchmarks/bench_quality.py`` on held-out ones (docs/quality.md).
        ``"dice"`` alone is not a good start from random weights: for a
        near-uniform prediction, raising every probability always raises soft
        Dice, so it runs to "everything is tissue", the sigmoid saturates and
        its gradient vanishes (stuck at Dice ``2f / (1 + f)`` for a tissue
        fraction ``f``). ``"bce"`` alone can let the last decoder layer's few
        ReLUs die on a slide that is half tissue (the prediction then stays at
        the base rate). Use ``"dice"`` to fine-tune (``resume``) a model that
        already separates tissue.
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
        Core size in pixels of the working resolution (rounded to the model's stride), or
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
        Architecture (:class:`.unet.ModelConfig`); default the ``medium`` size
        preset (:data:`DEFAULT_MODEL_SIZE`, about 16k parameters: the small
        paper-sized model often learned "darker than glass is tissue" and
        called pen, dust and bubble rims tissue; its step costs about 2.5x the
        small one's FLOPs).
    resume
        A checkpoint to continue from (its weights, optimizer state, model
        config and history); ``steps`` more steps are run.
    augment
        Whole-slide augmentations drawn per step from ``seed``, exact under
        tiling (every tile sees the same transform of the whole slide):
        ``"flip"``: a random left-right flip and quarter turn; ``"stain"``: a
        colour map, the haematoxylin/eosin/DAB stain jitter (per-stain scale
        and shift in Ruifrok-Johnston colour deconvolution) plus brightness
        and contrast (:mod:`.stain`; with ``white_balance``, the stain scales
        only, the glass kept white); ``"ink"``: on half the steps, pixels the
        mask labels background that are darker than the glass (pen, dust,
        bubble rims) take a random ink colour of the same darkness
        (:class:`.stain.InkRecolour`; needs ``white_balance``, and a resumed
        run a white-balanced checkpoint), so another
        slide's pen of a colour the training slide lacks is still glass;
        ``"pen"``: the ink, and on half the steps 1-3 pen strokes of a
        random ink drawn on the pixels the mask labels background
        (:class:`.stain.PenStrokes`; for training slides with little or no
        pen on the glass); ``"pen+flip"``: ``"pen"`` and ``"flip"``;
        ``"all"`` (or ``True``): flip, stain and ink (the ink only with white balance);
        ``"auto"`` (default, the recipe's): ``"pen"`` when the run is
        white-balanced (a fresh run with ``white_balance``, or a resumed
        white-balanced checkpoint), ``"none"`` otherwise; ``"none"`` (or
        ``False``): none. The ink's darkness is scaled by 0.4-1.2, so pale
        inks are shown as glass too.
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
    overwrite
        Replace an existing ``out``. Without it a run refuses to start when
        ``out`` exists (checked before any compute), unless ``out`` is the
        ``resume`` checkpoint itself (the run continues that file).
    val_images, val_masks
        Validation slides and their masks (same forms as ``images`` and
        ``masks``), scored every ``val_every`` steps, never trained on.
    val_roi
        A validation rectangle ``(y0, x0, y1, x1)`` (level-0 pixels) of the
        training slides: one for every image, or a list with one entry (or
        None) per image. It is snapped outwards to whole output pixels and its
        labels are left out of the training loss (exactly: weight 0).
    val_every
        Score the validation regions every this many steps (and after the
        last step). The model with the best validation Dice is kept as
        ``<out>.best.keras`` beside ``out``.
    resolution
        Working resolution (:class:`.resolution.Resolution`: ``mpp`` um/px or
        a pyramid ``level``). None (default): level 0, or with ``resume`` the
        resolution the checkpoint was trained at. Tiles, halo and ``tile`` are in
        its pixels; masks are resampled to it; the model file records it and
        ``predict`` uses it by default.
    scheduler
        Address of a ``dask.distributed`` scheduler (``"tcp://host:port"``):
        each step runs across its workers (:mod:`.distributed_train`), with the
        same recipe and weights as the single-process run (white balance,
        standardisation, working resolution and validation included). Images
        and validation images must then be paths the workers can read;
        ``memory_gb`` is each worker's budget. ``None`` (default): this process.
    standardize
        Standardise the input per channel with the mean and standard deviation
        of every pixel of the training slides (one pass over the decoded
        pixels before the first step). The constants live in the model's
        input layer (and ``ModelConfig.input_mean``/``input_std``), so
        prediction applies the same transform and tiling stays exact. Pale
        tissue differs from glass by a few grey levels; standardised, those
        differences are large enough for the first layer to learn quickly.
        Ignored when resuming or when ``model`` already carries statistics.
    white_balance
        Scale each slide's channels so its glass lands on one white
        (:mod:`.input_norm`), here and when the model predicts: glass colour
        differs between slides, and without it a model trained on one slide
        calls a darker or bluer glass on another slide pale tissue.
    head_prior
        Start the head's bias at the logit of the training masks' tissue
        fraction, so the first steps learn features instead of the base rate.
    warmup
        Steps over which the learning rate rises linearly to ``lr`` before the
        schedule (0: none).
    border_weight
        Loss weight (a whole number, 1: none) of the labelled output pixels
        within 16 pixels of the working resolution
        (:data:`._train_data.BORDER_PX`) of the other class's labels: the U-Net
        paper's border weights, where a tissue model's errors are (pale stroma
        at the tissue's faint edge). From the whole label map, so exact under
        tiling; validation scores every pixel once. Default 1 (off): at 4
        the tuning slides' worst Dice rose within the noise (0.9796 to
        0.9824) while pen on the glass was called glass less often (docs/quality.md).
    pen_weight
        Loss weight (a whole number, 1: none) of the glass under the pen
        strokes the augmentation draws (``augment`` "auto" on white-balanced
        runs, or "pen"): a stroke covers about 0.1% of a slide, so at 1 the
        few pixels that teach "pen on the glass is glass" weigh little. With
        ``border_weight`` 4, 8 gave back the pen rejection the border weights
        cost on the tuning slides; alone it cost recall at the faint tissue
        edge. Default 1 (docs/quality.md). A function of each output pixel's
        coordinates, so exact under tiling.
    """

    images: list[Any] = field(default_factory=list)
    masks: list[Any] = field(default_factory=list)
    out: str = "model.keras"
    steps: int = 150
    loss: str = "dice+focal"
    lr: float = 1e-2
    lr_schedule: str = "cosine"
    tile: int | str = "auto"
    memory_gb: float = 3.5
    mode: str = "stream"
    rois: list[Any] | None = None
    seed: int = 0
    model: ModelConfig = field(default_factory=lambda: preset_config(DEFAULT_MODEL_SIZE))
    resume: str | None = None
    augment: bool | str = "auto"
    mixed_precision: bool | str = "auto"
    dtype: str = "float32"
    checkpoint_every: int = 10
    preview_downsample: int = 32
    mask_kind: str | None = None
    cache_dir: str | None = None
    overwrite: bool = False
    val_images: list[Any] = field(default_factory=list)
    val_masks: list[Any] = field(default_factory=list)
    val_roi: Any = None
    val_every: int = 10
    resolution: Resolution | None = None
    scheduler: str | None = None
    standardize: bool = True
    white_balance: bool = True
    head_prior: bool = False
    warmup: int = 0
    border_weight: int = 1
    pen_weight: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (arrays are described, not stored)."""
        d = asdict(self) if not self._has_arrays() else dict(self.__dict__)
        d["images"] = [_describe(v) for v in self.images]
        d["masks"] = [_describe(v) for v in self.masks]
        d["val_images"] = [_describe(v) for v in self.val_images]
        d["val_masks"] = [_describe(v) for v in self.val_masks]
        d["model"] = self.model.to_dict()
        d["resolution"] = None if self.resolution is None else self.resolution.to_dict()
        return d

    def _has_arrays(self) -> bool:
        return any(
            not isinstance(v, (str, os.PathLike))
            for v in [*self.images, *self.masks, *self.val_images, *self.val_masks]
        )

    @property
    def validates(self) -> bool:
        """True when the run has validation regions (a slide or a ROI)."""
        return bool(self.val_images) or self.val_roi is not None


def _describe(v: Any) -> str:
    if isinstance(v, (str, os.PathLike)):
        return os.fspath(v)
    name = getattr(v, "name", None)
    shape = getattr(v, "shape", None)
    return f"<{type(v).__name__} {name or ''} {tuple(shape) if shape is not None else ''}>"


def _positive(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v) and v > 0


def _validate(cfg: TrainConfig) -> None:
    """Check the plain fields of ``cfg`` (no file is opened here; see ``training.preflight``)."""
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
    if cfg.mask_kind not in (None, "dense", "scribble"):
        raise TrainConfigError(f"mask_kind must be 'dense' or 'scribble', not {cfg.mask_kind!r}.")
    if not _positive(cfg.lr):
        raise TrainConfigError(f"lr must be a finite number > 0, got {cfg.lr}.")
    if not _positive(cfg.memory_gb):
        raise TrainConfigError(
            f"memory_gb must be a finite number of GiB > 0, got {cfg.memory_gb}."
        )
    if int(cfg.checkpoint_every) < 0:
        raise TrainConfigError(f"checkpoint_every must be >= 0, got {cfg.checkpoint_every}.")
    from .stain import PEN_MODES, WHITE_MODES, augment_mode, resolve_augment

    # A resumed run keeps its checkpoint's white balance whatever white_balance
    # says: preflight checks that checkpoint instead (_check_resumed_augment).
    mode = augment_mode(cfg.augment)
    if mode in WHITE_MODES and not cfg.white_balance and not cfg.resume:
        raise TrainConfigError(
            f"augment '{mode}' needs white_balance (--white-balance): it measures how dark an "
            "artefact is against the glass white. Turn white balance on, or use another "
            "augment mode."
        )
    if len(cfg.val_masks) != len(cfg.val_images):
        raise TrainConfigError(
            f"validation needs one mask per validation image: got {len(cfg.val_images)} "
            f"images and {len(cfg.val_masks)} masks."
        )
    if not (isinstance(cfg.val_every, int) and cfg.val_every >= 1):
        raise TrainConfigError(
            f"val_every must be a positive number of steps, not {cfg.val_every!r}."
        )
    if cfg.resolution is not None and not isinstance(cfg.resolution, Resolution):
        raise TrainConfigError(
            f"resolution must be a Resolution(mpp=..., level=...), not {cfg.resolution!r}."
        )
    if cfg.scheduler is not None:
        check_scheduler_address(cfg.scheduler, TrainConfigError)
    if cfg.scheduler is not None and not all(
        isinstance(p, (str, os.PathLike)) for p in [*cfg.images, *cfg.val_images]
    ):
        # The workers read the slides themselves; an in-memory array has no path.
        raise TrainConfigError(
            "distributed training (scheduler) reads the slides on the workers: give images "
            "(and validation images) as paths that every worker can reach, or train in "
            "this process."
        )
    if int(cfg.warmup) < 0:
        raise TrainConfigError(f"warmup must be >= 0 steps, got {cfg.warmup}.")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, numbers.Integral) or cfg.seed < 0:
        # numpy's generators (the augmentation's draws) take no negative seed.
        raise TrainConfigError(f"seed must be a whole number >= 0, got {cfg.seed!r}.")
    for name, what in (("border_weight", "border"), ("pen_weight", "pen")):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_BORDER_WEIGHT:
            raise TrainConfigError(
                f"{name} (--{name.replace('_', '-')}) must be a whole number from 1 (no "
                f"{what} weights) to {MAX_BORDER_WEIGHT}, got {v!r}."
            )
    # The mode the run draws ("auto": the strokes on white-balanced runs; a
    # resumed run's checkpoint decides its balance, so it is not refused here).
    drawn = resolve_augment(mode, bool(cfg.white_balance or cfg.resume))
    if cfg.pen_weight > 1 and drawn not in PEN_MODES:
        raise TrainConfigError(
            f"pen_weight (--pen-weight) weighs the pen strokes the augmentation draws, "
            f"and this run draws none (augment {mode!r}"
            f"{'' if cfg.white_balance else ' without white balance'}): use augment "
            f"'auto' (the default), 'pen' or 'pen+flip' with white balance, or pen_weight 1."
        )
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise TrainConfigError(
            f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not {cfg.lr_schedule!r}."
        )


def learning_rate(lr: float, schedule: str, k: int, steps: int, warmup: int = 0) -> float:
    """Learning rate of step ``k`` (0-based) of a run of ``steps`` steps.

    ``"cosine"`` goes from ``lr`` at the first step after the warmup to
    ``lr * LR_FLOOR`` at the last; ``"constant"`` is ``lr``. During the first
    ``warmup`` steps the rate rises linearly to ``lr``.
    """
    if k < warmup:
        return float(lr) * (k + 1) / (warmup + 1)
    k, steps = k - warmup, steps - warmup
    if schedule == "constant" or steps <= 1:
        return float(lr)
    t = k / (steps - 1)
    return float(lr) * (LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * t)))
