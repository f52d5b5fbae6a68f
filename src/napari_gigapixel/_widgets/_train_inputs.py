"""The Train widget's input groups (parts of that widget, not widgets of their own).

* :class:`RecipeInputs`: the model preset, loss, steps, learning rate,
  augmentation and memory budget, and, in a collapsed "advanced recipe"
  section, the tile size, the learning-rate schedule and warmup, the border
  and pen weights, the seed and the white balance / standardisation / head-prior
  switches. Every default is read from
  :class:`~napari_gigapixel.core.train_config.TrainConfig` when the widget is
  built, so the widget, the CLI and the API share one recipe.
* :class:`ValidationInputs`: a validation slide and its mask, or a rectangle
  drawn in a Shapes layer over the training slide, and how often to score it.

No TensorFlow here: only the dataclasses and the layer helpers are imported.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, PushButton, SpinBox

from ..core.losses import LOSSES
from ..core.stain import AUGMENT_MODES, augment_mode
from ..core.train_config import LR_SCHEDULES, MAX_BORDER_WEIGHT, TrainConfig
from ..core.unet import PRESET_NOTES, PRESETS, preset_name
from ._layers import LayerError, mask_from_labels, shapes_roi, slide_path

#: Tile sizes offered (pixels of the working resolution); "auto" fits the budget.
TILES: tuple[int | str, ...] = ("auto", 256, 512, 1024, 2048, 4096, 8192)

#: Model size presets, labelled for the list: label -> core's preset name
#: (``unet.PRESETS``, the same names as ``train --model-size``).
SIZE_PRESETS: dict[str, str] = {f"{name} ({PRESET_NOTES[name]})": name for name in PRESETS}

#: Augmentations in words (the values are ``TrainConfig.augment``'s modes).
AUGMENT_TEXT = {
    "auto": "auto (ink + pen when white-balanced)",
    "none": "none",
    "flip": "flip (flips, quarter turns)",
    "stain": "stain (H/E/DAB, brightness, contrast)",
    "ink": "ink (pen, dust on the glass recoloured)",
    "pen": "pen (ink + pen strokes drawn on the glass)",
    "pen+flip": "pen+flip (pen + flips, quarter turns)",
    "all": "all (flip + stain + ink)",
}


def model_presets() -> list[str]:
    """Names of the model size presets, smallest first (the recipe's is preselected)."""
    return list(SIZE_PRESETS)


def model_config(preset: str) -> Any:
    """The ``ModelConfig`` of a preset label: the recipe's model with the preset's
    widths (the recipe's model itself for a label that is not a preset)."""
    name = SIZE_PRESETS.get(preset)
    return replace(TrainConfig().model, **(PRESETS[name] if name else {}))


def preview_downsample(slide_shape: tuple[int, int], max_pixels: int = 2_000_000) -> int:
    """Finest power-of-two preview level (at least 4) under ``max_pixels``.

    The preview travels from the worker process after every step, so it is
    kept to a couple of megapixels whatever the slide size.
    """
    d = 4
    while (slide_shape[0] / d) * (slide_shape[1] / d) > max_pixels:
        d *= 2
    return d


class Section:
    """A header button that shows or hides rows of the container they sit in.

    The rows stay children of the widget's own container (one label column);
    they start hidden, and ``header`` (a flat, checkable button) toggles them.

    Parameters
    ----------
    title
        The header's text (an arrow is put before it).
    rows
        The widgets shown and hidden.
    """

    def __init__(self, title: str, rows: list[Any]) -> None:
        self.title = title
        self.note = ""
        self.rows = rows
        self.header = PushButton(text=self._text(False))
        self.header.native.setCheckable(True)
        self.header.native.setStyleSheet("text-align: left; border: none; padding: 2px;")
        self.header.native.toggled.connect(self.show)
        for row in rows:
            row.visible = False

    def _text(self, shown: bool) -> str:
        arrow = "\u25be" if shown else "\u25b8"
        return f"{arrow} {self.title}{': ' + self.note if self.note else ''}"

    @property
    def shown(self) -> bool:
        return self.header.native.isChecked()

    def show(self, shown: bool = True) -> None:
        """Show (or hide) the rows, as a click on the header does."""
        if self.header.native.isChecked() != bool(shown):
            self.header.native.setChecked(bool(shown))  # emits toggled: back here
            return
        self.header.text = self._text(bool(shown))
        for row in self.rows:
            row.visible = bool(shown)

    def set_note(self, note: str) -> None:
        """A few words after the title (what the hidden rows hold)."""
        self.note = note
        self.header.text = self._text(self.shown)


def _weight_box(label: str, value: int, tooltip: str) -> SpinBox:
    """A loss-weight spin box (a whole number from 1, none, to the largest)."""
    return SpinBox(label=label, min=1, max=MAX_BORDER_WEIGHT, value=value, tooltip=tooltip)


class RecipeInputs:
    """The recipe's fields, defaults from ``TrainConfig()`` (the measured recipe).

    ``model``, ``main``, ``section.header`` and ``advanced`` (rows hidden
    until the header is clicked) are rows of the Train widget; ``inputs`` are
    the fields (locked while a run goes).
    """

    def __init__(self) -> None:
        d = TrainConfig()
        recipe = preset_name(d.model)
        self.model = ComboBox(
            label="new model",
            choices=model_presets(),
            value=next((k for k, name in SIZE_PRESETS.items() if name == recipe), None),
            tooltip="Size of a new model; a continued model keeps its own.",
        )
        self.loss = ComboBox(label="loss", choices=list(LOSSES), value=d.loss)
        self.steps = SpinBox(label="steps", min=1, max=1_000_000, value=d.steps)
        self.lr = FloatSpinBox(label="learning rate", min=1e-6, max=1.0, step=1e-4, value=d.lr)
        self.lr.native.setDecimals(6)
        self.augment = ComboBox(
            label="augment",
            choices=[(AUGMENT_TEXT.get(m, m), m) for m in AUGMENT_MODES],
            value=augment_mode(d.augment),
            tooltip="Whole-slide augmentation drawn per step, exact under tiling "
            "(as train --augment).",
        )
        self.memory_gb = FloatSpinBox(
            label="memory (GiB)",
            min=0.25,
            max=1024,
            step=0.25,
            value=d.memory_gb,
            tooltip="Peak memory budget of the training process (as train --memory-gb); "
            "sets the tile size.",
        )
        tiles = list(TILES) if d.tile in TILES else [d.tile, *TILES]
        self.tile = ComboBox(
            label="tile (px)",
            choices=tiles,
            value=d.tile,
            tooltip="auto: the largest tile that fits the memory budget.",
        )
        self.lr_schedule = ComboBox(
            label="lr schedule",
            choices=list(LR_SCHEDULES),
            value=d.lr_schedule,
            tooltip="cosine: down to a small fraction of the learning rate at the last step.",
        )
        self.warmup = SpinBox(
            label="warmup steps",
            min=0,
            max=1_000_000,
            value=d.warmup,
            tooltip="Steps over which the learning rate rises linearly (as train --warmup).",
        )
        self.border_weight = _weight_box(
            "border weight",
            d.border_weight,
            "Loss weight of the labels within 16 px of the other class's: the faint "
            "tissue edge (1: none; as train --border-weight).",
        )
        self.pen_weight = _weight_box(
            "pen weight",
            d.pen_weight,
            "Loss weight of the glass under the pen strokes the augmentation draws "
            "(1: none; as train --pen-weight).",
        )
        self.seed = SpinBox(
            label="seed",
            min=-(2**31),
            max=2**31 - 1,
            value=d.seed,
            tooltip="Seeds the initial weights and the augmentation draws.",
        )
        self.white_balance = CheckBox(
            text="white balance",
            value=d.white_balance,
            tooltip="Scale each slide's glass to one white, cell by cell (the lamp's "
            "shading goes too), here and when predicting. A continued model keeps its own.",
        )
        self.standardize = CheckBox(
            text="standardize",
            value=d.standardize,
            tooltip="Standardise the input with the training slides' per-channel statistics. "
            "A continued model keeps its own.",
        )
        self.head_prior = CheckBox(
            text="head prior",
            value=d.head_prior,
            tooltip="Start the head's bias at the masks' tissue fraction (a new model only).",
        )
        self.switches = Container(
            layout="horizontal",
            labels=False,
            label="input",
            widgets=[self.white_balance, self.standardize, self.head_prior],
        )
        self.switches.margins = (0, 0, 0, 0)
        # Rows below the model choice (the widget puts "or continue" between).
        self.main = [
            self.loss,
            self.steps,
            self.lr,
            self.augment,
            self.memory_gb,
        ]
        self.advanced = [
            self.tile,
            self.lr_schedule,
            self.warmup,
            self.border_weight,
            self.pen_weight,
            self.seed,
            self.switches,
        ]
        self.section = Section("advanced recipe", self.advanced)
        self.inputs = [self.model, *self.main, *self.advanced]

    def fields(self) -> dict[str, Any]:
        """``TrainConfig``'s recipe fields from the inputs."""
        return {
            "model": model_config(self.model.value),
            "steps": int(self.steps.value),
            "loss": self.loss.value,
            "lr": float(self.lr.value),
            "lr_schedule": self.lr_schedule.value,
            "warmup": int(self.warmup.value),
            "border_weight": int(self.border_weight.value),
            "pen_weight": int(self.pen_weight.value),
            "augment": self.augment.value,
            "tile": self.tile.value,
            "memory_gb": float(self.memory_gb.value),
            "seed": int(self.seed.value),
            "white_balance": bool(self.white_balance.value),
            "standardize": bool(self.standardize.value),
            "head_prior": bool(self.head_prior.value),
        }


class ValidationInputs:
    """Validation data: a slide and its mask, and/or a region of the training slide.

    Parameters
    ----------
    slide_choices, mask_choices, shapes_choices
        The Train widget's layer lists (callables, so they follow the viewer).
    """

    def __init__(self, slide_choices: Any, mask_choices: Any, shapes_choices: Any) -> None:
        self.slide = ComboBox(
            label="validation slide",
            choices=slide_choices,
            nullable=True,
            value=None,
            tooltip="Optional: a slide never trained on, scored every few steps.",
        )
        self.mask = ComboBox(
            label="validation mask",
            choices=mask_choices,
            nullable=True,
            value=None,
            tooltip="The mask of the validation slide.",
        )
        self.region = ComboBox(
            label="or validation region",
            choices=shapes_choices,
            nullable=True,
            value=None,
            tooltip=(
                "Optional: a Shapes layer over the (first) training slide; the rectangle "
                "around its shapes is scored and its labels are left out of training."
            ),
        )
        self.every = SpinBox(
            label="validate every",
            min=1,
            max=100_000,
            value=TrainConfig().val_every,
            tooltip="Steps between validations; the best model is kept as <name>.best.keras.",
        )
        self.widgets = [self.slide, self.mask, self.region, self.every]
        self.section = Section("validation", self.widgets)
        for w in (self.slide, self.mask, self.region):
            w.changed.connect(self._show_choice)
        self._show_choice()

    def _show_choice(self, _value: Any = None) -> None:
        """The header says what is validated on while its rows are hidden."""
        what = []
        if self.slide.value is not None:
            what.append(f"slide '{self.slide.value.name}'")
        if self.region.value is not None:
            what.append(f"region '{self.region.value.name}'")
        self.section.set_note(" + ".join(what) if what else "none (optional)")

    def fields(self, slides: list[Any]) -> dict[str, Any]:
        """TrainConfig's validation fields (raises ``LayerError`` for a bad choice)."""
        out: dict[str, Any] = {"val_every": int(self.every.value)}
        vslide, vmask = self.slide.value, self.mask.value
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
        if self.region.value is not None:
            out["val_roi"] = [shapes_roi(self.region.value, slides[0])] + [None] * (
                len(slides) - 1
            )
        return out


def widen_labels(container: Container, slack: float = 1.15) -> None:
    """Make the label column a little wider than magicgui measures it.

    magicgui sizes the column with the default font; napari's style sheet draws
    labels larger, so the longest label outgrew the column and pushed its row's
    field to the right of the others.
    """
    rows = [w._labeled_widget() for w in container]
    rows = [r for r in rows if r is not None]
    if rows:
        width = int(max(r._label_widget.min_width for r in rows) * slack)
        for r in rows:
            r.label_width = width
