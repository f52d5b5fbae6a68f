"""Train widget recipe: one set of defaults (TrainConfig's), the advanced switches, resume."""

from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np
import pytest

from napari_gigapixel._widgets import _train_inputs
from napari_gigapixel._widgets import train as train_mod
from napari_gigapixel._widgets.train import TrainWidget
from napari_gigapixel.core.events import Finished
from napari_gigapixel.core.losses import LOSSES
from napari_gigapixel.core.model_io import META_ENTRY, META_FORMAT
from napari_gigapixel.core.resolution import Resolution
from napari_gigapixel.core.stain import augment_mode
from napari_gigapixel.core.train_config import LR_SCHEDULES, TrainConfig
from napari_gigapixel.core.unet import ModelConfig

#: TrainConfig fields a run fills from its data (layers, paths, picker), not the recipe.
PER_RUN = {"images", "masks", "out", "preview_downsample", "resolution"}


@pytest.fixture
def notes(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(train_mod, "show_error", shown.append)
    return shown


def _setup(viewer, slide, tmp_path) -> TrainWidget:
    """A user's set-up: a mask painted at 1/4, the slide and mask picked, a model path."""
    labels = viewer.add_labels(
        np.ones((128, 256), np.uint8), name="mask", scale=4 * np.asarray(slide.scale)
    )
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.slides.value = [slide]
    w.masks.value = [labels]
    w.out.value = str(tmp_path / "model.keras")
    return w


def _start(w, fake_jobs, qtbot):
    """Press Start; the config the worker would have received."""
    n = len(fake_jobs)
    fake_jobs.script = [Finished(result={}, stopped=True)]
    w.start_button.clicked.emit()
    qtbot.waitUntil(lambda: w.start_button.enabled and not w.relay.running, timeout=10_000)
    assert len(fake_jobs) == n + 1, "the run did not start"
    return fake_jobs[-1][1]


_TODAY = TrainConfig()


@dataclasses.dataclass
class Retuned(TrainConfig):
    """A re-tuned recipe: every recipe default moved away from today's."""

    steps: int = _TODAY.steps + 7
    loss: str = next(x for x in LOSSES if x != _TODAY.loss)
    lr: float = _TODAY.lr * 2
    lr_schedule: str = next(x for x in LR_SCHEDULES if x != _TODAY.lr_schedule)
    tile: int | str = 512 if _TODAY.tile != 512 else "auto"
    memory_gb: float = _TODAY.memory_gb + 0.75
    seed: int = _TODAY.seed + 7
    model: ModelConfig = dataclasses.field(
        default_factory=lambda: dataclasses.replace(
            _TODAY.model, output_stride=1 if _TODAY.model.output_stride != 1 else 4
        )
    )
    augment: bool | str = "flip" if augment_mode(_TODAY.augment) != "flip" else "stain"
    val_every: int = _TODAY.val_every + 2
    standardize: bool = not _TODAY.standardize
    white_balance: bool = not _TODAY.white_balance
    head_prior: bool = not _TODAY.head_prior
    warmup: int = _TODAY.warmup + 5
    border_weight: int = _TODAY.border_weight + 2


@pytest.mark.parametrize("recipe", [TrainConfig, Retuned], ids=["today", "retuned"])
def test_the_widget_sends_train_config_defaults(
    slide_viewer, fake_jobs, qtbot, tmp_path, monkeypatch, recipe
):
    if recipe is Retuned:
        # The lead re-tunes TrainConfig: the widget follows without an edit.
        monkeypatch.setattr(_train_inputs, "TrainConfig", Retuned)
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path)
    cfg = _start(w, fake_jobs, qtbot)
    d = recipe()
    checked = []
    for field in dataclasses.fields(TrainConfig):
        if field.name in PER_RUN:
            continue
        got, want = getattr(cfg, field.name), getattr(d, field.name)
        if field.name == "augment":  # "none" and False are one mode
            got, want = augment_mode(got), augment_mode(want)
        assert got == want, f"{field.name}: the widget sends {got!r}, TrainConfig has {want!r}"
        checked.append(field.name)
    recipe_fields = {"steps", "loss", "lr", "lr_schedule", "memory_gb", "augment", "tile"}
    recipe_fields |= {"standardize", "white_balance", "warmup", "head_prior", "seed", "model"}
    recipe_fields |= {"border_weight", "pen_weight"}
    assert recipe_fields <= set(checked)
    assert (cfg.resolution or Resolution()).is_level0  # level 0, as None means
    # And the fields show those defaults (what the user sees is what is sent).
    assert w.augment.value == augment_mode(d.augment)
    assert w.recipe.white_balance.value is d.white_balance


def test_advanced_recipe_is_hidden_until_opened_and_reaches_the_config(
    slide_viewer, fake_jobs, qtbot, tmp_path
):
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path)
    r = w.recipe

    def shown(x) -> bool:  # would the user see it once the dock is on screen
        return x.native.isVisibleTo(w.native)

    # The augmentation is a main row; the rest waits behind the header.
    assert shown(w.augment) and not shown(r.warmup) and not shown(r.white_balance)
    modes = ("auto", "none", "flip", "stain", "ink", "pen", "pen+flip", "all")
    assert [w.augment.native.itemText(i) for i in range(w.augment.native.count())] == [
        _train_inputs.AUGMENT_TEXT[m] for m in modes
    ]
    r.section.header.native.click()
    assert shown(r.warmup) and shown(r.white_balance) and shown(r.seed) and shown(r.tile)
    assert r.section.header.text.startswith("\u25be advanced recipe")
    w.augment.native.setCurrentIndex(3)  # "stain ..."
    r.lr_schedule.value = "constant"
    r.warmup.value = 4
    assert shown(r.border_weight) and shown(r.pen_weight)
    r.border_weight.value = 4
    r.seed.value = 11
    r.tile.value = 256
    r.white_balance.native.click()
    r.standardize.native.click()
    r.head_prior.native.click()
    cfg = _start(w, fake_jobs, qtbot)
    assert (cfg.augment, cfg.lr_schedule, cfg.warmup, cfg.seed, cfg.tile) == (
        "stain",
        "constant",
        4,
        11,
        256,
    )
    assert cfg.border_weight == 4
    d = TrainConfig()
    assert (cfg.white_balance, cfg.standardize, cfg.head_prior) == (
        not d.white_balance,
        not d.standardize,
        not d.head_prior,
    )
    # One section at a time: opening the validation rows folds the recipe away.
    w.validation.section.header.native.click()
    assert shown(w.val_slide) and not shown(r.warmup) and not shown(r.tile)
    r.section.header.native.click()
    assert shown(r.warmup) and not shown(w.val_slide)
    r.section.header.native.click()
    assert not shown(r.warmup) and not shown(w.val_slide)


def test_advanced_fields_are_locked_while_training(slide_viewer, fake_jobs, qtbot, tmp_path):
    from conftest import training_events

    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path)
    fake_jobs.script = training_events(steps=20, n_tiles=2)
    fake_jobs.delay = 0.05
    w.start_button.clicked.emit()
    locked = [w.augment, w.recipe.warmup, w.recipe.seed, w.recipe.switches, w.val_every]
    assert not any(x.enabled for x in locked)
    w.stop_button.clicked.emit()
    qtbot.waitUntil(lambda: w.start_button.enabled and not w.relay.running, timeout=10_000)
    assert all(x.enabled for x in locked)


def _checkpoint(path, request: dict | None) -> str:
    """A checkpoint's metadata (no weights: the fake job never loads it)."""
    geometry = {"stride": 32, "output_stride": 4, "rf_before": 48, "rf_after": 68}
    meta = {"format": META_FORMAT, "version": 1, "geometry": geometry}
    if request is not None:
        meta["resolution"] = {"mpp": 1.0, "downsample": 2.0, "request": request}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(META_ENTRY, json.dumps(meta))
    return str(path)


def _texts(combo) -> list[str]:
    return [combo.native.itemText(i) for i in range(combo.native.count())]


def test_continuing_a_checkpoint_uses_its_resolution(slide_viewer, fake_jobs, qtbot, tmp_path):
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path)
    box = w.resolution.native
    box.setCurrentIndex(next(i for i, t in enumerate(_texts(w.resolution)) if "2x2" in t))
    assert w.resolution.value == Resolution(mpp=2.0)
    # A checkpoint trained at level 1 (1 um/px on this slide): the picker shows
    # only that resolution, with its cost; the user cannot pick another.
    ckpt = _checkpoint(tmp_path / "ckpt.keras", {"mpp": None, "level": 1})
    w.resume.value = ckpt
    assert len(_texts(w.resolution)) == 1
    assert _texts(w.resolution)[0].startswith("as checkpoint (level 1) · 1 um/px · 0.131 Mpx")
    assert w.resolution.value is None and not w.model.enabled  # its own model too
    # ...and its own input convention: the switches that shape a new model are off.
    switches = (w.recipe.white_balance, w.recipe.standardize, w.recipe.head_prior)
    assert not any(s.enabled for s in switches)
    assert w.resolution.info.value.startswith("1 um/px, downsample 2, 256 x 512 px")
    w.memory_gb.value = 1.0  # a new budget re-estimates, still only the checkpoint's
    assert len(_texts(w.resolution)) == 1 and w.resolution.value is None
    viewer.add_labels(np.zeros((4, 4), np.uint8), name="another")  # lists are reset
    assert len(_texts(w.resolution)) == 1 and w.resolution.value is None
    cfg = _start(w, fake_jobs, qtbot)
    assert cfg.resume == ckpt
    assert cfg.resolution is None  # the engine runs at the checkpoint's resolution
    assert not w.model.enabled and w.steps.enabled  # after the run, still the checkpoint's
    assert not any(s.enabled for s in switches) and w.recipe.seed.enabled
    # A new model again: the slide's resolutions come back.
    w.resume.value = ""
    assert _texts(w.resolution)[0].startswith("level 0 · 0.5 um/px")
    assert len(_texts(w.resolution)) > 1 and w.model.enabled
    assert all(s.enabled for s in switches)
    cfg = _start(w, fake_jobs, qtbot)
    assert cfg.resume is None and cfg.resolution == Resolution(level=0)


def test_a_checkpoint_at_a_resolution_the_slide_lacks_is_refused(
    slide_viewer, fake_jobs, notes, qtbot, tmp_path
):
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path)
    w.resume.value = _checkpoint(tmp_path / "ckpt.keras", {"mpp": None, "level": 7})
    assert _texts(w.resolution) == ["as checkpoint (level 7)"]
    assert w.resolution.value is None and w.resolution.info.value == ""
    fake_jobs.script = [Finished(result={}, stopped=True)]
    w.start_button.clicked.emit()
    assert not fake_jobs  # preflight refused it before a worker started
    assert notes and "level 7" in notes[-1]


def test_pen_weight_reaches_the_config_and_a_run_without_strokes_is_refused(
    slide_viewer, fake_jobs, notes, qtbot, tmp_path
):
    """The advanced recipe's "pen weight" goes to the run with the default
    augmentation (which draws the strokes); with augmentation off the run is
    refused before a worker starts, saying what to change."""
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path)
    w.recipe.section.header.native.click()
    w.recipe.border_weight.value = 4
    w.recipe.pen_weight.value = 8
    cfg = _start(w, fake_jobs, qtbot)
    assert (cfg.border_weight, cfg.pen_weight, augment_mode(cfg.augment)) == (4, 8, "auto")
    n = len(fake_jobs)
    w.augment.value = "none"
    fake_jobs.script = [Finished(result={}, stopped=True)]
    w.start_button.clicked.emit()
    assert len(fake_jobs) == n  # refused before a worker started
    assert notes and "pen_weight" in notes[-1] and "'auto'" in notes[-1]
    assert "not started" in w.status.value
