"""The roofline count: FLOP and bytes per input pixel from the built model."""

from __future__ import annotations

import pytest

pytest.importorskip("keras")

from napari_gigapixel.core.roofline import layer_costs, model_cost, step_limit  # noqa: E402
from napari_gigapixel.core.unet import ModelConfig, build_unet  # noqa: E402

#: A one-stage U-Net with a full-resolution head, counted by hand below.
TINY = ModelConfig(
    widths=(8,), kernels=(4,), strides=(4,), decoder_widths=(4,), decoder_kernel=3, output_stride=1
)


def test_hand_counted_tiny_model():
    rows = {r.name: r for r in layer_costs(build_unet(TINY))}
    # enc1 4x4/4, 3 -> 8 channels, one output per 16 input pixels.
    assert rows["enc1"].matrix_flop == pytest.approx(2 * 16 * 3 * 8 / 16)
    # up0: 4x4/4 transposed, 8 -> 4: 8 * 4 MACs per full-resolution pixel.
    assert rows["up0"].matrix_flop == pytest.approx(2 * 8 * 4)
    # dec0 3x3 on the concatenation (4 + 3 channels) -> 4; head 1x1 4 -> 1.
    assert rows["dec0"].matrix_flop == pytest.approx(2 * 9 * 7 * 4)
    assert rows["head"].matrix_flop == pytest.approx(2 * 4)
    # The image needs no gradient: enc1 computes its weight gradient only.
    assert not rows["enc1"].input_grad
    assert rows["enc1"].backward_flop == pytest.approx(
        rows["enc1"].matrix_flop + rows["enc1"].elementwise_flop
    )
    assert rows["dec0"].input_grad
    assert rows["dec0"].backward_flop == pytest.approx(
        2 * rows["dec0"].matrix_flop + rows["dec0"].elementwise_flop
    )
    assert rows["rescale"].backward_flop == 0
    # float32 activations: enc1 writes 8 channels at 1/16 of the pixels.
    assert rows["enc1"].out_bytes == pytest.approx(4 * 8 / 16)
    assert rows["rescale"].in_bytes == pytest.approx(3)


def test_forward_count_matches_tensorflows_own_count():
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    model = build_unet(ModelConfig())
    fn = tf.function(lambda x: model(x))
    n = 256
    graph = convert_variables_to_constants_v2(
        fn.get_concrete_function(tf.TensorSpec([1, n, n, 3], tf.uint8))
    ).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    tf_flop = tf.compat.v1.profiler.profile(graph, options=opts).total_float_ops / n**2
    cost = model_cost(model)
    # TF counts convolutions and bias adds, not the activations.
    assert cost.forward_matrix_flop < tf_flop <= cost.forward_flop * 1.01
    assert cost.params == 4761


def test_step_limit_scales_with_passes_rates_and_pixels():
    rows = layer_costs(build_unet(ModelConfig()))
    rates = {"float32": 1e11}
    kw = {"matrix_rate": rates, "bandwidth": 2e10}
    inf = step_limit(rows, 1e9, loss="inference", **kw)
    bce = step_limit(rows, 1e9, loss="bce", **kw)
    dice = step_limit(rows, 1e9, loss="dice+bce", **kw)
    assert inf["compute_s"] < bce["compute_s"] < dice["compute_s"]
    # Dice = a forward pass more than BCE.
    assert dice["compute_s"] - bce["compute_s"] == pytest.approx(inf["compute_s"])
    assert step_limit(rows, 2e9, loss="bce", **kw)["compute_s"] == pytest.approx(
        2 * bce["compute_s"]
    )
    faster = step_limit(rows, 1e9, loss="bce", matrix_rate={"float32": 2e11}, bandwidth=2e10)
    assert faster["compute_s"] == pytest.approx(bce["compute_s"] / 2)
    assert bce["limit_s"] == max(bce["compute_s"], bce["memory_s"])
    assert bce["fused_memory_s"] < bce["memory_s"]
