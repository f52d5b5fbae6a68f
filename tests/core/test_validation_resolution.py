"""A validation ROI at a working resolution other than level 0 (here pyramid level 1).

The rectangle (level-0 pixels, deliberately off every grid) is snapped outwards
to whole output pixels of the training image at level 1; its labels get weight 0
in the training loss (the streamed gradient equals the whole-image gradient with
those labels removed) and its validation Dice equals a forward pass over the
same level-1 pixels computed here independently.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from napari_gigapixel.core import _backend  # noqa: E402
from napari_gigapixel.core._train_augment import SlideView  # noqa: E402
from napari_gigapixel.core._train_data import EXCLUDED, build_image_data  # noqa: E402
from napari_gigapixel.core.events import Finished, ValidationEvent  # noqa: E402
from napari_gigapixel.core.image_step import image_step  # noqa: E402
from napari_gigapixel.core.losses import whole_image_loss  # noqa: E402
from napari_gigapixel.core.resolution import Resolution  # noqa: E402
from napari_gigapixel.core.tiling import padded_shape, tile_grid  # noqa: E402
from napari_gigapixel.core.training import TrainConfig, train  # noqa: E402
from napari_gigapixel.core.unet import ModelConfig, build_unet, model_geometry  # noqa: E402
from napari_gigapixel.core.validation import build_validation  # noqa: E402

SMALL = ModelConfig(widths=(4, 6, 8), decoder_widths=(3, 4, 4))
SHAPE = (600, 1100)  # level 1: 300 x 550
TRAIN_ROI = (10, 30, 590, 1090)  # level 1: origin (5, 15), off the output grid of 4
VAL_ROI = (101, 203, 297, 511)  # odd, on no grid
LEVEL1 = Resolution(level=1)
OS = 4


def _expected_rect(d: int = 2) -> tuple[int, int, int, int]:
    """The snapped rectangle in pixels of downsample ``d``, worked out by hand from the rule."""
    oy, ox = TRAIN_ROI[0] // d, TRAIN_ROI[1] // d  # training origin at that resolution
    y0, x0 = VAL_ROI[0] // d, VAL_ROI[1] // d  # outwards to its pixels
    y1, x1 = math.ceil(VAL_ROI[2] / d), math.ceil(VAL_ROI[3] / d)
    return (
        oy + (y0 - oy) // OS * OS,
        ox + (x0 - ox) // OS * OS,
        oy + math.ceil((y1 - oy) / OS) * OS,
        ox + math.ceil((x1 - ox) / OS) * OS,
    )


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    from napari_gigapixel.core.synthetic import make_synthetic_slide

    d = tmp_path_factory.mktemp("val1")
    # Lossless, so the level-1 pixels read back here are the ones trained on.
    return make_synthetic_slide(
        d / "s.ome.tif", shape=SHAPE, seed=4, compression="deflate", tile=256
    )


def _cfg(slide, out, **kw):
    base = dict(
        images=[slide[0]],
        masks=[slide[1]],
        rois=[TRAIN_ROI],
        out=str(out),
        steps=1,
        lr=1e-2,
        model=SMALL,
        seed=7,
        tile=96,
        mixed_precision=False,
        dtype="float64",
        checkpoint_every=100,
        resolution=LEVEL1,
        val_roi=VAL_ROI,
        val_every=1,
        white_balance=False,  # the independent pass below reads the raw pixels
        augment="none",
    )
    base.update(kw)
    return TrainConfig(**base)


def _drain(gen):
    try:
        while True:
            next(gen)
    except StopIteration as done:
        return done.value


def _data(slide, resolution=LEVEL1):
    return build_image_data(
        slide[0],
        slide[1],
        roi=TRAIN_ROI,
        kind=None,
        output_stride=OS,
        cache_in_memory=lambda n: True,
        resolution=resolution,
    )


def test_val_roi_at_level_1_is_left_out_of_the_training_loss_exactly(slide, tmp_path):
    full, excluded = _data(slide), _data(slide)
    assert full.origin == (5, 15) and full.downsample == 2.0
    cfg = _cfg(slide, tmp_path / "m.keras")
    (vdata,) = _drain(build_validation(cfg, [excluded], OS, lambda n: True, LEVEL1))
    sy0, sx0, sy1, sx1 = _expected_rect()
    assert vdata.origin == (sy0, sx0) and vdata.shape == (sy1 - sy0, sx1 - sx0)
    # Output pixels of the training image that the rectangle covers: weight 0.
    ho, wo = full.labels.shape
    oy0, oy1 = (sy0 - 5) // OS, (sy1 - 5) // OS
    ox0, ox1 = (sx0 - 15) // OS, (sx1 - 15) // OS
    codes = excluded.labels.read(0, ho, 0, wo)
    inside = np.zeros((ho, wo), bool)
    inside[oy0:oy1, ox0:ox1] = True
    assert np.all(codes[inside] == EXCLUDED) and not np.any(codes[~inside] == EXCLUDED)
    y, w = full.labels_yw(0, ho, 0, wo)
    assert excluded.n_labelled == full.n_labelled - inside.sum()
    # ... and they are the validation region's labels, pixel for pixel.
    vy, _ = vdata.labels_yw(0, oy1 - oy0, 0, ox1 - ox0)
    np.testing.assert_array_equal(vy, y[inside].reshape(vy.shape))
    vh, vw = vdata.shape
    np.testing.assert_array_equal(
        vdata.image.read(0, vh, 0, vw), full.image.read(sy0 - 5, sy1 - 5, sx0 - 15, sx1 - 15)
    )

    # The streamed gradient of the excluded data = the whole-image gradient
    # of the full data's labels with the rectangle's weights set to 0.
    model = build_unet(SMALL, seed=3, dtype="float64")
    rng = np.random.default_rng(4)
    model.set_weights(
        [v + rng.normal(0, 0.1, v.shape) if v.ndim == 1 else v * 1.5 for v in model.get_weights()]
    )
    geo = model_geometry(model)
    streamed = image_step(
        _backend.TileStep(model, 1),
        SlideView(excluded, OS, (0, False, 1.0, 0.0)),
        tile_grid(excluded.shape, 64, geo.halo, geo.stride),
        geo,
        "dice+bce",
        excluded.n_labelled,
        1,
    )
    h, wd = full.shape
    hp, wp = padded_shape((h, wd), geo.stride)
    x = np.zeros((1, hp, wp, 3), np.uint8)
    x[0, :h, :wd] = full.image.read(0, h, 0, wd)
    w_removed = np.where(inside, 0, w).astype(np.float64)
    with tf.GradientTape() as tape:
        p = tf.cast(model(x, training=True)[0, :ho, :wo, 0], tf.float64)
        value = whole_image_loss(
            p, tf.constant(y, tf.float64), tf.constant(w_removed), "dice+bce", w_removed.sum()
        )
    whole = [g.numpy() for g in tape.gradient(value, model.trainable_variables)]
    scale = max(float(np.abs(g).max()) for g in whole)
    err = max(float(np.abs(a - b).max()) for a, b in zip(streamed.grads, whole)) / scale
    assert err < 1e-10 and streamed.loss == pytest.approx(float(value), rel=1e-10)
    # Control: with the rectangle's labels kept, the gradient is another one.
    with tf.GradientTape() as tape:
        p = tf.cast(model(x, training=True)[0, :ho, :wo, 0], tf.float64)
        kept = whole_image_loss(
            p, tf.constant(y, tf.float64), tf.constant(w, tf.float64), "dice+bce", w.sum()
        )
    other = [g.numpy() for g in tape.gradient(kept, model.trainable_variables)]
    assert max(float(np.abs(a - b).max()) for a, b in zip(other, whole)) / scale > 1e-4
    for d in (full, excluded, vdata):
        d.close()


def test_validation_dice_at_level_1_equals_an_independent_count(slide, tmp_path):
    import tifffile

    from napari_gigapixel.core.slide import open_slide
    from napari_gigapixel.core.unet import load_model

    out = tmp_path / "m.keras"
    events = list(train(_cfg(slide, out)))
    assert isinstance(events[-1], Finished) and not events[-1].stopped
    (val,) = [e for e in events if isinstance(e, ValidationEvent)]
    # The model after step 1 is the one validated at step 1 and the one saved.
    model, meta = load_model(out)
    geo = meta["geometry"]
    sy0, sx0, sy1, sx1 = _expected_rect()
    with open_slide(slide[0]) as s:
        assert s.downsamples[1] == 2.0
        px = np.asarray(s.levels[1][sy0:sy1, sx0:sx1, :3])
    h, w = px.shape[:2]
    hp, wp = padded_shape((h, w), geo.stride)
    x = np.zeros((1, hp, wp, 3), np.uint8)
    x[0, :h, :w] = px
    ho, wo = -(-h // OS), -(-w // OS)
    p = model(x, training=False).numpy()[0, :ho, :wo, 0]
    # Labels: the level-0 mask at the centre of each output pixel's block
    # (level-1 pixels [sy0 + 4i, sy0 + 4i + 4) = level-0 [2 sy0 + 8i, ... + 8)).
    mask0 = tifffile.imread(slide[1], level=0)
    truth = mask0[2 * sy0 + 4 :: 8, 2 * sx0 + 4 :: 8][:ho, :wo] > 0
    hard = p > 0.5
    dice = 2 * np.sum(hard & truth) / (np.sum(hard) + np.sum(truth))
    assert 0.0 < dice < 1.0
    assert val.dice == pytest.approx(dice, abs=1e-12)
    assert any("validation ROI" in getattr(e, "text", "") for e in events)


def test_val_roi_at_an_area_averaged_mpp_covers_exactly_the_excluded_pixels(slide, tmp_path):
    # 1.5 um/px on a 0.5 um/px slide: no level has it, so 3 x 3 area means of level 0.
    res = Resolution(mpp=1.5)
    full, excluded = _data(slide, res), _data(slide, res)
    assert full.downsample == 3.0 and full.origin == (3, 10)
    cfg = _cfg(slide, tmp_path / "m.keras", resolution=res)
    (vdata,) = _drain(build_validation(cfg, [excluded], OS, lambda n: True, res))
    sy0, sx0, sy1, sx1 = _expected_rect(3)
    assert vdata.origin == (sy0, sx0) and vdata.shape == (sy1 - sy0, sx1 - sx0)
    oy0, oy1 = (sy0 - 3) // OS, (sy1 - 3) // OS
    ox0, ox1 = (sx0 - 10) // OS, (sx1 - 10) // OS
    ho, wo = full.labels.shape
    y, w = full.labels_yw(0, ho, 0, wo)
    _, w_ex = excluded.labels_yw(0, ho, 0, wo)
    inside = np.zeros((ho, wo), bool)
    inside[oy0:oy1, ox0:ox1] = True
    np.testing.assert_array_equal(w_ex, np.where(inside, 0, w))
    vy, vw = vdata.labels_yw(0, oy1 - oy0, 0, ox1 - ox0)
    np.testing.assert_array_equal(vy, y[oy0:oy1, ox0:ox1])
    assert vdata.n_labelled == full.n_labelled - excluded.n_labelled == vw.sum()
    vh, vwd = vdata.shape
    np.testing.assert_array_equal(
        vdata.image.read(0, vh, 0, vwd), full.image.read(sy0 - 3, sy1 - 3, sx0 - 10, sx1 - 10)
    )
    for d in (full, excluded, vdata):
        d.close()
