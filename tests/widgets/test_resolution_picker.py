"""The resolution picker of the Train and Predict widgets, driven as a user does."""

from __future__ import annotations

import json
import os
import zipfile

import pytest

from napari_gigapixel._widgets.predict import PredictWidget
from napari_gigapixel._widgets.train import LAST_MODEL, TrainWidget
from napari_gigapixel.core.events import Finished
from napari_gigapixel.core.model_io import META_ENTRY, META_FORMAT
from napari_gigapixel.core.resolution import Resolution


def _pick(combo, startswith: str) -> None:
    """Choose the entry whose text starts with ``startswith``, through the Qt combo box."""
    box = combo.native
    texts = [box.itemText(i) for i in range(box.count())]
    idx = next(i for i, t in enumerate(texts) if t.startswith(startswith))
    box.setCurrentIndex(idx)


def _texts(combo) -> list[str]:
    return [combo.native.itemText(i) for i in range(combo.native.count())]


def _shot(widget, name: str) -> None:
    """Grab the widget; saved where NAPARI_GIGAPIXEL_SHOTS points (to look at it)."""
    pix = widget.native.grab()
    assert pix.width() > 0 and pix.height() > 0
    folder = os.environ.get("NAPARI_GIGAPIXEL_SHOTS")
    if folder:
        pix.save(os.path.join(folder, name))


def _readable(picker) -> bool:
    """The costs are readable: in the drop-down (as wide as its entries) and the row below."""
    box = picker.native
    widest = max(box.fontMetrics().horizontalAdvance(t) for t in _texts(picker))
    info = picker.info.native
    return box.view().minimumWidth() >= widest and info.width() >= info.sizeHint().width()


def test_train_picker_lists_levels_with_cost_and_sets_the_config(
    slide_viewer, fake_jobs, qtbot, tmp_path
):
    import numpy as np

    viewer, slide = slide_viewer
    labels = viewer.add_labels(
        np.ones((128, 256), np.uint8), name="mask", scale=4 * np.asarray(slide.scale)
    )
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.slides.value = [slide]
    w.masks.value = [labels]
    w.out.value = str(tmp_path / "m.keras")
    texts = _texts(w.resolution)
    # The tiny slide: 512 x 1024 at 0.5 um/px, levels at downsample 1 and 2 (= 1 um/px);
    # then 2, 4, 8 and 16 um/px as means of level 1.
    assert texts[0].startswith("level 0 · 0.5 um/px · 0.524 Mpx · ~0.021 s/step · 0.")
    assert [t.split(" · ")[0] for t in texts] == ["level 0", "level 1"] + [
        f"level 1, {k}x{k} mean" for k in (2, 4, 8, 16)
    ]
    assert all("s/step" in t and t.endswith("GiB") for t in texts)
    assert w.resolution.value == Resolution(level=0)
    _pick(w.resolution, "level 1, 2x2")
    assert w.resolution.value == Resolution(mpp=2.0)
    # A new budget re-estimates, keeping the choice.
    w.memory_gb.value = 1.0
    assert w.resolution.value == Resolution(mpp=2.0)
    w.show()
    qtbot.waitExposed(w.native)
    assert _readable(w.resolution)
    assert w.resolution.info.value.startswith("2 um/px, downsample 4, 128 x 256 px: ~")
    _shot(w, "train_widget.png")
    fake_jobs.script = [Finished(result={}, stopped=True)]
    w.start_button.clicked.emit()
    qtbot.waitUntil(lambda: w.start_button.enabled, timeout=10_000)
    assert fake_jobs[0][1].resolution == Resolution(mpp=2.0)


def _model_file(path, resolution) -> str:
    """A model file's metadata (no weights: the fake job never loads it)."""
    with zipfile.ZipFile(path, "w") as zf:
        geometry = {"stride": 32, "output_stride": 4, "rf_before": 48, "rf_after": 68}
        meta = {"format": META_FORMAT, "version": 1, "geometry": geometry}
        zf.writestr(META_ENTRY, json.dumps({**meta, "resolution": resolution}))
    return str(path)


@pytest.mark.parametrize("as_trained", [True, False])
def test_predict_picker_offers_the_model_resolution_first(
    slide_viewer, fake_jobs, qtbot, tmp_path, monkeypatch, as_trained
):
    viewer, slide = slide_viewer
    model = _model_file(tmp_path / "m.keras", {"mpp": 2.0, "downsample": 4.0})
    monkeypatch.setitem(LAST_MODEL, "path", model)
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.out.value = str(tmp_path / "p.zarr")
    texts = _texts(w.resolution)
    assert texts[0].startswith("as trained (2 um/px) · 2 um/px · 0.0328 Mpx · <0.01 s · 0.")
    assert texts[1].startswith("level 0 · 0.5 um/px") and "s/step" not in texts[1]
    if not as_trained:
        _pick(w.resolution, "level 0")
    w.show()
    qtbot.waitExposed(w.native)
    assert _readable(w.resolution)
    label = w.resolution.native.parentWidget().findChildren(type(w.resolution.info.native))
    assert any(lb.text() == "resolution" and lb.width() >= lb.sizeHint().width() for lb in label)
    _shot(w, "predict_widget.png")
    fake_jobs.script = [Finished(result={}, stopped=True)]
    w.run_button.clicked.emit()
    qtbot.waitUntil(lambda: w.run_button.enabled, timeout=10_000)
    want = None if as_trained else Resolution(level=0)
    assert fake_jobs[0][1].resolution == want
