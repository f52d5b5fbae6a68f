"""Test-time flips: the mean over a slide's mirror images, tiled exactly, and where chosen."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gigapixel.core.errors import GigapixelError
from napari_gigapixel.core.inference import (
    PredictConfig,
    open_prediction,
    predict,
    predict_array,
    predict_whole,
)

SHAPE = (333, 517)  # not multiples of the stride: the padded image is what is mirrored


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(11).integers(0, 256, (*SHAPE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model():
    from napari_gigapixel.core.unet import build_unet, model_geometry, preset_config

    m = build_unet(preset_config("medium"), seed=4)
    return m, model_geometry(m)


def _mirrored_mean(m, geometry, image, darker=None, half=False):
    """The mean of the model's runs on the padded image (and ``darker[image]``)
    in its four orientations, each mirrored back: what the modes must equal.
    ``half``: the up-down and both-ways mirror images read through ``darker``
    instead of as they are (four runs in all)."""
    s = geometry.stride
    hp, wp = -(-SHAPE[0] // s) * s, -(-SHAPE[1] // s) * s
    padded = np.zeros((hp, wp, 3), np.uint8)
    padded[: SHAPE[0], : SHAPE[1]] = image
    dark = None if darker is None else darker[padded]
    runs = []
    for src in (padded,) if dark is None or half else (padded, dark):
        for fy, fx in ((1, 1), (-1, 1), (1, -1), (-1, -1)):
            run = dark if half and fy == -1 else src  # half: up-down and both-ways darker
            out = m(run[None, ::fy, ::fx].copy(), training=False).numpy()[0, :, :, 0]
            runs.append(out[::fy, ::fx])
    return np.mean(runs, axis=0)[: -(-SHAPE[0] // 4), : -(-SHAPE[1] // 4)]


def test_flips_are_the_mean_of_the_four_mirrored_runs(image, model):
    m, geometry = model
    want = _mirrored_mean(m, geometry, image)
    got = predict_whole(m, image, geometry, white_balance=False, tta="flips")
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    plain = predict_whole(m, image, geometry, white_balance=False)
    assert np.abs(got - plain).max() > 1e-3  # the mirror images do change the map


def test_flips_darker_add_the_four_mirrored_runs_of_the_darker_slide(image, model):
    from napari_gigapixel.core._infer_graph import DARKER_OD, darker_table
    from napari_gigapixel.core.input_norm import WHITE

    m, geometry = model
    table = darker_table()
    v = np.arange(256)
    below = v < WHITE
    np.testing.assert_array_equal(table[~below], v[~below])  # glass white and above: as they are
    # Stains x 1.2 in optical density, up to the rounding to grey levels.
    od = np.log(table[20:201] / WHITE) / np.log(v[20:201] / WHITE)
    assert np.all(np.abs(od - DARKER_OD) < 0.05)
    want = _mirrored_mean(m, geometry, image, darker=table)
    got = predict_whole(m, image, geometry, white_balance=False, tta="flips+darker")
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    flips = predict_whole(m, image, geometry, white_balance=False, tta="flips")
    assert np.abs(got - flips).max() > 1e-3
    tiled = predict_array(m, image, geometry, chunk=96, white_balance=False, tta="flips+darker")
    assert np.abs(tiled - got).max() <= 1e-5


@pytest.mark.parametrize("shape", [(1, 64, 96, 3), (1, 5, 3, 3)])  # even and odd byte counts
def test_the_darker_pixels_are_the_table_looked_up_two_bytes_at_a_time(shape):
    import tensorflow as tf

    from napari_gigapixel.core._infer_graph import (
        _darker_pixels,
        darker_pair_table,
        darker_table,
    )

    x = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    x.flat[:256] = np.arange(256)[: x.size]  # every grey level where there is room
    got = _darker_pixels(tf.constant(x), tf.constant(darker_pair_table())).numpy()
    assert got.dtype == np.uint8 and got.shape == x.shape
    np.testing.assert_array_equal(got, darker_table()[x])


def test_half_darker_reads_the_up_down_mirror_images_darker(image, model):
    """The default mode: the slide and its left-right mirror image as they are,
    its up-down and both-ways mirror images through the darker table; four
    passes, exact under tiling as the flips are."""
    from napari_gigapixel.core._infer_graph import darker_table

    m, geometry = model
    want = _mirrored_mean(m, geometry, image, darker=darker_table(), half=True)
    got = predict_whole(m, image, geometry, white_balance=False, tta="half-darker")
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    for other in ("flips", "flips+darker"):
        ref = predict_whole(m, image, geometry, white_balance=False, tta=other)
        assert np.abs(got - ref).max() > 1e-3, other
    for chunk in (96, 160):
        tiled = predict_array(
            m, image, geometry, chunk=chunk, white_balance=False, tta="half-darker"
        )
        assert np.abs(tiled - got).max() <= 1e-5, chunk


def test_tiled_flips_equal_the_whole_image_run(image, model):
    from napari_gigapixel.core.unet import Geometry

    m, geometry = model
    ref = predict_whole(m, image, geometry, white_balance=False, tta="flips")
    for chunk in (96, 160):
        tiled = predict_array(m, image, geometry, chunk=chunk, white_balance=False, tta="flips")
        assert tiled.shape == ref.shape
        assert np.abs(tiled - ref).max() <= 1e-5, chunk
    # A mirrored window reads after a pixel what the model reads before it:
    # the flips take the larger halo on both sides. With no context before a
    # pixel recorded, one pass is wrong at the chunks' edges; the flips are not.
    lopsided = Geometry(geometry.stride, 4, 0, max(geometry.rf_before, geometry.rf_after))
    plain = predict_whole(m, image, geometry, white_balance=False)
    one = predict_array(m, image, lopsided, chunk=96, white_balance=False)
    assert np.abs(one - plain).max() > 1e-3
    flips = predict_array(m, image, lopsided, chunk=96, white_balance=False, tta="flips")
    assert np.abs(flips - ref).max() <= 1e-5


def test_a_bad_mode_is_refused_before_any_work(tmp_path, image, model):
    m, geometry = model
    with pytest.raises(
        GigapixelError, match="'mirror' is not one of half-darker, flips, flips\\+darker, none"
    ):
        predict_array(m, image, geometry, tta="mirror")
    out = tmp_path / "p.zarr"
    with pytest.raises(GigapixelError, match="test-time augmentation"):
        list(predict(PredictConfig(model="x.keras", image=image, out=str(out), tta="mirror")))
    assert not out.exists()


def test_predict_half_darker_by_default_and_records_it(tmp_path, image, model):
    from napari_gigapixel.core.unet import save_model

    m, geometry = model
    path = tmp_path / "m.keras"
    save_model(m, path, geometry=geometry)
    off = {"min_width_um": 0, "min_object_um2": 0, "min_hole_um2": 0, "chunk": 160}
    assert PredictConfig(model="", image=None, out="").tta == "half-darker"
    for tta in ("half-darker", "none"):
        cfg = PredictConfig(model=str(path), image=image, out=str(tmp_path / tta), **off)
        if tta == "none":
            cfg.tta = "none"
        fin = list(predict(cfg))[-1]
        assert fin.result["tta"] == tta
        store = open_prediction(tmp_path / tta)
        assert store.metadata["tta"] == tta
        ref = predict_whole(m, image, geometry, white_balance=False, tta=tta)
        prob = store.probability[0].compute().astype(float)
        assert np.abs(prob - ref * 255).max() <= 0.5 + 1e-3, tta
