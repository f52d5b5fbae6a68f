"""Train widget validation: inputs to config, the validation curve, the best model."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import training_events
from napari_gigapixel._widgets import train as train_mod
from napari_gigapixel._widgets.train import TrainWidget
from napari_gigapixel.core.events import Finished, StepEvent, ValidationEvent


@pytest.fixture
def notes(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(train_mod, "show_error", shown.append)
    return shown


def _setup(viewer, slide, tmp_path, steps: int = 6) -> TrainWidget:
    mask = np.zeros((128, 256), np.uint8)
    mask[20:100, 30:200] = 1
    labels = viewer.add_labels(mask, name="mask", scale=4 * np.asarray(slide.scale))
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.slides.value = [slide]
    w.masks.value = [labels]
    w.steps.value = steps
    w.out.value = str(tmp_path / "model.keras")
    return w


def _draw_region(viewer, slide):
    """A user draws a rectangle over the slide in a new Shapes layer (world coordinates)."""
    s = np.asarray(slide.scale[-2:], float)
    t = np.asarray(slide.translate[-2:], float)
    corners = np.array([[100, 300], [100, 700], [300, 700], [300, 300]], float)
    return viewer.add_shapes([corners * s + t - 0.5 * s], shape_type="rectangle", name="val")


def _events_with_validation(steps: int = 6) -> list:
    """A scripted run: validation after every other step, peaking at step 4."""
    out = []
    val = {2: 0.5, 4: 0.8, 6: 0.7}
    for ev in training_events(steps=steps, n_tiles=2)[:-1]:
        if isinstance(ev, StepEvent):
            ev.dice = 0.95 - 0.5 / ev.step  # train Dice keeps rising
        out.append(ev)
        if isinstance(ev, StepEvent) and ev.step in val:
            best = max((s for s in val if s <= ev.step), key=val.get)
            out.insert(
                len(out) - 1,
                ValidationEvent(
                    ev.step,
                    val[ev.step],
                    val[ev.step],
                    1 - val[ev.step],
                    best,
                    val[best],
                    "/tmp/model.best.keras",
                    best == ev.step,
                ),
            )
    out.append(Finished(result={"steps": steps}, stopped=False))
    return out


def test_validation_inputs_make_the_config_and_the_curve_grows(
    slide_viewer, fake_jobs, qtbot, tmp_path
):
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path)
    region = _draw_region(viewer, slide)
    w.reset_choices()
    w.val_region.value = region
    w.val_every.value = 2
    fake_jobs.script = _events_with_validation()
    fake_jobs.delay = 0.01
    w.start_button.clicked.emit()
    assert not w.val_region.enabled and not w.val_every.enabled  # locked while running
    qtbot.waitUntil(lambda: not w.relay.running and w.start_button.enabled, timeout=10_000)
    cfg = fake_jobs[0][1]
    assert cfg.val_roi == [(100, 300, 300, 700)] and cfg.val_every == 2
    assert cfg.val_images == [] and cfg.val_masks == []
    assert w.plot.val_steps == [2, 4, 6]
    assert w.plot.val_dice == pytest.approx([0.5, 0.8, 0.7])
    assert w.plot.val_loss == pytest.approx([0.5, 0.2, 0.3])
    assert w.plot.best_step == 4 and w.plot.steps == [1, 2, 3, 4, 5, 6]
    assert "model.best.keras (step 4, val Dice 0.800)" in w.status.value
    # What the user sees: both curves, the legend and the ring on the best step.
    w.plot.resize(420, 300)
    shot = tmp_path / "train_widget_validation.png"
    assert w.native.grab().save(str(shot))
    out = os.environ.get("NAPARI_GIGAPIXEL_SCREENSHOTS")
    if out:
        w.native.grab().save(os.path.join(out, "train_widget_validation.png"))
    img = w.plot.grab().toImage()
    green = sum(
        1
        for y in range(0, img.height(), 2)
        for x in range(0, img.width(), 2)
        if (c := img.pixelColor(x, y)).green() > 200 and c.red() < 160 and c.blue() < 160
    )
    assert green > 50  # the validation curve is drawn


def test_validation_slide_and_mask_go_to_the_config(slide_viewer, fake_jobs, qtbot, tmp_path):
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path)
    other = viewer.open(slide.source.path or slide.metadata["path"], plugin="napari-gigapixel")
    other = [ly for ly in other if ly._type_string == "image"][0]
    w.reset_choices()
    w.val_slide.value = other
    w.val_mask.value = viewer.layers["mask"]
    fake_jobs.script = training_events(steps=1)
    w.start_button.clicked.emit()
    qtbot.waitUntil(lambda: not w.relay.running and w.start_button.enabled, timeout=10_000)
    cfg = fake_jobs[0][1]
    assert cfg.val_images == cfg.images and cfg.val_masks[0].shape == (128, 256)
    assert cfg.val_roi is None


def test_half_given_or_training_slide_validation_is_refused(
    slide_viewer, fake_jobs, notes, tmp_path
):
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path)
    w.val_mask.value = viewer.layers["mask"]
    w.start_button.clicked.emit()
    assert not fake_jobs and "both a validation slide and its mask" in notes[-1]
    w.val_slide.value = slide
    w.start_button.clicked.emit()
    assert not fake_jobs and "is a training slide" in notes[-1]
    w.val_slide.value = None
    w.val_mask.value = None
    empty = viewer.add_shapes(name="empty region")
    w.reset_choices()
    w.val_region.value = empty
    w.start_button.clicked.emit()
    assert not fake_jobs and "has no shape" in notes[-1]


@pytest.mark.slow
def test_real_run_with_a_validation_region_keeps_the_best_model(slide_viewer, qtbot, tmp_path):
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path, steps=2)
    region = _draw_region(viewer, slide)
    w.reset_choices()
    w.val_region.value = region
    w.val_every.value = 1
    w.start_button.clicked.emit()
    qtbot.waitUntil(lambda: not w.relay.running and w.start_button.enabled, timeout=240_000)
    assert w.result is not None and not w.result.stopped, w.error
    assert w.plot.val_steps == [1, 2] and all(0 <= d <= 1 for d in w.plot.val_dice)
    best = str(tmp_path / "model.best.keras")
    assert os.path.isfile(best) and w.best.best_path == best
    assert w.plot.best_step in (1, 2) and "best: model.best.keras" in w.status.value
