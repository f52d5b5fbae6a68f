"""The worker side of :mod:`.runner`: what runs inside the spawned job process.

:func:`.runner.run_job` starts :func:`_worker_main` in a fresh interpreter
(``spawn``); it imports only this small module (and :mod:`.errors`,
:mod:`.events`), unpickles the configuration, runs the job's generator
(:func:`run_inline`) and puts every event, and any error with its class and
traceback, on the queue the caller reads. Never imports TensorFlow (the job's
own module may).
"""

from __future__ import annotations

import importlib
import os
import pickle
import traceback
from collections.abc import Callable
from typing import Any

from .errors import GigapixelError
from .events import StopFlag


def resolve_target(target: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` and return the function.

    Raises
    ------
    GigapixelError
        When ``target`` is malformed or names nothing importable.
    """
    module_name, sep, func_name = target.partition(":")
    if not sep or not module_name or not func_name:
        raise GigapixelError(f"job target {target!r} must be written 'package.module:function'.")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, func_name)
    except AttributeError:
        raise GigapixelError(
            f"job target {target!r}: module {module_name!r} has no {func_name!r}."
        ) from None


def run_inline(target: str | Callable[..., Any], config: Any, stop: StopFlag | None = None):
    """Run the job's generator in this process (tests, scripts, the CLI).

    Parameters
    ----------
    target
        ``"module:function"`` or the generator function itself.
    config
        Passed to the function as its first argument.
    stop
        Optional stop flag, passed as the second argument.

    Returns
    -------
    Iterator
        The job's events.
    """
    fn = resolve_target(target) if isinstance(target, str) else target
    return fn(config, stop)


def _error_message(exc: BaseException) -> tuple[str, str, str]:
    cls = type(exc)
    return cls.__module__, cls.__qualname__, str(exc)


def _worker_main(target: str, payload: bytes, events: Any, stop: Any) -> None:
    """Body of the spawned process: run the generator, relay events and errors.

    The first message says the process started; the configuration arrives as
    bytes and is unpickled here, so that an unpicklable or un-importable
    configuration is reported through the queue like any other error instead
    of killing the process before it can speak.
    """
    # Before anything imports TensorFlow: keep its C++ logging off the caller's
    # terminal (the worker shares it) but let warnings and errors through.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    events.put(("started", os.getpid()))
    try:
        try:
            config = pickle.loads(payload)
        except Exception as exc:  # noqa: BLE001 - reported to the caller below
            raise GigapixelError(
                f"the worker could not read the job's configuration ({type(exc).__name__}: "
                f"{exc}). Configurations must hold paths, plain values and numpy arrays, "
                "not objects defined in your script."
            ) from exc
        for event in run_inline(target, config, stop):
            events.put(("event", event))
        events.put(("done", None))
    except BaseException as exc:  # noqa: BLE001 - everything must reach the caller
        tb = traceback.format_exc()
        if isinstance(exc, GigapixelError):
            mod, name, msg = _error_message(exc)
            events.put(("gigapixel_error", (mod, name, msg, tb)))
        else:
            events.put(("error", (f"{type(exc).__name__}: {exc}", tb)))
    finally:
        # Let the queue's feeder thread flush before the process exits, or the
        # caller could see a dead worker with its last events still in the pipe.
        events.close()
        events.join_thread()
