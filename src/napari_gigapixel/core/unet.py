"""The U-Net: builder, geometry (stride, receptive field, halo), save and load.

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

import json
import math
import os
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import GigapixelError

#: Name of the metadata entry added to the ``.keras`` zip.
META_ENTRY = "napari_gigapixel.json"
#: Format tag of that entry; a ``.keras`` file without it is foreign.
META_FORMAT = "napari-gigapixel-model"
META_VERSION = 1


class ModelFileError(GigapixelError):
    """A model file that cannot be used: missing, corrupt or not made by napari-gigapixel."""


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
    """

    widths: tuple[int, ...] = (8, 8, 12)
    kernels: tuple[int, ...] = (4, 5, 3)
    strides: tuple[int, ...] = (4, 4, 2)
    decoder_widths: tuple[int, ...] = (4, 4, 6)
    decoder_kernel: int = 3
    output_stride: int = 4

    def __post_init__(self) -> None:
        # Lists come back from JSON; keep tuples so configs compare equal.
        self.widths = tuple(int(v) for v in self.widths)
        self.kernels = tuple(int(v) for v in self.kernels)
        self.strides = tuple(int(v) for v in self.strides)
        self.decoder_widths = tuple(int(v) for v in self.decoder_widths)
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
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, dtype=main, name="rescale")(inp)
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
        skip = skips[lev]
        if dtype == "mixed_bfloat16":
            skip = layers.Activation("linear", dtype="float32", name=f"skip{lev}")(skip)
        x = layers.Concatenate(name=f"cat{lev}", dtype=exact)([x, skip])
        x = layers.Conv2D(
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


# --------------------------------------------------------------------------- geometry

_IDENTITY = {
    "InputLayer",
    "Rescaling",
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
    if name == "Conv2D":
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


def model_geometry(model) -> Geometry:
    """Derive ``S``, the receptive field and the halo from a built model.

    Walks the functional graph from the output back to the input, composing
    each layer's stride and receptive-field extent (analytic; the tests check
    it by perturbing single input pixels).
    """
    memo: dict[int, tuple[int, int, int]] = {}

    def visit(tensor) -> tuple[int, int, int]:
        key = id(tensor)
        if key in memo:
            return memo[key]
        op, node_index, _ = tensor._keras_history
        node = op._inbound_nodes[node_index]
        parents = list(node.input_tensors)
        if not parents:
            geo = (1, 0, 0)
        else:
            geo = _layer_geometry(op, [visit(p) for p in parents])
        memo[key] = geo
        return geo

    out_stride, before, after = visit(model.outputs[0])
    # Total stride: the deepest level any layer reached.
    total = max(g[0] for g in memo.values())
    if total % out_stride:
        raise GigapixelError("model: the output stride does not divide the total stride.")
    return Geometry(stride=total, output_stride=out_stride, rf_before=before, rf_after=after)


def count_params(model) -> int:
    """Number of trainable parameters."""
    return int(sum(int(math.prod(v.shape)) for v in model.trainable_weights))


# --------------------------------------------------------------------------- files


def save_model(
    model,
    path: str | os.PathLike,
    *,
    geometry: Geometry,
    model_config: ModelConfig | None = None,
    train_config: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
) -> str:
    """Write ``model`` to a self-contained ``.keras`` file, atomically.

    Keras writes the zip (weights, and the optimizer state when the model was
    compiled with one, so training resumes exactly); the geometry, model
    config, training config and history are added as a JSON entry
    (:data:`META_ENTRY`) inside the same zip. The file appears under its name
    only once complete (temporary file in the same folder, then rename).

    Returns
    -------
    str
        The path written.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ModelFileError(f"{path}: a model file name must end with '.keras'.")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    meta = {
        "format": META_FORMAT,
        "version": META_VERSION,
        "geometry": geometry.to_dict(),
        "model_config": model_config.to_dict() if model_config else None,
        "train_config": train_config or {},
        "history": history or [],
    }
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".keras", dir=folder)
    os.close(fd)
    try:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as zf:
            zf.writestr(META_ENTRY, json.dumps(meta, default=str))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_model_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Read the napari-gigapixel metadata of a model file without loading Keras.

    Raises
    ------
    ModelFileError
        Missing, not a zip (corrupt or truncated), or a ``.keras`` file that
        napari-gigapixel did not write.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such model file. Check the path.")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if META_ENTRY not in names:
                raise ModelFileError(
                    f"{path}: a Keras file without napari-gigapixel metadata (a model "
                    "from another project?). Train one with 'napari-gigapixel train'."
                )
            meta = json.loads(zf.read(META_ENTRY))
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(
            f"{path}: not a readable .keras model file (corrupt or truncated: {exc}). "
            "Use another checkpoint or retrain."
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise ModelFileError(
            f"{path}: its metadata is not napari-gigapixel's; use a model trained "
            "with napari-gigapixel."
        )
    return meta


def load_model(path: str | os.PathLike):
    """Load a model saved by :func:`save_model`.

    Returns
    -------
    (keras.Model, dict)
        The model (with its optimizer state when it had one) and the metadata:
        ``geometry`` (a :class:`Geometry`), ``model_config`` (a
        :class:`ModelConfig` or None), ``train_config`` (dict) and ``history``.

    Raises
    ------
    ModelFileError
        For a missing, corrupt, truncated or foreign file; the message names it.
    """
    path = os.fspath(path)
    meta = read_model_meta(path)
    import keras

    try:
        model = keras.saving.load_model(path, compile=True)
    except Exception as exc:  # Keras raises many types for a damaged archive
        raise ModelFileError(
            f"{path}: Keras could not load this model ({type(exc).__name__}: {exc}). "
            "The file may be damaged; use another checkpoint or retrain."
        ) from exc
    g = meta["geometry"]
    meta = dict(meta)
    meta["geometry"] = Geometry(
        stride=int(g["stride"]),
        output_stride=int(g["output_stride"]),
        rf_before=int(g["rf_before"]),
        rf_after=int(g["rf_after"]),
    )
    if meta.get("model_config"):
        meta["model_config"] = ModelConfig.from_dict(meta["model_config"])
    return model, meta
