"""Tile geometry of a built model: total stride, receptive field, halo.

Derived from the model itself (never from constants): :func:`model_geometry`
walks the functional graph and composes each layer's stride and receptive
field analytically; the tests check it by perturbing single input pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import GigapixelError


@dataclass
class Geometry:
    """What the tiler needs to know about a built model.

    Attributes
    ----------
    stride
        Total stride ``S``: tile origins and sizes are multiples of it.
    output_stride
        Level-0 pixels per output pixel.
    rf_before, rf_after
        Receptive field of an output pixel beyond its own block, in level-0
        pixels, up/left and down/right (TF's ``same`` padding puts the odd
        pixel bottom/right, so the two differ).
    halo_before, halo_after
        The same rounded up to a multiple of ``S``.
    halo
        ``max(halo_before, halo_after)``: the halo the tile grid uses per side.
    """

    stride: int
    output_stride: int
    rf_before: int
    rf_after: int
    halo_before: int = field(init=False)
    halo_after: int = field(init=False)
    halo: int = field(init=False)

    def __post_init__(self) -> None:
        s = self.stride
        self.halo_before = s * math.ceil(max(self.rf_before, 0) / s)
        self.halo_after = s * math.ceil(max(self.rf_after, 0) / s)
        self.halo = max(self.halo_before, self.halo_after)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


_IDENTITY = {
    "InputLayer",
    "Rescaling",
    "InputTransform",  # per pixel (core._keras_layers)
    "Activation",
    "ReLU",
    "Dropout",
    "Identity",
}


def _layer_geometry(layer, inputs: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """(stride, before, after) of a layer's output from its inputs' (analytic)."""
    name = type(layer).__name__
    if name == "Concatenate" or name == "Add" or name == "Multiply":
        strides = {g[0] for g in inputs}
        if len(strides) != 1:
            raise GigapixelError(f"{layer.name}: merges tensors at different strides {strides}.")
        return (inputs[0][0], max(g[1] for g in inputs), max(g[2] for g in inputs))
    (t, before, after) = inputs[0]
    if name in _IDENTITY:
        return (t, before, after)
    if name in ("Conv2D", "WideGradConv2D"):  # the latter: core._keras_layers
        k = int(layer.kernel_size[0])
        s = int(layer.strides[0])
        d = int(layer.dilation_rate[0])
        if layer.kernel_size[0] != layer.kernel_size[1] or layer.strides[0] != layer.strides[1]:
            raise GigapixelError(f"{layer.name}: only square kernels and strides are supported.")
        keff = d * (k - 1) + 1
        if layer.padding == "same":
            # Inputs are multiples of s (the image is padded to S), so TF pads
            # keff - s in total, the odd pixel after.
            total = max(keff - s, 0)
            pb = total // 2
        else:
            raise GigapixelError(f"{layer.name}: only 'same' padding keeps tiles aligned.")
        # Output j reads inputs j*s - pb .. j*s - pb + keff - 1 (input grid of stride t).
        return (t * s, before + t * pb, after + t * (keff - s - pb))
    if name == "Conv2DTranspose":
        k = int(layer.kernel_size[0])
        s = int(layer.strides[0])
        if k != s:
            raise GigapixelError(
                f"{layer.name}: transposed convolutions must have kernel == stride "
                "(non-overlapping) for the tile geometry."
            )
        if t % s:
            raise GigapixelError(f"{layer.name}: upsamples past the input resolution.")
        # Output o reads input o // s, whose block is up to t - t/s wider than o's.
        return (t // s, before + t - t // s, after + t - t // s)
    if name == "UpSampling2D":
        s = int(layer.size[0])
        if layer.interpolation != "nearest":
            raise GigapixelError(f"{layer.name}: only nearest upsampling is supported.")
        return (t // s, before + t - t // s, after + t - t // s)
    raise GigapixelError(
        f"layer {layer.name} ({name}) is not supported by the tile geometry; "
        "use Conv2D, Conv2DTranspose, UpSampling2D, Concatenate and activations."
    )


def tensor_geometry(model, extra: Any = ()) -> dict[int, tuple[int, int, int]]:
    """``(stride, before, after)`` of every tensor of ``model``, keyed by ``id``.

    Walks the functional graph from the outputs (and any ``extra`` tensors)
    back to the input, composing each layer's stride and receptive-field
    extent analytically. :func:`model_geometry`, the memory model
    (``_resources.bytes_per_pixel``) and the roofline count all read it.
    """
    memo: dict[int, tuple[int, int, int]] = {}

    def visit(tensor) -> tuple[int, int, int]:
        key = id(tensor)
        if key not in memo:
            op, node_index, _ = tensor._keras_history
            parents = list(op._inbound_nodes[node_index].input_tensors)
            memo[key] = (
                (1, 0, 0) if not parents else _layer_geometry(op, [visit(p) for p in parents])
            )
        return memo[key]

    for tensor in [*model.outputs, *extra]:
        visit(tensor)
    return memo


def model_geometry(model) -> Geometry:
    """Derive ``S``, the receptive field and the halo from a built model.

    Composes each layer's stride and receptive-field extent along the graph
    (:func:`tensor_geometry`; analytic, the tests check it by perturbing
    single input pixels).
    """
    memo = tensor_geometry(model)
    out_stride, before, after = memo[id(model.outputs[0])]
    # Total stride: the deepest level any layer reached.
    total = max(g[0] for g in memo.values())
    if total % out_stride:
        raise GigapixelError("model: the output stride does not divide the total stride.")
    return Geometry(stride=total, output_stride=out_stride, rf_before=before, rf_after=after)
