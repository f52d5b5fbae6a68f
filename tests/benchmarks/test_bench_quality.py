"""Where the benchmark says the misses are (benchmarks/bench_quality.py)."""

from __future__ import annotations

import numpy as np
import pytest
from bench_quality import missed_at_border

from napari_gigapixel.core.masks import AnnotationMask


def _mask(a: np.ndarray) -> AnnotationMask:
    return AnnotationMask(a.astype(np.uint8), 1.0, "dense")


def test_missed_at_border_splits_rim_from_inside():
    shape = (100, 160)
    truth = np.zeros(shape, bool)
    truth[10:90, 0:150] = True  # touches the image's left edge: not a border there
    pred = truth.copy()
    pred[10:90, 146:150] = False  # 4 px of the right-hand rim missed: 320 px
    pred[10:13, 0:20] = False  # the top rim at the image's edge: 60 px, rim too
    pred[45:55, 60:70] = False  # a 10 x 10 patch deep inside: 100 px
    pred[0:5, 0:5] = True  # a false call on the glass: not a miss
    share = missed_at_border(_mask(pred), _mask(truth), shape)
    assert share == pytest.approx(380 / 480)
    # Every miss on the left, where the tissue meets the image's edge, is inside.
    left = truth.copy()
    left[40:60, 0:3] = False
    assert missed_at_border(_mask(left), _mask(truth), shape) == 0.0
    assert missed_at_border(_mask(truth), _mask(truth), shape) is None
