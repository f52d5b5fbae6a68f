"""The U-Net: its configuration and builder (geometry and files re-exported).

The model is a small fully convolutional Keras 3 U-Net (about 4.5k parameters
by default, like the MIDL 2023 paper's): a ``Rescaling`` input so tiles stay
uint8 until they reach the model, large kernels with high strides in the
encoder, skip connections, a decoder back up to ``output_stride`` and a
1-channel sigmoid head. It has no batch-statistics layer, so every output
pixel depends only on a bounded window of input pixels: that is what makes the
streamed trainer (:mod:`.training`) exact.

Keras is imported inside functions only, so importing this module loads
neither TensorFlow nor Keras.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ._keras_layers import KINDS as INPUT_TRANSFORMS
from .errors import GigapixelError
from .geometry import Geometry, model_geometry
from .model_io import (
    META_ENTRY,
    META_FORMAT,
    META_VERSION,
    ModelFileError,
    load_model,
    read_model_meta,
    save_model,
)

# Geometry and model files live in their own modules; re-exported here because
# callers think of them as "the U-Net's".
__all__ = [
    "META_ENTRY",
    "META_FORMAT",
    "META_VERSION",
    "INPUT_TRANSFORMS",
    "Geometry",
    "ModelConfig",
    "ModelFileError",
    "PRESETS",
    "PRESET_NOTES",
    "build_unet",
    "count_params",
    "load_model",
    "model_geometry",
    "preset_config",
    "preset_name",
    "read_model_meta",
    "save_model",
]


@dataclass
class ModelConfig:
    """Architecture of the U-Net.

    Parameters
    ----------
    widths
        Channels of each encoder stage (its output), shallow to deep.
    kernels
        Kernel size of each encoder stage's convolution.
    strides
        Stride of each encoder stage. Their product is the total stride ``S``.
    decoder_widths
        Channels of the decoder stage that returns to each encoder level,
        shallow to deep (``len(widths)`` entries: level 0 is the input's
        resolution, level ``i`` the output of encoder stage ``i``). Only the
        levels at or above ``output_stride`` are used.
    decoder_kernel
        Kernel size of the decoder's convolution after each skip concatenation.
    output_stride
        Resolution of the output in level-0 pixels: 4 by default (logits at
        1/4, the fast setting), 1 for a full-resolution head. Must be 1 or a
        product of the first few encoder strides.
    input_mean, input_std
        Per-channel (R, G, B) statistics of the training slides' pixels: the
        input layer computes ``(x - mean) / std``, constants saved with the
        model, so prediction applies the same transform and tiling stays
        exact. ``None`` (both): the fixed ``x / 127.5 - 1``.
    white_balance
        The model expects slides white-balanced (:mod:`.input_norm`: each
        slide's glass scaled to one white) before its input layer; the trainer
        and :func:`.inference.predict` do it per slide.
    white_field
        With ``white_balance``: the balance is local (:mod:`.white_field`: the
        glass colour per cell of about 64 um, so the lamp's shading goes too),
        not one gain per slide. New white-balanced models have it; files
        written before it existed load without it and are balanced per slide.
    input_transform
        What the input layer computes from each grey level before
        standardising (:data:`INPUT_TRANSFORMS`): ``"linear"`` the grey level
        itself; ``"od"`` its optical density ``log10(256 / (x + 1))``
        (Beer-Lambert: stain amounts add up in it, and a paler slide's tissue
        is the same pattern scaled down, where in grey levels pale tissue is
        squeezed into the few levels below glass). A per-pixel map, so tiling
        stays exact. Files written before it existed load as ``"linear"``.
    """

    widths: tuple[int, ...] = (8, 8, 12)
    kernels: tuple[int, ...] = (4, 5, 3)
    strides: tuple[int, ...] = (4, 4, 2)
    decoder_widths: tuple[int, ...] = (4, 4, 6)
    decoder_kernel: int = 3
    output_stride: int = 4
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    white_balance: bool = False
    white_field: bool = False
    input_transform: str = "linear"

    def __post_init__(self) -> None:
        # Lists come back from JSON; keep tuples so configs compare equal.
        self.widths = tuple(int(v) for v in self.widths)
        self.kernels = tuple(int(v) for v in self.kernels)
        self.strides = tuple(int(v) for v in self.strides)
        self.decoder_widths = tuple(int(v) for v in self.decoder_widths)
        if (self.input_mean is None) != (self.input_std is None):
            raise GigapixelError("ModelConfig: give both input_mean and input_std, or neither.")
        if self.input_mean is not None:
            self.input_mean = tuple(float(v) for v in self.input_mean)
            self.input_std = tuple(float(v) for v in self.input_std)
            if len(self.input_mean) != 3 or len(self.input_std) != 3 or min(self.input_std) <= 0:
                raise GigapixelError(
                    "ModelConfig: input_mean and input_std need 3 values (R, G, B), std > 0."
                )
        if self.input_transform not in INPUT_TRANSFORMS:
            raise GigapixelError(
                f"ModelConfig: input_transform {self.input_transform!r} is not one of "
                f"{', '.join(INPUT_TRANSFORMS)}."
            )
        n = len(self.widths)
        if not (n >= 1 and len(self.kernels) == n and len(self.strides) == n):
            raise GigapixelError(
                "ModelConfig: widths, kernels and strides need one entry per encoder "
                f"stage; got {len(self.widths)}, {len(self.kernels)}, {len(self.strides)}."
            )
        if len(self.decoder_widths) != n:
            raise GigapixelError(
                f"ModelConfig: decoder_widths needs {n} entries (one per level), "
                f"got {len(self.decoder_widths)}."
            )
        if min(self.strides) < 1 or min(self.kernels) < 1 or min(self.widths) < 1:
            raise GigapixelError("ModelConfig: widths, kernels and strides must be positive.")
        if self.output_stride not in self.level_strides()[:-1] and self.output_stride != 1:
            raise GigapixelError(
                f"ModelConfig: output_stride {self.output_stride} must be 1 or one of the "
                f"encoder's cumulative strides {self.level_strides()[1:-1]}."
            )

    def level_strides(self) -> list[int]:
        """Cumulative stride of each level: input (1), then each encoder stage."""
        out = [1]
        for s in self.strides:
            out.append(out[-1] * s)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists, not tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (newer files)."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


#: Model sizes (encoder and decoder widths), shared by ``train --model-size``
#: and the Train widget. "small" is the plain :class:`ModelConfig` (the
#: paper's size); the training recipe's is ``TrainConfig().model``.
PRESETS: dict[str, dict[str, tuple[int, ...]]] = {
    "small": {"widths": (8, 8, 12), "decoder_widths": (4, 4, 6)},
    # Wider first stages than "small" (what keeps pen and dust apart from pale
    # tissue), a lean last decoder stage (the most costly layer per pixel).
    "medium": {"widths": (12, 16, 24), "decoder_widths": (8, 8, 12)},
    "large": {"widths": (32, 48, 64), "decoder_widths": (16, 24, 32)},
}
#: What each preset is, in words (CLI help, the Train widget's choices).
PRESET_NOTES = {
    "small": "~4.8k parameters, like the paper's",
    "medium": "~16k parameters",
    "large": "~123k parameters",
}


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The :class:`ModelConfig` of a size preset, with ``overrides`` (e.g. ``output_stride``)."""
    if name not in PRESETS:
        raise GigapixelError(f"unknown model size {name!r}; use one of {', '.join(PRESETS)}.")
    return ModelConfig(**{**PRESETS[name], **overrides})


def preset_name(cfg: ModelConfig) -> str | None:
    """The size preset whose widths ``cfg`` has, or None."""
    for name, widths in PRESETS.items():
        if (cfg.widths, cfg.decoder_widths) == (widths["widths"], widths["decoder_widths"]):
            return name
    return None


def _policy(dtype: str):
    import keras

    if dtype == "mixed_bfloat16":
        return keras.mixed_precision.DTypePolicy("mixed_bfloat16")
    return dtype


def build_unet(cfg: ModelConfig | None = None, seed: int = 0, *, dtype: str = "float32"):
    """Build the U-Net.

    Parameters
    ----------
    cfg
        Architecture (default :class:`ModelConfig`).
    seed
        Seeds every initializer: the same seed gives the same initial weights.
    dtype
        ``"float32"``, ``"float64"`` (for exactness tests) or ``"mixed_bfloat16"``
        (bf16 compute, float32 weights). Transposed convolutions and the head
        always compute in float32: TF's CPU bias-gradient op sums in bf16 and
        gets their bias gradients badly wrong.

    Returns
    -------
    keras.Model
        Input uint8 ``(batch, H, W, 3)`` with ``H`` and ``W`` multiples of the
        total stride; output ``(batch, H/os, W/os, 1)`` sigmoid probability.
    """
    import keras
    from keras import layers

    cfg = cfg or ModelConfig()
    main = _policy(dtype)
    exact = "float64" if dtype == "float64" else "float32"
    counter = iter(range(10_000))

    def init():
        # One seeded initializer per layer: the weights depend only on `seed`.
        return keras.initializers.GlorotUniform(seed=seed * 1000 + next(counter))

    inp = keras.Input((None, None, 3), dtype="uint8", name="image")
    # Centred input ([-1, 1]): on mostly-white slides a [0, 1] input leaves
    # many first-layer ReLUs always on or always off at initialisation, and
    # plain BCE then sometimes never escapes (measured: stuck at ln 2).
    if cfg.input_mean is None and cfg.input_transform == "od":
        scale, offset = [1.0] * 3, [0.0] * 3  # optical density is already about 0-2
    elif cfg.input_mean is None:
        scale, offset = [1.0 / 127.5] * 3, [-1.0] * 3
    else:  # standardised per channel with the training slides' statistics
        scale = [1.0 / s for s in cfg.input_std]
        offset = [-m / s for m, s in zip(cfg.input_mean, cfg.input_std)]
    from ._keras_layers import input_layer, wide_grad_conv

    x = input_layer()(cfg.input_transform, scale, offset, dtype=main, name="rescale")(inp)
    skips = [x]
    for i, (w, k, s) in enumerate(zip(cfg.widths, cfg.kernels, cfg.strides)):
        x = layers.Conv2D(
            w,
            k,
            strides=s,
            padding="same",
            activation="relu",
            kernel_initializer=init(),
            dtype=main,
            name=f"enc{i + 1}",
        )(x)
        skips.append(x)
    levels = cfg.level_strides()
    target = levels.index(cfg.output_stride)
    for lev in range(len(cfg.widths) - 1, target - 1, -1):
        s = cfg.strides[lev]
        w = cfg.decoder_widths[lev]
        x = layers.Conv2DTranspose(
            w,
            s,
            strides=s,
            padding="same",
            activation="relu",
            kernel_initializer=init(),
            dtype=exact,
            name=f"up{lev}",
        )(x)
        if dtype == "mixed_bfloat16":
            # Join the skip in bf16: the decoder convolution reads bf16 anyway,
            # so rounding the upsampled tensor here gives the same values as
            # a float32 join cast afterwards, with a third of the memory
            # traffic (measured 2x faster at 1/4 resolution on the dev machine).
            x = layers.Activation("linear", dtype=main, name=f"down{lev}")(x)
        x = layers.Concatenate(name=f"cat{lev}", dtype=main)([x, skips[lev]])
        # The finest decoder convolution is the step's costliest layer; its
        # bf16 kernel gradient is computed wide (core/_keras_layers.py).
        conv = wide_grad_conv() if lev == target else layers.Conv2D
        x = conv(
            w,
            cfg.decoder_kernel,
            padding="same",
            activation="relu",
            kernel_initializer=init(),
            dtype=main,
            name=f"dec{lev}",
        )(x)
    out = layers.Conv2D(
        1,
        1,
        padding="same",
        activation="sigmoid",
        kernel_initializer=init(),
        dtype=exact,
        name="head",
    )(x)
    model = keras.Model(inp, out, name="gigapixel_unet")
    return model


def count_params(model) -> int:
    """Number of trainable parameters."""
    return int(sum(int(math.prod(v.shape)) for v in model.trainable_weights))
