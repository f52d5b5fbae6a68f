"""The model over a slide as a dask graph: aligned chunks, asymmetric halo, model cache.

The slide (a dask array) is padded bottom/right to a multiple of the model's
total stride ``S``, exactly as training pads it, cut into chunks whose sizes
are multiples of ``S`` and run through ``dask.array`` overlap with the model's
asymmetric halo (``boundary="none"``: windows are clipped at the padded border,
never zero-padded past it). Every window's origin and size are then multiples
of ``S``, so the outputs over a chunk's core equal those of one whole-image run.

Keras/TensorFlow are imported inside functions only. A model is loaded once per
process (keyed by path and mtime) and shared by its threads.
"""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import GigapixelError
from .model_io import mark_white_balance, read_model_meta

#: Value of the pixels padded bottom/right to a multiple of S (as in training).
PAD_VALUE = 0
#: Default level-0 chunk side (rounded to S). Measured on 2 CPU cores for a 1 Gpx
#: slide (benchmarks/bench_predict.py): 2048 was as fast as 4096 (the halo adds
#: 16%, but two threads keep busier) at 2.1 instead of 3.7 GiB peak RSS.
DEFAULT_CHUNK = 2048
#: Test-time augmentation (``PredictConfig.tta``, ``predict --tta``): ``"flips"``
#: averages the probabilities of a window and of its three mirror images (each
#: mirrored back); ``"half-darker"`` the same four passes with the up-down and
#: both-ways mirror images darker, every stain stronger
#: (:data:`._infer_graph.DARKER_OD`); ``"flips+darker"`` the four flips and the
#: same four darker (8 passes); ``"none"`` runs the model once.
TTA_MODES = ("half-darker", "flips", "flips+darker", "none")
#: What ``predict`` does by default (``PredictConfig.tta``, the widget, the
#: estimate): chosen on the tuning slides (docs/quality.md), as fast as "flips".
DEFAULT_TTA = "half-darker"

# --------------------------------------------------------------------------- model cache

_MODELS: dict[tuple[str, float], Any] = {}
_MODELS_LOCK = threading.RLock()


def _compiled(model: Any, tta: str = "none") -> Any:
    """A graph function of ``model`` for any tile size (traced once per ``tta``;
    :func:`._infer_graph.inference_function`: the input map folded into the first layer)."""
    fns = getattr(model, "_gigapixel_infer", None)
    if fns is not None and tta in fns:
        return fns[tta]
    with _MODELS_LOCK:  # dask threads race here on the first chunks
        fns = getattr(model, "_gigapixel_infer", None)
        if fns is None:
            fns = model._gigapixel_infer = {}
        if tta not in fns:
            from ._infer_graph import inference_function

            fn = inference_function(model, tta)
            fn.get_concrete_function()  # trace now, under the lock
            fns[tta] = fn
    return fns[tta]


def cached_model(path: str, mixed_precision: bool = False) -> tuple[Any, Any]:
    """Load ``path`` once per process (keyed by path and mtime): ``(model, meta)``.

    With ``mixed_precision``, the same architecture is rebuilt with the
    ``mixed_bfloat16`` policy (as training uses; probabilities within about
    1e-3) and given the file's weights. On the development machine (AVX512-BF16)
    it was 15% faster than float32 until float32 prediction folded its input
    layer (:mod:`._infer_graph`, which bf16 does not); now about 5%.
    """
    from ._quiet_tf import load_keras_quietly
    from .unet import build_unet, load_model

    load_keras_quietly()
    key = (os.path.abspath(path), os.path.getmtime(path), bool(mixed_precision))
    with _MODELS_LOCK:
        if key not in _MODELS:
            if not mixed_precision:
                _MODELS[key] = load_model(path)
            else:
                base, meta = cached_model(path)
                if meta.get("model_config") is None:
                    raise GigapixelError(
                        f"{path}: the file records no model configuration, which mixed "
                        "precision needs to rebuild the model; predict without it."
                    )
                mixed = build_unet(meta["model_config"], dtype="mixed_bfloat16")
                mixed.set_weights(base.get_weights())
                mark_white_balance(mixed, meta["model_config"])
                _MODELS[key] = (mixed, meta)
        return _MODELS[key]


@dataclass(frozen=True)
class ModelRef:
    """A model by path: what a distributed task carries (a Keras model does not pickle)."""

    path: str
    mixed_precision: bool = False

    def load(self) -> Any:
        return cached_model(self.path, self.mixed_precision)[0]


def model_white_balance(model: Any) -> bool | None:
    """Whether ``model`` expects white-balanced slides (``ModelConfig.white_balance``).

    ``model`` is a path of a saved model, a :class:`ModelRef` (read from the
    file's metadata, without Keras) or a Keras model marked by
    :func:`mark_white_balance` (every model loaded from a file is). None: a
    Keras model that says nothing (built in this process and never saved).
    """
    if isinstance(model, ModelRef):
        model = model.path
    if isinstance(model, str | os.PathLike):
        mcfg = read_model_meta(os.fspath(model)).get("model_config") or {}
        return bool(mcfg.get("white_balance"))
    flag = getattr(model, "_gigapixel_white_balance", None)
    return None if flag is None else bool(flag)


def model_white_field(model: Any) -> bool:
    """Whether ``model`` (as :func:`model_white_balance`) is balanced per place
    (``ModelConfig.white_field``); False when it says nothing."""
    if isinstance(model, ModelRef):
        model = model.path
    if isinstance(model, str | os.PathLike):
        mcfg = read_model_meta(os.fspath(model)).get("model_config") or {}
        return bool(mcfg.get("white_balance") and mcfg.get("white_field"))
    return bool(getattr(model, "_gigapixel_white_field", False))


def balance_like_predict(model: Any, image: Any, white_balance: bool | None = None) -> Any:
    """``image`` white-balanced as :func:`.inference.predict` balances a slide, when due.

    The balance is due when ``white_balance`` is True, or None and the model
    records it (:func:`model_white_balance`). The glass colour is the image's
    own (:func:`.input_norm.slide_balance` of the whole array, taken as level
    0: the same sample and percentile as a slide of that size), per place
    when the model is (:func:`model_white_field`), else one lookup table per
    channel; each pixel's value depends on its value and place only, so
    chunking cannot change it. numpy in, numpy out; dask in, dask out (lazy).
    """
    if white_balance is None:
        white_balance = bool(model_white_balance(model))
    if not white_balance:
        return image
    if len(image.shape) != 3 or image.shape[2] < 3 or image.dtype != np.uint8:
        raise GigapixelError(
            f"inference: the image must be (H, W, 3) uint8 RGB, got {tuple(image.shape)} "
            f"{image.dtype}."
        )
    from ._predict_input import balance_chunk
    from .input_norm import balance_pixels, slide_balance

    balance = slide_balance(image, model_white_field(model))[0]
    if hasattr(image, "map_blocks"):  # dask: stays lazy, block by block
        return image[..., :3].map_blocks(
            balance_chunk, balance=balance, origin=(0, 0), downsample=1.0, dtype=np.uint8
        )
    return balance_pixels(np.asarray(image)[..., :3], balance)


def _warm_worker(ref: ModelRef, tta: str = "none") -> None:
    """Load the model into a worker's cache and trace its graph for ``tta``
    (returns nothing: models do not pickle)."""
    _compiled(ref.load(), tta)


def check_tta(tta: str) -> str:
    """``tta`` if it is one of :data:`TTA_MODES`; else a :class:`GigapixelError` naming them."""
    if tta not in TTA_MODES:
        raise GigapixelError(
            f"test-time augmentation {tta!r} is not one of {', '.join(TTA_MODES)} "
            "(--tta half-darker: the mean over the slide and its mirror images, two of "
            "them with the stains 20% stronger; flips: the mean over the slide's mirror "
            "images; flips+darker: over those and the same four darker; none: one pass)."
        )
    return tta


def _run_model(model: Any, window: np.ndarray, tta: str = "none") -> np.ndarray:
    """Probability (float32, 2-D, at the output stride) of one uint8 window.

    With ``tta="flips"``: the mean of the model's probabilities of the window
    and of its up-down, left-right and both-ways mirror images, each mirrored
    back (in the graph, :func:`._infer_graph.inference_function`; the other
    modes are described there). Every
    window's side is a multiple of the stride, so a mirrored window is cut on
    the same stride grid; with a symmetric halo (:func:`predict_dask`) tiles
    equal the whole image.
    """
    if isinstance(model, ModelRef):
        model = model.load()
    elif isinstance(model, str):
        model = cached_model(model)[0]
    x = np.ascontiguousarray(window[None, ..., :3], dtype=np.uint8)
    out = _compiled(model, tta)(x)
    return np.asarray(out, dtype=np.float32)[0, ..., 0]


# --------------------------------------------------------------------------- the graph


def _aligned_chunks(n: int, chunk: int, halo: int) -> tuple[int, ...]:
    """Chunk sizes of a padded axis: ``chunk`` each, the remainder merged if < halo.

    dask needs every chunk at least as large as the overlap it lends its
    neighbours; merging (rather than letting dask rechunk) keeps sizes
    multiples of S.
    """
    sizes = [chunk] * (n // chunk)
    rest = n - chunk * len(sizes)
    if rest:
        if sizes and rest < halo:
            sizes[-1] += rest
        else:
            sizes.append(rest)
    return tuple(sizes)


def default_chunk(geometry: Any) -> int:
    """Default level-0 chunk side for a model's output stride."""
    return DEFAULT_CHUNK


def _core_of_window(block, block_id, *, model, ychunks, xchunks, hb, ha, os_, tta="none"):
    """Run the model on one overlapped window and keep its core's outputs."""
    i, j = block_id[0], block_id[1]
    by = hb if i > 0 else 0
    bx = hb if j > 0 else 0
    ay = ha if i < len(ychunks) - 1 else 0
    ax = ha if j < len(xchunks) - 1 else 0
    cy, cx = ychunks[i], xchunks[j]
    if block.shape[:2] != (by + cy + ay, bx + cx + ax):  # the overlap contract
        raise GigapixelError(
            f"inference: window {block_id} has shape {block.shape[:2]}, expected "
            f"{(by + cy + ay, bx + cx + ax)}; the tile geometry is broken."
        )
    prob = _run_model(model, block, tta)
    return prob[by // os_ : (by + cy) // os_, bx // os_ : (bx + cx) // os_]


def predict_dask(
    model: Any, image: Any, geometry: Any, chunk: int | None = None, tta: str = "none"
) -> Any:
    """The lazy probability of ``image``: a float32 dask array at the output stride.

    Parameters
    ----------
    model
        A Keras model, or the path of a saved one (loaded once per process,
        which is what a distributed worker needs).
    image
        ``(H, W, 3)`` uint8 numpy or dask array.
    geometry
        The model's :class:`~napari_gigapixel.core.unet.Geometry`.
    chunk
        Level-0 chunk side; rounded down to a multiple of S, at least the halo.
    tta
        :data:`TTA_MODES`: ``"flips"`` runs each window and its three mirror
        images (:func:`_run_model`; ``"half-darker"`` and ``"flips+darker"``
        mirror them too), with the halo ``geometry.halo`` on both
        sides: a mirrored window needs the context after a pixel that the
        model reads before it.

    Returns
    -------
    dask.array.Array
        ``(ceil(H / os), ceil(W / os))`` float32 in [0, 1], chunks
        ``chunk / os`` square.
    """
    import dask.array as da

    s, os_ = int(geometry.stride), int(geometry.output_stride)
    hb, ha = int(geometry.halo_before), int(geometry.halo_after)
    if check_tta(tta) != "none":
        hb = ha = int(geometry.halo)
    halo = max(hb, ha, s)
    chunk = int(chunk or default_chunk(geometry))
    chunk = max(halo, chunk // s * s)
    img = image if isinstance(image, da.Array) else da.from_array(image, chunks=(chunk, chunk, -1))
    if img.ndim != 3 or img.shape[2] < 3:
        raise GigapixelError(f"inference: the image must be (H, W, 3) RGB, got {img.shape}.")
    img = img[..., :3]
    if img.dtype != np.uint8:
        raise GigapixelError(f"inference: the image must be uint8 RGB, got {img.dtype}.")
    h, w = int(img.shape[0]), int(img.shape[1])
    hp, wp = -(-h // s) * s, -(-w // s) * s
    if (hp, wp) != (h, w):
        img = da.pad(img, ((0, hp - h), (0, wp - w), (0, 0)), constant_values=PAD_VALUE)
    ych, xch = _aligned_chunks(hp, chunk, halo), _aligned_chunks(wp, chunk, halo)
    img = img.rechunk((ych, xch, 3))
    if len(ych) == 1 and len(xch) == 1:
        windows = img  # one window: the whole-image run
    else:
        depth = {0: (hb, ha), 1: (hb, ha), 2: (0, 0)}
        windows = da.overlap.overlap(img, depth=depth, boundary="none")
    prob = da.map_blocks(
        _core_of_window,
        windows,
        model=model,
        ychunks=ych,
        xchunks=xch,
        hb=hb,
        ha=ha,
        os_=os_,
        tta=tta,
        chunks=(tuple(c // os_ for c in ych), tuple(c // os_ for c in xch)),
        drop_axis=2,
        dtype=np.float32,
        name=f"gigapixel-infer-{uuid.uuid4().hex}",
    )
    return prob[: -(-h // os_), : -(-w // os_)]


def predict_array(
    model: Any,
    image: Any,
    geometry: Any = None,
    chunk: int | None = None,
    scheduler: str = "threads",
    *,
    white_balance: bool | None = None,
    threshold: float | None = None,
    clean: Any = None,
    mpp: float | None = None,
    tta: str = "none",
) -> np.ndarray:
    """Tiled inference of an in-memory image (tests, small images): float32 numpy.

    ``tta`` as :func:`predict_dask` (``"none"`` here: the model's own function;
    :class:`.inference.PredictConfig` defaults to :data:`DEFAULT_TTA`).

    With ``threshold``, the mask instead (uint8 0/1), cleaned as
    :func:`.inference.predict` cleans it (:func:`threshold_and_clean`).

    A model trained with white balance (``ModelConfig.white_balance``) gets
    the image balanced by its own glass colour first, as
    :func:`.inference.predict` balances a slide (:func:`balance_like_predict`);
    ``white_balance`` True/False overrides what the model records (needed for
    a model built in this process and never saved, which records nothing).
    """
    _check_clean(threshold, clean)
    if geometry is None:
        from .unet import model_geometry

        geometry = model_geometry(model)
    image = balance_like_predict(model, image, white_balance)
    prob = predict_dask(model, image, geometry, chunk, tta)
    if threshold is None:
        return prob.compute(scheduler=scheduler)
    mask = threshold_and_clean(prob, model, geometry, threshold, clean, mpp)
    return mask.compute(scheduler=scheduler)


def predict_whole(
    model: Any,
    image: np.ndarray,
    geometry: Any,
    *,
    white_balance: bool | None = None,
    threshold: float | None = None,
    clean: Any = None,
    mpp: float | None = None,
    tta: str = "none",
) -> np.ndarray:
    """One whole-image run on the padded image (the reference tiled runs must match).

    White balance, the mask with ``threshold``, and ``tta``, as in :func:`predict_array`.
    """
    _check_clean(threshold, clean)
    check_tta(tta)
    image = balance_like_predict(model, np.asarray(image), white_balance)
    s, os_ = int(geometry.stride), int(geometry.output_stride)
    h, w = image.shape[:2]
    hp, wp = -(-h // s) * s, -(-w // s) * s
    padded = np.pad(image[..., :3], ((0, hp - h), (0, wp - w), (0, 0)), constant_values=PAD_VALUE)
    prob = _run_model(model, padded, tta)[: -(-h // os_), : -(-w // os_)]
    if threshold is None:
        return prob
    return threshold_and_clean(prob, model, geometry, threshold, clean, mpp)


def _check_clean(threshold: float | None, clean: Any) -> None:
    """A clean-up acts on a mask: refuse ``clean`` without ``threshold``, before any work."""
    if threshold is None and clean is not None:
        raise GigapixelError("clean (the mask clean-up) needs a threshold: pass threshold=0.5.")


def threshold_and_clean(
    prob: Any, model: Any, geometry: Any, threshold: float, clean: Any, mpp: float | None
) -> Any:
    """The mask of a probability grid (numpy or dask), cleaned as ``predict`` cleans it.

    ``clean`` is a :class:`.mask_clean.CleanSettings` (None: its defaults, as
    ``PredictConfig``'s; ``CleanSettings(0, 0, 0)``: none). ``mpp`` is the
    image's um/px; None: the model's training resolution's um/px (recorded
    in its file), else :data:`.mask_clean.FALLBACK_MPP`. The grid is the
    image's pixels times the output stride.
    """
    from .mask_clean import CleanSettings, clean_block, clean_dask, plan_clean

    if not 0.0 <= float(threshold) <= 1.0:
        raise GigapixelError(f"threshold must be within [0, 1], got {threshold}.")
    settings = (CleanSettings() if clean is None else clean).validate()
    os_ = int(geometry.output_stride)
    if mpp:  # the image's own um/px
        px, _ = plan_clean(settings, float(mpp), None, os_)
    else:  # the image is at the model's training resolution: its um/px
        rec = getattr(model, "_gigapixel_resolution", None) or {}
        downsample = float(rec.get("downsample") or 1.0)
        px, _ = plan_clean(settings, None, {"resolution": rec}, downsample * os_)
    mask = (prob >= threshold).astype(np.uint8)
    if not px.active:
        return mask
    clean_fn = clean_block if isinstance(prob, np.ndarray) else clean_dask
    return clean_fn(mask, px.radius_px, px.min_object_px, px.min_hole_px)
