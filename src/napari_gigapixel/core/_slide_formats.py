"""Format back-ends of :func:`napari_gigapixel.core.slide.open_slide`.

Each ``open_*`` function returns a :class:`~.slide.Slide` whose levels are
lazy dask arrays over the file's own tiles. Readers (tifffile, zarr,
openslide) are imported inside the functions so that importing the slide
module stays cheap.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import dask.array as da

from .errors import GigapixelError
from .slide_base import (
    TARGET_CHUNK,
    NotASlideError,
    Slide,
    SlideError,
    _make_slide,
    _ratio_downsamples,
    channel_names_are_rgba,
    chunk_plan,
    lazy_array,
    mpp_or_none,
    to_yxc,
    unit_to_um,
)

_SVS_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)")


# -- TIFF family (tifffile) ------------------------------------------------------------


def open_tiff(path: str) -> Slide:
    """Open a TIFF, OME-TIFF, SVS or NDPI file through tifffile's zarr store."""
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise SlideError(
            f"{path}: not a readable TIFF ({type(exc).__name__}: {exc}). "
            "The file may be truncated or corrupt; copy it again."
        ) from exc
    try:
        return _tiff_slide(tif, path)
    except GigapixelError:
        tif.close()
        raise
    except Exception as exc:  # tifffile parses tags lazily: a damaged IFD fails here
        tif.close()
        raise SlideError(
            f"{path}: a damaged TIFF ({type(exc).__name__}: {exc}). "
            "The file may be truncated or corrupt; copy it again."
        ) from exc
    except BaseException:
        tif.close()
        raise


def _yx_pixels(series: Any) -> int:
    axes, shape = series.axes, series.shape
    if "Y" not in axes or "X" not in axes:
        return 0
    return int(shape[axes.index("Y")]) * int(shape[axes.index("X")])


def _tiff_slide(tif: Any, path: str) -> Slide:
    candidates = [(i, s) for i, s in enumerate(tif.series) if _yx_pixels(s) > 0]
    if not candidates:
        raise NotASlideError(f"{path}: the TIFF holds no 2-D image. Open a slide file.")
    # SVS and NDPI files carry label, macro and thumbnail images as extra
    # series: the slide itself is the largest one.
    idx, series = max(candidates, key=lambda c: _yx_pixels(c[1]))
    page = series.keyframe
    fmt = next(
        (
            name
            for name in ("svs", "ndpi", "ome", "scn", "bif", "philips")
            if getattr(tif, f"is_{name}")
        ),
        "tiff",
    )
    meta: dict[str, Any] = {
        "format": "ome-tiff" if fmt == "ome" else fmt,
        "series": idx,
        "series_name": series.name,
        "n_series": len(tif.series),
        "compression": getattr(page.compression, "name", str(page.compression)),
        "photometric": getattr(page.photometric, "name", str(page.photometric)),
        "tile": [int(page.tilelength), int(page.tilewidth)] if page.is_tiled else None,
    }
    alpha, channels_are = _tiff_alpha(tif, page, idx)
    levels = []
    for k, lvl in enumerate(series.levels):
        raw, axes = _tiff_level(path, series, idx, k, lvl)
        levels.append(to_yxc(raw, axes, path, meta, alpha=alpha, channels_are=channels_are))
    mpp = _tiff_mpp(tif, page, idx)
    return _make_slide(path, levels, _ratio_downsamples(levels), mpp, meta, tif.close)


def _tiff_alpha(tif: Any, page: Any, idx: int) -> tuple[bool, str]:
    """Whether a 4th channel is alpha, by the file's own word, and what it says otherwise."""
    import tifffile

    photometric = int(page.photometric)
    extras = [int(e) for e in (page.extrasamples or ())]
    if photometric == int(tifffile.PHOTOMETRIC.RGB):
        if extras and extras[0] in (1, 2):  # associated / unassociated alpha
            return True, ""
        said = f"ExtraSamples {extras[0]} (unspecified)" if extras else "no ExtraSamples tag"
        return False, f"the TIFF says RGB with {said}"
    if photometric == int(tifffile.PHOTOMETRIC.SEPARATED):
        return False, "the TIFF says photometric SEPARATED (CMYK)"
    if tif.is_ome and tif.ome_metadata:
        names = _ome_channel_names(tif.ome_metadata, idx)
        if channel_names_are_rgba(names):
            return True, ""
        return False, f"the OME channels are named {names}"
    name = getattr(page.photometric, "name", str(photometric))
    return False, f"the TIFF says photometric {name}"


def _ome_channel_names(xml: str, idx: int) -> list[str]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return []
    images = [el for el in root if el.tag.endswith("Image")]
    if not images:
        return []
    image = images[idx] if idx < len(images) else images[0]
    pixels = next((el for el in image if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return []
    return [str(c.get("Name", "")) for c in pixels if c.tag.endswith("Channel")]


def _tiff_level(path: str, series: Any, idx: int, k: int, lvl: Any) -> tuple[da.Array, str]:
    import tifffile
    import zarr

    what = f"series {idx} level {k}"
    keyframe = lvl.keyframe
    if lvl.dataoffset is not None and int(keyframe.compression) == 1:
        # Uncompressed and contiguous: a memory map reads any window directly,
        # even when the file is one huge strip.
        mm = tifffile.memmap(path, series=idx, level=k, mode="r")
        axes = lvl.get_axes(True) if mm.ndim == len(lvl.get_axes(True)) else lvl.get_axes(False)
        plan = [TARGET_CHUNK if a in "YX" else n for a, n in zip(axes, mm.shape)]
        chunks = tuple(min(c, n) for c, n in zip(plan, mm.shape))
        return lazy_array(mm.__getitem__, mm.shape, mm.dtype, chunks, path, what), axes
    # maxworkers > 1 makes the store decode in worker threads: otherwise every
    # decode runs on zarr's single event-loop thread and dask gets no parallelism.
    store = series.aszarr(level=k, maxworkers=4)
    za = zarr.open_array(store=store, mode="r", zarr_format=2)
    axes = lvl.get_axes(True) if za.ndim == len(lvl.get_axes(True)) else lvl.get_axes(False)
    spatial = (axes.index("Y"), axes.index("X")) if "Y" in axes and "X" in axes else (0, 1)
    chunks = chunk_plan(za.chunks, za.shape, spatial, za.dtype.itemsize)
    return lazy_array(za.__getitem__, za.shape, za.dtype, chunks, path, what), axes


def _tiff_mpp(tif: Any, page: Any, idx: int) -> tuple[float, float] | None:
    if tif.is_ome and tif.ome_metadata:
        mpp = _ome_xml_mpp(tif.ome_metadata, idx)
        if mpp is not None:
            return mpp
    if tif.is_svs:
        m = _SVS_MPP.search(page.description or "")
        if m:
            mpp = mpp_or_none(m.group(1), m.group(1))
            if mpp is not None:
                return mpp
    # TIFF resolution tags: pixels per inch (2) or per centimetre (3).
    unit_um = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}.get(int(page.resolutionunit or 1))
    if unit_um is None:
        return None
    try:
        rx, ry = page.resolution
    except (TypeError, ValueError):
        return None
    if not rx or not ry:
        return None
    return mpp_or_none(unit_um / ry, unit_um / rx)


def _ome_xml_mpp(xml: str, idx: int) -> tuple[float, float] | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    images = [el for el in root if el.tag.endswith("Image")]
    if not images:
        return None
    image = images[idx] if idx < len(images) else images[0]
    pixels = next((el for el in image if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    out = []
    for ax in ("Y", "X"):
        size = pixels.get(f"PhysicalSize{ax}")
        factor = unit_to_um(pixels.get(f"PhysicalSize{ax}Unit", "µm"))
        if size is None or factor is None:
            return None
        out.append(float(size) * factor)
    return mpp_or_none(out[0], out[1])


# -- zarr and OME-Zarr -------------------------------------------------------------------


# The zarr and OpenSlide readers live in their own modules; re-exported so that
# this module stays the one list of format back-ends.
from ._openslide_format import open_openslide  # noqa: E402
from ._zarr_format import open_zarr  # noqa: E402

__all__ = ["open_openslide", "open_tiff", "open_zarr"]
