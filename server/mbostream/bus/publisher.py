"""The replayer's side of the bus: each batch to the local hub and to the record stream, and the
books' periodic snapshots.

Single writer: every record message is published with ``Nats-Expected-Last-Sequence`` set to the
stream sequence of the one before, so a second replayer (or a stale one) is refused by JetStream
itself. Publishes are pipelined (acks awaited in order, not one round trip per message); a publish
that fails or is not acked in time (the NATS server restarting) puts the publisher in recovery:
it reads the stream's last message, drops what is already stored and sends the rest again in
order, with the same ``Nats-Msg-Id``. The stream never gets a duplicate nor a gap. A last message
written by another replayer after we started is a :class:`~mbostream.bus.errors.WriterConflictError`:
the run stops (exit 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry.trace import Span

from mbostream import tracing
from mbostream.metrics import METRICS
from mbostream.bus import codec
from mbostream.bus.errors import BusError, WriterConflictError
from mbostream.bus.streams import (
    EXPECTED_LAST_SEQ,
    LAST_SEQ,
    RECORDS_STREAM,
    RECORDS_SUBJECT,
    WRITER,
    WRONG_LAST_SEQUENCE,
    snapshot_subject,
)
from mbostream.feed import Batch, Publisher
from mbostream_core.market import Market

log = logging.getLogger(__name__)

#: Record messages sent but not yet acknowledged, at most.
MAX_IN_FLIGHT: Final = 256
#: Bytes queued or in flight beyond which the replay waits (backpressure, like a slow storage).
MAX_PENDING_BYTES: Final = 64 << 20
#: A publish not acknowledged within this time (or a lost connection) starts a recovery.
ACK_TIMEOUT_SECONDS: Final = 2.0
#: How often a recovery retries while the NATS server is away.
RETRY_SECONDS: Final = 0.2


class _Refused(Exception):
    """JetStream answered a publish with an error (``code`` is its ``err_code``)."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code


@dataclass(eq=False)
class _Outgoing:
    last_seq: int
    payload: bytes
    headers: dict[str, str]
    stream_seq: int = 0
    sent_at: float = 0.0
    future: asyncio.Future | None = field(default=None, repr=False)
    #: The sampled step's PRODUCER span (mbostream.tracing), ended at the bus's ack.
    span: Span | None = field(default=None, repr=False)


class BusPublisher:
    """A :class:`~mbostream.feed.Publisher` that hands each batch to ``local`` (the hub) and to the bus.

    Parameters
    ----------
    nc, js
        The bus connection and its JetStream context.
    local
        The replayer's own hub (it still serves its ReplayService clients and any local reader).
    epoch
        The run's identity, carried on every message.
    writer
        This process's identity (a random token), to tell our own earlier publishes from another writer's.
    last_stream_seq
        The record stream's last sequence when this replayer started (0: empty).
    """

    def __init__(
        self, nc: Client, js: JetStreamContext, local: Publisher, *, epoch: str, writer: str, last_stream_seq: int
    ) -> None:
        self.nc = nc
        self.js = js
        self.local = local
        self.epoch = epoch
        self.writer = writer
        self.started_after = last_stream_seq
        self.next_stream_seq = last_stream_seq + 1
        #: Replay position of the last record the bus acknowledged (stored).
        self.acked_position = 0
        self._outbox: deque[_Outgoing] = deque()
        self._unacked: deque[_Outgoing] = deque()
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._acked = asyncio.Event()
        self._inbox = ""
        self._tokens = itertools.count()
        self._steps = itertools.count()
        self._futures: dict[str, asyncio.Future[int]] = {}

    # -- feed.Publisher ---------------------------------------------------------------------------
    def publish(self, batch: Batch) -> None:
        """Hands the batch to the local hub, then queues it for the bus; returns at once."""
        self.local.publish(batch)
        if batch.snapshot or not len(batch):
            return
        headers = codec.record_headers(batch, self.epoch, self.writer)
        span, context = tracing.bus_publish_span(
            next(self._steps), {"mbostream.first_seq": batch.first_replay_seq, "mbostream.last_seq": batch.last_replay_seq}
        )
        out = _Outgoing(batch.last_replay_seq, codec.record_payload(batch), {**headers, **context}, span=span)
        self._outbox.append(out)
        self._pending_bytes += len(out.payload)
        if self._pending_bytes > MAX_PENDING_BYTES:
            self._drained.clear()
        self._wake.set()

    def backlogged(self) -> bool:
        return self.local.backlogged() or self._pending_bytes > MAX_PENDING_BYTES

    async def wait_ready(self) -> None:
        await self.local.wait_ready()
        await self._drained.wait()

    # -- acknowledgements -------------------------------------------------------------------------
    async def wait_acked(self, position: int) -> None:
        """Returns once every record up to replay ``position`` is stored in the stream."""
        while self.acked_position < position:
            self._acked.clear()
            await self._acked.wait()

    @property
    def pending(self) -> int:
        """Record messages queued or in flight."""
        return len(self._outbox) + len(self._unacked)

    # -- the sender -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Sends queued messages and takes their acks in order until cancelled; raises
        WriterConflictError when another replayer owns the stream."""
        # Acks come to our own inbox: one subscription, a future per publish (pipelined).
        self._inbox = self.nc.new_inbox()
        await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)
        while True:
            while self._outbox and len(self._unacked) < MAX_IN_FLIGHT:
                out = self._outbox.popleft()
                try:
                    await self._send(out)
                except Exception as exc:  # the connection is away: the recovery resends it
                    self._outbox.appendleft(out)
                    log.warning("bus publish failed (%s); recovering", exc or type(exc).__name__)
                    await self._recover()
                    break
            if not self._unacked:
                if not self._outbox:
                    self._wake.clear()
                    await self._wake.wait()
                continue
            oldest = self._unacked[0]
            assert oldest.future is not None
            if not oldest.future.done():
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({oldest.future, waiter}, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if not oldest.future.done():
                    if not self.nc.is_connected or time.monotonic() - oldest.sent_at > ACK_TIMEOUT_SECONDS:
                        log.warning("bus publish not acknowledged; recovering", extra={"position": oldest.last_seq})
                        await self._recover()
                    continue
            await self._take_ack(oldest)

    async def _on_ack(self, msg: Msg) -> None:
        future = self._futures.pop(msg.subject.rsplit(".", 1)[-1], None)
        if future is None or future.done():
            return  # an ack of a publish abandoned by a recovery
        try:
            reply = json.loads(msg.data)
        except ValueError:
            future.set_exception(_Refused(0, f"unreadable ack {msg.data[:100]!r}"))
            return
        if "error" in reply:
            error = reply["error"]
            future.set_exception(_Refused(int(error.get("err_code", 0)), str(error.get("description", error))))
        else:
            future.set_result(int(reply["seq"]))

    async def _send(self, out: _Outgoing) -> None:
        out.stream_seq = self.next_stream_seq
        headers = {**out.headers, EXPECTED_LAST_SEQ: str(out.stream_seq - 1)}
        token = str(next(self._tokens))
        out.future = self._futures[token] = asyncio.get_running_loop().create_future()
        await self.nc.publish(RECORDS_SUBJECT, out.payload, reply=f"{self._inbox}.{token}", headers=headers)
        out.sent_at = time.monotonic()
        self.next_stream_seq += 1
        self._unacked.append(out)

    async def _take_ack(self, out: _Outgoing) -> None:
        assert out.future is not None
        try:
            stream_seq = out.future.result()
        except _Refused as exc:
            if exc.code != WRONG_LAST_SEQUENCE:
                raise BusError(f"the bus refused a record message: {exc}") from None
            await self._recover()  # another writer, or our own resend racing an earlier send
            return
        except Exception as exc:
            log.warning("bus publish failed (%s); recovering", exc or type(exc).__name__)
            await self._recover()
            return
        if stream_seq != out.stream_seq:
            await self._recover()
            return
        self._unacked.popleft()
        self._delivered(out)

    def _delivered(self, out: _Outgoing) -> None:
        self._pending_bytes -= len(out.payload)
        if self._pending_bytes <= MAX_PENDING_BYTES:
            self._drained.set()
        self.acked_position = out.last_seq
        self._acked.set()
        METRICS.bus_messages_published.inc()
        if out.span is not None:
            out.span.end()

    async def _recover(self) -> None:
        """Finds what the stream holds, drops it from what we still have to send, resends the rest."""
        for out in self._unacked:
            if out.future is not None and not out.future.done():
                out.future.cancel()
        self._futures.clear()
        while True:
            try:
                last_stream_seq, last_position, writer = await self._stream_tail()
                break
            except (BusError, asyncio.TimeoutError, OSError) as exc:
                log.info("bus not ready (%s); retrying", exc or type(exc).__name__)
            except Exception as exc:  # nats raises connection errors of several types while away
                log.info("bus not ready (%s); retrying", exc or type(exc).__name__)
            await asyncio.sleep(RETRY_SECONDS)
        if last_stream_seq > self.started_after and writer != self.writer:
            raise WriterConflictError(
                f"another replayer is publishing to {RECORDS_STREAM} (its message at stream sequence "
                f"{last_stream_seq}); only one replayer may run against a bus"
            )
        pending = list(self._unacked) + list(self._outbox)
        self._unacked.clear()
        self._outbox.clear()
        for out in pending:
            if out.last_seq <= last_position and last_stream_seq > self.started_after:
                self._delivered(out)  # stored before the trouble
            else:
                self._outbox.append(out)
        self.next_stream_seq = last_stream_seq + 1
        log.info(
            "bus publisher recovered",
            extra={"stream_seq": last_stream_seq, "position": last_position, "resending": len(self._outbox)},
        )

    async def _stream_tail(self) -> tuple[int, int, str]:
        """``(stream sequence, replay position, writer)`` of the record stream's last message."""
        if not self.nc.is_connected:
            raise BusError("not connected")
        info = await self.js.stream_info(RECORDS_STREAM)
        last = info.state.last_seq
        if not last:
            return 0, 0, ""
        msg = await self.js.get_msg(RECORDS_STREAM, seq=last)
        headers = msg.headers or {}
        return last, int(headers.get(LAST_SEQ, 0)), headers.get(WRITER, "")


class SnapshotWriter:
    """Every ``interval`` seconds, each book's snapshot to its last-value subject.

    A snapshot is taken between replay steps (every book consistent) at replay position P and
    published once the records up to P are stored: a gateway that starts from it finds P + 1 in
    the record stream.
    """

    def __init__(
        self,
        js: JetStreamContext,
        market: Market,
        publisher: BusPublisher,
        position: callable,  # type: ignore[valid-type]
        *,
        epoch: str,
        interval: float,
    ) -> None:
        self.js = js
        self.market = market
        self.publisher = publisher
        self.position = position
        self.epoch = epoch
        self.interval = interval
        #: Replay position of the last snapshot round written (0: none yet).
        self.written = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            position = self.position()
            if position <= self.written or not self.market.consistent:
                continue
            books = [
                (key, self.market.snapshot(key, ts_recv=self.market.stats(key).ts_recv), self.market.book_state(key))
                for key in self.market.books()
            ]
            await self.publisher.wait_acked(position)
            await self._write(books, position)

    async def _write(self, books: list[tuple[object, np.ndarray, bytes]], position: int) -> None:
        futures = []
        for key, records, state in books:
            subject = snapshot_subject(key.publisher_id, key.instrument_id)  # type: ignore[attr-defined]
            headers = codec.snapshot_headers(position, self.epoch, state)
            futures.append(await self.js.publish_async(subject, records.tobytes(), headers=headers))
        try:
            await asyncio.wait_for(asyncio.gather(*futures), ACK_TIMEOUT_SECONDS * 5)
        except Exception as exc:  # the bus restarting: the next round writes them again
            log.warning("book snapshots not stored (%s); the next round retries", exc or type(exc).__name__)
            for future in futures:
                future.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*futures, return_exceptions=True)
            return
        self.written = position
