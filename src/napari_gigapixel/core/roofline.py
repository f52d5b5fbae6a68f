"""Roofline account of the U-Net: FLOP and bytes per input pixel, and step limits.

Counted from the built model (never from constants): every layer's output
stride comes from the same graph walk as :func:`.unet.model_geometry`, so a
layer's cost per *input* pixel is its cost per output pixel divided by its
output stride squared. Convolutions count ``2 k^2 C_in C_out`` FLOP per output
pixel (``k^2 C_in C_out / s^2`` multiply-adds for a kernel-equals-stride
transposed convolution). The backward pass counts the weight gradient (as
many FLOP as the forward) and the input gradient (as many again) where the
input depends on a trainable weight: the first convolution reads the image,
which needs no gradient.

Bytes are the traffic of a layer-by-layer executor (TensorFlow's): each layer
reads its inputs and writes its output once in the forward pass; the backward
pass reads the output gradient and the saved input and writes the input
gradient. The *compulsory* traffic (a perfectly fused model) is the uint8
window and the labels only.

Pure arithmetic on the Keras layer objects: TensorFlow is never imported here
(the caller builds the model).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Bytes per element of the compute dtypes.
ITEM_BYTES = {"uint8": 1, "bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}
#: FLOP per element of the cheap element-wise layers (and fused activations).
ELEMENTWISE_FLOP = {"relu": 1, "sigmoid": 4, "linear": 0, "Rescaling": 2, "log": 4}


@dataclass
class LayerCost:
    """Cost of one layer per level-0 input pixel.

    Attributes
    ----------
    name, kind, dtype
        Layer name, class name and compute dtype.
    stride
        Output stride of the layer (level-0 pixels per output pixel).
    matrix_flop
        Forward multiply-add FLOP (2 per MAC) of the convolution.
    elementwise_flop
        Forward element-wise FLOP (activation, rescale).
    backward_flop
        Backward FLOP (weight and, where needed, input gradients).
    in_bytes, out_bytes
        Bytes of the inputs read and the output written in the forward pass.
    backward_bytes
        Bytes moved by the backward pass (output gradient and saved input read,
        input gradient written).
    input_grad
        Whether the backward pass needs the gradient of the layer's input.
    """

    name: str
    kind: str
    dtype: str
    stride: int
    matrix_flop: float
    elementwise_flop: float
    backward_flop: float
    in_bytes: float
    out_bytes: float
    backward_bytes: float
    input_grad: bool = False


def _dtype_name(d: Any) -> str:
    s = str(getattr(d, "name", d))
    return s.replace("<dtype: '", "").replace("'>", "")


def layer_costs(model: Any) -> list[LayerCost]:
    """Per-layer forward and backward cost of a built U-Net, per input pixel."""
    from .geometry import tensor_geometry

    geo = tensor_geometry(model)
    # Tensors that depend on a trainable weight need a gradient in backward.
    needs_grad: dict[int, bool] = {}
    rows: list[LayerCost] = []
    for layer in model.layers:
        kind = type(layer).__name__
        ins = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        out = layer.output
        if kind == "InputLayer":
            needs_grad[id(out)] = False
            continue
        t_out = geo[id(out)][0]
        c_out = int(out.shape[-1])
        cdt = _dtype_name(layer.compute_dtype)
        item = ITEM_BYTES.get(cdt, 4)
        out_el = c_out / t_out**2  # output elements per input pixel
        in_el = [int(x.shape[-1]) / geo[id(x)][0] ** 2 for x in ins]
        in_bytes = sum(e * ITEM_BYTES.get(_dtype_name(x.dtype), 4) for e, x in zip(in_el, ins))
        in_grad = any(needs_grad.get(id(x), False) for x in ins)
        has_weights = bool(layer.trainable_weights)
        needs_grad[id(out)] = in_grad or has_weights
        act = getattr(getattr(layer, "activation", None), "__name__", "linear")
        ew = ELEMENTWISE_FLOP.get(act, 1) * out_el
        mac = 0.0
        if kind in ("Conv2D", "WideGradConv2D"):
            k = int(layer.kernel_size[0]) * int(layer.kernel_size[1])
            mac = k * int(ins[0].shape[-1]) * c_out * (1.0 / t_out**2)
            ew += out_el  # bias add
        elif kind == "Conv2DTranspose":
            k = int(layer.kernel_size[0]) * int(layer.kernel_size[1])
            s = int(layer.strides[0]) * int(layer.strides[1])
            mac = k / s * int(ins[0].shape[-1]) * c_out * (1.0 / t_out**2)
            ew += out_el
        elif kind == "Rescaling":
            ew = ELEMENTWISE_FLOP["Rescaling"] * out_el
        elif kind == "InputTransform":
            # x * scale + offset as a 1 x 1 convolution with a diagonal kernel:
            # the machine does all 3 x 3 products (fast ones), then the offset;
            # optical density adds a log per value.
            mac = 3.0 * c_out
            ew = out_el
            if layer.kind == "od":
                ew += ELEMENTWISE_FLOP["log"] * out_el
        matrix = 2.0 * mac
        back = 0.0
        if needs_grad[id(out)]:
            back = (matrix if has_weights else 0.0) + (matrix if in_grad else 0.0) + ew
        # Backward traffic: read dL/dout and the saved inputs, write dL/din.
        back_bytes = 0.0
        if needs_grad[id(out)]:
            back_bytes = out_el * item + in_bytes + (sum(in_el) * item if in_grad else 0.0)
        rows.append(
            LayerCost(
                name=layer.name,
                kind=kind,
                dtype=cdt,
                stride=int(t_out),
                matrix_flop=matrix,
                elementwise_flop=ew,
                backward_flop=back,
                in_bytes=in_bytes,
                out_bytes=out_el * item,
                backward_bytes=back_bytes,
                input_grad=in_grad,
            )
        )
    return rows


@dataclass
class ModelCost:
    """Totals of :func:`layer_costs`, per level-0 input pixel."""

    forward_flop: float
    forward_matrix_flop: float
    backward_flop: float
    forward_bytes: float
    backward_bytes: float
    compulsory_bytes: float
    params: int

    def to_dict(self) -> dict[str, float]:
        """JSON-ready dict."""
        return asdict(self)


def model_cost(model: Any) -> ModelCost:
    """FLOP and bytes per input pixel of a model's forward and backward pass."""
    from .unet import count_params, model_geometry

    rows = layer_costs(model)
    os_ = model_geometry(model).output_stride
    return ModelCost(
        forward_flop=sum(r.matrix_flop + r.elementwise_flop for r in rows),
        forward_matrix_flop=sum(r.matrix_flop for r in rows),
        backward_flop=sum(r.backward_flop for r in rows),
        forward_bytes=sum(r.in_bytes + r.out_bytes for r in rows),
        backward_bytes=sum(r.backward_bytes for r in rows),
        # uint8 RGB in, uint8 label and weight at the output stride.
        compulsory_bytes=3.0 + 2.0 / os_**2,
        params=count_params(model),
    )


#: Passes over every pixel per step: Dice needs a forward-only pass first.
PASSES = {
    "bce": (0, 1),
    "dice": (1, 1),
    "dice+bce": (1, 1),
    "focal": (0, 1),
    "dice+focal": (1, 1),
    "inference": (1, 0),
}


def step_limit(
    rows: list[LayerCost],
    pixels: float,
    *,
    loss: str,
    matrix_rate: dict[str, float],
    bandwidth: float,
) -> dict[str, float]:
    """Lower bound on the seconds of one step (or of inference) over ``pixels``.

    Parameters
    ----------
    rows
        :func:`layer_costs` of the model.
    pixels
        Input pixels of the step (1.024e9 for the paper's region).
    loss
        ``"bce"``, ``"dice"``, ``"dice+bce"`` (a forward pass, then forward and
        backward: the streamed multi-tile step) or ``"inference"``.
    matrix_rate
        Measured FLOP/s per compute dtype (``"float32"``, ``"bfloat16"``); a
        layer runs at the rate of its compute dtype.
    bandwidth
        Measured memory bandwidth in bytes/s.

    Returns
    -------
    dict
        ``compute_s`` (FLOP at the matrix rate), ``memory_s`` (layer-by-layer
        traffic at the bandwidth), ``fused_memory_s`` (compulsory traffic only),
        ``limit_s`` = max(compute, layer-by-layer memory): the roofline of an
        executor that runs one layer after another, and ``fused_limit_s``.
    """
    n_fwd_only, n_fwd_bwd = PASSES[loss]
    passes_fwd = n_fwd_only + n_fwd_bwd
    compute = 0.0
    mem = 0.0
    for r in rows:
        rate = matrix_rate.get(r.dtype) or matrix_rate["float32"]
        flop = passes_fwd * (r.matrix_flop + r.elementwise_flop) + n_fwd_bwd * r.backward_flop
        compute += flop * pixels / rate
        mem += (passes_fwd * (r.in_bytes + r.out_bytes) + n_fwd_bwd * r.backward_bytes) * pixels
    os_ = rows[-1].stride  # the head's output stride
    fused = passes_fwd * (3.0 + 2.0 / os_**2) * pixels / bandwidth
    memory = mem / bandwidth
    return {
        "compute_s": compute,
        "memory_s": memory,
        "fused_memory_s": fused,
        "limit_s": max(compute, memory),
        "fused_limit_s": max(compute, fused),
    }
