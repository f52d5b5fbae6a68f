"""npe2 reader hook: open a whole-slide image as one multiscale RGB image layer.

Light on purpose: it imports only the Qt-free, TensorFlow-free slide module.
Pixels are read lazily by napari, tile by tile, from the dask pyramid.

Layer scale: when the slide states its pixel size, the layer gets
``scale=(mpp_y, mpp_x)`` and ``units=("um", "um")`` so napari's scale bar and
rulers are physical; ``metadata["mpp"]`` keeps it. A layer that overlays
level-0 pixels at ``downsample`` d (masks, previews) must then use
``scale = (d * mpp_y, d * mpp_x)``, i.e. ``d * slide_layer.scale``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .core.slide import NotASlideError, Slide, SlideError, is_slide_path, open_slide

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return a reader for one slide path, or None when this plugin cannot take it.

    The slide is opened here (metadata and one small tile only), so a file
    that is not a slide is declined at once and napari can try another reader.

    Parameters
    ----------
    path
        A path, or a list of paths (only a list of exactly one is taken).

    Returns
    -------
    callable or None
        A function returning one ``(levels, kwargs, "image")`` layer tuple.
        For a slide that is broken (corrupt, missing codec or OpenSlide), the
        function raises the :class:`~.core.slide.SlideError`, so napari shows
        the message instead of a half-loaded layer.
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        p = os.fspath(path)
    except TypeError:
        return None
    if not is_slide_path(p):
        return None
    try:
        slide = open_slide(p)
    except NotASlideError:
        return None
    except SlideError as exc:
        error = exc

        def fail(_path: str | list[str]) -> list[LayerData]:
            raise error

        return fail

    def read(_path: str | list[str]) -> list[LayerData]:
        return [layer_data(slide)]

    return read


def layer_data(slide: Slide) -> LayerData:
    """The napari layer tuple of an open slide (multiscale, RGB, physical scale when known)."""
    meta = {
        "path": os.path.abspath(slide.path),
        "mpp": list(slide.mpp) if slide.mpp else None,
        "downsamples": list(slide.downsamples),
        "slide_metadata": dict(slide.metadata),
    }
    kwargs: dict[str, Any] = {
        "name": slide.name,
        "multiscale": True,
        "rgb": True,
        "contrast_limits": [0, 255],
        "metadata": meta,
    }
    if slide.mpp:
        kwargs["scale"] = tuple(slide.mpp)
        kwargs["units"] = ("um", "um")
    return (list(slide.levels), kwargs, "image")
