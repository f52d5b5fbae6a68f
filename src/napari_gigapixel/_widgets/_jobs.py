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
worker process stays behind. :class:`JobWidgetMixin` holds the Start/Stop
plumbing the Train and Predict widgets share.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from napari.utils.notifications import show_warning
from qtpy.QtCore import QEvent, QObject

from ..core.errors import GigapixelError
from ..core.events import Finished, Message


def set_progress(bar: Any, done: float, total: float) -> None:
    """Show ``done`` of ``total`` on a magicgui ``ProgressBar`` (clamped)."""
    bar.max = max(int(total), 1)
    bar.value = min(int(done), bar.max)


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
        #: Set when the relay thread begins; the pool may queue its start.
        self._began = threading.Event()
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
        self._began.clear()
        self._ended.clear()
        self.n_received = 0
        self.closed = False
        relay = self

        # Errors go to on_error (a notification), not re-raised in the event loop.
        @thread_worker(start_thread=False, ignore_errors=True)
        def _relay() -> Iterator[Any]:
            relay._began.set()
            try:
                if relay._stop.is_set():
                    # Stopped (the widget closed) before this thread ran:
                    # spawn no worker at all.
                    return
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

        Returns True when no worker process is left running.
        """
        if not self.running:
            return True
        self.closed = True
        self.stop()
        if not self._began.is_set():
            # The relay thread has not run yet: superqt queues a start made
            # inside a running event loop on that loop, so blocking it here
            # would wait ``timeout`` s for nothing. When the thread runs it
            # sees the stop (set above, before this check) and spawns nothing.
            return True
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
    # No slot on ``native.destroyed``: when the garbage collector frees an
    # undocked widget, Qt deletes it mid-collection and a Python slot called
    # then could crash the process (seen in the widget tests). A widget with a
    # running job is never collected (the relay's thread holds its callbacks),
    # and closing, undocking or closing the viewer reaches the filter below.
    filt = _CloseFilter(relay.shutdown)
    native.installEventFilter(filt)
    filt._watch_window(native)  # already docked
    return filt


class JobWidgetMixin:
    """Start/Stop plumbing of a widget that runs one engine job at a time.

    Mixed into a magicgui ``Container`` (``class W(JobWidgetMixin, Container)``)
    that has a ``status`` label. The widget calls :meth:`_setup_job` once its
    fields exist and provides:

    - ``job_target``: ``"module:function"`` of the engine generator;
    - ``stopping_text``: the status shown while a stop is pending;
    - ``make_config()``: the engine config from the fields (raises
      ``GigapixelError`` for input the user must fix);
    - ``_handle(event)``: updates the widget for one event (main thread;
      ``Message`` events are shown already, ``Finished`` is in ``result``);
    - optionally ``_prepare_run(config)``: resets its displays for a new run.
    """

    job_target: str
    stopping_text = "stopping..."
    native: Any
    status: Any
    make_config: Callable[[], Any]
    _handle: Callable[[Any], None]

    def _setup_job(
        self,
        start_button: Any,
        stop_button: Any,
        inputs: list[Any],
        notify_error: Callable[[str], Any],
    ) -> None:
        """Wire the buttons, the relay and the close watch.

        Parameters
        ----------
        start_button, stop_button
            The widget's Start and Stop buttons.
        inputs
            The fields locked while the job runs (the Start button is added).
        notify_error
            Shows a message as a napari error notification.
        """
        self.stop_button = stop_button
        self._inputs = [*inputs, start_button]
        self._notify_error = notify_error
        self.config: Any = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.relay = JobRelay(self._on_event, self._on_error, self._on_done)
        self._close_filter = stop_on_close(self.relay, self.native)
        start_button.changed.connect(self.start)
        stop_button.changed.connect(self.stop)

    def _prepare_run(self, cfg: Any) -> None:
        """Reset what a previous run left in the widget's displays."""

    def start(self, *_: Any) -> None:
        """Start the job in a worker process (the Start button)."""
        if self.relay.running:
            return
        try:
            cfg = self.make_config()
        except GigapixelError as exc:
            self._notify_error(str(exc))
            self.status.value = "not started: see notification"
            return
        self.config = cfg
        self.result = None
        self.error = None
        self._prepare_run(cfg)
        self.status.value = "starting worker (loading TensorFlow)..."
        self._set_running(True)
        self.relay.start(self.job_target, cfg)

    def stop(self, *_: Any) -> None:
        """Ask the job to stop after its current tile (the Stop button)."""
        if self.relay.running:
            self.status.value = self.stopping_text
            self.stop_button.enabled = False
            self.relay.stop()

    def _set_running(self, running: bool) -> None:
        try:
            for w in self._inputs:
                w.enabled = not running
            self.stop_button.enabled = running
        except RuntimeError:  # the viewer closed and Qt deleted the widgets
            pass

    def _on_event(self, ev: Any) -> None:
        if self.relay.closed:  # widget or viewer closed: leave the layers alone
            return
        if isinstance(ev, Message):
            if ev.level in ("warning", "error"):
                show_warning(ev.text)
            self.status.value = ev.text
        elif isinstance(ev, Finished):
            self.result = ev
        try:
            self._handle(ev)
        except GigapixelError as exc:  # e.g. an output that cannot be opened
            self._on_error(exc)

    def _on_error(self, exc: BaseException) -> None:
        self.error = exc
        if self.relay.closed:
            return
        self._notify_error(str(exc))
        self.status.value = "failed: see notification"

    def _on_done(self) -> None:
        self._set_running(False)
