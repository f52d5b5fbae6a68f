"""What each working resolution costs: the choices the Train and Predict pickers list.

A simple measured model, no TensorFlow (it runs in napari's process):

* seconds per training step = megapixels / :data:`TRAIN_MPX_PER_S`;
* seconds of a prediction = megapixels / :data:`PREDICT_FLIPS_MPX_PER_S`
  (test-time flips, ``predict``'s default) or :data:`PREDICT_MPX_PER_S` (none);
* training peak memory = :data:`~._resources.BASELINE_BYTES` + the decoded
  cache when it is kept in memory (as the trainer decides) + the working set
  of the largest window :func:`~._resources.auto_core` fits in the budget,
  at :data:`BYTES_PER_PIXEL` (the default model's
  :func:`~._resources.bytes_per_pixel`);
* prediction peak memory: measured chunk-bound (about constant above one chunk).

The constants were measured with ``benchmarks/bench_train.py`` and
``benchmarks/bench_predict.py`` on 2 shared cores (see each); a test checks
that the model constants still match the default model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._resources import BASELINE_BYTES, augment_bytes, auto_core, cpu_has_bf16
from .geometry import Geometry
from .resolution import COMMON_MPP, Resolution, ResolutionError, ResolvedResolution, resolve
from .stain import AUTO_BALANCED
from .tiled_model import DEFAULT_TTA

#: Training throughput of the recipe's model and loss (``TrainConfig()``: the
#: medium model, dice+focal, output stride 4, bf16 where the CPU has it):
#: 27.3 Mpx/s on a 1.024 Gpx slide (``bench_train.py --sizes 1024 --steps 3
#: --loss dice+focal``, 2 shared EPYC cores, 37.6 s per step); small slides
#: run slower per pixel (per-step overheads), so 25. On a busy machine this
#: errs short.
TRAIN_MPX_PER_S = 25.0
#: End-to-end prediction throughput (``bench_predict.py``, 1 Gpx JPEG slide,
#: threaded scheduler: 71-86 Mpx/s) with ``--tta none`` ...
PREDICT_MPX_PER_S = 70.0
#: ... with the test-time flips (the model runs 4 times: 27.6 s end to end at
#: 1 Gpx with model load, clean-up and pyramids, 37 Mpx/s) ...
PREDICT_FLIPS_MPX_PER_S = 37.0
#: ... and with the default ``tta="half-darker"`` (4 passes, two of them
#: through the darker table: 34.0-34.2 s end to end at 1 Gpx against the flips'
#: 30.5-31.7 s the same hour, so about 8% under their rate).
PREDICT_HALF_DARKER_MPX_PER_S = 34.0
#: ... and with ``tta="flips+darker"`` (8 passes: 50.6 s end to end at 1 Gpx, 20 Mpx/s).
PREDICT_FLIPS_DARKER_MPX_PER_S = 20.0
#: The throughput of each test-time mode (:data:`.tiled_model.TTA_MODES`).
PREDICT_RATES = {
    "half-darker": PREDICT_HALF_DARKER_MPX_PER_S,
    "flips": PREDICT_FLIPS_MPX_PER_S,
    "flips+darker": PREDICT_FLIPS_DARKER_MPX_PER_S,
    "none": PREDICT_MPX_PER_S,
}
#: Peak RSS of a prediction above one chunk (``bench_predict.py``: 2.7 GB at 1 Gpx).
PREDICT_PEAK_BYTES = int(2.7e9)
#: Working set per window pixel of the recipe's model (``bytes_per_pixel``
#: of ``TrainConfig().model``), in bf16 (used where the CPU has it, as
#: training's ``"auto"``) and float32: 10-15% over what an 8192 x 32768 px run
#: measured (47.8 and 56.3 B/px; :data:`._resources.TEMPORARY_BYTES`).
BYTES_PER_PIXEL = {"bf16": 55.22, "float32": 63.61}
#: The recipe's model's geometry (``model_geometry(build_unet(TrainConfig().model))``;
#: napari's process never builds a model, so the estimate keeps a copy, and
#: ``tests/core/test_resolution_cost.py`` checks it against the built model).
DEFAULT_GEOMETRY = Geometry(stride=32, output_stride=4, rf_before=48, rf_after=68)


@dataclass(frozen=True)
class Choice:
    """One entry of a resolution picker."""

    label: str
    request: Resolution | None  # None: the model's own resolution (predict)
    resolved: ResolvedResolution
    seconds: float
    peak_bytes: int


def train_cost(
    shape: tuple[int, int],
    memory_gb: float,
    geometry: Geometry = DEFAULT_GEOMETRY,
    bpp: float | None = None,
    augment: str = AUTO_BALANCED,
) -> tuple[float, int]:
    """(seconds per step, peak bytes) of training on ``shape`` pixels within ``memory_gb``.

    ``augment``: the mode the steps draw (the recipe draws the ink and pen
    strokes: :data:`.stain.AUTO_BALANCED`),
    whose working set each window also holds (:func:`~._resources.augment_bytes`).
    """
    bpp = (bpp or default_bpp()) + augment_bytes(augment)
    h, w = int(shape[0]), int(shape[1])
    px = h * w
    budget = float(memory_gb) * 2**30
    cache = 3 * px + px // geometry.output_stride**2
    in_memory = cache if cache <= 0.35 * max(budget - BASELINE_BYTES, 0) else 0
    compute = budget - BASELINE_BYTES - in_memory
    core = auto_core((h, w), geometry, bpp, compute)
    hw = min(h, core + 2 * geometry.halo) * min(w, core + 2 * geometry.halo)
    return px / 1e6 / TRAIN_MPX_PER_S, int(BASELINE_BYTES + in_memory + hw * bpp)


def default_bpp() -> float:
    """The default model's working set per pixel on this CPU (bf16 where it has it)."""
    return BYTES_PER_PIXEL["bf16" if cpu_has_bf16() else "float32"]


def predict_cost(
    shape: tuple[int, int], bpp: float | None = None, tta: str = DEFAULT_TTA
) -> tuple[float, int]:
    """(seconds, peak bytes) of predicting ``shape`` pixels with test-time
    augmentation ``tta`` (:data:`.tiled_model.TTA_MODES`; predict's default
    :data:`.tiled_model.DEFAULT_TTA`)."""
    bpp = bpp or default_bpp()
    px = int(shape[0]) * int(shape[1])
    rate = PREDICT_RATES[tta]  # every mode has its measured rate (a test)
    return px / 1e6 / rate, int(min(PREDICT_PEAK_BYTES, BASELINE_BYTES + px * bpp))


def _requests(slide: Any) -> list[Resolution]:
    out = [Resolution(level=i) for i in range(len(slide.levels))]
    if getattr(slide, "mpp", None):
        out += [Resolution(mpp=m) for m in COMMON_MPP]
    return out


def _label(head: str, r: ResolvedResolution, seconds: float, peak: int, per: str) -> str:
    um = f"{r.mpp:.3g} um/px · " if r.mpp else ""
    mp = r.megapixels
    mpx = f"{mp:,.0f}" if mp >= 100 else f"{mp:.3g}" if mp >= 0.01 else "<0.01"
    sec = f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.2g}" if seconds >= 0.01 else "<0.01"
    sec = sec if sec.startswith("<") else f"~{sec}"
    return f"{head} · {um}{mpx} Mpx · {sec} s{per} · {peak / 2**30:.1f} GiB"


def choices(
    slide: Any,
    *,
    kind: str = "train",
    memory_gb: float = 3.5,
    model_meta: dict[str, Any] | None = None,
    tta: str = DEFAULT_TTA,
) -> list[Choice]:
    """The resolutions a picker lists for ``slide``, with their cost.

    Each pyramid level, then (when the slide has um/px) 1, 2, 4, 8 and 16
    um/px, those that resolve and do not repeat a level. ``kind="predict"``
    puts first the model's own resolution (``model_meta``) and estimates the
    whole prediction instead of one training step (with test-time
    augmentation ``tta``, :func:`predict_cost`).
    """
    from .resolution import default_for_model, describe_request

    out: list[Choice] = []
    seen: set[tuple[int, int]] = set()

    def cost(r: ResolvedResolution) -> tuple[float, int]:
        if kind == "predict":
            return predict_cost(r.shape, tta=tta)
        return train_cost(r.shape, memory_gb)

    per = "" if kind == "predict" else "/step"
    if kind == "predict" and model_meta is not None:
        r, _ = default_for_model(slide, model_meta)
        s, p = cost(r)
        head = f"as trained ({describe_request(model_meta)})"
        out.append(Choice(_label(head, r, s, p, per), None, r, s, p))
    for req in _requests(slide):
        try:
            r = resolve(slide, req)
        except ResolutionError:
            continue
        if (r.level, r.factor) in seen:
            continue
        seen.add((r.level, r.factor))
        s, p = cost(r)
        head = f"level {r.level}"
        if r.factor > 1:
            head += f", {r.factor}x{r.factor} mean"
        out.append(Choice(_label(head, r, s, p, per), req, r, s, p))
    return out


def checkpoint_choice(slide: Any, meta: dict[str, Any], *, memory_gb: float = 3.5) -> Choice:
    """The one entry a Train picker lists while a checkpoint is continued.

    A resumed run works at the resolution the checkpoint was trained at
    (:func:`.resolution.trained_request`, resolved on ``slide``); the entry's
    ``request`` is None, ``TrainConfig.resolution``'s "the checkpoint's".

    Raises
    ------
    ResolutionError
        ``slide`` cannot serve that resolution (training would refuse it too).
    """
    from .resolution import trained_request

    req = trained_request(meta)
    r = resolve(slide, req)
    s, p = train_cost(r.shape, memory_gb)
    head = f"as checkpoint ({req.describe()})"
    return Choice(_label(head, r, s, p, "/step"), None, r, s, p)
