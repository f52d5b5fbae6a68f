"""Mask clean-up: each step on hand-made masks, chunked == whole, unit conversion."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from napari_gigapixel.core.mask_clean import (
    FALLBACK_MPP,
    CleanSettings,
    MaskCleanError,
    clean_block,
    clean_dask,
    level0_mpp,
)


def _blobs(shape, seed, sigma=2.5, level=0.3, noise=0.03):
    """Random blobs with thin bits, specks and holes (smoothed noise, thresholded)."""
    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    m = f > level * f.std()
    m ^= rng.random(shape) < noise  # specks and pinholes
    return m.astype(np.uint8)


def test_opening_removes_a_thin_line_keeps_a_blob():
    m = np.zeros((40, 60), np.uint8)
    m[5:7, 2:58] = 1  # a 2-px-wide line (a pen stroke's edge, a fibre)
    blob = np.zeros_like(m, dtype=bool)
    blob[15:35, 20:44] = True  # a square is open under a 3x3 disk
    m[blob] = 1
    out = clean_block(m, 1.5, 0, 0)  # min width 3 px
    assert out.dtype == np.uint8
    assert out[5:7].sum() == 0
    assert np.array_equal(out.astype(bool), blob)


def test_small_object_removed_big_kept_diagonal_is_one_object():
    m = np.zeros((30, 30), np.uint8)
    m[2:5, 2:5] = 1  # 9 px
    m[10:20, 10:20] = 1  # 100 px
    for i in range(6):  # a diagonal chain of 6 px: one 8-connected object
        m[22 + i, 2 + i] = 1
    out = clean_block(m, 0, 10, 0)
    assert out[2:5, 2:5].sum() == 0
    assert out[10:20, 10:20].sum() == 100
    assert out.sum() == 100
    assert clean_block(m, 0, 6, 0)[22:28].sum() == 6  # 6 px, not six 1-px objects


def test_small_enclosed_hole_filled_border_hole_not():
    m = np.ones((30, 30), np.uint8)
    m[10:12, 10:12] = 0  # enclosed, 4 px
    m[0:2, 20:22] = 0  # touches the border, 4 px
    m[20:28, 3:11] = 0  # enclosed, 64 px
    out = clean_block(m, 0, 0, 10)
    assert out[10:12, 10:12].sum() == 4
    assert out[0:2, 20:22].sum() == 0
    assert out[20:28, 3:11].sum() == 0


def test_all_zero_settings_change_nothing():
    m = _blobs((50, 70), 0)
    assert np.array_equal(clean_block(m, 0, 0, 0), m)
    assert np.array_equal(clean_dask(da.from_array(m, chunks=16), 0, 0, 0).compute(), m)


@pytest.mark.parametrize(
    "chunk,radius,obj,hole",
    [
        (16, 1.5, 12, 6),
        (23, 2.5, 30, 0),
        (40, 0, 50, 20),
        (17, 2.0, 0, 15),
        (64, 1.0, 3.5, 2.5),
        ((50, 9), 2.5, 40, 40),
    ],
)
def test_chunked_equals_whole(chunk, radius, obj, hole):
    for seed in range(2):
        m = _blobs((97, 131), seed)
        whole = clean_block(m, radius, obj, hole)
        assert not np.array_equal(whole, m)  # the case does something
        got = clean_dask(da.from_array(m, chunks=chunk), radius, obj, hole)
        assert got.chunks == da.from_array(m, chunks=chunk).chunks
        np.testing.assert_array_equal(got.compute(scheduler="sync"), whole)


def test_chunked_equals_whole_thin_array():
    m = _blobs((12, 200), 3)
    whole = clean_block(m, 1.5, 20, 10)
    got = clean_dask(da.from_array(m, chunks=(6, 30)), 1.5, 20, 10).compute()
    np.testing.assert_array_equal(got, whole)


def test_settings_to_pixels_and_validation():
    px = CleanSettings(10.0, 250.0, 100.0).to_pixels(2.0)  # 0.5 um/px x stride 4
    assert px.radius_px == pytest.approx(2.5)
    assert px.min_object_px == pytest.approx(62.5)
    assert px.min_hole_px == pytest.approx(25.0)
    assert not CleanSettings(0, 0, 0).active
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(MaskCleanError, match="min_object_um2"):
            CleanSettings(10.0, bad, 0.0).validate()


def test_default_fills_a_dust_pinhole_keeps_a_lumen():
    """The default clean-up fills holes under 250 um^2 (dust on the tissue) and
    keeps larger ones, on the prediction grid of a 0.5 um/px slide (2 um/px)."""
    px = CleanSettings().to_pixels(2.0)
    m = np.zeros((60, 80), np.uint8)
    m[5:55, 5:75] = 1
    m[10:17, 10:17] = 0  # 49 px = 196 um^2: a dust speck called glass
    m[30:39, 40:49] = 0  # 81 px = 324 um^2: a gap in the tissue
    out = clean_block(m, px.radius_px, px.min_object_px, px.min_hole_px)
    assert out[10:17, 10:17].all()
    assert not out[30:39, 40:49].any()


def test_level0_mpp_sources():
    assert level0_mpp(0.25, {})[0] == 0.25
    meta = {"resolution": {"mpp": 2.0, "downsample": 4.0, "slide_mpp": 0.5}}
    m, why = level0_mpp(None, meta)
    assert m == 0.5 and "training slide" in why
    m, _ = level0_mpp(None, {"resolution": {"mpp": 1.0, "downsample": 4.0}})
    assert m == 0.25
    m, why = level0_mpp(None, {})
    assert m == FALLBACK_MPP and "assumes" in why


def test_a_halo_too_small_breaks_the_equality(monkeypatch):
    # The check above can fail: 5 px less halo and some chunk sees a cut component.
    import napari_gigapixel.core.mask_clean as mc

    full = mc.halo
    monkeypatch.setattr(mc, "halo", lambda r, o, h: full(r, o, h) - 5)
    m = _blobs((97, 131), 0)
    got = clean_dask(da.from_array(m, chunks=23), 2.5, 30, 0).compute()
    assert not np.array_equal(got, clean_block(m, 2.5, 30, 0))


def test_the_radius_does_not_depend_on_scanner_rounding_of_um_per_px():
    # 20x scanners report 0.5014 or 0.4990 um/px, not 0.5: 4 um is the same disk.
    from napari_gigapixel.core.mask_clean import CleanSettings

    radii = {
        CleanSettings(4.0, 0.0, 0.0).to_pixels(mpp * 4).radius_px for mpp in (0.499, 0.5, 0.5014)
    }
    assert radii == {1.0}


@pytest.mark.parametrize(
    "shape,chunks,radius,obj,hole",
    [
        ((97, 131), (23, 23), 2.5, 30, 12),
        ((97, 131), (40, 64), 1.0, 62.5, 0),
        ((12, 200), (16, 30), 1.5, 20, 10),  # one chunk row, a halo taller than the slide
        ((150, 40), (32, 64), 2.0, 0, 15),  # one chunk column
    ],
)
def test_the_store_pass_equals_the_whole_array_clean(tmp_path, shape, chunks, radius, obj, hole):
    # What predict runs on its level 0: band by band from the zarr store.
    import zarr

    from napari_gigapixel.core.events import Progress
    from napari_gigapixel.core.mask_clean import CleanPixels, clean_zarr_array

    m = _blobs(shape, 5)
    path = str(tmp_path / "0")
    arr = zarr.create_array(
        store=path, shape=shape, chunks=chunks, dtype="uint8", fill_value=0, zarr_format=2
    )
    arr[:] = m
    gen = clean_zarr_array(path, CleanPixels(radius, obj, hole))
    done = []
    while True:
        try:
            done.append(next(gen))
        except StopIteration as fin:
            tissue = fin.value
            break
    whole = clean_block(m, radius, obj, hole)
    assert not np.array_equal(whole, m)
    got = zarr.open_array(path, mode="r", zarr_format=2)[:]
    np.testing.assert_array_equal(got, whole)
    assert tissue == int(whole.sum())
    assert all(isinstance(p, Progress) for p in done) and done[-1].done == done[-1].total
    assert done[-1].total == -(-shape[0] // chunks[0]) * -(-shape[1] // chunks[1])


def test_the_store_pass_stops_between_chunks_and_leaves_the_mask(tmp_path):
    # The chunks of a band are cleaned on a thread pool: a stop still ends the
    # pass at the next chunk, and the mask on disk is the one written before.
    import threading

    import zarr

    from napari_gigapixel.core.events import JobStopped
    from napari_gigapixel.core.mask_clean import CleanPixels, clean_zarr_array

    m = _blobs((97, 131), 5)
    path = str(tmp_path / "0")
    arr = zarr.create_array(
        store=path, shape=m.shape, chunks=(23, 23), dtype="uint8", fill_value=0, zarr_format=2
    )
    arr[:] = m
    stop = threading.Event()
    gen = clean_zarr_array(path, CleanPixels(2.5, 30, 12), stop)
    first = next(gen)
    assert first.done == 1
    stop.set()
    with pytest.raises(JobStopped):
        next(gen)
    np.testing.assert_array_equal(zarr.open_array(path, mode="r", zarr_format=2)[:], m)
