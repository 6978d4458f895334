"""Bus errors (a branch of the tree in :mod:`mbostream.errors`)."""

from __future__ import annotations

from mbostream.errors import MbostreamError


class BusError(MbostreamError):
    """The bus cannot be used: the NATS server cannot be reached, or a stream is not what we wrote."""


class WriterConflictError(BusError):
    """Another replayer writes to the record stream: this one's publishes are refused (single writer)."""


class BusGapError(BusError):
    """The record stream skipped replay positions a gateway had not applied (retention dropped them)."""

    def __init__(self, first_missing: int, last_missing: int) -> None:
        super().__init__(f"the record stream skipped positions {first_missing}..{last_missing}")
        self.first_missing = first_missing
        self.last_missing = last_missing
