"""Checks of a training run made before TensorFlow loads or anything runs.

:func:`preflight` validates a :class:`.train_config.TrainConfig` and every
file it names (slides, masks and their labels, ROIs, the checkpoint to
resume, the output and the decoded-pixel cache's room). The trainer calls it
first; the Train widget calls it in napari's process, so a bad path is
reported before a worker starts.
"""

from __future__ import annotations

import os
from typing import Any

from .train_config import TrainConfig, TrainConfigError, _validate


def preflight(cfg: TrainConfig, on_workers: bool = False) -> None:
    """Validate ``cfg`` and every file it names, before TensorFlow loads or anything runs.

    Opens each slide (metadata and one small tile) and closes it, loads each
    mask (its level must fit the slide) and checks its labels over the
    training region at the mask's own level (:func:`check_labels`: tissue, for
    scribbles background too, and some left outside a validation ROI), checks
    each ROI, reads the resume checkpoint's metadata, and checks that ``out``
    (and ``cache_dir``) can be written. The Train widget calls it in napari's
    process, so a bad path is reported at once, not by the worker minutes later.

    Parameters
    ----------
    cfg
        The run.
    on_workers
        The slides are decoded on a cluster's workers (``cfg.scheduler``):
        the decoded-pixel cache is theirs, so ``cache_dir`` and its free space
        are not checked here.

    Raises
    ------
    GigapixelError
        The first problem found, naming the file and what to do.
    """
    from ._train_data import check_roi, open_mask_source
    from .model_io import read_model_meta
    from .preflight import InputError, check_input, check_output, check_slide_input
    from .slide import open_slide

    _validate(cfg)
    if cfg.resume:
        if os.path.isdir(cfg.resume):
            # read_model_meta would say "no such model file": it is there, a folder.
            raise InputError(
                f"{cfg.resume}: is a folder, not a model file; give the checkpoint's "
                ".keras file to resume from."
            )
        meta = read_model_meta(check_input(cfg.resume, "checkpoint"))
        _check_resumed_augment(cfg, meta)
    same_as_resume = bool(cfg.resume) and os.path.abspath(os.fspath(cfg.resume)) == (
        os.path.abspath(os.fspath(cfg.out))
    )
    check_output(cfg.out, overwrite=cfg.overwrite or same_as_resume, what="model file")
    if not on_workers and cfg.cache_dir is not None and not os.path.isdir(cfg.cache_dir):
        raise TrainConfigError(f"cache_dir {cfg.cache_dir}: no such folder; create it first.")
    from .resolution import as_slide, resolve
    from .validation import best_path, val_rois

    resolution = cfg.resolution if cfg.resolution is not None else _resumed_resolution(cfg.resume)
    vrois = val_rois(cfg)  # a malformed val_roi fails here
    if cfg.validates:
        # The best-validation model is an output too: never replaced unasked.
        check_output(
            best_path(cfg.out), overwrite=cfg.overwrite or same_as_resume, what="best model file"
        )

    def shape_of(img):
        """Level-0 shape, a name, and the working resolution's downsample."""
        if isinstance(img, (str, os.PathLike)):
            check_slide_input(check_input(img, "slide"))  # not a mask or a prediction
            with open_slide(img) as slide:
                # resolve: the slide has the level or um/px asked for
                return slide.shape, os.fspath(img), resolve(slide, resolution).downsample
        from ._train_data import open_image_source

        arr, name, close = open_image_source(img)
        close()
        d = resolve(as_slide(arr), resolution).downsample
        return (int(arr.shape[0]), int(arr.shape[1])), name, d

    rois = cfg.rois or [None] * len(cfg.images)
    pairs = [(*p, True) for p in zip(cfg.images, cfg.masks, rois, vrois)]
    pairs += [(img, msk, None, None, False) for img, msk in zip(cfg.val_images, cfg.val_masks)]
    cache_bytes = 0
    for img, msk, roi, vroi, training in pairs:
        shape, name, d = shape_of(img)
        if isinstance(msk, (str, os.PathLike)):
            check_input(msk, "mask")
        mask = open_mask_source(msk, shape, cfg.mask_kind)
        y0, x0, y1, x1 = check_roi(roi, shape, name)
        if vroi is not None:
            vroi = check_roi(vroi, shape, f"{name} (validation ROI)")
        # Labels counted at the mask's own level: no slide pixel is decoded.
        where = None if training else f"the validation slide {name}"
        check_labels(mask, (y0, x0, y1, x1), name, vroi, where)
        if isinstance(img, (str, os.PathLike)):
            # Decoded once into a cache, at the working resolution.
            cache_bytes += int((y1 - y0) * (x1 - x0) * 3 / d**2)
    if not on_workers:
        _check_cache_room(cfg, cache_bytes)


#: Mask pixels the label scan reads at once: a huge (full-resolution) mask is
#: read in bands of about this many, so the preflight's memory stays small.
SCAN_PIXELS = 1 << 24


def check_labels(
    mask: Any,
    rect: tuple[int, int, int, int],
    name: str,
    vroi: tuple[int, int, int, int] | None = None,
    where: str | None = None,
) -> None:
    """Refuse a region whose mask labels teach nothing, before any pixel is decoded.

    The trainer's checks (:func:`._train_data.check_region_labels`, and a
    validation ROI that takes all the tissue) made at the mask's own level,
    which is usually far smaller than the slide. Every mask pixel the region
    touches counts, and only those wholly inside ``vroi`` are left out: the
    trainer samples inside that, so this never refuses a run the trainer
    would accept (it checks again, on its own samples).

    Parameters
    ----------
    mask
        The :class:`.masks.AnnotationMask` of the slide.
    rect
        The training region ``(y0, x0, y1, x1)``, level-0 pixels.
    name
        The slide, for messages.
    vroi
        The validation ROI of this training region (level-0), or None.
    where
        The region in words for messages (default: the training region).

    Raises
    ------
    MaskError
        No labelled pixel or no tissue in the region, a scribble mask without
        both classes there, or a validation ROI that holds all of a class.
    """
    from ._train_data import check_region_labels
    from .masks import MaskError

    def teaches(found: set[str], where: str | None) -> None:
        check_region_labels(
            mask.name,
            name,
            mask.kind,
            "labelled" in found,
            "tissue" in found,
            "background" in found,
            where,
        )

    found, kept = scan_labels(mask, rect, vroi)
    teaches(found, where)
    if vroi is None:
        return
    missing = None
    if "tissue" not in kept:
        missing = "labelled tissue"
    elif mask.kind == "scribble" and "background" not in kept:
        missing = "background (1) labels"
    if missing is not None:
        raise MaskError(
            f"{name}: the validation ROI {tuple(vroi)} covers all the {missing} "
            "of this training region; choose a smaller validation ROI."
        )
    # The validation ROI is scored: it needs labels of its own.
    teaches(scan_labels(mask, vroi)[0], f"the validation ROI {tuple(vroi)} of {name}")


def scan_labels(
    mask: Any,
    rect: tuple[int, int, int, int],
    exclude: tuple[int, int, int, int] | None = None,
) -> tuple[set[str], set[str]]:
    """Which of ``"labelled"``, ``"tissue"``, ``"background"`` a mask holds over a region.

    Parameters
    ----------
    mask
        The :class:`.masks.AnnotationMask`, read at its own level in bands of
        about :data:`SCAN_PIXELS` pixels, stopping as soon as the answer is known.
    rect
        The region ``(y0, x0, y1, x1)``, level-0 pixels; every mask pixel it
        touches counts.
    exclude
        A level-0 rectangle whose wholly covered mask pixels the second set
        leaves out (a validation ROI), or None.

    Returns
    -------
    (set, set)
        The classes over the region, and over the region outside ``exclude``.
    """
    import math

    import numpy as np

    from .masks import reading_mask

    d = float(mask.downsample)
    h, w = mask.shape
    y0, x0, y1, x1 = rect
    my0, mx0 = max(0, math.floor(y0 / d + 1e-9)), max(0, math.floor(x0 / d + 1e-9))
    my1, mx1 = min(h, math.ceil(y1 / d - 1e-9)), min(w, math.ceil(x1 / d - 1e-9))
    ex = None
    if exclude is not None:
        ey0, ex0, ey1, ex1 = exclude
        ex = (
            math.ceil(ey0 / d - 1e-9),
            math.ceil(ex0 / d - 1e-9),
            math.floor(ey1 / d + 1e-9),
            math.floor(ex1 / d + 1e-9),
        )
    need = {"labelled", "tissue"} | ({"background"} if mask.kind == "scribble" else set())
    found: set[str] = set()
    kept: set[str] = set()
    band = max(1, SCAN_PIXELS // max(1, mx1 - mx0))
    for by in range(my0, my1, band):
        by1 = min(my1, by + band)
        with reading_mask(mask.name):  # a damaged file: one line, not the codec's traceback
            block = mask.array[by:by1, mx0:mx1]
            # Read in this thread: with a dask.distributed client open (train
            # --scheduler) dask would ship the open file's graph to the cluster.
            block = np.asarray(
                block.compute(scheduler="sync") if hasattr(block, "compute") else block
            )
        classes = _classes(block, mask.kind)
        found |= classes
        if ex is not None and ex[0] < by1 and ex[2] > by and ex[1] < mx1 and ex[3] > mx0:
            keep = np.ones(block.shape, bool)
            keep[max(0, ex[0] - by) : max(0, ex[2] - by), max(0, ex[1] - mx0) : ex[3] - mx0] = (
                False
            )
            kept |= _classes(block[keep], mask.kind)
        else:
            kept |= classes
        if need <= kept:
            break
    return found, kept


def _classes(values: Any, kind: str) -> set[str]:
    """The label classes among mask ``values`` (see :mod:`.masks`' label values)."""
    import numpy as np

    values = np.asarray(values)
    if values.size == 0:
        return set()
    if kind == "dense":
        out = {"labelled"}
        if np.any(values > 0):
            out.add("tissue")
        if np.any(values == 0):
            out.add("background")
        return out
    out = set()
    if np.any(values == 2):
        out.add("tissue")
    if np.any(values == 1):
        out.add("background")
    return out | ({"labelled"} if out else set())


def _check_resumed_augment(cfg: TrainConfig, meta: dict[str, Any]) -> None:
    """A resumed run keeps its checkpoint's input convention, white balance included.

    The ink recolouring measures darkness against the white-balanced glass, so
    ``augment="ink"`` on a checkpoint trained without white balance would run
    with no ink at all; it is refused here instead of silently ignored.
    """
    from .stain import WHITE_MODES, augment_mode

    balanced = bool((meta.get("model_config") or {}).get("white_balance", False))
    mode = augment_mode(cfg.augment)
    if mode in WHITE_MODES and not balanced:
        raise TrainConfigError(
            f"{cfg.resume}: this checkpoint was trained without white balance, and augment "
            f"'{mode}' needs it (it measures how dark an artefact is against the white-balanced "
            "glass). Resume with another augment mode, or train a new model with white balance."
        )


def _check_cache_room(cfg: TrainConfig, cache_bytes: int) -> None:
    """The decoded-pixel cache must fit in memory or in the cache folder's free space.

    The trainer keeps what fits in a part of the memory budget in memory and
    spills the rest to a temporary file; a disk that fills up while decoding
    would fail minutes into the run, so it is checked here.
    """
    import shutil
    import tempfile

    folder = cfg.cache_dir or tempfile.gettempdir()
    free = shutil.disk_usage(folder).free
    in_memory = 0.35 * float(cfg.memory_gb) * 2**30
    if cache_bytes > free + in_memory:
        raise TrainConfigError(
            f"{folder}: the decoded slides need about {cache_bytes / 2**30:.1f} GiB of cache "
            f"but the folder has {free / 2**30:.1f} GiB free. Free some space, point the "
            "cache elsewhere (TrainConfig.cache_dir, or TMPDIR), or train on an ROI."
        )


def _resumed_resolution(resume: str | None) -> Any:
    """The resolution a checkpoint was trained at (level 0 without one)."""
    from .model_io import read_model_meta
    from .resolution import Resolution, trained_request

    if not resume:
        return Resolution()
    return trained_request(read_model_meta(resume))
