"""Checks made before any compute: inputs readable, outputs writable, room on disk.

Every command and widget calls these before the first tile, so that a run
never fails after minutes of work because of a path: an existing output
without ``overwrite``, a folder that does not exist or cannot be written, a
file where a folder goes (or the reverse), a disk without room. OS errors
raised later (a disk that fills up during the run) are turned into the same
one-line form by :func:`os_error_message`.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
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


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"
