"""Core error room: the errors the core itself raises (reading data files, looking up books).

Their tree, with everything the server adds below :class:`MbostreamError`, is documented in one
place: ``mbostream.errors`` (the server package), which re-exports these.

::

    MbostreamError                      base of every deliberate mbostream error
    ├── DataFileError                   a data file cannot be used (carries ``path``)
    │   ├── DataFileNotFoundError       the path does not exist or is not a file
    │   ├── UnreadableFileError         the file exists but cannot be read (permissions, I/O)
    │   ├── NotDbnError                 the bytes are not DBN (nor zstd-compressed DBN)
    │   ├── TruncatedFileError          the file ends inside its metadata or inside a record
    │   ├── CorruptFileError            the records' framing is broken (a bad record length)
    │   └── WrongSchemaError            a DBN file of another schema (e.g. MBP-10 given for MBO)
    └── UnknownInstrumentError          no book for the requested instrument (carries ``selector``)
"""

from __future__ import annotations

from typing import Final

#: Longest message an error shows (gRPC status details, one stderr line).
MAX_MESSAGE_CHARS: Final = 1000


class MbostreamError(Exception):
    """Base class of every deliberate mbostream error."""

    def __str__(self) -> str:
        text = super().__str__()
        if len(text) <= MAX_MESSAGE_CHARS:
            return text
        tail = f"… [{len(text):,} characters in all]"
        return text[: MAX_MESSAGE_CHARS - len(tail)] + tail


class DataFileError(MbostreamError):
    """A data file cannot be used."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class DataFileNotFoundError(DataFileError):
    """The path does not exist or is not a regular file."""


class UnreadableFileError(DataFileError):
    """The file exists but the process cannot read it (permissions, an I/O error)."""


class CorruptFileError(DataFileError):
    """The records' framing is broken: a record length that cannot be (e.g. 0, or too short)."""


class NotDbnError(DataFileError):
    """The file is neither DBN nor zstd-compressed DBN."""


class TruncatedFileError(DataFileError):
    """The file ends inside its metadata or inside a record."""


class WrongSchemaError(DataFileError):
    """The DBN file holds another schema than the one required."""

    def __init__(self, path: str, schema: str, expected: str = "mbo") -> None:
        super().__init__(path, f"schema is {schema!r}, expected {expected!r}")
        self.schema = schema
        self.expected = expected


class UnknownInstrumentError(MbostreamError):
    """No book exists for the requested instrument."""

    def __init__(self, selector: str) -> None:
        super().__init__(f"unknown instrument {selector}")
        self.selector = selector
