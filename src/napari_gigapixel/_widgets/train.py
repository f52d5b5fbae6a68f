"""Train widget: whole-slide U-Net training with live curves and preview.

The user picks slide layer(s) and mask layer(s), a new model (size preset) or
a ``.keras`` model to continue, the loss, steps, learning rate and memory
budget, optionally validation data (a validation slide and its mask, or a
rectangle drawn in a Shapes layer over the training slide, whose labels are
then left out of training), and presses Start. The engine's ``train`` generator runs in a spawned
worker process (TensorFlow never enters napari's process); a napari thread
worker relays its events to the main thread, where this widget grows the loss
and Dice plot, moves the progress bars and updates the preview layer.
"""

from __future__ import annotations

import os
import time
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
    Select,
    SpinBox,
)
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info

from ..core.events import (
    CheckpointEvent,
    Finished,
    PreviewEvent,
    Progress,
    StepEvent,
    ValidationEvent,
)
from ._jobs import JobWidgetMixin, set_progress
from ._layers import (
    LayerError,
    level0_shape,
    mask_from_labels,
    overlay_kwargs,
    probability_colormap,
    shapes_roi,
    slide_path,
)
from ._plot import CurvesPlot
from ._resolution import ResolutionPicker

TRAIN_TARGET = "napari_gigapixel.core.training:train"
LOSSES = ("dice+bce", "bce", "dice")
TILES = ("auto", 256, 512, 1024, 2048, 4096, 8192)
#: The model file the last run in this napari session wrote (Predict offers it).
LAST_MODEL: dict[str, str | None] = {"path": None}


#: Model size presets when the engine defines none: encoder/decoder widths.
SIZE_PRESETS: dict[str, dict[str, tuple[int, ...]]] = {
    "small (~4.8k parameters, like the paper's)": {},
    "medium (~31k parameters)": {"widths": (16, 24, 32), "decoder_widths": (8, 12, 16)},
    "large (~123k parameters)": {"widths": (32, 48, 64), "decoder_widths": (16, 24, 32)},
}


def _engine_presets() -> dict[str, Any] | None:
    from ..core import unet

    return getattr(unet, "PRESETS", None) or getattr(unet, "MODEL_PRESETS", None)


def model_presets() -> list[str]:
    """Names of the model size presets (no TensorFlow import)."""
    presets = _engine_presets()
    return list(presets) if presets else list(SIZE_PRESETS)


def model_config(preset: str) -> Any:
    """The engine's ``ModelConfig`` for a preset name."""
    from ..core import unet

    presets = _engine_presets()
    if presets and preset in presets:
        value = presets[preset]
        return value() if callable(value) else value
    return unet.ModelConfig(**SIZE_PRESETS.get(preset, {}))


def preview_downsample(slide_shape: tuple[int, int], max_pixels: int = 2_000_000) -> int:
    """Finest power-of-two preview level (at least 4) under ``max_pixels``.

    The preview travels from the worker process after every step, so it is
    kept to a couple of megapixels whatever the slide size.
    """
    d = 4
    while (slide_shape[0] / d) * (slide_shape[1] / d) > max_pixels:
        d *= 2
    return d


def _fmt_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class TrainWidget(JobWidgetMixin, Container):
    """Train a whole-slide U-Net on slide layers and their mask layers.

    Parameters
    ----------
    napari_viewer
        The viewer whose slide and mask layers are trained on.
    """

    job_target = TRAIN_TARGET
    stopping_text = "stopping after this tile..."

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.slides = Select(
            label="slides",
            choices=self._slide_choices,
            tooltip="Slide layer(s) opened from files; pair each with a mask below.",
        )
        self.masks = Select(
            label="masks",
            choices=self._mask_choices,
            tooltip="One mask layer per slide, in the same order.",
        )
        self.model = ComboBox(label="new model", choices=model_presets())
        self.resume = FileEdit(
            label="or continue", mode="r", filter="Keras model (*.keras)", value=""
        )
        # The engine's defaults are the measured recipe (bce, cosine-decayed lr).
        from ..core.training import TrainConfig as _Defaults

        self.loss = ComboBox(label="loss", choices=list(LOSSES), value=_Defaults.loss)
        self.steps = SpinBox(label="steps", min=1, max=1_000_000, value=_Defaults.steps)
        self.lr = FloatSpinBox(
            label="learning rate", min=1e-6, max=1.0, step=1e-4, value=_Defaults.lr
        )
        self.lr.native.setDecimals(6)
        self.memory_gb = FloatSpinBox(
            label="memory (GiB)",
            min=0.25,
            max=1024,
            step=0.25,
            value=_Defaults.memory_gb,
            tooltip="Peak memory budget of the training process (as train --memory-gb); "
            "sets the tile size.",
        )
        self.tile = ComboBox(
            label="tile (px)",
            choices=list(TILES),
            value="auto",
            tooltip="auto: the largest tile that fits the memory budget.",
        )
        self.val_slide = ComboBox(
            label="validation slide",
            choices=self._slide_choices,
            nullable=True,
            value=None,
            tooltip="Optional: a slide never trained on, scored every few steps.",
        )
        self.val_mask = ComboBox(
            label="validation mask",
            choices=self._mask_choices,
            nullable=True,
            value=None,
            tooltip="The mask of the validation slide.",
        )
        self.val_region = ComboBox(
            label="or validation region",
            choices=self._shapes_choices,
            nullable=True,
            value=None,
            tooltip=(
                "Optional: a Shapes layer over the (first) training slide; the rectangle "
                "around its shapes is scored and its labels are left out of training."
            ),
        )
        self.val_every = SpinBox(
            label="validate every",
            min=1,
            max=100_000,
            value=_Defaults.val_every,
            tooltip="Steps between validations; the best model is kept as <name>.best.keras.",
        )
        self.resolution = ResolutionPicker("train")
        self.out = FileEdit(
            label="save model",
            mode="w",
            filter="Keras model (*.keras)",
            value=os.path.join(os.path.expanduser("~"), "tissue_unet.keras"),
        )
        self.overwrite = CheckBox(
            text="overwrite output",
            value=False,
            tooltip="Replace the model file if it exists (as train --overwrite); "
            "continuing a model into its own file needs no tick.",
        )
        self.start_button = PushButton(text="Start")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.step_bar = ProgressBar(label="steps", min=0, max=1, value=0)
        self.tile_bar = ProgressBar(label="tiles", min=0, max=1, value=0)
        self.status = Label(label="status", value="idle")
        self.plot = CurvesPlot()
        inputs = [
            self.slides,
            self.masks,
            self.model,
            self.resume,
            self.loss,
            self.steps,
            self.lr,
            self.memory_gb,
            self.tile,
            self.val_slide,
            self.val_mask,
            self.val_region,
            self.val_every,
            self.resolution,
            self.resolution.info,
            self.out,
            self.overwrite,
        ]
        self.extend(
            [
                *inputs,
                self.start_button,
                self.stop_button,
                self.step_bar,
                self.tile_bar,
                self.status,
            ]
        )
        self.native.layout().addWidget(self.plot)
        # A few rows are enough for the layer lists; the plot gets the room.
        for sel in (self.slides, self.masks):
            sel.native.setMaximumHeight(72)
        # Late-bound: show_error is looked up here at call time (tests replace it).
        self._setup_job(self.start_button, self.stop_button, inputs, lambda text: show_error(text))
        napari_viewer.layers.events.inserted.connect(self.reset_choices)
        napari_viewer.layers.events.removed.connect(self.reset_choices)
        self.slides.changed.connect(self._update_resolutions)
        self.memory_gb.changed.connect(self._update_resolutions)
        self._slide_layers: list[Any] = []
        self.events: list[Any] = []
        self.checkpoint: str | None = None
        self.best: ValidationEvent | None = None  # the last validation of the run
        self._t0 = 0.0

    def _slide_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        # Slides are RGB images; previews and probabilities are not.
        return [(ly.name, ly) for ly in self.viewer.layers if isinstance(ly, Image) and ly.rgb]

    def _mask_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        derived = ("errors:", "contour:", "prediction:")
        return [
            (ly.name, ly)
            for ly in self.viewer.layers
            if isinstance(ly, Labels) and not ly.name.startswith(derived)
        ]

    def _shapes_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(ly.name, ly) for ly in self.viewer.layers if isinstance(ly, Shapes)]

    def _update_resolutions(self, _value: Any = None) -> None:
        """List the first selected slide's resolutions with their cost at this budget."""
        slides = list(self.slides.value)
        try:
            path = slide_path(slides[0]) if slides else None
        except LayerError:
            path = None
        self.resolution.update_for(path, memory_gb=float(self.memory_gb.value))

    # -- configuration -----------------------------------------------------

    def _validation(self, slides: list[Any]) -> dict[str, Any]:
        """TrainConfig's validation fields from the validation inputs."""
        out: dict[str, Any] = {"val_every": int(self.val_every.value)}
        vslide, vmask = self.val_slide.value, self.val_mask.value
        if (vslide is None) != (vmask is None):
            raise LayerError("Pick both a validation slide and its mask, or neither.")
        if vslide is not None:
            if any(vslide is s for s in slides):
                raise LayerError(
                    f"'{vslide.name}' is a training slide; to validate on part of it, draw "
                    "a rectangle in a Shapes layer and pick it as the validation region."
                )
            out["val_images"] = [slide_path(vslide)]
            out["val_masks"] = [mask_from_labels(vmask, vslide)]
        if self.val_region.value is not None:
            out["val_roi"] = [shapes_roi(self.val_region.value, slides[0])] + [None] * (
                len(slides) - 1
            )
        return out

    def make_config(self) -> Any:
        """Build the engine's ``TrainConfig`` from the fields (raises ``GigapixelError``)."""
        from ..core.resolution import Resolution
        from ..core.training import TrainConfig, preflight

        slides = list(self.slides.value)
        masks = list(self.masks.value)
        if not slides:
            raise LayerError("Select at least one slide layer to train on.")
        if len(masks) != len(slides):
            raise LayerError(
                f"Select one mask layer per slide: {len(slides)} slide(s) but "
                f"{len(masks)} mask(s) selected."
            )
        images = [slide_path(s) for s in slides]
        # Masks travel as small numpy arrays at their annotation level.
        ann = [mask_from_labels(m, s) for m, s in zip(masks, slides)]
        out = str(self.out.value)
        if not out or out == "." or os.path.isdir(out):
            raise LayerError("Choose a file name to save the model to (e.g. tissue_unet.keras).")
        if not out.endswith(".keras"):
            out += ".keras"
        resume = str(self.resume.value) if self.resume.value else ""
        resume = resume if resume not in ("", ".") else None
        if resume is not None and not os.path.isfile(resume):
            raise LayerError(f"{resume}: no such model file to continue from.")
        self._slide_layers = slides
        cfg = TrainConfig(
            images=images,
            masks=ann,
            out=out,
            steps=int(self.steps.value),
            loss=self.loss.value,
            lr=float(self.lr.value),
            tile=self.tile.value,
            memory_gb=float(self.memory_gb.value),
            model=model_config(self.model.value),
            resume=resume,
            preview_downsample=preview_downsample(level0_shape(slides[0])),
            overwrite=bool(self.overwrite.value),
            **self._validation(slides),
            resolution=self.resolution.value or Resolution(),
        )
        # Every file and the output location checked here, in napari's process
        # (no TensorFlow needed): a bad path is reported before a worker starts.
        preflight(cfg)
        return cfg

    # -- actions -----------------------------------------------------------

    def _prepare_run(self, cfg: Any) -> None:
        self.events = []
        self.checkpoint = None
        self.best = None
        self.plot.clear()
        self.step_bar.max = cfg.steps
        self.step_bar.value = 0
        self.tile_bar.value = 0
        self._t0 = time.monotonic()

    # -- events (main thread) ----------------------------------------------

    def _on_event(self, ev: Any) -> None:
        self.events.append(ev)  # the whole run, also what arrives after a close
        super()._on_event(ev)

    def _handle(self, ev: Any) -> None:
        if isinstance(ev, StepEvent):
            self._on_step(ev)
        elif isinstance(ev, Progress):
            set_progress(self.tile_bar, ev.done, ev.total)
        elif isinstance(ev, PreviewEvent):
            self._on_preview(ev)
        elif isinstance(ev, ValidationEvent):
            self.plot.add_validation(ev.step, ev.loss, ev.dice, ev.best_step)
            self.best = ev
        elif isinstance(ev, CheckpointEvent):
            self.checkpoint = ev.path
            LAST_MODEL["path"] = ev.path
        elif isinstance(ev, Finished):
            model = self.checkpoint or (self.config.out if self.config else None)
            if model and os.path.exists(model):
                LAST_MODEL["path"] = model
            what = "stopped" if ev.stopped else "finished"
            steps = [e for e in self.events if isinstance(e, StepEvent)]
            pace = (
                f" after {steps[-1].step} steps, {steps[-1].seconds:.1f} s/step" if steps else ""
            )
            best = ""
            if self.best is not None and self.best.best_path:
                best = (
                    f"; best: {os.path.basename(self.best.best_path)} (step "
                    f"{self.best.best_step}, val Dice {self.best.best_dice:.3f})"
                )
            self.status.value = f"{what}{pace}; model: {os.path.basename(model or '-')}{best}"
            show_info(f"Training {what}. Model: {model}{best}")

    def _on_step(self, ev: StepEvent) -> None:
        self.plot.add_point(ev.step, ev.loss, ev.dice)
        set_progress(self.step_bar, ev.step, ev.total_steps)
        left = ev.seconds * max(ev.total_steps - ev.step, 0)
        self.status.value = (
            f"step {ev.step}/{ev.total_steps}: {ev.seconds:.2f} s/step, "
            f"peak {ev.peak_rss_bytes / 2**30:.2f} GiB, {_fmt_seconds(left)} left"
        )

    def _on_preview(self, ev: PreviewEvent) -> None:
        if not self._slide_layers:
            return
        slide = self._slide_layers[min(ev.image_index, len(self._slide_layers) - 1)]
        name = f"preview: {slide.name}"
        prob = np.asarray(ev.probability, dtype=np.float32)
        kwargs = overlay_kwargs(slide, float(ev.downsample))
        s = np.asarray(slide.scale[-2:], float)
        kwargs["translate"] = tuple(
            np.asarray(kwargs["translate"]) + s * np.asarray(ev.offset, float)
        )
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = prob
            layer.scale = kwargs["scale"]
            layer.translate = kwargs["translate"]
        else:
            self.viewer.add_image(
                prob,
                name=name,
                **kwargs,
                colormap=probability_colormap(),
                contrast_limits=(0.0, 1.0),
                opacity=0.5,
                blending="translucent",
            )

    def _on_done(self) -> None:
        super()._on_done()
        self.tile_bar.value = self.tile_bar.max if self.result else self.tile_bar.value


__all__ = ["TrainWidget", "LAST_MODEL", "TRAIN_TARGET"]
