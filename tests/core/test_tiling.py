"""The aligned tile grid: cores partition the padded image, windows are aligned."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gigapixel.core.errors import GigapixelError
from napari_gigapixel.core.tiling import padded_shape, tile_grid


@pytest.mark.parametrize("core", [32, 96, 160, 4096])
def test_cores_partition_padded_image_and_windows_are_aligned(core):
    shape, halo, s = (517, 1301), 96, 32
    hp, wp = padded_shape(shape, s)
    assert (hp, wp) == (544, 1312)
    tiles = tile_grid(shape, core, halo, s)
    cover = np.zeros((hp, wp), np.int32)
    for t in tiles:
        y0, y1, x0, x1 = t.core
        cover[y0:y1, x0:x1] += 1
        wy0, wy1, wx0, wx1 = t.window
        for v in (*t.core, *t.window):
            assert v % s == 0
        # halo of real neighbours, clipped at the padded border
        assert wy0 == max(0, y0 - halo) and wy1 == min(hp, y1 + halo)
        assert wx0 == max(0, x0 - halo) and wx1 == min(wp, x1 + halo)
    assert (cover == 1).all()
    if core >= wp:
        assert len(tiles) == 1 and tiles[0].window == (0, hp, 0, wp)


def test_core_is_rounded_to_the_stride_and_valid_core_clips():
    tiles = tile_grid((100, 70), 50, 32, 32)
    assert {t.core[1] - t.core[0] for t in tiles} == {32}
    last = tiles[-1]
    assert last.core == (96, 128, 64, 96)
    assert last.valid_core((100, 70)) == (96, 100, 64, 70)


def test_bad_halo_or_shape_is_refused():
    with pytest.raises(GigapixelError, match="multiple of the stride"):
        tile_grid((100, 100), 64, 20, 32)
    with pytest.raises(GigapixelError, match="empty image"):
        tile_grid((0, 100), 64, 32, 32)
