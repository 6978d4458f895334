"""Drain room: push a spool left on disk into InfluxDB (``mbostream storage drain``).

It runs the sink's own delivery over the spool, with no feed: the same ordered, checkpointed,
concurrent drain that a starting server performs, sending the stored blocks as they are (nothing
is compressed again). It stops when the spool is empty, or when no stretch could be written for
``stall_timeout`` seconds (database unreachable or refusing). A spool left by a version that
stored plain line protocol is converted to blocks when it is opened (see :mod:`~mbostream.storage.spool`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Final

from mbostream.errors import ConfigError
from mbostream.storage.delivery import delivery_for
from mbostream.storage.metrics import StorageMetrics
from mbostream.storage.settings import DEFAULT_STALL_TIMEOUT_SECONDS, StorageSettings
from mbostream.storage.spool import Spool

log = logging.getLogger(__name__)

POLL_SECONDS: Final = 0.1


@dataclass(frozen=True, slots=True)
class DrainReport:
    """Outcome of one :func:`drain_spool`."""

    #: True when the spool is empty.
    complete: bool
    points_written: int
    points_rejected: int
    #: Bytes still in the spool.
    bytes_left: int
    seconds: float


def drain_spool(settings: StorageSettings, *, stall_timeout: float = DEFAULT_STALL_TIMEOUT_SECONDS) -> DrainReport:
    """Writes everything in ``settings.spool_dir`` to the configured database, in order.

    Raises
    ------
    ConfigError
        No database is configured.
    SpoolLockedError
        A running server (or another drain) holds the spool.
    SpoolError
        The spool directory cannot be used.
    """
    if not settings.database_configured:
        raise ConfigError("INFLUX_URL", "a database is needed to drain the spool")
    started = time.monotonic()
    metrics = StorageMetrics()
    spool = Spool(settings.spool_dir, segment_bytes=settings.segment_bytes)
    spool.open()
    delivery = delivery_for(settings, spool, metrics)
    try:
        log.info("draining spool", extra={"spool_dir": str(settings.spool_dir), "pending_bytes": spool.pending_bytes()})
        delivery.start()
        last_checkpoint, last_progress = spool.checkpoint, time.monotonic()
        while not delivery.idle():
            time.sleep(POLL_SECONDS)
            checkpoint = spool.checkpoint
            if checkpoint != last_checkpoint:
                last_checkpoint, last_progress = checkpoint, time.monotonic()
            elif time.monotonic() - last_progress > stall_timeout:
                log.error("no progress for %.0fs; giving up (the spool keeps the rest)", stall_timeout)
                break
    finally:
        delivery.close(timeout=0)
        left = spool.pending_bytes()
        spool.close()
    return DrainReport(
        complete=left == 0,
        points_written=metrics.get("points_written_total"),
        points_rejected=metrics.get("points_rejected_total"),
        bytes_left=left,
        seconds=time.monotonic() - started,
    )
