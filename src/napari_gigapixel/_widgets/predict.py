"""Predict widget: tiled inference of a trained model on a slide layer.

Inference runs in a spawned worker process (the engine's ``predict``
generator, TensorFlow never in napari's process) and writes an OME-Zarr
pyramid atomically; when it finishes the widget adds the predicted mask as a
multiscale Labels layer overlaying the slide and, optionally, the probability
as an Image layer.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
)
from napari.layers import Image
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info

from ..core.events import Finished, Progress
from ._jobs import JobWidgetMixin, set_progress
from ._layers import LayerError, overlay_kwargs, probability_colormap, slide_path
from ._resolution import ResolutionPicker
from ._train_inputs import Section
from .train import LAST_MODEL

PREDICT_TARGET = "napari_gigapixel.core.inference:predict"
#: Predicted tissue in green, unlike the cyan of the masks a user paints.
PREDICTION_COLOURS = {0: "transparent", 1: "#39ff14", None: "#39ff14"}


def _empty(value: Any) -> bool:
    return value is None or str(value) in ("", ".")


class PredictWidget(JobWidgetMixin, Container):
    """Run a trained model on a slide layer and show the predicted mask.

    Parameters
    ----------
    napari_viewer
        The viewer whose slide layers are predicted on.
    """

    job_target = PREDICT_TARGET

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.model = FileEdit(
            label="model",
            mode="r",
            filter="Keras model (*.keras)",
            tooltip="A .keras model; empty: the model trained last in this session.",
        )
        self.slide = ComboBox(label="slide", choices=self._slide_choices)
        self.resolution = ResolutionPicker("predict")
        self.out = FileEdit(label="output", mode="w", filter="OME-Zarr (*.ome.zarr *.zarr)")
        self.overwrite = CheckBox(text="overwrite output", value=False)
        self.probability = CheckBox(text="also add the probability image", value=False)
        self.tta = self._tta_box()
        self.resolution.tta = self.tta.value
        self.clean_fields = self._clean_fields()
        self.clean_section = Section("mask clean-up", self.clean_fields)
        self.clean_section.set_note(self._clean_note())
        for field in self.clean_fields:
            field.changed.connect(lambda _v: self.clean_section.set_note(self._clean_note()))
        self.run_button = PushButton(text="Predict")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.bar = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="status", value="idle")
        self.extend(
            [
                self.model,
                self.slide,
                self.resolution,
                self.resolution.info,
                self.out,
                self.overwrite,
                self.probability,
                self.tta,
                self.clean_section.header,
                *self.clean_fields,
                self.run_button,
                self.stop_button,
                self.bar,
                self.status,
            ]
        )
        # napari's theme draws labels wider than magicgui measures them: add room.
        for widget in self:
            row = widget._labeled_widget()
            if row is not None:
                row.label_width = row.label_width + 16
        # Late-bound: show_error is looked up here at call time (tests replace it).
        self._setup_job(
            self.run_button,
            self.stop_button,
            [
                self.model,
                self.slide,
                self.resolution,
                self.out,
                self.overwrite,
                self.probability,
                self.tta,
                *self.clean_fields,
            ],
            lambda text: show_error(text),
        )
        self.slide.changed.connect(self._suggest_out)
        self.slide.changed.connect(self._update_resolutions)
        self.model.changed.connect(self._update_resolutions)
        self.tta.changed.connect(self._tta_changed)
        napari_viewer.layers.events.inserted.connect(self.reset_choices)
        napari_viewer.layers.events.removed.connect(self.reset_choices)
        self.layers: list[Any] = []
        self._slide_layer: Any = None
        self._suggest_out(self.slide.value)
        self.use_last_model()
        self._update_resolutions()

    def _tta_box(self) -> ComboBox:
        """Test-time augmentation, defaulting as ``PredictConfig`` (and ``predict --tta``) do."""
        from ..core.inference import PredictConfig

        return ComboBox(
            label="test-time",
            choices=[
                ("mirror images, two darker (4 passes)", "half-darker"),
                ("mirror images (4 passes)", "flips"),
                ("mirror images, also darker (8 passes)", "flips+darker"),
                ("none (1 pass)", "none"),
            ],
            value=PredictConfig.tta,
            tooltip="Test-time augmentation (predict --tta): the slide and its three mirror "
            "images are predicted and their probabilities averaged; 'two darker' reads two "
            "of the mirror images with every stain 20% stronger (the default), 'also darker' "
            "adds the same four darker to the four as they are; each pass costs the model's "
            "time once.",
        )

    def _clean_fields(self) -> list[Any]:
        """The clean-up settings, defaults from ``PredictConfig`` (as the CLI's)."""
        from ..core.inference import PredictConfig

        d = PredictConfig(model="", image=None, out="")
        spec = [
            (
                "min_width_um",
                "min width (um)",
                d.min_width_um,
                "strands and specks (pen, dust, fibres) narrower than this are removed; 0: off",
            ),
            (
                "min_object_um2",
                "min object (um\u00b2)",
                d.min_object_um2,
                "tissue objects smaller than this are removed; 0: off",
            ),
            (
                "min_hole_um2",
                "min hole (um\u00b2)",
                d.min_hole_um2,
                "enclosed holes smaller than this are filled; 0: off",
            ),
        ]
        fields = []
        for name, label, value, tip in spec:
            f = FloatSpinBox(
                name=name, label=label, value=value, min=0.0, max=1e9, step=1.0, tooltip=tip
            )
            fields.append(f)
            setattr(self, name, f)
        return fields

    def _clean_note(self) -> str:
        vals = [float(f.value) for f in self.clean_fields]
        if not any(vals):
            return "off"
        # Each value named: objects and holes share a unit (and a default).
        parts = zip(("strands", "objects", "holes"), vals, ("um", "um\u00b2", "um\u00b2"))
        return ", ".join(f"{name} {v:g} {unit}" if v else f"{name} off" for name, v, unit in parts)

    def _slide_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        # Slides are RGB images; previews and probabilities are not.
        return [(ly.name, ly) for ly in self.viewer.layers if isinstance(ly, Image) and ly.rgb]

    def _update_resolutions(self, _value: Any = None) -> None:
        """List the slide's resolutions, the model's own first, with their cost."""
        layer = self.slide.value
        try:
            path = slide_path(layer) if layer is not None else None
        except LayerError:
            path = None
        model = None if _empty(self.model.value) else str(self.model.value)
        self.resolution.update_for(path, model_path=model)

    def _tta_changed(self, tta: str) -> None:
        """The estimate counts the model's passes (:func:`.resolution_cost.predict_cost`)."""
        self.resolution.tta = tta
        self._update_resolutions()

    def use_last_model(self) -> None:
        """Fill an empty model field with the model trained last in this session."""
        if _empty(self.model.value) and LAST_MODEL["path"]:
            self.model.value = LAST_MODEL["path"]

    def _suggest_out(self, layer: Any) -> None:
        if layer is None or not _empty(self.out.value):
            return
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in layer.name)
        self.out.value = os.path.join(os.path.expanduser("~"), f"{stem}_prediction.ome.zarr")

    def make_config(self) -> Any:
        """Build the engine's ``PredictConfig`` from the fields."""
        from ..core.inference import PredictConfig

        self.use_last_model()
        model = str(self.model.value) if not _empty(self.model.value) else ""
        if not model or not os.path.isfile(model):
            raise LayerError(
                f"{model or 'model'}: choose a trained .keras model file (or train one first)."
            )
        layer = self.slide.value
        if layer is None:
            raise LayerError("Open a slide first (File > Open, or File > Open Sample).")
        out = str(self.out.value)
        if _empty(out):
            raise LayerError("Choose an output path for the prediction (.ome.zarr).")
        self._slide_layer = layer
        from ..core.model_io import read_model_meta
        from ..core.preflight import check_output

        # Checked here, before a worker starts: a foreign model file, an
        # existing output without "overwrite output", a folder we cannot write.
        read_model_meta(model)
        check_output(out, overwrite=bool(self.overwrite.value), folder=True, what="prediction")
        return PredictConfig(
            model=model,
            image=slide_path(layer),
            out=out,
            overwrite=bool(self.overwrite.value),
            write_probability=bool(self.probability.value),
            resolution=self.resolution.value,
            min_width_um=float(self.min_width_um.value),
            min_object_um2=float(self.min_object_um2.value),
            min_hole_um2=float(self.min_hole_um2.value),
            tta=str(self.tta.value),
        )

    def _prepare_run(self, cfg: Any) -> None:
        self.bar.value = 0

    def _handle(self, ev: Any) -> None:
        if isinstance(ev, Progress):
            set_progress(self.bar, ev.done, ev.total)
            self.status.value = ev.message or f"{ev.stage}: {ev.done}/{ev.total}"
        elif isinstance(ev, Finished):
            if ev.stopped:
                self.status.value = "stopped; no output written"
                return
            self.show_prediction(self.config.out, self._slide_layer)
            self.status.value = f"done: {os.path.basename(str(self.config.out))}"
            show_info(f"Prediction written to {self.config.out}")

    def show_prediction(self, path: str, slide: Any) -> list[Any]:
        """Add a written prediction as multiscale Labels (and probability) layers."""
        from ..core.inference import open_prediction

        store = open_prediction(path)
        d = float(store.downsample)
        kwargs = overlay_kwargs(slide, d)
        # A region-of-interest prediction starts at a level-0 offset.
        s = np.asarray(slide.scale[-2:], float)
        kwargs["translate"] = tuple(
            np.asarray(kwargs["translate"]) + s * np.asarray(store.offset, float)
        )
        stem = f"prediction: {slide.name}"
        for name in (stem, f"probability: {slide.name}"):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        meta = {"path": str(path), "downsample": d, "kind": "dense", "slide_layer": slide.name}
        # napari refuses a one-level "multiscale" list: pass the array itself then.
        masks = list(store.mask) if len(store.mask) > 1 else store.mask[0]
        probs = list(store.probability) if len(store.probability) > 1 else store.probability[0]
        layers = [
            self.viewer.add_labels(
                masks,
                name=stem,
                multiscale=len(store.mask) > 1,
                opacity=0.5,
                metadata=meta,
                colormap=DirectLabelColormap(color_dict=PREDICTION_COLOURS),
                **kwargs,
            )
        ]
        if self.probability.value:
            layers.append(
                self.viewer.add_image(
                    probs,
                    name=f"probability: {slide.name}",
                    multiscale=len(store.probability) > 1,
                    colormap=probability_colormap(),
                    contrast_limits=(0, 255),
                    opacity=0.5,
                    blending="translucent",
                    metadata=dict(meta),
                    **kwargs,
                )
            )
        self.layers = layers
        return layers


__all__ = ["PredictWidget", "PREDICT_TARGET"]
