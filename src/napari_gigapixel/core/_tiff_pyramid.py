"""Pyramidal TIFF writing, tile by tile, with bounded memory (used by :mod:`.synthetic`).

Level 0 comes from a tile function; each lower level is the 2x2 reduction of
the level above (the package's one rule, :mod:`.pyramid_levels`), spooled to a
raw temporary file while that level is written (TIFF needs level 0 first),
never regenerated and never held whole.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .pyramid_levels import level_shapes as _level_shapes
from .pyramid_levels import reduce2

# --------------------------------------------------------------------------
# Pyramidal TIFF writing, tile by tile
# --------------------------------------------------------------------------


def level_shapes(shape: tuple[int, int], tile: int) -> list[tuple[int, int]]:
    """Level shapes down to one tile (:func:`.pyramid_levels.level_shapes`)."""
    return _level_shapes(shape, tile)


def reduce_rgb(block: np.ndarray) -> np.ndarray:
    """2x2 mean (rounded half up) of an RGB block: :func:`.pyramid_levels.reduce2`."""
    return reduce2(block, "mean")


def reduce_mask(block: np.ndarray) -> np.ndarray:
    """2x2 maximum of a label block (tissue wins): :func:`.pyramid_levels.reduce2`."""
    return reduce2(block, "max")


class _Spool:
    """A raw temporary file holding one pyramid level, appended strip by strip.

    Lower levels must be written after level 0 in the TIFF, so each reduced
    level waits here on disk instead of in memory (plain file I/O: the page
    cache does not count against the process's RSS).
    """

    def __init__(self, shape: tuple[int, ...], dtype, directory: str) -> None:
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(shape[1:])) * self.dtype.itemsize
        fd, self.path = tempfile.mkstemp(suffix=".raw", dir=directory)
        self.file = os.fdopen(fd, "w+b")

    def append(self, rows: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(rows, self.dtype).tobytes())

    def read(self, r0: int, r1: int) -> np.ndarray:
        self.file.flush()
        self.file.seek(r0 * self.row_bytes)
        data = self.file.read((r1 - r0) * self.row_bytes)
        return np.frombuffer(data, self.dtype).reshape((r1 - r0, *self.shape[1:]))

    def close(self) -> None:
        self.file.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _bounded_map(pool, fn, items: list, ahead: int) -> Iterator:
    """``pool.map`` that keeps at most ``ahead`` results in flight (bounded memory)."""
    if pool is None:
        yield from map(fn, items)
        return
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _pad_tile(data: np.ndarray, tile: int) -> np.ndarray:
    """Pad an edge tile by repetition (avoids JPEG ringing against black)."""
    h, w = data.shape[:2]
    if h == tile and w == tile:
        return data
    pad = [(0, tile - h), (0, tile - w)] + [(0, 0)] * (data.ndim - 2)
    return np.pad(data, pad, mode="edge")


def write_pyramid(
    path: str,
    shape: tuple[int, int],
    channels: int,
    tile: int,
    source: Callable[[tuple[int, int, int, int]], np.ndarray],
    reduce: Callable[[np.ndarray], np.ndarray],
    write_kwargs: dict,
    on_tile: Callable[[], None],
    workers: int = 1,
    mpp: float | None = None,
) -> None:
    """Write a SubIFD pyramid: level 0 from ``source``, each level from the one above."""
    import tifffile

    shapes = level_shapes(shape, tile)
    extra = (channels,) if channels > 1 else ()
    spools: list[_Spool] = []
    directory = os.path.dirname(os.path.abspath(path))
    pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def level_tiles(level: int) -> Iterator[np.ndarray]:
        h, w = shapes[level]
        below = None
        if level + 1 < len(shapes):
            below = _Spool((*shapes[level + 1], *extra), np.uint8, directory)
            spools.append(below)
        for ty in range(0, h, tile):
            ty1 = min(h, ty + tile)
            if level == 0:
                wins = [(ty, ty1, tx, min(w, tx + tile)) for tx in range(0, w, tile)]
                tiles = _bounded_map(pool, source, wins, 2 * workers)
                strip = None
            else:
                strip = spools[level - 1].read(ty, ty1)
                tiles = (strip[:, tx : tx + tile] for tx in range(0, w, tile))
            reduced = []
            n_tiles = -(-w // tile)
            for i, data in enumerate(tiles):
                if below is not None:
                    reduced.append(reduce(data))
                    # Spool the row before its last tile goes out: tifffile
                    # stops pulling after the last tile, so code after the
                    # final yield would never run.
                    if i == n_tiles - 1:
                        below.append(np.concatenate(reduced, axis=1))
                on_tile()
                yield _pad_tile(data, tile)

    try:
        with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
            for level, (h, w) in enumerate(shapes):
                kwargs = dict(write_kwargs)
                if level == 0:
                    kwargs["subifds"] = len(shapes) - 1
                else:
                    kwargs["subfiletype"] = 1
                    kwargs.pop("metadata", None)
                if mpp:
                    res = 1e4 / (mpp * 2**level)  # pixels per cm
                    kwargs["resolution"] = (res, res)
                    kwargs["resolutionunit"] = "CENTIMETER"
                tw.write(
                    data=level_tiles(level),
                    shape=(h, w, *extra),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    maxworkers=workers,
                    # tifffile's encoder threads take this many bytes of raw
                    # tiles per batch; its default (512 MB) would dominate
                    # the peak RSS.
                    buffersize=8 * 2**20,
                    **kwargs,
                )
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for spool in spools:
            spool.close()
