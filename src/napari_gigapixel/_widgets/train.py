"""Train widget: whole-slide U-Net training with live curves and preview.

The user picks slide layer(s) and mask layer(s), a new model (size preset) or
a ``.keras`` model to continue, the loss, steps, learning rate and memory
budget, and presses Start. The engine's ``train`` generator runs in a spawned
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
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning

from ..core.errors import GigapixelError
from ..core.events import (
    CheckpointEvent,
    Finished,
    Message,
    PreviewEvent,
    Progress,
    StepEvent,
)
from ._jobs import JobRelay, stop_on_close
from ._layers import (
    LayerError,
    level0_shape,
    mask_from_labels,
    overlay_kwargs,
    probability_colormap,
    slide_path,
)
from ._plot import CurvesPlot

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


class TrainWidget(Container):
    """Train a whole-slide U-Net on slide layers and their mask layers.

    Parameters
    ----------
    napari_viewer
        The viewer whose slide and mask layers are trained on.
    """

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
        self.loss = ComboBox(label="loss", choices=list(LOSSES), value="dice+bce")
        self.steps = SpinBox(label="steps", min=1, max=1_000_000, value=50)
        self.lr = FloatSpinBox(label="learning rate", min=1e-6, max=1.0, step=1e-4, value=1e-3)
        self.lr.native.setDecimals(6)
        self.memory_gb = FloatSpinBox(
            label="memory (GiB)",
            min=0.25,
            max=1024,
            step=0.25,
            value=2.0,
            tooltip="Budget for one tile's forward and backward pass; sets the tile size.",
        )
        self.tile = ComboBox(
            label="tile (px)",
            choices=list(TILES),
            value="auto",
            tooltip="auto: the largest tile that fits the memory budget.",
        )
        self.out = FileEdit(
            label="save model",
            mode="w",
            filter="Keras model (*.keras)",
            value=os.path.join(os.path.expanduser("~"), "tissue_unet.keras"),
        )
        self.start_button = PushButton(text="Start")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.step_bar = ProgressBar(label="steps", min=0, max=1, value=0)
        self.tile_bar = ProgressBar(label="tiles", min=0, max=1, value=0)
        self.status = Label(label="status", value="idle")
        self.plot = CurvesPlot()
        self.extend(
            [
                self.slides,
                self.masks,
                self.model,
                self.resume,
                self.loss,
                self.steps,
                self.lr,
                self.memory_gb,
                self.tile,
                self.out,
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
        self._inputs = [
            self.slides,
            self.masks,
            self.model,
            self.resume,
            self.loss,
            self.steps,
            self.lr,
            self.memory_gb,
            self.tile,
            self.out,
            self.start_button,
        ]
        self.relay = JobRelay(self._on_event, self._on_error, self._on_done)
        self._close_filter = stop_on_close(self.relay, self.native)
        self.start_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        napari_viewer.layers.events.inserted.connect(self.reset_choices)
        napari_viewer.layers.events.removed.connect(self.reset_choices)
        self._slide_layers: list[Any] = []
        self.config: Any = None
        self.events: list[Any] = []
        self.result: Finished | None = None
        self.error: BaseException | None = None
        self.checkpoint: str | None = None
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

    # -- configuration -----------------------------------------------------

    def make_config(self) -> Any:
        """Build the engine's ``TrainConfig`` from the fields (raises ``GigapixelError``)."""
        from ..core.training import TrainConfig

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
        return TrainConfig(
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
        )

    # -- actions -----------------------------------------------------------

    def start(self, *_: Any) -> None:
        """Start training in a worker process (the Start button)."""
        if self.relay.running:
            return
        try:
            cfg = self.make_config()
        except GigapixelError as exc:
            show_error(str(exc))
            self.status.value = "not started: see notification"
            return
        self.config = cfg
        self.events = []
        self.result = None
        self.error = None
        self.checkpoint = None
        self.plot.clear()
        self.step_bar.max = cfg.steps
        self.step_bar.value = 0
        self.tile_bar.value = 0
        self.status.value = "starting worker (loading TensorFlow)..."
        self._set_running(True)
        self._t0 = time.monotonic()
        self.relay.start(TRAIN_TARGET, cfg)

    def stop(self, *_: Any) -> None:
        """Stop after the current tile; the last checkpoint stays (the Stop button)."""
        if self.relay.running:
            self.status.value = "stopping after this tile..."
            self.stop_button.enabled = False
            self.relay.stop()

    def _set_running(self, running: bool) -> None:
        try:
            for w in self._inputs:
                w.enabled = not running
            self.stop_button.enabled = running
        except RuntimeError:  # the viewer closed and Qt deleted the widgets
            pass

    # -- events (main thread) ----------------------------------------------

    def _on_event(self, ev: Any) -> None:
        self.events.append(ev)
        if self.relay.closed:  # widget or viewer closed: leave the layers alone
            return
        if isinstance(ev, StepEvent):
            self._on_step(ev)
        elif isinstance(ev, Progress):
            self.tile_bar.max = max(int(ev.total), 1)
            self.tile_bar.value = min(int(ev.done), self.tile_bar.max)
        elif isinstance(ev, PreviewEvent):
            self._on_preview(ev)
        elif isinstance(ev, CheckpointEvent):
            self.checkpoint = ev.path
            LAST_MODEL["path"] = ev.path
        elif isinstance(ev, Message):
            if ev.level in ("warning", "error"):
                show_warning(ev.text)
            self.status.value = ev.text
        elif isinstance(ev, Finished):
            self.result = ev
            model = self.checkpoint or (self.config.out if self.config else None)
            if model and os.path.exists(model):
                LAST_MODEL["path"] = model
            what = "stopped" if ev.stopped else "finished"
            steps = [e for e in self.events if isinstance(e, StepEvent)]
            pace = (
                f" after {steps[-1].step} steps, {steps[-1].seconds:.1f} s/step" if steps else ""
            )
            self.status.value = f"{what}{pace}; model: {os.path.basename(model or '-')}"
            show_info(f"Training {what}. Model: {model}")

    def _on_step(self, ev: StepEvent) -> None:
        self.plot.add_point(ev.step, ev.loss, ev.dice)
        self.step_bar.max = max(int(ev.total_steps), 1)
        self.step_bar.value = min(int(ev.step), self.step_bar.max)
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

    def _on_error(self, exc: BaseException) -> None:
        self.error = exc
        if self.relay.closed:
            return
        show_error(str(exc))
        self.status.value = "failed: see notification"

    def _on_done(self) -> None:
        self._set_running(False)
        self.tile_bar.value = self.tile_bar.max if self.result else self.tile_bar.value


__all__ = ["TrainWidget", "LAST_MODEL", "TRAIN_TARGET"]
