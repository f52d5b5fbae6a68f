"""One pyramid rule for every pyramid the package writes (issue 10, item 6)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_gigapixel.core import slide_base
from napari_gigapixel.core._tiff_pyramid import write_pyramid
from napari_gigapixel.core.mask_write import write_mask
from napari_gigapixel.core.prediction_store import build_pyramids, create_store
from napari_gigapixel.core.pyramid import build_pyramid
from napari_gigapixel.core.pyramid_levels import (
    level_shapes,
    level_transform,
    reduce2,
    reduce2_dask,
)
from napari_gigapixel.core.slide import open_slide

SHAPE = (1501, 2101)  # odd on both axes: every level has a partial border block


def _reference(a: np.ndarray, how: str) -> np.ndarray:
    """2 x 2 reduction over the pixels that exist (NaN padding), mean rounded half up."""
    h, w = a.shape[:2]
    f = np.full((h + h % 2, w + w % 2, *a.shape[2:]), np.nan)
    f[:h, :w] = a
    b = f.reshape(f.shape[0] // 2, 2, f.shape[1] // 2, 2, *a.shape[2:])
    if how == "max":
        return np.nanmax(b, axis=(1, 3)).astype(a.dtype)
    return np.floor(np.nanmean(b, axis=(1, 3)) + 0.5).astype(a.dtype)


def _rgb(shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (*shape, 3), dtype=np.uint8)


def _labels(shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.random(shape) < 0.02).astype(np.uint8) * rng.integers(1, 3, shape, np.uint8)


def _levels_down(a: np.ndarray, how: str, n: int) -> list[np.ndarray]:
    out = [a]
    for _ in range(n - 1):
        out.append(_reference(out[-1], how))
    return out


def _majority_down(mask01: np.ndarray, n: int) -> list[np.ndarray]:
    """Area majority: the level-0 fraction of each block (mean over existing pixels, no
    rounding on the way down) at least one half."""
    out, frac = [mask01], mask01.astype(np.float64)
    for _ in range(n - 1):
        h, w = frac.shape
        f = np.full((h + h % 2, w + w % 2), np.nan)
        f[:h, :w] = frac
        frac = np.nanmean(f.reshape(f.shape[0] // 2, 2, f.shape[1] // 2, 2), axis=(1, 3))
        out.append((frac >= 0.5).astype(np.uint8))
    return out


def test_level_shapes_ceil_half_until_the_longer_side_fits():
    assert level_shapes((5, 9), 2) == [(5, 9), (3, 5), (2, 3), (1, 2)]
    assert level_shapes((8, 8), 8) == [(8, 8)]
    assert level_shapes(SHAPE, 600) == [(1501, 2101), (751, 1051), (376, 526)]


@pytest.mark.parametrize("how", ["mean", "max"])
@pytest.mark.parametrize("shape", [(7, 9), (8, 5), (1, 1), (2, 3)])
def test_reduce2_is_the_reduction_over_the_pixels_that_exist(how, shape):
    rng = np.random.default_rng(sum(shape))
    for a in (rng.integers(0, 256, shape, np.uint8), rng.integers(0, 256, (*shape, 3), np.uint8)):
        np.testing.assert_array_equal(reduce2(a, how), _reference(a, how))
        lazy = reduce2_dask(da.from_array(a, chunks=3), how, chunk=4)
        np.testing.assert_array_equal(lazy.compute(), _reference(a, how))


def test_translation_puts_a_level_pixel_on_the_centre_of_its_block():
    # Level pixel i of downsample d covers level-0 pixels [d*i, d*i + d): its
    # centre (pixel centres at integers) is d*i + (d - 1)/2.
    for d in (1, 2, 4, 8, 16):
        scale, shift = level_transform(d, unit=0.25, origin=(10, 20))
        for i in (0, 1, 7):
            block = np.arange(d * i, d * i + d)
            assert i * scale[0] + shift[0] == pytest.approx((10 + block.mean()) * 0.25)
            assert i * scale[1] + shift[1] == pytest.approx((20 + block.mean()) * 0.25)


def _stored_transforms(attrs: dict) -> list[tuple[list[float], list[float]]]:
    out = []
    for d in attrs["multiscales"][0]["datasets"]:
        t = {x["type"]: x for x in d["coordinateTransformations"]}
        out.append((t["scale"]["scale"][-2:], t["translation"]["translation"][-2:]))
    return out


def test_every_image_writer_gives_the_same_levels(tmp_path, monkeypatch):
    rgb = _rgb()
    ref = _levels_down(rgb, "mean", 3)
    # 1. the OME-Zarr pyramid cache (pyramid.py)
    src = tmp_path / "src.tif"
    tifffile.imwrite(src, rgb, photometric="rgb", tile=(256, 256))
    out = tmp_path / "cache.ome.zarr"
    list(build_pyramid(src, out, tile=256, min_size=600, workers=2))
    root = zarr.open_group(out, mode="r")
    cache = [np.moveaxis(root[str(k)][:], 0, 2) for k in range(3)]
    # 2. the lazy levels a slide gets on open (slide_base.finish_levels)
    monkeypatch.setattr(slide_base, "MIN_LEVEL_SIDE", 600)
    with open_slide(src) as s:
        lazy = [lvl.compute() for lvl in s.levels]
    # 3. the tiled pyramidal TIFF writer (synthetic slides)
    tif = tmp_path / "written.tif"
    write_pyramid(
        str(tif),
        SHAPE,
        3,
        512,
        lambda t: rgb[t[0] : t[1], t[2] : t[3]],
        lambda b: reduce2(b, "mean"),
        {"photometric": "rgb", "compression": "zlib"},
        lambda: None,
    )
    with tifffile.TiffFile(tif) as f:
        tiff = [lvl.asarray() for lvl in f.series[0].levels]
    assert len(cache) == len(lazy) == 3 and len(tiff) == 4  # its own stop: one 512 tile
    for k in range(3):
        for got in (cache[k], lazy[k], tiff[k]):
            np.testing.assert_array_equal(got, ref[k])
    # The cache stores block-centre translations (pixel units: no mpp here).
    for k, (scale, shift) in enumerate(_stored_transforms(root.attrs.asdict())):
        assert scale == [2.0**k, 2.0**k] and shift == [(2**k - 1) / 2] * 2


def _tissue_dot() -> tuple[np.ndarray, tuple[int, int]]:
    labels = np.zeros(SHAPE, np.uint8)
    y, x = 1499, 1037  # near the odd border
    labels[y, x] = 2
    return labels, (y, x)


def test_every_label_writer_gives_the_same_levels_and_right_translations(tmp_path):
    labels = _labels()
    ref = _levels_down(labels, "max", 3)
    # 1. masks (write_mask, OME-Zarr), at annotation level 4 of a bigger slide
    path = write_mask(tmp_path / "m.ome.zarr", labels, downsample=4, kind="scribble")
    group = zarr.open_group(path, mode="r")
    n_mask = len(group.attrs["multiscales"][0]["datasets"])
    mask_levels = [group[str(k)][:] for k in range(n_mask)]
    # 2. predictions (prediction_store): the 0/1 mask pyramid, by area majority
    #    (a maximum would dilate a prediction's coarse levels).
    prob, mask = create_store(tmp_path / "p.zarr", SHAPE, 512, {"downsample": 4.0})
    predicted = (labels > 0).astype(np.uint8)
    mask[:] = predicted
    prob[:] = labels * 100
    build_pyramids(tmp_path / "p.zarr")
    proot = zarr.open_group(tmp_path / "p.zarr", mode="r")
    pred_levels = [proot["labels/mask"][str(k)][:] for k in range(3)]
    prob_levels = [proot[str(k)][:] for k in range(3)]
    majority = _majority_down(predicted, 3)
    for k in range(3):
        np.testing.assert_array_equal(mask_levels[k], ref[k])
        np.testing.assert_array_equal(pred_levels[k], majority[k])
        np.testing.assert_array_equal(prob_levels[k], _levels_down(labels * 100, "mean", 3)[k])
    # Translations: a single tissue pixel's level pixel is centred on its block.
    dot, (y, x) = _tissue_dot()
    write_mask(tmp_path / "dot.ome.zarr", dot, downsample=4, kind="scribble")
    g = zarr.open_group(tmp_path / "dot.ome.zarr", mode="r")
    for k, (scale, shift) in enumerate(_stored_transforms(g.attrs.asdict())):
        iy, ix = np.argwhere(g[str(k)][:] == 2)[0]
        d = 4 * 2**k  # slide pixels per pixel of this level
        assert scale == [d, d]
        # The level pixel's centre (slide pixels) is the centre of the level-0
        # block it summarises, and that block holds the dot.
        cy, cx = iy * scale[0] + shift[0], ix * scale[1] + shift[1]
        assert (cy, cx) == (d * iy + (d - 1) / 2, d * ix + (d - 1) / 2)
        slide_y, slide_x = 4 * y + 1.5, 4 * x + 1.5  # the dot's own centre at level 0
        assert abs(cy - slide_y) <= (d - 4) / 2 and abs(cx - slide_x) <= (d - 4) / 2
    pattrs = proot.attrs.asdict()
    for k, (scale, shift) in enumerate(_stored_transforms(pattrs)):
        d = 4 * 2**k
        assert scale == [d, d] and shift == [(d - 1) / 2, (d - 1) / 2]
