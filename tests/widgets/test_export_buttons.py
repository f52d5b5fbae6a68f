"""Export to QuPath from the Review widget (the prediction) and the Annotate widget (the mask)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_gigapixel._widgets.annotate import AnnotateWidget
from napari_gigapixel._widgets.predict import PredictWidget
from napari_gigapixel._widgets.review import ReviewWidget
from napari_gigapixel.core.mask_io import load_mask
from napari_gigapixel.core.prediction_store import (
    build_pyramids,
    commit_store,
    create_store,
    mark_complete,
)

TINY_SHAPE = (512, 1024)  # the tiny_slide fixture's level 0


def _bbox(path) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) over all the outer rings of a GeoJSON file."""
    feats = json.loads(path.read_text())["features"]
    xy = np.concatenate([np.asarray(f["geometry"]["coordinates"][0]) for f in feats])
    return xy[:, 0].min(), xy[:, 0].max(), xy[:, 1].min(), xy[:, 1].max()


def _region_prediction(out: str) -> np.ndarray:
    """A store as `predict --roi 64,448,128,896` writes it: 1/4, a square with a hole."""
    level = np.zeros((96, 192), np.uint8)
    level[16:64, 32:96] = 1  # region rows 64-256, cols 128-384
    level[32:40, 48:56] = 0  # a hole
    meta = {
        "kind": "prediction",
        "downsample": 4.0,
        "slide_shape": list(TINY_SHAPE),
        "offset": [64, 128],
        "region_shape": [384, 768],
        "threshold": 0.5,
    }
    prob, mask = create_store(out + ".partial", level.shape, 64, meta)
    prob[:], mask[:] = level * 255, level
    build_pyramids(out + ".partial")
    mark_complete(out + ".partial")
    commit_store(out + ".partial", out, overwrite=False)
    return level


def test_review_exports_the_prediction_being_reviewed(slide_viewer, tmp_path, qtbot):
    viewer, slide = slide_viewer
    store = str(tmp_path / "pred.zarr")
    level = _region_prediction(store)
    PredictWidget(viewer).show_prediction(store, slide)
    w = ReviewWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.prediction.value.name == f"prediction: {slide.name}"
    w.slide.value = slide
    out = tmp_path / "pred.geojson"
    w.export_path.value = str(out)
    w.export_button.clicked.emit()  # as a user: the path typed, then the button
    # The export runs in a thread; the button is back when it has ended.
    assert not w.export_button.enabled
    qtbot.waitUntil(lambda: w.export_button.enabled, timeout=30_000)
    assert out.exists() and "1 annotations, 1 holes" in w.export_status.value
    # Level 0 of the slide, the region's offset included: rows 128-320, cols 256-512.
    assert _bbox(out) == (256.0, 512.0, 128.0, 320.0)
    back = load_mask(out, TINY_SHAPE).read_window(64, 448, 128, 896, 4)
    np.testing.assert_array_equal(back, level)
    # Pressed again: the file is replaced (the save dialog asked about that).
    out.write_text("old")
    w.export_button.clicked.emit()
    qtbot.waitUntil(lambda: w.export_button.enabled, timeout=30_000)
    assert "1 annotations" in w.export_status.value and out.read_text() != "old"
    # An error in the thread becomes a notification and a status line.
    w.export_path.value = str(tmp_path / "no-such-folder" / "x.geojson")
    w.export_button.clicked.emit()
    qtbot.waitUntil(lambda: w.export_button.enabled, timeout=30_000)
    assert "export failed" in w.export_status.value


def test_review_exports_a_plain_labels_layer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    slide = viewer.add_image(np.full((256, 512, 3), 200, np.uint8), rgb=True, name="slide")
    pred = np.zeros((32, 64), np.uint8)  # 1/8, overlaid as the widgets overlay masks
    pred[8:24, 20:52] = 1
    viewer.add_labels(pred, name="prediction: slide", scale=(8, 8), translate=(3.5, 3.5))
    w = ReviewWidget(viewer)
    w.slide.value = slide
    res = w.export(str(tmp_path / "p.geojson"))
    assert res["working_downsample"] == 8.0
    assert _bbox(tmp_path / "p.geojson") == (160.0, 416.0, 64.0, 192.0)


def test_annotate_exports_the_painted_mask(slide_viewer, tmp_path, qtbot, monkeypatch):
    viewer, slide = slide_viewer
    w = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.level.value = 8
    w.new_button.clicked.emit()
    layer = viewer.layers["tissue mask"]
    layer.data[10:30, 20:60] = 1  # level-0 rows 80-240, cols 160-480
    layer.data[15:20, 30:40] = 0
    layer.data[40:50, 100:120] = 1
    # No path typed: the button asks with a save dialog (answered here).
    from magicgui import widgets

    asked = []
    monkeypatch.setattr(
        widgets, "show_file_dialog", lambda **kw: asked.append(kw) or str(tmp_path / "m")
    )
    w.export_button.clicked.emit()
    qtbot.waitUntil(lambda: w.export_button.enabled, timeout=30_000)
    out = tmp_path / "m.geojson"
    assert asked and asked[0]["mode"] == "w" and out.exists()
    assert str(w.export_path.value) == str(out)
    assert "2 annotations, 1 holes" in w.status.value
    back = load_mask(out, TINY_SHAPE).read_window(0, TINY_SHAPE[0], 0, TINY_SHAPE[1], 8)
    np.testing.assert_array_equal(back, layer.data)
    assert _bbox(out)[:3] == (160.0, 960.0, 80.0)

    # A cancelled dialog writes nothing and says so.
    w.export_path.value = ""
    monkeypatch.setattr(widgets, "show_file_dialog", lambda **kw: None)
    w.export_button.clicked.emit()
    assert "error" in w.status.value


def test_annotate_export_scribbles_and_refusal(slide_viewer, tmp_path):
    viewer, _ = slide_viewer
    w = AnnotateWidget(viewer)
    with pytest.raises(ValueError, match="No mask layer"):
        w.export(tmp_path / "none.geojson")
    w.kind.value = "scribble"
    w.level.value = 16
    w.new_button.clicked.emit()
    layer = viewer.layers["tissue mask"]
    layer.data[2:10, 2:20] = 2
    layer.data[20:30, 40:60] = 1
    w.export(tmp_path / "s.geojson")
    names = sorted(
        f["properties"]["classification"]["name"]
        for f in json.loads((tmp_path / "s.geojson").read_text())["features"]
    )
    assert names == ["Background", "Tissue"]
