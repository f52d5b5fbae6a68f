"""The one base class of errors a user can act on, and turning decoders' errors into it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class GigapixelError(ValueError):
    """Bad input or an unusable file; the message names the file, the cause and the fix.

    The CLI prints these as one line and exits non-zero; the widgets show them
    as napari notifications; the process runner re-raises them in the caller
    with the same class and message.
    """


@contextmanager
def decoding(
    name: str, what: str, fix: str, error: type[GigapixelError] = GigapixelError
) -> Iterator[None]:
    """Turn a decoder's error while reading a file's pixels into one user error.

    Lazy arrays (tifffile's zarr view, OME-Zarr chunks) decode only when a
    window is read, so a truncated or damaged file fails there, with the
    codec's own exception type (deflate, LZW, blosc, a missing chunk key, ...).
    Inside this context that becomes ``error("NAME: cannot read WHAT (...). FIX")``.
    Errors already written for users, a stop, and running out of memory pass
    as they are.
    """
    from .events import JobStopped

    try:
        yield
    except (GigapixelError, JobStopped, MemoryError):
        raise
    except Exception as exc:  # the codec's own error type, whatever the format
        raise error(f"{name}: cannot read {what} ({type(exc).__name__}: {exc}). {fix}") from exc
