"""Predict many slides: one after another here, or one task per slide on a cluster.

A cohort is tens to hundreds of slides. Each slide is one
:func:`.inference.predict` run (tiled, threaded) writing its own OME-Zarr
into an output folder; on a ``dask.distributed`` scheduler each slide is one
task, so the workers share the cohort and keep the model loaded between
slides. A slide that fails (unreadable file, bad region, a worker lost twice)
is reported and does not stop the others; the result lists every slide.

A folder gives the entries named like slides (a file named ``.tif`` that is
not one is a slide that fails, not one quietly left out), less the
predictions and masks in it (an earlier run's ``*_pred.zarr`` beside its
slides is never predicted again). No output may be, hold or lie inside one of
the run's inputs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import GigapixelError
from .events import Finished, JobStopped, Message, Progress, StopFlag, stop_requested

#: Suffixes stripped from a slide's file name to name its prediction.
_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".svs", ".ndpi", ".zarr")
#: Extensions of list files (one slide path a line; ``#`` comments).
LIST_EXTENSIONS = (".txt", ".lst", ".list", ".csv")
#: Names a folder's entry has when it is meant to be a slide (tried, and failing if not).
_SLIDE_NAMES = (".tif", ".tiff", ".svs", ".ndpi", ".zarr")


class SlideListError(GigapixelError):
    """A slide list, folder or output folder that cannot be used."""


def expand_images(items: list[str], skipped: list[str] | None = None) -> list[str]:
    """Slide paths from paths, folders (their slides) and list files.

    Parameters
    ----------
    items
        Slide paths, folders and list files (UTF-8 text, one path a line,
        ``#`` comments; relative paths are relative to the list's folder).
    skipped
        When given, the folder entries left out as predictions or masks are
        appended to it (so a caller can say so).

    Raises
    ------
    SlideListError
        A folder without slides, an empty list, a list that is not UTF-8 text.
    """
    out: list[str] = []
    for item in items:
        p = os.fspath(item)
        if os.path.isdir(p) and not _is_slide_path(p):
            found, left = _folder_slides(p)
            if skipped is not None:
                skipped += left
            if not found:
                extra = f" (only {len(left)} predictions or masks)" if left else ""
                raise SlideListError(f"{p}: this folder holds no slide files{extra}.")
            out += found
        elif os.path.isfile(p) and p.lower().endswith(LIST_EXTENSIONS):
            paths = _read_list(p)
            base = os.path.dirname(os.path.abspath(p))
            out += [q if os.path.isabs(q) else os.path.join(base, q) for q in paths]
        else:
            out.append(p)
    return out


def _is_slide_path(p: str) -> bool:
    from .slide import is_slide_path

    return is_slide_path(p)


def _folder_slides(folder: str) -> tuple[list[str], list[str]]:
    """A folder's slides, and the predictions and masks left out of them."""
    from .preflight import non_slide_kind
    from .slide import OPENSLIDE_EXTENSIONS

    named = _SLIDE_NAMES + OPENSLIDE_EXTENSIONS
    found: list[str] = []
    left: list[str] = []
    for name in sorted(os.listdir(folder)):
        q = os.path.join(folder, name)
        if name.startswith("."):  # .DS_Store, macOS "._a.tif" resource forks
            continue
        # Named like a slide but not one (truncated, a text file): kept, so that
        # it fails as a slide and is reported, rather than quietly left out.
        if not (_is_slide_path(q) or name.lower().endswith(named)):
            continue
        (left if non_slide_kind(q) else found).append(q)
    return found, left


def _read_list(p: str) -> list[str]:
    """The slide paths of a list file (UTF-8 text, a byte-order mark allowed)."""
    try:
        with open(p, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError:
        text = "\0"  # said below, as for a binary file that happens to decode
    if "\0" in text:
        raise SlideListError(
            f"{p}: not a UTF-8 text list of slide paths (one path a line); save it as UTF-8 text."
        )
    lines = [ln.split(",")[0].strip() for ln in text.splitlines()]
    paths = [ln for ln in lines if ln and not ln.startswith("#")]
    if not paths:
        raise SlideListError(f"{p}: the slide list is empty.")
    return paths


def output_paths(images: list[str], out_dir: str) -> list[str]:
    """``out_dir/<slide name>.zarr`` for each slide (numbered when names repeat)."""
    seen: dict[str, int] = {}
    outs = []
    for img in images:
        name = os.path.basename(os.path.normpath(img))
        for suf in _SUFFIXES:
            if name.lower().endswith(suf):
                name = name[: -len(suf)]
                break
        k = seen.get(name, 0)
        seen[name] = k + 1
        outs.append(
            os.path.join(out_dir, f"{name}_pred.zarr" if k == 0 else f"{name}_{k}_pred.zarr")
        )
    return outs


def _predict_slide(cfg: Any) -> dict[str, Any]:
    """One slide, to the end (a worker task: threaded dask inside, never the cluster)."""
    import dask

    from .inference import predict

    with dask.config.set(scheduler="threads"):
        fin = None
        for ev in predict(cfg):
            if isinstance(ev, Finished):
                fin = ev
    return dict(fin.result) if fin is not None else {}


def _failure(image: str, out: str, exc: BaseException) -> dict[str, Any]:
    return {"image": image, "out": out, "ok": False, "error": f"{type(exc).__name__}: {exc}"}


def predict_many(
    base: Any, images: list[str], out_dir: str, stop: StopFlag | None = None
) -> Iterator[Any]:
    """Predict every slide of ``images`` into ``out_dir``; a generator of events.

    Parameters
    ----------
    base
        A :class:`.inference.PredictConfig`: model, threshold, chunk,
        ``overwrite``, ``scheduler`` ... (its ``image`` and ``out`` are
        replaced per slide). With a ``tcp://`` scheduler each slide is one task.
    images
        Slide paths (see :func:`expand_images` for folders and lists).
    out_dir
        Folder for the ``<name>_pred.zarr`` outputs (created).

    Yields
    ------
    Message (one per slide done or failed, ``level="error"`` for failures),
    Progress (stage ``"slides"``) and last ``Finished`` whose result has
    ``slides`` (per slide: ``image``, ``out``, ``ok``, ``error`` or the
    prediction's figures), ``ok`` and ``failed`` counts and ``seconds``.
    """
    from .inference import check_scheduler

    t0 = time.perf_counter()
    if not images:
        raise SlideListError("no slides to predict.")
    if hasattr(base, "clean_settings"):
        base.clean_settings()  # a bad clean-up value fails once, before any slide
    scheduler = check_scheduler(getattr(base, "scheduler", None)) or ""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SlideListError(f"{out_dir}: exists and is not a folder; give an output folder.")
    outs = output_paths(images, out_dir)
    # Before anything is written: one slide's output must not replace another's
    # input (an earlier run's x_pred.zarr given as a slide, a list naming one).
    _check_outputs_apart(outs, [(img, "slide") for img in images] + [(base.model, "model")])
    os.makedirs(out_dir, exist_ok=True)
    # On a cluster the workers need absolute paths; here messages show them as given.
    where = os.path.abspath if "://" in scheduler else os.fspath
    cfgs = [
        dataclasses.replace(base, image=where(img), out=where(o)) for img, o in zip(images, outs)
    ]
    n = len(cfgs)
    yield Message(f"predicting {n} slides into {out_dir}")
    yield Progress("slides", 0, n)
    results: list[dict[str, Any] | None] = [None] * n
    stopped = False
    try:
        if "://" in scheduler:
            yield from _on_cluster(scheduler, cfgs, results, stop)
        else:
            for i, cfg in enumerate(cfgs):
                if stop_requested(stop):
                    raise JobStopped()
                try:
                    res = None
                    for ev in _local(cfg, stop):
                        res = ev
                    results[i] = {"image": cfg.image, "out": cfg.out, "ok": True, **res}
                except JobStopped:
                    raise
                except Exception as exc:  # noqa: BLE001 - reported, the others go on
                    results[i] = _failure(cfg.image, cfg.out, exc)
                yield _report(results[i])
                yield Progress("slides", i + 1, n)
    except JobStopped:
        stopped = True
    done = [r for r in results if r is not None]
    failed = [r for r in done if not r["ok"]]
    result = {
        "slides": done,
        "ok": len(done) - len(failed),
        "failed": len(failed),
        "total": n,
        "seconds": time.perf_counter() - t0,
    }
    yield Finished(result=result, stopped=stopped)


def _check_outputs_apart(outs: list[str], inputs: list[tuple[str, str]]) -> None:
    """:func:`.preflight.check_apart` for every output, resolving each path once."""
    from .preflight import check_apart

    resolved = {Path(os.path.realpath(p)) for p, _ in inputs}
    for o in outs:
        r = Path(os.path.realpath(o))
        # The output is an input, lies inside one, or holds one: let check_apart say which.
        if (
            r in resolved
            or resolved.intersection(r.parents)
            or any(r in q.parents for q in resolved)
        ):
            check_apart(o, inputs)


def _local(cfg: Any, stop: StopFlag | None) -> Iterator[dict[str, Any]]:
    from .inference import predict

    for ev in predict(cfg, stop):
        if isinstance(ev, Finished):
            if ev.stopped:
                raise JobStopped()
            yield dict(ev.result)


def _report(r: dict[str, Any]) -> Message:
    if r["ok"]:
        return Message(f"{r['image']}: wrote {r['out']} ({r.get('mpx_per_s', 0):.1f} Mpx/s)")
    return Message(f"{r['image']}: FAILED: {r['error']}", level="error")


def _on_cluster(address: str, cfgs: list, results: list, stop: StopFlag | None):
    from distributed import as_completed

    from .distributed_scheduler import connect

    client = connect(address)  # one line, in seconds, when it cannot be reached
    try:
        local = [dataclasses.replace(c, scheduler=None) for c in cfgs]
        futs = [client.submit(_predict_slide, c, pure=False, retries=1) for c in local]
        index = {f.key: i for i, f in enumerate(futs)}
        done = 0
        for fut in as_completed(futs, loop=client.loop):
            if stop_requested(stop):
                client.cancel(futs)
                raise JobStopped()
            i = index[fut.key]
            try:
                res = fut.result()
                results[i] = {"image": cfgs[i].image, "out": cfgs[i].out, "ok": True, **res}
            except Exception as exc:  # noqa: BLE001 - reported, the others go on
                results[i] = _failure(cfgs[i].image, cfgs[i].out, exc)
            done += 1
            yield _report(results[i])
            yield Progress("slides", done, len(cfgs))
    finally:
        client.close()
