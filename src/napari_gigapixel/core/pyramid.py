"""Write an OME-Zarr pyramid cache of any slide, tile by tile.

A slide file that has no pyramid (a huge single-level TIFF), or one whose
tiles decode slowly (JPEG 2000 SVS, OpenSlide formats that stitch), is slow
to pan. :func:`build_pyramid` converts it once into an OME-Zarr pyramid that
napari (and QuPath, Fiji/MoBIE, ome-zarr-py) reads fast.

Format: OME-NGFF **v0.4** metadata on a **zarr format 2** store. The v0.4
spec is defined on zarr v2 (v0.5 moved to zarr v3), and v0.4 on zarr v2 is
what most readers in the field open today, so this pairing is the portable
one. Axes are ``(c, y, x)`` as the spec orders them (channel before space),
chunks ``(3, tile, tile)``, Blosc-zstd compressed, levels by the package's one
pyramid rule (:mod:`.pyramid_levels`: ceil-half shapes, 2 x 2 mean, border
blocks averaged over the pixels that exist, OME scale and translation of the
block centres) until the longer side is at most ``min_size``.
:func:`~.slide.open_slide` reads the result back as ``(y, x, 3)``.

The store is written in a temporary sibling directory and renamed into
place at the end, so ``out`` is either absent, the old store, or complete.
Memory stays bounded: a few tiles in flight, whatever the slide size.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .errors import GigapixelError
from .events import Finished, Message, Progress, StopFlag, stop_requested
from .pyramid_levels import level_downsample, level_shapes, level_transform, reduce2
from .slide import Slide, open_slide

#: Key of this package's own attributes in the root ``.zattrs``.
META_KEY = "napari-gigapixel"


class PyramidError(GigapixelError):
    """The pyramid cannot be written where asked (exists, same as source, bad tile)."""


def pyramid_shapes(shape: tuple[int, int], min_size: int = 1024) -> list[tuple[int, int]]:
    """Shapes of the pyramid levels (:func:`.pyramid_levels.level_shapes`): ceil-halve
    while the longer side exceeds ``min_size``."""
    return level_shapes(shape, min_size)


def build_pyramid(
    source: str | os.PathLike | Slide,
    out_zarr: str | os.PathLike,
    *,
    tile: int = 1024,
    min_size: int = 1024,
    overwrite: bool = False,
    workers: int | None = None,
    stop: StopFlag | None = None,
) -> Iterator[Progress | Message | Finished]:
    """Write an OME-Zarr (v0.4, zarr format 2) pyramid of a slide, chunk by chunk.

    The arguments are checked, and the slide opened, when this is called; the
    work happens while the returned iterator is consumed.

    Parameters
    ----------
    source
        A slide path (any format :func:`~.slide.open_slide` reads) or an open
        :class:`~.slide.Slide`.
    out_zarr
        Directory of the OME-Zarr store to write (conventionally ``*.ome.zarr``).
    tile
        Chunk side in pixels (64 or more); also the unit of work.
    min_size
        Stop adding levels once the short side is at most this.
    overwrite
        Replace an existing ``out_zarr`` (only once the new one is complete).
    workers
        Threads decoding and encoding tiles (default: CPU count, at most 8).
    stop
        Checked between tiles; when set the temporary store is removed and
        ``Finished(stopped=True)`` is yielded.

    Yields
    ------
    Message, Progress, Finished
        ``Progress(stage="pyramid", done, total)`` per tile over all levels;
        last ``Finished(result)`` with ``path``, ``levels``, ``shape``,
        ``downsamples``, ``seconds``, ``mpx_per_s``.

    Raises
    ------
    PyramidError
        ``out_zarr`` exists (without ``overwrite``), is the source, or ``tile``
        is too small.
    SlideError
        The source cannot be read.
    """
    out = os.path.abspath(os.fspath(out_zarr))
    if int(tile) < 64:
        raise PyramidError(f"{out}: tile {tile} is too small; use 64 or more (default 1024).")
    if isinstance(source, Slide):
        slide, owned = source, False
    else:
        src = os.fspath(source)
        if os.path.abspath(src) == out:
            raise PyramidError(f"{out}: the output is the source slide; choose another path.")
        slide, owned = open_slide(src), True
    if os.path.lexists(out) and not overwrite:
        if owned:
            slide.close()
        raise PyramidError(f"{out} already exists; pass --overwrite to replace it.")
    n_workers = int(workers or min(8, os.cpu_count() or 1))
    return _build(slide, out, int(tile), int(min_size), n_workers, stop, owned)


def _build(
    slide: Slide,
    out: str,
    tile: int,
    min_size: int,
    workers: int,
    stop: StopFlag | None,
    owned: bool,
) -> Iterator[Progress | Message | Finished]:
    import zarr

    t0 = time.perf_counter()
    shapes = pyramid_shapes(slide.shape, min_size)
    grids = [_tiles(shape, tile) for shape in shapes]
    total = sum(len(g) for g in grids)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out)}.tmp-{uuid.uuid4().hex[:8]}")
    done_ok = False
    try:
        yield Message(f"{slide.path}: writing {len(shapes)} levels of {slide.shape} to {out}")
        root = zarr.open_group(tmp, mode="w", zarr_format=2)
        arrays = [_create_level(root, k, shape, tile) for k, shape in enumerate(shapes)]
        done = 0
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for k, grid in enumerate(grids):
                if k == 0:
                    work = _copy_level0(slide, arrays[0])
                else:
                    work = _reduce_level(arrays[k - 1], arrays[k])
                for _ in _run_tiles(pool, work, grid, 2 * workers, stop):
                    done += 1
                    yield Progress("pyramid", done, total, f"level {k}")
                if stop_requested(stop):
                    break
        if stop_requested(stop):
            yield Message("pyramid stopped; nothing was written.", "warning")
            yield Finished({"path": None}, stopped=True)
            return
        root.attrs.update(_metadata(slide, shapes, tile))
        _replace(tmp, out)
        done_ok = True
        seconds = time.perf_counter() - t0
        h, w = shapes[0]
        yield Finished(
            {
                "path": out,
                "levels": len(shapes),
                "shape": [h, w],
                "downsamples": [2.0**k for k in range(len(shapes))],
                "seconds": seconds,
                "mpx_per_s": h * w / 1e6 / max(seconds, 1e-9),
            }
        )
    finally:
        if not done_ok:
            shutil.rmtree(tmp, ignore_errors=True)
        if owned:
            slide.close()


def _tiles(shape: tuple[int, int], tile: int) -> list[tuple[int, int, int, int]]:
    h, w = shape
    return [
        (y, min(y + tile, h), x, min(x + tile, w))
        for y in range(0, h, tile)
        for x in range(0, w, tile)
    ]


def _create_level(root: Any, k: int, shape: tuple[int, int], tile: int) -> Any:
    import numcodecs

    h, w = shape
    return root.create_array(
        str(k),
        shape=(3, h, w),
        chunks=(3, min(tile, h), min(tile, w)),
        dtype="uint8",
        compressors=numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE),
        fill_value=255,
    )


def _copy_level0(slide: Slide, dst: Any) -> Callable[[tuple[int, int, int, int]], None]:
    level0 = slide.levels[0]

    def work(t: tuple[int, int, int, int]) -> None:
        y0, y1, x0, x1 = t
        # Synchronous scheduler: the parallelism is the thread pool's, one tile each.
        block = level0[y0:y1, x0:x1].compute(scheduler="sync")
        dst[:, y0:y1, x0:x1] = np.moveaxis(block, 2, 0)

    return work


def _reduce_level(src: Any, dst: Any) -> Callable[[tuple[int, int, int, int]], None]:
    def work(t: tuple[int, int, int, int]) -> None:
        y0, y1, x0, x1 = t
        block = np.moveaxis(src[:, 2 * y0 : 2 * y1, 2 * x0 : 2 * x1], 0, 2)
        dst[:, y0:y1, x0:x1] = np.moveaxis(reduce2(block, "mean"), 2, 0)

    return work


def _run_tiles(
    pool: ThreadPoolExecutor,
    work: Callable[[tuple[int, int, int, int]], None],
    grid: list[tuple[int, int, int, int]],
    in_flight: int,
    stop: StopFlag | None,
) -> Iterator[None]:
    """Run ``work`` on each tile with at most ``in_flight`` pending; yield per finished tile."""
    pending: deque[Future[None]] = deque()
    try:
        for t in grid:
            if stop_requested(stop):
                break
            pending.append(pool.submit(work, t))
            while len(pending) >= in_flight:
                pending.popleft().result()
                yield None
        while pending and not stop_requested(stop):
            pending.popleft().result()
            yield None
    finally:
        # Stop, error or an abandoned generator: let running tiles finish
        # before the caller removes the temporary store under them.
        for f in pending:
            f.cancel()
        for f in pending:
            if not f.cancelled():
                f.exception()


def _metadata(slide: Slide, shapes: list[tuple[int, int]], tile: int) -> dict[str, Any]:
    mpp = slide.mpp
    unit = {"unit": "micrometer"} if mpp else {}
    sy, sx = mpp if mpp else (1.0, 1.0)
    datasets = []
    for k in range(len(shapes)):
        scale, shift = level_transform(level_downsample(k), (sy, sx))
        datasets.append(
            {
                "path": str(k),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0, *scale]},
                    {"type": "translation", "translation": [0.0, *shift]},
                ],
            }
        )
    colors = [("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF")]
    return {
        "multiscales": [
            {
                "version": "0.4",
                "name": slide.name,
                "axes": [
                    {"name": "c", "type": "channel"},
                    {"name": "y", "type": "space", **unit},
                    {"name": "x", "type": "space", **unit},
                ],
                "datasets": datasets,
                "type": "mean",
                "metadata": {
                    "description": "2 x 2 mean per level (ceil shapes, partial border "
                    "blocks over the pixels that exist)",
                    "method": "napari_gigapixel.core.pyramid_levels.reduce2",
                },
            }
        ],
        "omero": {
            "name": slide.name,
            "rdefs": {"model": "color"},
            "channels": [
                {
                    "label": label,
                    "color": color,
                    "active": True,
                    "window": {"start": 0, "end": 255, "min": 0, "max": 255},
                }
                for label, color in colors
            ],
        },
        META_KEY: {
            "source": os.path.abspath(slide.path),
            "source_format": slide.metadata.get("format"),
            "mpp": list(mpp) if mpp else None,
            "tile": tile,
        },
    }


def _replace(tmp: str, out: str) -> None:
    """Move the finished store into place; an old ``out`` goes only after that worked."""
    if not os.path.lexists(out):
        os.replace(tmp, out)
        return
    old = f"{tmp}.old"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    if os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.remove(old)
