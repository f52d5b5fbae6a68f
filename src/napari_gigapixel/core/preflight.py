"""Checks made before any compute: inputs readable, outputs writable, room on disk.

Every command and widget calls these before the first tile, so that a run
never fails after minutes of work because of a path: an existing output
without ``overwrite``, a folder that does not exist or cannot be written, a
file where a folder goes (or the reverse), a disk without room, an output that
would replace one of the run's inputs (:func:`check_apart`), and a mask or a
prediction given where a slide goes (:func:`check_slide_input`). OS errors
raised later (a disk that fills up during the run) are turned into the same
one-line form by :func:`os_error_message`.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import GigapixelError


class OutputError(GigapixelError):
    """An output location that cannot be written (the message says which and why)."""


class InputError(GigapixelError):
    """An input path that does not exist or cannot be read."""


#: Keep this much free beyond an output's estimated size (filesystems need slack).
FREE_SPACE_MARGIN = 64 * 2**20


def os_error_message(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """One line for an OS error: the file, then the cause (``strerror``), then a hint."""
    where = os.fspath(path) if path is not None else (exc.filename or "")
    cause = exc.strerror or str(exc)
    hint = {
        errno.ENOSPC: " Free some disk space or write elsewhere.",
        errno.EACCES: " Choose a folder you can write to, or fix its permissions.",
        errno.EPERM: " Choose a folder you can write to, or fix its permissions.",
        errno.EROFS: " The file system is read-only; write elsewhere.",
        errno.EISDIR: " Give a file name, not a folder.",
        errno.ENOTDIR: " A part of the path is a file, not a folder.",
        errno.ENOENT: " Check the path.",
    }.get(exc.errno or 0, "")
    return f"{where}: {cause}.{hint}" if where else f"{cause}.{hint}"


def check_input(path: str | os.PathLike, what: str = "input") -> Path:
    """``path`` exists and can be read; return it as a :class:`~pathlib.Path`.

    Raises
    ------
    InputError
        Missing, or not readable by this user.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such {what} file or folder. Check the path.")
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: the {what} cannot be read (permission denied).")
    return p


def check_output(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    folder: bool = False,
    expected_bytes: int | None = None,
    what: str = "output",
) -> Path:
    """Check that ``path`` can be written, before any compute.

    Parameters
    ----------
    path
        The output (a file, or a folder when ``folder``: zarr stores).
    overwrite
        Whether an existing output may be replaced (it is replaced only when
        the new one is complete; see the writers).
    folder
        The output is a directory (OME-Zarr) rather than a file.
    expected_bytes
        Estimated size: the disk must have this much free (plus a margin).
    what
        Word for messages ("model file", "prediction", ...).

    Raises
    ------
    OutputError
        Exists without ``overwrite``; a file where a folder goes or the
        reverse; parent folder missing or not writable; not enough room.
    """
    p = Path(path)
    if str(path) == "":
        raise OutputError(f"the {what} path is empty; give a file name.")
    if p.exists() or p.is_symlink():
        if not overwrite:
            raise OutputError(f"{p} already exists; pass --overwrite to replace it.")
        if folder and p.is_file():
            raise OutputError(f"{p}: a file is in the way of the {what} folder; remove it.")
        if not folder and p.is_dir():
            raise OutputError(f"{p}: is a folder; the {what} must be a file name.")
    parent = p.absolute().parent
    if not parent.exists():
        raise OutputError(f"{p}: the folder {parent} does not exist; create it first.")
    if not parent.is_dir():
        raise OutputError(f"{p}: {parent} is not a folder.")
    # os.access lies for root and on some network file systems: try for real.
    try:
        fd, probe = tempfile.mkstemp(prefix=".gigapixel-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"{p}: cannot write in {parent} ({exc.strerror or exc}). "
            "Choose a folder you can write to."
        ) from None
    if expected_bytes:
        free = shutil.disk_usage(parent).free
        if free < expected_bytes + FREE_SPACE_MARGIN:
            raise OutputError(
                f"{p}: the {what} needs about {_gib(expected_bytes)} but {parent} has "
                f"{_gib(free)} free. Free some space or write elsewhere."
            )
    return p


def check_apart(out: str | os.PathLike, inputs: Iterable[tuple[str | os.PathLike, str]]) -> None:
    """Refuse an output that is one of the inputs, lies inside one, or holds one.

    Writing an output replaces it whole (with ``overwrite``), so an output that
    is or holds an input deletes that input, and one inside an input (a zarr
    slide's folder) damages it. Paths are compared resolved (``..``, symbolic
    links), and the messages show them as given.

    Parameters
    ----------
    out
        The output path.
    inputs
        ``(path, what)`` pairs, e.g. ``(slide, "slide")``, ``(model, "model")``.

    Raises
    ------
    OutputError
        The output and an input overlap; the message names both.
    """
    o = Path(os.path.realpath(out))
    for path, what in inputs:
        i = Path(os.path.realpath(path))
        if o == i:
            where = f"is the input {what}"
        elif i in o.parents:
            where = f"lies inside the input {what} {os.fspath(path)}"
        elif o in i.parents:
            where = f"holds the input {what} {os.fspath(path)} (replacing it would delete it)"
        else:
            continue
        raise OutputError(f"{os.fspath(out)}: the output {where}; choose another output path.")


#: Grey images whose values all lie in 0..this are label masks, not slides.
_MAX_LABEL_VALUE = 2
#: Side of the window of the smallest level read to tell a mask from a grey slide.
_LABEL_WINDOW = 2048


def non_slide_kind(path: str | os.PathLike) -> str | None:
    """``"prediction"`` or ``"mask"`` when ``path`` holds one rather than a slide, else None.

    A prediction is a store whose metadata records ``"kind": "prediction"``
    (:func:`.prediction_store.is_prediction_path`); a mask is a file whose
    metadata records a mask kind (:func:`.mask_io.write_mask`'s ``dense`` or
    ``scribble``), or a one-channel image whose smallest level holds only label
    values (0-2 in a central window; a grey slide's glass is near white).
    Reads metadata and at most one window; a file that is no image gives None
    (opening it as a slide then says why).
    """
    from .prediction_store import is_prediction_path

    p = os.fspath(path)
    if is_prediction_path(p):
        return "prediction"
    if _stored_mask_kind(p):
        return "mask"
    from .slide import SlideError, open_slide

    try:
        with open_slide(p) as slide:
            if not slide.metadata.get("grayscale"):
                return None
            # The smallest level stored in the file: the ones past it are computed
            # from level 0 (a grey image without a pyramid), which reads it all.
            k = max(0, int(slide.metadata.get("stored_levels", len(slide.levels))) - 1)
            lvl = slide.levels[k]
            h, w = int(lvl.shape[0]), int(lvl.shape[1])
            y0, x0 = max(0, (h - _LABEL_WINDOW) // 2), max(0, (w - _LABEL_WINDOW) // 2)
            win = lvl[y0 : y0 + _LABEL_WINDOW, x0 : x0 + _LABEL_WINDOW, 0]
            top = int(win.max().compute(scheduler="sync"))
    except (SlideError, OSError):
        return None
    return "mask" if top <= _MAX_LABEL_VALUE else None


def _stored_mask_kind(path: str) -> str | None:
    """The mask kind a file's napari-gigapixel metadata records (TIFF or zarr), if any."""
    import json

    from .mask_io import _stored_kind  # the reader's own rule for what a file records

    meta: object = None
    try:
        if os.path.isdir(path):
            meta = json.loads((Path(path) / ".zattrs").read_text()).get("napari_gigapixel")
        elif os.path.isfile(path):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                meta = tif.shaped_metadata[0] if tif.shaped_metadata else None
    except Exception:  # noqa: BLE001 - unreadable metadata: not one of our masks
        return None
    return _stored_kind(meta)


def check_slide_input(path: str | os.PathLike, what: str = "slide") -> None:
    """Refuse a mask or a prediction given where a slide goes (:func:`non_slide_kind`).

    Raises
    ------
    InputError
        ``path`` is a prediction or a mask; the message says which and what to give.
    """
    kind = non_slide_kind(path)
    if kind == "prediction":
        raise InputError(
            f"{os.fspath(path)}: a prediction written by 'napari-gigapixel predict', not a "
            f"{what}; give the slide it was predicted from."
        )
    if kind == "mask":
        raise InputError(
            f"{os.fspath(path)}: a tissue mask (label values), not a {what}; give the slide "
            "it annotates."
        )


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"
