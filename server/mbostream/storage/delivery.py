"""Delivery room: chunks of line protocol into the database, in order, live or through the spool.

A chunk is one block (:mod:`mbostream.storage.blocks`): lines compressed once, where they were
made. The same bytes wait in memory, go to the spool, and are sent. Concatenated blocks are one
gzip body, so a request carries up to ``read_bytes`` of them: consecutive waiting chunks when
live, a stretch of the spool when draining. The size of a request does not depend on where the
blocks were cut.

Two modes, switched under one lock:

``live``
    Chunks wait in memory (at most ``max_pending_bytes``) and ``concurrency`` worker threads write
    them, several requests in flight: with one at a time the engine idles while a response and the
    next request travel (InfluxDB 1.6 here: ~150k points/s with one, ~200k with two or three).
``spooling``
    The database failed, refused, or fell behind: every chunk is appended to the spool instead.
    The workers drain the spool from its checkpoint, in order, acknowledging a stretch only once
    every stretch before it is written; after a failure they all pause (exponential backoff with
    jitter) and resume from the checkpoint. When the spool is empty and nothing is in flight,
    live mode resumes.

Entering ``spooling`` first spills, in feed order, the chunks in flight (copies: if such a write
then succeeds, the drain sends the same points again, which rewrites them identically), then the
waiting ones; new chunks go behind them. So the spool holds the feed in order, nothing is dropped,
and nothing changes by being written twice. Without a database there are no workers and every
chunk goes to the spool.

Blocking work runs on threads, not on the event loop: HTTP through the synchronous
``influxdb-client`` write service, fsync through the spool. The client's own batching API was not
used: it reports a batch's final failure only to a callback, after its own retries, which leaves
no way to keep a failed batch in order ahead of newer ones, nor to checkpoint the spool.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from mbostream.storage.errors import (
    DatabaseRefusedError,
    DatabaseUnavailableError,
    WriteError,
)
from mbostream.storage.metrics import StorageMetrics
from mbostream.storage.pipeline import lower_priority
from mbostream.storage.settings import StorageSettings
from mbostream.storage.spool import Spool, SpoolPosition
from mbostream.storage.writer import InfluxWriter

log = logging.getLogger(__name__)

#: Longest wait of an idle worker before it looks at the state again.
IDLE_WAIT_SECONDS: Final = 0.5
#: Longest wait for the workers to exit once closed (they may be inside a request).
JOIN_SECONDS: Final = 2.0
#: Bytes of spool read per drain request, per point of ``batch_points``, so that a request carries
#: about ``batch_points`` points. Blocks of the CLX5 sample's lines at level 1 (ISA-L) hold ~29
#: bytes per point (256 bytes of line protocol with ``mbo``, 305 without, compressed 8.9-10x); a
#: little more, so that a full block of ``batch_points`` points fits in one read.
SPOOL_READ_BYTES_PER_POINT: Final = 32
#: While writes keep failing, the failure is logged again this often.
FAILURE_LOG_INTERVAL_SECONDS: Final = 60.0


@dataclass(slots=True)
class Chunk:
    """One block of formatted lines on its way to the database."""

    seq: int
    payload: bytes
    points: int
    #: Also appended to the spool (while its write was in flight).
    spilled: bool = False


@dataclass(slots=True)
class _LiveWork:
    """Consecutive waiting chunks, written as one request."""

    chunks: list[Chunk]


@dataclass(slots=True)
class _Stretch:
    """A stretch of the spool handed to a worker."""

    end: SpoolPosition
    generation: int
    done: bool = False


@dataclass(slots=True)
class _SpoolWork:
    stretch: _Stretch
    data: bytes
    lines: int


@dataclass(slots=True)
class _Failure:
    error: WriteError
    at: float = field(default_factory=time.monotonic)


class Delivery:
    """Gets chunks into the database through ``writer``, or into ``spool`` when it cannot.

    Parameters
    ----------
    spool
        An open spool (its leftovers are drained first).
    writer
        None when no database is configured: everything goes to the spool.
    max_pending_bytes
        Bytes of blocks waiting in memory before chunks go to the spool instead.
    read_bytes
        Size of one request: the stretches (whole blocks) read from the spool, and the most
        consecutive waiting chunks sent together (a larger chunk goes alone).
    concurrency
        Worker threads (requests in flight).
    metrics
        Where spooled points and spool drains are counted.
    """

    def __init__(
        self,
        spool: Spool,
        writer: InfluxWriter | None,
        *,
        max_pending_bytes: int,
        read_bytes: int,
        concurrency: int,
        metrics: StorageMetrics,
        max_spool_bytes: int = 0,
    ) -> None:
        self._spool = spool
        self._max_spool_bytes = max_spool_bytes
        self._last_full_log = 0.0
        self._writer = writer
        self._max_pending_bytes = max_pending_bytes
        self._read_bytes = read_bytes
        self._concurrency = concurrency
        self._metrics = metrics
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._live: deque[Chunk] = deque()
        self._live_bytes = 0
        self._in_flight: dict[int, Chunk] = {}
        self._spooling = writer is None or spool.pending_bytes() > 0
        self._stretches: deque[_Stretch] = deque()
        self._cursor: SpoolPosition | None = None
        self._generation = 0
        self._failures = 0
        self._last_failure_log = 0.0
        self._paused_until = 0.0
        self._closed = False
        self._workers: list[threading.Thread] = []

    # -- producer side ----------------------------------------------------------------------------
    def start(self) -> None:
        """Starts the workers (none without a database)."""
        if self._writer is None:
            return
        for i in range(self._concurrency):
            worker = threading.Thread(target=self._work, name=f"mbostream-storage-write-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def submit(self, payload: bytes, points: int) -> None:
        """Takes a chunk: one block of ``points`` lines. Raises SpoolError only if the spool cannot be written."""
        chunk = Chunk(next(self._seq), payload, points)
        with self._cond:
            if self._writer is None or self._spooling or self._closed:
                self._append([chunk])
            elif self._live_bytes + len(payload) > self._max_pending_bytes:
                self._spill("the database is not keeping up", [chunk])
            else:
                self._live.append(chunk)
                self._live_bytes += len(payload)
            self._cond.notify_all()

    def idle(self) -> bool:
        """True when nothing waits in memory, nothing is in flight, and the spool is drained."""
        with self._cond:
            return not self._live and not self._in_flight and not self._spooling

    def save(self, timeout: float, reason: str = "not written in time") -> None:
        """Writes what waits in memory within ``timeout`` and spools the rest: everything submitted
        before the call is then in the database or in the spool. The workers go on."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._unsaved() and time.monotonic() < deadline:
                self._cond.wait(min(IDLE_WAIT_SECONDS, max(0.0, deadline - time.monotonic())))
            if self._unsaved():
                self._spill(reason, [])

    def close(self, timeout: float) -> None:
        """Writes what waits in memory within ``timeout``, spools the rest, stops the workers."""
        deadline = time.monotonic() + timeout
        self.save(timeout, "shutting down")
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.close()
        for worker in self._workers:
            # A worker inside a request returns when it ends; its chunk is already in the spool.
            worker.join(min(JOIN_SECONDS, max(0.1, deadline - time.monotonic())))

    def _unsaved(self) -> bool:
        return bool(self._live) or any(not c.spilled for c in self._in_flight.values())

    # -- under the lock ---------------------------------------------------------------------------
    def _append(self, chunks: list[Chunk]) -> None:
        size = sum(len(c.payload) for c in chunks)
        if self._max_spool_bytes and self._spool.pending_bytes() + size > self._max_spool_bytes:
            dropped = sum(c.points for c in chunks)
            self._metrics.add("points_dropped_spool_full_total", dropped)
            now = time.monotonic()
            if now - self._last_full_log >= FAILURE_LOG_INTERVAL_SECONDS:
                self._last_full_log = now
                log.error(
                    "spool full: points dropped (raise MBOSTREAM_SPOOL_MAX_BYTES, or drain the spool)",
                    extra={"dropped_points": dropped, "spool_max_bytes": self._max_spool_bytes},
                )
            return
        self._spool.append([c.payload for c in chunks])
        self._metrics.add("points_spooled_total", sum(c.points for c in chunks))

    def _spill(self, reason: str, extra: list[Chunk]) -> None:
        flying = sorted((c for c in self._in_flight.values() if not c.spilled), key=lambda c: c.seq)
        chunks = [*flying, *self._live, *extra]
        self._append(chunks)
        for c in flying:
            c.spilled = True
        self._live.clear()
        self._live_bytes = 0
        if not self._spooling:
            self._spooling = True
            self._cursor = None
            log.warning("storage is spooling to disk: %s", reason, extra={"spool_dir": str(self._spool.directory)})

    def _pause(self, failure: _Failure) -> None:
        assert self._writer is not None
        retry_after = failure.error.retry_after if isinstance(failure.error, DatabaseUnavailableError) else None
        delay = self._writer.backoff(min(self._failures, 30), retry_after=retry_after)
        self._failures += 1
        self._paused_until = max(self._paused_until, failure.at + delay)
        self._metrics.add("write_retries_total")
        # Refusals (token, org, bucket) need a person: ERROR. Each streak is logged at its start,
        # then once a minute while it lasts.
        if self._failures == 1 or failure.at - self._last_failure_log >= FAILURE_LOG_INTERVAL_SECONDS:
            self._last_failure_log = failure.at
            level = logging.ERROR if isinstance(failure.error, DatabaseRefusedError) else logging.WARNING
            log.log(
                level,
                "InfluxDB write failed (%s); data is kept in the spool; next attempt in %.2fs",
                failure.error,
                delay,
                extra={"failures": self._failures, "status": failure.error.status},
            )

    def _take(self) -> _LiveWork | _SpoolWork | None:
        while not self._closed:
            now = time.monotonic()
            if now < self._paused_until:
                self._cond.wait(min(IDLE_WAIT_SECONDS, self._paused_until - now))
                continue
            if self._spooling:
                work = self._next_stretch()
                if work is not None:
                    return work
                if not self._stretches:
                    self._spooling = False
                    self._cursor = None
                    self._metrics.add("spool_drains_total")
                    log.info("spool drained; writing live again")
                    continue
            elif self._live:
                chunks = [self._live.popleft()]
                size = len(chunks[0].payload)
                while self._live and size + len(self._live[0].payload) <= self._read_bytes:
                    chunks.append(self._live.popleft())
                    size += len(chunks[-1].payload)
                self._live_bytes -= size
                for chunk in chunks:
                    self._in_flight[chunk.seq] = chunk
                return _LiveWork(chunks)
            self._cond.wait(IDLE_WAIT_SECONDS)
        return None

    def _next_stretch(self) -> _SpoolWork | None:
        read = self._spool.read(self._cursor or self._spool.checkpoint, self._read_bytes)
        if read is None:
            return None
        self._cursor = read.end
        stretch = _Stretch(read.end, self._generation)
        self._stretches.append(stretch)
        return _SpoolWork(stretch, read.data, read.lines)

    # -- workers ----------------------------------------------------------------------------------
    def _work(self) -> None:
        assert self._writer is not None
        lower_priority()  # the replay comes first when both want a core
        while True:
            with self._cond:
                work = self._take()
            if work is None:
                return
            failure: _Failure | None = None
            try:
                if isinstance(work, _LiveWork):
                    chunks = work.chunks
                    payload = chunks[0].payload if len(chunks) == 1 else b"".join(c.payload for c in chunks)
                    self._writer.write(payload, sum(c.points for c in chunks))
                else:
                    self._writer.write(work.data, work.lines, retries=0)
            except (DatabaseUnavailableError, DatabaseRefusedError) as exc:
                failure = _Failure(exc)
            except Exception as exc:  # never let a worker die: keep the data, log, back off
                log.exception("unexpected error while writing to InfluxDB")
                failure = _Failure(DatabaseUnavailableError(None, f"unexpected {type(exc).__name__}: {exc}"))
            with self._cond:
                try:
                    if isinstance(work, _LiveWork):
                        self._finish_live(work.chunks, failure)
                    else:
                        self._finish_stretch(work.stretch, failure)
                except Exception:
                    log.exception("storage bookkeeping failed; the spool keeps the data for the next run")
                self._cond.notify_all()

    def _finish_live(self, chunks: list[Chunk], failure: _Failure | None) -> None:
        if failure is None:
            self._failures = 0
        elif not all(c.spilled for c in chunks) and not self._closed:
            self._spill(f"InfluxDB write failed: {failure.error}", [])
            self._pause(failure)
        for chunk in chunks:
            self._in_flight.pop(chunk.seq, None)

    def _finish_stretch(self, stretch: _Stretch, failure: _Failure | None) -> None:
        if self._closed or stretch.generation != self._generation:
            return
        if failure is not None:
            # Start again from the checkpoint; stretches written meanwhile are simply re-sent.
            self._generation += 1
            self._stretches.clear()
            self._cursor = None
            self._pause(failure)
            return
        self._failures = 0
        stretch.done = True
        last = None
        while self._stretches and self._stretches[0].done:
            last = self._stretches.popleft()
        if last is not None:
            self._spool.ack(last.end)


def delivery_for(settings: StorageSettings, spool: Spool, metrics: StorageMetrics) -> Delivery:
    """The delivery of a sink or a drain: writing to the configured database, or spool only."""
    writer = None
    if settings.url is not None and settings.org is not None and settings.bucket is not None and settings.token is not None:
        writer = InfluxWriter(
            url=settings.url,
            org=settings.org,
            bucket=settings.bucket,
            token=settings.token,
            ca_file=settings.ca_file,
            timeout=settings.write_timeout,
            gzip_level=settings.gzip_level,
            max_retries=settings.max_retries,
            retry_initial=settings.retry_initial,
            retry_max=settings.retry_max,
            metrics=metrics,
            set_aside=spool.reject,
        )
    return Delivery(
        spool,
        writer,
        max_pending_bytes=settings.max_pending_bytes,
        read_bytes=settings.batch_points * SPOOL_READ_BYTES_PER_POINT,
        concurrency=settings.write_concurrency,
        metrics=metrics,
        max_spool_bytes=settings.spool_max_bytes,
    )
