"""Losses in ``keras.ops`` (any Keras backend) and the closed-form Dice gradient.

All losses are *weighted*: ``w`` is 1 for labelled pixels and 0 for
unlabelled ones (scribbles) and for padding, so masked BCE and masked Dice
are the same code. Soft Dice on one image::

    I = sum w p y,  P = sum w p,  Y = sum w y,  D = P + Y + smooth
    L = 1 - (2 I + smooth) / D

Its gradient with respect to each probability is known in closed form from
the three global sums: ``dL/dp_i = w_i (-2 y_i / D + (2 I + smooth) / D**2)``.
The streamed trainer gets the sums from a forward-only pass over all tiles,
then back-propagates the surrogate ``sum_i stop_gradient(g_i) p_i`` tile by
tile; its parameter gradient is exactly the whole-image Dice gradient.

Keras is imported inside functions only.
"""

from __future__ import annotations

import numpy as np

#: Loss names accepted by the trainer.
LOSSES = ("bce", "dice", "dice+bce")
#: Additive smoothing of soft Dice (keeps an empty image finite).
DICE_SMOOTH = 1.0
#: Probabilities are clipped to [EPS, 1 - EPS] before the logarithms of BCE.
EPS = 1e-7


def check_loss(name: str) -> str:
    """Return ``name`` if it is a known loss, else raise ``GigapixelError``."""
    from .errors import GigapixelError

    if name not in LOSSES:
        raise GigapixelError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}.")
    return name


def bce_sum(p, y, w):
    """``sum w * BCE(p, y)`` (not normalised), in ``keras.ops``."""
    from keras import ops

    p = ops.clip(p, EPS, 1.0 - EPS)
    return -ops.sum(w * (y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p)))


def dice_sums(p, y, w):
    """``(sum w p y, sum w p, sum w y)`` in ``keras.ops``."""
    from keras import ops

    wp = w * p
    return ops.sum(wp * y), ops.sum(wp), ops.sum(w * y)


def dice_loss_from_sums(inter: float, psum: float, ysum: float) -> float:
    """Soft Dice loss ``1 - (2I + s) / (P + Y + s)`` (numbers, float64)."""
    return 1.0 - (2.0 * inter + DICE_SMOOTH) / (psum + ysum + DICE_SMOOTH)


def dice_grad_coefficients(inter: float, psum: float, ysum: float) -> tuple[float, float]:
    """``(a, b)`` with ``dL/dp_i = w_i (a y_i + b)`` for the soft Dice loss."""
    d = psum + ysum + DICE_SMOOTH
    return -2.0 / d, (2.0 * inter + DICE_SMOOTH) / (d * d)


def whole_image_loss(p, y, w, kind: str, n_labelled: float):
    """The loss of one whole image in ``keras.ops`` (the reference the tiles must match).

    Parameters
    ----------
    p, y, w
        Probability, target and weight over the image's valid output pixels.
    kind
        ``"bce"``, ``"dice"`` or ``"dice+bce"``.
    n_labelled
        Number of labelled pixels (``sum w``): BCE is their mean.
    """
    from keras import ops

    total = 0.0
    if kind in ("bce", "dice+bce"):
        total = total + bce_sum(p, y, w) / n_labelled
    if kind in ("dice", "dice+bce"):
        inter, psum, ysum = dice_sums(p, y, w)
        total = total + 1.0 - (2.0 * inter + DICE_SMOOTH) / (psum + ysum + DICE_SMOOTH)
    return ops.convert_to_tensor(total)


def hard_dice(tp: float, fp: float, fn: float) -> float:
    """Dice of thresholded predictions from counts (1.0 when both are empty)."""
    denom = 2.0 * tp + fp + fn
    return 1.0 if denom == 0 else float(2.0 * tp / denom)


def soft_dice_numpy(p: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Soft Dice in float64 numpy (for reports and tests)."""
    p, y, w = (np.asarray(a, np.float64) for a in (p, y, w))
    return 1.0 - dice_loss_from_sums(
        float((w * p * y).sum()), float((w * p).sum()), float((w * y).sum())
    )
