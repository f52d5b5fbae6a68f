"""Write masks atomically: OME-Zarr multiscales or pyramidal TIFF.

Lower levels by 2x2 max so thin scribbles survive (:mod:`.pyramid_levels`: ceil
shapes, OME scale and block-centre translation per level); always to a temporary path
first, then renamed into place (an old mask is removed only once the new one is in).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .masks import MaskError, MaskKind, check_label_values
from .pyramid_levels import level_downsample, level_shapes, level_transform, reduce2_dask

# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def _suffix(path: Path) -> str:
    name = path.name.lower().rstrip("/")
    for ext in (".ome.zarr", ".ome.tiff", ".ome.tif"):
        if name.endswith(ext):
            return "." + ext.rsplit(".", 1)[1]
    return path.suffix.lower()


def _as_2d(array: Any, name: str) -> Any:
    """Drop singleton axes (OME ``(t, c, z, y, x)``, ``(y, x, 1)``); refuse colour images."""
    import dask.array as da

    arr = array if isinstance(array, da.Array) else da.from_array(array, chunks="auto")
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        raise MaskError(
            f"{name}: this is a {arr.shape[-1]}-channel (RGB/colour) image of shape "
            f"{tuple(arr.shape)}, not a mask. Save the mask as a single-channel image "
            "(0 = background, nonzero = tissue)."
        )
    if arr.ndim != 2:
        raise MaskError(
            f"{name}: a mask must be a 2-D image; this file holds shape {tuple(arr.shape)}. "
            "Save one 2-D label image per slide."
        )
    if arr.dtype.kind not in "biu":
        raise MaskError(
            f"{name}: mask values must be integers or booleans, not {arr.dtype}. "
            "Threshold probabilities first (e.g. > 0.5) and save as uint8."
        )
    return arr


def _to_dask(array: Any, name: str) -> Any:
    import dask.array as da

    arr = _as_2d(array, name)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr.rechunk((1024, 1024)) if isinstance(arr, da.Array) else da.from_array(arr)


def _max_pyramid(level0: Any, min_size: int = 256) -> list[Any]:
    """2x2 max pyramid (lazy, :mod:`.pyramid_levels`) until the longer side is at most
    ``min_size``."""
    levels = [level0]
    for _ in level_shapes(level0.shape, min_size)[1:]:
        levels.append(reduce2_dask(levels[-1], "max"))
    return levels


def _partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.partial")


def _write_zarr(tmp: Path, levels: list[Any], downsample: float, kind: str, name: str) -> None:
    import zarr

    root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
    datasets = []
    for i, level in enumerate(levels):
        arr = root.create_array(
            str(i), shape=level.shape, dtype=level.dtype, chunks=(1024, 1024), fill_value=0
        )
        # Strip by strip, so a dask source is never materialised whole.
        for y0 in range(0, level.shape[0], 1024):
            arr[y0 : y0 + 1024] = np.asarray(level[y0 : y0 + 1024])
        scale, shift = level_transform(level_downsample(i, downsample))
        datasets.append(
            {
                "path": str(i),
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": shift},
                ],
            }
        )
    root.attrs.update(
        {
            "multiscales": [
                {
                    "version": "0.4",
                    "name": name,
                    "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                    "datasets": datasets,
                    "type": "max",
                    "metadata": {"method": "napari_gigapixel.core.pyramid_levels.reduce2 (max)"},
                }
            ],
            "napari_gigapixel": {"downsample": float(downsample), "kind": kind},
        }
    )


def _write_tiff(tmp: Path, levels: list[Any], downsample: float, kind: str) -> None:
    import tifffile

    tile = 256

    def tiles(level: Any):
        h, w = level.shape
        for y0 in range(0, h, tile):
            strip = np.asarray(level[y0 : y0 + tile])
            for x0 in range(0, w, tile):
                yield strip[:, x0 : x0 + tile]

    with tifffile.TiffWriter(str(tmp), bigtiff=True) as tw:
        for i, level in enumerate(levels):
            kwargs: dict[str, Any] = (
                {"subifds": len(levels) - 1, "metadata": {"downsample": downsample, "kind": kind}}
                if i == 0
                else {"subfiletype": 1}
            )
            tw.write(
                tiles(level),
                shape=level.shape,
                dtype=level.dtype,
                tile=(tile, tile),
                compression="adobe_deflate",
                photometric="minisblack",
                **kwargs,
            )


def write_mask(
    path: str | os.PathLike,
    array: Any,
    downsample: float = 1.0,
    kind: MaskKind = "dense",
    overwrite: bool = False,
) -> str:
    """Write a mask as an OME-Zarr multiscale or a pyramidal TIFF, atomically.

    Parameters
    ----------
    path
        ``.zarr``/``.ome.zarr`` (OME-Zarr v0.4, scale = downsample per level)
        or ``.tif``/``.tiff`` (SubIFD pyramid, deflate; downsample and kind in
        the JSON description).
    array
        2-D integer or boolean mask: numpy, dask or zarr; written strip by strip.
    downsample
        Level-0 slide pixels per mask pixel.
    kind
        ``"dense"`` or ``"scribble"`` (recorded in the metadata).
    overwrite
        Replace an existing file; otherwise an existing path is an error.

    Returns
    -------
    str
        The path written. On any failure the previous file, if any, is intact
        and no partial output remains.
    """
    p = Path(path)
    suffix = _suffix(p)
    if suffix not in (".zarr", ".tif", ".tiff"):
        raise MaskError(
            f"{p}: cannot write a mask as {suffix or 'no extension'}; use .ome.zarr or .tif."
        )
    if not float(downsample) > 0:
        raise MaskError(f"{p}: downsample must be positive, got {downsample}.")
    if p.exists() and not overwrite:
        raise MaskError(f"{p} already exists; pass --overwrite to replace it.")
    if not p.parent.is_dir():
        raise MaskError(f"{p}: the folder {p.parent} does not exist; create it first.")
    if kind not in ("dense", "scribble"):
        raise MaskError(f"{p}: kind must be 'dense' or 'scribble', not {kind!r}.")
    level0 = _to_dask(array, str(p))
    check_label_values(level0, kind, str(p))  # a scribble 258 is refused, never wrapped
    levels = _max_pyramid(level0)
    tmp = _partial_path(p)
    try:
        if suffix == ".zarr":
            _write_zarr(tmp, levels, float(downsample), kind, p.name)
        else:
            _write_tiff(tmp, levels, float(downsample), kind)
        _replace(tmp, p)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    return str(p)


def _replace(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``; an old directory is removed only once the new one is in."""
    if tmp.is_dir() and final.exists():
        old = final.with_name(f".{final.name}.{os.getpid()}.old")
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:
            os.replace(old, final)  # put the previous mask back
            raise
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    elif final.is_dir():  # a file replacing a directory
        old = final.with_name(f".{final.name}.{os.getpid()}.old")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
