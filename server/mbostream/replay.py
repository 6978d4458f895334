"""Replay room: reads DBN files and feeds them to the market and a publisher as a paced live feed.

Pacing modes: ``rate`` (a fixed number of records per second, token-bucket style, so the achieved
rate over any few seconds is the target), ``speed`` (the recorded ``ts_recv`` gaps divided by a
factor) and ``max`` (as fast as the pipeline allows, yielding to the event loop after every batch).
Records are applied in batches that end at event boundaries (``complete_events``), so whenever this
task yields to the loop every book is consistent and can be read or snapshotted.

With ``loop`` the files restart at the end; before restarting, an ``R`` (clear) record per book is
applied and published, so every replica downstream clears too.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass

import numpy as np

from mbostream_core.dbn import DbnReader
from mbostream.feed import Batch, Publisher
from mbostream_core.market import Market
from mbostream.metrics import METRICS
from mbostream_core.prices import UNDEF_PRICE
from mbostream_core.records import F_LAST, MBO_DTYPE, MBO_LENGTH_WORDS, RTYPE_MBO, concat_records

log = logging.getLogger(__name__)

#: Poll period while a sink (storage) is behind, and how often that wait is logged.
#: While waiting for storage, how often the replay looks for a pause, restart or stop.
_INTERRUPT_CHECK_SECONDS = 0.05
_SINK_WAIT_LOG_SECONDS = 60.0
#: Longest single sleep, so pause/rate changes take effect promptly even in slow ``speed`` replays.
_MAX_SLEEP = 0.25
#: Pacing granularity: records due within this period are released together.
_STEP_SECONDS = 0.002
#: Most pacing credit a rate replay may accumulate, in seconds of records (bounds catch-up bursts).
_MAX_BURST_SECONDS = 0.05


class ReplayState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ReplayStatus:
    """What ``GetStatus`` reports."""

    files: tuple[str, ...]
    state: ReplayState
    mode: str
    target_rate: float
    speed: float
    achieved_rate: float
    records_done: int
    records_total: int | None
    loop: bool
    loops_completed: int
    position: int
    ts_recv: int


class _RateMeter:
    """Records/s over a sliding window of a few seconds."""

    def __init__(self, window: float = 3.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()
        self.total = 0

    def add(self, n: int) -> None:
        now = time.monotonic()
        self.total += n
        self.samples.append((now, self.total))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.popleft()

    def rate(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        if time.monotonic() - t1 > 1.0:
            return 0.0
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def _clear_records(market: Market) -> np.ndarray:
    """One ``R`` record (F_LAST) per book, stamped with the book's last timestamps."""
    keys = market.books()
    out = np.zeros(len(keys), dtype=MBO_DTYPE)
    for row, key in zip(out, keys):
        stats = market.stats(key)
        row["length"], row["rtype"] = MBO_LENGTH_WORDS, RTYPE_MBO
        row["publisher_id"], row["instrument_id"] = key.publisher_id, key.instrument_id
        row["ts_event"] = stats.last_ts_event
        row["ts_recv"] = stats.last_ts_recv
        row["price"] = UNDEF_PRICE
        row["flags"] = F_LAST
        row["action"], row["side"] = b"R", b"N"
    return out


def count_records(path: str) -> int | None:
    """Records in an uncompressed file, from its size; None for compressed files."""
    with DbnReader(path) as reader:
        if reader.info.compressed:
            return None
        header = reader.header_size
    return (os.path.getsize(path) - header) // MBO_DTYPE.itemsize


async def _read_ahead(chunks: Iterator[np.ndarray]) -> AsyncIterator[np.ndarray]:
    """The chunks, each read on a thread while the one before it is applied.

    Reading and decompressing happen off the event loop (both release the GIL), one chunk ahead,
    so the replay does not stop to wait for the disk between chunks.
    """
    pending = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
    try:
        while (chunk := await pending) is not None:
            pending = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
            yield chunk
    finally:
        # Closed early (restart, stop): the read in flight ends before the files are closed. A
        # failure of that read is of no interest any more (its chunk would not be used).
        await asyncio.wait([pending])
        if not pending.cancelled():
            pending.exception()
        if isinstance(chunks, Generator):
            chunks.close()


class Replayer:
    """Drives the replay; control methods are safe to call from RPC handlers on the same loop."""

    def __init__(
        self,
        files: list[str],
        market: Market,
        publisher: Publisher,
        *,
        mode: str,
        rate: float,
        speed: float,
        loop: bool,
        batch_records: int,
    ) -> None:
        self.files = tuple(files)
        self.market = market
        self.publisher = publisher
        #: Replay position of the last record published (0 before the first). Positions go on
        #: across loops and restarts, for the life of the process.
        self.position = 0
        self.mode = mode
        self.rate = rate
        self.speed = speed
        self.loop = loop
        self.batch_records = batch_records
        self.state = ReplayState.RUNNING
        self.loops_completed = 0
        self.records_done = 0
        self.records_total: int | None = None
        self.last_ts_recv = 0
        self.loaded = asyncio.Event()
        self._resume = asyncio.Event()
        self._resume.set()
        self._restart = asyncio.Event()
        self._stopping = False
        self._meter = _RateMeter()
        self._last_sink_wait_log = -_SINK_WAIT_LOG_SECONDS
        self._clock_generation = 0
        self._reset_clock()
        totals = [count_records(p) for p in self.files]
        self.records_total = None if None in totals else sum(t for t in totals if t is not None)

    # -- control ----------------------------------------------------------------------------------
    def status(self) -> ReplayStatus:
        return ReplayStatus(
            files=self.files,
            state=self.state,
            mode=self.mode,
            target_rate=self.rate if self.mode == "rate" else 0.0,
            speed=self.speed,
            achieved_rate=self._meter.rate(),
            records_done=self.records_done,
            records_total=self.records_total,
            loop=self.loop,
            loops_completed=self.loops_completed,
            position=self.position,
            ts_recv=self.last_ts_recv,
        )

    def pause(self) -> None:
        """Pauses a running replay; a no-op otherwise."""
        if self.state is ReplayState.RUNNING:
            self.state = ReplayState.PAUSED
            self._resume.clear()
            log.info("replay paused", extra={"position": self.position})

    def resume(self) -> None:
        """Resumes a paused replay; a no-op otherwise."""
        if self.state is ReplayState.PAUSED:
            self.state = ReplayState.RUNNING
            self._reset_clock()
            self._resume.set()
            log.info("replay resumed", extra={"position": self.position})

    def set_pacing(self, mode: str, *, rate: float | None = None, speed: float | None = None) -> None:
        """Switches pacing; takes effect at the next batch."""
        self.mode = mode
        if rate is not None:
            self.rate = rate
        if speed is not None:
            self.speed = speed
        METRICS.replay_target_rate.set(self.rate if mode == "rate" else 0)
        self._reset_clock()
        log.info("replay pacing changed", extra={"mode": mode, "rate": self.rate, "speed": self.speed})

    def restart(self) -> None:
        """Starts the files over (books are cleared with published ``R`` records)."""
        self._restart.set()
        if self.state in (ReplayState.FINISHED, ReplayState.PAUSED):
            self.state = ReplayState.RUNNING
            self._resume.set()

    def stop(self) -> None:
        self._stopping = True
        self.state = ReplayState.STOPPED
        self._resume.set()
        self._restart.set()

    def _reset_clock(self) -> None:
        """Starts pacing afresh from now (a speed replay re-anchors at its next record).

        Control calls land while :meth:`_budget` sleeps; the new clock generation tells it that its
        pacing arithmetic is stale, so it goes back to the gate instead of mixing two clocks.
        """
        self._t0 = time.monotonic()
        self._released = 0
        self._ts0: int | None = None
        self._clock_generation += 1

    # -- the loop ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Replays until stopped."""
        METRICS.replay_target_rate.set(self.rate if self.mode == "rate" else 0)
        self._reset_clock()
        while not self._stopping:
            self._restart.clear()
            completed = await self._one_pass()
            if self._stopping:
                break
            if completed:
                self.loops_completed += 1
            if completed and not self.loop and not self._restart.is_set():
                self.state = ReplayState.FINISHED
                log.info("replay finished; serving the final books", extra={"position": self.position})
                await self._restart.wait()
                if self._stopping:
                    break
            self._publish(_clear_records(self.market), complete=True)
            self.records_done = 0
            self.state = ReplayState.RUNNING
            self._reset_clock()

    def _chunks(self) -> Generator[np.ndarray, None, None]:
        for path in self.files:
            with DbnReader(path) as reader:
                self.market.symbols.update(reader.info.symbols)
                yield from reader.chunks()

    async def _one_pass(self) -> bool:
        """One pass over the files; False when interrupted by restart or stop."""
        carry: np.ndarray | None = None
        async with contextlib.aclosing(_read_ahead(self._chunks())) as chunks:
            async for chunk in chunks:
                if carry is not None and len(carry):
                    chunk = concat_records([carry, chunk])
                carry = None
                pos = 0
                while pos < len(chunk):
                    if self.market.consistent:
                        # Yield points are only ever between complete events.
                        if not await self._gate():
                            return False
                        n = await self._budget(chunk, pos)
                        if n == 0:
                            continue  # paused, restarted or stopped while waiting: back to the gate
                    else:
                        # Inside an event the last chunk ended in: apply only what completes it (the
                        # engine goes on past one record to the event's end), unpaced. A whole batch
                        # here ran the replay a batch ahead of its pacing at every chunk boundary
                        # (4,096 records: 41 ms at 100k records/s), and the pacing then stopped the
                        # feed as long to catch the clock up (docs/performance.md).
                        n = 1
                    started = time.perf_counter()
                    # Applied on a view from pos: the event rows' indices are then the batch's own
                    # (no copy to rebase them), and the engine may still complete an event past n.
                    rest = chunk[pos:]
                    result = self.market.apply(rest, 0, min(len(rest), n), complete_events=True, books=True)
                    METRICS.apply_seconds.observe(time.perf_counter() - started)
                    if result.end == 0:
                        break
                    self._emit(rest[: result.end], result.events, result.books)
                    pos += result.end
                    if not result.consistent and pos == len(chunk):
                        break
                if pos < len(chunk):
                    carry = chunk[pos:]
        self.loaded.set()
        return True

    def _emit(self, records: np.ndarray, events: np.ndarray, books: list[int] | None = None) -> None:
        batch = Batch(self.position + 1, records, events, time.time_ns(), books=books)
        self.position = batch.last_replay_seq
        self.publisher.publish(batch)
        n = len(records)
        self.last_ts_recv = int(records["ts_recv"][-1])
        self.records_done += n
        self._released += n
        self._meter.add(n)
        METRICS.records_ingested.inc(n)
        METRICS.replay_rate.set(self._meter.rate())
        if not self.loaded.is_set():
            self.loaded.set()

    def _publish(self, records: np.ndarray, complete: bool) -> None:
        if not len(records):
            return
        result = self.market.apply(records, complete_events=complete, books=True)
        self._emit(records, result.events, result.books)

    async def _gate(self) -> bool:
        """Waits while paused; False when a restart or stop interrupts the pass."""
        if self._restart.is_set() or self._stopping:
            return False
        if not self._resume.is_set():
            await self._resume.wait()
        return not (self._restart.is_set() or self._stopping)

    def _interrupted(self) -> bool:
        """True when a pause, restart or stop asks the current step to go back to the gate."""
        return self._restart.is_set() or not self._resume.is_set() or self._stopping

    async def _wait_for_sinks(self) -> None:
        """Waits while a sink (storage) is behind: only a replay faster than it can store gets here."""
        started = time.monotonic()
        if started - self._last_sink_wait_log >= _SINK_WAIT_LOG_SECONDS:
            self._last_sink_wait_log = started
            log.warning("storage is behind the replay; the replay waits for it (see MBOSTREAM_STORAGE_MAX_BACKLOG_BYTES)")
        ready = asyncio.ensure_future(self.publisher.wait_ready())
        try:
            while not ready.done() and not self._interrupted():
                await asyncio.wait({ready}, timeout=_INTERRUPT_CHECK_SECONDS)
        finally:
            ready.cancel()
        METRICS.replay_sink_wait_seconds.inc(time.monotonic() - started)
        if self.mode == "rate":
            self._reset_clock()  # the wait is not credit for a burst afterwards

    async def _budget(self, chunk: np.ndarray, pos: int) -> int:
        """How many records to release now, sleeping first when ahead of the pacing target."""
        # Every step yields to the loop at least once, so subscribers drain between batches.
        await asyncio.sleep(0)
        if self._interrupted():
            return 0
        if self.publisher.backlogged():
            await self._wait_for_sinks()
            return 0  # back to the gate: the state may have changed meanwhile
        if self.mode == "max":
            return self.batch_records
        generation = self._clock_generation
        if self.mode == "rate":
            while True:
                allowed = int(self.rate * (time.monotonic() - self._t0)) - self._released
                burst = max(self.batch_records, int(self.rate * _MAX_BURST_SECONDS))
                if allowed > burst:
                    # Fell behind (start-up, a stall): forget the excess credit instead of bursting.
                    self._t0 += (allowed - burst) / self.rate
                    allowed = burst
                # Release in quanta of a few milliseconds: a step per record would cost more in
                # per-message overhead downstream than the records themselves.
                quantum = max(1, min(self.batch_records, int(self.rate * _STEP_SECONDS)))
                if allowed >= quantum:
                    return min(allowed, self.batch_records)
                await asyncio.sleep(min(_MAX_SLEEP, (quantum - allowed) / self.rate))
                if self._interrupted() or generation != self._clock_generation:
                    return 0
        ts_recv = chunk["ts_recv"]
        if self._ts0 is None:
            self._ts0 = int(ts_recv[pos])
            self._t0 = time.monotonic()
        while True:
            horizon = self._ts0 + int((time.monotonic() - self._t0) * self.speed * 1e9)
            n = int(np.searchsorted(ts_recv[pos : pos + self.batch_records], horizon, side="right"))
            if n:
                return n
            # Sleep to the next record, but at least one step, so bursts go out together.
            wait = (int(ts_recv[pos]) - horizon) / 1e9 / self.speed
            await asyncio.sleep(min(_MAX_SLEEP, max(wait, _STEP_SECONDS)))
            if self._interrupted() or generation != self._clock_generation:
                return 0
