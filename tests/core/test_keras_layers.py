"""The U-Net's own layers (core/_keras_layers.py) compute what the Keras layers they replace did.

``InputTransform`` replaced ``Rescaling``, the bf16 decoder joins its skip in
bf16 instead of float32, and the finest decoder convolution computes its bf16
kernel gradient wide: all three are speed changes that must leave the values
alone. A model file written before them (``tests/data/model_v1_rescaling.keras``,
made by this project's previous code with the ``small`` preset, seed 7, bf16)
must still load and predict what it predicted then.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from napari_gigapixel.core.unet import build_unet, load_model  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
X = np.random.default_rng(0).integers(0, 256, (1, 128, 128, 3), dtype=np.uint8)


def test_a_model_file_from_before_the_new_layers_predicts_as_before():
    model, meta = load_model(DATA / "model_v1_rescaling.keras")
    assert [type(ly).__name__ for ly in model.layers][1] == "Rescaling"
    expected = np.load(DATA / "model_v1_rescaling_out.npy")
    np.testing.assert_allclose(model(X).numpy()[0, :, :, 0], expected, atol=1e-6)
    # Today's graph with that file's weights is the same function.
    new = build_unet(meta["model_config"], dtype="mixed_bfloat16")
    assert [type(ly).__name__ for ly in new.layers][1] == "InputTransform"
    assert "WideGradConv2D" in {type(ly).__name__ for ly in new.layers}
    new.set_weights(model.get_weights())
    np.testing.assert_allclose(new(X).numpy()[0, :, :, 0], expected, atol=1e-6)


def _grads(model):
    with tf.GradientTape() as tape:
        out = tf.cast(model(X, training=True), tf.float64)
        weight = np.linspace(-1.0, 1.0, out.shape[1] * out.shape[2]).reshape(out.shape)
        value = tf.reduce_sum(out * weight)
    return [g.numpy().astype(np.float64) for g in tape.gradient(value, model.trainable_variables)]


def test_bf16_gradients_are_those_of_the_plain_keras_layers():
    old, meta = load_model(DATA / "model_v1_rescaling.keras")
    new = build_unet(meta["model_config"], dtype="mixed_bfloat16")
    new.set_weights(old.get_weights())
    for a, b in zip(_grads(new), _grads(old)):
        scale = max(float(np.abs(b).max()), 1e-12)
        assert float(np.abs(a - b).max()) / scale < 1e-2


def test_wide_gradient_convolution_matches_conv2d_and_is_plain_outside_bf16():
    import keras

    from napari_gigapixel.core._keras_layers import wide_grad_conv

    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 64, 96, 20)).astype(np.float32)
    for policy in ("mixed_bfloat16", "float32"):
        plain = keras.layers.Conv2D(8, 3, padding="same", activation="relu", dtype=policy)
        wide = wide_grad_conv()(8, 3, padding="same", activation="relu", dtype=policy)
        plain.build(x.shape)
        wide.build(x.shape)
        wide.set_weights([w + 0.05 for w in plain.get_weights()])
        plain.set_weights(wide.get_weights())
        grads = []
        for layer in (plain, wide):
            xt = tf.constant(x)
            with tf.GradientTape() as tape:
                tape.watch(xt)
                y = tf.cast(layer(xt), tf.float32)
                value = tf.reduce_sum(y * np.linspace(-1, 1, y.shape[2])[None, None, :, None])
            grads.append([g.numpy() for g in tape.gradient(value, [xt, *layer.trainable_weights])])
        for a, b in zip(*grads):
            tol = 1e-2 if policy == "mixed_bfloat16" else 1e-6
            assert float(np.abs(a - b).max()) <= tol * float(np.abs(b).max())
