"""Whole-slide augmentations that keep the streamed step exact.

A flip, a 90-degree turn or a colour map (:mod:`.stain`) applied to the
*whole* slide (not per tile) is just another slide: its tiles are windows of
the augmented slide, read here from the original's caches and transformed by
:func:`._augment_kernel.transform`, so the tiled step stays exactly the
whole-image step on the augmented slide.

Of the eight turns and flips, the four with a transpose in them are split
into a mirror of the pixels and a transpose of the model's kernels
(:meth:`._backend.TileStep.transposed`): the step on the mirrored slide with
transposed kernels is exactly the step on the turned slide, and a mirror
costs XLA a copy where a transpose cost 4-5x one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ._augment_kernel import mirror_axes
from ._train_data import codes_yw
from .stain import Augmentation, ColourJitter, draw_augmentation


def augment_params(
    seed: int, step: int, enabled: object, keep_white: float | None = None
) -> Augmentation:
    """The whole-slide augmentation of one step (see :func:`.stain.draw_augmentation`)."""
    return draw_augmentation(seed, step, enabled, keep_white)


#: ``fliplr(rot90(a, k))`` for (k, flip) is ``transpose(m(a))`` (``t``) or
#: ``m(a)``, with ``m`` the mirror ``fliplr(rot90(a, k'))``, k' in {0, 2}:
#: (k, flip) -> (t, k', flip'). Checked against numpy in the tests.
SPLIT = {
    (0, False): (False, 0, False),
    (0, True): (False, 0, True),
    (2, False): (False, 2, False),
    (2, True): (False, 2, True),
    (1, False): (True, 0, True),
    (1, True): (True, 2, False),
    (3, False): (True, 2, True),
    (3, True): (True, 0, False),
}


def _as_augmentation(aug: Augmentation | tuple) -> Augmentation:
    if isinstance(aug, Augmentation):
        return aug
    # (k, flip, contrast, brightness in grey levels): the original tuple form.
    k, flip, contrast, bright = aug
    colour = None
    if contrast != 1.0 or bright != 0.0:
        colour = ColourJitter.from_jitter(np.ones(3), np.zeros(3), contrast, bright / 255.0)
    return Augmentation(int(k), bool(flip), colour)


class SlideView:
    """An image and its labels seen through a whole-slide flip/turn and colour jitter.

    Windows of the augmented slide are read from the original's caches and
    transformed; the transform is applied to the *whole* slide, so the tiled
    step stays exactly the whole-image step on the augmented slide. With
    ``transposed`` set, the windows and labels are those of the turned slide's
    transpose (the slide mirrored, :data:`SPLIT`), and the step runs on them
    with transposed kernels (:meth:`._backend.TileStep.transposed`).
    """

    #: Bytes of transformed windows kept for the step's later passes (Dice's
    #: forward pass and the gradient pass read the same windows): the first
    #: windows that fit are kept, none is evicted, so a one-tile image (every
    #: slide up to ~40 Mpx) is transformed once per step instead of twice.
    MEMO_BYTES = 128 << 20

    def __init__(self, data, os_: int, aug: Augmentation | tuple) -> None:
        self.data = data
        self._memo: dict[tuple[int, int, int, int], Any] = {}
        self._memo_bytes = 0
        self.os = os_
        self.aug = _as_augmentation(aug)
        h, w = data.shape
        if self.aug.geometric and os_ > 1 and (h % os_ or w % os_):
            # A flip would move the partial last block of output pixels to the
            # top/left, where no output grid has it: such images are not
            # flipped or turned (the colour map, the ink and the pen still apply).
            self.aug = dataclasses.replace(self.aug, k=0, flip=False)
        #: The pixels' own transform: the mirror, the colour map, the ink, the pen.
        self.transposed, k, flip = SPLIT[(self.aug.k % 4, bool(self.aug.flip))]
        self._pixels = dataclasses.replace(self.aug, k=k, flip=flip)
        self.k, self.flip = k, flip
        self.shape = (h, w)

    @property
    def geometric(self) -> bool:
        """Whether the slide is turned or flipped (its outputs are not the slide's)."""
        return bool(self.transposed or self.k or self.flip)

    def _read(self, cache, y0, y1, x0, x1, h, w):
        cy1, cx1 = min(y1, h), min(x1, w)
        out_shape = (y1 - y0, x1 - x0) + cache.shape[2:]
        if not (self.k or self.flip):
            return cache.read(y0, y1, x0, x1)
        block = cache.read(*self._inverse(y0, cy1, x0, cx1, h, w))
        rows, cols = self._mirrors()
        block = block[::-1] if rows else block
        block = block[:, ::-1] if cols else block
        out = np.zeros(out_shape, np.uint8)
        out[: block.shape[0], : block.shape[1]] = block
        return out

    def _mirrors(self) -> tuple[bool, bool]:
        """Whether the rows, the columns are reversed."""
        axes = mirror_axes(self.k, self.flip)
        return 0 in axes, 1 in axes

    def _inverse(self, y0, y1, x0, x1, h, w):
        """The original-frame rectangle that a mirrored-frame rectangle comes from."""
        rows, cols = self._mirrors()
        if rows:
            y0, y1 = h - y1, h - y0
        if cols:
            x0, x1 = w - x1, w - x0
        return y0, y1, x0, x1

    def window(self, win: tuple[int, int, int, int]) -> Any:
        """Pixels of a window of the augmented slide (zero past its extent).

        Without augmentation a numpy array; with it, what
        :func:`._augment_kernel.transform` returns, a uint8 tensor or (the ink
        and pen alone) a numpy array: the tile step takes either.
        """
        aug = self._pixels
        pixelwise = (aug.colour, aug.ink, aug.pen)
        if not aug.geometric and all(p is None for p in pixelwise):
            return self.data.image.read(*win)
        from ._augment_kernel import transform

        h, w = self.data.shape
        y0, y1, x0, x1 = win
        cy1, cx1 = min(y1, h), min(x1, w)
        if cy1 <= y0 or cx1 <= x0:
            return np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
        # The slide's part of the window, read in the original frame, mirrored
        # and coloured, then padded with zeros to the window.
        key = (int(y0), int(y1), int(x0), int(x1))
        if key in self._memo:
            return self._memo[key]
        rect = self._inverse(y0, cy1, x0, cx1, h, w)
        block = self.data.image.read(*rect)  # a fresh array: the ink may write into it
        background = blocks = None
        if aug.ink is not None or aug.pen is not None:
            background = self._background(rect)
        if aug.ink is not None:
            blocks = self._ink_blocks(rect, block, background)
        out = transform(
            block,
            aug,
            (y1 - y0, x1 - x0),
            background,
            self.os,
            blocks,
            inplace=True,
            place=((rect[0], rect[2]), (h, w)),
        )
        size = (y1 - y0) * (x1 - x0) * 3
        if self._memo_bytes + size <= self.MEMO_BYTES:
            self._memo[key] = out
            self._memo_bytes += size
        return out

    def _ink_blocks(self, rect, block: np.ndarray, background: np.ndarray) -> np.ndarray:
        """The window's blocks that may take the ink (:func:`._augment_kernel.ink_blocks`).

        They depend on the pixels, the labels and the ink's glass white and
        threshold only, never on the step's draw: kept on the image data
        (``ImageData.ink_index``) for the run, so later steps recolour those
        blocks without looking at the rest of the window again.
        """
        from ._augment_kernel import ink_blocks, ink_cut

        index = getattr(self.data, "ink_index", None)
        key = (tuple(int(v) for v in rect), self.os, ink_cut(self._pixels.ink))
        if index is not None and key in index:
            return index[key]
        blocks = ink_blocks(block, background, self.os, self._pixels.ink)
        if index is not None:
            index[key] = blocks
        return blocks

    def _background(self, rect: tuple[int, int, int, int]) -> np.ndarray:
        """1 where the labels say background, at output stride, for an original-frame
        rectangle whose top-left corner is on the output grid (tile windows are)."""
        oy0, oy1, ox0, ox1 = rect
        if oy0 % self.os or ox0 % self.os:
            raise ValueError(f"window {rect} is off the output grid of stride {self.os}")
        lab = self.data.labels.read(
            oy0 // self.os, -(-oy1 // self.os), ox0 // self.os, -(-ox1 // self.os)
        )
        y, wgt = codes_yw(lab, self.data.kind, self.data.border_weight)
        return ((wgt > 0) & (y == 0)).view(np.uint8)

    def labels(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Target and weight (uint8) of output pixels ``[y0, y1) x [x0, x1)`` of the
        augmented slide; background under a drawn pen stroke weighs the image's
        ``pen_weight`` (``TrainConfig.pen_weight``)."""
        lh, lw = self.data.labels.shape
        if not (self.k or self.flip):
            y, w = self.data.labels_yw(y0, y1, x0, x1)
        else:
            lab = self._read(self.data.labels, y0, y1, x0, x1, lh, lw)
            y, w = codes_yw(lab, self.data.kind, self.data.border_weight)
        weight = int(self.data.pen_weight)
        if self._pixels.pen is not None and weight > 1:
            w = self._pen_weights(y, w, (y0, min(y1, lh), x0, min(x1, lw)), (lh, lw), weight)
        return y, w

    def _pen_weights(self, y, w, rect, label_shape, weight: int) -> np.ndarray:
        """``w`` with the background labels under the step's pen strokes weighted.

        The strokes are drawn in the original frame (:meth:`window`), so their
        cover is found there and mirrored as the labels are.
        """
        from ._pen import pen_cover

        y0, y1, x0, x1 = rect
        if y1 <= y0 or x1 <= x0:
            return w
        lh, lw = label_shape
        oy0, oy1, ox0, ox1 = self._inverse(y0, y1, x0, x1, lh, lw)
        cover = pen_cover(self._pixels.pen, self.data.shape, self.os, (oy0, oy1, ox0, ox1))
        rows, cols = self._mirrors()
        cover = cover[::-1] if rows else cover
        cover = cover[:, ::-1] if cols else cover
        on = np.zeros(w.shape, bool)
        on[: y1 - y0, : x1 - x0] = cover
        on &= (y == 0) & (w > 0)
        if not on.any():
            return w
        return np.where(on, np.maximum(w, np.uint8(weight)), w).astype(np.uint8)
