"""Format back-ends of :func:`napari_gigapixel.core.slide.open_slide`.

Each ``open_*`` function returns a :class:`~.slide.Slide` whose levels are
lazy dask arrays over the file's own tiles. Readers (tifffile, zarr,
openslide) are imported inside the functions so that importing the slide
module stays cheap.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from typing import Any

import dask.array as da
import numpy as np

from .errors import GigapixelError
from .slide_base import (
    TARGET_CHUNK,
    NotASlideError,
    Slide,
    SlideError,
    chunk_plan,
    finish_levels,
    lazy_array,
    mpp_or_none,
    slide_name,
    snap_downsample,
    to_yxc,
    unit_to_um,
)

_SVS_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)")


def _make_slide(
    path: str,
    levels: list[da.Array],
    downsamples: list[float],
    mpp: tuple[float, float] | None,
    meta: dict[str, Any],
    *closers: Any,
) -> Slide:
    """The :class:`Slide` every back-end returns: stored levels finished
    (:func:`finish_levels`), named after the file, ``closers`` run on close."""
    levels, downsamples = finish_levels(levels, downsamples, meta)
    return Slide(
        path=path,
        name=slide_name(path),
        levels=levels,
        downsamples=downsamples,
        mpp=mpp,
        metadata=meta,
        _closers=list(closers),
    )


def _ratio_downsamples(levels: list[da.Array]) -> list[float]:
    h0, w0 = levels[0].shape[:2]
    return [snap_downsample((h0 / lvl.shape[0] + w0 / lvl.shape[1]) / 2) for lvl in levels]


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


def channel_names_are_rgba(names: list[Any]) -> bool:
    """True for four channel names that spell red, green, blue, alpha (R/G/B/A too)."""
    want = (("r", "red"), ("g", "green"), ("b", "blue"), ("a", "alpha"))
    if len(names) != 4:
        return False
    return all(str(n).strip().lower() in ok for n, ok in zip(names, want))


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


def open_zarr(path: str) -> Slide:
    """Open a zarr array or an OME-Zarr multiscale image (zarr format 2 or 3)."""
    import zarr

    try:
        node = zarr.open(store=path, mode="r")
    except Exception as exc:
        raise SlideError(
            f"{path}: cannot open as zarr ({type(exc).__name__}: {exc}). "
            "The store may be incomplete; write it again."
        ) from exc
    try:
        return _zarr_slide(node, path)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        if isinstance(exc, SlideError):
            raise
        raise SlideError(
            f"{path}: malformed zarr/OME-Zarr metadata ({type(exc).__name__}: {exc}). "
            "Write the image again with an OME-Zarr writer."
        ) from exc


def _zarr_slide(node: Any, path: str) -> Slide:
    import zarr

    meta: dict[str, Any] = {"format": "zarr"}
    axes_meta: list[Any] | None = None
    transforms: list[Any] = []
    alpha, channels_are = False, "a plain zarr array does not name its channels"
    if isinstance(node, zarr.Array):
        arrays = [node]
        labels = [""]
    else:
        attrs = node.attrs.asdict()
        ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else {}
        ms = attrs.get("multiscales") or ome.get("multiscales")
        if not ms:
            raise NotASlideError(
                f"{path}: a zarr group without 'multiscales' metadata, so not an "
                "(OME-Zarr) image. Open the image array or an OME-Zarr image group."
            )
        if not isinstance(ms, list) or not isinstance(ms[0], dict):
            raise SlideError(f"{path}: 'multiscales' must be a list of objects.")
        m = ms[0]
        meta["format"] = "ome-zarr"
        meta["ngff_version"] = str(m.get("version") or ome.get("version"))
        datasets = m.get("datasets") or []
        if not isinstance(datasets, list) or not all(isinstance(d, dict) for d in datasets):
            raise SlideError(f"{path}: multiscales 'datasets' must be a list of objects.")
        labels = [str(d["path"]) for d in datasets]
        try:
            arrays = [node[p] for p in labels]
        except KeyError as exc:
            raise SlideError(
                f"{path}: multiscales lists dataset {exc} that is missing. "
                "The store is incomplete; write it again."
            ) from exc
        if not arrays:
            raise NotASlideError(f"{path}: the multiscales metadata lists no datasets.")
        if not all(isinstance(a, zarr.Array) for a in arrays):
            raise SlideError(f"{path}: a multiscales dataset is a group, not an array.")
        axes_meta = m.get("axes")
        if axes_meta is not None and not isinstance(axes_meta, list):
            raise SlideError(f"{path}: multiscales 'axes' must be a list, not {axes_meta!r}.")
        transforms = [d.get("coordinateTransformations") or [] for d in datasets]
        omero = attrs.get("omero") or ome.get("omero")
        channels = omero.get("channels") if isinstance(omero, dict) else None
        names = (
            [c.get("label", "") for c in channels if isinstance(c, dict)]
            if isinstance(channels, list)
            else []
        )
        alpha = channel_names_are_rgba(names)
        channels_are = (
            f"the omero channels are labelled {names}" if names else "omero names no channels"
        )
    axes = _zarr_axes(axes_meta, arrays[0].shape, path)
    spatial = (axes.index("Y"), axes.index("X"))
    levels = []
    for label, za in zip(labels, arrays):
        if za.ndim != len(axes):
            raise SlideError(
                f"{path}: dataset {label!r} has {za.ndim} axes, expected {len(axes)}."
            )
        chunks = chunk_plan(za.chunks, za.shape, spatial, za.dtype.itemsize)
        what = f"dataset {label!r}" if label else "array"
        raw = lazy_array(za.__getitem__, za.shape, za.dtype, chunks, path, what)
        levels.append(to_yxc(raw, axes, path, meta, alpha=alpha, channels_are=channels_are))
    # Multiscales must shrink; sort defensively by size (some writers list levels oddly).
    order = sorted(range(len(levels)), key=lambda i: -levels[i].shape[0] * levels[i].shape[1])
    levels = [levels[i] for i in order]
    meta["datasets"] = [labels[i] for i in order]
    mpp = _ngff_mpp(axes_meta, transforms[order[0]] if transforms else [], axes)
    return _make_slide(path, levels, _ratio_downsamples(levels), mpp, meta)


def _zarr_axes(axes_meta: list[Any] | None, shape: tuple[int, ...], path: str) -> str:
    """Axis letters (Y, X, C, others) from OME-NGFF axes, or guessed from the shape."""
    if axes_meta:
        letters = ""
        for ax in axes_meta:
            name = str(ax.get("name") if isinstance(ax, dict) else ax).lower()
            kind = ax.get("type") if isinstance(ax, dict) else None
            if name in ("y", "x"):
                letters += name.upper()
            elif name in ("c", "s") or kind == "channel":
                letters += "C"
            else:
                letters += "T" if kind == "time" or name == "t" else "Z"
        if len(letters) != len(shape):
            raise SlideError(f"{path}: multiscales axes {axes_meta} do not match shape {shape}.")
        if "Y" not in letters or "X" not in letters or len(set(letters) & set("YX")) != 2:
            raise SlideError(
                f"{path}: the multiscales axes {[a for a in axes_meta]} do not name both a "
                "'y' and an 'x' axis, so the image plane is unknown. Write the OME-Zarr "
                "with axes named y and x."
            )
        if letters.count("Y") > 1 or letters.count("X") > 1 or letters.count("C") > 1:
            raise SlideError(f"{path}: the multiscales axes {axes_meta} repeat an axis.")
        return letters
    n = len(shape)
    if n == 2:
        return "YX"
    if n == 5:  # OME-NGFF before axes metadata (v0.1, v0.2): t, c, z, y, x
        return "TCZYX"
    if n >= 3 and shape[-1] in (1, 3, 4) and shape[-2] > 4:
        return "Z" * (n - 3) + "YXC"
    if n >= 3:
        return "Z" * (n - 3) + "CYX"
    raise NotASlideError(f"{path}: a {n}-D zarr array of shape {shape} is not an image.")


def _ngff_mpp(
    axes_meta: list[Any] | None, transforms: list[Any], axes: str
) -> tuple[float, float] | None:
    if not axes_meta or not all(isinstance(a, dict) for a in axes_meta):
        return None
    scale = next((t.get("scale") for t in transforms if t.get("type") == "scale"), None)
    if not scale or len(scale) != len(axes):
        return None
    out = []
    for letter in "YX":
        i = axes.index(letter)
        unit = axes_meta[i].get("unit")
        factor = unit_to_um(unit) if unit else None
        if factor is None:
            return None  # pixels without a physical unit
        out.append(float(scale[i]) * factor)
    return mpp_or_none(out[0], out[1])


# -- OpenSlide ----------------------------------------------------------------------------


def open_openslide(path: str) -> Slide:
    """Open an OpenSlide-format slide; levels read through ``read_region`` per chunk."""
    try:
        import openslide
    except (ImportError, OSError) as exc:
        ext = os.path.splitext(path)[1]
        raise SlideError(
            f"{path}: reading {ext} slides needs OpenSlide, which is not available "
            f"({exc}). Install it with: pip install 'napari-gigapixel[openslide]'."
        ) from exc
    try:
        osr = openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise NotASlideError(
            f"{path}: OpenSlide does not recognise this file as a slide ({exc})."
        ) from exc
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlideError(
            f"{path}: OpenSlide cannot read this slide ({exc}). The file (or, for "
            ".mrxs/.vms, its companion data folder) may be incomplete or corrupt."
        ) from exc
    try:
        return _openslide_slide(osr, path)
    except BaseException:
        osr.close()
        raise


def _openslide_slide(osr: Any, path: str) -> Slide:
    props = dict(osr.properties)
    meta: dict[str, Any] = {
        "format": f"openslide:{props.get('openslide.vendor', 'unknown')}",
        "grayscale": False,
        "alpha_dropped": True,
    }
    levels, downsamples = [], []
    for k in range(osr.level_count):
        w, h = osr.level_dimensions[k]
        ds = float(osr.level_downsamples[k])
        tw = int(props.get(f"openslide.level[{k}].tile-width", 256) or 256)
        th = int(props.get(f"openslide.level[{k}].tile-height", 256) or 256)
        chunks = chunk_plan((th, tw, 3), (h, w, 3), (0, 1))
        levels.append(
            lazy_array(_region_reader(osr, k, ds), (h, w, 3), np.uint8, chunks, path, f"level {k}")
        )
        downsamples.append(ds)
    th0 = int(props.get("openslide.level[0].tile-height", 0) or 0)
    tw0 = int(props.get("openslide.level[0].tile-width", 0) or 0)
    meta["tile"] = [th0, tw0] if th0 and tw0 else None
    mpp = mpp_or_none(props.get("openslide.mpp-y"), props.get("openslide.mpp-x"))
    return _make_slide(path, levels, downsamples, mpp, meta, osr.close)


def _region_reader(osr: Any, level: int, ds: float):
    def read(key: tuple[slice, ...]) -> np.ndarray:
        ys, xs, cs = key
        # read_region takes the top-left corner in level-0 coordinates.
        x0, y0 = int(round(xs.start * ds)), int(round(ys.start * ds))
        rgba = np.asarray(
            osr.read_region((x0, y0), level, (xs.stop - xs.start, ys.stop - ys.start))
        )
        # Empty areas come back transparent (alpha 0, black): show them as
        # white glass, which is what they are.
        alpha = rgba[..., 3:4].astype(np.uint16)
        rgb = (rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
        return rgb.astype(np.uint8)[..., cs]

    return read
