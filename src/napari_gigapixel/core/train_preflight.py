"""Checks of a training run made before TensorFlow loads or anything runs.

:func:`preflight` validates a :class:`.train_config.TrainConfig` and every
file it names (slides, masks, ROIs, the checkpoint to resume, the output and
the decoded-pixel cache's room). The trainer calls it first; the Train widget
calls it in napari's process, so a bad path is reported before a worker starts.
"""

from __future__ import annotations

import os
from typing import Any

from .train_config import TrainConfig, TrainConfigError, _validate


def preflight(cfg: TrainConfig) -> None:
    """Validate ``cfg`` and every file it names, before TensorFlow loads or anything runs.

    Opens each slide (metadata and one small tile) and closes it, loads each
    mask (its level must fit the slide), checks each ROI, reads the resume
    checkpoint's metadata, and checks that ``out`` (and ``cache_dir``) can be
    written. The Train widget calls it in napari's process, so a bad path is
    reported at once, not by the worker minutes later.

    Raises
    ------
    GigapixelError
        The first problem found, naming the file and what to do.
    """
    from ._train_data import check_roi, open_mask_source
    from .model_io import read_model_meta
    from .preflight import check_input, check_output
    from .slide import open_slide

    _validate(cfg)
    if cfg.resume:
        meta = read_model_meta(check_input(cfg.resume, "checkpoint"))
        _check_resumed_augment(cfg, meta)
    same_as_resume = bool(cfg.resume) and os.path.abspath(os.fspath(cfg.resume)) == (
        os.path.abspath(os.fspath(cfg.out))
    )
    check_output(cfg.out, overwrite=cfg.overwrite or same_as_resume, what="model file")
    if cfg.cache_dir is not None and not os.path.isdir(cfg.cache_dir):
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
            with open_slide(check_input(img, "slide")) as slide:
                # resolve: the slide has the level or um/px asked for
                return slide.shape, os.fspath(img), resolve(slide, resolution).downsample
        from ._train_data import open_image_source

        arr, name, close = open_image_source(img)
        close()
        d = resolve(as_slide(arr), resolution).downsample
        return (int(arr.shape[0]), int(arr.shape[1])), name, d

    rois = cfg.rois or [None] * len(cfg.images)
    pairs = [*zip(cfg.images, cfg.masks, rois, vrois)]
    pairs += [(img, msk, None, None) for img, msk in zip(cfg.val_images, cfg.val_masks)]
    cache_bytes = 0
    for img, msk, roi, vroi in pairs:
        shape, name, d = shape_of(img)
        if isinstance(msk, (str, os.PathLike)):
            check_input(msk, "mask")
        open_mask_source(msk, shape, cfg.mask_kind)
        y0, x0, y1, x1 = check_roi(roi, shape, name)
        if vroi is not None:
            check_roi(vroi, shape, f"{name} (validation ROI)")
        if isinstance(img, (str, os.PathLike)):
            # Decoded once into a cache, at the working resolution.
            cache_bytes += int((y1 - y0) * (x1 - x0) * 3 / d**2)
    _check_cache_room(cfg, cache_bytes)


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
