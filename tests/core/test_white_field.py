"""Local white balance: shaded glass evened out, exact under any chunking, bounded."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_gigapixel.core.input_norm import (
    WHITE,
    apply_balance,
    balance_pixels,
    balance_table,
    slide_balance,
    white_point,
)
from napari_gigapixel.core.white_field import CELL_UM, FIELD_RANGE, GAIN_BLOCK, white_field


def _shaded(shape=(512, 2048), seed=0):
    """Glass 20 grey levels brighter at the right end than at the left (a lamp's
    shading), tissue blobs with texture in between; returns (image, tissue)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    glass = 228.0 + 20.0 * xx / shape[1]
    tissue = (np.sin(yy / 41.0) * np.cos(xx / 67.0)) > 0.45
    base = np.where(tissue[..., None], [0.80, 0.62, 0.82], [1.0, 0.99, 0.97])
    img = base * glass[..., None] + rng.normal(0, 3, shape + (3,))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), tissue


def _column_glass(img, tissue, step=128):
    """Median grey level of the glass in each band of ``step`` columns."""
    g = img.mean(axis=-1)
    return np.array(
        [
            np.median(g[:, x : x + step][~tissue[:, x : x + step]])
            for x in range(0, g.shape[1], step)
        ]
    )


def test_a_local_balance_evens_out_shaded_glass_that_one_gain_leaves():
    img, tissue = _shaded()
    before = _column_glass(img, tissue)
    assert np.ptp(before) > 15
    per_slide = _column_glass(apply_balance(img, balance_table(white_point(img))), tissue)
    assert np.ptp(per_slide) > 15  # one gain per slide keeps the shading
    field = white_field(img)
    local = _column_glass(field.apply(img, 0, 0), tissue)
    # The glass's bright tail (95th percentile) lands on WHITE, its median a noise width below.
    assert np.ptp(local) <= 3 and np.abs(local - WHITE).max() <= 8
    # Tissue keeps its contrast against the glass beside it, at both ends.
    out = field.apply(img, 0, 0).mean(axis=-1)
    for x0 in (0, img.shape[1] - 256):
        band, t = out[:, x0 : x0 + 256], tissue[:, x0 : x0 + 256]
        assert np.median(band[~t]) - np.median(band[t]) > 30


def test_every_chunking_and_offset_gives_the_same_pixels():
    img, _ = _shaded((700, 1500), seed=1)
    field = white_field(img)
    whole = field.apply(img, 0, 0)
    rng = np.random.default_rng(2)
    for _ in range(3):
        ys = np.unique(np.r_[0, rng.integers(1, 700, 3), 700])
        xs = np.unique(np.r_[0, rng.integers(1, 1500, 4), 1500])
        tiled = np.zeros_like(whole)
        for y0, y1 in zip(ys[:-1], ys[1:]):
            for x0, x1 in zip(xs[:-1], xs[1:]):
                tiled[y0:y1, x0:x1] = field.apply(img[y0:y1, x0:x1], int(y0), int(x0))
        np.testing.assert_array_equal(tiled, whole)
    # At a coarser working resolution the place is counted in its own pixels.
    half = img[::2, ::2]
    a = field.apply(half, 0, 0, downsample=2.0)
    b = field.apply(half[100:, 37:], 100, 37, downsample=2.0)
    np.testing.assert_array_equal(a[100:, 37:], b)
    assert GAIN_BLOCK % 2 == 0


def test_the_field_stays_near_the_slides_white_and_spares_dark_borders():
    img, _ = _shaded((512, 1024), seed=3)
    img[:, :200] = 12  # a dark scanner border: no glass there
    img[200:, 500:] = [150, 100, 160]  # a large stretch of tissue only
    field = white_field(img)
    white = np.array(field.white)
    assert field.white == white_point(img)
    lo, hi = FIELD_RANGE
    assert (field.grid >= lo * white - 1e-9).all() and (field.grid <= hi * white + 1e-9).all()
    out = field.apply(img, 0, 0)
    assert out[:, :150].max() < 20  # the border is not scaled to white
    assert np.abs(out[300:, 700:].astype(int) - img[300:, 700:]).max() <= 40


def test_cells_are_64_um_where_the_pixel_size_is_known():
    img, _ = _shaded((512, 2048))
    slide = SimpleNamespace(levels=[img], mpp=(0.25, 0.25))
    assert white_field(slide).cell == pytest.approx(CELL_UM / 0.25)
    assert white_field(img).cell == 128.0  # no pixel size: 128 px
    # One form for every caller: a field, its white point, the message.
    balance, white, note = slide_balance(img, True)
    assert white == white_point(img) and "per 128 px cell" in note
    np.testing.assert_array_equal(balance_pixels(img, balance), balance.apply(img, 0, 0))
    table, _, note = slide_balance(img, False)
    np.testing.assert_array_equal(balance_pixels(img, table), apply_balance(img, table))
    assert note.startswith("glass colour") and "cell" not in note


def test_fresh_runs_balance_per_place_and_resumed_ones_keep_their_checkpoints_way():
    from napari_gigapixel.core.training import TrainConfig, local_balance
    from napari_gigapixel.core.unet import ModelConfig

    old = ModelConfig.from_dict({"white_balance": True})  # a file from before white_field
    assert old.white_field is False
    cfg = TrainConfig(images=["a.tif"], masks=["m.tif"])
    assert local_balance(cfg, ModelConfig()) is True
    resumed = TrainConfig(images=["a.tif"], masks=["m.tif"], resume="m.keras")
    assert local_balance(resumed, old) is False
    assert local_balance(resumed, ModelConfig(white_balance=True, white_field=True)) is True


def test_a_large_section_is_not_raised_towards_white():
    """Inside a section wider than the 3 x 3 cells, tissue is not taken for glass:
    its gain stays within FLOOR_SHARE of the glass's around it."""
    from napari_gigapixel.core.white_field import FLOOR_SHARE

    rng = np.random.default_rng(4)
    img = np.clip(rng.normal(238, 2, (1600, 1600, 3)), 0, 255)
    img[200:1400, 200:1400] = np.clip(rng.normal([205, 170, 200], 8, (1200, 1200, 3)), 0, 255)
    img = img.astype(np.uint8)
    field = white_field(img)
    gains = field.gains(0, 1600, 0, 1600).astype(np.float64)
    inner, outer = gains[40:60, 40:60].mean(), gains[:8, :8].mean()
    assert inner / outer <= 1.0 / FLOOR_SHARE + 0.01
    out = field.apply(img, 0, 0).astype(np.float64)
    assert out[600:1000, 600:1000].mean() < 0.92 * out[:150, :150].mean()
