"""Annotate widget: new, Otsu, file (raster, GeoJSON), Shapes and saved masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_gigapixel._widgets._layers import default_level, level0_shape
from napari_gigapixel._widgets.annotate import AnnotateWidget
from napari_gigapixel.core.errors import GigapixelError


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def _truth_at(mask_path: str, d: int) -> np.ndarray:
    """Full-resolution ground truth sampled at block centres of level 1/d."""
    full = tifffile.imread(mask_path, level=0)
    return full[d // 2 :: d, d // 2 :: d]


def test_default_level_is_the_finest_under_16_mpx():
    assert default_level((4096, 16384)) == 4
    assert default_level((16000, 64000)) == 8  # 2000 x 8000 = 16 Mpx at 1/8
    assert default_level((20000, 80000)) == 16  # 25 Mpx at 1/8
    assert default_level((65536, 65536)) == 32
    assert default_level((10**6, 10**6)) == 32  # never coarser than the coarsest level


def test_new_mask_overlays_the_slide_and_paints_at_its_level(slide_viewer, qtbot):
    viewer, slide = slide_viewer
    w = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.slide.value is slide
    w.level.value = 8
    w.new_button.clicked.emit()
    layer = viewer.layers["tissue mask"]
    assert layer.data.shape == (512 // 8, 1024 // 8)
    assert tuple(layer.scale) == pytest.approx(tuple(8 * np.asarray(slide.scale)))
    # Level-0 pixel (100, 300) is in mask pixel (12, 37): the overlay lines up.
    world = slide.data_to_world((100, 300))
    assert tuple(np.floor(layer.world_to_data(world) + 0.5).astype(int)) == (12, 37)
    # Painting happens on the annotation-level array.
    layer.paint((12, 37), 1, refresh=True)
    assert layer.data[12, 37] == 1
    assert layer.data.sum() > 0 and layer.data.size == 64 * 128


def test_otsu_mask_matches_the_tissue(slide_viewer, tiny_slide):
    viewer, _ = slide_viewer
    w = AnnotateWidget(viewer)
    w.level.value = 4
    w.otsu_button.clicked.emit()
    layer = viewer.layers["tissue mask"]
    assert layer.data.shape == (128, 256)
    assert set(np.unique(layer.data)) <= {0, 1}
    assert _dice(layer.data, _truth_at(tiny_slide[1], 4)) > 0.8
    # Scribbles from Otsu: every pixel labelled, background 1, tissue 2.
    w.kind.value = "scribble"
    w.otsu_button.clicked.emit()
    layer = viewer.layers["tissue mask"]
    assert set(np.unique(layer.data)) == {1, 2}
    assert layer.metadata["kind"] == "scribble"


def test_load_raster_mask_infers_its_level(slide_viewer, tiny_slide, tmp_path):
    viewer, slide = slide_viewer
    w = AnnotateWidget(viewer)
    # A full-resolution mask file (the synthetic ground truth) and a 1/4 one.
    layer = w.load_file(tiny_slide[1])
    assert layer.metadata["downsample"] == 1.0
    assert layer.data.shape == (512, 1024)
    quarter = _truth_at(tiny_slide[1], 4).astype(np.uint8)
    tifffile.imwrite(tmp_path / "quarter.tif", quarter)
    layer = w.load_file(str(tmp_path / "quarter.tif"))
    assert layer.metadata["downsample"] == 4.0
    assert tuple(layer.scale) == pytest.approx(tuple(4 * np.asarray(slide.scale)))
    np.testing.assert_array_equal(layer.data > 0, quarter > 0)


def test_load_raster_that_cannot_overlay_is_refused(slide_viewer, tmp_path):
    viewer, _ = slide_viewer
    w = AnnotateWidget(viewer)
    bad = tmp_path / "wrong_shape.tif"
    tifffile.imwrite(bad, np.ones((100, 100), np.uint8))
    with pytest.raises(GigapixelError, match="wrong_shape.tif"):
        w.load_file(str(bad))
    # Through the button: a notification and a status line, no layer.
    w.file.value = str(bad)
    w.load_button.clicked.emit()
    assert "error" in w.status.value
    assert "tissue mask" not in viewer.layers


def test_load_geojson_polygons_with_holes(slide_viewer, tmp_path):
    viewer, _ = slide_viewer
    w = AnnotateWidget(viewer)
    w.level.value = 4
    square = [[x, y] for x, y in [(40, 40), (440, 40), (440, 440), (40, 440), (40, 40)]]
    hole = [[x, y] for x, y in [(200, 200), (280, 200), (280, 280), (200, 280), (200, 200)]]
    other = [[x, y] for x, y in [(600, 100), (900, 100), (900, 300), (600, 300), (600, 100)]]
    geo = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [square, hole]},
                "properties": {"classification": {"name": "Tissue"}},
            },
            {
                "type": "Feature",
                "geometry": {"type": "MultiPolygon", "coordinates": [[other]]},
                "properties": {},
            },
        ],
    }
    path = tmp_path / "annotations.geojson"
    path.write_text(json.dumps(geo))
    layer = w.load_file(str(path))
    d = layer.metadata["downsample"]
    data = np.asarray(layer.data)

    def at(x: int, y: int) -> int:  # level-0 (x, y) -> mask value
        return int(data[int(y // d), int(x // d)])

    assert at(100, 100) == 1  # inside the polygon
    assert at(240, 240) == 0  # inside its hole
    assert at(750, 200) == 1  # the MultiPolygon
    assert at(500, 480) == 0  # outside everything


def test_rasterise_shapes_layer(slide_viewer):
    viewer, slide = slide_viewer
    w = AnnotateWidget(viewer)
    w.level.value = 4
    # Drawn in world coordinates (the slide layer may carry a physical scale).
    corners = np.array([[64, 128], [64, 512], [256, 512], [256, 128]])
    shapes = viewer.add_shapes(
        [corners * np.asarray(slide.scale)],
        shape_type="rectangle",
        name="drawn",
    )
    w.reset_choices()
    w.shapes.value = shapes
    w.shapes_button.clicked.emit()
    data = viewer.layers["tissue mask"].data
    assert data.shape == (128, 256)
    # The rectangle covers level-0 rows 64-256 and columns 128-512.
    assert data[16:64, 32:128].all()
    assert data.sum() == pytest.approx(48 * 96, rel=0.1)
    assert data[100:, :].sum() == 0


def test_save_mask_through_the_plugin_writer(slide_viewer, tmp_path):
    from napari_gigapixel.core.mask_io import load_mask

    viewer, slide = slide_viewer
    w = AnnotateWidget(viewer)
    w.level.value = 8
    w.new_button.clicked.emit()
    layer = viewer.layers["tissue mask"]
    layer.data[10:30, 20:60] = 1
    out = tmp_path / "painted.ome.zarr"
    w.save_path.value = str(out)
    w.save_button.clicked.emit()
    assert out.exists()
    back = load_mask(str(out), level0_shape(slide))
    assert back.downsample == 8.0
    np.testing.assert_array_equal(np.asarray(back.array) > 0, layer.data > 0)


def test_saved_scribbles_load_as_scribbles_and_labels_never_wrap(slide_viewer, tmp_path):
    from napari_gigapixel.core.mask_io import write_mask
    from napari_gigapixel.core.masks import MaskError

    viewer, slide = slide_viewer
    w = AnnotateWidget(viewer)
    assert w.kind_value == "dense"
    scribbles = np.zeros((128, 256), np.uint8)
    scribbles[10:20, 10:100] = 1  # background scribble
    scribbles[60:70, 30:200] = 2  # tissue scribble
    path = write_mask(tmp_path / "s.ome.zarr", scribbles, downsample=4, kind="scribble")
    layer = w.load_file(path)
    # The file's kind wins: background scribbles are not read as tissue.
    assert w.kind_value == "scribble" and layer.metadata["kind"] == "scribble"
    np.testing.assert_array_equal(layer.data, scribbles)
    # A napari label above 255 painted on a scribble mask is refused, not wrapped to 2.
    wide = layer.data.astype(np.int32)
    wide[0, 0] = 258
    layer.data = wide
    from napari_gigapixel._widgets._layers import mask_from_labels

    with pytest.raises(MaskError, match="scribble mask holds the values"):
        mask_from_labels(layer, slide)
