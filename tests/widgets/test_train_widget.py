"""Train widget: fields to config, live plot/progress/preview, stop, errors, real runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from qtpy.QtCore import QTimer

from conftest import training_events
from napari_gigapixel._widgets import train as train_mod
from napari_gigapixel._widgets.train import LAST_MODEL, TRAIN_TARGET, TrainWidget
from napari_gigapixel.core.events import Finished, Progress
from napari_gigapixel.core.masks import AnnotationMask, MaskError
from napari_gigapixel.core.train_config import TrainConfig


@pytest.fixture
def notes(monkeypatch) -> list[str]:
    """Messages the widget shows as napari error notifications."""
    shown: list[str] = []
    monkeypatch.setattr(train_mod, "show_error", shown.append)
    return shown


def _setup(viewer, slide, tmp_path, steps: int = 3) -> TrainWidget:
    """A user's set-up: a painted 1/4 mask, the slide and mask picked, a model path."""
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


def _wait_done(qtbot, w, timeout: int = 10_000) -> None:
    qtbot.waitUntil(lambda: not w.relay.running and w.start_button.enabled, timeout=timeout)


def test_fake_training_grows_plot_progress_and_preview(slide_viewer, fake_jobs, qtbot, tmp_path):
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path)
    fake_jobs.script = training_events(steps=3, n_tiles=2)
    fake_jobs.delay = 0.05
    w.start_button.clicked.emit()
    # Inputs are locked while the job runs; Stop is the only live button.
    assert not w.start_button.enabled and not w.steps.enabled and not w.slides.enabled
    assert w.stop_button.enabled
    _wait_done(qtbot, w)
    target, cfg, _ = fake_jobs[0]
    assert target == TRAIN_TARGET
    assert cfg.images == [slide.metadata.get("path") or slide.source.path]
    assert isinstance(cfg.masks[0], AnnotationMask)
    assert cfg.masks[0].downsample == 4.0 and cfg.masks[0].shape == (128, 256)
    assert (cfg.steps, cfg.loss, cfg.tile) == (3, TrainConfig().loss, "auto")
    assert cfg.out == str(tmp_path / "model.keras")
    assert w.plot.steps == [1, 2, 3]
    assert w.plot.loss == pytest.approx([1.0, 0.5, 1 / 3])
    assert w.plot.dice == pytest.approx([0.3, 0.6, 0.9])
    assert (w.step_bar.value, w.step_bar.max) == (3, 3)
    assert (w.tile_bar.value, w.tile_bar.max) == (2, 2)
    assert "finished" in w.status.value
    preview = viewer.layers[f"preview: {slide.name}"]
    assert preview.data.shape == (128, 256)
    assert tuple(preview.scale) == pytest.approx(tuple(4 * np.asarray(slide.scale)))
    assert float(preview.data.max()) == pytest.approx(1.0)
    assert w.stop_button.enabled is False and w.steps.enabled


def test_stop_ends_a_fake_run_and_reenables_inputs(slide_viewer, fake_jobs, qtbot, tmp_path):
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path, steps=50)
    fake_jobs.script = training_events(steps=50, n_tiles=2)
    fake_jobs.delay = 0.05
    w.start_button.clicked.emit()
    qtbot.waitUntil(lambda: len(w.plot.steps) >= 1, timeout=10_000)
    w.stop_button.clicked.emit()
    _wait_done(qtbot, w)
    assert fake_jobs[0][2].stopped.is_set()
    assert w.result is not None and w.result.stopped
    assert len(w.plot.steps) < 50
    assert "stopped" in w.status.value


def test_engine_error_becomes_a_notification(slide_viewer, fake_jobs, notes, qtbot, tmp_path):
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path)
    fake_jobs.script = training_events(steps=1)[:1]
    fake_jobs.error = MaskError("mask.tif: a 10 x 10 mask cannot overlay a 512 x 1024 slide.")
    w.start_button.clicked.emit()
    _wait_done(qtbot, w)
    assert isinstance(w.error, MaskError)
    assert notes == ["mask.tif: a 10 x 10 mask cannot overlay a 512 x 1024 slide."]
    assert "failed" in w.status.value


def test_layer_without_a_file_is_refused(make_napari_viewer, fake_jobs, notes, tmp_path):
    viewer = make_napari_viewer()
    slide = viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="numpy image")
    labels = viewer.add_labels(np.zeros((16, 16), np.uint8), name="mask", scale=(4, 4))
    w = TrainWidget(viewer)
    w.slides.value = [slide]
    w.masks.value = [labels]
    w.out.value = str(tmp_path / "m.keras")
    w.start_button.clicked.emit()
    assert not fake_jobs  # nothing started
    assert len(notes) == 1 and "no slide file" in notes[0] and "numpy image" in notes[0]
    assert "not started" in w.status.value


def test_mask_count_must_match_slides(slide_viewer, fake_jobs, notes, tmp_path):
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path)
    w.masks.value = []
    w.start_button.clicked.emit()
    assert not fake_jobs and "one mask layer per slide" in notes[0]


def _close_viewer(viewer) -> None:
    viewer.window._qt_window.close()


def _close_widget(viewer) -> None:
    viewer.window.remove_dock_widget("all")  # the dock's close button does this


@pytest.mark.parametrize("close", [_close_viewer, _close_widget], ids=["viewer", "widget"])
def test_closing_stops_the_job(slide_viewer, fake_jobs, qtbot, tmp_path, close):
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path, steps=500)
    fake_jobs.script = training_events(steps=500, n_tiles=2)  # 100 s unless stopped
    fake_jobs.delay = 0.05
    w.start_button.clicked.emit()
    # Generous: on a loaded machine the relay thread may take a while to run.
    qtbot.waitUntil(lambda: len(fake_jobs) == 1, timeout=60_000)
    close(viewer)
    # Closing waits for the relay: the job is stopped and nothing runs on.
    assert fake_jobs[0][2].stopped.is_set()
    assert not w.relay.running


def test_closing_before_the_relay_thread_runs_starts_nothing(
    slide_viewer, fake_jobs, qtbot, tmp_path
):
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path, steps=500)
    fake_jobs.script = training_events(steps=500, n_tiles=2)
    done: list[bool] = []

    def start_then_close() -> None:
        # Pressed inside the event loop, the relay thread's start is queued on
        # that loop; closing at once must neither block the loop waiting for
        # it nor let it spawn a worker afterwards.
        w.start_button.clicked.emit()
        _close_widget(viewer)
        done.append(True)

    QTimer.singleShot(0, start_then_close)
    qtbot.waitUntil(lambda: bool(done), timeout=60_000)
    _wait_done(qtbot, w, timeout=60_000)  # the relay ran, saw the stop and ended
    assert not fake_jobs  # no worker process was spawned
    assert w.stop_button.enabled is False


def _load_in_subprocess(path: str) -> dict:
    """Load a model file in a fresh interpreter (TensorFlow stays out of this one)."""
    code = (
        "import json, sys\n"
        "from napari_gigapixel.core.unet import load_model\n"
        "model, meta = load_model(sys.argv[1])\n"
        "print(json.dumps({'params': int(model.count_params())}))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, path], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_real_training_keeps_napari_responsive_and_stop_keeps_a_checkpoint(
    slide_viewer, qtbot, tmp_path
):
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path, steps=1000)
    w.tile.value = 256  # many tiles per step, so Stop lands between tiles
    w.memory_gb.value = 1.0
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start()
    t0 = time.monotonic()
    w.start_button.clicked.emit()
    # The worker imports TensorFlow and trains while the event loop keeps ticking.
    qtbot.waitUntil(lambda: len(w.plot.steps) >= 2, timeout=180_000)
    timer.stop()
    elapsed = time.monotonic() - t0
    assert "tensorflow" not in sys.modules
    gaps = np.diff([t0, *ticks])
    assert len(ticks) >= 0.25 * elapsed / 0.02, (len(ticks), elapsed)
    # Generous bound: the machine is shared and napari's first draw of a new
    # layer under a software OpenGL can take a second or two.
    assert gaps.max() < 5.0, gaps.max()
    w.stop_button.clicked.emit()
    n_events = w.relay.n_received  # what the worker had sent when Stop was pressed
    _wait_done(qtbot, w, timeout=60_000)
    assert w.result is not None and w.result.stopped
    # Stop lands between tiles: at most the tile in flight (and one event in
    # the pipe) follows, although a step has many more tiles.
    after = w.events[n_events:]
    tiles_per_step = max(ev.total for ev in w.events if isinstance(ev, Progress))
    assert tiles_per_step >= 4
    assert sum(isinstance(ev, Progress) for ev in after) <= 2, after
    assert isinstance(w.events[-1], Finished)
    assert w.plot.steps[-1] < 1000
    model = w.checkpoint or w.config.out
    assert os.path.isfile(model)
    assert LAST_MODEL["path"] == model
    assert _load_in_subprocess(model)["params"] > 1000
    assert "tensorflow" not in sys.modules


def test_an_existing_model_is_not_replaced_without_overwrite(
    slide_viewer, fake_jobs, notes, qtbot, tmp_path
):
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path)
    (tmp_path / "model.keras").write_bytes(b"yesterday's model")
    assert w.memory_gb.value == pytest.approx(3.5)  # the CLI's --memory-gb default
    w.start_button.clicked.emit()
    assert len(fake_jobs) == 0  # refused before a worker started
    assert notes and "already exists; pass --overwrite" in notes[-1]
    assert (tmp_path / "model.keras").read_bytes() == b"yesterday's model"
    w.overwrite.value = True
    fake_jobs.script = training_events(steps=3, n_tiles=2)
    w.start_button.clicked.emit()
    _wait_done(qtbot, w)
    assert len(fake_jobs) == 1 and fake_jobs[0][1].overwrite is True


def test_an_output_folder_that_does_not_exist_is_refused(slide_viewer, fake_jobs, notes, tmp_path):
    viewer, slide = slide_viewer
    w = _setup(viewer, slide, tmp_path)
    w.out.value = str(tmp_path / "nowhere" / "model.keras")
    w.start_button.clicked.emit()
    assert len(fake_jobs) == 0
    assert "does not exist; create it first" in notes[-1]
