"""The on-disk prediction: an OME-Zarr (NGFF 0.4, zarr format 2) with two pyramids.

Layout of ``OUT.zarr``::

    .zattrs             multiscales of the probability image (uint8, 0-255) and
                        "napari_gigapixel": slide path/shape, model, threshold,
                        region, downsample and the completion marker
    0/ 1/ 2/ ...        probability levels
    labels/mask/0 ...   the binary mask (uint8 0/1) as an OME label image

Level 0 stays at the model's *output stride* (1/4 of the slide by default) and
the OME ``coordinateTransformations`` say so: writing a 1 Gpx slide's
prediction at full resolution would dominate time and disk, and viewers overlay
by scale. Full-resolution access goes through per-chunk upsampling
(:meth:`PredictionStore.mask_level0`: the probability's threshold line,
:mod:`.mask_refine`).

A store is written under a temporary name and renamed when complete; its
``complete`` attribute is set last, and :func:`open_prediction` refuses a store
without it, so a stopped or crashed run cannot pass for a finished one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GigapixelError, decoding
from .pyramid_levels import level_shapes, level_transform, majority_levels, reduce2_dask

#: Key of this package's metadata in the root ``.zattrs``.
META_KEY = "napari_gigapixel"
#: Pyramids stop once both sides of a level are at most this many pixels.
PYRAMID_MIN_SIDE = 1024


class PredictionError(GigapixelError):
    """A path that is not a finished napari-gigapixel prediction, or cannot be written."""


def _multiscales(name: str, downsamples: list[float], offset: tuple[int, int]) -> list[dict]:
    datasets = []
    for i, d in enumerate(downsamples):
        # NGFF places pixel centres: a pixel d level-0 pixels wide is centred
        # (d - 1) / 2 past the level-0 pixel at its origin (pyramid_levels).
        scale, shift = level_transform(d, origin=offset)
        datasets.append(
            {
                "path": str(i),
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": shift},
                ],
            }
        )
    return [
        {
            "version": "0.4",
            "name": name,
            "axes": [
                {"name": "y", "type": "space", "unit": "pixel"},
                {"name": "x", "type": "space", "unit": "pixel"},
            ],
            "datasets": datasets,
            "type": "mean" if name == "probability" else "max",
        }
    ]


def pyramid_shapes(
    shape: tuple[int, int], min_side: int = PYRAMID_MIN_SIDE
) -> list[tuple[int, int]]:
    """Shapes of a 2x pyramid from ``shape`` down to ``min_side`` (level 0 first;
    :func:`.pyramid_levels.level_shapes`)."""
    return level_shapes(shape, min_side)


def create_store(
    path: str | os.PathLike,
    shape: tuple[int, int],
    chunk: int | tuple[int, int],
    meta: dict[str, Any],
) -> tuple[Any, Any]:
    """Create an empty prediction store (level 0 of both pyramids) at ``path``.

    Returns
    -------
    (zarr.Array, zarr.Array)
        Level 0 of the probability and of the mask, chunked ``chunk``.
    """
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    cy, cx = (chunk, chunk) if isinstance(chunk, int) else chunk
    chunks = (max(1, min(int(cy), shape[0])), max(1, min(int(cx), shape[1])))
    prob = root.create_array("0", shape=shape, chunks=chunks, dtype="uint8", fill_value=0)
    labels = root.create_group("labels")
    labels.attrs["labels"] = ["mask"]
    mask_group = labels.create_group("mask")
    mask = mask_group.create_array("0", shape=shape, chunks=chunks, dtype="uint8", fill_value=0)
    root.attrs[META_KEY] = {**meta, "complete": False}
    return prob, mask


def build_pyramids(path: str | os.PathLike, stop: Any = None) -> list[float]:
    """Add 2x levels to both pyramids of a store from its level 0; write OME metadata.

    The package's one pyramid rule (:mod:`.pyramid_levels`): every level
    stands for whole blocks of level 0, as the OME metadata says (scale ``D``,
    translation to the block centre), so it sits on the slide at every level.
    The probability is the 2x2 mean; the mask is the area majority of level 0
    over each block (:func:`.pyramid_levels.majority_levels`): plain
    ``[::2, ::2]`` subsampling would shift coarse levels by up to half their
    pixel, and a maximum would dilate them. Levels are computed chunk by chunk
    through dask.

    Returns
    -------
    list[float]
        The downsample of every level, in level-0 pixels.
    """
    import dask.array as da
    import zarr

    from .events import JobStopped, stop_requested

    root = zarr.open_group(str(path), mode="r+", zarr_format=2)
    meta = dict(root.attrs[META_KEY])
    d0 = float(meta["downsample"])
    offset = tuple(meta.get("offset", (0, 0)))
    shapes = pyramid_shapes(root["0"].shape)
    chunk = root["0"].chunks
    for lev in range(1, len(shapes)):
        if stop_requested(stop):
            raise JobStopped()
        small = reduce2_dask(da.from_zarr(root[str(lev - 1)]), "mean").rechunk(chunk)
        dst = root.create_array(
            str(lev), shape=shapes[lev], chunks=chunk, dtype="uint8", fill_value=0
        )
        da.store(small, dst, lock=False)
    if stop_requested(stop):
        raise JobStopped()
    mask_group = root["labels/mask"]
    levels = majority_levels(da.from_zarr(mask_group["0"]), len(shapes) - 1)
    targets = [
        mask_group.create_array(
            str(lev), shape=shapes[lev], chunks=chunk, dtype="uint8", fill_value=0
        )
        for lev in range(1, len(shapes))
    ]
    if targets:
        # The fraction chain reads level 0 once for all levels.
        da.store([lv.rechunk(chunk) for lv in levels], targets, lock=False)
    downsamples = [d0 * 2**i for i in range(len(shapes))]
    root.attrs["multiscales"] = _multiscales("probability", downsamples, offset)
    mask_attrs = root["labels/mask"].attrs
    mask_attrs["multiscales"] = _multiscales("mask", downsamples, offset)
    mask_attrs["image-label"] = {
        "version": "0.4",
        "colors": [{"label-value": 1, "rgba": [255, 0, 255, 255]}],
        "source": {"image": "../../"},
    }
    return downsamples


def mark_complete(path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    """Set the completion marker (last write before the rename)."""
    import zarr

    root = zarr.open_group(str(path), mode="r+", zarr_format=2)
    meta = dict(root.attrs[META_KEY])
    meta.update(extra or {})
    meta["complete"] = True
    root.attrs[META_KEY] = meta


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a (partial) store; a second pass catches a chunk written meanwhile."""
    for _ in range(3):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            return


def commit_store(tmp: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool) -> None:
    """Rename a complete store into place; replace ``out`` only with ``overwrite``."""
    tmp, out = os.fspath(tmp), os.fspath(out)
    old = None
    if os.path.exists(out):
        if not overwrite:
            # Made while this run computed (preflight found the path free):
            # the same words as preflight's check_output.
            raise PredictionError(f"{out} already exists; pass --overwrite to replace it.")
        old = f"{out}.old-{os.getpid()}"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:  # put the previous result back
            os.replace(old, out)
        raise
    if old is not None:
        remove_tree(old)


@dataclass
class PredictionStore:
    """A finished prediction, opened lazily.

    Attributes
    ----------
    path
        The store's path.
    probability, mask
        Dask arrays of each level (uint8: probability 0-255, mask 0/1).
    downsamples
        Level-0 pixels per pixel of each level; ``downsample`` is level 0's.
    offset
        Level-0 (y, x) of the predicted region's top-left corner.
    metadata
        The ``napari_gigapixel`` attributes (slide path and shape, model, threshold...).
    """

    path: str
    probability: list[Any]
    mask: list[Any]
    downsamples: list[float]
    offset: tuple[float, float] = (0, 0)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def downsample(self) -> float:
        return self.downsamples[0]

    @property
    def region_shape(self) -> tuple[int, int]:
        """Level-0 (height, width) of the predicted region."""
        return tuple(int(v) for v in self.metadata["region_shape"])  # type: ignore[return-value]

    def mask_level0(self, chunk: int = 4096, *, refine: bool = True) -> Any:
        """The mask at full resolution as a lazy dask array, per chunk.

        ``refine`` (default): the probability's threshold line
        (:class:`.mask_refine.RefinedMask`, what ``evaluate`` counts);
        otherwise each output pixel's block (nearest). Nothing is
        materialised: each ``chunk`` square reads only the pixels under it.
        """
        if refine:
            from .mask_refine import refined_mask

            return _upsample(refined_mask(self), self.region_shape, chunk)
        return _upsample_nearest(self.mask[0], self.downsample, self.region_shape, chunk)

    def probability_level0(self, chunk: int = 4096) -> Any:
        """The probability (uint8) at full resolution, lazily (nearest, per chunk)."""
        return _upsample_nearest(self.probability[0], self.downsample, self.region_shape, chunk)


def _upsample_nearest(src: Any, d: float, shape: tuple[int, int], chunk: int) -> Any:
    from .masks import AnnotationMask

    return _upsample(AnnotationMask(src, downsample=d, name="prediction"), shape, chunk)


def _upsample(view: Any, shape: tuple[int, int], chunk: int) -> Any:
    """A mask view (``read_window``) at level 0 as a lazy dask array."""
    import dask.array as da

    def block(_x, block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        return view.read_window(y0, y1, x0, x1, 1)

    template = da.zeros(shape, dtype=np.uint8, chunks=chunk)
    return da.map_blocks(block, template, dtype=np.uint8)


def reading_prediction(path: str | os.PathLike, what: str = "the prediction's pixels"):
    """A context in which a decoder's error reading a prediction is one :class:`PredictionError`.

    Its chunks are decoded only when read (scoring, export, the viewer), so a
    damaged chunk or a missing level fails there (:func:`.errors.decoding`).
    """
    return decoding(
        os.fspath(path),
        what,
        "The prediction folder is damaged or incomplete: run 'napari-gigapixel predict' again.",
        PredictionError,
    )


def open_prediction(path: str | os.PathLike) -> PredictionStore:
    """Open a prediction written by :func:`napari_gigapixel.core.inference.predict`.

    Raises
    ------
    PredictionError
        When ``path`` is missing, not a zarr, not a napari-gigapixel prediction,
        or an unfinished (stopped, crashed) one.
    """
    import dask.array as da
    import zarr

    path = os.fspath(path)
    if not os.path.exists(path):
        raise PredictionError(f"{path}: no such prediction. Run 'napari-gigapixel predict' first.")
    attrs_file = Path(path) / ".zattrs"
    try:
        attrs = json.loads(attrs_file.read_text())
    except (OSError, ValueError):
        raise PredictionError(
            f"{path}: not a napari-gigapixel prediction (no readable OME-Zarr attributes). "
            "Give the folder that 'napari-gigapixel predict --out' wrote."
        ) from None
    meta = attrs.get(META_KEY)
    if not isinstance(meta, dict) or meta.get("kind") != "prediction":
        raise PredictionError(
            f"{path}: a zarr store, but not a napari-gigapixel prediction. Give the folder "
            "that 'napari-gigapixel predict --out' wrote."
        )
    if not meta.get("complete"):
        raise PredictionError(
            f"{path}: an unfinished prediction (the run was stopped or crashed). "
            "Run 'napari-gigapixel predict' again."
        )
    # A folder copied in part, or edited by hand: a missing group or level is
    # one line (KeyError 'labels/mask' otherwise).
    with reading_prediction(path, "the prediction's probability and mask arrays"):
        root = zarr.open_group(path, mode="r", zarr_format=2)
        mask_group = root["labels/mask"]
        prob_sets = attrs["multiscales"][0]["datasets"]
        mask_sets = mask_group.attrs["multiscales"][0]["datasets"]
        prob = [da.from_zarr(root[d["path"]]) for d in prob_sets]
        mask = [da.from_zarr(mask_group[d["path"]]) for d in mask_sets]
        # The mask always keeps every level; the probability may keep level 0 only.
        downs = [float(d["coordinateTransformations"][0]["scale"][0]) for d in mask_sets]
    return PredictionStore(
        path=path,
        probability=prob,
        mask=mask,
        downsamples=downs,
        # Level-0 pixels; fractional when the working resolution's downsample is.
        offset=tuple(  # type: ignore[arg-type]
            int(v) if float(v).is_integer() else float(v) for v in meta.get("offset", (0, 0))
        ),
        metadata=meta,
    )


def is_prediction_path(path: str | os.PathLike) -> bool:
    """Cheap check: a folder whose ``.zattrs`` names a napari-gigapixel prediction."""
    try:
        attrs = json.loads((Path(path) / ".zattrs").read_text())
    except (OSError, ValueError):
        return False
    meta = attrs.get(META_KEY)
    return isinstance(meta, dict) and meta.get("kind") == "prediction"
