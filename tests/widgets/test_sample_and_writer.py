"""Sample data and the Labels writer, through a real napari viewer (run under xvfb-run -a)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gigapixel.core.mask_io import load_mask
from napari_gigapixel.core.masks import MaskError
from napari_gigapixel.core.synthetic import synthetic_region

SAMPLE = (512, 2048)


@pytest.fixture
def small_sample(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_GIGAPIXEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NAPARI_GIGAPIXEL_SAMPLE_SHAPE", f"{SAMPLE[0]}x{SAMPLE[1]}")
    return tmp_path


def test_open_sample_gives_a_multiscale_slide_and_its_ground_truth(
    make_napari_viewer, small_sample
):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-gigapixel", "synthetic_slide")
    assert [ly._type_string for ly in layers] == ["image", "labels"]
    image, labels = layers
    assert image.rgb and image.multiscale
    assert image.data[0].shape == (*SAMPLE, 3)
    assert len(image.data) >= 2
    assert labels.multiscale and labels.name == "ground truth"
    assert labels.data[0].shape == SAMPLE
    assert labels.metadata["downsample"] == 1.0
    # The overlay lines up: same scale as the slide layer.
    np.testing.assert_allclose(labels.scale, image.scale)
    truth_rgb, truth = synthetic_region(SAMPLE, 0, 0, 256, 0, 512)
    np.testing.assert_array_equal(np.asarray(labels.data[0][:256, :512]), truth)
    # The slide is JPEG: close to, not equal to, the generated pixels.
    diff = np.abs(np.asarray(image.data[0][:256, :512]).astype(int) - truth_rgb).mean()
    assert diff < 4
    # A second open reuses the cached files.
    cached = sorted(p.name for p in (small_sample / "cache").iterdir())
    viewer.open_sample("napari-gigapixel", "synthetic_slide")
    assert sorted(p.name for p in (small_sample / "cache").iterdir()) == cached


@pytest.mark.parametrize("name", ["mask.ome.zarr", "mask.tif"])
def test_saving_a_labels_layer_writes_a_mask_at_its_level(make_napari_viewer, tmp_path, name):
    viewer = make_napari_viewer()
    data = np.zeros((64, 128), np.uint8)
    data[10:30, 20:90] = 1
    data[40:50, 5:15] = 2
    viewer.add_labels(data, name="painted", scale=(16, 16))
    out = tmp_path / name
    written = viewer.layers.save(str(out), selected=False, plugin="napari-gigapixel")
    assert written == [str(out)]
    mask = load_mask(out, (1024, 2048))
    assert mask.downsample == 16
    np.testing.assert_array_equal(np.asarray(mask.array), data)


def test_metadata_downsample_wins_over_a_micron_scale(tmp_path):
    from napari_gigapixel._writer import write_labels

    data = [np.ones((32, 64), np.uint8), np.ones((16, 32), np.uint8)]  # a multiscale layer
    meta = {"scale": (2.0, 2.0), "metadata": {"downsample": 4.0, "kind": "scribble"}}
    (path,) = write_labels(str(tmp_path / "m.tif"), data, meta)
    mask = load_mask(path, (128, 256), kind="scribble")
    assert mask.downsample == 4 and mask.shape == (32, 64)
    with pytest.raises(MaskError, match="scales differ"):
        write_labels(str(tmp_path / "n.tif"), data[0], {"scale": (2.0, 3.0), "metadata": {}})
