"""Inference's graph function (core/_infer_graph.py) is the model, with its input map folded.

Folding ``x * scale + offset`` into the first convolution is a speed change:
it must give the model's own outputs up to float rounding, be used only where
that holds (no zero padding under the first layer, no skip from the
standardised input, float32 or float64), and read the weights the model has
when it is called, not when the function was made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from napari_gigapixel.core._infer_graph import _fold_plan, inference_function  # noqa: E402
from napari_gigapixel.core.tiled_model import predict_array, predict_whole  # noqa: E402
from napari_gigapixel.core.unet import (  # noqa: E402
    ModelConfig,
    build_unet,
    load_model,
    model_geometry,
    preset_config,
)

DATA = Path(__file__).resolve().parents[1] / "data"
X = np.random.default_rng(0).integers(0, 256, (1, 256, 384, 3), dtype=np.uint8)
STATS = {"input_mean": (200.0, 180.0, 190.0), "input_std": (30.0, 35.0, 32.0)}
OD_STATS = {"input_transform": "od", "input_mean": (0.3, 0.4, 0.2), "input_std": (0.2, 0.2, 0.3)}


@pytest.mark.parametrize(
    ("overrides", "dtype", "atol"),
    [
        (STATS, "float32", 2e-6),  # the recipe's form: standardised grey levels
        ({}, "float32", 2e-6),  # the fixed x / 127.5 - 1
        (OD_STATS, "float32", 2e-6),
        ({"input_transform": "od"}, "float64", 1e-12),
    ],
)
def test_the_folded_function_is_the_model(overrides, dtype, atol):
    model = build_unet(preset_config("medium", **overrides), seed=3, dtype=dtype)
    assert _fold_plan(model) is not None
    got = inference_function(model)(X).numpy()
    want = model(X, training=False).numpy()
    assert got.shape == want.shape == (1, 64, 96, 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


@pytest.mark.parametrize(
    "why",
    ["output stride 1", "bf16", "padded first layer", "old file"],
)
def test_models_that_cannot_be_folded_run_as_they_are(why):
    if why == "old file":  # Keras Rescaling input, written before InputTransform existed
        model, _ = load_model(DATA / "model_v1_rescaling.keras")
    elif why == "bf16":
        model = build_unet(preset_config("medium", **STATS), dtype="mixed_bfloat16")
    elif why == "padded first layer":  # "same" zero-pads a 6 x 6 kernel at stride 4
        model = build_unet(ModelConfig(kernels=(6, 5, 3), **STATS))
    else:  # the standardised input is also the finest skip
        model = build_unet(preset_config("medium", output_stride=1, **STATS))
    assert _fold_plan(model) is None
    got = inference_function(model)(X).numpy()
    np.testing.assert_array_equal(got, tf.function(lambda x: model(x, training=False))(X).numpy())


def test_weights_set_after_the_function_was_made_are_used():
    model = build_unet(preset_config("medium", **STATS), seed=0)
    fn = inference_function(model)
    before = fn(X).numpy()
    model.set_weights(build_unet(preset_config("medium", **STATS), seed=5).get_weights())
    after = fn(X).numpy()
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, model(X, training=False).numpy(), rtol=0, atol=2e-6)


def test_tiled_prediction_still_equals_the_whole_image_run():
    model = build_unet(preset_config("medium", **STATS), seed=2)
    assert _fold_plan(model) is not None
    image = np.random.default_rng(1).integers(0, 256, (700, 900, 3), dtype=np.uint8)
    geometry = model_geometry(model)
    whole = predict_whole(model, image, geometry, white_balance=False)
    tiled = predict_array(model, image, geometry, chunk=256, white_balance=False)
    assert tiled.shape == whole.shape == (175, 225)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-6)
