"""The U-Net's own Keras layers: the input transform and a faster-to-train convolution.

Layers of their own so model files carry them by name: they are registered
with Keras when :func:`input_layer` / :func:`wide_grad_conv` first run, which
:func:`.unet.build_unet` and :func:`.model_io.load_model` do before they need
them (importing Keras here, never at package import: readers stay light).

Why not Keras's ``Rescaling`` for the input: under the bf16 policy it casts the pixels to
bf16 and then multiplies and adds per-channel vectors element by element in
bf16, which TensorFlow's CPU kernels emulate one value at a time: 0.22 s for a
16.7 Mpx tile on the development machine, more than the first convolution.
Here the per-channel affine map is a 1 x 1 convolution with a diagonal kernel
(oneDNN's vectorised bf16 path: 0.03 s for the same tile), which computes
``x * scale + offset`` exactly (the off-diagonal products are exact zeros).
"""

from __future__ import annotations

import math
from functools import cache

#: Input transforms (``ModelConfig.input_transform``; ``unet.INPUT_TRANSFORMS``).
KINDS = ("linear", "od")


def input_transform_table(kind: str):
    """What :class:`InputTransform` computes for each grey level 0-255 (float64, 256 entries).

    The input statistics are taken through it (:func:`._train_data.statistics_from_histograms`).
    """
    import numpy as np

    v = np.arange(256, dtype=np.float64)
    if kind == "od":
        return np.log10(256.0 / (v + 1.0))
    return v


def input_transform_floor(kind: str) -> float:
    """Smallest standard deviation used to standardise: one grey level's step at glass."""
    return math.log10(241.0 / 240.0) if kind == "od" else 1.0


@cache
def input_layer():
    """The registered ``InputTransform`` layer class (uint8 in, compute dtype out)."""
    import keras

    @keras.saving.register_keras_serializable(package="napari_gigapixel")
    class InputTransform(keras.layers.Layer):
        """Per channel ``t(x) * scale + offset`` of uint8 grey levels ``x``.

        ``kind="linear"``: ``t(x) = x``. ``kind="od"``: the optical density
        ``t(x) = log10(256 / (x + 1))`` (black 2.41, glass at 240 0.028),
        computed in float32 (float64 under a float64 policy) before the
        affine map. A per-pixel map: tiles and whole images get the same
        values.
        """

        def __init__(self, kind="linear", scale=(1.0, 1.0, 1.0), offset=(0.0, 0.0, 0.0), **kw):
            super().__init__(**kw)
            if kind not in KINDS:
                raise ValueError(f"InputTransform: kind {kind!r} is not one of {KINDS}")
            self.kind = kind
            self.scale = tuple(float(v) for v in scale)
            self.offset = tuple(float(v) for v in offset)

        def grey(self, x):
            """``t(x)`` before the affine map (float32, float64 under a float64
            policy, or the compute dtype for ``"linear"``)."""
            ops = keras.ops
            if self.kind == "od":
                wide = "float64" if self.compute_dtype == "float64" else "float32"
                return ops.log(256.0 / (ops.cast(x, wide) + 1.0)) * (1.0 / math.log(10.0))
            # grey levels 0-255 are exact in every float type, bf16 included
            return ops.cast(x, self.compute_dtype)

        def call(self, x):
            ops = keras.ops
            v = self.grey(x)
            diag = ops.diag(ops.convert_to_tensor(self.scale, v.dtype))
            kernel = ops.reshape(diag, (1, 1, 3, 3))
            y = ops.conv(v, kernel) + ops.convert_to_tensor(self.offset, v.dtype)
            return ops.cast(y, self.compute_dtype)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {
                **super().get_config(),
                "kind": self.kind,
                "scale": list(self.scale),
                "offset": list(self.offset),
            }

    return InputTransform


@cache
def wide_grad_conv():
    """The registered ``WideGradConv2D`` class: a ``Conv2D`` whose bf16 kernel gradient is float32.

    Under the bf16 policy TensorFlow's CPU kernel-gradient of a 3 x 3
    convolution with few channels is slow (oneDNN's bf16 weight-gradient path:
    0.094 s against 0.054 s for a whole float32 forward and backward on a
    1024 x 1024 x 20 input, development machine). This layer computes the
    forward pass and the input gradient in bf16 as ``Conv2D`` does, and the
    kernel gradient from the same bf16 values widened to float32, then rounded
    to the kernel's bf16 as before: the same numbers up to the order of the
    float32 sums, about 1.5x faster for the decoder's last convolution. Any other
    dtype or backend: exactly ``Conv2D``. Geometry and cost counting treat it
    as ``Conv2D``.
    """
    import keras

    @keras.saving.register_keras_serializable(package="napari_gigapixel")
    class WideGradConv2D(keras.layers.Conv2D):
        def convolution_op(self, inputs, kernel):
            if keras.backend.backend() != "tensorflow" or self.compute_dtype != "bfloat16":
                return super().convolution_op(inputs, kernel)
            import tensorflow as tf

            if self.dilation_rate != (1, 1) or self.data_format != "channels_last":
                return super().convolution_op(inputs, kernel)
            strides = [1, *self.strides, 1]
            padding = self.padding.upper()

            @tf.custom_gradient
            def conv(x, k):
                def grad(dy):
                    dx = tf.compat.v1.nn.conv2d_backprop_input(
                        tf.shape(x), k, dy, strides, padding
                    )
                    dk = tf.compat.v1.nn.conv2d_backprop_filter(
                        tf.cast(x, tf.float32),
                        tf.shape(k),
                        tf.cast(dy, tf.float32),
                        strides,
                        padding,
                    )
                    return dx, tf.cast(dk, k.dtype)

                return tf.nn.conv2d(x, k, strides, padding), grad

            return conv(tf.convert_to_tensor(inputs), tf.convert_to_tensor(kernel))

    return WideGradConv2D
