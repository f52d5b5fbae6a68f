"""Mask files: raster levels inferred, polygons rasterised, pyramids written atomically."""

from __future__ import annotations

import json
import os

import dask.array as da
import imagecodecs
import numpy as np
import pytest
import tifffile
import zarr

from napari_gigapixel.core.mask_io import (
    load_mask,
    polygon_downsample,
    polygons_to_geojson,
    rasterize_polygons,
    shapes_to_mask,
    write_mask,
)
from napari_gigapixel.core.masks import MaskError

SLIDE = (512, 1024)


def _pattern(shape: tuple[int, int]) -> np.ndarray:
    """A mask with structure on both axes, so a transposed or shifted read shows."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((yy // 7) + (xx // 11)) % 3 == 0).astype(np.uint8)


@pytest.mark.parametrize("level", [1, 4, 16])
@pytest.mark.parametrize("ext", [".tif", ".png", ".npy"])
def test_raster_masks_load_at_their_level(tmp_path, level, ext):
    mask = _pattern((SLIDE[0] // level, SLIDE[1] // level))
    path = tmp_path / f"m{ext}"
    if ext == ".tif":
        tifffile.imwrite(path, mask, tile=(16, 16) if level < 16 else None)
    elif ext == ".png":
        path.write_bytes(imagecodecs.png_encode(mask))
    else:
        np.save(path, mask)
    loaded = load_mask(path, SLIDE)
    assert loaded.downsample == level
    assert loaded.name == f"m{ext}"
    np.testing.assert_array_equal(np.asarray(loaded.array), mask)
    # Level-0 window read through the annotation level, nearest neighbour.
    win = loaded.read_window(64, 128, 32, 96)
    expect = np.repeat(np.repeat(mask, level, 0), level, 1)[64:128, 32:96]
    np.testing.assert_array_equal(win, expect)


def test_pyramidal_tiff_keeps_level0_lazy(tmp_path):
    mask = _pattern((256, 512))
    path = write_mask(tmp_path / "m.tif", mask, downsample=2)
    loaded = load_mask(path, SLIDE)
    assert isinstance(loaded.array, da.Array)
    assert loaded.shape == (256, 512) and loaded.downsample == 2
    np.testing.assert_array_equal(np.asarray(loaded.array), mask)


def test_inferred_level_tolerates_rounded_pyramid_sizes(tmp_path):
    np.save(tmp_path / "m.npy", np.ones((63, 125), np.uint8))  # ceil/floor of 1000x2000 / 16
    assert load_mask(tmp_path / "m.npy", (1000, 2000)).downsample == 16


def test_mismatched_shape_names_the_file(tmp_path):
    np.save(tmp_path / "wrong.npy", np.ones((100, 100), np.uint8))
    with pytest.raises(MaskError, match="wrong.npy.*cannot overlay"):
        load_mask(tmp_path / "wrong.npy", SLIDE)


def test_colour_image_and_unknown_files_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((128, 256, 3), np.uint8), photometric="rgb")
    with pytest.raises(MaskError, match="rgb.tif.*3-channel"):
        load_mask(tmp_path / "rgb.tif", SLIDE)
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(MaskError, match="unknown mask format"):
        load_mask(tmp_path / "m.txt", SLIDE)
    with pytest.raises(MaskError, match="no such mask file"):
        load_mask(tmp_path / "absent.tif", SLIDE)
    np.save(tmp_path / "f.npy", np.zeros((128, 256), np.float32))
    with pytest.raises(MaskError, match="integers"):
        load_mask(tmp_path / "f.npy", SLIDE)


def test_rasterize_uses_pixel_centres_and_even_odd_holes():
    square = np.array([[10, 5], [20, 5], [20, 15], [10, 15]], float)  # (x, y)
    out = rasterize_polygons([[square]], (32, 32), 1)
    expect = np.zeros((32, 32), np.uint8)
    expect[5:15, 10:20] = 1
    np.testing.assert_array_equal(out, expect)
    outer = np.array([[0, 0], [64, 0], [64, 64], [0, 64]], float)
    hole = np.array([[16, 16], [48, 16], [48, 48], [16, 48]], float)
    out = rasterize_polygons([[outer, hole]], (64, 128), 4, value=2)
    assert out.shape == (16, 32)
    assert out[1, 1] == 2 and out[14, 14] == 2
    assert out[8, 8] == 0  # inside the hole
    assert out[:, 16:].sum() == 0
    assert (out == 2).sum() == 16 * 16 - 8 * 8


def test_geojson_with_holes_and_multipolygon(tmp_path):
    outer = [[0, 0], [400, 0], [400, 400], [0, 400], [0, 0]]
    hole = [[100, 100], [300, 100], [300, 300], [100, 300], [100, 100]]
    a = [[600, 0], [700, 0], [700, 100], [600, 100], [600, 0]]
    b = [[800, 200], [1000, 200], [1000, 500], [800, 500], [800, 200]]
    doc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [outer, hole]}},
            {
                "type": "Feature",
                "geometry": {"type": "MultiPolygon", "coordinates": [[a], [b]]},
                "properties": {"classification": {"name": "Background"}},
            },
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}},
        ],
    }
    path = tmp_path / "tissue.geojson"
    path.write_text(json.dumps(doc))
    mask = load_mask(path, SLIDE)
    assert mask.downsample == 1 and mask.shape == SLIDE
    arr = np.asarray(mask.array)
    assert arr[50, 50] == 1 and arr[200, 200] == 0 and arr[350, 350] == 1
    assert arr[50, 650] == 1 and arr[300, 900] == 1 and arr[300, 700] == 0
    assert arr.sum() == 400 * 400 - 200 * 200 + 100 * 100 + 200 * 300
    scribble = np.asarray(load_mask(path, SLIDE, kind="scribble").array)
    assert scribble[50, 50] == 2 and scribble[50, 650] == 1 and scribble[200, 200] == 0
    # A QuPath export can also be a bare list of features.
    path.write_text(json.dumps(doc["features"][:1]))
    assert np.asarray(load_mask(path, SLIDE).array).sum() == 400 * 400 - 200 * 200


def test_geojson_of_a_gigapixel_slide_stays_under_16_mpx(tmp_path):
    slide = (16000, 64000)
    assert polygon_downsample(slide) == 8
    ring = np.array([[0, 0], [32000, 0], [32000, 8000], [0, 8000]], float)
    (tmp_path / "g.json").write_text(json.dumps(polygons_to_geojson([[ring]])))
    mask = load_mask(tmp_path / "g.json", slide)
    assert mask.downsample == 8 and mask.shape == (2000, 8000)
    assert np.asarray(mask.array).sum() == 1000 * 4000


def test_geojson_errors_name_the_file(tmp_path):
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(MaskError, match="bad.geojson"):
        load_mask(tmp_path / "bad.geojson", SLIDE)
    (tmp_path / "pts.geojson").write_text(json.dumps({"type": "Point", "coordinates": [1, 2]}))
    with pytest.raises(MaskError, match="pts.geojson.*no Polygon"):
        load_mask(tmp_path / "pts.geojson", SLIDE)


def test_shapes_layer_data_rasterise_in_yx():
    rect = np.array([[8, 16], [8, 48], [24, 48], [24, 16]], float)  # (y, x)
    ellipse = np.array([[40, 40], [40, 80], [60, 80], [60, 40]], float)
    path = np.array([[100, 0], [100, 120]], float)
    out = shapes_to_mask(
        [rect, ellipse, path],
        ["rectangle", "ellipse", "path"],
        (128, 128),
        downsample=2,
        value=[1, 2, 3],
        widths=8,
    )
    assert out.shape == (64, 64)
    assert (out == 1).sum() == 8 * 16  # 16 x 32 level-0 px at d=2
    assert out[25, 30] == 2 and out[20, 20] == 0 and out[21, 21] == 0
    ellipse_area = (out == 2).sum() * 4
    assert abs(ellipse_area - np.pi * 10 * 20) < 0.1 * np.pi * 10 * 20
    # A width-8 path along level-0 row 100 covers rows 96-104: mask rows 48-51.
    assert (out[48:52, 1:59] == 3).all() and out[47, 30] == 0 and out[52, 30] == 0
    with pytest.raises(MaskError, match="cannot be rasterised"):
        shapes_to_mask([rect], "star", (128, 128), 1)


@pytest.mark.parametrize("name", ["m.ome.zarr", "m.zarr", "m.tif"])
def test_write_read_round_trip(tmp_path, name):
    mask = _pattern((300, 700)) * 2
    src = da.from_array(mask, chunks=(128, 128))
    path = write_mask(tmp_path / name, src, downsample=4, kind="scribble")
    loaded = load_mask(path, (1200, 2800), kind="scribble")
    assert loaded.downsample == 4
    np.testing.assert_array_equal(np.asarray(loaded.array), mask)
    if name.endswith(".zarr"):
        group = zarr.open_group(path, mode="r")
        ms = group.attrs["multiscales"][0]
        assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [8.0, 8.0]
        assert group.attrs["napari_gigapixel"] == {"downsample": 4.0, "kind": "scribble"}
        level1 = group["1"][:]
    else:
        with tifffile.TiffFile(path) as tf:
            assert tf.shaped_metadata[0]["downsample"] == 4.0
            level1 = tf.series[0].levels[1].asarray()
    # Lower levels keep labels (2x2 max): no new values, thin lines survive.
    assert level1.shape == (150, 350)
    np.testing.assert_array_equal(level1, mask.reshape(150, 2, 350, 2).max(axis=(1, 3)))
    assert [f for f in os.listdir(tmp_path) if f.startswith(".")] == []


def test_write_refuses_to_overwrite_and_keeps_old_file_when_a_write_fails(tmp_path):
    def boom(block):
        raise RuntimeError("disk on fire")

    failing = da.ones((512, 512), np.uint8, chunks=256).map_blocks(boom, dtype=np.uint8)
    for name in ("m.tif", "m.ome.zarr"):
        path = write_mask(tmp_path / name, np.ones((64, 64), bool), downsample=8)
        with pytest.raises(MaskError, match="already exists"):
            write_mask(path, np.zeros((64, 64), np.uint8))
        with pytest.raises(RuntimeError, match="disk on fire"):
            write_mask(path, failing, overwrite=True)
        kept = load_mask(path, (512, 512))
        assert kept.downsample == 8 and np.asarray(kept.array).all()
        write_mask(path, np.zeros((128, 128), np.uint8), downsample=4, overwrite=True)
        assert load_mask(path, (512, 512)).downsample == 4
    assert sorted(os.listdir(tmp_path)) == ["m.ome.zarr", "m.tif"]


def test_write_rejects_bad_paths_and_arrays(tmp_path):
    with pytest.raises(MaskError, match="use .ome.zarr or .tif"):
        write_mask(tmp_path / "m.png", np.ones((8, 8), np.uint8))
    with pytest.raises(MaskError, match="3-channel"):
        write_mask(tmp_path / "m.tif", np.ones((8, 8, 3), np.uint8))
    with pytest.raises(MaskError, match="does not exist"):
        write_mask(tmp_path / "no" / "m.tif", np.ones((8, 8), np.uint8))
