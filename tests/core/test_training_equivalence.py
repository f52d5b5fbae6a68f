"""Proof of the central idea: streamed gradients equal whole-image gradients.

For random weights, on an odd-sized image and three tile sizes, the gradient
accumulated tile by tile by the trainer's own code path equals the gradient of
the whole-image loss computed directly with one ``GradientTape``, for BCE,
masked BCE (scribbles), soft Dice and Dice + BCE, at output stride 4 and 1.
In float64 the two agree to round-off; the negative controls show that the
comparison does fail when a rule of the geometry is broken.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from napari_gigapixel.core import _backend  # noqa: E402
from napari_gigapixel.core._train_augment import SlideView  # noqa: E402
from napari_gigapixel.core._train_data import build_image_data  # noqa: E402
from napari_gigapixel.core.losses import whole_image_loss  # noqa: E402
from napari_gigapixel.core.masks import AnnotationMask  # noqa: E402
from napari_gigapixel.core.tiling import Tile, padded_shape, tile_grid  # noqa: E402
from napari_gigapixel.core.training import image_step  # noqa: E402
from napari_gigapixel.core.unet import ModelConfig, build_unet, model_geometry  # noqa: E402

SHAPE = (517, 1301)
# A small model keeps float64 fast; same layer types as the default.
SMALL = dict(widths=(4, 6, 8), decoder_widths=(3, 4, 4))


def _randomise(model, seed: int) -> None:
    # Non-zero biases, so that no layer is degenerate at initialisation.
    rng = np.random.default_rng(seed)
    model.set_weights(
        [w + rng.normal(0, 0.1, w.shape) if w.ndim == 1 else w * 1.5 for w in model.get_weights()]
    )


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(1)
    # Smooth blobs plus noise: a loss landscape with both classes present.
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    base = 128 + 90 * np.sin(yy / 37.0) * np.cos(xx / 53.0)
    img = base[..., None] + rng.normal(0, 25, SHAPE + (3,))
    return np.clip(img, 0, 255).astype(np.uint8)


def _mask(kind: str) -> AnnotationMask:
    rng = np.random.default_rng(2)
    # Annotation level 1/4 (130 x 326 covers 517 x 1301): upsampled per tile.
    shape = (-(-SHAPE[0] // 4), -(-SHAPE[1] // 4))
    if kind == "dense":
        arr = (rng.random(shape) < 0.4).astype(np.uint8)
    else:
        arr = rng.integers(0, 3, shape).astype(np.uint8)
    return AnnotationMask(arr, downsample=4.0, kind=kind, name=kind)


_MODELS: dict = {}


def _model(output_stride: int, dtype: str = "float64"):
    key = (output_stride, dtype)
    if key not in _MODELS:
        m = build_unet(ModelConfig(output_stride=output_stride, **SMALL), seed=3, dtype=dtype)
        _randomise(m, 4)
        _MODELS[key] = m
    return _MODELS[key]


def _data(image, kind: str, output_stride: int):
    # The full-resolution head is 16x the work per pixel: an odd-sized crop.
    roi = None if output_stride == 4 else (0, 0, 261, 645)
    return build_image_data(
        image,
        _mask(kind),
        roi=roi,
        kind=kind,
        output_stride=output_stride,
        cache_in_memory=lambda n: True,
    )


def whole_image_gradient(model, data, loss: str, output_stride: int):
    """Reference: one tape over the padded whole image, loss over valid pixels."""
    geo = model_geometry(model)
    h, w = data.shape
    hp, wp = padded_shape((h, w), geo.stride)
    x = np.zeros((1, hp, wp, 3), np.uint8)
    x[0, :h, :w] = data.image.read(0, h, 0, w)
    ho, wo = -(-h // output_stride), -(-w // output_stride)
    y, wgt = data.labels_yw(0, ho, 0, wo)
    with tf.GradientTape() as tape:
        p = model(x, training=True)[0, :ho, :wo, 0]
        p = tf.cast(p, tf.float64)
        value = whole_image_loss(
            p, tf.constant(y, tf.float64), tf.constant(wgt, tf.float64), loss, data.n_labelled
        )
    grads = tape.gradient(value, model.trainable_variables)
    return [g.numpy().astype(np.float64) for g in grads], float(value)


def streamed_gradient(model, data, loss: str, core: int, tiles=None):
    geo = model_geometry(model)
    tiles = tiles or tile_grid(data.shape, core, geo.halo, geo.stride)
    step = _backend.TileStep(model, 1, loss)
    res = image_step(
        step,
        SlideView(data, geo.output_stride, (0, False, 1.0, 0.0)),
        tiles,
        geo,
        loss,
        data.n_labelled,
        1,
    )
    return res.grads, res.loss, len(tiles)


def rel_err(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    num = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
    den = max(float(np.abs(y).max()) for y in b)
    return num / den


CASES = [
    ("bce", "dense"),
    ("bce", "scribble"),  # masked BCE: 0 = unlabelled, ignored
    ("dice", "dense"),
    ("dice+bce", "dense"),
    ("focal", "scribble"),
    ("dice+focal", "dense"),
]


@pytest.mark.parametrize("output_stride", [4, 1])
@pytest.mark.parametrize("loss,kind", CASES)
def test_streamed_equals_whole_float64(image, loss, kind, output_stride):
    model = _model(output_stride)
    data = _data(image, kind, output_stride)
    ref, ref_loss = whole_image_gradient(model, data, loss, output_stride)
    assert max(float(np.abs(g).max()) for g in ref) > 1e-6  # a real gradient
    n_tiles = set()
    for core in (64, 160, 384):
        grads, value, n = streamed_gradient(model, data, loss, core)
        n_tiles.add(n)
        assert rel_err(grads, ref) < 1e-10, (loss, kind, output_stride, core)
        assert value == pytest.approx(ref_loss, rel=1e-10)
    assert len(n_tiles) == 3 and min(n_tiles) > 1


def test_focal_term_is_the_focal_loss_and_not_bce(image):
    """The focal term is ``-(1 - p_t)**2 log p_t`` per pixel (numpy reference), and
    its whole-image gradient differs from BCE's (the equivalence cases above are
    not BCE under another name)."""
    from napari_gigapixel.core.losses import FOCAL_GAMMA, focal_sum

    rng = np.random.default_rng(3)
    p = rng.uniform(0.01, 0.99, 500)
    y = (rng.random(500) > 0.5).astype(np.float64)
    w = (rng.random(500) > 0.2).astype(np.float64)
    pt = np.where(y > 0, p, 1 - p)
    want = -(w * (1 - pt) ** FOCAL_GAMMA * np.log(pt)).sum()
    got = float(focal_sum(tf.constant(p), tf.constant(y), tf.constant(w)))
    assert got == pytest.approx(want, rel=1e-12)
    model = _model(4)
    data = _data(image, "dense", 4)
    focal, _ = whole_image_gradient(model, data, "dice+focal", 4)
    bce, _ = whole_image_gradient(model, data, "dice+bce", 4)
    assert rel_err(focal, bce) > 1e-3


def test_dice_focal_weighs_the_focal_term_by_focal_weight(image):
    """``"dice+focal"`` = soft Dice + FOCAL_WEIGHT x mean focal, in the whole-image
    reference and in the streamed step's reported loss alike."""
    from napari_gigapixel.core.losses import EPS, FOCAL_GAMMA, FOCAL_WEIGHT, soft_dice_numpy

    assert FOCAL_WEIGHT == 3.0  # the recipe's weight (docs/quality.md)
    model = _model(4)
    data = _data(image, "dense", 4)
    geo = model_geometry(model)
    h, w = data.shape
    hp, wp = padded_shape((h, w), geo.stride)
    x = np.zeros((1, hp, wp, 3), np.uint8)
    x[0, :h, :w] = data.image.read(0, h, 0, w)
    ho, wo = -(-h // 4), -(-w // 4)
    y, wgt = data.labels_yw(0, ho, 0, wo)
    p = model(x)[0, :ho, :wo, 0].numpy().astype(np.float64)
    pc = np.clip(p, EPS, 1 - EPS)
    pt = np.where(y > 0, pc, 1 - pc)
    focal_mean = -(wgt * (1 - pt) ** FOCAL_GAMMA * np.log(pt)).sum() / data.n_labelled
    want = 1.0 - soft_dice_numpy(p, y, wgt) + FOCAL_WEIGHT * focal_mean
    _, ref = whole_image_gradient(model, data, "dice+focal", 4)
    assert ref == pytest.approx(want, rel=1e-6)
    _, streamed, _ = streamed_gradient(model, data, "dice+focal", 64)
    assert streamed == pytest.approx(want, rel=1e-5)


def test_one_tile_is_the_whole_image_step(image):
    # A core as large as the image: the single-pass whole-image Dice path.
    model = _model(4)
    data = _data(image, "dense", 4)
    ref, _ = whole_image_gradient(model, data, "dice+bce", 4)
    grads, _, n = streamed_gradient(model, data, "dice+bce", 4096)
    assert n == 1
    assert rel_err(grads, ref) < 1e-10


def test_streamed_float32_matches_float64_reference(image):
    m64 = _model(4)
    m32 = build_unet(ModelConfig(output_stride=4, **SMALL), seed=3, dtype="float32")
    m32.set_weights([w.astype(np.float32) for w in m64.get_weights()])
    data = _data(image, "dense", 4)
    ref, _ = whole_image_gradient(m64, data, "dice", 4)
    grads, _, _ = streamed_gradient(m32, data, "dice", 160)
    assert rel_err(grads, ref) < 1e-4


def test_halo_smaller_than_receptive_field_breaks_exactness(image):
    model = _model(4)
    geo = model_geometry(model)
    data = _data(image, "dense", 4)
    ref, _ = whole_image_gradient(model, data, "bce", 4)
    tiles = tile_grid(data.shape, 160, 0, geo.stride)  # no halo at all
    grads, _, _ = streamed_gradient(model, data, "bce", 160, tiles=tiles)
    assert rel_err(grads, ref) > 1e-6


def test_window_origin_off_the_stride_grid_breaks_exactness(image):
    model = _model(4)
    geo = model_geometry(model)
    data = _data(image, "dense", 4)
    ref, _ = whole_image_gradient(model, data, "bce", 4)
    good = tile_grid(data.shape, 160, geo.halo, geo.stride)
    # Move every interior window origin by 4 px (a multiple of the output
    # stride, not of S): the windows still contain their cores and halos.
    hp, wp = padded_shape(data.shape, geo.stride)

    def shift(t: Tile) -> Tile:
        y0, y1, x0, x1 = t.window
        if y0 >= 4 and y1 + geo.stride - 4 <= hp:
            y0, y1 = y0 - 4, y1 + geo.stride - 4
        if x0 >= 4 and x1 + geo.stride - 4 <= wp:
            x0, x1 = x0 - 4, x1 + geo.stride - 4
        return Tile(t.core, (y0, y1, x0, x1))

    shifted = [shift(t) for t in good]
    assert shifted != good
    assert rel_err(streamed_gradient(model, data, "bce", 160, tiles=good)[0], ref) < 1e-10
    assert rel_err(streamed_gradient(model, data, "bce", 160, tiles=shifted)[0], ref) > 1e-6


def test_preview_is_the_block_mean_of_the_whole_image_probability(image):
    # Each preview pixel stands for an f x f block of output pixels (the widget overlays
    # it there), also across tile borders and at the ragged bottom/right edge.
    model = _model(4)
    data = _data(image, "dense", 4)
    geo = model_geometry(model)
    f = geo.stride // geo.output_stride
    tiles = tile_grid(data.shape, 160, geo.halo, geo.stride)
    view = SlideView(data, 4, (0, False, 1.0, 0.0))
    res = image_step(_backend.TileStep(model, f), view, tiles, geo, "bce", data.n_labelled, f)
    h, w = data.shape
    hp, wp = padded_shape((h, w), geo.stride)
    x = np.zeros((1, hp, wp, 3), np.uint8)
    x[0, :h, :w] = data.image.read(0, h, 0, w)
    ho, wo = -(-h // 4), -(-w // 4)
    p = model(x)[0, :ho, :wo, 0].numpy()
    assert len(tiles) > 1 and ho % f and wo % f  # tile borders and ragged edges
    for i, j in [(0, 0), (1, 2), (-1, -1), (-1, 3), (2, -1)]:
        i, j = i % res.preview.shape[0], j % res.preview.shape[1]
        block = p[i * f : (i + 1) * f, j * f : (j + 1) * f]
        assert res.preview[i, j] == pytest.approx(block.mean(), abs=1e-6), (i, j)
    assert res.preview.shape == (-(-ho // f), -(-wo // f))


def test_optical_density_input_streams_exactly(image):
    # The optical-density input layer is per pixel: the streamed gradient is
    # still the whole-image gradient, and the layer computes log10(256/(x+1)).
    cfg = ModelConfig(
        input_transform="od", input_mean=(0.3, 0.3, 0.3), input_std=(0.2, 0.2, 0.2), **SMALL
    )
    model = build_unet(cfg, seed=3, dtype="float64")
    _randomise(model, 4)
    data = _data(image, "dense", 4)
    ref, ref_loss = whole_image_gradient(model, data, "dice+focal", 4)
    grads, value, n = streamed_gradient(model, data, "dice+focal", 160)
    assert n > 1
    assert rel_err(grads, ref) < 1e-10
    assert value == pytest.approx(ref_loss, rel=1e-10)
    # The input layer: (log10(256 / (x + 1)) - mean) / std.
    got = model.get_layer("rescale")(np.array([[[[0, 127, 255]]]], np.uint8)).numpy()
    od = np.log10(256.0 / np.array([1.0, 128.0, 256.0]))
    np.testing.assert_allclose(got[0, 0, 0], (od - 0.3) / 0.2, rtol=1e-12)


@pytest.mark.parametrize("loss,kind", [("dice+focal", "dense"), ("focal", "scribble")])
def test_border_weights_stream_exactly(image, loss, kind):
    # Smooth blobs, so some labels are near the other class (weight 4) and
    # most are not (weight 1); scribbles leave a stripe unlabelled.
    ho, wo = -(-SHAPE[0] // 4), -(-SHAPE[1] // 4)
    yy, xx = np.mgrid[0:ho, 0:wo]
    tissue = np.sin(yy / 9.0) * np.cos(xx / 13.0) > 0.2
    arr = tissue.astype(np.uint8) if kind == "dense" else np.where(tissue, 2, 1).astype(np.uint8)
    if kind == "scribble":
        arr[:, 100:140] = 0
    data = build_image_data(
        image,
        AnnotationMask(arr, downsample=4.0, kind=kind, name=kind),
        roi=None,
        kind=kind,
        output_stride=4,
        cache_in_memory=lambda n: True,
        border_weight=4,
    )
    y, w = data.labels_yw(0, ho, 0, wo)
    assert set(np.unique(w)) == ({0, 1, 4} if kind == "scribble" else {1, 4})
    assert data.n_labelled == float(w.sum()) and data.n_positive == float((w * y).sum())
    model = _model(4)
    ref, ref_loss = whole_image_gradient(model, data, loss, 4)
    for core in (64, 384):
        grads, value, n = streamed_gradient(model, data, loss, core)
        assert n > 1
        assert rel_err(grads, ref) < 1e-10, (loss, kind, core)
        assert value == pytest.approx(ref_loss, rel=1e-10)
