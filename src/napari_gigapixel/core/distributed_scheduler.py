"""The dask scheduler address, checked and reached: one set of words for every command.

``train --scheduler`` and ``predict --scheduler`` take the same value and fail
the same way: a value that is no address (:func:`check_scheduler_address`),
and a scheduler that cannot be reached (:func:`check_scheduler_reachable`,
:func:`connect`), said in one line with the address and what to do.

The reachability check is a plain TCP connection with a short timeout, made
before any model loads: a refused connection fails at once and a silent host
within :data:`PROBE_TIMEOUT`, instead of after dask's own connect timeout
(30 s of retries). A real cluster answers it at once; the dask client then
connects with its usual, longer timeout, so a busy scheduler is not refused.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from .errors import GigapixelError

#: Seconds the TCP check waits for a scheduler that does not answer at all.
PROBE_TIMEOUT = 5.0
#: Seconds the dask client waits for the scheduler's handshake once it answers.
CONNECT_TIMEOUT = 30.0
#: Address schemes the TCP check applies to (in-process and UCX ones are not TCP).
_TCP_SCHEMES = ("tcp", "tls")


class SchedulerError(GigapixelError):
    """A ``--scheduler`` value that is not an address, or a scheduler out of reach."""


def check_scheduler_address(address: object, error: type[GigapixelError] = SchedulerError) -> str:
    """Return ``address`` as a string when it is a dask.distributed address.

    Parameters
    ----------
    address
        The ``scheduler`` value (``tcp://host:8786``, ``tls://...``,
        ``inproc://...``).
    error
        The class raised (each config keeps its own error type).

    Raises
    ------
    GigapixelError
        (``error``) Anything without ``://``, e.g. ``processes`` or a bare host.
    """
    if "://" not in str(address):
        raise error(
            f"scheduler must be a dask.distributed address like tcp://host:8786, not {address!r}."
        )
    return str(address)


def unreachable(address: str, cause: object) -> str:
    """The one line for a scheduler that cannot be reached: address, cause, what to do."""
    return (
        f"{address}: cannot reach the dask scheduler ({cause}); start it "
        "(dask scheduler / dask worker) or check the address."
    )


def check_scheduler_reachable(
    address: str,
    timeout: float = PROBE_TIMEOUT,
    error: type[GigapixelError] = SchedulerError,
) -> None:
    """Open and close a TCP connection to a ``tcp://``/``tls://`` scheduler.

    Other schemes (``inproc://``, ``ucx://``) are left to the dask client.

    Raises
    ------
    GigapixelError
        (``error``) The host is unknown, refuses the connection, or does not
        answer within ``timeout`` seconds; the message is :func:`unreachable`'s.
    """
    parts = urlsplit(str(address))
    if parts.scheme not in _TCP_SCHEMES:
        return
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # a port that is not a number
        raise error(unreachable(address, exc)) from None
    if not host or port is None:
        raise error(unreachable(address, "no host:port in the address"))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except TimeoutError:
        raise error(unreachable(address, f"no answer within {timeout:g} s")) from None
    except OSError as exc:
        raise error(unreachable(address, exc.strerror or exc)) from None


def connect(
    address: str,
    timeout: float = CONNECT_TIMEOUT,
    error: type[GigapixelError] = SchedulerError,
):
    """A ``distributed.Client`` for ``address`` (not the default client).

    Checks the address and that it answers (:func:`check_scheduler_reachable`)
    first, so an unreachable scheduler fails in seconds with one line.

    Raises
    ------
    GigapixelError
        (``error``) Not an address, or the scheduler cannot be reached.
    """
    check_scheduler_reachable(check_scheduler_address(address, error), error=error)
    try:
        from distributed import Client
    except ImportError as exc:  # pragma: no cover - distributed ships with the extras
        raise error(
            "a dask scheduler needs the 'distributed' package: pip install distributed."
        ) from exc
    try:
        return Client(address, set_as_default=False, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise error(unreachable(address, exc)) from exc
