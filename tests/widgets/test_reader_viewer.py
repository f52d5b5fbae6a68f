"""The npe2 reader in a real napari viewer (run under ``xvfb-run -a``).

Run: ``xvfb-run -a .venv/bin/python -m pytest tests/widgets/test_reader_viewer.py``
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_gigapixel._reader import get_reader
from napari_gigapixel.core.slide import SlideError


def test_viewer_opens_pyramidal_tiff_as_one_multiscale_rgb_layer(
    make_napari_viewer, slide_fixtures
):
    viewer = make_napari_viewer()
    layers = viewer.open(str(slide_fixtures / "boxes.tiff"), plugin="napari-gigapixel")
    assert len(layers) == 1 and len(viewer.layers) == 1
    layer = layers[0]
    assert layer._type_string == "image"
    assert layer.multiscale and layer.rgb
    assert len(layer.data) == 4
    assert layer.data[0].shape == (250, 300, 3)
    assert layer.name == "boxes"
    assert tuple(layer.contrast_limits) == (0, 255)
    assert tuple(layer.scale) == (1.0, 1.0)  # no physical pixel size in this file
    assert layer.metadata["path"].endswith("boxes.tiff")
    # napari reads pixels back through our dask pyramid
    with tifffile.TiffFile(slide_fixtures / "boxes.tiff") as tif:
        expected = tif.series[0].levels[3].asarray()
    np.testing.assert_array_equal(np.asarray(layer.data[3]), expected)


def test_viewer_opens_svs_with_physical_scale(make_napari_viewer, slide_fixtures):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(slide_fixtures / "small.svs"), plugin="napari-gigapixel")
    assert layer.rgb
    assert layer.data[0].shape == (16, 16, 3)
    assert tuple(layer.scale) == pytest.approx((0.499, 0.499))
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert layer.metadata["mpp"] == pytest.approx([0.499, 0.499])


def test_viewer_declines_a_text_file(make_napari_viewer, tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("not an image")
    viewer = make_napari_viewer()
    with pytest.raises(ValueError, match="napari-gigapixel"):
        viewer.open(str(path), plugin="napari-gigapixel")
    assert len(viewer.layers) == 0


def test_get_reader_declines_what_it_cannot_take(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert get_reader(str(text)) is None
    assert get_reader(str(folder)) is None
    assert get_reader(str(tmp_path / "missing.svs")) is None
    assert get_reader([str(text), str(text)]) is None
    gray16 = tmp_path / "stack.tif"
    tifffile.imwrite(gray16, np.zeros((3, 20, 20), np.uint16))
    assert get_reader(str(gray16)) is None  # microscopy stack: leave it to other readers


def test_get_reader_layer_tuple(tmp_path, slide_fixtures):
    path = str(slide_fixtures / "small.svs")
    reader = get_reader([path])
    assert callable(reader)
    ((levels, kwargs, kind),) = reader(path)
    assert kind == "image"
    assert kwargs["multiscale"] is True and kwargs["rgb"] is True
    assert kwargs["name"] == "small"
    assert kwargs["scale"] == pytest.approx((0.499, 0.499))
    assert kwargs["units"] == ("um", "um")
    assert kwargs["contrast_limits"] == [0, 255]
    assert levels[0].shape == (16, 16, 3) and levels[0].dtype == np.uint8


def test_broken_slide_raises_one_clear_error(make_napari_viewer, tmp_path):
    data = np.full((128, 128, 3), 200, np.uint8)
    path = tmp_path / "broken.tif"
    tifffile.imwrite(path, data, tile=(64, 64), compression="zlib", photometric="rgb")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00" * count)
    reader = get_reader(str(path))
    assert callable(reader)
    with pytest.raises(SlideError, match="broken.tif: cannot decode"):
        reader(str(path))
    viewer = make_napari_viewer()
    with pytest.raises(SlideError, match="broken.tif: cannot decode"):
        viewer.open(str(path), plugin="napari-gigapixel")
    assert len(viewer.layers) == 0  # never a half-loaded layer
