"""AnnotationMask: level inference and per-window nearest-neighbour reads."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gigapixel.core.masks import AnnotationMask, MaskError, infer_downsample


@pytest.mark.parametrize(
    ("mask_shape", "slide_shape", "expected"),
    [
        ((250, 300), (250, 300), 1.0),
        ((63, 75), (250, 300), 4.0),  # ceil-rounded pyramid level
        ((62, 75), (250, 300), 4.0),  # floor-rounded on one axis
        ((1000, 4000), (16000, 64000), 16.0),
        ((100, 100), (300, 300), 3.0),  # not a power of two: kept as is
    ],
)
def test_infer_downsample(mask_shape, slide_shape, expected):
    assert infer_downsample(mask_shape, slide_shape) == pytest.approx(expected, rel=1e-3)


def test_infer_downsample_rejects_a_mask_of_another_aspect():
    with pytest.raises(MaskError, match=r"other\.tif: a 100 x 100 mask cannot overlay"):
        infer_downsample((100, 100), (250, 300), name="other.tif")


def test_infer_downsample_rejects_an_upsampled_mask():
    with pytest.raises(MaskError, match="larger than the 250 x 300 slide"):
        infer_downsample((500, 600), (250, 300))


def test_read_window_equals_full_resolution_nearest_neighbour():
    rng = np.random.default_rng(0)
    low = rng.integers(0, 3, size=(13, 21), dtype=np.uint8)
    mask = AnnotationMask(low, downsample=8)
    # The full-resolution mask this stands for (only built here, for the test).
    full = np.repeat(np.repeat(low, 8, axis=0), 8, axis=1)
    for stride in (1, 2, 4, 8):
        for y0, y1, x0, x1 in [(0, 104, 0, 168), (5, 77, 13, 150), (96, 104, 160, 168)]:
            got = mask.read_window(y0, y1, x0, x1, stride=stride)
            cy = y0 + np.arange(got.shape[0]) * stride + stride // 2
            cx = x0 + np.arange(got.shape[1]) * stride + stride // 2
            # Block centre at stride/2: for even strides the centre pixel is
            # stride//2, for stride 1 it is the pixel itself.
            np.testing.assert_array_equal(got, full[np.ix_(cy, cx)])


def test_read_window_past_the_mask_reads_zero():
    mask = AnnotationMask(np.ones((4, 4), np.uint8), downsample=4)
    got = mask.read_window(8, 24, 8, 24, stride=4)
    np.testing.assert_array_equal(got, [[1, 1, 0, 0]] * 2 + [[0, 0, 0, 0]] * 2)


def test_read_window_reads_only_the_rows_and_columns_it_needs():
    class Spy:
        shape = (1000, 1000)
        dtype = np.uint8

        def __init__(self):
            self.reads = []

        def __getitem__(self, key):
            self.reads.append(key)
            return np.ones((key[0].stop - key[0].start, key[1].stop - key[1].start), np.uint8)

    spy = Spy()
    AnnotationMask(spy, downsample=16).read_window(1600, 1664, 3200, 3328, stride=4)
    (ys, xs) = spy.reads[0]
    assert (ys.start, ys.stop, xs.start, xs.stop) == (100, 104, 200, 208)


def test_targets_and_weights_dense_and_scribble():
    labels = np.array([[0, 1, 2, 5]], np.uint8)
    t, w = AnnotationMask(labels, kind="dense").targets_and_weights(labels)
    np.testing.assert_array_equal(t, [[0, 1, 1, 1]])
    np.testing.assert_array_equal(w, [[1, 1, 1, 1]])
    scribbles = labels[:, :3]
    t, w = AnnotationMask(scribbles, kind="scribble").targets_and_weights(scribbles)
    np.testing.assert_array_equal(t, [[0, 0, 1]])
    np.testing.assert_array_equal(w, [[0, 1, 1]])


def test_bad_masks_are_refused_with_their_name():
    with pytest.raises(MaskError, match="scan.png: a mask must be 2-D"):
        AnnotationMask(np.zeros((4, 4, 3)), name="scan.png")
    with pytest.raises(MaskError, match="kind must be"):
        AnnotationMask(np.zeros((4, 4)), kind="soft")
