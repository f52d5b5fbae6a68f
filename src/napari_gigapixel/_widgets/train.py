"""Train widget: whole-slide U-Net training with live curves and preview.

The user picks slide layer(s) and mask layer(s), a new model (size preset) or
a ``.keras`` model to continue, the recipe (loss, steps, learning rate,
augmentation, memory budget; tile, schedule, warmup, seed and input switches
under "advanced recipe", every default ``TrainConfig``'s), the working
resolution (a continued model keeps its own), optionally validation data (a
validation slide and its mask, or a rectangle drawn in a Shapes layer over the
training slide, whose labels are then left out of training), and presses Start.
The input groups live in :mod:`._train_inputs`. The engine's ``train``
generator runs in a spawned worker process (TensorFlow never enters napari's
process); a napari thread worker relays its events to the main thread, where
this widget grows the loss and Dice plot, moves the progress bars and updates
the preview layer.
"""

from __future__ import annotations

import os
import time
from typing import Any

from magicgui.widgets import (
    CheckBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    Select,
)
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QSizePolicy

from ..core.events import (
    CheckpointEvent,
    Finished,
    PreviewEvent,
    Progress,
    StepEvent,
    ValidationEvent,
)
from ._jobs import JobWidgetMixin, set_progress
from ._layers import LayerError, level0_shape, mask_from_labels, show_preview, slide_path
from ._plot import CurvesPlot
from ._resolution import ResolutionPicker
from ._train_inputs import RecipeInputs, ValidationInputs, preview_downsample, widen_labels

TRAIN_TARGET = "napari_gigapixel.core.training:train"
#: The model file the last run in this napari session wrote (Predict offers it).
LAST_MODEL: dict[str, str | None] = {"path": None}


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
        self.recipe = RecipeInputs()
        self.resume = FileEdit(
            label="or continue",
            mode="r",
            filter="Keras model (*.keras)",
            value="",
            tooltip="A checkpoint to train further: its model, resolution and input "
            "convention are kept.",
        )
        r = self.recipe
        self.model, self.loss, self.steps, self.lr = r.model, r.loss, r.steps, r.lr
        self.augment, self.memory_gb, self.tile = r.augment, r.memory_gb, r.tile
        self.validation = ValidationInputs(
            self._slide_choices, self._mask_choices, self._shapes_choices
        )
        v = self.validation
        self.val_slide, self.val_mask, self.val_region, self.val_every = v.widgets
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
        # The message takes the row (not half of it) and wraps instead of widening the dock.
        self.status.native.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        self.status.native.setWordWrap(True)
        self.plot = CurvesPlot()
        buttons = Container(
            layout="horizontal", labels=False, widgets=[self.start_button, self.stop_button]
        )
        buttons.margins = (0, 0, 0, 0)
        inputs = [
            self.slides,
            self.masks,
            self.model,
            self.resume,
            *r.main,
            self.resolution,
            self.resolution.info,
            self.out,
            self.overwrite,
        ]
        self.extend(
            [
                *inputs,
                v.section.header,
                *v.widgets,
                r.section.header,
                *r.advanced,
                buttons,
                self.step_bar,
                self.tile_bar,
                self.status,
            ]
        )
        inputs += [*v.widgets, *r.advanced]
        # One section open at a time: the dock then fits a 1000-pixel-high screen.
        for a, b in ((v.section, r.section), (r.section, v.section)):
            a.header.native.toggled.connect(lambda on, b=b: b.show(False) if on else None)
        self.native.layout().addWidget(self.plot)
        # A few rows are enough for the layer lists; the plot gets the room.
        for sel in (self.slides, self.masks):
            sel.native.setMaximumHeight(56)
        widen_labels(self)
        # Late-bound: show_error is looked up here at call time (tests replace it).
        self._setup_job(self.start_button, self.stop_button, inputs, lambda text: show_error(text))
        napari_viewer.layers.events.inserted.connect(self.reset_choices)
        napari_viewer.layers.events.removed.connect(self.reset_choices)
        self.slides.changed.connect(self._update_resolutions)
        self.memory_gb.changed.connect(self._update_resolutions)
        self.resume.changed.connect(self._on_resume)
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

    def _on_resume(self, _value: Any = None) -> None:
        """A checkpoint keeps its own model, input convention and resolution.

        The size preset and the input switches (white balance, standardize,
        head prior) shape a new model only, so they are greyed out while a
        checkpoint is chosen (``train --resume`` refuses their flags).
        """
        self._lock_new_model_fields()
        self._update_resolutions()

    def _lock_new_model_fields(self) -> None:
        fresh = self._resume_path() is None
        for w in (self.model, *self.recipe.switches):
            w.enabled = fresh

    def _set_running(self, running: bool) -> None:
        super()._set_running(running)
        if not running and not self.relay.closed:  # unlocking: those fields stay off
            self._lock_new_model_fields()

    def _update_resolutions(self, _value: Any = None) -> None:
        """List the first selected slide's resolutions with their cost at this budget.

        While a checkpoint is continued, the one entry is the resolution it was
        trained at (a resumed run keeps it).
        """
        slides = list(self.slides.value)
        try:
            path = slide_path(slides[0]) if slides else None
        except LayerError:
            path = None
        self.resolution.update_for(
            path, memory_gb=float(self.memory_gb.value), model_path=self._resume_path()
        )

    def _resume_path(self) -> str | None:
        """The checkpoint to continue, or None (an emptied FileEdit holds a folder)."""
        value = str(self.resume.value) if self.resume.value else ""
        return value if value not in ("", ".") and not os.path.isdir(value) else None

    # -- configuration -----------------------------------------------------

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
        resume = self._resume_path()
        if resume is not None and not os.path.isfile(resume):
            raise LayerError(f"{resume}: no such model file to continue from.")
        self._slide_layers = slides
        cfg = TrainConfig(
            images=images,
            masks=ann,
            out=out,
            **self.recipe.fields(),
            resume=resume,
            preview_downsample=preview_downsample(level0_shape(slides[0])),
            overwrite=bool(self.overwrite.value),
            **self.validation.fields(slides),
            # None with a checkpoint: the run keeps the resolution it was trained at.
            resolution=None if resume else (self.resolution.value or Resolution()),
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
        if self._slide_layers:
            slide = self._slide_layers[min(ev.image_index, len(self._slide_layers) - 1)]
            show_preview(self.viewer, slide, ev.probability, ev.downsample, ev.offset)

    def _on_done(self) -> None:
        super()._on_done()
        self.tile_bar.value = self.tile_bar.max if self.result else self.tile_bar.value


__all__ = ["TrainWidget", "LAST_MODEL", "TRAIN_TARGET"]
