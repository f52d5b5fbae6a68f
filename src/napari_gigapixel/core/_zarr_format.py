"""Zarr and OME-Zarr (v0.1 to v0.5, zarr format 2 or 3) slides as lazy pyramids."""

from __future__ import annotations

from typing import Any

from .slide_base import (
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
