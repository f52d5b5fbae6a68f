"""npe2 writer hook: save a Labels layer (a tissue mask) as OME-Zarr or pyramidal TIFF.

Thin over :func:`napari_gigapixel.core.mask_io.write_mask`. The mask's
annotation level (level-0 slide pixels per label pixel) comes from
``meta["metadata"]["downsample"]`` when our widgets or the sample set it
(always right, even when the slide layer carries a micron scale), else from
the layer's ``scale`` (right when the slide layer has scale 1).
"""

from __future__ import annotations

from typing import Any

from .core.mask_io import write_mask
from .core.masks import MaskError


def _downsample(meta: dict[str, Any], path: str) -> float:
    metadata = meta.get("metadata") or {}
    if metadata.get("downsample") is not None:
        return float(metadata["downsample"])
    scale = [float(s) for s in (meta.get("scale") or (1.0, 1.0))][-2:]
    if len(scale) == 2 and abs(scale[0] - scale[1]) > 1e-6 * max(scale):
        raise MaskError(
            f"{path}: the layer's y and x scales differ ({scale[0]} vs {scale[1]}); a mask "
            "needs square pixels. Set the layer's scale to (d, d) before saving."
        )
    return scale[-1]


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer as a mask file.

    Parameters
    ----------
    path
        Destination ending in ``.zarr``/``.ome.zarr`` or ``.tif``/``.tiff``.
        napari has already asked about replacing an existing file.
    data
        The layer's data: a 2-D array, or the list of levels of a
        multiscale layer (level 0 is written; the pyramid is rebuilt).
    meta
        The layer's attributes (``scale``, ``metadata``, ``name``, ...).

    Returns
    -------
    list of str
        The path written.
    """
    if isinstance(data, (list, tuple)):
        data = data[0]
    kind = (meta.get("metadata") or {}).get("kind", "dense")
    if kind not in ("dense", "scribble"):
        kind = "dense"
    written = write_mask(path, data, downsample=_downsample(meta, path), kind=kind, overwrite=True)
    return [written]
