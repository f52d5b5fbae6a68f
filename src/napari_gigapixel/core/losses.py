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

#: Loss names accepted by the trainer: a pixel term (BCE or focal), soft Dice, or both.
LOSSES = ("dice+bce", "bce", "dice", "dice+focal", "focal")
#: Focal loss exponent: ``-(1 - p_t)**FOCAL_GAMMA log p_t`` (Lin et al., 2017).
FOCAL_GAMMA = 2.0
#: Weight of the focal term in a loss (``"dice+focal"`` = soft Dice + FOCAL_WEIGHT x
#: mean focal). Chosen on the tuning slides (``benchmarks/tune_quality.py``, 4 seeds,
#: 96 scores): 3 gave a worst Dice of 0.9786 against 0.9710 with 1, the palest check
#: slide's faint tissue and the pen on the glass both weighing more against Dice's
#: global overlap (docs/quality.md).
FOCAL_WEIGHT = 3.0
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


def uses_dice(kind: str) -> bool:
    """Whether the loss has the soft-Dice term (it needs a forward-only pass first)."""
    return kind.startswith("dice")


def pixel_term(kind: str) -> str | None:
    """The loss's per-pixel term: ``"bce"``, ``"focal"`` or None (Dice alone)."""
    return kind.split("+")[-1] if kind != "dice" else None


def pixel_loss_sum(p, y, w, kind: str):
    """``sum w * term(p, y)`` of the loss's pixel term (BCE for Dice alone, a figure
    to report), in ``keras.ops``; the focal term weighted by :data:`FOCAL_WEIGHT`."""
    if pixel_term(kind) == "focal":
        return FOCAL_WEIGHT * focal_sum(p, y, w)
    return bce_sum(p, y, w)


def focal_sum(p, y, w, gamma: float = FOCAL_GAMMA):
    """``sum w * -(1 - p_t)**gamma log p_t`` with ``p_t`` the probability of the true
    class (not normalised), in ``keras.ops``.

    Pixels the model already gets right weigh ``(1 - p_t)**gamma`` of their
    BCE, so the few pixels it gets wrong (pen, dust, bubble rims on the glass,
    a small share of any slide) are not drowned out by millions of easy ones.
    Per pixel, so a sum over tiles is the whole-image sum.
    """
    from keras import ops

    p = ops.clip(p, EPS, 1.0 - EPS)
    pt = y * p + (1.0 - y) * (1.0 - p)
    return -ops.sum(w * ops.power(1.0 - pt, gamma) * ops.log(pt))


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
        One of :data:`LOSSES`.
    n_labelled
        Number of labelled pixels (``sum w``): the pixel term is their mean.
    """
    from keras import ops

    total = 0.0
    if pixel_term(kind):
        total = total + pixel_loss_sum(p, y, w, kind) / n_labelled
    if uses_dice(kind):
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
