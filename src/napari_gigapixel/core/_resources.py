"""Memory and CPU facts a training run plans with: RSS, bf16 support, tile size.

:func:`auto_core` turns a memory budget into the largest aligned core, from the
model's per-pixel working set (:func:`bytes_per_pixel`, read off its layers).
"""

from __future__ import annotations

import math
import resource
import sys
from typing import Any

import numpy as np

from .geometry import Geometry
from .tiling import padded_shape

#: Resident memory of the worker before any tile (interpreter + TensorFlow).
BASELINE_BYTES = int(0.8 * 2**30)
#: Compute working set per window pixel. Per layer output (channels over
#: stride squared per level-0 pixel): the activation kept for the backward
#: pass in its own dtype, plus TEMPORARY_BYTES for its gradient and the
#: kernels' temporaries, which TensorFlow holds in float32 even under the bf16
#: policy (the finest decoder convolution's wide kernel gradient, the oneDNN
#: reorders); then WORKING_SET_MARGIN over all. Calibrated with the recipe's
#: model on TF 2.21 CPU (8192 x 32768 px, 3.5 GiB budget, RSS sampled every
#: 20 ms, minus the RSS before the first tile): 47.8 B/px in bf16 and 56.3 B/px
#: in float32, against 52.4 and 63.5 from this count (10% and 13% over).
#: Counting both parts at the layer's dtype, as before, gave 39 B/px in bf16:
#: the 1 Gpx run peaked at 3.9 GiB against its 3.5 GiB budget.
TEMPORARY_BYTES = 4.8
WORKING_SET_MARGIN = 1.08
#: Extra working set per window pixel of an augmented step: the transformed
#: window (a uint8 tensor beside the cached pixels) and the XLA kernel's float32
#: temporaries, held while the next tile's window is transformed in the reading
#: thread. Measured with the recipe (ink) at 1.024 Gpx, 3.5 GiB budget: 4.05 GiB
#: peak with 30 windows of 7,136 px against 3.18 GiB unaugmented, 18 B per window
#: pixel; 20 with a margin. The ink alone (the recipe's) recolours the window
#: it read in place, a few percent of it at a time (:func:`._augment_kernel.apply_ink`):
#: INK_BYTES covers its block flags' temporaries, on the first step only.
#: The colour map ("stain", "all") is now a lookup in a per-step table of all
#: 2**24 colours (48 MB, within BASELINE_BYTES) with no float temporaries, so
#: AUGMENT_BYTES is generous for it; it stays until measured at 1 Gpx.
AUGMENT_BYTES = 20.0
INK_BYTES = 4.0


def augment_bytes(mode: str) -> float:
    """Extra working set per window pixel of a step drawing augmentation ``mode``
    (:func:`.stain.resolve_augment`'s: "none", "flip", "stain", "ink", "pen",
    "pen+flip" or "all"); the pen strokes are drawn in place too, a piece of a
    stroke at a time."""
    if mode == "none":
        return 0.0
    # "pen+flip" turns the window through the same kernel as "flip": AUGMENT_BYTES.
    return INK_BYTES if mode in ("ink", "pen") else AUGMENT_BYTES


def cpu_has_bf16() -> bool:
    """Whether this (Linux) CPU has native bfloat16 instructions."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read(1 << 16)
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_mixed_precision(setting: bool | str) -> bool:
    """Resolve ``TrainConfig.mixed_precision`` (True, False or ``"auto"``)."""
    if setting == "auto":
        return cpu_has_bf16()
    return bool(setting)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def current_rss_bytes() -> int:
    """Current resident set size (psutil), or the peak when unavailable."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil missing or restricted: be conservative
        return peak_rss_bytes()


def bytes_per_pixel(model: Any, augment: str = "none") -> float:
    """Working set of one training tile per window pixel, from the model's layers.

    The uint8 window itself, and for every layer output after it (channels
    over stride squared per level-0 pixel) its own item size plus
    :data:`TEMPORARY_BYTES`; times :data:`WORKING_SET_MARGIN`; plus
    :func:`augment_bytes` of the mode the steps draw (``augment``: training
    with an augmentation; validation and inference never augment).
    """
    from .geometry import tensor_geometry

    total = 3.0  # the uint8 window itself (the input layer's output)
    outs = [getattr(layer, "output", None) for layer in model.layers]
    geo = tensor_geometry(model, [o for o in outs if o is not None and len(o.shape) == 4])
    for layer in model.layers:
        out = getattr(layer, "output", None)
        if out is None or len(out.shape) != 4 or type(layer).__name__ == "InputLayer":
            continue
        tensor_stride = geo[id(out)][0]
        item = np.dtype(str(out.dtype)).itemsize if str(out.dtype) != "bfloat16" else 2
        total += (item + TEMPORARY_BYTES) * int(out.shape[-1]) / tensor_stride**2
    return WORKING_SET_MARGIN * total + augment_bytes(augment)


def auto_core(shape: tuple[int, int], geometry: Geometry, bpp: float, budget_bytes: float) -> int:
    """Largest aligned core whose window fits ``budget_bytes`` (whole image if it fits)."""
    s, h = geometry.stride, geometry.halo
    hp, wp = padded_shape(shape, s)
    if hp * wp * bpp <= budget_bytes:
        return max(hp, wp)
    side = math.sqrt(max(budget_bytes, 0) / bpp)
    core = int(side - 2 * h) // s * s
    return max(s, core)
