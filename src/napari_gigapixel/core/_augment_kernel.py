"""The fast kernel of the whole-slide augmentation: quarter turns, flips, colour map.

Numpy spent about 50 ns per pixel on the colour jitter (a float32 copy of
every window and one memory pass per operation) and 25-35 ns on a quarter
turn or flip of a 3-byte-per-pixel window (strided copies), on the critical
path of every tile: the old ``--augment`` step took 2-3x the plain one
(``benchmarks/bench_augment.py``). Here the colour map of a window is one
XLA-compiled fused loop (``tf.function(jit_compile=True)``: log, the 3x3 map,
exp, rounding in registers) and the turns and flips another (XLA's
transposes); the result stays a TensorFlow tensor that the tile step takes
as it is. Each is traced once and compiled by XLA once per window shape (a
handful per run, a fraction of a second each, in the first steps).

The colour map is a per-pixel function (:mod:`.stain`), so a window of the
transformed slide is the transformed window: tiling changes nothing.
TensorFlow is imported inside functions only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .stain import Augmentation, ColourJitter, InkRecolour

_FUNCS: dict[Any, Any] = {}


def _colour_kernel():
    """The XLA colour map (traced per input shape)."""
    if "colour" not in _FUNCS:
        import tensorflow as tf

        @tf.function(
            jit_compile=True,
            input_signature=[
                tf.TensorSpec([None, None, 3], tf.uint8),
                tf.TensorSpec([3, 3], tf.float32),
                tf.TensorSpec([4], tf.float32),
            ],
        )
        def run(x, m, b):
            logv = tf.math.log(tf.maximum(tf.cast(x, tf.float32) * (1.0 / 255.0), 1e-6))
            # b[3] is the offset; log(gain) is folded into b[:3].
            y = logv[..., 0:1] * m[0] + logv[..., 1:2] * m[1] + logv[..., 2:3] * m[2] + b[:3]
            y = tf.exp(y) + b[3]
            return tf.cast(tf.clip_by_value(tf.round(y), 0.0, 255.0), tf.uint8)

        _FUNCS["colour"] = run
    return _FUNCS["colour"]


def _ink_kernel(factor: int):
    """The XLA ink recolouring (:class:`.stain.InkRecolour`) for labels at 1/``factor``."""
    key = ("ink", factor)
    if key not in _FUNCS:
        import tensorflow as tf

        @tf.function(
            jit_compile=True,
            input_signature=[
                tf.TensorSpec([None, None, 3], tf.uint8),
                tf.TensorSpec([None, None], tf.uint8),
                tf.TensorSpec([6], tf.float32),
            ],
        )
        def run(x, background, p):
            # p: direction (3), darkness scale, threshold, log(white).
            h, w = tf.shape(x)[0], tf.shape(x)[1]
            bg = tf.repeat(tf.repeat(background, factor, axis=0), factor, axis=1)[:h, :w]
            v = tf.cast(x, tf.float32)
            d = tf.minimum(tf.math.log(tf.maximum(v, 255e-6)) - p[5], 0.0)
            n = tf.sqrt(tf.reduce_sum(d * d, axis=-1, keepdims=True))
            sel = (bg[..., None] > 0) & (n > p[4])
            new = tf.exp(p[5] - n * p[3] * p[:3])
            new = tf.cast(tf.clip_by_value(tf.round(new), 0.0, 255.0), tf.uint8)
            return tf.where(sel, new, x)

        _FUNCS[key] = run
    return _FUNCS[key]


def _turn_kernel(k: int, flip: bool):
    """The XLA quarter turns and flip of one combination (a separate fusion from the
    colour map: fused with it, the transposed reads made both several times slower)."""
    key = (k, flip)
    if key not in _FUNCS:
        import tensorflow as tf

        @tf.function(jit_compile=True, input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
        def run(x):
            if k:
                x = tf.image.rot90(x, k)
            if flip:
                x = tf.reverse(x, [1])
            return x

        _FUNCS[key] = run
    return _FUNCS[key]


def map_rect(
    rect: tuple[int, int, int, int], shape: tuple[int, int], k: int, flip: bool
) -> tuple[int, int, int, int]:
    """Where rows/cols ``(y0, y1, x0, x1)`` of an ``(h, w)`` array ``a`` land in
    ``fliplr(rot90(a, k))`` (``flip`` on)."""
    y0, y1, x0, x1 = rect
    h, w = shape
    for _ in range(k % 4):
        # rot90 (counter-clockwise): out[i, j] = a[j, w - 1 - i], shape (w, h).
        y0, y1, x0, x1 = w - x1, w - x0, y0, y1
        h, w = w, h
    if flip:
        x0, x1 = w - x1, w - x0
    return y0, y1, x0, x1


def transform(
    src: np.ndarray,
    aug: Augmentation,
    shape: tuple[int, int] | None = None,
    background: np.ndarray | None = None,
    factor: int = 1,
):
    """``fliplr(rot90(src, k))`` with the ink and the colour map applied, for uint8 ``(h, w, 3)``.

    With ``shape``, the result is zero-padded at the bottom and right to that
    shape (a window reaching past the slide: the padding stays 0, as in the
    whole-image step, which pads the transformed slide). ``background``
    (uint8, 1 where the mask labels background) at 1/``factor`` of ``src``'s
    pixels, aligned with its top-left corner, selects where the ink applies;
    without it there is no ink. Returns a TensorFlow uint8 tensor
    (``np.asarray`` reads it), ready for the tile step.
    """
    import tensorflow as tf

    colour: ColourJitter | None = aug.colour
    ink: InkRecolour | None = aug.ink
    k, flip = aug.k % 4, bool(aug.flip)
    out = src
    if ink is not None and background is not None:
        p = np.append(ink.direction, [ink.scale, ink.threshold, np.log(ink.white)])
        out = _ink_kernel(int(factor))(out, background, p.astype(np.float32))
    if colour is not None:
        if not colour.gain > 0:
            raise ValueError(f"the colour map needs a positive contrast, got gain {colour.gain}")
        b = np.append(colour.bias + np.log(colour.gain), colour.offset).astype(np.float32)
        out = _colour_kernel()(out, colour.matrix.astype(np.float32), b)
    if k or flip:
        out = _turn_kernel(k, flip)(out)
    out = tf.convert_to_tensor(out)
    if shape is not None and tuple(out.shape[:2]) != tuple(shape):
        out = tf.pad(out, [[0, shape[0] - out.shape[0]], [0, shape[1] - out.shape[1]], [0, 0]])
    return out
