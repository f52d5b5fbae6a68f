"""Masks mean what they say: stored kind, label values, levels, polygons (issue 10, item 3)."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest

from napari_gigapixel.core.mask_io import load_mask, shapes_to_mask, write_mask
from napari_gigapixel.core.masks import (
    AnnotationMask,
    MaskError,
    check_label_values,
    infer_downsample,
    labels_to_uint8,
)
from napari_gigapixel.core.rasterize import rasterize_polygons

SLIDE = (512, 1024)


def _scribbles(shape=(128, 256)) -> np.ndarray:
    s = np.zeros(shape, np.uint8)
    s[10:20, 10:100] = 1  # background scribble
    s[60:70, 30:200] = 2  # tissue scribble
    return s


@pytest.mark.parametrize("name", ["s.ome.zarr", "s.tif"])
def test_a_saved_scribble_mask_loads_as_scribbles(tmp_path, name):
    path = write_mask(tmp_path / name, _scribbles(), downsample=4, kind="scribble")
    mask = load_mask(path, SLIDE)  # no kind: the file's own
    assert mask.kind == "scribble"
    target, weight = mask.targets_and_weights(mask.read_window(40, 48, 40, 48))
    # A background scribble stays background (it is not tissue, as dense reading would say).
    assert target.sum() == 0 and weight.all()
    assert load_mask(path, SLIDE, kind="scribble").kind == "scribble"
    with pytest.raises(MaskError, match="saved as a scribble mask.*loaded as dense"):
        load_mask(path, SLIDE, kind="dense")


def test_a_file_without_a_kind_is_dense_unless_asked(tmp_path):
    np.save(tmp_path / "m.npy", _scribbles())
    assert load_mask(tmp_path / "m.npy", SLIDE).kind == "dense"
    assert load_mask(tmp_path / "m.npy", SLIDE, kind="scribble").kind == "scribble"
    with pytest.raises(MaskError, match="kind must be"):
        load_mask(tmp_path / "m.npy", SLIDE, kind="soft")


def test_scribble_values_other_than_0_1_2_are_named(tmp_path):
    bad = _scribbles()
    bad[0, 0], bad[1, 1], bad[2, 2] = 3, 7, 255
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(MaskError, match=r"bad.npy: a scribble mask holds the values 3, 7, 255"):
        load_mask(tmp_path / "bad.npy", SLIDE, kind="scribble")
    with pytest.raises(MaskError, match="values 3, 7, 255"):
        AnnotationMask(bad, 4.0, "scribble")
    # Lazy arrays are checked chunk by chunk, and per window when read.
    lazy = da.from_array(bad, chunks=(32, 32))
    with pytest.raises(MaskError, match="values 3, 7, 255"):
        check_label_values(lazy, "scribble", "lazy")
    with pytest.raises(MaskError, match="values 3"):
        AnnotationMask(lazy, 4.0, "scribble").read_window(0, 8, 0, 8)
    with pytest.raises(MaskError, match="values 3, 7, 255"):
        write_mask(tmp_path / "bad.tif", bad, downsample=4, kind="scribble")
    assert not (tmp_path / "bad.tif").exists()


def test_dense_values_zero_background_positive_tissue_negative_refused(tmp_path):
    labels = np.zeros((128, 256), np.int32)
    labels[5:9, 5:9] = 258  # a napari label above 255: tissue, never wrapped to 2
    np.save(tmp_path / "ok.npy", labels)
    mask = load_mask(tmp_path / "ok.npy", SLIDE)
    window = mask.read_window(20, 36, 20, 36, stride=4)
    assert (window == 255).all()  # clipped, still tissue
    labels[0, 0] = -1
    np.save(tmp_path / "neg.npy", labels)
    with pytest.raises(MaskError, match="neg.npy: a dense mask holds the values -1"):
        load_mask(tmp_path / "neg.npy", SLIDE)
    np.save(tmp_path / "f.npy", labels.astype(np.float32))
    with pytest.raises(MaskError, match="integers or booleans"):
        load_mask(tmp_path / "f.npy", SLIDE)


def test_napari_labels_above_255_never_wrap():
    labels = np.array([[0, 1, 256, 258]], np.int32)
    np.testing.assert_array_equal(labels_to_uint8(labels, "dense"), [[0, 1, 255, 255]])
    with pytest.raises(MaskError, match="values 256, 258"):
        labels_to_uint8(labels, "scribble")
    square = np.array([[0, 0], [0, 8], [8, 8], [8, 0]], float)
    with pytest.raises(MaskError, match="label value 258"):
        shapes_to_mask([square], "polygon", (16, 16), 1, value=258)
    with pytest.raises(MaskError, match="label value -1"):
        rasterize_polygons([[square]], (16, 16), 1, value=-1)
    assert shapes_to_mask([square], "polygon", (16, 16), 1, value=2).max() == 2


def test_qupath_ignore_classes_are_unlabelled(tmp_path):
    big = [[0, 0], [600, 0], [600, 400], [0, 400], [0, 0]]
    inner = [[100, 100], [300, 100], [300, 300], [100, 300], [100, 100]]
    doc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [big]}},
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [inner]},
                "properties": {"classification": {"name": "Ignore*"}},
            },
        ],
    }
    path = tmp_path / "q.geojson"
    path.write_text(json.dumps(doc))
    arr = np.asarray(load_mask(path, SLIDE, kind="scribble").array)
    assert arr[50, 50] == 2 and arr[200, 200] == 0  # inside Ignore*: unlabelled
    dense = np.asarray(load_mask(path, SLIDE).array)
    assert dense[50, 50] == 1 and dense[200, 200] == 0


@pytest.mark.parametrize(
    ("mask_shape", "slide_shape", "match"),
    [
        ((3, 3), (3000, 3000), "too small to infer its level"),
        ((5, 5), (3000, 3000), "too small to infer its level"),
        ((3, 6), (1024, 2048), "too small to infer its level"),
        ((100, 120), (300, 300), "cannot overlay"),
        ((100, 97), (300, 300), "no consistent downsample"),
    ],
)
def test_masks_whose_level_cannot_be_told_are_errors(mask_shape, slide_shape, match):
    with pytest.raises(MaskError, match=match):
        infer_downsample(mask_shape, slide_shape)


def test_a_mask_the_size_of_its_slide_is_level_0_however_small():
    assert infer_downsample((3, 3), (3, 3)) == 1.0


def test_polygons_all_outside_the_slide_are_an_error(tmp_path):
    # Micrometre coordinates of a 0.25 um/px slide read as pixels: far outside.
    ring = [[5000, 5000], [9000, 5000], [9000, 8000], [5000, 8000], [5000, 5000]]
    path = tmp_path / "um.geojson"
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    with pytest.raises(MaskError, match=r"um.geojson: all 1 polygons lie outside the 512 x 1024"):
        load_mask(path, SLIDE)
    # One polygon partly inside is fine.
    part = [[1000, 500], [1100, 500], [1100, 600], [1000, 600], [1000, 500]]
    path.write_text(json.dumps({"type": "MultiPolygon", "coordinates": [[ring], [part]]}))
    assert np.asarray(load_mask(path, SLIDE).array)[505, 1010] == 1


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"type": "Polygon", "coordinates": [[[0, 0], [NaN, 1], [1, 1]]]}', "not a readable"),
        ('{"type": "Polygon", "coordinates": [[[0, 0], [Infinity, 1], [1, 1]]]}', "readable"),
        ('{"type": "Polygon", "coordinates": [[[0, 0], [1e999, 1], [1, 1]]]}', "not finite"),
        ('{"type": "FeatureCollection", "features": null}', "'features' must be a list"),
        ('{"type": "Polygon", "coordinates": 5}', "needs a list of rings"),
        ('{"type": "Polygon", "coordinates": [[1, 2, 3]]}', "list of \\[x, y\\] points"),
        ('{"type": "Polygon", "coordinates": [[["a", "b"]]]}', "malformed coordinates"),
        ('{"type": "Feature", "geometry": [1, 2]}', "must be a JSON object"),
        ("[[[[[[[[[[" * 200 + "]]]]]]]]]]" * 200, "GeoJSON"),
    ],
)
def test_malformed_geojson_is_a_mask_error(tmp_path, text, match):
    path = tmp_path / "bad.geojson"
    path.write_text(text)
    with pytest.raises(MaskError, match=match):
        load_mask(path, SLIDE)
