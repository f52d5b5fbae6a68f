"""Whole-slide augmentations that keep the streamed step exact.

A flip, a 90-degree turn or a colour map (:mod:`.stain`) applied to the
*whole* slide (not per tile) is just another slide: its tiles are windows of
the augmented slide, read here from the original's caches and transformed by
:func:`._augment_kernel.transform`, so the tiled step stays exactly the
whole-image step on the augmented slide.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ._train_data import codes_yw
from .stain import Augmentation, ColourJitter, draw_augmentation


def augment_params(
    seed: int, step: int, enabled: object, keep_white: float | None = None
) -> Augmentation:
    """The whole-slide augmentation of one step (see :func:`.stain.draw_augmentation`)."""
    return draw_augmentation(seed, step, enabled, keep_white)


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
    step stays exactly the whole-image step on the augmented slide.
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
        self.k, self.flip = self.aug.k % 4, self.aug.flip
        h, w = data.shape
        if (self.flip or self.k) and os_ > 1 and (h % os_ or w % os_):
            # A flip would move the partial last block of output pixels to the
            # top/left, where no output grid has it: such images are not
            # flipped or turned (the colour map, the ink and the pen still apply).
            self.k, self.flip = 0, False
            self.aug = dataclasses.replace(self.aug, k=0, flip=False)
        self.shape = (w, h) if self.k % 2 else (h, w)

    def _aug_shape(self, h: int, w: int) -> tuple[int, int]:
        return (w, h) if self.k % 2 else (h, w)

    def _read(self, cache, y0, y1, x0, x1, h, w):
        ah, aw = self._aug_shape(h, w)
        cy1, cx1 = min(y1, ah), min(x1, aw)
        out_shape = (y1 - y0, x1 - x0) + cache.shape[2:]
        if not (self.k or self.flip):
            return cache.read(y0, y1, x0, x1)
        # Original-frame dimensions seen by _map: for odd k, the augmented
        # frame (ah, aw) came from an original (aw, ah).
        oy0, oy1, ox0, ox1 = self._inverse(y0, cy1, x0, cx1, h, w)
        block = cache.read(oy0, oy1, ox0, ox1)
        block = np.rot90(block, self.k) if self.k else block
        block = block[:, ::-1] if self.flip else block
        out = np.zeros(out_shape, np.uint8)
        out[: block.shape[0], : block.shape[1]] = block
        return out

    def _inverse(self, y0, y1, x0, x1, h, w):
        # Augmented = flip_lr(rot90(orig, k)). Undo the flip, then the turns.
        ah, aw = self._aug_shape(h, w)
        if self.flip:
            x0, x1 = aw - x1, aw - x0
        cur_h, cur_w = ah, aw
        for _ in range(self.k % 4):
            # rot90 (counter-clockwise): rotated[i, j] = orig[j, W - 1 - i] with
            # rotated shape (W, H); so rows [y0, y1) of rotated -> columns
            # [W - y1, W - y0) of orig, and columns of rotated -> rows of orig.
            orig_h, orig_w = cur_w, cur_h
            y0, y1, x0, x1 = x0, x1, orig_w - y1, orig_w - y0
            cur_h, cur_w = orig_h, orig_w
        return y0, y1, x0, x1

    def window(self, win: tuple[int, int, int, int]) -> Any:
        """Pixels of a window of the augmented slide (zero past its extent).

        Without augmentation a numpy array; with it, what
        :func:`._augment_kernel.transform` returns, a uint8 tensor or (the ink
        and pen alone) a numpy array: the tile step takes either.
        """
        aug = self.aug
        pixelwise = (aug.colour, aug.ink, aug.pen)
        if not aug.geometric and all(p is None for p in pixelwise):
            return self.data.image.read(*win)
        from ._augment_kernel import transform

        h, w = self.data.shape
        ah, aw = self.shape
        y0, y1, x0, x1 = win
        cy1, cx1 = min(y1, ah), min(x1, aw)
        if cy1 <= y0 or cx1 <= x0:
            return np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
        # The slide's part of the window, read in the original frame, turned,
        # flipped and coloured, then padded with zeros to the window.
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
        key = (tuple(int(v) for v in rect), self.os, ink_cut(self.aug.ink))
        if index is not None and key in index:
            return index[key]
        blocks = ink_blocks(block, background, self.os, self.aug.ink)
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
        y, wgt = codes_yw(lab, self.data.kind)
        return ((wgt > 0) & (y == 0)).view(np.uint8)

    def labels(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        lh, lw = self.data.labels.shape
        if not (self.k or self.flip):
            return self.data.labels_yw(y0, y1, x0, x1)
        lab = self._read(self.data.labels, y0, y1, x0, x1, lh, lw)
        return codes_yw(lab, self.data.kind)
