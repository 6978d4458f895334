"""Sink room: the storage subscriber of the fan-out hub, from offered batches to InfluxDB.

::

    replay loop ──offer(batch)──▶ pipeline (native thread) ──blocks──▶ delivery ──▶ InfluxDB /api/v2/write
     (asyncio)    (references,   format, cut, gzip; no GIL              │  └─▶ spool (when down / behind,
                   depth table)                                        │       or no database)
                                                                       └── write threads drain the spool

:meth:`StorageSink.offer` runs on the replay's event loop and does two cheap things: at each depth
interval of feed time it takes a depth table of every book (books are only consistent between
replay steps, on the loop; a native call, and at most 2% of the loop's time goes to them), and it
queues the step's buffers (:mod:`mbostream.storage.pipeline`). Everything else (formatting,
compression, HTTP, fsync) runs on threads, so a slow or dead database never slows the replay. :meth:`StorageSink.stop` follows the shutdown order
stop accepting → format what is queued → write what is held within the timeout → spool the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from mbostream_core import _engine
from mbostream.feed import Batch
from mbostream.storage.delivery import Delivery, delivery_for
from mbostream.storage.metrics import StorageMetrics
from mbostream.storage.pipeline import Pipeline
from mbostream.storage.settings import StorageSettings
from mbostream.storage.spool import Spool

log = logging.getLogger(__name__)

#: Largest share of the event loop's time spent building depth views.
DEPTH_LOOP_SHARE: Final = 0.02
#: Log a failing depth source or offer at most this often (seconds).
ERROR_LOG_INTERVAL_SECONDS: Final = 10.0


class StorageSink:
    """Persists the replayed feed to InfluxDB (and its spool): one more subscriber of the hub.

    Parameters
    ----------
    settings
        What to store and where.
    depth_source
        Returns the depth table of every book (``Market.depth_table(settings.depth_levels)``);
        called on the event loop, once per depth interval of feed time.
    symbols
        instrument_id → symbol, for the ``instrument`` tag; called from the formatting thread the
        first time an instrument is seen, so it must be thread-safe (a dict lookup is).
    """

    def __init__(
        self,
        settings: StorageSettings,
        *,
        depth_source: Callable[[], _engine.DepthTable],
        symbols: Callable[[int], str],
    ) -> None:
        self.settings = settings
        self.metrics = StorageMetrics()
        self._depth_source = depth_source
        self._depth_interval_ns = settings.depth_interval_ns
        self._depth_bucket: int | None = None
        self._depth_not_before = 0.0
        self._spool = Spool(settings.spool_dir, segment_bytes=settings.segment_bytes, sync_interval=settings.spool_sync_interval)
        self._delivery: Delivery | None = None
        self._pipeline = Pipeline(settings, symbols, self._hand_on, self._on_idle, self.metrics)
        self._max_backlog_bytes = settings.max_backlog_bytes
        self._started = False
        self._stopped = False
        self._offered = 0
        self._last_error_log = 0.0
        self.metrics.watch("batches_offered_total", lambda: self._offered)
        self.metrics.watch("spool_bytes", self._spool_bytes)
        self.metrics.watch("spool_oldest_age_seconds", self._spool_age)

    # -- life cycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Opens the spool and starts the threads; leftovers of an earlier run drain in the background.

        Raises
        ------
        SpoolLockedError
            Another process uses the spool directory.
        SpoolError
            The spool directory cannot be used.
        """
        if self._started:
            return
        await asyncio.to_thread(self._spool.open)
        s = self.settings
        self._delivery = delivery_for(s, self._spool, self.metrics)
        self._delivery.start()
        self._pipeline.start()
        self._started = True
        log.info(
            "storage sink started",
            extra={
                "database": s.url or "none (spool only)",
                "bucket": s.bucket,
                "spool_dir": str(s.spool_dir),
                "spool_pending_bytes": self._spool.pending_bytes(),
                "store_mbo": s.store_mbo,
                "depth_interval_s": s.depth_interval,
            },
        )

    def offer(self, batch: Batch) -> None:
        """Takes one replay step; returns at once, never blocks, never raises.

        Call it on the replay's event loop right after the batch's records were applied, so the
        depth views it may take are those of that moment.
        """
        try:
            if self._stopped:
                self.metrics.add("batches_dropped_total")
                self._log_error("storage sink got a batch after stop; it is not stored")
                return
            self._offered += 1
            if self._depth_interval_ns and time.perf_counter() >= self._depth_not_before and len(batch.events) and not batch.snapshot:
                self._sample_depth(int(batch.events["ts_event"][-1]))
            self._pipeline.put(batch)
        except Exception:  # noqa: BLE001 - offer never raises into the replay loop; logged
            self._log_error("storage sink could not take a batch", exc_info=True)

    def behind(self) -> bool:
        """True while more than ``max_backlog_bytes`` of replay steps wait to be formatted.

        The replay then waits (see :meth:`mbostream.hub.Hub.wait_ready`): storage that cannot
        keep up with a ``--max`` replay holds it back rather than growing memory or dropping points.
        """
        return self._pipeline.backlog_bytes() > self._max_backlog_bytes

    def _sample_depth(self, ts_event: int) -> None:
        """Queues the depth table of every book when ``ts_event`` entered a new depth interval.

        Tables are taken on the loop, so their cost is bounded: after a sample that took ``t``
        seconds, the next waits at least ``t / DEPTH_LOOP_SHARE``. A replay at real-time speed
        never notices; one many times faster gets fewer samples rather than a slower feed.
        """
        bucket = ts_event // self._depth_interval_ns
        if bucket == self._depth_bucket:
            return
        now = time.perf_counter()
        self._depth_bucket = bucket
        try:
            table = self._depth_source()
        except Exception:  # noqa: BLE001 - a failing depth source costs one sample, not the feed
            self._log_error("depth source failed; this depth sample is skipped", exc_info=True)
            return
        finally:
            self._depth_not_before = now + (time.perf_counter() - now) / DEPTH_LOOP_SHARE
        self._pipeline.put_depth(table)

    async def stop(self, timeout: float) -> None:
        """Stops taking batches, stores what is queued, and spools what the database did not take.

        ``timeout`` bounds the wait for the database; formatting and spooling what is held always
        complete, so nothing offered before the call is lost.
        """
        if self._stopped:
            return
        self._stopped = True
        await self._deliver_queued(timeout, stopping=True)
        self._spool.close()
        log.info("storage sink stopped", extra={key: value for key, value in self.metrics.snapshot().items() if key.endswith("_total")})

    async def flush(self, timeout: float) -> None:
        """Makes everything offered so far durable as :meth:`stop` does, and goes on: every queued
        step is formatted and handed on (the formatter starts afresh, as a new sink's would), what
        the database has not taken within ``timeout`` is spooled, and the spool is synced. The
        spool, the delivery and its threads stay. Do not offer while it runs (the bus store's
        rounds call it between fetches)."""
        await self._deliver_queued(timeout, stopping=False)
        await asyncio.to_thread(self._spool.sync)

    async def _deliver_queued(self, timeout: float, *, stopping: bool) -> None:
        """Formats and hands on every queued step, then writes what is held within ``timeout`` and
        spools the rest; the formatter and the delivery are closed when ``stopping``, else the
        formatter starts afresh and the delivery goes on."""
        deadline = time.monotonic() + timeout
        if not self._started:
            await self.start()
        finish = self._pipeline.close if stopping else self._pipeline.restart
        while not await asyncio.to_thread(finish, max(timeout, 1.0)):
            log.warning("storage is still formatting queued batches%s; waiting", " at shutdown" if stopping else "")
        assert self._delivery is not None
        deliver = self._delivery.close if stopping else self._delivery.save
        await asyncio.to_thread(deliver, max(0.0, deadline - time.monotonic()))

    # -- helpers ----------------------------------------------------------------------------------
    def _hand_on(self, payload: bytes, points: int) -> None:
        assert self._delivery is not None
        self._delivery.submit(payload, points)

    def _on_idle(self) -> None:
        if self._spool.is_open:
            self._spool.sync(only_if_due=True)

    def _spool_bytes(self) -> float:
        return self._spool.pending_bytes() if self._spool.is_open else 0

    def _spool_age(self) -> float:
        return self._spool.oldest_age() if self._spool.is_open else 0.0

    def _log_error(self, message: str, *, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_INTERVAL_SECONDS:
            self._last_error_log = now
            log.error(message, exc_info=exc_info)
