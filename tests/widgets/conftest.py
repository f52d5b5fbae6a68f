"""Fixtures for the widget tests: a tiny synthetic slide, a viewer showing it, fake jobs.

These tests run with a real napari viewer under ``xvfb-run -a``, in their own
pytest invocation: TensorFlow must never be imported here (it segfaults next
to napari's OpenGL canvas). Real engine runs go through the process runner.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from napari_gigapixel.core.events import Finished, PreviewEvent, Progress, StepEvent

#: Level-0 size of the test slide: small enough for a 2-3 step training in seconds.
TINY_SHAPE = (512, 1024)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config._gigapixel_exitstatus = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the widget session without Python's teardown of Qt and the GL canvas.

    CI crashed twice (exit 139) *after* the summary said every widget test
    passed, in the interpreter's teardown of Qt/vispy objects; 5 reruns on
    this machine did not crash. The results are final by now (summary printed,
    every other plugin unconfigured), so the process leaves with pytest's own
    exit status instead of running that teardown.
    """
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(getattr(config, "_gigapixel_exitstatus", 0))


@pytest.fixture(scope="session", autouse=True)
def _join_worker_threads() -> Iterator[None]:
    """Let every napari thread worker finish before the interpreter exits.

    A worker thread still running while Python tears Qt down can crash the
    process after the last test passed (seen once in CI, exit 139, on a loaded
    machine): the session ends by waiting for Qt's global thread pool.
    """
    yield
    from qtpy.QtCore import QThreadPool

    QThreadPool.globalInstance().waitForDone(60_000)


@pytest.fixture(scope="session", autouse=True)
def _gigapixel_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Keep the sample/cache files of the whole session in a temporary folder."""
    cache = str(tmp_path_factory.mktemp("gigapixel-cache"))
    old = os.environ.get("NAPARI_GIGAPIXEL_CACHE")
    os.environ["NAPARI_GIGAPIXEL_CACHE"] = cache
    yield cache
    if old is None:
        os.environ.pop("NAPARI_GIGAPIXEL_CACHE", None)
    else:
        os.environ["NAPARI_GIGAPIXEL_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(slide path, full-resolution mask path) of a 512 x 1024 synthetic slide."""
    from napari_gigapixel.core.synthetic import make_synthetic_slide

    folder = tmp_path_factory.mktemp("tiny-slide")
    slide, mask = make_synthetic_slide(
        str(folder / "tiny.tif"), shape=TINY_SHAPE, seed=3, mask_out=str(folder / "tiny_mask.tif")
    )
    return str(slide), str(mask)


@pytest.fixture
def slide_viewer(make_napari_viewer, tiny_slide) -> tuple[Any, Any]:
    """A viewer with the tiny slide opened through our reader, as a user opens it."""
    viewer = make_napari_viewer()
    layers = viewer.open(tiny_slide[0], plugin="napari-gigapixel")
    images = [ly for ly in layers if ly._type_string == "image"]
    assert images, "the reader added no image layer"
    return viewer, images[0]


class FakeJob:
    """Stands in for ``core.runner.Job``: yields scripted events, honours ``stop()``."""

    def __init__(self, events: list[Any], delay: float = 0.02, error: Exception | None = None):
        self._events = events
        self._delay = delay
        self._error = error
        self.stopped = threading.Event()

    def stop(self, wait: bool = False) -> None:
        self.stopped.set()

    def events(self) -> Iterator[Any]:
        for ev in self._events:
            if self.stopped.is_set():
                yield Finished(result={}, stopped=True)
                return
            time.sleep(self._delay)
            yield ev
        if self._error is not None:
            raise self._error


def training_events(steps: int = 3, n_tiles: int = 2, shape=(128, 256)) -> list[Any]:
    """The events a short training yields: tiles, a step, a preview, per step."""
    out: list[Any] = []
    for s in range(1, steps + 1):
        for t in range(1, n_tiles + 1):
            out.append(Progress("tiles", t, n_tiles))
        out.append(StepEvent(s, steps, 1.0 / s, 0.3 * s, 0.5, 2**30, n_tiles, n_tiles))
        prob = np.full(shape, s / steps, np.float32)
        out.append(PreviewEvent(0, prob, 4.0, (0, 0)))
    out.append(Finished(result={"steps": steps}, stopped=False))
    return out


@pytest.fixture
def fake_jobs(monkeypatch) -> list[tuple[str, Any, FakeJob]]:
    """Replace the process runner with :class:`FakeJob`; returns the calls made.

    Set ``fake_jobs.script`` (a list of events) and optionally ``.error`` and
    ``.delay`` before pressing a button.
    """
    from napari_gigapixel._widgets import _jobs

    calls: list[tuple[str, Any, FakeJob]] = []

    class Calls(list):
        script: list[Any] = []
        error: Exception | None = None
        delay: float = 0.02

    calls = Calls()

    def fake_run_job(target: str, config: Any) -> FakeJob:
        job = FakeJob(list(calls.script), delay=calls.delay, error=calls.error)
        calls.append((target, config, job))
        return job

    monkeypatch.setattr(_jobs, "_run_job", fake_run_job)
    return calls
