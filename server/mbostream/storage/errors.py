"""Storage error room: what persistence raises, as a subtree of :class:`mbostream.errors.MbostreamError`.

::

    MbostreamError
    └── StorageError                    persistence cannot proceed as asked
        ├── SpoolError                  the spool directory cannot be used (carries ``path``)
        │   └── SpoolLockedError        another process holds the spool's lock
        ├── BlockError                  bytes that should be blocks are not (carries ``offset``)
        └── WriteError                  the database did not take a write (carries ``status``)
            ├── DatabaseUnavailableError  429, 5xx, timeout or no connection: retry later
            ├── DatabaseRefusedError      401, 403, 404: token, org or bucket wrong: keep data, retry later
            └── PointsRejectedError       400, 413, 422: the points themselves (carries ``line``)

Only :class:`SpoolError` leaves the storage package (from ``StorageSink.start`` and the drain
command); the write errors are handled inside the write path, which retries, spools, or logs and
sets aside the offending line, and a :class:`BlockError` (a corrupt block, found when a refused
request is narrowed down) is logged there with the points it loses.
"""

from __future__ import annotations

from mbostream.errors import MbostreamError


class StorageError(MbostreamError):
    """Persistence cannot proceed as asked."""


class SpoolError(StorageError):
    """The spool directory cannot be used."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"spool {path}: {reason}")
        self.path = path
        self.reason = reason


class SpoolLockedError(SpoolError):
    """Another process (a running server or a drain) holds the spool."""


class BlockError(StorageError):
    """Bytes that should be whole blocks (:mod:`mbostream.storage.blocks`) are not.

    Attributes
    ----------
    offset
        Where in the bytes given the problem starts.
    reason
        What is wrong there.
    """

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"not a valid block at byte {offset}: {reason}")
        self.offset = offset
        self.reason = reason


class WriteError(StorageError):
    """The database did not take a write.

    Attributes
    ----------
    status
        HTTP status, or None when no response arrived (connection refused, timeout).
    message
        The database's error message, or the transport error.
    """

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status is not None else message)
        self.status = status
        self.message = message


class DatabaseUnavailableError(WriteError):
    """Transient: 429, 5xx, timeout or no connection. The same write may succeed later.

    Attributes
    ----------
    retry_after
        Seconds the server asked to wait (``Retry-After``), or None.
    """

    def __init__(self, status: int | None, message: str, retry_after: float | None = None) -> None:
        super().__init__(status, message)
        self.retry_after = retry_after


class DatabaseRefusedError(WriteError):
    """401, 403 or 404: the token, org or bucket is wrong. Data is kept until that is fixed."""


class PointsRejectedError(WriteError):
    """400, 413 or 422: the database refused the points themselves.

    Attributes
    ----------
    line
        The offending line when the batch was narrowed down to one, else None.
    """

    def __init__(self, status: int | None, message: str, line: bytes | None = None) -> None:
        super().__init__(status, message)
        self.line = line
