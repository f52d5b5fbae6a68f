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
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ._synthetic_scene import get_scene, render_window
from ._tiff_pyramid import level_shapes, reduce_mask, reduce_rgb, write_pyramid
from .errors import GigapixelError
from .events import Finished, JobStopped, Progress, StopFlag, stop_requested

#: Default microns per pixel recorded in the files (a 20x scan).
MPP = 0.5
#: Pixel sizes a synthetic slide may state: what slide readers accept as plausible.
MPP_RANGE = (0.01, 50.0)
#: Shape of the sample that napari's "File > Open Sample" makes.
SAMPLE_SHAPE = (4096, 16384)


class SyntheticError(GigapixelError):
    """Bad arguments for a synthetic slide (the message says which and why)."""


def _check_window(shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> None:
    if not (0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]):
        raise SyntheticError(
            f"window y {y0}:{y1}, x {x0}:{x1} is empty or outside a slide of shape "
            f"{shape[0]} x {shape[1]}; pass 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width."
        )


def _check_shape(shape) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError) as exc:
        raise SyntheticError(f"shape must be (height, width), got {shape!r}.") from exc
    if h < 64 or w < 64:
        raise SyntheticError(f"shape {h} x {w} is too small: use at least 64 x 64 pixels.")
    return h, w


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


_COMPRESSION = {
    "jpeg": {"compression": "jpeg", "compressionargs": {"level": 88}, "photometric": "rgb"},
    "deflate": {"compression": "adobe_deflate", "compressionargs": {"level": 6}},
    "zstd": {"compression": "zstd", "compressionargs": {"level": 3}},
    "none": {},
}


def default_mask_path(slide: str | os.PathLike) -> Path:
    """``<stem>_mask<ext>`` beside the slide (``a.ome.tif`` -> ``a_mask.ome.tif``)."""
    slide = Path(slide)
    name = slide.name
    for ext in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(ext):
            return slide.with_name(name[: -len(ext)] + "_mask" + ext)
    return slide.with_name(name + "_mask.tif")


def _tmp_path(final: Path) -> str:
    """A temporary path beside ``final`` that keeps its extension."""
    return str(final.with_name(f".{final.name}.{os.getpid()}.partial.tif"))


def check_writer_args(compression: str, tile: int) -> None:
    """Raise :class:`SyntheticError` for an unknown compression or a bad tile size."""
    if compression not in _COMPRESSION:
        raise SyntheticError(
            f"compression {compression!r} is not one of {', '.join(_COMPRESSION)}."
        )
    if tile <= 0 or tile % 16:
        raise SyntheticError(f"tile must be a positive multiple of 16, got {tile}.")


def rgb_write_kwargs(compression: str, mpp: float = MPP) -> dict:
    """tifffile arguments of an RGB slide level (OME axes and pixel size in um)."""
    # OME PhysicalSize (unit: um, the OME default) and, in write_pyramid, the
    # TIFF resolution tags of every level (pixels per cm), as scanners write them.
    metadata = {"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp}
    return {"photometric": "rgb", **_COMPRESSION[compression], "metadata": metadata}


def label_write_kwargs(mpp: float = MPP) -> dict:
    """tifffile arguments of a label image (mask): always lossless."""
    return {
        "compression": "adobe_deflate",
        "compressionargs": {"level": 6},
        "photometric": "minisblack",
        "metadata": {"axes": "YX", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp},
    }


def iter_write_files(
    files: list[tuple[str, Path, int, Callable, Callable, dict]],
    shape: tuple[int, int],
    tile: int,
    stop: StopFlag | None,
    workers: int,
    mpp: float = MPP,
) -> Iterator[Progress]:
    """Write several pyramidal TIFFs of one shape, tile by tile, atomically.

    ``files`` lists ``(stage, path, channels, source, reduce, write_kwargs)``;
    ``source`` maps a level-0 window ``(y0, y1, x0, x1)`` to its pixels. Yields
    :class:`~.events.Progress` counting the tiles of all files; the files
    replace their paths together at the end, in the given order (put the
    slide first and its mask last: a set with a mask is complete). On stop
    (or when the generator is closed early) nothing is left behind and
    :class:`~.events.JobStopped` is raised.
    """
    paths = [Path(f[1]) for f in files]
    if len({p.resolve() for p in paths}) < len(paths):
        raise SyntheticError(f"{paths[0]}: the slide and its mask need different paths.")
    for p in paths:
        if not p.parent.is_dir():
            raise SyntheticError(f"{p}: the folder {p.parent} does not exist; create it first.")
    per_file = sum(-(-h // tile) * -(-w // tile) for h, w in level_shapes(shape, tile))
    total = len(files) * per_file
    tmps = [_tmp_path(p) for p in paths]
    # tifffile pulls tiles from an iterator, so the writer runs in a thread
    # and its per-tile callback feeds this generator's events through a queue.
    events: queue.Queue = queue.Queue(maxsize=256)
    abort = threading.Event()
    done = object()

    def work() -> None:
        count = [0]
        try:
            for (stage, _, channels, source, reduce, kwargs), tmp in zip(files, tmps):

                def on_tile(stage: str = stage) -> None:
                    count[0] += 1
                    # Raising inside the writer's iterator aborts the file.
                    if abort.is_set() or stop_requested(stop):
                        raise JobStopped(f"{paths[0]}: stopped while writing the {stage}.")
                    if count[0] % 32 == 0 or count[0] == total:
                        events.put(Progress(stage, count[0], total))

                write_pyramid(
                    tmp, shape, channels, tile, source, reduce, kwargs, on_tile, workers, mpp
                )
            for tmp, path in zip(tmps, paths):
                os.replace(tmp, path)
            events.put(done)
        except BaseException as exc:  # relayed to the consumer below
            events.put(exc)

    thread = threading.Thread(target=work, name="synthetic-slide", daemon=True)
    thread.start()
    try:
        while True:
            item = events.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        abort.set()
        while thread.is_alive():  # drain so a blocked put() cannot hang the writer
            try:
                events.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
        for tmp in tmps:
            if os.path.exists(tmp):
                os.unlink(tmp)


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


def check_mpp(mpp: float) -> float:
    """``mpp`` as a float when it is a plausible pixel size in um, else :class:`SyntheticError`."""
    try:
        value = float(mpp)
    except (TypeError, ValueError):
        raise SyntheticError(f"mpp must be a number of microns per pixel, not {mpp!r}.") from None
    lo, hi = MPP_RANGE
    if not lo <= value <= hi:
        raise SyntheticError(
            f"mpp {value:g} um/px is outside {lo:g}-{hi:g}, the range slide readers take "
            "as a microscope's pixel size (0.25 is a 40x scan, 0.5 a 20x scan)."
        )
    return value


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
    "default_cache_dir",
    "iter_make_synthetic_slide",
    "make_synthetic_slide",
    "parse_shape",
    "sample_slide_paths",
    "synthetic_region",
]
