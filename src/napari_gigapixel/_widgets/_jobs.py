"""Run an engine job (training, inference) from a widget without blocking napari.

The job itself runs in a spawned worker process (:func:`core.runner.run_job`,
TensorFlow never enters napari's process). Here a napari thread worker relays
its events: the thread iterates ``job.events()`` and yields each event, and
napari delivers ``yielded`` to the main thread, where the widget updates its
layers, progress bar and plot.

Stopping is cooperative: :meth:`JobRelay.stop` asks the worker process to
stop (it finishes the current tile and keeps the last checkpoint), and the
relay keeps draining events until ``Finished``. Closing the widget or the
viewer calls :meth:`JobRelay.shutdown`, which stops and waits, so no orphaned
worker process stays behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from qtpy.QtCore import QEvent, QObject


def _run_job(target: str, config: Any) -> Any:
    """Start ``target`` in a worker process; the seam tests may monkeypatch."""
    from ..core.runner import run_job

    return run_job(target, config)


class JobRelay:
    """One engine job at a time, relayed to the main thread.

    Parameters
    ----------
    on_event
        Called on the main thread with each event the job yields.
    on_error
        Called on the main thread with the exception that ended the job.
    on_done
        Called on the main thread when the relay ends (after success, stop or error).
    """

    def __init__(
        self,
        on_event: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
        on_done: Callable[[], None],
    ) -> None:
        self._on_event = on_event
        self._on_error = on_error
        self._on_done = on_done
        self._job: Any = None
        self._worker: Any = None
        self._stop = threading.Event()
        self._ended = threading.Event()
        self._ended.set()
        self._lock = threading.Lock()
        #: Events relayed so far in this run (read by tests to time a stop).
        self.n_received = 0
        #: True once the widget or viewer closed during the run: late events
        #: must not touch layers any more.
        self.closed = False

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the relay thread has ended."""
        return not self._ended.is_set()

    def start(self, target: str, config: Any) -> None:
        """Start ``target(config, stop)`` in a worker process and relay its events."""
        from napari.qt.threading import thread_worker

        if self.running:
            raise RuntimeError("a job is already running")
        self._stop.clear()
        self._ended.clear()
        self.n_received = 0
        self.closed = False
        relay = self

        # Errors go to on_error (a notification), not re-raised in the event loop.
        @thread_worker(start_thread=False, ignore_errors=True)
        def _relay() -> Iterator[Any]:
            try:
                job = _run_job(target, config)
                with relay._lock:
                    relay._job = job
                    # Stop pressed while the process was spawning.
                    if relay._stop.is_set():
                        job.stop()
                for event in job.events():
                    # Counted here, in the relay thread, as soon as the event
                    # leaves the worker: the main thread may see it later.
                    relay.n_received += 1
                    yield event
            finally:
                with relay._lock:
                    relay._job = None
                relay._ended.set()

        worker = _relay()
        worker.yielded.connect(self._on_event)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_done)
        self._worker = worker
        worker.start()

    def stop(self) -> None:
        """Ask the job to stop after its current tile; events keep flowing to ``Finished``."""
        self._stop.set()
        with self._lock:
            job = self._job
        if job is not None:
            job.stop()

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Stop the job and wait (up to ``timeout`` s) for the relay to end.

        Returns True when nothing is left running.
        """
        if not self.running:
            return True
        self.closed = True
        self.stop()
        return self._ended.wait(timeout)


class _CloseFilter(QObject):
    """Calls ``callback`` when the watched widget closes, leaves its dock, or
    the main window it is docked in closes.

    napari's dock close button re-parents the inner widget to ``None`` (it is
    not deleted while Python holds it), so a parent change to ``None`` counts
    as closing, as does a ``Close`` event. When the widget gets a parent, the
    filter also watches its top-level window (the viewer's main window),
    found through Qt rather than napari's private attributes.
    """

    def __init__(self, callback: Callable[[], Any]) -> None:
        super().__init__()
        self._callback = callback
        # ids, not objects: holding the main window would keep the viewer alive.
        self._windows: set[int] = set()

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
        kind = event.type()
        if kind == QEvent.Type.Close:
            self._callback()
        elif kind == QEvent.Type.ParentChange:
            if obj.parent() is None:
                self._callback()
            else:
                self._watch_window(obj)
        return False

    def _watch_window(self, obj: Any) -> None:
        window = obj.window() if hasattr(obj, "window") else None
        if window is None or window is obj or id(window) in self._windows:
            return
        window.installEventFilter(self)
        self._windows.add(id(window))


def stop_on_close(relay: JobRelay, native: Any) -> _CloseFilter:
    """Shut ``relay`` down when the widget closes or the viewer's window closes.

    Returns the event filter (keep a reference: Qt does not own it).
    """
    native.destroyed.connect(lambda *_: relay.shutdown())
    filt = _CloseFilter(relay.shutdown)
    native.installEventFilter(filt)
    filt._watch_window(native)  # already docked
    return filt
