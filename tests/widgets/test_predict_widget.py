"""Predict widget: fields to config, progress, stop, refusals (fake jobs).

The real inference run, with the layers it adds, is driven end to end in
``test_no_tensorflow_in_viewer.py``.
"""

from __future__ import annotations

import pytest

from napari_gigapixel._widgets import predict as predict_mod
from napari_gigapixel._widgets.predict import PREDICT_TARGET, PredictWidget
from napari_gigapixel._widgets.train import LAST_MODEL
from napari_gigapixel.core.events import Finished, Progress


@pytest.fixture
def notes(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(predict_mod, "show_error", shown.append)
    return shown


@pytest.fixture
def model_file(tmp_path, monkeypatch) -> str:
    """A file standing for a trained model: its metadata only (the fake job never
    loads it; the widget's preflight reads the metadata, without Keras)."""
    import json
    import zipfile

    from napari_gigapixel.core.model_io import META_ENTRY, META_FORMAT

    path = tmp_path / "trained.keras"
    with zipfile.ZipFile(path, "w") as zf:
        geometry = {"stride": 16, "output_stride": 4, "rf_before": 40, "rf_after": 41}
        meta = {"format": META_FORMAT, "version": 1, "geometry": geometry}
        zf.writestr(META_ENTRY, json.dumps(meta))
    monkeypatch.setitem(LAST_MODEL, "path", str(path))
    return str(path)


def test_config_uses_the_model_just_trained(slide_viewer, fake_jobs, model_file, qtbot, tmp_path):
    viewer, slide = slide_viewer
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert str(w.model.value) == model_file  # prefilled from the last training
    assert str(w.out.value).endswith("_prediction.ome.zarr")
    w.out.value = str(tmp_path / "pred.ome.zarr")
    w.probability.value = True
    fake_jobs.script = [Progress("chunks", i, 4) for i in range(1, 5)]
    fake_jobs.script.append(Finished(result={}, stopped=True))  # nothing to open
    w.run_button.clicked.emit()
    assert not w.run_button.enabled and w.stop_button.enabled
    qtbot.waitUntil(lambda: w.run_button.enabled, timeout=10_000)
    target, cfg, _ = fake_jobs[0]
    assert target == PREDICT_TARGET
    assert cfg.model == model_file
    assert cfg.image == (slide.metadata.get("path") or slide.source.path)
    assert cfg.out == str(tmp_path / "pred.ome.zarr")
    assert cfg.write_probability is True
    assert (w.bar.value, w.bar.max) == (4, 4)
    assert "stopped" in w.status.value
    assert [ly.name for ly in viewer.layers] == [slide.name]  # nothing added


def test_clean_up_fields_default_to_predict_config_and_reach_the_worker(
    slide_viewer, fake_jobs, model_file, qtbot, tmp_path
):
    from napari_gigapixel.core.inference import PredictConfig

    viewer, _ = slide_viewer
    w = PredictWidget(viewer)
    d = PredictConfig(model="", image=None, out="")
    assert w.min_width_um.value == pytest.approx(d.min_width_um)  # the CLI's defaults too
    assert w.min_object_um2.value == pytest.approx(d.min_object_um2)
    assert w.min_hole_um2.value == pytest.approx(d.min_hole_um2)

    def shown(x) -> bool:  # would the user see it once the dock is on screen
        return x.native.isVisibleTo(w.native)

    assert not shown(w.min_width_um)  # under the collapsed "mask clean-up" header
    w.clean_section.header.native.click()
    assert shown(w.min_width_um) and shown(w.min_hole_um2)
    assert w.clean_section.header.text.startswith("\u25be mask clean-up")
    sq = "um\u00b2"
    assert w.clean_section.header.text.endswith(
        f"strands {d.min_width_um:g} um, objects {d.min_object_um2:g} {sq}, "
        f"holes {d.min_hole_um2:g} {sq}"
    )
    w.min_width_um.value = 0.0
    w.min_hole_um2.value = 120.0
    assert w.clean_section.header.text.endswith(
        f"strands off, objects {d.min_object_um2:g} {sq}, holes 120 {sq}"
    )
    w.out.value = str(tmp_path / "pred.ome.zarr")
    fake_jobs.script = [Finished(result={}, stopped=True)]
    w.run_button.clicked.emit()
    assert not w.min_hole_um2.enabled  # locked while the job runs
    qtbot.waitUntil(lambda: w.run_button.enabled, timeout=10_000)
    cfg = fake_jobs[0][1]
    assert (cfg.min_width_um, cfg.min_object_um2, cfg.min_hole_um2) == (
        0.0,
        pytest.approx(d.min_object_um2),
        120.0,
    )


def test_the_test_time_choice_defaults_to_predict_config_and_reaches_the_worker(
    slide_viewer, fake_jobs, model_file, qtbot, tmp_path
):
    from napari_gigapixel.core.inference import PredictConfig
    from napari_gigapixel.core.tiled_model import TTA_MODES

    viewer, _ = slide_viewer
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.tta.value == PredictConfig(model="", image=None, out="").tta
    assert list(w.tta.choices) == [*TTA_MODES]  # the CLI's --tta choices
    assert w.tta.native.isVisibleTo(w.native)  # a first-level option, not folded away
    seconds = {}
    for mode in TTA_MODES:  # the estimate counts the model's passes
        w.tta.value = mode
        seconds[mode] = w.resolution.selected().seconds
    assert seconds["none"] < seconds["flips"] < seconds["half-darker"] < seconds["flips+darker"]
    w.out.value = str(tmp_path / "pred.ome.zarr")
    sent = []
    for mode in ("flips+darker", "none"):
        w.tta.value = mode
        fake_jobs.script = [Finished(result={}, stopped=True)]
        w.run_button.clicked.emit()
        assert not w.tta.enabled  # locked while the job runs
        qtbot.waitUntil(lambda: w.run_button.enabled, timeout=10_000)
        sent.append(fake_jobs[-1][1].tta)
    assert sent == ["flips+darker", "none"]


def test_stop_button_stops_the_job(slide_viewer, fake_jobs, model_file, qtbot, tmp_path):
    viewer, _ = slide_viewer
    w = PredictWidget(viewer)
    w.out.value = str(tmp_path / "pred.ome.zarr")
    fake_jobs.script = [Progress("chunks", i, 500) for i in range(1, 501)]
    fake_jobs.delay = 0.05
    w.run_button.clicked.emit()
    qtbot.waitUntil(lambda: w.bar.value >= 1, timeout=10_000)
    w.stop_button.clicked.emit()
    qtbot.waitUntil(lambda: w.run_button.enabled, timeout=10_000)
    assert fake_jobs[0][2].stopped.is_set()
    assert w.result is not None and w.result.stopped
    assert w.bar.value < 500


def test_missing_model_is_refused(slide_viewer, fake_jobs, notes, monkeypatch, tmp_path):
    viewer, _ = slide_viewer
    monkeypatch.setitem(LAST_MODEL, "path", None)
    w = PredictWidget(viewer)
    w.model.value = str(tmp_path / "nowhere.keras")
    w.out.value = str(tmp_path / "pred.ome.zarr")
    w.run_button.clicked.emit()
    assert not fake_jobs
    assert len(notes) == 1 and "nowhere.keras" in notes[0]
    assert "not started" in w.status.value
