"""Bridges between napari layers and the core: slide paths, levels, masks.

A slide layer comes from our reader: a (multiscale) RGB Image layer whose
``metadata["path"]`` (or ``source.path``) names the slide file. Masks live at
an annotation level and overlay the slide through the layer ``scale`` and
``translate``, so everything here converts between the slide's level-0 pixel
grid and napari's world coordinates.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ..core.errors import GigapixelError
from ..core.masks import AnnotationMask, infer_downsample, labels_to_uint8

#: Annotation levels a user may pick (level-0 pixels per mask pixel).
ANNOTATION_LEVELS = (4, 8, 16, 32)
#: Largest mask (pixels) the default annotation level aims for.
MAX_MASK_PIXELS = 16_000_000


class LayerError(GigapixelError):
    """A layer that cannot be used for the requested action."""


def slide_path(layer: Any) -> str:
    """Path of the slide file behind an Image layer.

    Raises
    ------
    LayerError
        When the layer has no file behind it (e.g. a numpy array added from
        the console): training and prediction read the slide from disk.
    """
    meta = getattr(layer, "metadata", None) or {}
    candidates = [meta.get("path"), meta.get("slide_path")]
    source = getattr(layer, "source", None)
    candidates.append(getattr(source, "path", None))
    for cand in candidates:
        if cand and os.path.exists(str(cand)):
            return str(cand)
    raise LayerError(
        f"Layer '{layer.name}' has no slide file behind it (it was not opened from a file). "
        "Open the slide with File > Open (napari-gigapixel reader) or load the sample "
        "(File > Open Sample > napari-gigapixel), then pick that layer."
    )


def level0_shape(layer: Any) -> tuple[int, int]:
    """(height, width) of the layer's finest level, without reading pixels."""
    data = layer.data
    arr = data[0] if getattr(layer, "multiscale", False) else data
    shape = tuple(int(s) for s in arr.shape)
    if getattr(layer, "rgb", False) or (len(shape) == 3 and shape[-1] in (3, 4)):
        shape = shape[:-1]
    return shape[-2], shape[-1]


def default_level(slide_shape: tuple[int, int], max_pixels: int = MAX_MASK_PIXELS) -> int:
    """The finest annotation level whose mask stays under ``max_pixels``."""
    h, w = slide_shape
    for d in ANNOTATION_LEVELS:
        if math.ceil(h / d) * math.ceil(w / d) <= max_pixels:
            return d
    return ANNOTATION_LEVELS[-1]


def mask_shape(slide_shape: tuple[int, int], downsample: float) -> tuple[int, int]:
    """Shape of a mask at ``downsample`` covering the whole slide."""
    return (
        int(math.ceil(slide_shape[0] / downsample)),
        int(math.ceil(slide_shape[1] / downsample)),
    )


def overlay_transform(slide_layer: Any, downsample: float) -> tuple[tuple, tuple]:
    """(scale, translate) that overlay a mask at ``downsample`` on the slide layer.

    Mask pixel ``i`` covers level-0 pixels ``[i*d, (i+1)*d)``, whose centre is
    ``i*d + (d-1)/2`` in level-0 pixel-centre coordinates; napari places pixel
    centres, hence the half-pixel shift.
    """
    s = np.asarray(slide_layer.scale[-2:], dtype=float)
    t = np.asarray(slide_layer.translate[-2:], dtype=float)
    scale = tuple(float(v) for v in s * downsample)
    translate = tuple(float(v) for v in t + s * (downsample - 1) / 2.0)
    return scale, translate


def overlay_kwargs(slide_layer: Any, downsample: float) -> dict[str, Any]:
    """``scale``, ``translate`` and ``units`` for a layer overlaying ``slide_layer``.

    The units must match the slide's (microns when the slide states its pixel
    size) or napari drops physical units for the whole canvas.
    """
    scale, translate = overlay_transform(slide_layer, downsample)
    kwargs: dict[str, Any] = {"scale": scale, "translate": translate}
    units = getattr(slide_layer, "units", None)
    if units is not None:
        kwargs["units"] = tuple(units[-2:])
    return kwargs


#: Mask colours: tissue is always cyan, background scribbles orange.
MASK_COLOURS = {
    "dense": {0: "transparent", 1: "#00d5ff", None: "#00d5ff"},
    "scribble": {0: "transparent", 1: "#ff9d00", 2: "#00d5ff", None: "#ff00ff"},
}


def probability_colormap() -> Any:
    """Transparent at 0, opaque amber at 1: a probability over an H&E slide.

    Additive blending or an opaque colormap would wash the slide out; this
    one leaves background untouched and tints likely tissue.
    """
    from napari.utils.colormaps import Colormap

    return Colormap(
        colors=[[1.0, 0.75, 0.0, 0.0], [1.0, 0.75, 0.0, 1.0]], name="gigapixel probability"
    )


def mask_colormap(kind: str) -> Any:
    """A napari label colormap for a dense or scribble mask."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=MASK_COLOURS.get(kind, MASK_COLOURS["dense"]))


def resample_mask(mask: AnnotationMask, slide_shape: tuple[int, int], downsample: float):
    """Nearest-neighbour copy of ``mask`` at another annotation level (small)."""
    if abs(mask.downsample - downsample) < 1e-9 and mask.shape == mask_shape(
        slide_shape, downsample
    ):
        return np.asarray(mask.array)
    h, w = slide_shape
    d = int(round(downsample))
    if abs(d - downsample) > 1e-9:
        raise LayerError(f"{mask.name}: annotation level {downsample} is not an integer.")
    return mask.read_window(0, h, 0, w, stride=d)


def labels_level(layer: Any) -> tuple[Any, int]:
    """The level of a (possibly multiscale) Labels layer to use as a mask.

    Returns the finest level under :data:`MAX_MASK_PIXELS` and its index.
    """
    if not getattr(layer, "multiscale", False):
        return layer.data, 0
    for i, arr in enumerate(layer.data):
        if int(np.prod(arr.shape[-2:])) <= MAX_MASK_PIXELS:
            return arr, i
    return layer.data[-1], len(layer.data) - 1


def mask_from_labels(
    labels_layer: Any, slide_layer: Any, kind: str | None = None
) -> AnnotationMask:
    """An :class:`AnnotationMask` (numpy, at its annotation level) from a Labels layer.

    The downsample comes from the layer's ``metadata["downsample"]`` when the
    annotate widget made it, else from the shape ratio to the slide, which
    also checks that the mask can overlay the slide.
    """
    arr, _ = labels_level(labels_layer)
    sshape = level0_shape(slide_layer)
    d = infer_downsample(tuple(arr.shape[-2:]), sshape, name=f"layer '{labels_layer.name}'")
    meta = labels_layer.metadata or {}
    kind = kind or meta.get("kind", "dense")
    data = np.asarray(arr)
    if data.ndim != 2:
        raise LayerError(
            f"Labels layer '{labels_layer.name}' is {data.ndim}-D; a tissue mask is 2-D."
        )
    return AnnotationMask(
        labels_to_uint8(data, kind, f"Labels layer '{labels_layer.name}'"),
        float(d),
        kind=kind,
        name=labels_layer.name,
    )


def add_mask_layer(
    viewer: Any,
    array: np.ndarray,
    slide_layer: Any,
    downsample: float,
    *,
    name: str,
    kind: str = "dense",
    opacity: float = 0.5,
    colormap: Any = None,
) -> Any:
    """Add (or replace the data of) a Labels layer overlaying ``slide_layer``.

    ``colormap`` defaults to :func:`mask_colormap` of ``kind``.
    """
    kwargs = overlay_kwargs(slide_layer, downsample)
    meta = {"downsample": float(downsample), "kind": kind, "slide_layer": slide_layer.name}
    if name in viewer.layers:
        layer = viewer.layers[name]
        if getattr(layer, "multiscale", False) or layer.data.shape != array.shape:
            viewer.layers.remove(layer)
        else:
            layer.data = array
            for key, value in kwargs.items():
                setattr(layer, key, value)
            layer.metadata.update(meta)
            layer.colormap = colormap if colormap is not None else mask_colormap(kind)
            return layer
    layer = viewer.add_labels(array, name=name, opacity=opacity, metadata=meta, **kwargs)
    layer.colormap = colormap if colormap is not None else mask_colormap(kind)
    return layer


def shapes_roi(shapes: Any, slide: Any) -> tuple[int, int, int, int]:
    """Level-0 rectangle ``(y0, x0, y1, x1)`` around the shapes of a Shapes layer.

    Raises
    ------
    LayerError
        No shape drawn, or none over the slide.
    """
    if len(shapes.data) == 0:
        raise LayerError(
            f"The validation region '{shapes.name}' has no shape; draw a rectangle over the slide."
        )
    scale = np.asarray(slide.scale[-2:], float)
    translate = np.asarray(slide.translate[-2:], float)
    pts = np.concatenate(
        [np.asarray(shapes._data_to_world(np.asarray(v)))[..., -2:] for v in shapes.data]
    )
    # World -> level-0 pixel edges (napari places pixel centres, hence +0.5).
    level0 = (pts - translate) / scale + 0.5
    h, w = level0_shape(slide)
    y0, x0 = np.clip(np.floor(level0.min(axis=0)), 0, [h, w]).astype(int)
    y1, x1 = np.clip(np.ceil(level0.max(axis=0)), 0, [h, w]).astype(int)
    if y1 <= y0 or x1 <= x0:
        raise LayerError(
            f"The shapes of '{shapes.name}' are not over the slide '{slide.name}'; draw the "
            "validation rectangle on the slide."
        )
    return (int(y0), int(x0), int(y1), int(x1))


def show_preview(
    viewer: Any, slide: Any, probability: Any, downsample: float, offset: tuple[float, float]
) -> Any:
    """Add or update the ``preview: <slide>`` probability layer over ``slide``.

    ``probability`` covers the slide from ``offset`` (level-0 pixels, the
    corner of a training ROI) at ``downsample`` level-0 pixels per pixel.
    """
    name = f"preview: {slide.name}"
    prob = np.asarray(probability, dtype=np.float32)
    kwargs = overlay_kwargs(slide, float(downsample))
    s = np.asarray(slide.scale[-2:], float)
    kwargs["translate"] = tuple(np.asarray(kwargs["translate"]) + s * np.asarray(offset, float))
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = prob
        layer.scale = kwargs["scale"]
        layer.translate = kwargs["translate"]
        return layer
    return viewer.add_image(
        prob,
        name=name,
        **kwargs,
        colormap=probability_colormap(),
        contrast_limits=(0.0, 1.0),
        opacity=0.5,
        blending="translucent",
    )
