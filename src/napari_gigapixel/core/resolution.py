"""Working resolution: train, predict and evaluate at a chosen um/px or pyramid level.

A request is a :class:`Resolution`: ``mpp`` (microns per pixel), ``level``
(a pyramid level of the slide), or neither (level 0, the paper's mode). It is
resolved against one slide by :func:`resolve` into a :class:`ResolvedResolution`
whose pixels are then read lazily by :func:`resolution_array`.

The rule (``TOLERANCE`` = 10%):

1. ``level=N``: that pyramid level, as stored (or as the reader made it).
2. ``mpp=M`` (needs a slide with um/px): the target downsample from level 0 is
   ``D = M / mpp0`` (``mpp0`` the mean of the slide's y and x um/px). When a
   pyramid level's downsample is within 10% of ``D``, that level is used as is
   (the closest one).
3. Otherwise the pixels are area-averaged by an integer factor ``k`` from a
   finer level ``L``: the coarsest level finer than ``D`` for which
   ``k = round(D / d_L)`` gives ``|k d_L - D| <= 10% D`` (the next finer level
   whenever it can). Pixel ``(i, j)`` is the rounded mean of level-``L`` pixels
   ``[i k, (i+1) k) x [j k, (j+1) k)`` (the last row/column: of the pixels
   that exist), built chunk by chunk from the level's own dask chunks, so the
   whole slide is never in memory. The effective downsample is exactly
   ``k d_L`` (not the request): pixel ``(i, j)`` covers level-0 pixels
   ``[i D, (i+1) D)``. When no level and factor reach 10% of the request
   (e.g. 1.5x finer than a level with no finer level that divides it), or the
   request is finer than level 0, it is an error that names the nearest
   resolutions the slide offers.

A model records the resolution it was trained at (:func:`model_resolution`):
um/px when its slide had it, always the downsample from level 0. ``predict``
uses it by default (:func:`default_for_model`): the model's um/px when the
slide has um/px; the model's downsample otherwise (the *downsample rule*: a
slide without um/px is assumed to be scanned like the training slide).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import GigapixelError

#: Relative tolerance of a level or an area-averaged resolution against a request.
TOLERANCE = 0.10
#: Common um/px offered by the pickers when the slide has um/px.
COMMON_MPP = (1.0, 2.0, 4.0, 8.0, 16.0)


class ResolutionError(GigapixelError):
    """A resolution request that the slide cannot serve (the message says what it can)."""


@dataclass(frozen=True)
class Resolution:
    """A working-resolution request: ``mpp`` or ``level`` or neither (level 0).

    Parameters
    ----------
    mpp
        Microns per pixel to work at (the slide must record its um/px).
    level
        Pyramid level of the slide (0 = full resolution).
    """

    mpp: float | None = None
    level: int | None = None

    def __post_init__(self) -> None:
        if self.mpp is not None and self.level is not None:
            raise ResolutionError("give either mpp or level, not both (--mpp / --level).")
        if self.mpp is not None and not (math.isfinite(self.mpp) and self.mpp > 0):
            raise ResolutionError(f"mpp must be a positive number of um/px, got {self.mpp}.")
        if self.level is not None and int(self.level) < 0:
            raise ResolutionError(f"level must be 0 or more, got {self.level}.")

    @property
    def is_level0(self) -> bool:
        return self.mpp is None and not self.level

    def describe(self) -> str:
        if self.mpp is not None:
            return f"{self.mpp:g} um/px"
        return f"level {self.level or 0}"

    def to_dict(self) -> dict[str, Any]:
        return {"mpp": self.mpp, "level": self.level}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Resolution:
        d = d or {}
        mpp, level = d.get("mpp"), d.get("level")
        return cls(
            mpp=None if mpp is None else float(mpp), level=None if level is None else int(level)
        )


@dataclass(frozen=True)
class ResolvedResolution:
    """A request resolved against one slide.

    Attributes
    ----------
    level
        The pyramid level the pixels come from.
    factor
        Area-averaging factor ``k`` from that level (1: the level as is).
    downsample
        Level-0 pixels per pixel, exactly (``downsamples[level] * factor``).
    shape
        (height, width) in pixels of this resolution.
    mpp
        um/px of this resolution (mean of y and x), None when the slide has none.
    request
        What was asked for.
    """

    level: int
    factor: int
    downsample: float
    shape: tuple[int, int]
    mpp: float | None
    request: Resolution

    @property
    def megapixels(self) -> float:
        return self.shape[0] * self.shape[1] / 1e6

    def describe(self) -> str:
        src = f"level {self.level}"
        if self.factor > 1:
            src = f"{self.factor}x{self.factor} area mean of level {self.level}"
        um = f", {self.mpp:.3g} um/px" if self.mpp else ""
        return (
            f"{src} (downsample {self.downsample:.4g}{um}, {self.shape[0]} x {self.shape[1]} px)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "factor": self.factor,
            "downsample": self.downsample,
            "shape": list(self.shape),
            "mpp": self.mpp,
            "request": self.request.to_dict(),
        }


def slide_mpp(slide: Any) -> float | None:
    """Mean of the slide's y and x um/px, or None."""
    mpp = getattr(slide, "mpp", None)
    return None if not mpp else float(sum(mpp)) / len(mpp)


def as_slide(image: Any) -> Any:
    """A :class:`.slide_base.Slide` for a path, a Slide, or an ``(H, W, 3)`` array (one level)."""
    import os

    if hasattr(image, "levels") and hasattr(image, "downsamples"):
        return image
    if isinstance(image, (str, os.PathLike)):
        from .slide import open_slide

        return open_slide(os.fspath(image))
    import dask.array as da

    from .slide_base import Slide

    arr = image if isinstance(image, da.Array) else da.from_array(np.asarray(image))
    return Slide(path="<array>", name="array", levels=[arr], downsamples=[1.0])


def _level_shape(slide: Any, i: int) -> tuple[int, int]:
    return int(slide.levels[i].shape[0]), int(slide.levels[i].shape[1])


def _make(slide: Any, level: int, k: int, request: Resolution) -> ResolvedResolution:
    h, w = _level_shape(slide, level)
    d = float(slide.downsamples[level]) * k
    m0 = slide_mpp(slide)
    return ResolvedResolution(
        level=level,
        factor=k,
        downsample=d,
        shape=(-(-h // k), -(-w // k)),
        mpp=None if m0 is None else m0 * d,
        request=request,
    )


def _options(slide: Any, target: float) -> list[tuple[float, int, int]]:
    """(relative error, level, k) of every level's best integer factor for ``target``."""
    out = []
    for i, d in enumerate(slide.downsamples):
        ratio = target / float(d)
        for k in {max(1, math.floor(ratio)), max(1, math.ceil(ratio))}:
            out.append((abs(k * float(d) - target) / target, i, k))
    return out


def resolve_downsample(
    slide: Any, target: float, request: Resolution | None = None, *, clamp_finer: bool = False
) -> ResolvedResolution:
    """Resolve a target downsample from level 0 by the rule in the module docstring.

    ``clamp_finer``: a target finer than level 0 gives level 0 instead of an error.
    """
    request = request or Resolution()
    target = float(target)
    name = getattr(slide, "path", "slide")
    if target < 1.0 - TOLERANCE:
        if clamp_finer:
            return _make(slide, 0, 1, request)
        finest = slide_mpp(slide)
        level0 = f"{finest:.3g} um/px" if finest else "downsample 1"
        raise ResolutionError(
            f"{name}: {request.describe()} is finer than the slide's level 0 "
            f"({level0}); pixels are never "
            "upsampled. Ask for a coarser resolution, or level 0."
        )
    # 1. A stored level within the tolerance (the closest one).
    levels = [
        (abs(float(d) - target) / target, i)
        for i, d in enumerate(slide.downsamples)
        if abs(float(d) - target) <= TOLERANCE * target
    ]
    if levels:
        return _make(slide, min(levels)[1], 1, request)
    # 2. Area mean by an integer factor from the coarsest finer level that reaches it.
    for i in range(len(slide.downsamples) - 1, -1, -1):
        d = float(slide.downsamples[i])
        if d >= target:
            continue
        k = max(2, round(target / d))
        if abs(k * d - target) <= TOLERANCE * target:
            return _make(slide, i, k, request)
    best = sorted(_options(slide, target))[:2]
    near = ", ".join(_make(slide, i, k, request).describe() for _, i, k in best)
    raise ResolutionError(
        f"{name}: no pyramid level or integer area mean of one comes within "
        f"{TOLERANCE:.0%} of {request.describe()} (downsample {target:.4g}); the nearest are "
        f"{near}. Ask for one of those."
    )


def resolve(slide: Any, request: Resolution | None) -> ResolvedResolution:
    """Resolve a request against a slide (see the module docstring for the rule).

    Raises
    ------
    ResolutionError
        A level the slide does not have, um/px on a slide without um/px, or a
        resolution no level reaches within :data:`TOLERANCE`.
    """
    request = request or Resolution()
    name = getattr(slide, "path", "slide")
    if request.mpp is None:
        level = int(request.level or 0)
        if level >= len(slide.levels):
            raise ResolutionError(
                f"{name}: level {level} does not exist; this slide has levels 0 to "
                f"{len(slide.levels) - 1}."
            )
        return _make(slide, level, 1, request)
    m0 = slide_mpp(slide)
    if m0 is None:
        raise ResolutionError(
            f"{name}: the slide does not record its um/px, so {request.describe()} cannot "
            "be found; ask for a pyramid level instead (--level N)."
        )
    return resolve_downsample(slide, float(request.mpp) / m0, request)


def _area_mean(block: np.ndarray, k: int) -> np.ndarray:
    """Rounded mean of ``k x k`` blocks of ``(h, w, c)`` (a short last block: its own pixels)."""
    h, w, c = block.shape
    ho, wo = -(-h // k), -(-w // k)
    ph, pw = ho * k - h, wo * k - w
    f = block.astype(np.float32)
    if ph or pw:
        f = np.pad(f, ((0, ph), (0, pw), (0, 0)))
    s = f.reshape(ho, k, wo, k, c).sum(axis=(1, 3))
    ny = np.full(ho, k, np.float32)
    nx = np.full(wo, k, np.float32)
    ny[-1] -= ph
    nx[-1] -= pw
    return np.floor(s / (ny[:, None, None] * nx[None, :, None]) + 0.5).astype(np.uint8)


def area_average(level: Any, k: int, chunk: int = 2048) -> Any:
    """Lazy ``k x k`` area mean of an ``(H, W, 3)`` dask array, chunk by chunk.

    Chunks are rechunked to multiples of ``k`` (about ``chunk`` pixels) so no
    averaging block straddles two chunks; each output chunk is computed from
    one input chunk.
    """
    if k == 1:
        return level
    h, w = int(level.shape[0]), int(level.shape[1])
    c = max(k, chunk // k * k)
    x = level.rechunk((min(c, h), min(c, w), -1))
    out_chunks = (
        tuple(-(-n // k) for n in x.chunks[0]),
        tuple(-(-n // k) for n in x.chunks[1]),
        x.chunks[2],
    )
    return x.map_blocks(_area_mean, k, chunks=out_chunks, dtype=np.uint8)


def resolution_array(slide: Any, resolved: ResolvedResolution) -> Any:
    """The ``(h, w, 3)`` uint8 dask array of a resolved resolution (lazy)."""
    return area_average(slide.levels[resolved.level], resolved.factor)


def map_roi(
    roi: tuple[int, int, int, int], resolved: ResolvedResolution
) -> tuple[int, int, int, int]:
    """A level-0 ROI ``(y0, x0, y1, x1)`` in pixels of the resolution (covering it)."""
    d = resolved.downsample
    y0, x0, y1, x1 = roi
    h, w = resolved.shape
    ry0 = min(int(math.floor(y0 / d + 1e-9)), h - 1)
    rx0 = min(int(math.floor(x0 / d + 1e-9)), w - 1)
    ry1 = max(ry0 + 1, min(int(math.ceil(y1 / d - 1e-9)), h))
    rx1 = max(rx0 + 1, min(int(math.ceil(x1 / d - 1e-9)), w))
    return ry0, rx0, ry1, rx1


def model_resolution(slide: Any, resolved: ResolvedResolution) -> dict[str, Any]:
    """What a model file records about its training resolution."""
    return {
        "mpp": resolved.mpp,
        "downsample": resolved.downsample,
        "level": resolved.level,
        "factor": resolved.factor,
        "request": resolved.request.to_dict(),
        "slide_mpp": slide_mpp(slide),
    }


def default_for_model(slide: Any, meta: dict[str, Any]) -> tuple[ResolvedResolution, str | None]:
    """The resolution to predict ``slide`` at with a model of metadata ``meta``.

    Returns the resolution and a message for the user (None when there is
    nothing to say: a model without a recorded resolution at level 0).
    """
    rec = meta.get("resolution")
    if not rec:
        return resolve(slide, Resolution()), None
    m0 = slide_mpp(slide)
    mpp = rec.get("mpp")
    d = float(rec.get("downsample") or 1.0)
    if mpp and m0:
        req = Resolution(mpp=float(mpp))
        r = resolve_downsample(slide, float(mpp) / m0, req, clamp_finer=True)
        if float(mpp) / m0 < 1.0 - TOLERANCE:
            return r, (
                f"the model was trained at {mpp:.3g} um/px but this slide's finest level is "
                f"{m0:.3g} um/px: predicting at level 0 ({r.describe()})"
            )
        return r, f"predicting at the model's resolution, {mpp:.3g} um/px: {r.describe()}"
    req = Resolution()
    r = resolve_downsample(slide, d, req, clamp_finer=True)
    if mpp and not m0:
        why = (
            f"the model was trained at {mpp:.3g} um/px but this slide does not record its "
            f"um/px: predicting at the model's downsample from level 0, {d:.4g} "
            f"({r.describe()}); pass --mpp or --level to choose"
        )
    else:
        why = f"predicting at the model's downsample {d:.4g}: {r.describe()}"
    return r, why


def trained_request(meta: dict[str, Any]) -> Resolution:
    """The request a model was trained at (its metadata's ``resolution``; level 0 without).

    A resumed training run works at this resolution (``TrainConfig.resolution`` None).
    """
    rec = meta.get("resolution") or {}
    return Resolution.from_dict(rec.get("request"))


def describe_request(meta: dict[str, Any]) -> str:
    """A model's recorded resolution in words (``"2 um/px"``, ``"downsample 4"``)."""
    rec = meta.get("resolution") or {}
    if rec.get("mpp"):
        return f"{float(rec['mpp']):.3g} um/px"
    if rec:
        return f"downsample {float(rec.get('downsample') or 1):.4g}"
    return "level 0"
