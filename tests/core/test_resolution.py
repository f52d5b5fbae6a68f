"""Working resolution: the resolve rule, lazy area means, label grids, ROI mapping."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_gigapixel.core.masks import AnnotationMask
from napari_gigapixel.core.resolution import (
    Resolution,
    ResolutionError,
    area_average,
    default_for_model,
    map_roi,
    resolution_array,
    resolve,
)
from napari_gigapixel.core.slide_base import Slide, halve


def _slide(shape=(517, 1301), mpp=0.25, n_levels=3, seed=0) -> Slide:
    rng = np.random.default_rng(seed)
    lvl = da.from_array(rng.integers(0, 256, (*shape, 3), dtype=np.uint8), chunks=(128, 256, 3))
    levels, downs = [lvl], [1.0]
    for _ in range(n_levels - 1):
        levels.append(halve(levels[-1]))
        downs.append(downs[-1] * 2)
    return Slide(
        path="mem.tif",
        name="mem",
        levels=levels,
        downsamples=downs,
        mpp=None if mpp is None else (mpp, mpp),
    )


def test_a_level_within_ten_percent_is_used_as_is():
    s = _slide()
    r = resolve(s, Resolution(mpp=1.05))  # 4.2 x 0.25: level 2 (downsample 4) is 5% off
    assert (r.level, r.factor, r.downsample) == (2, 1, 4.0)
    assert r.mpp == pytest.approx(1.0) and r.shape == tuple(s.levels[2].shape[:2])
    r = resolve(s, Resolution(level=1))
    assert (r.level, r.factor, r.downsample, r.mpp) == (1, 1, 2.0, 0.5)
    assert resolve(s, None).downsample == 1.0


def test_between_levels_an_integer_area_mean_of_the_next_finer_level():
    s = _slide()
    r = resolve(s, Resolution(mpp=1.5))  # downsample 6: 3 x 3 of level 1 (downsample 2)
    assert (r.level, r.factor, r.downsample) == (1, 3, 6.0)
    r = resolve(s, Resolution(mpp=4.0))  # downsample 16: 4 x 4 of level 2
    assert (r.level, r.factor, r.downsample, r.mpp) == (2, 4, 16.0, 4.0)
    h2, w2 = s.levels[2].shape[:2]
    assert r.shape == (-(-h2 // 4), -(-w2 // 4))


def test_unreachable_or_finer_requests_are_clear_errors():
    s = _slide(n_levels=1)
    with pytest.raises(ResolutionError, match="within 10%.*nearest"):
        resolve(s, Resolution(mpp=0.25 * 1.5))  # downsample 1.5 from level 0 only
    with pytest.raises(ResolutionError, match="finer than the slide's level 0"):
        resolve(s, Resolution(mpp=0.1))
    with pytest.raises(ResolutionError, match="levels 0 to 0"):
        resolve(s, Resolution(level=3))
    with pytest.raises(ResolutionError, match="does not record its um/px"):
        resolve(_slide(mpp=None), Resolution(mpp=2.0))
    with pytest.raises(ResolutionError, match="not both"):
        Resolution(mpp=2.0, level=1)
    with pytest.raises(ResolutionError, match="positive"):
        Resolution(mpp=-1.0)


def test_area_average_equals_numpy_and_stays_lazy():
    s = _slide()
    arr = area_average(s.levels[0], 3, chunk=100)
    assert isinstance(arr, da.Array) and arr.numblocks[0] > 1  # chunk by chunk
    full = s.levels[0].compute().astype(np.float64)
    h, w = full.shape[:2]
    got = arr.compute()
    assert got.shape == (-(-h // 3), -(-w // 3), 3)
    for i, j in [(0, 0), (5, 17), (got.shape[0] - 1, got.shape[1] - 1), (40, 100)]:
        block = full[3 * i : 3 * i + 3, 3 * j : 3 * j + 3]  # the last: 517 % 3 = 1 row
        assert got[i, j].tolist() == np.floor(block.mean(axis=(0, 1)) + 0.5).astype(int).tolist()
    r = resolve(s, Resolution(mpp=1.5))
    assert resolution_array(s, r).shape[:2] == r.shape


def test_read_grid_samples_block_centres_at_fractional_steps():
    mask = AnnotationMask(np.arange(100, dtype=np.uint8).reshape(10, 10), downsample=4.0)
    # Blocks 6 level-0 px wide from 0: centres 3, 9, 15 -> mask pixels 0, 2, 3.
    g = mask.read_grid(0.0, 0.0, 3, 3, 6.0)
    assert g[:, 0].tolist() == [0, 20, 30] and g[0].tolist() == [0, 2, 3]
    # Step 1 from an integer origin is read_window.
    assert np.array_equal(mask.read_window(3, 20, 5, 31, 1), mask.read_grid(3, 5, 17, 26, 1))
    assert np.array_equal(mask.read_window(0, 40, 0, 40, 8), mask.read_grid(0, 0, 5, 5, 8))
    # Past the mask: 0.
    # Centres 37.25, 39.75, 42.25 -> mask rows 9, 9, 10 (outside).
    assert mask.read_grid(36.0, 0.0, 3, 1, 2.5)[:, 0].tolist() == [90, 90, 0]


def test_roi_maps_outwards_to_whole_pixels():
    s = _slide()
    r = resolve(s, Resolution(mpp=1.5))  # downsample 6
    assert map_roi((7, 0, 20, 517), r) == (1, 0, 4, 87)
    assert map_roi((0, 0, 517, 1301), r) == (0, 0, *r.shape)


def test_a_model_resolution_is_the_default_for_prediction():
    s = _slide()
    r, why = default_for_model(s, {"resolution": {"mpp": 1.0, "downsample": 8.0}})
    assert (r.level, r.downsample) == (2, 4.0) and "1 um/px" in why
    # No um/px on the slide: the model's downsample (the downsample rule).
    r, why = default_for_model(_slide(mpp=None), {"resolution": {"mpp": 1.0, "downsample": 8.0}})
    assert (r.level, r.factor, r.downsample) == (2, 2, 8.0) and "does not record" in why
    # Trained finer than this slide's level 0: level 0, and it says so.
    r, why = default_for_model(_slide(mpp=0.5), {"resolution": {"mpp": 0.25, "downsample": 1}})
    assert r.downsample == 1.0 and "finest level" in why
    # A model file from before resolutions: level 0, nothing to say.
    r, why = default_for_model(s, {})
    assert r.downsample == 1.0 and why is None
