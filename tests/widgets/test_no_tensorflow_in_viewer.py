"""A user's whole session from the widgets, with the real engine in worker processes.

Annotate (Otsu), Train (2 steps), Predict (with probability), Review, and at
the end TensorFlow and Keras are still absent from napari's process.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from napari_gigapixel._widgets.annotate import AnnotateWidget
from napari_gigapixel._widgets.predict import PredictWidget
from napari_gigapixel._widgets.review import ReviewWidget
from napari_gigapixel._widgets.train import TrainWidget


def _idle(widget, button) -> bool:
    """The widget's job has ended and its inputs are live again."""
    return not widget.relay.running and button.enabled


@pytest.mark.slow
def test_full_train_and_predict_from_the_widgets_keeps_tensorflow_out(
    slide_viewer, qtbot, tmp_path
):
    viewer, slide = slide_viewer
    assert "tensorflow" not in sys.modules

    annotate = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(annotate)
    annotate.level.value = 4
    annotate.otsu_button.clicked.emit()
    mask = viewer.layers["tissue mask"]

    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    train.slides.value = [slide]
    train.masks.value = [mask]
    train.steps.value = 2
    train.out.value = str(tmp_path / "model.keras")
    train.start_button.clicked.emit()
    qtbot.waitUntil(
        lambda: not train.relay.running and train.start_button.enabled, timeout=240_000
    )
    assert train.error is None, train.error
    assert train.result is not None and not train.result.stopped
    assert train.plot.steps == [1, 2]
    assert all(np.isfinite(train.plot.loss)) and all(0 <= d <= 1 for d in train.plot.dice)
    assert f"preview: {slide.name}" in viewer.layers

    predict = PredictWidget(viewer)
    viewer.window.add_dock_widget(predict)
    assert str(predict.model.value) == str(tmp_path / "model.keras")
    predict.out.value = str(tmp_path / "pred.ome.zarr")
    predict.probability.value = True
    predict.run_button.clicked.emit()
    qtbot.waitUntil(
        lambda: not predict.relay.running and predict.run_button.enabled, timeout=240_000
    )
    assert predict.error is None, predict.error
    labels = viewer.layers[f"prediction: {slide.name}"]
    d = labels.metadata["downsample"]
    assert tuple(labels.scale) == pytest.approx(tuple(d * np.asarray(slide.scale)))
    # One pyramid level for so small a slide (napari then takes a plain array).
    level0 = labels.data[0] if labels.multiscale else labels.data
    h, w = level0.shape
    assert (h, w) == (-(-512 // int(d)), -(-1024 // int(d)))
    prob = viewer.layers[f"probability: {slide.name}"]
    assert (prob.data[0] if prob.multiscale else prob.data).shape == (h, w)
    assert set(np.unique(np.asarray(level0))) <= {0, 1}

    review = ReviewWidget(viewer)
    viewer.window.add_dock_widget(review)
    review.prediction.value = labels
    review.mask.value = mask
    review.slide.value = slide
    review.compare_button.clicked.emit()
    assert set(review.metrics) == {"dice", "iou", "precision", "recall"}
    assert all(0.0 <= v <= 1.0 for v in review.metrics.values())
    assert f"errors: {labels.name}" in viewer.layers

    assert "tensorflow" not in sys.modules
    assert "keras" not in sys.modules
