"""Storage: the feed persisted to InfluxDB, through a durable on-disk spool.

Public API: :class:`StorageSettings` (one frozen config, ``from_env``), :class:`StorageSink`
(a subscriber of the fan-out hub: ``start``/``offer``/``stop``), :class:`StorageMetrics`, the
error tree of :mod:`mbostream.storage.errors`, and :func:`drain_spool` behind
``mbostream storage drain``. The schema is documented in :mod:`mbostream.storage.schema` and
``docs/storage.md``.
"""

from mbostream.storage.drain import DrainReport, drain_spool
from mbostream.storage.errors import (
    BlockError,
    DatabaseRefusedError,
    DatabaseUnavailableError,
    PointsRejectedError,
    SpoolError,
    SpoolLockedError,
    StorageError,
    WriteError,
)
from mbostream.storage.metrics import StorageMetrics
from mbostream.storage.settings import StorageSettings
from mbostream.storage.sink import StorageSink

__all__ = [
    "BlockError",
    "DatabaseRefusedError",
    "DatabaseUnavailableError",
    "DrainReport",
    "PointsRejectedError",
    "SpoolError",
    "SpoolLockedError",
    "StorageError",
    "StorageMetrics",
    "StorageSettings",
    "StorageSink",
    "WriteError",
    "drain_spool",
]
