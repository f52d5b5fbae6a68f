"""One tqdm progress bar (on standard error) for any core job's events.

Every long core job is a generator of :mod:`..core.events`; the commands only
differ in what the bar counts: optimizer steps (``StepEvent``) or units of a
stage (``Progress``). Standard output stays free for results and ``--json``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Literal

from ..core import events as ev


def follow(
    events: Iterable[object],
    *,
    unit: str,
    counts: Literal["steps", "progress"] = "progress",
    desc: str | None = None,
    quiet: bool = False,
) -> ev.Finished | None:
    """Consume ``events`` with a progress bar; return the final ``Finished`` event.

    Parameters
    ----------
    events
        A core job's event generator (or a runner ``Job.events()``). It is
        closed at the end, also on Ctrl-C, so the job removes its temporary
        files at once.
    unit
        What the bar counts ("step", "chunk", "tile").
    counts
        ``"steps"``: the bar follows ``StepEvent`` (loss and Dice shown);
        ``"progress"``: it follows ``Progress`` (its stage as the description).
    desc
        A fixed description (default: the ``Progress`` stage).
    quiet
        No bar and no messages.
    """
    from tqdm import tqdm

    bar = None
    finished = None
    val: dict[str, str] = {}  # the last validation figures, shown until the next
    stage = None

    def get_bar(total: int):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True)
        bar.total = total
        return bar

    try:
        for event in events:
            if isinstance(event, ev.Finished):
                finished = event
            elif quiet:
                continue
            elif counts == "steps" and isinstance(event, ev.StepEvent):
                b = get_bar(event.total_steps)
                b.set_postfix(
                    loss=f"{event.loss:.4f}", dice=f"{event.dice:.4f}", **val, refresh=False
                )
                b.update(event.step - b.n)
            elif isinstance(event, ev.ValidationEvent):
                val = {
                    "val_dice": f"{event.dice:.4f}",
                    "best": f"{event.best_dice:.4f}@{event.best_step}",
                }
            elif counts == "progress" and isinstance(event, ev.Progress):
                if bar is not None and stage not in (None, event.stage):
                    bar.reset(total=event.total)  # a new stage (predict: "clean")
                    bar.set_description(
                        event.stage if desc is None else f"{desc} {event.stage}", refresh=False
                    )
                stage = event.stage
                b = get_bar(event.total)
                if desc is None:
                    b.set_description(event.stage, refresh=False)
                b.update(event.done - b.n)
            elif isinstance(event, ev.Message):
                (bar.write if bar is not None else print)(event.text, file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()
        close = getattr(events, "close", None)
        if close is not None:
            close()
    return finished
