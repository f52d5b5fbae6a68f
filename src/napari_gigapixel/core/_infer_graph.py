"""The graph function inference runs: the model, its input map folded into the first convolution.

Why: in a forward pass of the recipe's model, the input layer (a per-channel
``x * scale + offset`` over every full-resolution pixel) and the first
convolution (a 4 x 4, stride-4 patch embedding) took half the time of a
2,208 px window on the development machine (0.011 of 0.020 s, float32), for
5% of the FLOPs: two passes over full-resolution tensors. The affine map is
linear, so with no zero padding under the first convolution's window,

    conv(t(x) * a + c, W) + b = conv(t(x), a W) + (b + sum_ij W c)

one pass instead of two (0.005 s for both layers), the same function up to
float rounding (about 5e-7 of the first layer's outputs in float32).

Inference only: the trainer keeps the model's own layers, because folded
*gradients* in float32 came out 4x further from a float64 reference (the
uncentred grey levels cancel against the folded bias), and under bf16 the
folded first layer would round ``a W`` (the outputs 8x noisier at the glass).
For the same reason a bf16 model (``predict --precision mixed``) is not folded.
A model whose standardised input is also a skip (``output_stride`` 1), whose
first convolution pads with zeros (kernel larger than stride) or that lacks
these layers (older files) runs unfolded.

Keras/TensorFlow are imported inside functions only.
"""

from __future__ import annotations

from typing import Any

#: ``tta="flips+darker"``: the slide is also predicted with every stain this
#: many times as strong (optical density against the glass white, per channel).
DARKER_OD = 1.2


def darker_table():
    """uint8 lookup of each grey level with its optical density times :data:`DARKER_OD`:
    ``rint(WHITE * (v / WHITE) ** DARKER_OD)`` below the glass white, levels at or
    above it unchanged (a per-pixel map: tiles and whole images get the same)."""
    import numpy as np

    from .input_norm import WHITE

    v = np.arange(256, dtype=np.float64)
    out = np.where(v < WHITE, np.rint(WHITE * (v / WHITE) ** DARKER_OD), v)
    return out.astype(np.uint8)


def darker_pair_table():
    """:func:`darker_table` for two grey levels at once: entry ``a + 256 b`` holds
    ``table[a] + 256 table[b]`` (uint16, 65,536 entries). Looking pixels up two
    bytes at a time halves the lookups: 16 ms instead of 26 ms for a 2,240 px
    window on the development machine, the same bytes."""
    import numpy as np

    table = darker_table().astype(np.uint16)
    v = np.arange(65536)
    return table[v & 255] | (table[v >> 8] << 8)


def _darker_pixels(x: Any, pairs: Any) -> Any:
    """``darker_table()[x]`` of a uint8 tensor, two bytes per lookup (``pairs``:
    :func:`darker_pair_table` as a tensor). An odd number of bytes gets one of
    padding, dropped after the lookup."""
    import tensorflow as tf

    flat = tf.reshape(x, [-1])
    n = tf.size(flat)
    flat = tf.pad(flat, [[0, n % 2]])
    # Either byte order gives the same bytes: an entry holds each byte's lookup
    # where its index holds that byte.
    two = tf.bitcast(tf.reshape(flat, [-1, 2]), tf.uint16)
    out = tf.bitcast(tf.gather(pairs, tf.cast(two, tf.int32)), tf.uint8)
    return tf.reshape(tf.reshape(out, [-1])[:n], tf.shape(x))


def _fold_plan(model: Any) -> tuple[Any, Any, Any] | None:
    """``(input layer, first convolution, rest of the model)`` when folding is exact, else None."""
    import keras

    from ._keras_layers import input_layer

    try:
        rescale, enc = model.get_layer("rescale"), model.get_layer("enc1")
    except ValueError:
        return None
    if not isinstance(rescale, input_layer()) or type(enc) is not keras.layers.Conv2D:
        return None
    dtype = enc.compute_dtype
    if dtype not in ("float32", "float64") or rescale.compute_dtype != dtype:
        return None
    if enc.data_format != "channels_last" or tuple(enc.dilation_rate) != (1, 1) or enc.groups != 1:
        return None
    # "same" pads (k - s) when the side is a multiple of s (every window is a
    # multiple of the total stride): zeros of the *standardised* input, which
    # the folded layer could not reproduce. k <= s pads nothing.
    if enc.padding != "valid" and any(k > s for k, s in zip(enc.kernel_size, enc.strides)):
        return None
    try:
        rest = keras.Model(enc.output, model.output)
    except ValueError:  # the standardised input feeds a skip too (output stride 1)
        return None
    return rescale, enc, rest


def inference_function(model: Any, tta: str = "none") -> Any:
    """A ``tf.function`` from uint8 ``(1, H, W, 3)`` to the model's probability.

    Traced once for any window size. The folded weights are computed inside
    the graph from the layers' variables on every call (a few hundred
    numbers), so a model trained further in this process is never predicted
    with stale weights.

    ``tta="flips"`` (:data:`.tiled_model.TTA_MODES`): the probabilities of the
    window and of its up-down, left-right and both-ways mirror images (each
    mirrored back), summed in that order, times 0.25. The mirroring is done
    in the graph: the same sums as mirroring numpy windows and calling four
    times, bit for bit, in 0.068 s instead of 0.110 s for a 2,240 px window
    of the recipe's model (numpy's strided copies of 3-byte pixels were the
    difference), for about 210 MiB more at the peak per window.

    ``tta="half-darker"`` (predict's default): the same four passes, the
    up-down and both-ways mirror images read through :func:`darker_table`:
    the window and its left-right mirror as they are, then those two, summed
    in that order, times 0.25. As many passes as ``"flips"``, and on the
    tuning slides as good as ``"flips+darker"`` (docs/quality.md).

    ``tta="flips+darker"``: the mean of the four flips and of the same four for
    the window through :func:`darker_table` (8 passes; the first four summed,
    then the other four, then the two sums).
    """
    import tensorflow as tf

    plan = _fold_plan(model)
    spec = [tf.TensorSpec([1, None, None, 3], tf.uint8)]
    if plan is None:

        def one(x):
            return model(x, training=False)

    else:
        rescale, enc, rest = plan
        dt = enc.compute_dtype
        scale = tf.constant(rescale.scale, dt)
        offset = tf.constant(rescale.offset, dt)
        strides = [1, *enc.strides, 1]
        padding = enc.padding.upper()

        def one(x):
            kernel = tf.cast(enc.kernel, dt)
            y = tf.nn.conv2d(rescale.grey(x), kernel * scale[:, None], strides, padding)
            bias = tf.einsum("ijcd,c->d", kernel, offset)
            if enc.use_bias:
                bias += tf.cast(enc.bias, dt)
            return rest(enc.activation(y + bias), training=False)

    if tta == "none":
        return tf.function(one, input_signature=spec, reduce_retracing=True)

    def mirror_pass(x, axes):
        """The probability of ``x`` mirrored along ``axes`` (0 rows, 1 columns), mirrored back."""
        if not axes:
            return one(x)[0]
        return tf.reverse(one(tf.reverse(x, [a + 1 for a in axes]))[0], axes)

    def mirrored_sum(x):
        p = mirror_pass(x, [])
        for axes in ([0], [1], [0, 1]):  # up-down, left-right, both (rows and columns)
            p += mirror_pass(x, axes)
        return p

    if tta == "flips":

        def flips(x):
            return mirrored_sum(x)[None] * 0.25

        return tf.function(flips, input_signature=spec, reduce_retracing=True)
    pairs = tf.constant(darker_pair_table())

    if tta == "half-darker":

        def half_darker(x):
            darker = _darker_pixels(x, pairs)
            p = mirror_pass(x, []) + mirror_pass(x, [1])  # as it is, left-right
            p += mirror_pass(darker, [0])  # up-down, darker
            p += mirror_pass(darker, [0, 1])  # both, darker
            return p[None] * 0.25

        return tf.function(half_darker, input_signature=spec, reduce_retracing=True)

    def flips_darker(x):
        darker = _darker_pixels(x, pairs)
        return (mirrored_sum(x) + mirrored_sum(darker))[None] * 0.125

    return tf.function(flips_darker, input_signature=spec, reduce_retracing=True)
