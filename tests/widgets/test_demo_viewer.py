"""The demo's viewer: held-out slide, ground truth and prediction overlaid, reviewed."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_gigapixel.cli.demo import build_viewer
from napari_gigapixel.core.prediction_store import (
    build_pyramids,
    commit_store,
    create_store,
    mark_complete,
)


def _prediction_from_truth(mask_path: str, out: str) -> np.ndarray:
    """A prediction store (as `predict` writes) holding the truth at 1/4, 32 px shifted."""
    truth = tifffile.imread(mask_path, level=0) > 0
    pred = np.roll(truth[2::4, 2::4], 8, axis=1).astype(np.uint8)  # 32 level-0 px off
    meta = {
        "kind": "prediction",
        "downsample": 4.0,
        "slide_shape": list(truth.shape),
        "region_shape": list(truth.shape),
        "offset": [0, 0],
        "threshold": 0.5,
    }
    tmp = out + ".partial"
    prob, mask = create_store(tmp, pred.shape, 256, meta)
    prob[:] = pred * 255
    mask[:] = pred
    build_pyramids(tmp)
    mark_complete(tmp)
    commit_store(tmp, out, overwrite=False)
    return truth


def test_demo_viewer_overlays_and_reviews_the_prediction(tiny_slide, tmp_path, qtbot):
    slide_path, mask_path = tiny_slide
    truth = _prediction_from_truth(mask_path, str(tmp_path / "pred.zarr"))
    viewer, review = build_viewer(slide_path, tmp_path / "pred.zarr", mask_path, show=False)
    try:
        slide, gt = viewer.layers["held-out slide"], viewer.layers["ground truth"]
        pred = viewer.layers["prediction: held-out slide"]
        # Same physical frame: the prediction's pixels are 4 slide pixels wide.
        np.testing.assert_allclose(pred.scale[-2:], 4 * np.asarray(slide.scale[-2:]))
        np.testing.assert_allclose(gt.scale[-2:], slide.scale[-2:])
        assert tuple(pred.units[-2:]) == tuple(slide.units[-2:])
        # The Review widget compared the shifted prediction with the truth.
        assert any(ly.name.startswith("errors:") for ly in viewer.layers)
        shifted = np.roll(truth, 32, axis=1)
        inter = np.logical_and(shifted, truth).sum()
        expected = 2 * inter / (shifted.sum() + truth.sum())
        dice = review.metrics["dice"]
        assert dice == pytest.approx(expected, abs=0.02)
        assert dice < 0.999
    finally:
        viewer.close()
