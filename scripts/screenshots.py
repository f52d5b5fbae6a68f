"""Screenshots of each napari-gigapixel widget in use on the sample slide.

Real napari, a shown window, real engine runs (training and inference in
their worker processes). Headless: run under a virtual display::

    xvfb-run -a python scripts/screenshots.py --out docs/images --steps 8

Writes ``annotate.png``, ``train.png``, ``predict.png`` and ``review.png``.
The sample slide (4096 x 16384) is made once in ``$NAPARI_GIGAPIXEL_CACHE``
(or the user cache) by the plugin's sample-data hook.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import napari
import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import QApplication

from napari_gigapixel._widgets.annotate import AnnotateWidget
from napari_gigapixel._widgets.predict import PredictWidget
from napari_gigapixel._widgets.review import ReviewWidget
from napari_gigapixel._widgets.train import TrainWidget

WINDOW = (1700, 1050)


def pump(seconds: float = 0.5) -> None:
    """Let Qt draw and deliver queued signals for a while."""
    app = QApplication.instance()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def wait_for(widget, button, timeout: float = 1800.0) -> None:
    """Process events until the widget's engine job ended."""
    end = time.monotonic() + timeout
    pump(1.0)
    while widget.relay.running or not button.enabled:
        if time.monotonic() > end:
            raise TimeoutError(f"{type(widget).__name__} did not finish in {timeout} s")
        pump(0.2)
    pump(1.0)


def grab(viewer, path: str) -> None:
    """Save the whole window (canvas, layer list and docked widgets) as PNG."""
    pump(1.5)
    viewer.window._qt_window.grab().save(path)
    print("wrote", path)


def dock(viewer, widget, name: str):
    """Dock ``widget`` on the right, alone, wide enough for its labels."""
    viewer.window.remove_dock_widget("all")
    dw = viewer.window.add_dock_widget(widget, name=name, area="right")
    dw.setMinimumWidth(430)
    return dw


def main(argv: list[str] | None = None) -> None:
    """Drive the four widgets on the sample slide and grab the window after each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="gigapixel-shots-")

    # Info toasts would cover the canvas in the pictures; errors still show.
    from napari.settings import get_settings

    get_settings().application.gui_notification_level = "error"
    viewer = napari.Viewer(title="napari-gigapixel", show=True)
    viewer.window._qt_window.resize(*WINDOW)
    viewer.open_sample("napari-gigapixel", "synthetic_slide")
    slide = next(ly for ly in viewer.layers if isinstance(ly, Image))
    truth = next(ly for ly in viewer.layers if isinstance(ly, Labels))
    truth.visible = False
    pump(2.0)

    # 1. Annotate: Otsu start, then a correction painted on the mask level.
    annotate = AnnotateWidget(viewer)
    dock(viewer, annotate, "Annotate tissue mask")
    annotate.slide.value = slide
    annotate.otsu_button.clicked.emit()
    mask = viewer.layers["tissue mask"]
    mask.mode = "paint"
    mask.brush_size = 40
    h, w = mask.data.shape
    mask.data[h // 3 : h // 3 + 60, w // 2 : w // 2 + 300] = 1  # a painted correction
    mask.refresh()
    viewer.reset_view()
    grab(viewer, os.path.join(args.out, "annotate.png"))
    mask.mode = "pan_zoom"

    # 2. Train on the ground truth, live curves and preview.
    train = TrainWidget(viewer)
    dock(viewer, train, "Train whole-slide U-Net")
    train.slides.value = [slide]
    train.masks.value = [truth]
    train.steps.value = args.steps
    train.lr.value = args.lr
    train.out.value = os.path.join(work, "tissue_unet.keras")
    mask.visible = False
    train.start_button.clicked.emit()
    wait_for(train, train.start_button)
    if train.error is not None:
        raise SystemExit(f"training failed: {train.error}")
    grab(viewer, os.path.join(args.out, "train.png"))

    # 3. Predict with the model just trained, with the probability image.
    predict = PredictWidget(viewer)
    dock(viewer, predict, "Predict tissue mask")
    predict.slide.value = slide
    predict.out.value = os.path.join(work, "prediction.ome.zarr")
    predict.probability.value = True
    for ly in viewer.layers:
        if ly.name.startswith("preview"):
            ly.visible = False
    predict.run_button.clicked.emit()
    wait_for(predict, predict.run_button)
    if predict.error is not None:
        raise SystemExit(f"prediction failed: {predict.error}")
    viewer.layers[f"probability: {slide.name}"].visible = False
    grab(viewer, os.path.join(args.out, "predict.png"))

    # 4. Review against the ground truth, zoomed on a tissue edge.
    review = ReviewWidget(viewer)
    dock(viewer, review, "Review prediction")
    pred = viewer.layers[f"prediction: {slide.name}"]
    review.prediction.value = pred
    review.mask.value = truth
    review.slide.value = slide
    review.compare_button.clicked.emit()
    pred.visible = False
    sy, sx = (np.asarray(slide.scale[-2:]) * np.asarray(slide.data[0].shape[:2])).tolist()
    camera = getattr(viewer, "scene", viewer).camera  # napari >= 0.9: viewer.scene
    camera.center = (sy * 0.5, sx * 0.3)
    camera.zoom = camera.zoom * 4
    grab(viewer, os.path.join(args.out, "review.png"))
    print("metrics:", review.metrics)
    viewer.close()


if __name__ == "__main__":
    main()
