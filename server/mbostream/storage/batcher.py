"""Batching room: offered batches become write-sized chunks of line protocol, off the event loop.

The sink's :meth:`~mbostream.storage.sink.StorageSink.offer` only puts a reference on this
thread's queue (a ``SimpleQueue``: it never blocks). This thread formats each batch (native code,
GIL released), gathers the lines into chunks of about ``batch_points`` points, and hands a chunk on
when it is full or ``flush_interval`` seconds old.

The thread polls its queue (every 2 ms while batches flow, backing off to 50 ms when idle) rather
than blocking on it: a blocked reader is woken by every ``put``, and that wake-up, with the GIL
hand-over it starts, cost the replay loop ~20 µs per batch (+15% at full speed); polling takes
whatever queued meanwhile in one go, for at most a few milliseconds of storage latency.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from mbostream.feed import Batch
from mbostream.market import BookView
from mbostream.storage import blocks
from mbostream.storage.errors import SpoolError
from mbostream.storage.lineproto import LineFormatter
from mbostream.storage.metrics import StorageMetrics

log = logging.getLogger(__name__)

#: Pause between polls of the queue while batches flow, and its cap while idle.
POLL_SECONDS: Final = 0.002
IDLE_POLL_SECONDS: Final = 0.05
#: Pause before handing on a chunk again after the spool refused it (disk full, I/O error).
HANDOFF_RETRY_SECONDS: Final = 1.0
#: Attempts to hand on a chunk once stopping, before it is given up (and logged as lost).
HANDOFF_ATTEMPTS_WHEN_STOPPING: Final = 3


@dataclass(frozen=True, slots=True)
class DepthSample:
    """Views of every book taken on the event loop when a depth interval was crossed."""

    views: tuple[BookView, ...]


class _Stop:
    """Queue sentinel: format what is queued, hand on the last chunk, exit."""


_STOP: Final = _Stop()


class Batcher:
    """The formatting thread of one sink.

    Parameters
    ----------
    formatter
        Owned by this thread from :meth:`start` on.
    hand_on
        Receives each chunk as ``(block, points)`` (the delivery's ``submit``).
    on_idle
        Called when no work arrived for a while (the spool's due fsync).
    batch_points, flush_interval
        Chunk size target and age limit (seconds).
    metrics
        Where formatted points and errors are counted.
    gzip_level
        Compression level of the blocks (:func:`~mbostream.storage.blocks.encode_block`).
    """

    def __init__(
        self,
        formatter: LineFormatter,
        hand_on: Callable[[bytes, int], None],
        on_idle: Callable[[], None],
        *,
        batch_points: int,
        flush_interval: float,
        metrics: StorageMetrics,
        gzip_level: int = blocks.DEFAULT_LEVEL,
    ) -> None:
        self._formatter = formatter
        self._gzip_level = gzip_level
        self._hand_on = hand_on
        self._on_idle = on_idle
        self._batch_points = batch_points
        self._flush_interval = flush_interval
        self._metrics = metrics
        self._queue: queue.SimpleQueue[Batch | DepthSample | _Stop] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="mbostream-storage-format", daemon=True)
        self._parts: list[bytes] = []
        self._points = 0
        self._oldest = 0.0
        self._stopping = False
        self._stop_requested = False

    def put(self, item: Batch | DepthSample) -> None:
        """Queues a batch or a depth sample; never blocks."""
        self._queue.put(item)

    def backlog(self) -> int:
        """Items queued and not yet formatted."""
        return self._queue.qsize()

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float) -> bool:
        """Formats everything queued and hands on the last chunk; False if still busy at ``timeout``.

        Call again to keep waiting.
        """
        if not self._stop_requested:
            self._stop_requested = True
            self._queue.put(_STOP)
        if self._thread.ident is None:
            self._thread.start()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        pause = POLL_SECONDS
        while True:
            items = self._take_all()
            run: list[Batch] = []
            for item in items:
                if isinstance(item, Batch):
                    run.append(item)
                    continue
                self._format_batches(run)
                run = []
                if isinstance(item, _Stop):
                    self._stopping = True
                    self._flush()
                    return
                self._format_depth(item)
            self._format_batches(run)
            if self._parts and time.monotonic() - self._oldest >= self._flush_interval:
                self._flush()
            if items:
                pause = POLL_SECONDS
            else:
                pause = min(pause * 2, IDLE_POLL_SECONDS)
                self._idle()
            time.sleep(pause)

    def _take_all(self) -> list[Batch | DepthSample | _Stop]:
        items: list[Batch | DepthSample | _Stop] = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def _idle(self) -> None:
        try:
            self._on_idle()
        except Exception:
            log.exception("storage housekeeping failed")

    def _format_batches(self, batches: list[Batch]) -> None:
        if not batches:
            return
        try:
            for text, points in self._formatter.batches(batches, self._batch_points):
                self._add(text, points)
        except Exception:
            self._metrics.add("format_errors_total")
            first, last = batches[0].first_replay_seq, batches[-1].last_replay_seq
            log.exception("could not format replay records %d..%d; they are not stored", first, last)

    def _format_depth(self, sample: DepthSample) -> None:
        try:
            self._add(*self._formatter.depth(sample.views))
        except Exception:
            self._metrics.add("format_errors_total")
            log.exception("could not format a depth sample; it is not stored")

    def _add(self, text: bytes, points: int) -> None:
        if not points:
            return
        self._metrics.add("points_formatted_total", points)
        if self._parts and self._points + points > self._batch_points:
            self._flush()
        if not self._parts:
            self._oldest = time.monotonic()
        self._parts.append(text)
        self._points += points
        if self._points >= self._batch_points:
            self._flush()

    def _flush(self) -> None:
        if not self._parts:
            return
        payload = blocks.encode_block(self._parts[0] if len(self._parts) == 1 else b"".join(self._parts), self._gzip_level)
        points = self._points
        self._parts, self._points = [], 0
        attempt = 0
        while True:
            try:
                self._hand_on(payload, points)
                return
            except SpoolError:
                attempt += 1
                if self._stopping and attempt >= HANDOFF_ATTEMPTS_WHEN_STOPPING:
                    log.critical("the spool refused %d points while stopping; they are lost", points, exc_info=True)
                    return
                log.exception("the spool refused %d points; retrying in %.0fs", points, HANDOFF_RETRY_SECONDS)
                time.sleep(HANDOFF_RETRY_SECONDS)
