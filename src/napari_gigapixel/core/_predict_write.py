"""Writing a prediction's stores: the chunk writes, their progress, the finishing passes.

:func:`.inference.predict` builds the model's dask graph and the empty stores;
here each output chunk is thresholded and written into both stores as its own
task (:func:`chunk_writes`), the tasks run on dask's threaded scheduler or on
a ``dask.distributed`` cluster while progress is relayed chunk by chunk and a
stop request aborts between chunks (:func:`iter_compute`), and then the mask
is cleaned, the pyramids are built and, if asked, the probability's upper
levels are dropped (:func:`iter_finish`).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from .events import JobStopped, Message, Progress, StopFlag, stop_requested
from .mask_clean import CleanPixels, CleanSettings, clean_zarr_array
from .prediction_store import build_pyramids, remove_tree
from .tiled_model import ModelRef, _warm_worker


def chunk_writes(prob: Any, prob_arr: Any, mask_arr: Any, threshold: float, abort: Any) -> Any:
    """The dask array (one count per output chunk) whose computing writes both stores.

    zarr chunks = the regular dask chunks of ``prob``, so no two tasks share a
    zarr chunk. ``abort`` (a ``threading.Event``, None on a cluster) is
    checked by each task before and after its model run.
    """
    return prob.map_blocks(
        _write_block,
        prob_arr=prob_arr,
        mask_arr=mask_arr,
        threshold=threshold,
        abort=abort,
        chunks=((1,) * prob.numblocks[0], (1,) * prob.numblocks[1]),
        dtype=np.int64,
        name=f"gigapixel-write-{uuid.uuid4().hex}",
    )


def iter_compute(
    counts: Any,
    total: int,
    scheduler: str | None,
    abort: threading.Event,
    stop: StopFlag | None,
    model_ref: ModelRef | None = None,
    tta: str = "none",
) -> Iterator[Progress]:
    """Compute the chunk writes, yielding ``Progress("chunks", n, total)``.

    A stop request sets ``abort`` (the running tasks see it) and ends in
    ``JobStopped``. Returns ``(tissue pixels, compute seconds)``; on a cluster
    the seconds start once every worker has loaded the model (``model_ref``)
    and traced its graph for ``tta``.
    """
    gen = _compute_with_progress(counts, total, scheduler, abort, model_ref, tta)
    t_compute = time.perf_counter()
    while True:
        if stop_requested(stop):
            abort.set()
        try:
            n = next(gen)
        except StopIteration as fin:
            tissue = int(np.asarray(fin.value).sum())
            break
        if n == 0:  # the workers are ready: time the prediction from here
            t_compute = time.perf_counter()
            continue
        yield Progress("chunks", n, total)
        if stop_requested(stop):
            abort.set()
    t_compute = time.perf_counter() - t_compute
    if stop_requested(stop):
        raise JobStopped()
    return tissue, t_compute


def iter_finish(
    tmp: str,
    tissue: int,
    clean_px: CleanPixels,
    cleaning: CleanSettings,
    write_probability: bool,
    stop: StopFlag | None,
) -> Iterator[Message]:
    """Clean the written mask, build the pyramids, drop unwanted probability levels.

    ``clean_px`` is the clean-up in output pixels (``cleaning`` in um, for
    the message). Returns ``(tissue pixels, pyramid downsamples)``: the
    tissue count after the clean-up when it ran.
    """
    if clean_px.active:
        yield Message(f"cleaning the mask ({cleaning.describe()})")
        level0 = os.path.join(tmp, "labels", "mask", "0")
        tissue = yield from clean_zarr_array(level0, clean_px, stop)
    yield Message("building pyramids")
    downs = build_pyramids(tmp, stop)
    if not write_probability:
        _drop_probability_levels(tmp, len(downs))
    return tissue, downs


def _write_block(prob, block_info=None, *, prob_arr, mask_arr, threshold, abort):
    """Write one output chunk of both pyramids; return its tissue pixel count."""
    if abort is not None and abort.is_set():
        raise JobStopped()
    (y0, y1), (x0, x1) = block_info[0]["array-location"]
    mask = (prob >= threshold).astype(np.uint8)
    if abort is not None and abort.is_set():  # checked again: the model took a while
        raise JobStopped()
    prob_arr[y0:y1, x0:x1] = np.rint(prob * 255.0).astype(np.uint8)
    mask_arr[y0:y1, x0:x1] = mask
    return np.full((1, 1), int(mask.sum()), dtype=np.int64)


def _compute_with_progress(
    target: Any,
    total: int,
    scheduler: str | None,
    abort: Any,
    model_ref: ModelRef | None = None,
    tta: str = "none",
):
    """Run ``target`` (dask array of per-chunk counts) in a thread; yield chunks done.

    The generator ends by returning the computed array (``StopIteration.value``).
    """
    done_q: queue.SimpleQueue = queue.SimpleQueue()
    result: dict[str, Any] = {}

    if scheduler and scheduler.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
        from distributed import Client, as_completed, futures_of

        client = Client(scheduler, set_as_default=False)
        try:
            if model_ref is not None:  # import TF and load the model on every worker first
                client.run(_warm_worker, model_ref, tta)
            yield 0  # the timed part starts here
            persisted = client.persist(target)
            futures = futures_of(persisted)
            n = 0
            for _ in as_completed(futures, loop=client.loop):
                if abort.is_set():
                    client.cancel(futures)
                    raise JobStopped()
                n += 1
                yield n
            return client.compute(persisted).result()
        finally:
            client.close()

    from dask.callbacks import Callback

    name = target.name

    class _Count(Callback):
        def _posttask(self, key, res, dsk, state, id):  # noqa: A002 - dask's signature
            if isinstance(key, tuple) and key[0] == name:
                done_q.put(1)

    def work() -> None:
        try:
            with _Count():
                get = "sync" if scheduler in ("sync", "synchronous") else "threads"
                result["value"] = target.compute(scheduler=get)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the generator
            result["error"] = exc

    thread = threading.Thread(target=work, name="gigapixel-predict", daemon=True)
    thread.start()
    n = 0
    while thread.is_alive() or not done_q.empty():
        try:
            done_q.get(timeout=0.2)
        except queue.Empty:
            continue
        n += 1
        yield n
    thread.join()
    if "error" in result:
        raise result["error"]
    if n < total:  # dask may fuse or rename a lone chunk's key: all are done now
        yield total
    return result["value"]


def _drop_probability_levels(path: str, n_levels: int) -> None:
    """Keep only level 0 of the probability (``write_probability=False``)."""
    for lev in range(1, n_levels):
        remove_tree(os.path.join(path, str(lev)))
    import zarr

    root = zarr.open_group(path, mode="r+", zarr_format=2)
    ms = root.attrs["multiscales"]
    ms[0]["datasets"] = ms[0]["datasets"][:1]
    root.attrs["multiscales"] = ms
