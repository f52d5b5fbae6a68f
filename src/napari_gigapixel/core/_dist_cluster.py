"""The cluster side of distributed training: connecting, waiting on tasks, failing cleanly.

:func:`_gather` is the one place a step waits on the cluster: it relays
progress, sees a stop request within :data:`POLL_SECONDS`, and turns lost
workers or worker-side errors into :class:`DistributedTrainError` (the last
checkpoint stays as written). :mod:`.distributed_train` re-exports the names.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import GigapixelError
from .events import JobStopped, Progress, StopFlag, stop_requested

#: Times a task is retried (on another worker) before the step fails.
RETRIES = 2
#: Seconds to wait for the scheduler.
CONNECT_TIMEOUT = 30.0
#: How often a step checks the stop flag and the workers while it waits.
POLL_SECONDS = 0.5
#: A step fails after the cluster had no worker this long.
NO_WORKER_SECONDS = 60.0


class DistributedTrainError(GigapixelError):
    """A distributed step that cannot complete (scheduler unreachable, workers lost)."""


#: Times a whole step is run again when the scheduler cancelled one of its tasks.
STEP_RETRIES = 1


def cancelled_by_cluster(exc: BaseException) -> bool:
    """Whether a failed step's cause is a task the scheduler cancelled rather than ran
    and failed: with a worker restarted mid-step, dask sometimes forgets a task that
    was moving ("cancelled for reason: already forgotten") instead of rerunning it,
    or loses the scattered run spec's last copy with the worker ("lost
    dependencies": the trainer scatters it again). Nothing was applied, so the
    step can simply run again (the same weights and draws: the same result)."""
    import asyncio
    import concurrent.futures

    kinds: tuple[type, ...] = (asyncio.CancelledError, concurrent.futures.CancelledError)
    try:
        from distributed.client import FutureCancelledError

        kinds += (FutureCancelledError,)
    except ImportError:  # older distributed: a plain CancelledError
        pass
    return isinstance(exc.__cause__, kinds)


@dataclass
class InputFailure:
    """A worker task's :class:`GigapixelError` (a bad slide, mask or ROI), returned.

    Returned rather than raised: it fails the same on every worker, so dask
    must not retry it (decoding a large slide again); :func:`_gather` raises it.
    """

    error: GigapixelError


def _connect(address: str):
    # The same check, words and quick TCP probe as ``predict --scheduler``.
    from .distributed_scheduler import connect

    return connect(address, timeout=CONNECT_TIMEOUT, error=DistributedTrainError)


def _workers(client) -> list[str]:
    workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        raise DistributedTrainError(
            "the dask cluster has no workers; start some with `dask worker SCHEDULER`."
        )
    return workers


def _gather(
    client,
    futures: list,
    stop: StopFlag | None,
    done: list[int],
    total: int,
    *,
    stage: str = "tiles",
    label: str = "",
):
    """Results of ``futures`` in order; yields Progress as they complete.

    Polls every :data:`POLL_SECONDS`: checks the stop flag, and fails the step
    when the cluster has had no worker for :data:`NO_WORKER_SECONDS` (tasks
    would otherwise wait forever).
    """
    pending = list(futures)
    waited = 0.0
    without_workers = 0.0
    try:
        while pending:
            if stop_requested(stop):
                client.cancel(futures)
                raise JobStopped()
            newly = [f for f in pending if f.done()]
            if not newly:
                time.sleep(0.02)
                waited += 0.02
                if waited >= POLL_SECONDS:
                    waited = 0.0
                    if client.scheduler_info()["workers"]:
                        without_workers = 0.0
                    else:
                        without_workers += POLL_SECONDS
                    if without_workers >= NO_WORKER_SECONDS:
                        raise DistributedTrainError(
                            f"the dask cluster has had no worker for {without_workers:.0f} s "
                            "in the middle of a step; the last checkpoint is unchanged. "
                            "Start workers, then resume from the checkpoint."
                        )
                continue
            pending = [f for f in pending if not f.done()]
            for _ in newly:
                done[0] += 1
                yield Progress(stage, done[0], total, label)
        results = client.gather(futures)
        for r in results:
            if isinstance(r, InputFailure):
                raise r.error
        return results
    except (JobStopped, GigapixelError):
        raise
    except Exception as exc:  # KilledWorker, CommClosedError, worker-side bugs
        client.cancel(futures)
        raise DistributedTrainError(
            f"a distributed training step failed ({type(exc).__name__}: {exc}); the last "
            "checkpoint is unchanged. Check the workers' logs and memory, then resume "
            "from the checkpoint."
        ) from exc
