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
#: Compute working set per window pixel per byte of layer outputs: forward
#: activations kept for the backward pass, their gradients and the kernels'
#: temporaries. Calibrated with ``benchmarks/bench_train.py`` on TF 2.21 CPU:
#: the default model measured ~45 B/px (float32) and ~27 B/px (bf16) against
#: 71 and 55 B/px of layer outputs, so 2.0 keeps a margin of about 10%.
ACTIVATION_FACTOR = 2.0


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


def bytes_per_pixel(model: Any) -> float:
    """Working set of one training tile per window pixel, from the model's layers.

    Sums every layer output's bytes per level-0 pixel (channels over stride
    squared, times the item size) and scales by :data:`ACTIVATION_FACTOR`.
    """
    from .geometry import tensor_geometry

    total = 3.0  # the uint8 window itself
    outs = [getattr(layer, "output", None) for layer in model.layers]
    geo = tensor_geometry(model, [o for o in outs if o is not None and len(o.shape) == 4])
    for layer in model.layers:
        out = getattr(layer, "output", None)
        if out is None or len(out.shape) != 4:
            continue
        tensor_stride = geo[id(out)][0]
        item = np.dtype(str(out.dtype)).itemsize if str(out.dtype) != "bfloat16" else 2
        total += ACTIVATION_FACTOR * item * int(out.shape[-1]) / tensor_stride**2
    return total


def auto_core(shape: tuple[int, int], geometry: Geometry, bpp: float, budget_bytes: float) -> int:
    """Largest aligned core whose window fits ``budget_bytes`` (whole image if it fits)."""
    s, h = geometry.stride, geometry.halo
    hp, wp = padded_shape(shape, s)
    if hp * wp * bpp <= budget_bytes:
        return max(hp, wp)
    side = math.sqrt(max(budget_bytes, 0) / bpp)
    core = int(side - 2 * h) // s * s
    return max(s, core)
