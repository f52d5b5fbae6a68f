"""Synthetic H&E-like whole-slide images with a ground-truth tissue mask.

The project's stand-in for real WSIs: any size (16,000 x 64,000 and beyond),
deterministic from a seed, generated tile by tile and written as a pyramidal
TIFF without ever holding a level in memory.

How a pixel is made (see :func:`synthetic_region`):

* a *large* grid (one value per 16-64 level-0 pixels, sized to the slide)
  holds the tissue field (several blobs plus low-frequency noise), the stain
  strength, pen marks and the illumination; it is bilinearly upsampled per
  tile;
* a *medium* grid (one value per 16 px, covering the slide up to 65,536 px
  per axis, periodic beyond) holds the ragged-edge perturbation, holes, fat
  gaps, tears and the nucleus density, so those features keep a fixed size
  in pixels whatever the slide size;
* *fine* periodic textures (period 2,048 px) hold the stroma fibres and the
  nuclei, looked up by absolute coordinate;
* bubbles and dust are a list of objects drawn where they touch a tile.

Every step is an element-wise function of absolute coordinates, so any
window, whatever its tiling, gives the same pixels. The mask is 1 where the
tissue field is positive and no hole, fat gap or tear cuts it; faint tissue
at the edges is tissue, pen marks, bubbles and dust on the glass are not.

The scene lives in :mod:`._synthetic_scene`, the checks and the atomic
pyramidal-TIFF writer in :mod:`._synthetic_files` (re-exported here).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ._synthetic_files import (
    MPP,
    MPP_RANGE,
    SyntheticError,
    _check_shape,
    _check_window,
    check_mpp,
    check_writer_args,
    default_mask_path,
    iter_write_files,
    label_write_kwargs,
    rgb_write_kwargs,
)
from ._synthetic_scene import get_scene, render_window
from ._tiff_pyramid import reduce_mask, reduce_rgb
from .events import Finished, Progress, StopFlag

#: Shape of the sample that napari's "File > Open Sample" makes.
SAMPLE_SHAPE = (4096, 16384)


def synthetic_region(
    shape: tuple[int, int], seed: int, y0: int, y1: int, x0: int, x1: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and ground truth of any window of a synthetic slide, without files.

    Parameters
    ----------
    shape
        (height, width) of the whole slide's level 0: the scene depends on it.
    seed
        The slide's seed.
    y0, y1, x0, x1
        The level-0 window (half-open).

    Returns
    -------
    rgb : np.ndarray
        ``(y1-y0, x1-x0, 3)`` uint8, the same pixels a losslessly written slide holds.
    mask : np.ndarray
        ``(y1-y0, x1-x0)`` uint8, 1 = tissue, 0 = glass, holes, fat and tears.
    """
    shape = _check_shape(shape)
    _check_window(shape, y0, y1, x0, x1)
    rgb, mask = render_window(get_scene(shape, int(seed)), (int(y0), int(y1), int(x0), int(x1)))
    return rgb, mask


def iter_make_synthetic_slide(
    out: str | os.PathLike,
    shape: tuple[int, int] = SAMPLE_SHAPE,
    seed: int = 0,
    mask_out: str | os.PathLike | None = None,
    compression: str = "jpeg",
    tile: int = 512,
    stop: StopFlag | None = None,
    workers: int = 2,
    mpp: float = MPP,
) -> Iterator[Progress | Finished]:
    """Generator form of :func:`make_synthetic_slide`.

    Yields :class:`~.events.Progress` (stage ``"slide"`` then ``"mask"``,
    counting tiles of all levels) and ends with :class:`~.events.Finished`
    whose result holds ``slide``, ``mask``, ``shape``, ``seed`` and ``mpp``. When
    ``stop`` is set (or the generator is closed early) it removes its
    temporary files and raises :class:`~.events.JobStopped`.
    """
    shape = _check_shape(shape)
    check_writer_args(compression, tile)
    mpp = check_mpp(mpp)
    slide_path = Path(out)
    mask_path = Path(mask_out) if mask_out is not None else default_mask_path(slide_path)
    scene = get_scene(shape, int(seed))
    files = [
        (
            "slide",
            slide_path,
            3,
            lambda w: render_window(scene, w)[0],
            reduce_rgb,
            rgb_write_kwargs(compression, mpp),
        ),
        (
            "mask",
            mask_path,
            1,
            lambda w: render_window(scene, w, rgb=False)[1],
            reduce_mask,
            label_write_kwargs(mpp),
        ),
    ]
    yield from iter_write_files(files, shape, tile, stop, workers, mpp)
    yield Finished(
        {
            "slide": str(slide_path),
            "mask": str(mask_path),
            "shape": list(shape),
            "seed": seed,
            "mpp": mpp,
        }
    )


def make_synthetic_slide(
    out: str | os.PathLike,
    shape: tuple[int, int] = (4096, 16384),
    seed: int = 0,
    mask_out: str | os.PathLike | None = None,
    compression: str = "jpeg",
    tile: int = 512,
    progress: Callable[[Progress], None] | None = None,
    stop: StopFlag | None = None,
    mpp: float = MPP,
) -> tuple[str, str]:
    """Write a synthetic H&E slide and its ground-truth mask as pyramidal TIFFs.

    Parameters
    ----------
    out
        Slide path (``.tif``/``.ome.tif``); written atomically.
    shape
        (height, width) of level 0; any size, 16,000 x 64,000 and beyond.
    seed
        Same seed and shape, same pixels.
    mask_out
        Mask path; default ``<stem>_mask.tif`` beside the slide.
    compression
        ``"jpeg"`` (quality 88, YCbCr 4:2:0 like a scanner), ``"deflate"``,
        ``"zstd"`` or ``"none"``. The mask is always deflate (lossless).
    tile
        TIFF tile size (multiple of 16); also the generation unit.
    progress
        Called with each :class:`~.events.Progress` event.
    stop
        Stop flag checked between tiles; on stop, nothing is left behind and
        :class:`~.events.JobStopped` is raised.
    mpp
        Microns per level-0 pixel the files state (default 0.5, a 20x scan):
        OME ``PhysicalSizeX/Y`` and the TIFF resolution tags of every level.
        It labels the pixels; the synthetic tissue is drawn in pixels, so the
        same seed and shape give the same pixels at any ``mpp``.

    Returns
    -------
    (slide_path, mask_path)

    Notes
    -----
    Levels follow :mod:`.pyramid_levels` (ceil-half shapes until they fit one
    tile); level ``k`` is the 2x2 mean (maximum for the mask) of level
    ``k-1``, read back from a raw spool file, never regenerated. Both files
    are OME-TIFF with SubIFD pyramids and ``mpp`` um/px, which tifffile reads
    as one series with levels.
    """
    result: dict = {}
    events = iter_make_synthetic_slide(
        out, shape, seed, mask_out, compression, tile, stop, mpp=mpp
    )
    for event in events:
        if isinstance(event, Finished):
            result = event.result
        elif progress is not None:
            progress(event)
    return result["slide"], result["mask"]


# --------------------------------------------------------------------------
# Cached sample
# --------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$NAPARI_GIGAPIXEL_CACHE`` or the platform's user cache folder."""
    env = os.environ.get("NAPARI_GIGAPIXEL_CACHE")
    if env:
        return Path(env)
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("napari-gigapixel", appauthor=False))
    except ImportError:  # platformdirs comes with napari, but core must not need it
        return Path.home() / ".cache" / "napari-gigapixel"


def sample_slide_paths(
    cache_dir: str | os.PathLike | None = None,
    shape: tuple[int, int] = SAMPLE_SHAPE,
    seed: int = 0,
) -> tuple[str, str]:
    """Make the sample slide and mask once in a cache folder; reuse them afterwards.

    Parameters
    ----------
    cache_dir
        Folder for the files; default :func:`default_cache_dir`.
    shape, seed
        Which synthetic slide (part of the file names, so sizes do not clash).

    Returns
    -------
    (slide_path, mask_path)
    """
    shape = _check_shape(shape)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SyntheticError(
            f"{folder}: cannot create the sample cache folder ({exc}); set "
            "NAPARI_GIGAPIXEL_CACHE to a writable folder."
        ) from exc
    stem = f"synthetic_{shape[0]}x{shape[1]}_seed{int(seed)}"
    slide = folder / f"{stem}.ome.tif"
    mask = folder / f"{stem}_mask.ome.tif"
    if slide.is_file() and mask.is_file():
        return str(slide), str(mask)
    # make_synthetic_slide replaces both files atomically, the mask last, so
    # a run killed half-way leaves no pair that looks complete.
    if mask.exists():
        mask.unlink()
    make_synthetic_slide(slide, shape=shape, seed=seed, mask_out=mask)
    return str(slide), str(mask)


def parse_shape(text: str) -> tuple[int, int]:
    """Parse ``"HEIGHTxWIDTH"`` (also ``HxW`` with ``X``, ``,`` or ``*``)."""
    import re

    match = re.fullmatch(r"\s*(\d+)\s*[xX,*]\s*(\d+)\s*", str(text))
    if not match:
        raise SyntheticError(
            f"shape {text!r} is not HEIGHTxWIDTH, e.g. 16000x64000 (two positive integers)."
        )
    return _check_shape((int(match.group(1)), int(match.group(2))))


__all__ = [
    "MPP",
    "MPP_RANGE",
    "SAMPLE_SHAPE",
    "SyntheticError",
    "default_mask_path",
    "check_mpp",
    "check_writer_args",
    "default_cache_dir",
    "iter_make_synthetic_slide",
    "iter_write_files",
    "label_write_kwargs",
    "make_synthetic_slide",
    "parse_shape",
    "rgb_write_kwargs",
    "sample_slide_paths",
    "synthetic_region",
]
