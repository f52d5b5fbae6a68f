"""Writing synthetic slides: argument checks and the atomic pyramidal-TIFF writer.

:func:`iter_write_files` writes several pyramidal TIFFs of one shape tile by
tile (slide, mask, hard-negative labels), replaces their paths together at the
end and leaves nothing behind on stop. Shared by :mod:`.synthetic` and
:mod:`.texture_slides`; :mod:`.synthetic` re-exports the public names.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from ._tiff_pyramid import level_shapes, write_pyramid
from .errors import GigapixelError
from .events import JobStopped, Progress, StopFlag, stop_requested

#: Default microns per pixel recorded in the files (a 20x scan).
MPP = 0.5
#: Pixel sizes a synthetic slide may state: what slide readers accept as plausible.
MPP_RANGE = (0.01, 50.0)


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
