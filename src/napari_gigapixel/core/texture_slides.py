"""Slide families for quality benchmarks: real tissue texture cut into tissue shapes.

A *family* is a kind of slide with its ground truth, any size, deterministic
from a seed and generated window by window like :mod:`.synthetic`:

``synthetic-he``
    The project's own synthetic H&E (:mod:`.synthetic`).
``ihc``
    Real immunohistochemistry texture (DAB brown and pale haematoxylin
    stroma) from the photograph scikit-image ships (``skimage/data/ihc.png``,
    read locally by :func:`skimage.data.immunohistochemistry`).
``ihc-as-he``
    The same real texture recoloured to look like H&E (haematoxylin kept,
    DAB turned into eosin, a pale eosin wash on all tissue). Its texture is
    real; its colours are made up.

The real-texture families reuse the synthetic scene for the tissue shapes
(blobs with ragged edges, holes, fat gaps and tears), its stain-strength
field (tissue fades out towards its border), its illumination and its glass
artefacts (pen strokes, dust, bubbles). The tissue's texture is quilted from
the photograph: the plane is cut into cells, each showing a randomly placed,
flipped and turned patch of the photograph, blended with its neighbours over
a narrow band. Stain amounts come from colour deconvolution of the photograph
and are put back with per-slide stain vectors and strengths (a stain shift
between slides).

Every value is an element-wise function of absolute level-0 coordinates, so
any window gives the same pixels whatever the tiling. Besides the slide and
its mask, a family knows where its *hard negatives* are: glass pixels under a
pen stroke (label 1), a dust speck (2) or a bubble's rim (3), which a tissue
detector must call background.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ._synthetic_files import (
    MPP,
    SyntheticError,
    _check_shape,
    _check_window,
    check_mpp,
    check_writer_args,
    default_mask_path,
    iter_write_files,
    label_write_kwargs,
    rgb_write_kwargs,
)
from ._synthetic_scene import (
    _bilinear,
    _draw_objects,
    _Scene,
    _smoothstep,
    _tissue_fields,
    _touches,
    get_scene,
    render_window,
)
from ._tiff_pyramid import reduce_mask, reduce_rgb
from .events import Finished, Progress, StopFlag
from .synthetic import SAMPLE_SHAPE

#: Slide families, in the order benchmarks report them.
FAMILIES = ("synthetic-he", "ihc", "ihc-as-he")
#: Hard-negative labels (glass pixels that a detector must call background).
HARD_NEGATIVE_LABELS = {1: "pen", 2: "dust", 3: "bubble"}

_CELL = 128  # quilting cell in level-0 pixels; a patch spans two cells
_BAND = 0.3  # blend band between neighbouring cells, as a fraction of a cell
_PHOTO_WHITE = 242.0  # the photograph's glass brightness, for optical density
# Ruifrok & Johnston stain vectors (R, G, B optical density).
_HEMA = np.array([0.65, 0.70, 0.29])
_EOSIN = np.array([0.07, 0.99, 0.11])
_DAB = np.array([0.27, 0.57, 0.78])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@lru_cache(maxsize=1)
def _ihc_stains() -> np.ndarray:
    """Stain amounts (3, h, w) float32 of the IHC photograph: haematoxylin, DAB, residual.

    The photograph's left edge holds a lumen (empty glass inside the tissue)
    that would show as glass labelled tissue; the crop leaves it out.
    """
    from skimage import data

    rgb = data.immunohistochemistry()[32:, 64:].astype(np.float64)
    od = -np.log(np.clip(rgb, 1.0, 255.0) / _PHOTO_WHITE)
    hema, dab = _unit(_HEMA), _unit(_DAB)
    residual = _unit(np.cross(hema, dab))
    stains = od.reshape(-1, 3) @ np.linalg.inv(np.stack([hema, dab, residual]))
    return np.ascontiguousarray(stains.T.reshape(3, *rgb.shape[:2]).astype(np.float32))


@dataclass(frozen=True)
class _Texture:
    """Per-slide quilting table and stain colours of a real-texture family."""

    offsets: np.ndarray  # (2, ny, nx) int64: patch origin in the photograph per cell
    turns: np.ndarray  # (ny, nx) int64: dihedral transform code 0-7 per cell
    vectors: np.ndarray  # (3, 3) float32: OD vector (R, G, B) of each stain amount
    baseline: np.ndarray  # (3,) float32: OD added to all tissue (an eosin wash)
    faint: float  # stain strength at the tissue edge


@lru_cache(maxsize=4)
def _get_texture(family: str, shape: tuple[int, int], seed: int) -> _Texture:
    key = [int(seed), 0x7E87, FAMILIES.index(family)]
    rng = np.random.default_rng(np.random.SeedSequence(key))
    stains = _ihc_stains()
    span = 2 * _CELL
    ny, nx = shape[0] // _CELL + 3, shape[1] // _CELL + 3
    offsets = np.stack(
        [
            rng.integers(0, stains.shape[1] - span + 1, (ny, nx)),
            rng.integers(0, stains.shape[2] - span + 1, (ny, nx)),
        ]
    )
    turns = rng.integers(0, 8, (ny, nx))
    # The stain shift between slides: jittered stain vectors and amounts.
    hema = _unit(_HEMA + rng.uniform(-0.08, 0.08, 3)) * rng.uniform(0.8, 1.25)
    residual = _unit(np.cross(_unit(_HEMA), _unit(_DAB)))
    if family == "ihc":
        second = _unit(_DAB + rng.uniform(-0.06, 0.06, 3)) * rng.uniform(0.75, 1.3)
        baseline = np.zeros(3)
    else:  # ihc-as-he: DAB becomes eosin, and all tissue gets a pale eosin wash
        eosin = _unit(_EOSIN + rng.uniform(-0.06, 0.06, 3))
        second = eosin * rng.uniform(0.45, 0.75)
        baseline = eosin * rng.uniform(0.1, 0.2)
    return _Texture(
        offsets=offsets,
        turns=turns,
        vectors=np.stack([hema, second, residual]).astype(np.float32),
        baseline=baseline.astype(np.float32),
        faint=float(rng.uniform(0.3, 0.45)),
    )


def _axis_cells(start: int, stop: int):
    """Per pixel: the two cells along one axis, their local coordinates and blend weight."""
    pos = np.arange(start, stop, dtype=np.int64)
    u = (pos + 0.5) / _CELL - 0.5
    lo = np.floor(u).astype(np.int64)
    weight = _smoothstep((u - lo - 0.5) / _BAND + 0.5).astype(np.float32)
    # Local coordinate inside each cell's patch (patches span [-C/2, 3C/2)).
    local_lo = pos - lo * _CELL + _CELL // 2
    return (lo + 1, local_lo), (lo + 2, local_lo - _CELL), weight


def _quilt(tex: _Texture, win: tuple[int, int, int, int]) -> np.ndarray:
    """Stain amounts (3, h, w) of the quilted texture over a level-0 window."""
    stains = _ihc_stains()
    width = stains.shape[2]
    flat = stains.reshape(3, -1)
    y0, y1, x0, x1 = win
    ys, wy = _axis_cells(y0, y1)[:2], _axis_cells(y0, y1)[2]
    xs, wx = _axis_cells(x0, x1)[:2], _axis_cells(x0, x1)[2]
    out = np.zeros((3, y1 - y0, x1 - x0), np.float32)
    span = 2 * _CELL - 1
    for a, (cy, ly) in enumerate(ys):
        for b, (cx, lx) in enumerate(xs):
            w = (wy if a else 1 - wy)[:, None] * (wx if b else 1 - wx)[None, :]
            turn = tex.turns[cy[:, None], cx[None, :]]
            py = np.broadcast_to(ly[:, None], turn.shape)
            px = np.broadcast_to(lx[None, :], turn.shape)
            swap = (turn & 4) > 0
            py, px = np.where(swap, px, py), np.where(swap, py, px)
            py = np.where(turn & 1, span - py, py)
            px = np.where(turn & 2, span - px, px)
            sy = tex.offsets[0][cy[:, None], cx[None, :]] + py
            sx = tex.offsets[1][cy[:, None], cx[None, :]] + px
            index = sy * width + sx
            for c in range(3):
                out[c] += w * np.take(flat[c], index)
    return out


def _render_texture(scene: _Scene, tex: _Texture, win: tuple[int, int, int, int]) -> np.ndarray:
    """RGB uint8 of a real-texture slide over a level-0 window."""
    mask, field, large, _ = _tissue_fields(scene, win, rgb=True)
    shape = mask.shape
    od = np.empty((3, *shape), np.float32)
    od[:] = -large[2][None]  # illumination
    if mask.any():
        strength = (tex.faint + (1 - tex.faint) * _smoothstep(field / 0.25)) * large[1] * mask
        amounts = _quilt(tex, win)
        for c in range(3):
            tissue = tex.baseline[c] + sum(amounts[k] * tex.vectors[k, c] for k in range(3))
            od[c] += strength * tissue
    if _touches(scene.large[2], scene.large_factor, win):
        pen = _bilinear(scene.large, scene.large_factor, win, wrap=False, channels=(2,))[0]
        for c in range(3):
            od[c] += pen * scene.pen_od[c]
    out = np.exp(-od) * scene.background[:, None, None]
    _draw_objects(scene, out, win)
    np.clip(out, 0, 255, out=out)
    return np.moveaxis(out, 0, -1).astype(np.uint8)


def _hard_negatives(scene: _Scene, win: tuple[int, int, int, int], mask: np.ndarray):
    """Labels (uint8) of glass pixels under pen (1), dust (2) or a bubble's rim (3)."""
    y0, y1, x0, x1 = win
    hard = np.zeros(mask.shape, np.uint8)
    if _touches(scene.large[2], scene.large_factor, win):
        pen = _bilinear(scene.large, scene.large_factor, win, wrap=False, channels=(2,))[0]
        hard[pen > 0.15] = 1
    for cy, cx, r, kind, _dark, reach in scene.objects:
        ya, yb = max(y0, int(cy - reach)), min(y1, int(cy + reach) + 1)
        xa, xb = max(x0, int(cx - reach)), min(x1, int(cx + reach) + 1)
        if ya >= yb or xa >= xb:
            continue
        dy = (np.arange(ya, yb, dtype=np.float32) + 0.5 - cy)[:, None]
        dx = (np.arange(xa, xb, dtype=np.float32) + 0.5 - cx)[None, :]
        d = np.sqrt(dy * dy + dx * dx)
        # The same extents _draw_objects darkens visibly (bubble rim: a
        # Gaussian of 4 px; dust: a disk with a soft edge).
        hit = np.abs(d - r) < 6.0 if kind == 0 else d < r + 0.5
        hard[ya - y0 : yb - y0, xa - x0 : xb - x0][hit] = 3 if kind == 0 else 2
    hard[mask.astype(bool)] = 0
    return hard


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise SyntheticError(f"family {family!r} is not one of {', '.join(FAMILIES)}.")
    return family


def _renderers(family: str, shape: tuple[int, int], seed: int):
    """Window functions (rgb, mask, hard) of one slide."""
    scene = get_scene(shape, int(seed))

    def mask_of(win):
        return render_window(scene, win, rgb=False)[1]

    if family == "synthetic-he":

        def rgb_of(win):
            return render_window(scene, win)[0]
    else:
        tex = _get_texture(family, shape, int(seed))

        def rgb_of(win):
            return _render_texture(scene, tex, win)

    def hard_of(win):
        return _hard_negatives(scene, win, mask_of(win))

    return rgb_of, mask_of, hard_of


def family_region(
    family: str, shape: tuple[int, int], seed: int, y0: int, y1: int, x0: int, x1: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels, ground truth and hard negatives of any window of a family's slide.

    Parameters
    ----------
    family
        One of :data:`FAMILIES`.
    shape
        (height, width) of the whole slide's level 0.
    seed
        The slide's seed (``synthetic-he`` gives :func:`.synthetic.synthetic_region`'s pixels).
    y0, y1, x0, x1
        The level-0 window (half-open).

    Returns
    -------
    rgb : np.ndarray
        ``(h, w, 3)`` uint8, the pixels a losslessly written slide holds.
    mask : np.ndarray
        ``(h, w)`` uint8, 1 = tissue.
    hard : np.ndarray
        ``(h, w)`` uint8 :data:`HARD_NEGATIVE_LABELS` (0 elsewhere; always 0 on tissue).
    """
    _check_family(family)
    shape = _check_shape(shape)
    _check_window(shape, y0, y1, x0, x1)
    rgb_of, mask_of, hard_of = _renderers(family, shape, seed)
    win = (int(y0), int(y1), int(x0), int(x1))
    return rgb_of(win), mask_of(win), hard_of(win)


def default_hard_path(slide: str | os.PathLike) -> Path:
    """``<stem>_hard<ext>`` beside the slide, like :func:`.synthetic.default_mask_path`."""
    mask = default_mask_path(slide)
    return mask.with_name(mask.name.replace("_mask", "_hard", 1))


def _reduce_labels(block: np.ndarray) -> np.ndarray:
    """Nearest (top-left) sample of each 2x2 block: labels are not averaged."""
    return np.ascontiguousarray(block[0::2, 0::2])


def iter_make_family_slide(
    out: str | os.PathLike,
    family: str = "ihc",
    shape: tuple[int, int] = SAMPLE_SHAPE,
    seed: int = 0,
    mask_out: str | os.PathLike | None = None,
    hard_out: str | os.PathLike | None = None,
    compression: str = "jpeg",
    tile: int = 512,
    stop: StopFlag | None = None,
    workers: int = 2,
    mpp: float = MPP,
) -> Iterator[Progress | Finished]:
    """Write a family's slide, its mask and optionally its hard negatives (pyramidal TIFFs).

    The same files and conventions as :func:`.synthetic.iter_make_synthetic_slide`
    (OME-TIFF, JPEG slide, lossless mask, written atomically, stop-safe), plus
    ``hard_out``: a label image of :data:`HARD_NEGATIVE_LABELS`. Ends with a
    :class:`~.events.Finished` whose result holds ``slide``, ``mask``, ``hard``
    (or None), ``family``, ``shape`` and ``seed``.
    """
    _check_family(family)
    shape = _check_shape(shape)
    check_writer_args(compression, tile)
    mpp = check_mpp(mpp)
    slide_path = Path(out)
    mask_path = Path(mask_out) if mask_out is not None else default_mask_path(slide_path)
    rgb_of, mask_of, hard_of = _renderers(family, shape, seed)
    files: list[tuple[str, Path, int, Callable, Callable, dict]] = [
        ("slide", slide_path, 3, rgb_of, reduce_rgb, rgb_write_kwargs(compression, mpp)),
    ]
    if hard_out is not None:
        files.append(("hard", Path(hard_out), 1, hard_of, _reduce_labels, label_write_kwargs(mpp)))
    # The mask is replaced last: a set with a mask is complete.
    files.append(("mask", mask_path, 1, mask_of, reduce_mask, label_write_kwargs(mpp)))
    yield from iter_write_files(files, shape, tile, stop, workers, mpp)
    yield Finished(
        {
            "slide": str(slide_path),
            "mask": str(mask_path),
            "hard": None if hard_out is None else str(hard_out),
            "family": family,
            "shape": list(shape),
            "seed": seed,
            "mpp": mpp,
        }
    )


def make_family_slide(out: str | os.PathLike, family: str = "ihc", **kwargs) -> dict:
    """Blocking form of :func:`iter_make_family_slide`; returns its result dict."""
    result: dict = {}
    for event in iter_make_family_slide(out, family, **kwargs):
        if isinstance(event, Finished):
            result = event.result
    return result


__all__ = [
    "FAMILIES",
    "HARD_NEGATIVE_LABELS",
    "default_hard_path",
    "family_region",
    "iter_make_family_slide",
    "make_family_slide",
]
