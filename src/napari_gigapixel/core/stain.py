"""Whole-slide stain and intensity augmentation: per-step parameters and the colour map.

The colour transform of one step is a *per-pixel* function of the RGB value,
the same for every pixel of every tile, so a tile of the transformed slide is
the transformed tile and the streamed step stays exactly the whole-image step
on the transformed slide. It is the haematoxylin / eosin / DAB jitter of
Tellez et al. (2018) in the Ruifrok-Johnston colour deconvolution of
``skimage.color.rgb2hed``, followed by a brightness and contrast jitter:

    od  = log(max(v / 255, 1e-6)) / log(1e-6)       # optical density, per channel
    hed = od @ HED_FROM_RGB                          # stain concentrations
    hed = hed * alpha + beta                         # per-stain scale and shift
    rgb = exp(hed @ RGB_FROM_HED * log(1e-6))        # back to intensities in [0, 1]
    out = round(clip(((rgb - 0.5) * contrast + 0.5 + brightness) * 255, 0, 255))

which folds into one 3x3 map of log-intensities: ``rgb = exp(log(v/255) @ A +
b)`` with ``A = HED_FROM_RGB diag(alpha) RGB_FROM_HED`` (:class:`ColourJitter`).
The fast kernel is in :mod:`._augment_kernel`; :func:`apply_colour_numpy` is
the float64 reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Augmentation modes: flips and quarter turns ("flip"), the colour jitter
#: ("stain"), artefacts on the glass recoloured as a random ink ("ink"), the
#: ink plus pen strokes drawn on the glass ("pen"), "pen" with the flips and
#: quarter turns ("pen+flip"), flip + stain + ink ("all"); "auto" (the
#: recipe's) is "pen" on white-balanced runs and "none" on the others (the
#: ink measures darkness against the balanced glass).
#: ``augment=True`` means "all".
AUGMENT_MODES = ("auto", "none", "flip", "stain", "ink", "pen", "pen+flip", "all")
#: The modes that draw pen strokes (``TrainConfig.pen_weight`` weighs them).
PEN_MODES = ("pen", "pen+flip")
#: The modes asked for by name that need a white-balanced run (the ink measures
#: darkness against the balanced glass); "all" draws its ink only when balanced.
WHITE_MODES = ("ink", *PEN_MODES)
#: What "auto" draws on a white-balanced run. "pen+flip" was measured against
#: it on the tuning slides (docs/quality.md, "How the recipe was chosen"): better on
#: training slides 10 and 15 (worst Dice 0.9842 against 0.9789 over seeds 0-5),
#: a tie on ``ihc`` training slides 16-19 (18 of 32 paired scores better, worst
#: 0.9795 against 0.9816), so the recipe is unchanged and "pen+flip" an option.
AUTO_BALANCED = "pen"

#: Ruifrok & Johnston's stain OD vectors (rows: haematoxylin, eosin, DAB), as in
#: ``skimage.color.rgb_from_hed``, and its inverse.
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
LOG_ADJUST = float(np.log(1e-6))

#: Jitter ranges (uniform): per-stain scale 1 +- STAIN_SCALE, shift +- STAIN_SHIFT
#: (in the normalised OD units of ``rgb2hed``), contrast 1 +- CONTRAST,
#: brightness +- BRIGHTNESS (fraction of the full range).
STAIN_SCALE = 0.10
STAIN_SHIFT = 0.01
CONTRAST = 0.15
BRIGHTNESS = 0.05

#: Ink recolouring (:class:`InkRecolour`): a background-labelled pixel is an
#: artefact when its optical density (natural log, against the glass white)
#: has a norm above INK_THRESHOLD (measured on the tuning slides: glass is
#: under 0.1 at its 95th percentile, at least three quarters of pen, dust and
#: bubble-rim pixels are over 0.3; 0.15 also takes in more of the faint edge
#: beyond the mask and scored a little worse, docs/quality.md); a step recolours them with
#: probability INK_PROBABILITY, their darkness scaled by a factor drawn from
#: INK_SCALE_RANGE. The range reaches down to 0.4 so that pale inks (a light
#: blue pen, a greyish smear) are shown as glass too: on the tuning slides,
#: 4 seeds, its worst Dice was 0.968 against 0.953 (2 seeds) for 0.8-1.2 and
#: 0.918 without the ink, where a model trained on a dark slide called a
#: paler slide's shaded glass tissue (docs/quality.md, "How the recipe was chosen").
INK_THRESHOLD = 0.3
INK_PROBABILITY = 0.5
INK_SCALE_RANGE = (0.4, 1.2)

#: Pen strokes (:class:`PenStrokes`, mode "pen"): on a step with probability
#: PEN_PROBABILITY, 1-3 strokes of 1-4 straight segments each (length a
#: fraction PEN_SEGMENT of the slide's short side, turning by a normal angle
#: of PEN_TURN radians at each joint), PEN_WIDTH wide (same unit), of an ink
#: with optical density norm PEN_OD along a random colour.
PEN_PROBABILITY = 0.5
PEN_SEGMENT = (0.05, 0.3)
PEN_TURN = 0.7
PEN_WIDTH = (0.005, 0.02)
PEN_OD = (0.4, 1.6)


def augment_mode(value: object) -> str:
    """Normalise ``TrainConfig.augment``: a mode name, or a bool (True -> "all")."""
    if value is True:
        return "all"
    if value is False or value is None:
        return "none"
    if isinstance(value, str) and value in AUGMENT_MODES:
        return value
    from .train_config import TrainConfigError

    raise TrainConfigError(
        f"augment must be one of {', '.join(AUGMENT_MODES)} (or True/False), not {value!r}."
    )


def resolve_augment(value: object, balanced: bool) -> str:
    """The mode a run draws: :func:`augment_mode`, with "auto" as
    :data:`AUTO_BALANCED` (the ink and pen strokes) on white-balanced runs
    (``balanced``) and "none" on the others."""
    mode = augment_mode(value)
    if mode == "auto":
        return AUTO_BALANCED if balanced else "none"
    return mode


def auto_note(value: object, balanced: bool) -> str | None:
    """A progress line saying what ``augment="auto"`` draws in this run (None otherwise)."""
    if augment_mode(value) != "auto":
        return None
    if balanced:
        return (
            "augmentation (auto): pen, dust and bubbles on the glass recoloured, and pen "
            "strokes drawn on it, each on half the steps"
        )
    return "augmentation (auto): none, as the run is not white-balanced"


@dataclass(frozen=True)
class ColourJitter:
    """One step's colour map of uint8 RGB values ``v``.

    ``out = round(clip(gain * exp(log(v / 255) @ matrix + bias) + offset))``.

    ``matrix`` acts on row vectors of natural-log intensities; ``gain`` and
    ``offset`` hold the contrast and brightness in grey levels.
    """

    matrix: np.ndarray  # (3, 3)
    bias: np.ndarray  # (3,)
    gain: float
    offset: float

    @classmethod
    def from_jitter(
        cls, alpha: np.ndarray, beta: np.ndarray, contrast: float, brightness: float
    ) -> ColourJitter:
        """The map of per-stain scale ``alpha`` and shift ``beta``, then contrast/brightness."""
        alpha = np.asarray(alpha, np.float64)
        beta = np.asarray(beta, np.float64)
        matrix = HED_FROM_RGB @ np.diag(alpha) @ RGB_FROM_HED
        bias = (beta @ RGB_FROM_HED) * LOG_ADJUST
        return cls(
            matrix=matrix,
            bias=bias,
            gain=255.0 * float(contrast),
            offset=255.0 * (0.5 - 0.5 * float(contrast) + float(brightness)),
        )

    @classmethod
    def keeping_white(cls, alpha: np.ndarray, white: float) -> ColourJitter:
        """The per-stain scale ``alpha`` with the glass colour ``white`` (grey levels,
        every channel) left where it is.

        For white-balanced slides: the trainer and ``predict`` put every
        slide's glass on ``white``, so a jitter that moved the glass (a stain
        shift, brightness, contrast) would teach the model glass colours it
        never sees, and a darker glass is what pale tissue looks like. Only the
        stain amounts of what is on the glass change: in log-intensities,
        ``exp(log(v / 255) @ A + b)`` with ``b = l - l @ A``, ``l = log(white / 255)``.
        """
        matrix = HED_FROM_RGB @ np.diag(np.asarray(alpha, np.float64)) @ RGB_FROM_HED
        lw = np.full(3, np.log(float(white) / 255.0))
        return cls(matrix=matrix, bias=lw - lw @ matrix, gain=255.0, offset=0.0)


@dataclass(frozen=True)
class InkRecolour:
    """One step's ink: artefacts on the glass (pen, dust, bubble rims) get a random colour.

    A pixel the mask labels background whose optical density against the glass
    white, ``d = min(log(v / white), 0)`` per channel, has a norm ``n = |d|``
    above ``threshold`` becomes ``white * exp(-n * scale * direction)``: the
    same darkness (times ``scale``) in the ink colour ``direction`` (a unit
    vector with non-negative entries). Pixels labelled tissue, unlabelled
    pixels and glass keep their colour. It teaches that what lies dark on the
    glass is background whatever its colour: a model trained on a slide with
    green pen otherwise calls another slide's black or blue pen tissue, as it
    looks darker than glass. It depends on the pixel and its label only, so
    tiles of the recoloured slide are the recoloured tiles (exact streaming).
    """

    direction: np.ndarray  # (3,) unit, >= 0
    scale: float
    white: float
    threshold: float = INK_THRESHOLD


@dataclass(frozen=True)
class PenStrokes:
    """One step's pen strokes on the glass (drawn by :func:`._pen.draw_pens`).

    Stroke ``i`` starts at ``starts[i]`` (fractions of the slide's height and
    width) and follows the ``steps[i]`` (an ``(m, 2)`` array of y, x moves in
    units of the slide's short side); it is ``widths[i]`` wide (same unit),
    of optical density ``ods[i]`` (natural log, per channel) at its centre
    line. It is drawn on the pixels the mask labels background only.
    """

    starts: np.ndarray  # (n, 2)
    steps: tuple[np.ndarray, ...]
    widths: np.ndarray  # (n,)
    ods: np.ndarray  # (n, 3)


def draw_pen_strokes(rng: np.random.Generator) -> PenStrokes:
    """1-3 random pen strokes (:data:`PEN_SEGMENT` ... :data:`PEN_OD`)."""
    n = int(rng.integers(1, 4))
    steps = []
    for _ in range(n):
        m = int(rng.integers(1, 5))
        angle = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, PEN_TURN, m))
        length = rng.uniform(*PEN_SEGMENT, m)
        steps.append(np.stack([length * np.sin(angle), length * np.cos(angle)], axis=1))
    colour = np.abs(rng.normal(size=(n, 3))) + 1e-3
    colour /= np.linalg.norm(colour, axis=1, keepdims=True)
    return PenStrokes(
        starts=rng.uniform(0, 1, (n, 2)),
        steps=tuple(steps),
        widths=rng.uniform(*PEN_WIDTH, n),
        ods=colour * rng.uniform(*PEN_OD, (n, 1)),
    )


@dataclass(frozen=True)
class Augmentation:
    """One step's whole-slide augmentation: ``k`` quarter turns, a flip, a colour map,
    an ink, pen strokes."""

    k: int = 0
    flip: bool = False
    colour: ColourJitter | None = None
    ink: InkRecolour | None = None
    pen: PenStrokes | None = None

    @property
    def geometric(self) -> bool:
        return bool(self.k or self.flip)


def draw_augmentation(
    seed: int, step: int, mode: object, keep_white: float | None = None
) -> Augmentation:
    """The augmentation of one step: fixed by ``seed`` and ``step`` (resume-safe).

    With ``keep_white`` (the grey level white-balanced slides put their glass
    on), the colour map is :meth:`ColourJitter.keeping_white` of the same
    per-stain scales: no shift, brightness or contrast. ``mode`` "auto" is
    :data:`AUTO_BALANCED` with ``keep_white`` and "none" without. "pen+flip"
    is "pen" with the quarter turns and flip that "flip" draws for the step.
    """
    mode = resolve_augment(mode, keep_white is not None)
    if mode == "none":
        return Augmentation()
    rng = np.random.default_rng([seed, step, 7919])
    # Draw everything whatever the mode, so "all" = "flip" + "stain" + "ink" for
    # a step (the ink's draws come last: the others are those of earlier runs).
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    alpha = rng.uniform(1 - STAIN_SCALE, 1 + STAIN_SCALE, 3)
    beta = rng.uniform(-STAIN_SHIFT, STAIN_SHIFT, 3)
    contrast = rng.uniform(1 - CONTRAST, 1 + CONTRAST)
    brightness = rng.uniform(-BRIGHTNESS, BRIGHTNESS)
    direction = np.abs(rng.normal(size=3)) + 1e-3
    ink_scale = rng.uniform(*INK_SCALE_RANGE)
    ink_on = bool(rng.random() < INK_PROBABILITY)
    if keep_white is None:
        colour = ColourJitter.from_jitter(alpha, beta, contrast, brightness)
    else:
        colour = ColourJitter.keeping_white(alpha, keep_white)
    ink = None
    # The ink measures darkness against the glass white: white-balanced runs
    # only ("ink" without white balance is refused by the config's checks).
    if ink_on and mode in ("ink", *PEN_MODES, "all") and keep_white is not None:
        ink = InkRecolour(direction / np.linalg.norm(direction), float(ink_scale), keep_white)
    if mode == "flip":
        return Augmentation(k, flip, None)
    if mode == "stain":
        return Augmentation(0, False, colour)
    if mode == "ink":
        return Augmentation(0, False, None, ink)
    if mode in PEN_MODES:
        # A stream of its own: every other mode draws what it drew before.
        pen_rng = np.random.default_rng([seed, step, 7919, 1])
        pen = draw_pen_strokes(pen_rng) if pen_rng.random() < PEN_PROBABILITY else None
        if mode == "pen+flip":
            return Augmentation(k, flip, None, ink, pen)
        return Augmentation(0, False, None, ink, pen)
    return Augmentation(k, flip, colour, ink)


def apply_colour_numpy(rgb: np.ndarray, jitter: ColourJitter) -> np.ndarray:
    """Float64 reference of the colour map on a uint8 ``(..., 3)`` array (slow; tests)."""
    logv = np.log(np.maximum(np.asarray(rgb, np.float64) / 255.0, 1e-6))
    out = jitter.gain * np.exp(logv @ jitter.matrix + jitter.bias) + jitter.offset
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def apply_ink_numpy(rgb: np.ndarray, background: np.ndarray, ink: InkRecolour) -> np.ndarray:
    """Float64 reference of :class:`InkRecolour` on a uint8 ``(h, w, 3)`` array (tests).

    ``background`` is a boolean ``(h, w)`` array: the pixels the mask labels background.
    """
    v = np.asarray(rgb, np.float64)
    d = np.minimum(np.log(np.maximum(v, 1e-6 * 255.0) / ink.white), 0.0)
    n = np.sqrt((d * d).sum(axis=-1))
    sel = background & (n > ink.threshold)
    new = ink.white * np.exp(-(n * ink.scale)[..., None] * ink.direction)
    out = np.where(sel[..., None], np.clip(np.rint(new), 0, 255), v)
    return out.astype(np.uint8)
