"""StreamBook on a native HTTP/2 transport (``--book-port``): the same messages, ~10× less CPU to send.

grpc.aio costs 31–33 µs of the event loop per streamed message (docs/performance.md, "A native
send path, measured"); a book stream sends hundreds of small messages a second. Here the calls
arrive on a native HTTP/2 server (``mbostream_core._engine.StreamServer``, threads of its own:
``book_threads``, each writing to its share of the connections) and the event loop only decides
what to send. Each call is validated and subscribed as on the gRPC port
(:meth:`MarketDataService.open_books`), and its subscriber is handed to the hub as a sink: the
refresh that rebuilds a book queues its messages (:func:`~mbostream.server.market_data.book_message`,
the very bytes the gRPC port sends) on the transport at once, and wakes the transport's threads once
for all of them; each frames, flow-controls and writes its calls' messages off the loop. No task wakes up
per message.

**Fan-out by channel.** Once a call's first message of a book is out, the call is subscribed to
that book's channel in the transport (a topic; :meth:`~mbostream.hub.Hub.fan_out`), and each
refresh hands the channel's new book to the transport once for all its calls
(:meth:`NativeBookTransport.publish`).
The transport's threads append each call's own bytes (its conflation count and epoch: the same
bytes as :func:`~mbostream.server.market_data.book_message`) and keep one slot per call and book:
a book not written yet when the next one is published is replaced by it and counted as conflated.
So the loop's work per refresh is per book, not per client, and a client the transport cannot
write to at the refresh rate (a slow client, or too many clients for its thread) gets fewer,
fresher books rather than a queue. A ``combine_books`` call is subscribed the same way, as a
combining call: what its slots hold when the transport writes to it leaves as one message (the
books' ``books`` entries, the oldest one's ``ts_out``, the conflation counts summed, its epoch:
again the bytes ``book_message`` makes), so 1,000 such calls cost the loop no more than one. A
call with ``max_updates_per_second`` is subscribed as a paced call: the transport writes its books
at most once an interval (the first an interval after its snapshots), its slots conflating between,
and the counts of what they replaced say what it skipped.

Everything the grpc.aio path does per call is done here too: the request is validated the same
way, errors map to the same status codes (:data:`~mbostream.server.interceptors.STATUS_BY_ERROR`),
the stream limits count these calls with the others (by client address), RPCs are counted in
``mbostream_rpcs_total`` and sampled in the delivery histogram. A client that stops reading is
conflated, never queued: once a call has ``HIGH_WATER`` bytes the transport has not written yet,
nothing more is queued for it until the transport says it fell back to ``LOW_WATER``; meanwhile
the hub keeps only the newest book for it, which goes out then.

Clients that stop answering HTTP/2 PINGs lose their connection, as on the gRPC listeners. TLS is
the gRPC listeners' too: with ``tls_cert_file`` the port speaks TLS (ALPN ``h2``, rustls) with the
same certificate, and with ``tls_client_ca_file`` it requires a client certificate of that CA
(mTLS). Not on this port: other methods (UNIMPLEMENTED), compressed requests (UNIMPLEMENTED),
tracing spans, a limit on connections (Envoy's, in front, applies).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import grpc
from google.protobuf.message import DecodeError

from mbostream.errors import InvalidArgumentError, MbostreamError
from mbostream.metrics import METRICS
from mbostream.server.interceptors import DELIVERY_SAMPLE_EVERY, observe_delivery, status_for
from mbostream.hub import BookChannel, BookSubscriber
from mbostream.server.convert import per_client_suffix
from mbostream.server.market_data import MarketDataService, book_message
from mbostream.server.peers import peer_address
from mbostream_core._engine import StreamServer
from mbostream_core.v1 import market_data_pb2 as pb

log = logging.getLogger(__name__)

STREAM_BOOK: Final = "/mbostream.v1.MarketDataService/StreamBook"
#: Largest request accepted, as on the grpc.aio listeners (``grpc.max_receive_message_length``).
MAX_REQUEST_BYTES: Final = 4 * 1024 * 1024
#: Bytes of a call not yet written (flow control) at which its task waits, and at which it resumes:
#: a few books' worth, so a client that stops reading holds little and gets the newest book after.
HIGH_WATER: Final = 256 * 1024
LOW_WATER: Final = 64 * 1024
#: Calls one HTTP/2 connection may have open at once (the hub's stream limits apply besides).
MAX_CONCURRENT_STREAMS: Final = 1024
#: HTTP/2 PINGs, as on the gRPC listeners (``grpc.keepalive_time_ms``/``_timeout_ms``): a client
#: that does not answer within the timeout loses its connection and its streams' subscriptions.
KEEPALIVE_INTERVAL_SECONDS: Final = 30.0
KEEPALIVE_TIMEOUT_SECONDS: Final = 10.0


@dataclass(eq=False, slots=True)
class _Stream:
    """One StreamBook call on the native port, as the hub delivers to it."""

    call_id: int
    epoch: str
    #: Messages sent (every DELIVERY_SAMPLE_EVERY-th is sampled into the delivery histogram).
    sent: int = 0
    #: The transport holds HIGH_WATER bytes of it not yet written: its books wait (conflating).
    blocked: bool = False
    #: When its last message was sent (``max_updates_per_second``), and the timer of the next.
    last_sent: float = 0.0
    timer: asyncio.TimerHandle | None = None
    #: How the call ends: the client went away (CANCELLED), or a delivery failed (INTERNAL).
    gone: bool = False
    error: BaseException | None = None


class NativeBookTransport:
    """Serves StreamBook on its own port through the native transport, on the running loop.

    A call's task validates and subscribes it, then hands the subscriber to the hub as a sink
    (:meth:`BookSubscriber.deliver_to`): as each refresh rebuilds the books, the hub calls
    :meth:`deliver`, which queues the subscriber's messages on the transport, and :meth:`flush`
    once, which wakes the transport's threads to write them. No task wakes up per message, and a
    book leaves the loop in the refresh that made it. The task only waits for the call's end.
    """

    def __init__(
        self,
        service: Callable[[], MarketDataService],
        host: str,
        port: int,
        tls: tuple[bytes, bytes, bytes | None] | None = None,
        threads: int = 1,
        realtime_priority: int = 0,
    ) -> None:
        #: The service whose StreamBook this serves (a gateway replaces its own as it resyncs).
        self.service = service
        self.host = host
        self.requested_port = port
        #: ``(certificate chain, key, client CA or None)`` in PEM (:func:`~mbostream.config.read_tls_files`); None: plaintext.
        self.tls = tls
        #: Transport threads: each writes to its share of the connections (``book_threads``).
        self.threads = threads
        #: Their SCHED_FIFO priority (``book_thread_priority``); 0: the process's scheduling.
        self.realtime_priority = realtime_priority
        self.server: StreamServer | None = None
        self._calls: dict[int, asyncio.Task[None]] = {}
        self._streams: dict[BookSubscriber, _Stream] = {}
        self._by_call: dict[int, BookSubscriber] = {}
        #: Messages were queued since the last flush.
        self._flush_due = False
        #: Channel publications so far (every DELIVERY_SAMPLE_EVERY-th is sampled), and the
        #: transport's conflation and write counts already added to the metrics.
        self._published = 0
        self._conflated = 0
        self._writes = 0

    @property
    def port(self) -> int:
        return self.server.port if self.server is not None else 0

    def start(self) -> None:
        """Binds (OSError when the port is taken; ValueError for a certificate or key rustls refuses;
        PermissionError when the threads may not have their SCHED_FIFO priority) and starts taking
        calls."""
        chain, key, client_ca = self.tls if self.tls is not None else (None, None, None)
        self.server = StreamServer(
            self.host,
            self.requested_port,
            [STREAM_BOOK],
            max_request_bytes=MAX_REQUEST_BYTES,
            high_water=HIGH_WATER,
            low_water=LOW_WATER,
            max_concurrent_streams=MAX_CONCURRENT_STREAMS,
            keepalive_interval=KEEPALIVE_INTERVAL_SECONDS,
            keepalive_timeout=KEEPALIVE_TIMEOUT_SECONDS,
            tls_cert_chain=chain,
            tls_key=key,
            tls_client_ca=client_ca,
            conflated_field=pb.StreamBookResponse.CONFLATED_FIELD_NUMBER,
            stamp_field=pb.StreamBookResponse.TS_OUT_FIELD_NUMBER,
            threads=self.threads,
            realtime_priority=self.realtime_priority,
        )
        asyncio.get_running_loop().add_reader(self.server.fileno(), self._on_events)

    def _on_events(self) -> None:
        assert self.server is not None
        for kind, call_id, _method, request, peer in self.server.take_events():
            if kind == "call":
                task = asyncio.get_running_loop().create_task(self._serve(call_id, request, peer), name=f"native-book-{call_id}")
                self._calls[call_id] = task
                task.add_done_callback(lambda _t, call_id=call_id: self._calls.pop(call_id, None))
            elif kind == "writable":
                sub = self._by_call.get(call_id)
                if sub is not None:
                    self._streams[sub].blocked = False
                    self.deliver(sub)  # what conflated while it was blocked: the newest books
                    self.flush()
            elif kind == "closed":
                task = self._calls.get(call_id)
                if task is not None:
                    task.cancel()

    # -- the hub's BookSink ------------------------------------------------------------------------
    def deliver(self, sub: BookSubscriber) -> None:
        """Queues ``sub``'s pending messages on its call (see :class:`~mbostream.hub.BookSink`)."""
        stream = self._streams.get(sub)
        server = self.server
        if stream is None or server is None or stream.blocked or stream.gone or stream.error is not None:
            return
        try:
            if sub.min_interval:
                wait = stream.last_sent + sub.min_interval - time.monotonic()
                if wait > 0:
                    if stream.timer is None:
                        stream.timer = asyncio.get_running_loop().call_later(wait, self._deliver_later, sub)
                    return
            sent = stream.sent
            for channels, first, conflated in sub.take():
                payload = book_message(sub, channels, first, conflated, stream.epoch)
                queued = server.send(stream.call_id, payload)
                if queued < 0:
                    stream.gone = True  # the client went away: its task ends the call
                    sub.wakeup.set()
                    return
                if stream.sent % DELIVERY_SAMPLE_EVERY == 0:
                    observe_delivery(METRICS.book_age_seconds, payload)
                stream.sent += 1
                if first:
                    sub.hub.fan_out(sub, channels[0].key, self)  # its later books by channel
                if queued >= HIGH_WATER:
                    stream.blocked = True  # until the transport says "writable"; books conflate
            if stream.sent != sent:
                stream.last_sent = time.monotonic()
                self._flush_due = True
        except Exception as exc:  # ends this call with INTERNAL, never the refresh
            stream.error = exc
            sub.wakeup.set()

    def flush(self) -> None:
        """Wakes the transport's threads once for everything queued since the last flush."""
        server = self.server
        if self._flush_due and server is not None:
            self._flush_due = False
            server.flush()
            conflated, writes = server.conflated, server.writes
            if conflated != self._conflated:
                METRICS.conflations.inc(conflated - self._conflated)
                self._conflated = conflated
            if writes != self._writes:
                METRICS.book_transport_writes.inc(writes - self._writes)
                self._writes = writes

    # -- the hub's BookFanout ----------------------------------------------------------------------
    def subscribe(self, sub: BookSubscriber, channel: BookChannel, topic: int) -> bool:
        """Subscribes ``sub``'s call to ``topic`` (``channel``'s) after the version it was sent."""
        stream = self._streams.get(sub)
        server = self.server
        if stream is None or server is None or stream.gone or stream.error is not None:
            return False
        tail = per_client_suffix(False, 0, epoch=stream.epoch)  # what follows the conflation count
        return server.subscribe(stream.call_id, topic, sub.seen_versions[channel.key], tail, sub.combine, sub.min_interval)

    def publish(self, channel: BookChannel, topic: int) -> None:
        """Hands the channel's new book to the transport once for every call subscribed to ``topic``."""
        server, book = self.server, channel.book
        if server is None or book is None:
            return
        if server.publish(topic, channel.version, book.single, book.multi, book.ts_out):
            self._flush_due = True
            if self._published % DELIVERY_SAMPLE_EVERY == 0:
                observe_delivery(METRICS.book_age_seconds, book.single)
            self._published += 1

    def _deliver_later(self, sub: BookSubscriber) -> None:
        stream = self._streams.get(sub)
        if stream is not None:
            stream.timer = None
            self.deliver(sub)
            self.flush()

    # -- calls -------------------------------------------------------------------------------------
    async def _serve(self, call_id: int, raw: bytes, peer: str) -> None:
        """One StreamBook call: subscribed and delivered by the hub until it ends, then its status."""
        server = self.server
        assert server is not None
        started = time.perf_counter()
        code, details = grpc.StatusCode.OK, ""
        try:
            try:
                request = pb.StreamBookRequest.FromString(raw)
            except DecodeError:
                raise InvalidArgumentError("request", "not a StreamBookRequest") from None
            service = self.service()
            sub = service.open_books(request, peer_address(peer))
            stream = _Stream(call_id, service.hub.epoch)
            self._streams[sub] = stream
            self._by_call[call_id] = sub
            try:
                sub.deliver_to(self)  # its first messages now, then at each refresh
                while True:
                    if stream.gone:
                        code = grpc.StatusCode.CANCELLED
                        return
                    if stream.error is not None:
                        raise stream.error
                    sub.raise_if_closed()
                    sub.wakeup.clear()
                    await sub.wakeup.wait()
            finally:
                if stream.timer is not None:
                    stream.timer.cancel()
                self._streams.pop(sub, None)
                self._by_call.pop(call_id, None)
                service.hub.unsubscribe_books(sub)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except MbostreamError as exc:
            code, details = status_for(exc), str(exc)
        except Exception:
            log.exception("unhandled error in StreamBook (native transport)", extra={"method": "StreamBook"})
            code, details = grpc.StatusCode.INTERNAL, "internal error in StreamBook"
        finally:
            if code is not grpc.StatusCode.CANCELLED:
                server.finish(call_id, code.value[0], details)
            METRICS.rpcs.labels("StreamBook", code.name).inc()
            METRICS.rpc_seconds.labels("StreamBook").observe(time.perf_counter() - started)

    async def stop(self, grace: float) -> None:
        """Stops taking calls; the open ones end as the hub closes (UNAVAILABLE), within ``grace``."""
        server, self.server = self.server, None
        if server is None:
            return
        asyncio.get_running_loop().remove_reader(server.fileno())
        calls = list(self._calls.values())
        if calls:
            _, pending = await asyncio.wait(calls, timeout=grace)
            for task in pending:
                task.cancel()
        await asyncio.to_thread(server.stop, grace)
