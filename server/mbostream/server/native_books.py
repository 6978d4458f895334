"""StreamBook on a native HTTP/2 transport (``--book-port``): the same messages, ~10× less CPU to send.

grpc.aio costs 31–33 µs of the event loop per streamed message (docs/performance.md, "A native
send path, measured"); a book stream sends hundreds of small messages a second. Here the calls
arrive on a native HTTP/2 server (``mbostream_core._engine.StreamServer``, its own thread) and the
event loop only decides what to send: each call runs :meth:`MarketDataService.book_payloads`, the
very generator the grpc.aio StreamBook runs, and hands each message to the transport, which
frames, flow-controls and writes it off the loop.

Everything the grpc.aio path does per call is done here too: the request is validated the same
way, errors map to the same status codes (:data:`~mbostream.server.interceptors.STATUS_BY_ERROR`),
the stream limits count these calls with the others (by client address), RPCs are counted in
``mbostream_rpcs_total`` and sampled in the delivery histogram. A client that stops reading is
conflated, never queued: once a call has ``HIGH_WATER`` bytes the transport has not written yet,
its task waits for the transport to say it fell back to ``LOW_WATER``, and meanwhile the hub keeps
only the newest book for it.

Clients that stop answering HTTP/2 PINGs lose their connection, as on the gRPC listeners. Not on
this port: TLS (the setting refuses the pair), other methods (UNIMPLEMENTED), compressed requests
(UNIMPLEMENTED), tracing spans, a limit on connections (Envoy's, in front, applies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

import grpc
from google.protobuf.message import DecodeError

from mbostream.errors import InvalidArgumentError, MbostreamError
from mbostream.metrics import METRICS
from mbostream.server.interceptors import DELIVERY_SAMPLE_EVERY, observe_delivery, status_for
from mbostream.server.market_data import MarketDataService
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


class NativeBookTransport:
    """Serves StreamBook on its own port through the native transport, on the running loop."""

    def __init__(self, service: Callable[[], MarketDataService], host: str, port: int) -> None:
        #: The service whose StreamBook this serves (a gateway replaces its own as it resyncs).
        self.service = service
        self.host = host
        self.requested_port = port
        self.server: StreamServer | None = None
        self._calls: dict[int, asyncio.Task[None]] = {}
        self._writable: dict[int, asyncio.Event] = {}
        #: A flush is scheduled (once per turn of the loop: a refresh's sends leave together).
        self._flush_due = False

    @property
    def port(self) -> int:
        return self.server.port if self.server is not None else 0

    def start(self) -> None:
        """Binds (OSError when the port is taken) and starts taking calls."""
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
        )
        asyncio.get_running_loop().add_reader(self.server.fileno(), self._on_events)

    def _on_events(self) -> None:
        assert self.server is not None
        for kind, call_id, _method, request, peer in self.server.take_events():
            if kind == "call":
                task = asyncio.get_running_loop().create_task(self._serve(call_id, request, peer), name=f"native-book-{call_id}")
                self._calls[call_id] = task
                task.add_done_callback(lambda _t, call_id=call_id: self._forget(call_id))
            elif kind == "writable":
                event = self._writable.get(call_id)
                if event is not None:
                    event.set()
            elif kind == "closed":
                task = self._calls.get(call_id)
                if task is not None:
                    task.cancel()

    def _flush(self, server: StreamServer) -> None:
        """Writes what the calls queued since the last flush (the transport's thread woken once)."""
        self._flush_due = False
        server.flush()

    def _forget(self, call_id: int) -> None:
        self._calls.pop(call_id, None)
        self._writable.pop(call_id, None)

    async def _serve(self, call_id: int, raw: bytes, peer: str) -> None:
        """One StreamBook call: its messages, then its status, both to the transport."""
        server = self.server
        assert server is not None
        started = time.perf_counter()
        code, details = grpc.StatusCode.OK, ""
        try:
            try:
                request = pb.StreamBookRequest.FromString(raw)
            except DecodeError:
                raise InvalidArgumentError("request", "not a StreamBookRequest") from None
            sent = 0
            # Closed with the call, so a call that ends unsubscribes at once, not when collected.
            async with contextlib.aclosing(self.service().book_payloads(request, peer_address(peer))) as payloads:
                async for payload in payloads:
                    queued = server.send(call_id, payload)
                    if queued < 0:
                        code = grpc.StatusCode.CANCELLED
                        return  # the client went away
                    if not self._flush_due:
                        self._flush_due = True
                        asyncio.get_running_loop().call_soon(self._flush, server)
                    if sent % DELIVERY_SAMPLE_EVERY == 0:
                        observe_delivery(METRICS.book_age_seconds, payload)
                    sent += 1
                    if queued >= HIGH_WATER:
                        writable = self._writable.setdefault(call_id, asyncio.Event())
                        writable.clear()  # nothing ran since `send`: the transport's word is still to come
                        await writable.wait()
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
