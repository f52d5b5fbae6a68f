"""The fast kernel of the whole-slide augmentation: quarter turns, flips, colour map.

Numpy spent about 50 ns per pixel on the colour jitter (a float32 copy of
every window and one memory pass per operation) and 25-35 ns on a quarter
turn or flip of a 3-byte-per-pixel window (strided copies), on the critical
path of every tile: the old ``--augment`` step took 2-3x the plain one
(``benchmarks/bench_augment.py``). Here the colour map of a window is one
XLA-compiled lookup in a table of all 2**24 colours, built once per step
by an XLA-compiled fused loop (log, the 3x3 map, exp, rounding in
registers). The trainer's windows are only ever mirrored (a turn's
transpose goes into the model's kernels, :mod:`._train_augment`): the mirror
is fused into the lookup's reads, or alone one XLA reverse (a copy's cost;
a transpose of 3-byte pixels cost 4-5x one). The result stays a TensorFlow
tensor that the tile step takes as it is. Each is traced once and compiled
by XLA once per window shape (a handful per run, a fraction of a second
each, in the first steps).

The ink (:class:`.stain.InkRecolour`) changes only pixels the mask calls
background that are darker than the glass: pen, dust, bubble rims, a few
percent of a slide. An integer-only kernel flags the 16 px blocks that may
hold such a pixel (once per window and run: the flags do not depend on the
step's draw), and the ink's XLA kernel recolours a stack of those blocks,
written back into the window in place. A whole-window ink pass took 4 s of a
20 s step at 1 Gpx.

The colour map and the ink are per-pixel functions (:mod:`.stain`), so a
window of the transformed slide is the transformed window: tiling changes
nothing.
TensorFlow is imported inside functions only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .stain import Augmentation, ColourJitter, InkRecolour

_FUNCS: dict[Any, Any] = {}


#: Colours of 8-bit RGB: the colour map is applied as a table over all of them.
_COLOURS = 1 << 24


def _colour_table_kernel():
    """The XLA colour map of every 8-bit RGB colour, index ``(r * 256 + g) * 256 + b``."""
    if "colour_table" not in _FUNCS:
        import tensorflow as tf

        @tf.function(
            jit_compile=True,
            input_signature=[tf.TensorSpec([3, 3], tf.float32), tf.TensorSpec([4], tf.float32)],
        )
        def run(m, b):
            i = tf.range(_COLOURS, dtype=tf.int32)
            x = tf.stack([i // 65536, (i // 256) % 256, i % 256], axis=-1)
            logv = tf.math.log(tf.maximum(tf.cast(x, tf.float32) * (1.0 / 255.0), 1e-6))
            # b[3] is the offset; log(gain) is folded into b[:3].
            y = logv[..., 0:1] * m[0] + logv[..., 1:2] * m[1] + logv[..., 2:3] * m[2] + b[:3]
            y = tf.exp(y) + b[3]
            return tf.cast(tf.clip_by_value(tf.round(y), 0.0, 255.0), tf.uint8)

        _FUNCS["colour_table"] = run
    return _FUNCS["colour_table"]


def _lookup_kernel(axes: tuple[int, ...] = ()):
    """The XLA table lookup of a uint8 ``(h, w, 3)`` window, mirrored along ``axes``
    (the mirror fused into the gather's reads: free, where alone it is a copy)."""
    key = ("lookup", axes)
    if key not in _FUNCS:
        import tensorflow as tf

        @tf.function(
            jit_compile=True,
            input_signature=[
                tf.TensorSpec([None, None, 3], tf.uint8),
                tf.TensorSpec([_COLOURS, 3], tf.uint8),
            ],
        )
        def run(x, table):
            if axes:
                x = tf.reverse(x, list(axes))
            x = tf.cast(x, tf.int32)
            return tf.gather(table, (x[..., 0] * 256 + x[..., 1]) * 256 + x[..., 2])

        _FUNCS[key] = run
    return _FUNCS[key]


def mirror_axes(k: int, flip: bool) -> tuple[int, ...] | None:
    """The axes ``fliplr(rot90(a, k))`` reverses, or None when it turns ``a`` (k odd)."""
    if k % 2:
        return None
    rows = k % 4 == 2
    return tuple(a for a, on in ((0, rows), (1, rows != bool(flip))) if on)


def colour_table(colour: ColourJitter):
    """The colour map of every 8-bit colour, ``(2**24, 3)`` uint8 (a TensorFlow tensor).

    Built once per map (a step's windows, in both of Dice's passes, share it):
    16.8 M colours through the float32 map take 0.04-0.07 s, and a lookup
    per pixel then costs about half of computing log, the 3x3 map and exp
    for it (0.032 against 0.059 s for a 25 Mpx window on the development
    machine), with no transcendental work competing with the convolutions:
    ``--augment stain`` went from +18-21% to +1% per step at 268 Mpx
    (``benchmarks/bench_augment.py``). A pixel's value depends on its colour
    alone, whatever window holds it.
    """
    if not colour.gain > 0:
        raise ValueError(f"the colour map needs a positive contrast, got gain {colour.gain}")
    m = colour.matrix.astype(np.float32)
    b = np.append(colour.bias + np.log(colour.gain), colour.offset).astype(np.float32)
    key = m.tobytes() + b.tobytes()
    cached = _FUNCS.get("table")
    if cached is None or cached[0] != key:
        # One table at a time (48 MB): a step draws one map.
        cached = (key, _colour_table_kernel()(m, b))
        _FUNCS["table"] = cached
    return cached[1]


#: Side (pixels) of the blocks the ink is applied by (or the output stride
#: when that is larger): on the tuning slides 1-2% of the 16 px blocks hold a
#: pixel that may take the ink, against 7-13% of 64 px blocks.
INK_BLOCK = 16


def _ink_block(factor: int) -> int:
    return int(np.lcm(INK_BLOCK, int(factor)))


def ink_cut(ink: InkRecolour) -> int:
    """Grey level under which a pixel *may* take the ink: none of its channels lower.

    A pixel takes the ink when ``|d| > threshold`` with ``d_c = min(log(v_c /
    white), 0)``, which needs some ``|d_c| > threshold / sqrt(3)``, that is a
    channel under ``white * exp(-threshold / sqrt(3))``; one grey level more
    is far beyond float32 rounding, so the bound never misses a pixel.
    """
    return int(np.ceil(ink.white * np.exp(-ink.threshold / np.sqrt(3.0)))) + 1


def _ink_flag_kernel(factor: int):
    """The XLA test of which ink blocks (:func:`_ink_block` px) of a window may hold ink pixels.

    Integer-only (the minimum channel against :func:`ink_cut`, at label
    resolution): a fraction of the cost of the ink itself, and it depends on
    the pixels, the labels and the glass white only, so a run computes it once
    per window (:class:`._train_augment.SlideView` keeps it).
    """
    key = ("inkflag", factor)
    if key not in _FUNCS:
        import tensorflow as tf

        lb = _ink_block(factor) // factor

        @tf.function(
            jit_compile=True,
            input_signature=[
                tf.TensorSpec([None, None, 3], tf.uint8),
                tf.TensorSpec([None, None], tf.uint8),
                tf.TensorSpec([], tf.int32),
            ],
        )
        def run(x, background, cut):
            h, w = tf.shape(x)[0], tf.shape(x)[1]
            hl, wl = -(-h // factor), -(-w // factor)
            m = tf.reduce_min(x, axis=-1)
            m = tf.pad(m, [[0, hl * factor - h], [0, wl * factor - w]], constant_values=255)
            m = tf.reduce_min(tf.reshape(m, [hl, factor, wl, factor]), axis=[1, 3])
            dark = (tf.cast(m, tf.int32) < cut) & (background[:hl, :wl] > 0)
            dark = tf.cast(dark, tf.uint8)
            hb, wb = -(-hl // lb), -(-wl // lb)
            dark = tf.pad(dark, [[0, hb * lb - hl], [0, wb * lb - wl]])
            return tf.reduce_max(tf.reshape(dark, [hb, lb, wb, lb]), axis=[1, 3])

        _FUNCS[key] = run
    return _FUNCS[key]


def _ink_kernel(factor: int):
    """The XLA ink recolouring (:class:`.stain.InkRecolour`) of a stack of
    ink blocks (:func:`_ink_block` px), labels at 1/``factor``."""
    key = ("ink", factor)
    if key not in _FUNCS:
        import tensorflow as tf

        b = _ink_block(factor)

        @tf.function(
            jit_compile=True,
            input_signature=[
                tf.TensorSpec([None, b, b, 3], tf.uint8),
                tf.TensorSpec([None, b // factor, b // factor], tf.uint8),
                tf.TensorSpec([6], tf.float32),
            ],
        )
        def run(x, background, p):
            # p: direction (3), darkness scale, threshold, log(white).
            bg = tf.repeat(tf.repeat(background, factor, axis=1), factor, axis=2)
            v = tf.cast(x, tf.float32)
            d = tf.minimum(tf.math.log(tf.maximum(v, 255e-6)) - p[5], 0.0)
            n = tf.sqrt(tf.reduce_sum(d * d, axis=-1, keepdims=True))
            sel = (bg[..., None] > 0) & (n > p[4])
            new = tf.exp(p[5] - n * p[3] * p[:3])
            new = tf.cast(tf.clip_by_value(tf.round(new), 0.0, 255.0), tf.uint8)
            return tf.where(sel, new, x)

        _FUNCS[key] = run
    return _FUNCS[key]


def ink_blocks(src: np.ndarray, background: np.ndarray, factor: int, ink: InkRecolour):
    """``(n, 2)`` block rows and columns (:func:`_ink_block` px) of ``src`` that may take the ink.

    ``background`` as in :func:`transform`. The ink leaves every other block
    exactly as it is, so applying it to these alone (:func:`apply_ink`) gives
    the whole window's result.
    """
    if factor < 1:
        raise ValueError(f"the ink needs a positive output stride, got {factor}")
    flags = _ink_flag_kernel(int(factor))(src, background, np.int32(ink_cut(ink)))
    return np.argwhere(np.asarray(flags) > 0)


def apply_ink(
    src: np.ndarray,
    background: np.ndarray,
    factor: int,
    ink: InkRecolour,
    blocks: np.ndarray | None = None,
) -> np.ndarray:
    """:class:`.stain.InkRecolour` on uint8 ``(h, w, 3)`` ``src`` *in place*, block by block.

    Only the ``blocks`` (:func:`ink_blocks`; computed when not given) are
    recoloured: pen, dust and bubble rims cover a few percent of the glass,
    so a step that draws the ink costs a small part of a pass over every
    pixel (which took 4 s of a 20 s step at 1 Gpx). Every block goes through
    the same XLA kernel, so a pixel gets the same value in every window that
    holds it (exact tiling).
    """
    if blocks is None:
        blocks = ink_blocks(src, background, factor, ink)
    n = len(blocks)
    if not n:
        return src
    b = _ink_block(factor)
    lb = b // factor
    h, w = src.shape[:2]
    hb, wb = -(-h // b), -(-w // b)
    # Whole blocks: a window off the block grid (a clipped edge window) is
    # recoloured in a padded copy; the others as a view of themselves.
    work = src
    if (hb * b, wb * b) != (h, w):
        work = np.zeros((hb * b, wb * b, 3), np.uint8)
        work[:h, :w] = src
    lab = np.zeros((hb * lb, wb * lb), np.uint8)
    hl, wl = min(background.shape[0], hb * lb), min(background.shape[1], wb * lb)
    lab[:hl, :wl] = background[:hl, :wl]
    view = work.reshape(hb, b, wb, b, 3)
    by, bx = blocks[:, 0], blocks[:, 1]
    # A power-of-two stack: a handful of XLA compiles per run, not one per count.
    size = 1 << max(3, int(n - 1).bit_length())
    stack = np.zeros((size, b, b, 3), np.uint8)
    stack[:n] = view[by, :, bx]
    bgs = np.zeros((size, lb, lb), np.uint8)
    bgs[:n] = lab.reshape(hb, lb, wb, lb)[by, :, bx]
    p = np.append(ink.direction, [ink.scale, ink.threshold, np.log(ink.white)])
    out = _ink_kernel(int(factor))(stack, bgs, p.astype(np.float32))
    view[by, :, bx] = np.asarray(out)[:n]
    if work is not src:
        src[...] = work[:h, :w]
    return src


def _turn_kernel(k: int, flip: bool):
    """The XLA quarter turns and flip of one combination (a separate fusion from the
    colour map: fused with it, the transposed reads made both several times slower)."""
    key = (k, flip)
    if key not in _FUNCS:
        import tensorflow as tf

        @tf.function(jit_compile=True, input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
        def run(x):
            if k == 2:  # a mirror of rows and columns: the trainer's only turn
                x = tf.reverse(x, [0, 1])
            elif k:
                x = tf.image.rot90(x, k)
            if flip:
                x = tf.reverse(x, [1])
            return x

        _FUNCS[key] = run
    return _FUNCS[key]


def transform(
    src: np.ndarray,
    aug: Augmentation,
    shape: tuple[int, int] | None = None,
    background: np.ndarray | None = None,
    factor: int = 1,
    blocks: np.ndarray | None = None,
    inplace: bool = False,
    place: tuple[tuple[int, int], tuple[int, int]] | None = None,
):
    """``fliplr(rot90(src, k))`` with the ink and the colour map applied, for uint8 ``(h, w, 3)``.

    With ``shape``, the result is zero-padded at the bottom and right to that
    shape (a window reaching past the slide: the padding stays 0, as in the
    whole-image step, which pads the transformed slide). ``background``
    (uint8, 1 where the mask labels background) at 1/``factor`` of ``src``'s
    pixels, aligned with its top-left corner, selects where the ink applies;
    without it there is no ink; ``blocks`` are the window's :func:`ink_blocks`
    when the caller kept them, and ``inplace`` lets the ink write into ``src``
    (a window read for this step only). ``place`` (``src``'s top-left pixel
    in the slide and the slide's shape, original frame) puts the pen strokes
    (:mod:`._pen`, drawn after the ink, on background pixels); without it
    there are none. Returns a TensorFlow uint8 tensor
    (``np.asarray`` reads it), or with the ink and the pen alone a numpy
    array, ready for the tile step.
    """
    import tensorflow as tf

    colour: ColourJitter | None = aug.colour
    ink: InkRecolour | None = aug.ink
    k, flip = aug.k % 4, bool(aug.flip)
    out = src
    if ink is not None and background is not None:
        out = apply_ink(src if inplace else np.array(src), background, factor, ink, blocks)
    if aug.pen is not None and background is not None and place is not None:
        from ._pen import draw_pens

        if out is src and not inplace:
            out = np.array(src)
        out = draw_pens(out, background, factor, place[0], aug.pen, place[1])
    axes = mirror_axes(k, flip)
    if colour is not None and axes is not None:
        out = _lookup_kernel(axes)(out, colour_table(colour))
    else:
        if colour is not None:
            out = _lookup_kernel()(out, colour_table(colour))
        if k or flip:
            out = _turn_kernel(k, flip)(out)
    if isinstance(out, np.ndarray):
        # The ink and the pen alone: no tensor copy of the window.
        if out is src and not inplace:
            out = np.array(src)  # nothing applied: still the caller's own copy
        if shape is not None and tuple(out.shape[:2]) != tuple(shape):
            out = np.pad(out, [(0, shape[0] - out.shape[0]), (0, shape[1] - out.shape[1]), (0, 0)])
        return out
    out = tf.convert_to_tensor(out)
    if shape is not None and tuple(out.shape[:2]) != tuple(shape):
        out = tf.pad(out, [[0, shape[0] - out.shape[0]], [0, shape[1] - out.shape[1]], [0, 0]])
    return out
