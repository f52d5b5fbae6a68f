"""npe2 sample data: a synthetic H&E slide with its ground-truth tissue mask.

Made once into the cache folder (``$NAPARI_GIGAPIXEL_CACHE`` or the user
cache), then reopened lazily: the slide through the plugin's own reader (so
it looks exactly like a slide the user opens), the mask as a multiscale
Labels layer read from the mask TIFF's levels. ``NAPARI_GIGAPIXEL_SAMPLE_SHAPE``
(``HEIGHTxWIDTH``) picks another size, e.g. for fast tests.
"""

from __future__ import annotations

import os
from typing import Any

from .core.synthetic import SAMPLE_SHAPE, parse_shape, sample_slide_paths

LayerData = tuple[Any, dict[str, Any], str]


def _mask_levels(path: str) -> list[Any]:
    import dask.array as da
    import tifffile
    import zarr

    group = zarr.open_group(tifffile.imread(path, aszarr=True), mode="r")
    keys = sorted((k for k, _ in group.arrays()), key=int)
    return [da.from_zarr(group[k]) for k in keys]


def slide_and_truth_layers(slide_path: str, mask_path: str, name: str) -> list[LayerData]:
    """A slide (RGB multiscale image) and its full-resolution mask (multiscale Labels).

    The labels' ``metadata["downsample"]`` is 1 (the mask is full resolution)
    and their scale and units match the slide layer's, so they overlay it.
    """
    from ._reader import layer_data
    from .core.slide import open_slide

    image = layer_data(open_slide(slide_path))
    image[1]["name"] = name
    labels_kwargs: dict[str, Any] = {
        "name": "ground truth",
        "multiscale": True,
        "opacity": 0.4,
        "metadata": {"downsample": 1.0, "kind": "dense", "path": mask_path},
    }
    for key in ("scale", "units"):
        if key in image[1]:
            labels_kwargs[key] = image[1][key]
    return [image, (_mask_levels(mask_path), labels_kwargs, "labels")]


def make_sample_slide() -> list[LayerData]:
    """The sample slide (RGB multiscale image) and its mask (multiscale Labels).

    Returns
    -------
    list of LayerData
        ``(levels, kwargs, "image")`` then ``(levels, kwargs, "labels")``; see
        :func:`slide_and_truth_layers`.
    """
    env = os.environ.get("NAPARI_GIGAPIXEL_SAMPLE_SHAPE")
    shape = parse_shape(env) if env else SAMPLE_SHAPE
    slide_path, mask_path = sample_slide_paths(shape=shape)
    return slide_and_truth_layers(str(slide_path), str(mask_path), "synthetic slide")
