"""Training inputs: the once-per-run uint8 caches of slide pixels and labels.

Level-0 pixels are decoded once per run (JPEG tiles are slow to decode) into
a uint8 cache, in memory or, when the memory budget says so, in a temporary
file read back with positioned reads (``os.preadv`` into a fresh buffer): a
memory map that the step touches would count every page it read in the
process's RSS. Labels are cached the same way at the model's output stride,
read from the annotation-level mask by nearest neighbour, band by band, so
no full-resolution mask ever exists.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import GigapixelError
from .masks import AnnotationMask, MaskError, infer_downsample


class SlideInputError(GigapixelError):
    """A training image that cannot be used (not RGB, ROI outside it, unreadable)."""


class ArrayCache:
    """A 2-D or 3-D uint8 array in memory or in a file, read by windows.

    ``read(y0, y1, x0, x1)`` returns a fresh array; rows and columns past the
    array's extent read 0 (the padding of the image to a multiple of ``S``).
    """

    def __init__(self, shape: tuple[int, ...], *, in_memory: bool, folder: str | None = None):
        self.shape = tuple(int(s) for s in shape)
        self.channels = self.shape[2] if len(self.shape) == 3 else 1
        self.in_memory = in_memory
        self.path: str | None = None
        self._fd: int | None = None
        if in_memory:
            self._array = np.zeros(self.shape, np.uint8)
        else:
            fd, self.path = tempfile.mkstemp(prefix="napari-gigapixel-cache-", dir=folder)
            os.ftruncate(fd, int(np.prod(self.shape)))
            self._fd = fd
            self._array = None

    @classmethod
    def wrap(cls, array: np.ndarray) -> ArrayCache:
        """Use an in-memory uint8 array as is (no copy)."""
        self = cls.__new__(cls)
        self.shape = tuple(array.shape)
        self.channels = self.shape[2] if len(self.shape) == 3 else 1
        self.in_memory = True
        self.path = None
        self._fd = None
        self._array = array
        return self

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def write_rows(self, y0: int, block: np.ndarray) -> None:
        """Write full-width rows starting at row ``y0``."""
        block = np.ascontiguousarray(block, np.uint8)
        if self._array is not None:
            self._array[y0 : y0 + block.shape[0]] = block
            return
        row_bytes = self.shape[1] * self.channels
        os.pwrite(self._fd, block.tobytes(), y0 * row_bytes)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Window ``[y0, y1) x [x0, x1)``, zero past the extent."""
        h, w = self.shape[0], self.shape[1]
        out_shape = (y1 - y0, x1 - x0) + self.shape[2:]
        cy1, cx1 = min(y1, h), min(x1, w)
        if self._array is not None:
            if y1 <= h and x1 <= w:
                return np.array(self._array[y0:y1, x0:x1])
            out = np.zeros(out_shape, np.uint8)
            out[: cy1 - y0, : cx1 - x0] = self._array[y0:cy1, x0:cx1]
            return out
        out = np.zeros(out_shape, np.uint8)
        c = self.channels
        for i, y in enumerate(range(y0, cy1)):
            view = memoryview(out[i].reshape(-1))[: (cx1 - x0) * c]
            os.preadv(self._fd, [view], (y * w + x0) * c)
        return out

    def close(self) -> None:
        """Delete the backing file (if any)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.path and os.path.exists(self.path):
            os.unlink(self.path)
        self._array = None


@dataclass
class ImageData:
    """One training image (a slide or its ROI) with its labels, ready for tiling."""

    name: str
    image: ArrayCache
    labels: ArrayCache  # raw labels at output stride
    kind: str
    shape: tuple[int, int]  # (H, W) of the ROI in level-0 pixels
    offset: tuple[int, int]  # ROI origin in the slide
    n_labelled: float
    n_positive: float

    def labels_yw(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Target and weight (uint8 0/1) of output pixels ``[y0, y1) x [x0, x1)``."""
        lab = self.labels.read(y0, y1, x0, x1)
        if self.kind == "dense":
            return (lab > 0).view(np.uint8), np.ones_like(lab)
        return (lab == 2).view(np.uint8), (lab > 0).view(np.uint8)

    def close(self) -> None:
        self.image.close()
        self.labels.close()


def open_image_source(src: Any) -> tuple[Any, str, Callable[[], None]]:
    """A (H, W, 3) uint8 array-like (numpy or dask), a name for messages, and its closer.

    Call the closer once the pixels are decoded: it releases the slide file.
    """
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.exists(path):
            raise SlideInputError(f"{path}: no such slide file. Check the path.")
        from .slide import open_slide

        slide = open_slide(path)
        return slide.levels[0], path, slide.close
    arr = src
    name = "<array>"
    if getattr(arr, "ndim", 0) != 3 or arr.shape[2] != 3:
        raise SlideInputError(
            f"{name}: a training image must be RGB (H, W, 3); "
            f"got shape {getattr(arr, 'shape', '?')}."
        )
    if np.dtype(arr.dtype) != np.uint8:
        raise SlideInputError(f"{name}: a training image must be uint8, got {arr.dtype}.")
    return arr, name, lambda: None


def open_mask_source(src: Any, slide_shape: tuple[int, int], kind: str | None) -> AnnotationMask:
    """An :class:`AnnotationMask` for a slide, from a path, an array or a mask.

    ``kind`` None: a file's own kind (dense when it records none), dense for arrays.
    """
    if isinstance(src, AnnotationMask):
        mask = src
        name = mask.name
    elif isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.exists(path):
            raise MaskError(f"{path}: no such mask file. Check the path.")
        from .mask_io import load_mask

        return load_mask(path, slide_shape, kind=kind)
    else:
        arr = np.asarray(src)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        ds = infer_downsample(arr.shape[:2], slide_shape)
        mask = AnnotationMask(arr, ds, kind or "dense", "<array>")
        return mask
    lh, lw = mask.level0_shape()
    if (
        abs(lh - slide_shape[0]) > mask.downsample + 1
        or abs(lw - slide_shape[1]) > mask.downsample + 1
    ):
        raise MaskError(
            f"{name}: this mask covers {lh} x {lw} level-0 pixels but the slide is "
            f"{slide_shape[0]} x {slide_shape[1]}; use a mask made for this slide."
        )
    return mask


def check_roi(roi: Any, slide_shape: tuple[int, int], name: str) -> tuple[int, int, int, int]:
    """Validate an ROI ``(y0, x0, y1, x1)`` (None: the whole slide)."""
    h, w = slide_shape
    if roi is None:
        return (0, 0, h, w)
    try:
        y0, x0, y1, x1 = (int(v) for v in roi)
    except (TypeError, ValueError) as exc:
        raise SlideInputError(
            f"{name}: an ROI is four integers y0,x0,y1,x1; got {roi!r}."
        ) from exc
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
        raise SlideInputError(
            f"{name}: ROI {y0},{x0},{y1},{x1} is not inside the {h} x {w} slide "
            "(y0,x0,y1,x1 with 0 <= y0 < y1 <= height, 0 <= x0 < x1 <= width)."
        )
    return (y0, x0, y1, x1)


def build_image_data(
    image_src: Any,
    mask_src: Any,
    *,
    roi: Any,
    kind: str | None,
    output_stride: int,
    cache_in_memory: Callable[[int], bool],
    cache_dir: str | None = None,
    band_rows: int = 2048,
    on_band: Callable[[int, int], None] | None = None,
    balance: np.ndarray | None = None,
) -> ImageData:
    """Decode one image (its ROI) and its labels into caches, band by band.

    ``balance`` is a :func:`.input_norm.balance_table` applied to the pixels
    as they are cached (per-slide white balance).

    Raises
    ------
    SlideInputError, MaskError
        Non-RGB slide, ROI outside the slide, mask that does not overlay the
        slide, or a mask with no labelled pixel (nothing to learn from).
    """
    array, name, close = open_image_source(image_src)
    try:
        return _build_image_data(
            array,
            name,
            mask_src,
            roi,
            kind,
            output_stride,
            cache_in_memory,
            cache_dir,
            band_rows,
            on_band,
            balance,
        )
    finally:
        close()  # the pixels are in the caches now: release the slide file


def _build_image_data(
    array: Any,
    name: str,
    mask_src: Any,
    roi: Any,
    kind: str | None,
    output_stride: int,
    cache_in_memory: Callable[[int], bool],
    cache_dir: str | None,
    band_rows: int,
    on_band: Callable[[int, int], None] | None,
    balance: np.ndarray | None = None,
) -> ImageData:
    if len(array.shape) != 3 or array.shape[2] != 3:
        raise SlideInputError(f"{name}: a training image must be RGB; got shape {array.shape}.")
    slide_shape = (int(array.shape[0]), int(array.shape[1]))
    mask = open_mask_source(mask_src, slide_shape, kind)
    y0, x0, y1, x1 = check_roi(roi, slide_shape, name)
    h, w = y1 - y0, x1 - x0
    os_ = output_stride
    ho, wo = -(-h // os_), -(-w // os_)
    if isinstance(array, np.ndarray):
        roi_px = array[y0:y1, x0:x1]
        if balance is not None:
            from .input_norm import apply_balance

            roi_px = apply_balance(roi_px, balance)
        image = ArrayCache.wrap(roi_px)
    else:
        image = ArrayCache((h, w, 3), in_memory=cache_in_memory(h * w * 3), folder=cache_dir)
    labels = ArrayCache((ho, wo), in_memory=cache_in_memory(ho * wo), folder=cache_dir)
    n_lab = 0.0
    n_pos = 0.0
    try:
        band = max(os_, band_rows // os_ * os_)
        for by in range(0, h, band):
            by1 = min(by + band, h)
            if not isinstance(array, np.ndarray):
                block = np.asarray(array[y0 + by : y0 + by1, x0:x1])
                if balance is not None:
                    from .input_norm import apply_balance

                    block = apply_balance(block, balance)
                image.write_rows(by, block)
            lab = mask.read_window(y0 + by, y0 + by1, x0, x0 + w, stride=os_)
            labels.write_rows(by // os_, lab)
            if mask.kind == "dense":
                n_lab += lab.size
                n_pos += float(np.count_nonzero(lab))
            else:
                n_lab += float(np.count_nonzero(lab))
                n_pos += float(np.count_nonzero(lab == 2))
            if on_band is not None:
                on_band(by1, h)
    except BaseException:
        image.close()
        labels.close()
        raise
    mname = mask.name
    if n_lab == 0 or (mask.kind == "dense" and n_pos == 0):
        image.close()
        labels.close()
        what = "no labelled pixel" if n_lab == 0 else "no tissue (all zero)"
        raise MaskError(
            f"{mname}: the mask has {what} over the training region of {name}; "
            "draw tissue (dense masks: nonzero = tissue; scribbles: 1 background, 2 tissue)."
        )
    return ImageData(
        name=name,
        image=image,
        labels=labels,
        kind=mask.kind,
        shape=(h, w),
        offset=(y0, x0),
        n_labelled=n_lab,
        n_positive=n_pos,
    )


def input_statistics(
    datas: list[ImageData], band_rows: int = 1024
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of every pixel of the training images.

    One pass over the decoded caches, band by band, with float64 sums (the
    same figures whatever the band size, up to rounding). A standard
    deviation below 1 grey level is raised to 1 (a flat image).
    """
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for d in datas:
        h, w = d.shape
        for y0 in range(0, h, band_rows):
            block = d.image.read(y0, min(h, y0 + band_rows), 0, w).reshape(-1, 3)
            f = block.astype(np.float64)
            total += f.sum(axis=0)
            squares += np.einsum("ij,ij->j", f, f)
            count += block.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return tuple(float(v) for v in mean), tuple(float(max(v, 1.0)) for v in std)
