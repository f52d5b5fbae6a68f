"""Review widget: where do the prediction and the mask disagree?

Both layers are compared at one common annotation level (the coarser of the
two, never a full-resolution array): Dice, IoU, precision and recall; an error
map Labels layer (false positives and false negatives in two colours); and
the prediction's contour drawn over the slide. "Export to QuPath" writes the
prediction as GeoJSON polygons (:mod:`napari_gigapixel.core.export`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error

from ..core.errors import GigapixelError
from ..core.masks import AnnotationMask, infer_downsample
from ._export import ask_path, export_controls, export_layer, start_export, summary
from ._layers import (
    MAX_MASK_PIXELS,
    LayerError,
    add_mask_layer,
    labels_level,
    level0_shape,
    mask_shape,
    resample_mask,
)

#: Error map values and colours: 1 false positive, 2 false negative.
FALSE_POSITIVE, FALSE_NEGATIVE = 1, 2
ERROR_COLOURS = {
    0: "transparent",
    FALSE_POSITIVE: "#ff00ff",  # magenta: predicted tissue that is not
    FALSE_NEGATIVE: "#ffd700",  # gold: tissue the prediction missed
    None: "transparent",
}


def _as_mask(layer: Any, slide_shape: tuple[int, int]) -> AnnotationMask:
    arr, _ = labels_level(layer)
    d = infer_downsample(tuple(arr.shape[-2:]), slide_shape, name=f"layer '{layer.name}'")
    kind = (layer.metadata or {}).get("kind", "dense")
    return AnnotationMask(arr, float(d), kind=kind, name=layer.name)


def _store_of(layer: Any) -> Any:
    """The prediction store behind a layer added by the Predict widget, else None."""
    from ..core.prediction_store import is_prediction_path, open_prediction

    path = (layer.metadata or {}).get("path")
    return open_prediction(path) if path and is_prediction_path(path) else None


def review_level(masks: list[AnnotationMask], slide_shape: tuple[int, int]) -> int:
    """Common comparison level: the coarsest mask's, coarser still if over budget."""
    d = max(1, int(round(max(m.downsample for m in masks))))
    while np.prod(mask_shape(slide_shape, d)) > MAX_MASK_PIXELS:
        d *= 2
    return d


class ReviewWidget(Container):
    """Compare a prediction layer with a mask layer over a slide.

    Parameters
    ----------
    napari_viewer
        The viewer holding the prediction, mask and slide layers.
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.prediction = ComboBox(label="prediction", choices=self._choices(Labels))
        self.mask = ComboBox(label="mask", choices=self._choices(Labels))
        self.slide = ComboBox(label="slide", choices=self._choices(Image))
        self.compare_button = PushButton(text="Compare")
        self.result = Label(label="metrics", value="-")
        self.legend = Label(value="error map: magenta = false positive, gold = false negative")
        self.export_path, self.export_button = export_controls()
        self.export_status = Label(value="")
        self.extend(
            [
                self.prediction,
                self.mask,
                self.slide,
                self.compare_button,
                self.result,
                self.legend,
                self.export_path,
                self.export_button,
                self.export_status,
            ]
        )
        self.compare_button.changed.connect(self._compare_clicked)
        self.export_button.changed.connect(self._export_clicked)
        napari_viewer.layers.events.inserted.connect(self.reset_choices)
        napari_viewer.layers.events.removed.connect(self.reset_choices)
        self.metrics: dict[str, float] = {}
        self._pick_defaults()

    def _choices(self, kind: type):
        def choices(_widget: Any = None) -> list[tuple[str, Any]]:
            return [
                (ly.name, ly)
                for ly in self.viewer.layers
                if isinstance(ly, kind) and not ly.name.startswith(("errors:", "contour:"))
            ]

        return choices

    def _pick_defaults(self) -> None:
        """Pre-select a layer named like a prediction, and a different one as the mask."""
        labels = [ly for ly in self.viewer.layers if isinstance(ly, Labels)]
        preds = [ly for ly in labels if ly.name.startswith("prediction")]
        if preds:
            self.prediction.value = preds[-1]
            others = [ly for ly in labels if ly is not preds[-1]]
            if others:
                self.mask.value = others[0]

    def _compare_clicked(self, *_: Any) -> None:
        try:
            self.compare()
        except GigapixelError as exc:
            show_error(str(exc))
            self.result.value = "error: see notification"

    def _export_clicked(self, *_: Any) -> None:
        try:
            if self.prediction.value is None or self.slide.value is None:
                raise LayerError("Pick the prediction layer and the slide it lies on.")
            path = ask_path(self.export_path)
            self._export_worker = start_export(
                self.prediction.value,
                self.slide.value,
                path,
                button=self.export_button,
                status=self.export_status,
            )
        except GigapixelError as exc:
            show_error(str(exc))
            self.export_status.value = "export failed: see notification"

    def export(self, path: str) -> dict[str, Any]:
        """Write the prediction being reviewed as QuPath GeoJSON at ``path``."""
        result = export_layer(self.prediction.value, self.slide.value, path)
        self.export_status.value = summary(result)
        return result

    def compare(self) -> dict[str, float]:
        """Compute the metrics and add the error map and contour layers."""
        from ..core import metrics

        pred_layer, mask_layer, slide = self.prediction.value, self.mask.value, self.slide.value
        if pred_layer is None or mask_layer is None or slide is None:
            raise LayerError("Pick a prediction layer, a mask layer and the slide layer.")
        if pred_layer is mask_layer:
            raise LayerError("Pick two different layers for the prediction and the mask.")
        sshape = level0_shape(slide)
        pred_m, truth_m = _as_mask(pred_layer, sshape), _as_mask(mask_layer, sshape)
        d = review_level([pred_m, truth_m], sshape)
        pred = resample_mask(pred_m, sshape, d) > 0
        labels = np.asarray(resample_mask(truth_m, sshape, d))
        target, weight = truth_m.targets_and_weights(labels)
        truth = target > 0
        valid = weight > 0  # scribble masks: unlabelled pixels do not count
        # The figures count level-0 pixels (the core reads both masks tile by tile);
        # a prediction opened from its store is counted from the store, as
        # 'napari-gigapixel evaluate' counts it, whatever level the layer shows.
        store = _store_of(pred_layer)
        if store is not None:
            counts = metrics.score_prediction(store, truth_m)
        else:
            counts = metrics.confusion(pred_m, truth_m, shape=sshape)
        self.metrics = {k: float(v) for k, v in metrics.scores(counts).items()}
        self.result.value = (
            f"Dice {self.metrics['dice']:.3f}   IoU {self.metrics['iou']:.3f}\n"
            f"precision {self.metrics['precision']:.3f}   "
            f"recall {self.metrics['recall']:.3f}\n"
            # The figures count level-0 pixels; only the error map is at 1/d.
            f"counted in level-0 pixels (error map at 1/{d})"
        )
        errors = np.zeros(pred.shape, np.uint8)
        errors[pred & ~truth & valid] = FALSE_POSITIVE
        errors[~pred & truth & valid] = FALSE_NEGATIVE
        add_mask_layer(
            self.viewer,
            errors,
            slide,
            d,
            name=f"errors: {pred_layer.name}",
            opacity=0.7,
            colormap=DirectLabelColormap(color_dict=ERROR_COLOURS),
        )
        contour = add_mask_layer(
            self.viewer,
            pred.astype(np.uint8),
            slide,
            d,
            name=f"contour: {pred_layer.name}",
            opacity=1.0,
            colormap=DirectLabelColormap(
                color_dict={0: "transparent", 1: "#00ff66", None: "transparent"}
            ),
        )
        contour.contour = 2
        return self.metrics


__all__ = ["ReviewWidget", "FALSE_POSITIVE", "FALSE_NEGATIVE"]
