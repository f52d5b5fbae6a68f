"""Best-checkpoint bookkeeping of validation, shared by both trainers.

:func:`.validation.iter_validate` (this process) or the cluster's workers
(:mod:`._dist_step`) score the model; this module turns those scores into the
run's record: :func:`validate_hook` is the per-step ``validate`` callback of
:func:`._step_loop.run_steps`, :class:`BestTracker` keeps the best step (by
validation Dice) and its model file, ``<out>.best.keras`` (:func:`best_path`),
and carries that state through resumed runs; :func:`result_figures` gives
the validation keys of a run's result. Nothing here reads slides or runs a
model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from .model_io import new_file_mode
from .train_config import TrainConfig


def best_path(out: str | os.PathLike) -> str:
    """``model.keras`` -> ``model.best.keras`` (the best validation checkpoint)."""
    out = os.fspath(out)
    return out[: -len(".keras")] + ".best.keras" if out.endswith(".keras") else out + ".best"


def validate_hook(cfg: TrainConfig, best: BestTracker, score: Callable[[int], Iterator[Any]]):
    """The ``validate`` callback of :func:`._step_loop.run_steps` for both trainers.

    Every ``val_every`` steps (and after the last) ``score(step_no)`` (a
    generator returning a :class:`.validation.ValidationScore`: in this
    process, or on the cluster's workers) rates the model; a new best is
    written to ``best.path`` by ``save`` and a ``ValidationEvent`` is yielded.
    """
    from .events import ValidationEvent

    def validate(step_no: int, last: bool, save: Any):
        if not (step_no % int(cfg.val_every) == 0 or last):
            return None
        s = yield from score(step_no)
        improved = best.update(step_no, s.dice)
        if improved:
            save(best.path)
        yield ValidationEvent(
            step=step_no,
            dice=s.dice,
            soft_dice=s.soft_dice,
            loss=s.loss,
            best_step=best.step,
            best_dice=best.dice,
            best_path=os.path.abspath(best.path),
            improved=improved,
        )
        return {"val_dice": s.dice, "val_soft_dice": s.soft_dice, "val_loss": s.loss}

    return validate


def result_figures(history: list[dict[str, Any]], best: BestTracker) -> dict[str, Any]:
    """The validation keys of a training run's result (None where not validated)."""
    last = next((h for h in reversed(history) if "val_dice" in h), None)
    return {
        "val_dice": last["val_dice"] if last else None,
        "val_loss": last["val_loss"] if last else None,
        "best_step": best.step,
        "best_val_dice": best.dice,
        "best_model": os.path.abspath(best.path) if best.step is not None else None,
    }


class BestTracker:
    """The best validation step so far and its model file (``<out>.best.keras``).

    Its state travels in every checkpoint's metadata (``meta["validation"]``),
    so a resumed run keeps comparing against the best of the earlier runs.
    """

    def __init__(self, out: str, source: str | None) -> None:
        self.path = best_path(out)
        self.source = source
        self.step: int | None = None
        self.dice: float | None = None

    def resume_from(self, meta: dict[str, Any], resumed_from: str) -> str | None:
        """Continue the bookkeeping of a checkpoint's metadata; returns a message or None.

        When the earlier best file is elsewhere (resumed into a new ``out``)
        it is copied beside the new one, so ``<out>.best.keras`` stays the
        best model of the whole run.
        """
        v = meta.get("validation") or {}
        if v.get("best_step") is None:
            return None
        if v.get("source") != self.source:
            return (
                "the validation data differ from the resumed model's; "
                "best-checkpoint bookkeeping starts afresh"
            )
        self.step, self.dice = int(v["best_step"]), float(v["best_val_dice"])
        old = v.get("best_path") or best_path(resumed_from)
        if not os.path.isfile(old):  # the folder was moved: look beside the resumed file
            folder = os.path.dirname(os.path.abspath(resumed_from))
            old = os.path.join(folder, os.path.basename(old))
        if os.path.isfile(old) and os.path.abspath(old) != os.path.abspath(self.path):
            _atomic_copy(old, self.path)
        return f"resumed validation: best Dice {self.dice:.4f} at step {self.step}"

    def update(self, step: int, dice: float) -> bool:
        """Record a score; True when it is a new best (strictly higher Dice)."""
        if self.dice is None or dice > self.dice:
            self.step, self.dice = int(step), float(dice)
            return True
        return False

    def meta(self) -> dict[str, Any]:
        """The ``validation`` entry of a checkpoint's metadata."""
        return {
            "source": self.source,
            "best_step": self.step,
            "best_val_dice": self.dice,
            "best_path": os.path.abspath(self.path) if self.step is not None else None,
        }


def _atomic_copy(src: str, dst: str) -> None:
    folder = os.path.dirname(os.path.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".keras", dir=folder)
    os.close(fd)
    try:
        os.chmod(tmp, new_file_mode())  # as the model file beside it
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
