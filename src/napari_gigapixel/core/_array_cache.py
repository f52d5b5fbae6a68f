"""Decoded pixels and labels of a training image: in memory or in a temporary file.

The trainer decodes each slide once; :class:`ArrayCache` keeps the result in
memory while it fits a share of the memory budget, else in a file read with
``preadv`` (bands of rows, never the whole array).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np


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
