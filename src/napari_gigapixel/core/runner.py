"""Run a long core job (training, inference) in a spawned worker process.

TensorFlow >= 2.20 and napari's OpenGL canvas cannot live in one process (their
bundled LLVMs clash and segfault), and ``fork`` after Qt or TensorFlow started
threads is unsafe. So jobs run in a process started with the ``spawn`` context:
a fresh interpreter that imports only the job's module. Events travel back
through a queue; a ``multiprocessing.Event`` asks the job to stop between tiles.
This module is the caller's side (:class:`Job`, :func:`run_job`); what runs in
the worker process is in :mod:`._job_worker` (its :func:`resolve_target` and
:func:`run_inline` are re-exported here).

This module never imports TensorFlow (the widgets import it in napari's
process).

Examples
--------
>>> job = run_job("napari_gigapixel.core.inference:predict", cfg)  # doctest: +SKIP
>>> for event in job.events():  # doctest: +SKIP
...     print(event)
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import multiprocessing.spawn as mp_spawn
import pickle
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from ._job_worker import _worker_main
from ._job_worker import resolve_target as resolve_target
from ._job_worker import run_inline as run_inline
from .errors import GigapixelError
from .events import Finished

#: How long ``Job.events()`` blocks on the queue before it checks that the
#: worker is still alive (seconds).
POLL_SECONDS = 0.2
#: A worker that has not said "started" after this many seconds is stuck in its
#: start-up (an interpreter that cannot import the package, a blocked import):
#: it is terminated and reported. Start-up before the job's own imports
#: (TensorFlow comes later) takes about a second.
START_TIMEOUT = 60.0

_MAIN_GUARD_HINT = (
    "If you start jobs from your own script, put that code under "
    "'if __name__ == \"__main__\":' (spawned workers import the script again) and "
    "give the job a target in an importable module, not in the script."
)


class JobFailed(GigapixelError):
    """The worker raised an unexpected error or died.

    ``details`` holds the worker's traceback text (empty when it died without
    one, e.g. killed for memory).
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def _rebuild_error(mod: str, name: str, msg: str, tb: str) -> GigapixelError:
    """Re-create a worker's GigapixelError with its own class when importable."""
    try:
        obj: Any = importlib.import_module(mod)
        for part in name.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, type) and issubclass(obj, GigapixelError):
            try:
                err = obj(msg)
            except TypeError:  # a subclass with a different constructor
                err = obj.__new__(obj)
                GigapixelError.__init__(err, msg)
            err.details = tb  # type: ignore[attr-defined]
            return err
    except Exception:  # noqa: BLE001 - fall back to the base class below
        pass
    return JobFailed(msg, tb)


@contextlib.contextmanager
def _without_main_reimport(target: str):
    """Spawn without re-running the caller's ``__main__`` script in the worker.

    ``spawn`` normally imports the parent's main script again in the child, so
    a script without an ``if __name__ == "__main__":`` guard starts itself
    recursively (or, with a viewer, blocks the worker forever). Job targets
    live in importable modules and configurations hold plain data, so the
    worker never needs the script: the preparation data that tells the child
    to re-import it is dropped. A target inside ``__main__`` keeps the default.
    """
    if target.partition(":")[0] == "__main__":
        yield
        return
    original = mp_spawn.get_preparation_data

    def preparation_data(name: str) -> dict[str, Any]:
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    with _SPAWN_LOCK:
        mp_spawn.get_preparation_data = preparation_data
        try:
            yield
        finally:
            mp_spawn.get_preparation_data = original


_SPAWN_LOCK = threading.Lock()


class Job:
    """A job running in a spawned process. Create it with :func:`run_job`."""

    def __init__(self, target: str, config: Any, *, grace: float = 10.0) -> None:
        ctx = mp.get_context("spawn")
        self.target = target
        self.grace = float(grace)
        try:
            payload = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - any pickling failure is the caller's input
            raise GigapixelError(
                f"the job {target}: its configuration cannot be sent to a worker process "
                f"({type(exc).__name__}: {exc}). Give paths, plain values and numpy arrays."
            ) from None
        self._queue = ctx.Queue()
        self._stop = ctx.Event()
        self._stop_requested_at: float | None = None
        self._terminated = False
        self._finished = False
        self._started = False
        self._spawned_at = time.monotonic()
        self._process = ctx.Process(
            target=_worker_main,
            args=(target, payload, self._queue, self._stop),
            name=f"napari-gigapixel job {target}",
            daemon=True,
        )
        try:
            with _without_main_reimport(target):
                self._process.start()
        except Exception as exc:  # noqa: BLE001 - e.g. no more processes, bootstrapping
            first = " ".join(str(exc).split())  # one line
            raise JobFailed(
                f"could not start a worker process for {target} ({type(exc).__name__}: "
                f"{first}). {_MAIN_GUARD_HINT}"
            ) from exc
        self._killer: threading.Thread | None = None

    # -- state ---------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """True while the worker process runs."""
        return self._process.is_alive()

    @property
    def pid(self) -> int | None:
        """Process id of the worker."""
        return self._process.pid

    @property
    def exitcode(self) -> int | None:
        """The worker's exit code (None while it runs; negative: killed by a signal)."""
        return self._process.exitcode

    @property
    def stop_requested(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    # -- control -------------------------------------------------------------
    def stop(self, wait: bool = False) -> None:
        """Ask the job to stop between tiles; terminate it after ``grace`` seconds.

        Parameters
        ----------
        wait
            Block until the worker has ended (at most about ``grace`` seconds
            plus the time to kill it). The default returns at once, so a GUI
            thread never blocks; a background thread enforces the grace period.
        """
        if not self._stop.is_set():
            self._stop.set()
            self._stop_requested_at = time.monotonic()
            self._killer = threading.Thread(
                target=self._terminate_after_grace, name="job-grace", daemon=True
            )
            self._killer.start()
        if wait and self._killer is not None:
            self._killer.join()

    def _terminate_after_grace(self) -> None:
        # Wait on the sentinel, never join() here: two threads reaping one
        # child race in waitpid, and the loser reads the exit code as None.
        sentinel = self._process.sentinel
        if not mp_connection.wait([sentinel], self.grace):
            self._terminated = True
            self._process.terminate()
            if not mp_connection.wait([sentinel], 5.0):  # SIGTERM ignored
                self._process.kill()

    def join(self, timeout: float | None = None) -> int | None:
        """Wait for the worker to end; return its exit code (None if still running)."""
        self._process.join(timeout)
        return self._process.exitcode

    # -- events --------------------------------------------------------------
    def events(self) -> Iterator[Any]:
        """Relay the worker's events in the caller, in order.

        Blocks with a short timeout so that a dead worker is noticed.

        Raises
        ------
        GigapixelError
            The worker's own ``GigapixelError`` subclass (same class, same
            message) when the job raised one.
        JobFailed
            Any other error in the worker (traceback text in ``.details``), or
            a worker that died without reporting (killed, out of memory).
        """
        while not self._finished:
            try:
                kind, payload = self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self._process.is_alive():
                    if not self._started and time.monotonic() - self._spawned_at > START_TIMEOUT:
                        self._finished = True
                        self._process.kill()
                        self._process.join(5.0)
                        raise JobFailed(
                            f"the worker process of {self.target} did not start within "
                            f"{START_TIMEOUT:g} s and was stopped. {_MAIN_GUARD_HINT}"
                        ) from None
                    continue
                # Dead: drain what the pipe may still hold, then report.
                try:
                    kind, payload = self._queue.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    self._finished = True
                    yield from self._dead_worker()
                    return
            if kind == "started":
                self._started = True
            elif kind == "event":
                yield payload
            elif kind == "done":
                self._finished = True
            elif kind == "gigapixel_error":
                self._finished = True
                raise _rebuild_error(*payload)
            else:  # "error"
                self._finished = True
                message, tb = payload
                raise JobFailed(f"the job {self.target} failed: {message}", tb)
        self._process.join(self.grace)

    def _dead_worker(self) -> Iterator[Any]:
        self._process.join(1.0)
        code = self._process.exitcode
        if not self._started and not self._stop.is_set():
            raise JobFailed(
                f"the worker process of {self.target} failed to start (exit code {code}); "
                f"its error is printed above on standard error. {_MAIN_GUARD_HINT}"
            )
        if self._stop.is_set() and (self._terminated or code in (0, None) or (code or 0) < 0):
            # We asked it to stop and it ended (or we terminated it after grace).
            yield Finished(result={"terminated": self._terminated}, stopped=True)
            return
        if code is not None and code < 0:
            how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        raise JobFailed(
            f"the worker process of {self.target} died ({how}) before finishing, "
            "likely out of memory. Lower the memory budget (memory_gb) or the tile "
            "size, or close other programs, and try again."
        )

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.alive:
            self.stop(wait=True)


def run_job(target: str, config: Any, *, grace: float = 10.0) -> Job:
    """Start ``target(config, stop)`` in a spawned worker process.

    Parameters
    ----------
    target
        ``"package.module:function"`` naming a generator function called as
        ``fn(config, stop)``; it yields the events of :mod:`.events` and polls
        ``stop_requested(stop)`` between tiles.
    config
        Picklable configuration (paths and plain values; small arrays are fine).
    grace
        Seconds :meth:`Job.stop` waits for a cooperative stop before it
        terminates the worker.

    Returns
    -------
    Job
        Iterate ``job.events()`` to relay events and errors.
    """
    if not isinstance(target, str):
        raise GigapixelError(
            f"job target must be a 'package.module:function' string, not {target!r}; "
            "a spawned process cannot receive a function object defined in __main__."
        )
    return Job(target, config, grace=grace)
