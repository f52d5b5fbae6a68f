"""Review widget: metrics, error map and contour of a prediction against a mask."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gigapixel._widgets._layers import LayerError
from napari_gigapixel._widgets.review import FALSE_NEGATIVE, FALSE_POSITIVE, ReviewWidget


@pytest.fixture
def review_viewer(make_napari_viewer):
    """A 256 x 512 'slide', a truth mask at 1/4 and a prediction at 1/8 over it."""
    viewer = make_napari_viewer()
    slide = viewer.add_image(np.full((256, 512, 3), 200, np.uint8), rgb=True, name="slide")
    truth = np.zeros((64, 128), np.uint8)  # 1/4
    truth[16:48, 32:96] = 1  # level-0 rows 64-192, cols 128-384
    pred = np.zeros((32, 64), np.uint8)  # 1/8
    pred[8:24, 20:52] = 1  # level-0 rows 64-192, cols 160-416
    viewer.add_labels(truth, name="truth", scale=(4, 4))
    viewer.add_labels(pred, name="prediction: slide", scale=(8, 8))
    return viewer, slide


def test_review_metrics_error_map_and_contour(review_viewer, qtbot):
    viewer, slide = review_viewer
    w = ReviewWidget(viewer)
    viewer.window.add_dock_widget(w)
    # The prediction-looking layer and another Labels layer are preselected.
    assert w.prediction.value.name == "prediction: slide"
    assert w.mask.value.name == "truth"
    w.slide.value = slide
    w.compare_button.clicked.emit()
    # Level-0 pixels: truth 128 x 256, prediction 128 x 256 shifted 32 columns.
    tp, fp, fn = 128 * 224, 128 * 32, 128 * 32
    assert w.metrics["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert w.metrics["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert w.metrics["precision"] == pytest.approx(tp / (tp + fp))
    assert w.metrics["recall"] == pytest.approx(tp / (tp + fn))
    assert "Dice 0.875" in w.result.value
    # The figures are level-0 counts; the label must not say they were taken at 1/8.
    assert "counted in level-0 pixels (error map at 1/8)" in w.result.value

    errors = viewer.layers["errors: prediction: slide"]
    # Compared at the coarser level (1/8), overlaid on the slide.
    assert errors.data.shape == (32, 64)
    assert tuple(errors.scale) == (8.0, 8.0)
    assert int((errors.data == FALSE_POSITIVE).sum()) == 16 * 4  # cols 48-51 at 1/8
    assert int((errors.data == FALSE_NEGATIVE).sum()) == 16 * 4  # cols 16-19 at 1/8
    fp_colour = errors.colormap.map(FALSE_POSITIVE)
    fn_colour = errors.colormap.map(FALSE_NEGATIVE)
    assert not np.allclose(fp_colour, fn_colour)
    contour = viewer.layers["contour: prediction: slide"]
    assert contour.contour > 0  # drawn as an outline, not filled
    assert int(contour.data.sum()) == 16 * 32


def test_review_scribbles_ignore_unlabelled_pixels(review_viewer):
    viewer, slide = review_viewer
    scrib = np.zeros((64, 128), np.uint8)
    scrib[16:48, 32:96] = 2  # tissue scribble over the whole truth region
    scrib[0:8, 0:8] = 1  # a little background scribble where nothing is predicted
    viewer.add_labels(scrib, name="scribbles", scale=(4, 4), metadata={"kind": "scribble"})
    w = ReviewWidget(viewer)
    w.prediction.value = viewer.layers["prediction: slide"]
    w.mask.value = viewer.layers["scribbles"]
    w.slide.value = slide
    metrics = w.compare()
    # Unlabelled pixels are out: the 32 predicted-only columns do not count as FP.
    assert metrics["precision"] == pytest.approx(1.0)
    assert metrics["recall"] == pytest.approx(224 / 256)
    errors = viewer.layers["errors: prediction: slide"].data
    assert int((errors == FALSE_POSITIVE).sum()) == 0


def test_review_refuses_same_layer_twice(review_viewer):
    viewer, slide = review_viewer
    w = ReviewWidget(viewer)
    w.prediction.value = viewer.layers["truth"]
    w.mask.value = viewer.layers["truth"]
    w.slide.value = slide
    with pytest.raises(LayerError, match="two different layers"):
        w.compare()
    # Through the button the error becomes a notification, not a crash.
    w.compare_button.clicked.emit()
    assert "error" in w.result.value
