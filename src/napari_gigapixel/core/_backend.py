"""The backend-specific part of training: one compiled tile step and the update.

Everything else (model, losses, tiling, the trainer loop) is backend-neutral
``keras.ops`` or numpy; this module holds the TensorFlow ``GradientTape`` and
``tf.function`` code, traced once per model with height and width ``None``
so tiles of any (aligned) shape reuse one graph.

One function serves every loss and both passes. For a tile whose core starts
at output offset ``(oy, ox)`` inside its window's output, with labels ``y``
and weights ``w`` (uint8, the core's valid output pixels) it computes::

    loss = c_bce * sum w L(p, y)            # BCE or focal; c_bce = 1 / N labelled
         + sum w (c_da y + c_db) p          # Dice surrogate, constants from pass 1
         + c_dice * softdice_loss(p, y, w)  # the one-tile (whole-image) Dice

and returns the parameter gradients (when asked), float64 sums for the
losses and metrics, and a block-averaged probability for the preview.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Order of the float64 statistics a tile returns.
STATS = ("bce", "inter", "psum", "ysum", "tp", "fp", "fn", "n")


@dataclass
class TileResult:
    grads: list[np.ndarray] | None
    stats: np.ndarray
    preview: np.ndarray


class TileStep:
    """Compiled forward and gradient functions of one model (TensorFlow backend).

    Parameters
    ----------
    model
        A Keras model from :func:`.unet.build_unet`.
    preview_factor
        Preview pixels are means of ``preview_factor`` x ``preview_factor``
        output pixels of each core.
    loss
        The run's loss (:data:`.losses.LOSSES`): fixes the pixel term ``L``
        (focal for ``"focal"``/``"dice+focal"``, else BCE) that both
        functions sum; its weight ``c_bce`` is the caller's.
    """

    def __init__(self, model: Any, preview_factor: int = 1, loss: str = "dice+bce") -> None:
        import keras

        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                f"the streamed trainer needs the TensorFlow Keras backend, "
                f"not {keras.backend.backend()!r}."
            )
        import tensorflow as tf

        from .losses import DICE_SMOOTH, check_loss, dice_sums, pixel_loss_sum

        kind = check_loss(loss)

        self.model = model
        self.variables = list(model.trainable_variables)
        f = max(1, int(preview_factor))
        x_spec = tf.TensorSpec([1, None, None, 3], tf.uint8)
        lab_spec = tf.TensorSpec([None, None], tf.uint8)
        i_spec = tf.TensorSpec([], tf.int32)
        c_spec = tf.TensorSpec([], tf.float64)
        variables = self.variables

        def core_prob(x, y, oy, ox, training):
            p = model(x, training=training)[0, :, :, 0]
            shape = tf.shape(y)
            return p[oy : oy + shape[0], ox : ox + shape[1]]

        def thumb(pc):
            # The preview pixel stands for its f x f block of output pixels (the
            # widget overlays it there): the block's mean, over the pixels the
            # core has at its bottom/right edge. Taking every f-th pixel would put
            # the block's top-left pixel at its centre, (f - 1) / 2 pixels off.
            if f == 1:
                return pc
            p = tf.cast(pc, tf.float32)
            pad = [[0, -tf.shape(p)[0] % f], [0, -tf.shape(p)[1] % f]]
            total = tf.nn.avg_pool2d(tf.pad(p, pad)[None, :, :, None], f, f, "VALID")
            share = tf.nn.avg_pool2d(tf.pad(tf.ones_like(p), pad)[None, :, :, None], f, f, "VALID")
            return (total / share)[0, :, :, 0]

        def stats_of(pc, y, w, bce):
            # Sums in float64: a gigapixel image has ~1e9 terms.
            p64 = tf.cast(pc, tf.float64)
            y64 = tf.cast(y, tf.float64)
            w64 = tf.cast(w, tf.float64)
            hard = tf.cast(pc > 0.5, tf.float64) * w64
            return tf.stack(
                [
                    tf.cast(bce, tf.float64),
                    tf.reduce_sum(w64 * p64 * y64),
                    tf.reduce_sum(w64 * p64),
                    tf.reduce_sum(w64 * y64),
                    tf.reduce_sum(hard * y64),
                    tf.reduce_sum(hard * (1.0 - y64)),
                    tf.reduce_sum(w64 * (1.0 - tf.cast(pc > 0.5, tf.float64)) * y64),
                    tf.reduce_sum(w64),
                ]
            )

        @tf.function(input_signature=[x_spec, lab_spec, lab_spec, i_spec, i_spec])
        def forward(x, y, w, oy, ox):
            pc = core_prob(x, y, oy, ox, False)
            yf = tf.cast(y, pc.dtype)
            wf = tf.cast(w, pc.dtype)
            bce = pixel_loss_sum(pc, yf, wf, kind)
            return stats_of(pc, y, w, bce), thumb(pc)

        @tf.function(
            input_signature=[x_spec, lab_spec, lab_spec, i_spec, i_spec]
            + [c_spec, c_spec, c_spec, c_spec]
        )
        def gradient(x, y, w, oy, ox, c_bce, c_da, c_db, c_dice):
            with tf.GradientTape() as tape:
                pc = core_prob(x, y, oy, ox, True)
                dt = pc.dtype
                yf = tf.cast(y, dt)
                wf = tf.cast(w, dt)
                bce = pixel_loss_sum(pc, yf, wf, kind)
                surrogate = tf.reduce_sum(
                    tf.stop_gradient(wf * (tf.cast(c_da, dt) * yf + tf.cast(c_db, dt))) * pc
                )
                inter, psum, ysum = dice_sums(pc, yf, wf)
                dice_loss = 1.0 - (2.0 * inter + DICE_SMOOTH) / (psum + ysum + DICE_SMOOTH)
                loss = tf.cast(c_bce, dt) * bce + surrogate + tf.cast(c_dice, dt) * dice_loss
            grads = tape.gradient(loss, variables)
            return grads, stats_of(pc, y, w, bce), thumb(pc)

        self._forward = forward
        self._gradient = gradient

    @contextmanager
    def transposed(self, on: bool = True) -> Iterator[None]:
        """Within the block the model's convolution kernels have their two spatial
        axes swapped, and the gradients this step returns are those of the model's
        own kernels; restored on leaving (also on an error or a stop).

        Every layer of the U-Net commutes with a transpose of the image once its
        square kernels are transposed: its strides and ``same`` paddings are the
        same along both axes, and the losses are sums over pixels. So the step
        on a slide and its labels with the transposed kernels is exactly the step
        on the transposed slide (:class:`._train_augment.SlideView`, a quarter
        turn), without moving a pixel: XLA's transpose of a 27 Mpx window of
        3-byte pixels took 0.09 s, 4-5x a copy, in both passes of every tile.
        """
        if not on:
            yield
            return
        kernels = [v for v in self.variables if len(v.shape) == 4]
        if any(v.shape[0] != v.shape[1] for v in kernels):
            raise ValueError("a quarter turn in kernel space needs square kernels")
        saved = [v.numpy() for v in kernels]
        for v, k in zip(kernels, saved):
            v.assign(np.ascontiguousarray(np.swapaxes(k, 0, 1)))
        self._transposed = True
        try:
            yield
        finally:
            for v, k in zip(kernels, saved):
                v.assign(k)
            self._transposed = False

    _transposed = False

    def forward(self, x: np.ndarray, y: np.ndarray, w: np.ndarray, oy: int, ox: int) -> TileResult:
        """Forward only (pass 1): statistics and preview of the core."""
        stats, prev = self._forward(x[None], y, w, np.int32(oy), np.int32(ox))
        return TileResult(None, stats.numpy(), prev.numpy())

    def gradient(
        self,
        x: np.ndarray,
        y: np.ndarray,
        w: np.ndarray,
        oy: int,
        ox: int,
        *,
        c_bce: float = 0.0,
        c_da: float = 0.0,
        c_db: float = 0.0,
        c_dice: float = 0.0,
    ) -> TileResult:
        """Parameter gradients of the tile's share of the loss (see module doc)."""
        grads, stats, prev = self._gradient(
            x[None],
            y,
            w,
            np.int32(oy),
            np.int32(ox),
            np.float64(c_bce),
            np.float64(c_da),
            np.float64(c_db),
            np.float64(c_dice),
        )
        grads = [g.numpy() for g in grads]
        if self._transposed:
            # The gradient of a transposed kernel, transposed back: the model's own.
            grads = [
                np.ascontiguousarray(np.swapaxes(g, 0, 1)) if g.ndim == 4 else g for g in grads
            ]
        return TileResult(grads, stats.numpy(), prev.numpy())


def apply_gradients(model: Any, grads: list[np.ndarray]) -> None:
    """One optimizer step of ``model.optimizer`` with float64-accumulated gradients."""
    import tensorflow as tf

    variables = model.trainable_variables
    pairs = [(tf.convert_to_tensor(g, dtype=v.dtype), v) for g, v in zip(grads, variables)]
    model.optimizer.apply_gradients(pairs)
