"""Pipeline room: replay steps become gzip blocks of line protocol on a native thread, off the GIL.

::

    event loop ── put(batch) / put_depth(table) ──▶ native thread ──▶ blocks ──▶ hand-off thread ──▶ delivery
                  (references only, no copy)          format, cut,               (this module:       (spool, HTTP)
                                                      gzip (no GIL)              symbols, spool sync)

:meth:`Pipeline.put` runs on the replay's event loop and only moves references to the step's
record and event buffers into the native pipeline (``mbostream_core._engine.Pipeline``). Its thread
formats every measurement (:mod:`mbostream.storage.schema`), cuts blocks of about
``batch_points`` lines (or older than ``flush_interval`` seconds) and compresses each into a
self-describing gzip member (:mod:`mbostream.storage.blocks`), without the GIL. This module's
hand-off thread wakes when blocks are ready (a few times a second at full speed), hands them to
the delivery, resolves the symbols of instruments seen for the first time, and does the spool's
due fsync when idle. So storage costs the replay one native call per step, and the GIL a few short
hand-offs per second rather than work per step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Final

from mbostream_core import _engine
from mbostream.feed import Batch
from mbostream.storage.errors import SpoolError
from mbostream.storage.lineproto import buffers, instrument_tags
from mbostream.storage.metrics import StorageMetrics
from mbostream.storage.settings import StorageSettings

log = logging.getLogger(__name__)

#: Longest wait of the hand-off thread for a block before it does its housekeeping (spool fsync).
TAKE_SECONDS: Final = 0.1
#: Pause before handing on a block again after the spool refused it (disk full, I/O error).
HANDOFF_RETRY_SECONDS: Final = 1.0
#: Attempts to hand on a block once stopping, before it is given up (and logged as lost).
HANDOFF_ATTEMPTS_WHEN_STOPPING: Final = 3


def lower_priority() -> None:
    """Lowers the calling thread's priority by the native ``STORAGE_NICE`` (Linux: nice is per thread).

    Storage threads yield a core to the replay when both want one, and catch up from their queue;
    the native pipeline thread does the same, with the same function. Best effort.
    """
    _engine.lower_thread_priority()


class Pipeline:
    """The formatting pipeline of one sink and its hand-off thread.

    Parameters
    ----------
    settings
        ``store_mbo``, ``depth_levels``, ``batch_points``, ``flush_interval`` and ``gzip_level``.
    symbols
        instrument_id → symbol (the ``instrument`` tag), called from the hand-off thread the first
        time an instrument is seen; an empty or failing lookup falls back to the id's digits.
    hand_on
        Receives each block as ``(gzip member, points)`` (the delivery's ``submit``).
    on_idle
        Called when no block arrived for a while (the spool's due fsync).
    metrics
        Where formatted points and the queue are read from.
    """

    def __init__(
        self,
        settings: StorageSettings,
        symbols: Callable[[int], str],
        hand_on: Callable[[bytes, int], None],
        on_idle: Callable[[], None],
        metrics: StorageMetrics,
    ) -> None:
        self._settings = settings
        self._native = self._new_native()
        self._symbols = symbols
        self._hand_on = hand_on
        self._on_idle = on_idle
        self._thread = self._new_thread()
        self._stopping = False
        #: Points formatted and skipped by the formatters a :meth:`restart` replaced.
        self._formatted_before = 0
        self._skipped_before = 0
        metrics.watch("points_formatted_total", lambda: self._formatted_before + self._native.formatted)
        metrics.watch("format_queue_batches", self.backlog)
        metrics.watch("format_queue_bytes", self.backlog_bytes)
        metrics.watch("points_skipped_total", lambda: self._skipped_before + self._native.skipped)

    def _new_native(self) -> _engine.Pipeline:
        s = self._settings
        return _engine.Pipeline(
            mbo=s.store_mbo, depth_levels=s.depth_levels, batch_points=s.batch_points, flush_interval=s.flush_interval, level=s.gzip_level
        )

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, name="mbostream-storage-handoff", daemon=True)

    # -- the event loop's side --------------------------------------------------------------------
    def put(self, batch: Batch) -> None:
        """Queues one replay step; never blocks. Synthetic snapshot steps are not stored."""
        if batch.snapshot or not len(batch.records):
            return
        self._native.offer(*buffers(batch))

    def put_depth(self, table: _engine.DepthTable) -> None:
        """Queues one depth sample (a ``Market.depth_table``); never blocks."""
        self._native.offer_depth(table)

    def backlog(self) -> int:
        """Steps and samples queued and not yet formatted."""
        return int(self._native.backlog)

    def backlog_bytes(self) -> int:
        """Bytes held in memory: record and event buffers not yet formatted, blocks not yet taken."""
        return int(self._native.backlog_bytes)

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float) -> bool:
        """Formats everything queued and hands on the last block; False if still busy at ``timeout``.

        Call again to keep waiting.
        """
        self._stopping = True
        self._native.close()
        if self._thread.ident is None:
            self._thread.start()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def restart(self, timeout: float) -> bool:
        """:meth:`close`, then a fresh formatter takes the next steps (counters carry on): once it
        returns True, every step put before it has been handed on. False if still busy at
        ``timeout``: call again. Nothing may be put while it runs."""
        if not self.close(timeout):
            return False
        self._formatted_before += self._native.formatted
        self._skipped_before += self._native.skipped
        self._native = self._new_native()
        self._thread = self._new_thread()
        self._stopping = False
        self._thread.start()
        return True

    # -- the hand-off thread ----------------------------------------------------------------------
    def _run(self) -> None:
        lower_priority()
        while True:
            blocks, missing, finished = self._native.take(TAKE_SECONDS)
            if missing:
                self._resolve(missing)
            for block, points in blocks:
                self._hand(block, points)
            if finished:
                break
            if not blocks:
                self._idle()
        self._native.join()

    def _resolve(self, instrument_ids: Iterable[int]) -> None:
        self._native.set_symbols(instrument_tags(self._symbols, instrument_ids))

    def _idle(self) -> None:
        try:
            self._on_idle()
        except Exception:
            log.exception("storage housekeeping failed")

    def _hand(self, block: bytes, points: int) -> None:
        attempt = 0
        while True:
            try:
                self._hand_on(block, points)
                return
            except SpoolError:
                attempt += 1
                if self._stopping and attempt >= HANDOFF_ATTEMPTS_WHEN_STOPPING:
                    log.critical("the spool refused %d points while stopping; they are lost", points, exc_info=True)
                    return
                log.exception("the spool refused %d points; retrying in %.0fs", points, HANDOFF_RETRY_SECONDS)
                time.sleep(HANDOFF_RETRY_SECONDS)
