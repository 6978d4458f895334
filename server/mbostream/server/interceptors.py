"""The gRPC edge's one place for status codes, operator auth and RPC metrics.

Every error class of :mod:`mbostream.errors` maps to exactly one status code here; servicers just
raise. Anything else becomes INTERNAL with a generic message (the traceback goes to the log, never
to the client).
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, NoReturn

import grpc
from grpc import aio as grpc_aio
from grpc_interceptor.exceptions import GrpcException
from grpc_interceptor.exception_to_status import AsyncExceptionToStatusInterceptor

from mbostream.errors import (
    AuthError,
    AuthThrottledError,
    CatchingUpError,
    ConfigError,
    DataFileError,
    InvalidArgumentError,
    MbostreamError,
    PermissionDeniedError,
    PreconditionError,
    ReplayPositionError,
    ShuttingDownError,
    SlowConsumerError,
    TooManyStreamsError,
    UnknownInstrumentError,
)
from mbostream import tracing
from mbostream.metrics import METRICS

log = logging.getLogger(__name__)

#: The one mapping from error classes to status codes (first match wins: subclasses first).
STATUS_BY_ERROR: tuple[tuple[type[MbostreamError], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownInstrumentError, grpc.StatusCode.NOT_FOUND),
    (ReplayPositionError, grpc.StatusCode.OUT_OF_RANGE),
    (SlowConsumerError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TooManyStreamsError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (AuthThrottledError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (AuthError, grpc.StatusCode.UNAUTHENTICATED),
    (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (ShuttingDownError, grpc.StatusCode.UNAVAILABLE),
    (CatchingUpError, grpc.StatusCode.UNAVAILABLE),
    (DataFileError, grpc.StatusCode.FAILED_PRECONDITION),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(exc: MbostreamError) -> grpc.StatusCode:
    for cls, code in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


class ErrorMappingInterceptor(AsyncExceptionToStatusInterceptor):
    """Maps mbostream errors to status codes, counts every RPC by method and code, traces each one
    (when tracing is on) and measures sampled stream messages' delivery at write completion."""

    def __init__(self) -> None:
        super().__init__(status_on_unknown_exception=grpc.StatusCode.INTERNAL)
        tracing.configure()  # from the OTEL_* environment; off unless it asks (mbostream.tracing)

    async def handle_exception(
        self, ex: Exception, request_or_iterator: Any, context: grpc_aio.ServicerContext, method_name: str
    ) -> NoReturn:
        if isinstance(ex, MbostreamError):
            await context.abort(status_for(ex), str(ex))
        if isinstance(ex, GrpcException | grpc_aio.AbortError):
            raise ex
        log.error("unhandled error in %s", method_name, exc_info=ex, extra={"method": method_name})
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method_name.rsplit('/', 1)[-1]}")

    async def intercept(self, method: Callable, request_or_iterator: Any, context: grpc_aio.ServicerContext, method_name: str) -> Any:
        started = time.perf_counter()
        short = method_name.rsplit("/", 1)[-1]
        span = tracing.start_rpc_span(method_name, context.invocation_metadata())
        try:
            with tracing.current(span):
                result = await super().intercept(method, request_or_iterator, context, method_name)
        except BaseException:
            self._count(short, context, started, span, failed=True)
            raise
        if hasattr(result, "__aiter__"):
            return self._counted_stream(result, short, context, started, span)
        self._count(short, context, started, span)
        return result

    async def _counted_stream(self, stream: AsyncIterator[Any], short: str, context: Any, started: float, span: Any) -> AsyncIterator[Any]:
        delivery = _DELIVERY_HISTOGRAMS.get(short)
        failed = True
        sent = 0
        try:
            async for item in stream:
                yield item
                # grpc.aio asks for the next message once the previous write completed: now.
                if delivery is not None and sent % DELIVERY_SAMPLE_EVERY == 0:
                    observe_delivery(delivery, item)
                sent += 1
            failed = False
        finally:
            self._count(short, context, started, span, failed=failed)

    @staticmethod
    def _count(short: str, context: Any, started: float, span: Any, failed: bool = False) -> None:
        code = context.code()
        name = code.name if isinstance(code, grpc.StatusCode) else ("CANCELLED" if failed else "OK")
        if code is None and failed:
            name = "CANCELLED"
        METRICS.rpcs.labels(short, name).inc()
        METRICS.rpc_seconds.labels(short).observe(time.perf_counter() - started)
        tracing.end_rpc_span(span, name)


#: One stream message in this many has its delivery latency measured (the first always): the cost
#: stays off the per-message path of busy streams, and every stream is sampled alike.
DELIVERY_SAMPLE_EVERY: Final = 16
#: Which stream's messages feed which histogram (both carry ts_out, field 3, set when published).
_DELIVERY_HISTOGRAMS: Final = {"StreamEvents": METRICS.publish_to_client_seconds, "StreamBook": METRICS.book_age_seconds}
_TS_OUT_FIELD: Final = 3


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def message_ts_out(payload: bytes) -> int:
    """``ts_out`` (field 3, ns since the UNIX epoch) of a serialized StreamEvents/StreamBook response.

    Walks the top-level fields only (skipping the columns and books by their lengths); the last
    occurrence wins, as protobuf parsing does for the concatenated parts of a book message.
    0 when absent or unreadable.
    """
    pos, end, found = 0, len(payload), 0
    try:
        while pos < end:
            key, pos = _varint(payload, pos)
            wire_type = key & 7
            if wire_type == 0:
                value, pos = _varint(payload, pos)
                if key >> 3 == _TS_OUT_FIELD:
                    found = value
            elif wire_type == 2:
                length, pos = _varint(payload, pos)
                pos += length
            elif wire_type in (1, 5):
                pos += 8 if wire_type == 1 else 4
            else:
                return 0
    except IndexError:
        return 0
    return found


def observe_delivery(histogram: Any, payload: Any) -> None:
    ts_out = message_ts_out(payload) if isinstance(payload, bytes) else 0
    if ts_out:
        histogram.observe(max(0.0, (time.time_ns() - ts_out) / 1e9))


class _ClientGoneFilter(logging.Filter):
    """grpc's own report of a stream write that failed because the call was already over.

    When a client cancels or disconnects while the server's next write waits on flow control, grpc
    fails that write with ``ExecuteBatchError`` and logs it at ERROR with a traceback (unless it
    noticed the cancellation first, a race). A client going away is normal: the record becomes one
    DEBUG line naming the method, and is dropped when DEBUG is off.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if type(exc).__name__ != "ExecuteBatchError":
            return True
        if not log.isEnabledFor(logging.DEBUG):
            return False
        method = re.search(r"\[(/[^\]]+)\]", record.getMessage())
        record.msg, record.args = "client went away mid-stream: %s", (method[1] if method else "a stream",)
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info = record.exc_text = None
        return True


_CLIENT_GONE = _ClientGoneFilter()


def quiet_client_disconnects() -> None:
    """Logs clients that go away mid-stream at DEBUG instead of grpc's ERROR traceback (idempotent)."""
    logging.getLogger("grpc._cython.cygrpc").addFilter(_CLIENT_GONE)


def check_bearer(metadata: tuple[tuple[str, str | bytes], ...] | None, token: str | None) -> None:
    """Checks ``authorization: Bearer <token>`` metadata against the configured control token.

    Raises PermissionDeniedError when control is disabled (no token configured), AuthError when the
    header is missing, malformed or wrong. Comparison is constant-time.
    """
    if token is None:
        raise PermissionDeniedError("replay control is disabled: start the server with MBOSTREAM_CONTROL_TOKEN set")
    values = [v for k, v in (metadata or ()) if k.lower() == "authorization"]
    if not values:
        raise AuthError("missing 'authorization: Bearer <token>' metadata")
    value = values[0].decode() if isinstance(values[0], bytes) else values[0]
    scheme, _, presented = value.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise AuthError("authorization metadata must be 'Bearer <token>'")
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        raise AuthError("invalid control token")
