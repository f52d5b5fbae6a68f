"""Typed events that long-running core jobs yield.

Training, inference and pyramid building are generators in ``core/`` that
yield these dataclasses. The process runner pickles them across the process
boundary, so they hold only plain values and numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class StopFlag(Protocol):
    """Anything with ``is_set()``: ``threading.Event``, ``multiprocessing.Event``."""

    def is_set(self) -> bool: ...


class NeverStop:
    """A stop flag that is never set (the default for scripts)."""

    def is_set(self) -> bool:
        return False


def stop_requested(stop: StopFlag | None) -> bool:
    """Return True when ``stop`` is given and set."""
    return stop is not None and stop.is_set()


class JobStopped(Exception):
    """Raised inside a job when its stop flag was set; the job cleaned up."""


@dataclass
class Progress:
    """Progress of a stage: ``done`` of ``total`` units (tiles, chunks, levels)."""

    stage: str
    done: int
    total: int
    message: str = ""


@dataclass
class Message:
    """A human-readable status line."""

    text: str
    level: str = "info"


@dataclass
class StepEvent:
    """One optimizer step finished (one step = every pixel of every slide)."""

    step: int
    total_steps: int
    loss: float
    dice: float
    seconds: float
    peak_rss_bytes: int
    tile: int
    n_tiles: int
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class ValidationEvent:
    """The validation regions were scored after step ``step`` (exact tiled forward pass).

    ``dice`` is the hard Dice pooled over all validation pixels, ``soft_dice``
    and ``loss`` the soft Dice and the training loss on them. ``best_step``,
    ``best_dice`` and ``best_path`` (``<out>.best.keras``) say which step's
    model is kept as the best so far; ``improved`` whether this one is it.
    """

    step: int
    dice: float
    soft_dice: float
    loss: float
    best_step: int | None
    best_dice: float | None
    best_path: str | None
    improved: bool = False


@dataclass
class PreviewEvent:
    """Low-resolution prediction of one slide from the last forward pass.

    ``probability`` is float32 in [0, 1]; ``downsample`` is its pixel size in
    level-0 pixels (so a napari layer overlays it with ``scale=(d, d)``).
    ``offset`` is the level-0 (y, x) of its top-left corner (ROI training).
    """

    image_index: int
    probability: np.ndarray
    downsample: float
    offset: tuple[int, int] = (0, 0)


@dataclass
class CheckpointEvent:
    """A model file was written atomically and is safe to load."""

    path: str
    step: int


@dataclass
class Finished:
    """The job ended; ``result`` holds its figures (JSON-serialisable)."""

    result: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False
