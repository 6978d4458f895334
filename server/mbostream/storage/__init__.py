"""Storage: the feed persisted to InfluxDB, through a durable on-disk spool.

Public API: :class:`StorageSettings` (one frozen config, ``from_env``), :class:`StorageSink`
(a subscriber of the fan-out hub: ``start``/``offer``/``stop``), :class:`StorageMetrics`, the
error tree of :mod:`mbostream.storage.errors`, and :func:`drain_spool` behind
``mbostream storage drain``. The schema is documented in :mod:`mbostream.storage.schema` and
``docs/storage.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: Where each exported name lives. They are imported on first use (PEP 562), not with the package:
#: every ``mbostream`` command imports :mod:`mbostream.storage.settings` (through the config), and
#: the sink's chain is for the commands that store.
_EXPORTS: dict[str, str] = {
    "DrainReport": "drain",
    "drain_spool": "drain",
    "BlockError": "errors",
    "DatabaseRefusedError": "errors",
    "DatabaseUnavailableError": "errors",
    "PointsRejectedError": "errors",
    "SpoolError": "errors",
    "SpoolLockedError": "errors",
    "StorageError": "errors",
    "WriteError": "errors",
    "StorageMetrics": "metrics",
    "StorageSettings": "settings",
    "StorageSink": "sink",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


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
