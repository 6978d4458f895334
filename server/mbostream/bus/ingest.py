"""The gateway's side of the bus: re-apply the record stream to a local market and hub.

Every record message is applied with the same engine (``Market.apply(records,
complete_events=True)``) and handed to the hub as the same :class:`~mbostream.feed.Batch` the
replayer published (same positions, same ``ts_out``), so resume buffers, StreamEvents positions and
books are identical on every gateway at the same position.

Cold start: from each book's latest snapshot, then the records after the oldest snapshot's
position, skipping per book what its snapshot already reflects (with each book's saved statistics
restored: the books are exact), so a cold start applies at most a snapshot interval of records.
Before the first snapshot round is stored, the stream is applied from position 1 if it still
starts there; otherwise the gateway exits (nothing to build exact books from yet). Health stays
NOT_SERVING until the gateway is at the live edge: it has applied the stream's last message at
start, and then, re-reading the stream's end, is within :data:`LIVE_EDGE_SECONDS` of it. A resume
a little ahead of the applied position waits for it (:meth:`BusFeed.catch_up`). A record at or
below the applied position is a duplicate and dropped.

A skipped position is a gap, and the gateway resyncs in place (:class:`Resync`): the server stops
serving (health NOT_SERVING, every stream ended as a restart ends it), the books are rebuilt in a
fresh market and hub from snapshots taken at or after the gap, exactly as at a cold start, and the
gateway is SERVING again once at the live edge. Counted (``mbostream_bus_gaps``,
``mbostream_bus_resyncs``), one log line. Without a :class:`Resync` the gap stops the feed
(:class:`~mbostream.bus.errors.BusGapError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Final, Protocol

import numpy as np
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from mbostream.bus import codec
from mbostream.bus.errors import BusError, BusGapError
from mbostream.bus.streams import FIRST_SEQ, LAST_SEQ, RECORDS_STREAM, RECORDS_SUBJECT, SNAPSHOTS_STREAM, TS_OUT
from mbostream.errors import CatchingUpError, ReplayPositionError
from mbostream.bus.metrics import DUPLICATES_DROPPED, GAPS, RESYNCS
from mbostream.feed import Batch, Publisher
from mbostream import tracing
from mbostream.metrics import METRICS
from mbostream_core.market import BookKey, Market
from mbostream_core.records import EVENT_DTYPE

log = logging.getLogger(__name__)

#: Idle heartbeat of the ordered consumers (a silent server is noticed within a few of these).
HEARTBEAT_SECONDS: Final = 1.0
#: How long a history read waits for its next message before giving up.
HISTORY_READ_SECONDS: Final = 10.0
#: A gateway is at the live edge (SERVING) when the stream's last message was published at most
#: this long after the last one it applied (their ``Mbostream-Ts-Out``).
LIVE_EDGE_SECONDS: Final = 0.5
#: How long a resume ahead of the gateway's position (but held by the bus) waits before UNAVAILABLE.
CATCH_UP_WAIT_SECONDS: Final = 3.0
#: Reads of the stream's first message retried when retention drops it in between.
FIRST_MESSAGE_ATTEMPTS: Final = 20
#: How long a snapshot read waits before looking again (a newer round is written every
#: ``snapshot_interval_seconds`` by the replayer).
SNAPSHOT_RETRY_SECONDS: Final = 0.25
_NO_EVENTS = np.zeros(0, dtype=EVENT_DTYPE)


async def _ordered(js: JetStreamContext, start_stream_seq: int) -> JetStreamContext.PushSubscription:
    """An ephemeral ordered consumer of the record stream from ``start_stream_seq``."""
    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, start_stream_seq))
    return await js.subscribe(
        RECORDS_SUBJECT, stream=RECORDS_STREAM, config=config, ordered_consumer=True, idle_heartbeat=HEARTBEAT_SECONDS
    )


async def answer_flow_control(nc: Client, sub: JetStreamContext.PushSubscription) -> None:
    """Answers the server's pending flow-control request as soon as we have taken what it covers.

    nats-py answers it from a task that looks every 250 ms when messages are read with
    ``next_msg``: the server then pauses the consumer for up to that long per flow-control window
    (a few MB), which capped a catching-up gateway near 170k records/s. The client keeps the
    state; this sends the same reply its task would, earlier.
    """
    jsi = getattr(sub._sub, "_jsi", None)
    if jsi is None or not jsi._fcr:
        return
    if jsi._fciseq - sub._pending_queue.qsize() >= jsi._fcd:
        reply, jsi._fcr, jsi._fcd = jsi._fcr, None, 0
        await nc.publish(reply)


async def _header(js: JetStreamContext, stream_seq: int, name: str) -> int:
    msg = await js.get_msg(RECORDS_STREAM, seq=stream_seq)
    return int((msg.headers or {})[name])


async def stream_seq_after(js: JetStreamContext, position: int) -> tuple[int, int]:
    """``(stream sequence, last stream sequence)``: the first record message holding a record after
    replay ``position`` (one past the last when none does yet), by bisection on the headers.

    Raises ReplayPositionError when the stream no longer holds position + 1. A message that
    retention drops during the search (the stream at its byte limit) starts it over.
    """
    for _ in range(FIRST_MESSAGE_ATTEMPTS - 1):
        with contextlib.suppress(NotFoundError):
            return await _stream_seq_after(js, position)
    return await _stream_seq_after(js, position)


async def _stream_seq_after(js: JetStreamContext, position: int) -> tuple[int, int]:
    state = (await js.stream_info(RECORDS_STREAM)).state
    low, high = state.first_seq, state.last_seq
    if not high or high < low:
        return max(low, 1), high
    oldest = await _header(js, low, FIRST_SEQ) - 1
    if position < oldest:
        raise ReplayPositionError(position, oldest, await _header(js, high, LAST_SEQ))
    if await _header(js, high, LAST_SEQ) <= position:
        return high + 1, high
    while low < high:  # the first message whose last position is after ``position``
        middle = (low + high) // 2
        if await _header(js, middle, LAST_SEQ) <= position:
            low = middle + 1
        else:
            high = middle
    return low, state.last_seq


class Resync(Protocol):
    """What the server around a :class:`BusFeed` does when a gap makes it rebuild its books."""

    async def stop_serving(self) -> None:
        """Health NOT_SERVING and every open stream ended, as a restart would end it; SERVING
        again once :attr:`BusFeed.loaded` is set again."""
        ...

    def fresh_market(self) -> tuple[Market, Publisher]:
        """An empty market and hub that replace the old ones everywhere they are served from;
        the snapshots are applied to them at once (no await in between)."""
        ...


class BusFeed:
    """A gateway's feed: the record stream applied to ``market`` and published to ``hub``.

    ``resync``: how a gap is handled in place (None: a gap stops the feed with BusGapError).
    """

    def __init__(
        self, nc: Client, js: JetStreamContext, market: Market, hub: Publisher, *, epoch: str, resync: Resync | None = None
    ) -> None:
        self.nc = nc
        self.js = js
        self.market = market
        self.hub = hub
        self.epoch = epoch
        self.resync = resync
        #: Replay position of the last record applied.
        self.position = 0
        #: Set once the stream's last message at start is applied (health SERVING).
        self.loaded = asyncio.Event()
        self._next_stream_seq = 1
        self._target = 0
        #: ``Mbostream-Ts-Out`` of the last message applied.
        self._ts_out = 0
        #: book → replay position its snapshot reflects (records up to it are skipped for that book).
        self._skip: dict[BookKey, int] = {}
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        await self._cold_start()
        while not self._stopping:
            if self._next_stream_seq > self._target and not self.loaded.is_set():
                await self._reached_target(self._target)  # the snapshots reflect the whole stream already
            reconnects = self.nc.stats["reconnects"]
            try:
                sub = await _ordered(self.js, self._next_stream_seq)
            except Exception as exc:  # the bus is away: try again shortly
                log.info("bus subscribe failed (%s); retrying", exc or type(exc).__name__)
                await asyncio.sleep(0.2)
                continue
            gap = None
            try:
                await self._consume(sub, reconnects)
            except BusGapError as exc:
                if self.resync is None:
                    raise
                gap = exc
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            if gap is not None:
                await self._resync(gap)

    async def _consume(self, sub: JetStreamContext.PushSubscription, reconnects: int) -> None:
        """Applies messages until the connection was re-established (then the caller resubscribes)."""
        while not self._stopping:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                if self.nc.stats["reconnects"] != reconnects:
                    return  # the server restarted: a fresh consumer from where we are
                continue
            meta = msg.metadata
            stream_seq = meta.sequence.stream
            if meta.num_delivered and meta.num_delivered > 1:
                METRICS.bus_redeliveries.inc()
            if stream_seq < self._next_stream_seq:
                continue
            record = codec.decode_record_message(msg.headers, msg.data)
            METRICS.bus_messages_consumed.inc()
            METRICS.bus_pending_messages.set(meta.num_pending or 0)
            METRICS.bus_lag_seconds.set(max(0.0, (time.time_ns() - record.ts_out) / 1e9))
            with tracing.bus_consume_span(msg.headers, {"mbostream.first_seq": record.first_seq, "mbostream.stream_seq": stream_seq}):
                self._apply(record)
            self._next_stream_seq = stream_seq + 1
            await answer_flow_control(self.nc, sub)
            if stream_seq >= self._target and not self.loaded.is_set():
                await self._reached_target(stream_seq)

    async def _reached_target(self, stream_seq: int) -> None:
        """SERVING once the stream's last message is within LIVE_EDGE_SECONDS of the applied one;
        else that last message is the next target (the replay moved on while we caught up)."""
        try:
            last = await self.js.get_last_msg(RECORDS_STREAM, RECORDS_SUBJECT)
            last_seq, last_ts_out = int(last.seq or 0), int((last.headers or {})[TS_OUT])
        except NotFoundError:  # nothing left on the stream: nothing to catch up with
            last_seq, last_ts_out = stream_seq, self._ts_out
        except Exception as exc:  # the bus is away: look again at the next message
            log.info("bus read failed (%s); catch-up check postponed", exc or type(exc).__name__)
            return
        if last_seq > stream_seq and last_ts_out - self._ts_out > LIVE_EDGE_SECONDS * 1e9:
            self._target = last_seq
            return
        self.loaded.set()
        log.info("gateway caught up", extra={"position": self.position, "stream_seq": stream_seq, "last_stream_seq": last_seq})

    async def catch_up(self, position: int) -> bool:
        """A resume after ``position``, ahead of what this gateway applied: True once applied
        (within CATCH_UP_WAIT_SECONDS); False when the bus does not hold it either (the replay is
        not there: OUT_OF_RANGE as in ``serve``); CatchingUpError (UNAVAILABLE, the client or Envoy
        retries, on another gateway) when the bus holds it but this gateway is still behind."""
        if position <= self.position:
            return True
        try:
            last = await self.js.get_last_msg(RECORDS_STREAM, RECORDS_SUBJECT)
            published = int((last.headers or {})[LAST_SEQ])
        except NotFoundError:
            return False
        except Exception as exc:
            raise CatchingUpError(f"replay position {position}: the bus cannot be read ({exc or type(exc).__name__}); retry") from None
        if position > published:
            return False
        deadline = time.monotonic() + CATCH_UP_WAIT_SECONDS
        while self.position < position:
            if time.monotonic() >= deadline or self._stopping:
                raise CatchingUpError(
                    f"replay position {position} is on the bus but this gateway has applied up to {self.position}; retry"
                )
            await asyncio.sleep(0.02)
        return True

    async def _cold_start(self) -> None:
        # The books' latest snapshots first: the cold start then applies at most a snapshot
        # interval of records, however long the stream is. Re-applying a stream that still starts
        # at position 1 took a restarted gateway tens of seconds at 500k records/s, and on shared
        # cores it starved the gateway that was serving (7 s behind the live edge: 3-5 s failovers).
        try:
            found = await self._snapshots_after(0, wait=False)
        except ReplayPositionError:
            found = None  # retention keeps dropping what follows them: from the start, if it is there
        if found is not None:
            snapshots, self._next_stream_seq = found
            self._target = (await self.js.stream_info(RECORDS_STREAM)).state.last_seq
            self._apply_snapshots(snapshots)
            log.info("gateway cold start from snapshots", extra={"books": len(snapshots), "position": self.position})
            return
        for _ in range(FIRST_MESSAGE_ATTEMPTS):
            state = (await self.js.stream_info(RECORDS_STREAM)).state
            self._target = state.last_seq
            self._next_stream_seq = state.first_seq or 1
            if not state.messages:
                break
            try:
                if await _header(self.js, state.first_seq, FIRST_SEQ) == 1:
                    return  # the whole run is in the stream: apply it from the start
                break
            except NotFoundError:
                # Retention dropped the first message since stream_info (a stream at its byte
                # limit): the start is gone; read the state again for the snapshots' path.
                continue
        if not state.messages:
            return  # nothing on the bus yet
        raise BusError("the record stream no longer starts at position 1 and no book snapshot is stored yet")

    async def _resync(self, gap: BusGapError) -> None:
        """Rebuilds the books in place after a gap, as a cold start from snapshots would (see the
        module's docstring); the feed then goes on from the snapshots' position."""
        started = time.monotonic()
        self.loaded.clear()
        assert self.resync is not None
        await self.resync.stop_serving()
        # Snapshots older than the gap would lead back into it: wait for a round taken after it.
        found = await self._snapshots_after(gap.last_missing, wait=True)
        if found is None:
            return  # stopping
        snapshots, next_stream_seq = found
        self._target = (await self.js.stream_info(RECORDS_STREAM)).state.last_seq
        self.market, self.hub = self.resync.fresh_market()
        self._skip = {}
        self._apply_snapshots(snapshots)
        self._next_stream_seq = next_stream_seq
        RESYNCS.inc()
        log.warning(
            "bus gap: positions %d..%d are gone from the record stream; books rebuilt from the snapshots at %d",
            gap.first_missing,
            gap.last_missing,
            self.position,
            extra={"books": len(snapshots), "position": self.position, "seconds": round(time.monotonic() - started, 3)},
        )

    async def _snapshots_after(
        self, after: int, *, wait: bool
    ) -> tuple[dict[BookKey, codec.SnapshotMessage], int] | None:
        """The latest snapshot of every book, all at or after replay position ``after`` and still
        followed by the stream, with the stream sequence to go on from.

        Without ``wait``: None when no snapshot is stored, ReplayPositionError when retention keeps
        dropping what follows them. With ``wait``: looks again until such a round is stored (a bus
        that is away is waited for too); None only when the feed stops meanwhile.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                snapshots = await self._snapshots()
                oldest = min((snap.position for snap in snapshots.values()), default=-1)
                if oldest >= after:
                    return snapshots, (await stream_seq_after(self.js, oldest))[0]
                if not wait and not snapshots:
                    return None
            except ReplayPositionError:
                # Retention already dropped what follows the oldest snapshot: a newer one comes soon.
                if not wait and attempt >= FIRST_MESSAGE_ATTEMPTS:
                    raise
            except (nats.errors.Error, asyncio.TimeoutError) as exc:
                if not wait:
                    raise
                log.info("bus read failed (%s); snapshots read again shortly", exc or type(exc).__name__)
            if self._stopping:
                return None
            await asyncio.sleep(SNAPSHOT_RETRY_SECONDS)

    def _apply_snapshots(self, snapshots: dict[BookKey, codec.SnapshotMessage]) -> None:
        """Each book from its snapshot and saved statistics; the records each reflects are skipped."""
        for key, snap in snapshots.items():
            self.market.apply(snap.records.copy(), complete_events=True)
            if snap.state:  # the book's statistics at the snapshot: the same counters as the replayer's
                self.market.restore_book_state(key, snap.state)
            self._skip[key] = snap.position
        self.position = min(self._skip.values())
        self.hub.position = self.position  # type: ignore[attr-defined]

    async def _snapshots(self) -> dict[BookKey, codec.SnapshotMessage]:
        try:
            info = await self.js.stream_info(SNAPSHOTS_STREAM, subjects_filter=">")
        except NotFoundError:
            return {}
        out: dict[BookKey, codec.SnapshotMessage] = {}
        for subject in (info.state.subjects or {}):
            try:
                msg = await self.js.get_last_msg(SNAPSHOTS_STREAM, subject)
            except NotFoundError:  # expired since stream_info
                continue
            snap = codec.decode_snapshot(msg.headers, msg.data)
            if snap.epoch == self.epoch and len(snap.records):
                row = snap.records[0]
                out[BookKey(int(row["instrument_id"]), int(row["publisher_id"]))] = snap
        return out

    def _apply(self, msg: codec.RecordMessage) -> None:
        if msg.epoch != self.epoch:
            raise BusError(f"the bus carries another run (epoch {msg.epoch}, this gateway serves {self.epoch}); restart the gateway")
        if msg.last_seq <= self.position:
            DUPLICATES_DROPPED.inc()
            return
        if msg.first_seq != self.position + 1:
            GAPS.inc()
            raise BusGapError(self.position + 1, msg.first_seq - 1)
        records = msg.records
        books = None
        if self._skip:
            events = self._apply_past_snapshots(msg)
        else:
            result = self.market.apply(records, complete_events=True, books=True)
            events, books = result.events, result.books
        self.position = msg.last_seq
        self._ts_out = msg.ts_out
        METRICS.records_ingested.inc(len(records))
        self.hub.publish(Batch(msg.first_seq, records, events, msg.ts_out, books=books))

    def _apply_past_snapshots(self, msg: codec.RecordMessage) -> np.ndarray:
        """Applies the records no snapshot already reflects; events indexed in the whole message."""
        records = msg.records
        positions = np.arange(msg.first_seq, msg.last_seq + 1, dtype=np.int64)
        keep = np.ones(len(records), dtype=bool)
        for key, reflected in self._skip.items():
            if reflected >= msg.first_seq:
                book = (records["instrument_id"] == key.instrument_id) & (records["publisher_id"] == key.publisher_id)
                keep &= ~(book & (positions <= reflected))
        self._skip = {k: p for k, p in self._skip.items() if p > msg.last_seq}
        applied = records[keep]
        events = self.market.apply(applied, complete_events=True).events.copy() if len(applied) else _NO_EVENTS
        if len(events):
            events["index"] = np.flatnonzero(keep)[events["index"]]
        return events


class StreamHistory:
    """Record batches after a replay position, read from the stream (resumes older than the hub's memory)."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def batches(self, after: int) -> AsyncIterator[Batch]:
        """Batches from position ``after + 1`` on (the first one cut to start there), until closed.

        Raises ReplayPositionError when the stream no longer holds ``after + 1``.
        """
        start, _ = await stream_seq_after(self.js, after)
        sub = await _ordered(self.js, start)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=HISTORY_READ_SECONDS)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    raise BusError("the bus did not deliver the resume's history in time") from None
                await answer_flow_control(self.js._nc, sub)
                record = codec.decode_record_message(msg.headers, msg.data)
                if record.last_seq <= after:
                    continue
                records = record.records
                first = record.first_seq
                if first > after + 1:  # a hole in the stream: the resume cannot be served, never silently
                    raise ReplayPositionError(after, first - 1)
                if first <= after:
                    records, first = records[after - first + 1 :], after + 1
                after = record.last_seq
                yield Batch(first, records, _NO_EVENTS, record.ts_out)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
