"""A prediction's mask read at level 0 along its probability's threshold line."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gigapixel.core.confusion import confusion, dice
from napari_gigapixel.core.mask_refine import RefinedMask
from napari_gigapixel.core.masks import AnnotationMask


def _smooth_prob(shape, seed=0):
    """A smooth random probability field (uint8) with blobs crossing 0.5."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    f = ndi.gaussian_filter(rng.normal(size=shape), 3.0)
    f = (f - f.mean()) / f.std()
    return np.clip(127.5 + 90 * f, 0, 255).astype(np.uint8)


def test_any_window_gives_the_same_pixels():
    prob = _smooth_prob((40, 56))
    mask = (prob >= 128).astype(np.uint8)
    ref = RefinedMask(prob, mask, 4, 0.5)
    whole = ref.read_window(0, 160, 0, 224)
    assert whole.shape == (160, 224)
    tiled = np.zeros_like(whole)
    ys, xs = [0, 7, 61, 99, 160], [0, 13, 50, 128, 181, 224]
    for y0, y1 in zip(ys[:-1], ys[1:]):
        for x0, x1 in zip(xs[:-1], xs[1:]):
            tiled[y0:y1, x0:x1] = ref.read_window(y0, y1, x0, x1)
    np.testing.assert_array_equal(tiled, whole)
    # Fractional grids (a working resolution's) read the same field.
    np.testing.assert_array_equal(
        ref.read_grid(7.25, 0.25, 40, 50, 0.5)[::2, ::2], whole[7:27, :25]
    )
    # Past the prediction's extent: background, as a mask's.
    assert not ref.read_window(150, 170, 0, 224)[10:].any()


def test_block_centres_keep_the_stored_mask_and_the_clean_up():
    # Grid 3: level-0 pixel 3k+1 sits at the centre of output pixel k.
    prob = _smooth_prob((30, 30), seed=1)
    mask = (prob >= 128).astype(np.uint8)
    # The clean-up removed a confident speck and filled a doubtful hole.
    prob[1:8, 1:8], mask[1:8, 1:8] = 20, 0
    prob[4, 4] = 250
    prob[18:25, 18:25], mask[18:25, 18:25] = 250, 1
    prob[21, 21] = 10
    ref = RefinedMask(prob, mask, 3, 0.5)
    full = ref.read_window(0, 90, 0, 90)
    np.testing.assert_array_equal(full[1::3, 1::3], mask)
    assert not full[6:21, 6:21].any()  # the removed speck does not come back
    assert full[57:72, 57:72].all()  # the filled hole stays filled


def test_a_straight_border_lands_where_the_probability_crosses():
    # Tissue left of x = 37.3 px (level 0); the model's probability is the
    # share of tissue along a 4 px wide ramp, sampled at its output pixels'
    # centres (4k + 2), as a calibrated model's would be.
    border = 37.3
    centres = 4 * np.arange(24) + 2.0
    p = np.clip(0.5 - (centres - border) / 8.0, 0, 1)
    prob = np.tile(np.rint(p * 255).astype(np.uint8), (6, 1))
    mask = (prob >= 128).astype(np.uint8)
    truth = np.zeros((24, 96), np.uint8)
    truth[:, : int(round(border))] = 1
    refined = RefinedMask(prob, mask, 4, 0.5).read_window(0, 24, 0, 96)
    cols = np.flatnonzero(refined[0])
    assert abs(cols.max() + 1 - border) < 1.0
    nearest = AnnotationMask(mask, 4.0)
    d_ref = dice(confusion(RefinedMask(prob, mask, 4, 0.5), truth, shape=(24, 96)))
    d_near = dice(confusion(nearest, truth, shape=(24, 96)))
    assert d_ref > d_near


def test_threshold_and_shapes_are_checked():
    prob = np.full((4, 4), 100, np.uint8)
    with pytest.raises(ValueError, match="differ in shape"):
        RefinedMask(prob, np.zeros((4, 5), np.uint8), 4, 0.5)
    assert RefinedMask(prob, np.ones((4, 4), np.uint8), 4, 0.3).read_window(0, 16, 0, 16).all()
